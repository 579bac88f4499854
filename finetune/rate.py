"""Any rater can check a result: blind pairs out, ratings back in as judgments beside the critic's.

    python -m finetune.rate export --db DB --x SYSTEM --y SYSTEM [--split test] [--repeat 10] [--seed 0] -o pairs.jsonl
    python -m finetune.rate import RATINGS --rater NAME --db DB
    python -m finetune.rate report --rater NAME --x SYSTEM --y SYSTEM [--split test] --db DB [--format text|json]
    python -m finetune.rate audit-pairs --rater NAME -o my_pairs.jsonl --db DB

A SYSTEM is a student's producer as `candidates` holds it (role 'student', rank 0), a teacher's spec, or the word
`teacher` (the single teacher of those inputs, or `--teacher SPEC`). The exported file shows a random `pair_id`,
the instruction, the input and the two outputs as A and B; which candidate is A, which is B and which systems they
are goes only to the store's `blind_pairs` (the key). A person or any LLM rates the file; `import` turns each rating
into a `judgments` row (judge `rater:NAME`, method 'rating') and each rated pair of candidates into a `verdicts` row,
so the rater's numbers come out of the same win-rate code, with the same bootstrap intervals, as the critic's.
docs/rating.md walks through it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from metrics.judge import judgment_id, verdict_id
from metrics.winrate import Estimate, bootstrap, paired_difference, win_tie_rate
from programs.task_sources import get_task
from programs.tasks import Task
from store import Store, stable_id
from store.cli import ArgumentParser, entry_point
from store.errors import UserError

TEACHER = "teacher"  # the system name of the teacher's rank-0 reference
RATER_PREFIX = "rater:"
METHOD = "rating"  # judgments' and verdicts' method, judgments' source and purpose
SCORE_METHOD = "rating-score"  # a rater's optional score of one side (pointwise: second_id NULL)
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
CHOICES = {"a": 1, "b": 2, "tie": None}
P_FIRST = {1: 1.0, 2: 0.0, None: 0.5}
GENERIC_INSTRUCTION = ("Choose the better output, A or B, for the input: the one that does what the input asks "
                       "better, while staying true to the input text.")


class RatingError(UserError):
    """A bad export request, ratings file or report request: one line for the user, nothing written."""


# -- systems -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    name: str  # as the user wrote it: a producer or 'teacher'
    role: str  # 'student' | 'teacher'
    producer: str

    def matches(self, role: str, producer: str) -> bool:
        return role == self.role and producer == self.producer


def _aliases(name: str) -> list[str]:
    """A student's name as written, and as `finetune.evaluate` names a checkpoint folder (its absolute path)."""
    names = [name]
    try:
        path = Path(name).expanduser()
        if path.exists():
            names.append(str(path.resolve()))
    except OSError:
        pass
    return names


def _producers(store: Store, role: str, where: str, params: list) -> list[str]:
    return [r["producer"] for r in store.query(
        f"SELECT DISTINCT c.producer FROM candidates c JOIN inputs i USING (input_id) "
        f"WHERE c.role = ? AND c.rank = 0 AND {where} ORDER BY 1", [role, *params])]


def resolve_system(store: Store, name: str, *, split: str | None = None, teacher: str | None = None,
                   task: str | None = None) -> System:
    """The (role, producer) a SYSTEM names among the inputs of `split` (every split when None), so that a typo is
    one line listing the systems that are there."""
    where, params = "(? IS NULL OR i.split = ?) AND (? IS NULL OR i.task = ?)", [split, split, task, task]
    on = f"split {split!r}" if split else "any split"
    if not isinstance(name, str) or not name.strip():
        raise RatingError("a system must be a student's producer or 'teacher'")
    name = name.strip()
    if name == TEACHER:
        teachers = _producers(store, "teacher", where, params)
        if teacher:
            if teacher not in teachers:
                raise RatingError(f"no teacher {teacher!r} on {on}; teachers there: {', '.join(teachers) or 'none'}")
            return System(name, "teacher", teacher)
        if not teachers:
            raise RatingError(f"no teacher outputs on {on}")
        if len(teachers) > 1:
            raise RatingError(f"several teachers on {on} ({', '.join(teachers)}); pass --teacher SPEC")
        return System(name, "teacher", teachers[0])
    for role in ("student", "teacher"):
        known = _producers(store, role, where, params)
        for alias in _aliases(name):
            if alias in known:
                return System(name, role, alias)
    systems = ([TEACHER] if _producers(store, "teacher", where, params) else []) + _producers(store, "student",
                                                                                              where, params)
    raise RatingError(f"no outputs of {name!r} on {on}; systems there: {', '.join(systems) or 'none'}")


def _outputs(store: Store, system: System, split: str | None, task: str | None) -> dict[str, dict]:
    """input_id -> the system's rank-0 candidate, with its input."""
    return {r["input_id"]: r for r in store.query(
        "SELECT c.input_id, c.candidate_id, c.text, i.text AS input, i.task, i.split FROM candidates c "
        "JOIN inputs i USING (input_id) WHERE c.role = ? AND c.producer = ? AND c.rank = 0 "
        "AND (? IS NULL OR i.split = ?) AND (? IS NULL OR i.task = ?) ORDER BY c.input_id",
        [system.role, system.producer, split, split, task, task])}


# -- export --------------------------------------------------------------------------------------------------------


@dataclass
class Export:
    rows: list[dict]  # the file's rows: pair_id, instruction, input, A, B (no candidate, no system)
    batch: str
    pairs: int  # originals
    repeats: int  # swapped copies
    identical: int  # inputs not shown: the two outputs are the same text (ties by construction)
    key: list[dict]  # the blind_pairs rows


def _task(spec: str | Task | None) -> Task | None:
    if spec is None or isinstance(spec, Task):
        return spec
    try:
        return get_task(spec)
    except UserError:
        return None  # a task the store names but this process cannot load (a file elsewhere): generic wording


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)


def _render(task: Task | None, text: str, what: str) -> str:
    """A stored text as a rater reads it: the value itself, or one `Label: value` line per field."""
    if task is None:
        return text
    try:
        values = task.input_values(text) if what == "input" else task.output_values(text)
    except UserError:
        return text
    if len(values) == 1:
        return _shown(next(iter(values.values())))
    from programs.adapter import label

    return "\n".join(f"{label(n)}: {_shown(v)}" for n, v in values.items())


def plan_export(store: Store, *, x: str, y: str, split: str | None = "test", teacher: str | None = None,
            repeat: int = 10, seed: int = 0, task: str | Task | None = None) -> Export:
    if repeat is None or repeat < 0:
        raise RatingError(f"--repeat must be 0 or more (got {repeat})")
    task_obj = _task(task)
    task_name = task_obj.name if task_obj else task
    sx = resolve_system(store, x, split=split, teacher=teacher, task=task_name)
    sy = resolve_system(store, y, split=split, teacher=teacher, task=task_name)
    if sx.producer == sy.producer:
        raise RatingError(f"--x and --y name the same system ({sx.producer}); compare two different ones")
    ox, oy = _outputs(store, sx, split, task_name), _outputs(store, sy, split, task_name)
    shared = [i for i in ox if i in oy]
    if not shared:
        raise RatingError(f"no input of {f'split {split!r}' if split else 'the store'} has outputs of both {x} and {y}")
    same = {i for i in shared if ox[i]["text"].strip() == oy[i]["text"].strip()}
    shown = [i for i in shared if i not in same]
    if not shown:
        raise RatingError(f"all {len(shared)} inputs have the same output from {x} and {y}: nothing to rate")
    batch = stable_id("blind-batch", sx.role, sx.producer, sy.role, sy.producer, split, task_name, seed, repeat,
                      [(i, ox[i]["candidate_id"], oy[i]["candidate_id"]) for i in shown])
    tasks = {ox[i]["task"] for i in shown}
    task_obj = task_obj or (_task(next(iter(tasks))) if len(tasks) == 1 else None)
    instruction = task_obj.critic_instruction if task_obj else GENERIC_INSTRUCTION

    rng = random.Random(seed)
    now = datetime.now()
    key, rows = [], []

    def add(input_id: str, a: dict, b: dict, pair_id: str, repeat_of: str | None) -> None:
        key.append({"pair_id": pair_id, "batch": batch, "input_id": input_id, "a_id": a["candidate_id"],
                    "b_id": b["candidate_id"], "x": sx.producer, "y": sy.producer, "repeat_of": repeat_of,
                    "split": a["split"], "created_at": now})
        rows.append({"pair_id": pair_id, "instruction": instruction, "input": _render(task_obj, a["input"], "input"),
                     "A": _render(task_obj, a["text"], "output"), "B": _render(task_obj, b["text"], "output")})

    originals = []
    for i in shown:
        a, b = (oy[i], ox[i]) if rng.random() < 0.5 else (ox[i], oy[i])
        pair_id = stable_id("blind-pair", batch, i, rng.getrandbits(64))
        originals.append((i, a, b, pair_id))
        add(i, a, b, pair_id, None)
    for i, a, b, pair_id in rng.sample(originals, min(repeat, len(originals))):
        add(i, b, a, stable_id("blind-pair", batch, i, rng.getrandbits(64)), pair_id)
    rng.shuffle(rows)  # the repeats among the rest; the key's order says nothing either, it is not in the file
    return Export(rows, batch, len(originals), len(rows) - len(originals), len(same), key)


def export_pairs(store: Store, *, x: str, y: str, split: str | None = "test", teacher: str | None = None,
                 repeat: int = 10, seed: int = 0, task: str | Task | None = None) -> tuple[list[dict], str]:
    """Blind pairs of x's and y's outputs, one per input both answered differently (A/B order seeded), plus `repeat`
    of them again with the sides swapped; the key goes to `blind_pairs`, the rows returned name no candidate and no
    system. Deterministic: the same store and arguments give the same batch, pair ids and order."""
    e = plan_export(store, x=x, y=y, split=split, teacher=teacher, repeat=repeat, seed=seed, task=task)
    store.insert("blind_pairs", e.key)
    return e.rows, e.batch


def _write(path: str | os.PathLike, lines: list[str]) -> Path:
    """The whole file or nothing."""
    p = Path(path).expanduser()
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RatingError(f"cannot write {p}: {e.strerror or e}") from e
    return p


def write_pairs(rows: list[dict], path: str | os.PathLike) -> Path:
    return _write(path, [json.dumps(r, ensure_ascii=False) for r in rows])


# -- import --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rating:
    pair_id: str
    choice: int | None  # 1: A, 2: B, None: a tie
    score_a: float | None
    score_b: float | None
    reason: str | None
    line: int


def _number(value: Any, where: str, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RatingError(f"{where}: {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RatingError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RatingError(f"{where}: {name} must be a finite number, got {value!r}")
    return number


def _records(path: Path) -> list[tuple[int, Any]]:
    """(line, record) from a JSONL file, or from a CSV file with a header (by its .csv name, or, for a name that is
    neither .csv nor .jsonl, a first line that is not JSON)."""
    try:
        if not path.exists():
            raise RatingError(f"ratings file not found: {path}")
        if path.is_dir():
            raise RatingError(f"{path} is a folder; pass a .jsonl or .csv file with one rating per line")
        raw = path.read_bytes()
    except OSError as e:
        raise RatingError(f"cannot read the ratings file {path}: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RatingError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    suffix = path.suffix.lower()
    if suffix == ".csv" or (suffix not in JSON_SUFFIXES and first and first[0] not in "{["):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "pair_id" not in header or "choice" not in header:
                raise RatingError(f"{path}:1: a CSV ratings file needs a header with pair_id and choice "
                                  f"(got {', '.join(reader.fieldnames or []) or 'nothing'})")
            reader.fieldnames = header
            out = []
            for row in reader:
                if any((v or "").strip() for k, v in row.items() if k is not None):
                    if None in row:
                        raise RatingError(f"{path}:{reader.line_num}: more cells than the header has")
                    out.append((reader.line_num, row))
            return out
        except csv.Error as e:
            raise RatingError(f"{path}:{reader.line_num}: not valid CSV ({e})") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise RatingError(f"{path}:{n}: not valid JSON ({e.msg})") from e
    return out


def read_ratings(path: str | os.PathLike) -> list[Rating]:
    """Read and check a ratings file; every problem is a RatingError naming the file and line. A pair rated twice
    the same way counts once; twice differently is an error."""
    p = Path(path).expanduser()
    ratings: dict[str, Rating] = {}
    for n, rec in _records(p):
        where = f"{p}:{n}"
        if not isinstance(rec, dict):
            raise RatingError(f"{where}: expected a JSON object with pair_id and choice")
        pair_id = rec.get("pair_id")
        if not isinstance(pair_id, str) or not pair_id.strip():
            raise RatingError(f"{where}: missing pair_id (copy it from the pairs file)")
        choice = rec.get("choice")
        if not isinstance(choice, str) or choice.strip().lower() not in CHOICES:
            raise RatingError(f"{where}: choice must be A, B or tie, got {choice!r}")
        reason = rec.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise RatingError(f"{where}: reason must be text, got {reason!r}")
        r = Rating(pair_id.strip(), CHOICES[choice.strip().lower()], _number(rec.get("score_a"), where, "score_a"),
                   _number(rec.get("score_b"), where, "score_b"), reason.strip() if reason and reason.strip() else None,
                   n)
        seen = ratings.get(r.pair_id)
        if seen is None:
            ratings[r.pair_id] = r
        elif (seen.choice, seen.score_a, seen.score_b) != (r.choice, r.score_a, r.score_b):
            raise RatingError(f"{where}: pair {r.pair_id} is rated differently on line {seen.line}; keep one rating")
    if not ratings:
        raise RatingError(f"{p} has no ratings (expected one per line with pair_id and choice)")
    return list(ratings.values())


def _judge(rater: str) -> str:
    if not isinstance(rater, str) or not rater.strip():
        raise RatingError("--rater needs a name (e.g. --rater alice, --rater gpt-4o)")
    rater = rater.strip()
    return rater if rater.startswith(RATER_PREFIX) else RATER_PREFIX + rater


def _unchanged(store: Store, table: str, key: str, rows: list[dict], fields: tuple[str, ...]) -> set[str]:
    """Ids whose stored row already says the same: left as they are, so a second import changes nothing."""
    if not rows:
        return set()
    stored = {r[key]: r for r in store.query(f"SELECT * FROM {table} WHERE list_contains(?, {key})",
                                             [[r[key] for r in rows]])}
    return {r[key] for r in rows if r[key] in stored and all(stored[r[key]][f] == r[f] for f in fields)}


JUDGMENT_FIELDS = ("input_id", "judge", "first_id", "second_id", "choice", "p_first", "source", "reason", "purpose",
                   "method", "score")
VERDICT_FIELDS = ("input_id", "judge", "method", "a_id", "b_id", "p_a", "orders_agree", "n_orders", "purpose")


def _x_candidate(row: dict) -> str:
    """Which of a pair's candidates is x's (blind_pairs keeps the systems' producers, which export keeps apart)."""
    return row["a_id"] if row["a_producer"] == row["x"] else row["b_id"]


KEY_SQL = ("SELECT bp.*, ca.producer AS a_producer FROM blind_pairs bp "
           "JOIN candidates ca ON ca.candidate_id = bp.a_id")


def _verdict_rows(store: Store, judge: str, pairs: set[tuple[str, str, str]]) -> list[dict]:
    """One verdict per (input, x candidate, y candidate) from every rating of the rater on those two candidates."""
    if not pairs:
        return []
    cands = sorted({c for _, a, b in pairs for c in (a, b)})
    ratings = store.query("SELECT first_id, second_id, p_first FROM judgments WHERE judge = ? AND method = ? "
                          "AND list_contains(?, first_id) AND list_contains(?, second_id)",
                          [judge, METHOD, cands, cands])
    now, rows = datetime.now(), []
    for input_id, a, b in sorted(pairs):
        ps = {}  # orientation -> P(x >= y) from that showing
        for r in ratings:
            if (r["first_id"], r["second_id"]) == (a, b):
                ps["ab"] = r["p_first"]
            elif (r["first_id"], r["second_id"]) == (b, a):
                ps["ba"] = 1.0 - r["p_first"]
        if not ps:
            continue
        side = [(p > 0.5) - (p < 0.5) for p in ps.values()]  # x, tie or y, per showing
        rows.append({"verdict_id": verdict_id(judge, METHOD, a, b), "input_id": input_id, "judge": judge,
                     "method": METHOD, "a_id": a, "b_id": b, "p_a": sum(ps.values()) / len(ps),
                     "orders_agree": side[0] == side[1] if len(side) == 2 else None, "n_orders": len(ps),
                     "purpose": METHOD, "run_id": None, "created_at": now})
    return rows


def import_ratings(store: Store, path: str | os.PathLike, *, rater: str) -> dict:
    """Each rating a `judgments` row of judge `rater:NAME` (a score a pointwise row per side), then one verdict per
    rated pair of candidates, P(x >= y) over its showings. Everything is checked before anything is written; ids are
    stable and unchanged rows are left alone, so importing a file again changes nothing."""
    _judge(rater)  # a missing name before the file
    p = Path(path).expanduser()
    return {"file": str(p)} | store_ratings(store, read_ratings(path), rater=rater, where=str(p))


def store_ratings(store: Store, ratings: list[Rating], *, rater: str, where: str = "ratings") -> dict:
    """Store checked ratings of exported pairs (their key in `blind_pairs`) as `import_ratings` does: the one writer
    of a rater's judgments and verdicts, for a ratings file and for the review page's key presses alike."""
    judge = _judge(rater)
    key = {r["pair_id"]: r for r in store.query(f"{KEY_SQL} WHERE list_contains(?, bp.pair_id)",
                                                [[r.pair_id for r in ratings]])}
    for r in ratings:
        if r.pair_id not in key:
            raise RatingError(f"{where}:{r.line}: unknown pair_id {r.pair_id!r} (not from an export into this store)")
    now, judgments, pairs = datetime.now(), [], set()
    for r in ratings:
        k = key[r.pair_id]
        jid = judgment_id(judge, k["a_id"], k["b_id"], METHOD)
        base = {"input_id": k["input_id"], "judge": judge, "source": METHOD, "purpose": METHOD, "lm_call_id": None,
                "run_id": None, "created_at": now}
        judgments.append(base | {"judgment_id": jid, "first_id": k["a_id"], "second_id": k["b_id"],
                                 "choice": r.choice, "p_first": P_FIRST[r.choice], "reason": r.reason,
                                 "method": METHOD, "score": None})
        for cid, score in ((k["a_id"], r.score_a), (k["b_id"], r.score_b)):
            if score is not None:  # tied to the rating it came with: one score per candidate per showing
                judgments.append(base | {"judgment_id": judgment_id(judge, cid, None, SCORE_METHOD, jid),
                                         "first_id": cid, "second_id": None, "choice": None, "p_first": None,
                                         "reason": None, "method": SCORE_METHOD, "score": score})
        x_id = _x_candidate(k)
        pairs.add((k["input_id"], x_id, k["b_id"] if x_id == k["a_id"] else k["a_id"]))
    cands = sorted({c for _, a, b in pairs for c in (a, b)})
    for v in store.query("SELECT input_id, a_id, b_id FROM verdicts WHERE judge = ? AND method = ? "
                         "AND list_contains(?, a_id) AND list_contains(?, b_id)", [judge, METHOD, cands, cands]):
        if (v["input_id"], v["b_id"], v["a_id"]) in pairs:
            pairs.add((v["input_id"], v["a_id"], v["b_id"]))  # an export the other way round: kept up to date too
    same = _unchanged(store, "judgments", "judgment_id", judgments, JUDGMENT_FIELDS)
    store.insert("judgments", [j for j in judgments if j["judgment_id"] not in same], replace=True)
    verdicts = _verdict_rows(store, judge, pairs)
    same_v = _unchanged(store, "verdicts", "verdict_id", verdicts, VERDICT_FIELDS)
    store.insert("verdicts", [v for v in verdicts if v["verdict_id"] not in same_v], replace=True)
    return {"judge": judge, "ratings": len(ratings),
            "ties": sum(r.choice is None for r in ratings),
            "scores": sum(j["method"] == SCORE_METHOD for j in judgments),
            "judgments_written": len(judgments) - len(same), "verdicts": len(verdicts),
            "verdicts_written": len(verdicts) - len(same_v),
            "repeats": sum(key[r.pair_id]["repeat_of"] is not None for r in ratings),
            "systems": sorted({(key[r.pair_id]["x"], key[r.pair_id]["y"]) for r in ratings})}


# -- report --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rated:
    input_id: str
    split: str
    x_id: str
    y_id: str
    p: float  # P(x >= y) by the rater; 0.5 for identical outputs
    orders_agree: bool | None  # the original and its swapped repeat gave the same system; None: rated once
    identical: bool  # not shown: the two outputs were the same text


def _system_matcher(name: str, teacher: str | None):
    """Whether a (role, producer) is the system a name says, without a store lookup (the rater's verdicts name
    candidates; the report's systems are names)."""
    if name == TEACHER:
        return lambda role, producer: role == "teacher" and (teacher is None or producer == teacher)
    aliases = set(_aliases(name))
    return lambda role, producer: role in ("student", "teacher") and producer in aliases


def rated_pairs(store: Store, rater: str, x: str, y: str, split: str | None = None, *,
                teacher: str | None = None) -> list[Rated]:
    """The rater's verdicts on x against y (either orientation, flipped to P(x >= y)), one per input, by input id;
    plus, as ties, the inputs an export of the same two systems did not show because their outputs were identical
    (found again from the candidates: the file never had them, so the key does not either)."""
    judge = _judge(rater)
    is_x, is_y = _system_matcher(x, teacher), _system_matcher(y, teacher)
    rows = store.query(
        "SELECT v.input_id, i.split, v.a_id, v.b_id, v.p_a, v.orders_agree, ca.role AS a_role, "
        "ca.producer AS a_producer, cb.role AS b_role, cb.producer AS b_producer FROM verdicts v "
        "JOIN inputs i USING (input_id) JOIN candidates ca ON ca.candidate_id = v.a_id "
        "JOIN candidates cb ON cb.candidate_id = v.b_id "
        "WHERE v.judge = ? AND v.method = ? AND v.p_a IS NOT NULL AND (? IS NULL OR i.split = ?) "
        "ORDER BY v.input_id, v.verdict_id",
        [judge, METHOD, split, split])
    out: dict[str, Rated] = {}
    for r in rows:
        a, b = (r["a_role"], r["a_producer"]), (r["b_role"], r["b_producer"])
        if is_x(*a) and is_y(*b):
            rated = Rated(r["input_id"], r["split"], r["a_id"], r["b_id"], r["p_a"], r["orders_agree"], False)
        elif is_y(*a) and is_x(*b):
            rated = Rated(r["input_id"], r["split"], r["b_id"], r["a_id"], 1.0 - r["p_a"], r["orders_agree"], False)
        else:
            continue
        seen = out.get(rated.input_id)
        if seen is not None and (seen.x_id, seen.y_id) == (rated.x_id, rated.y_id):
            continue  # the same two candidates exported the other way round: the same ratings, flipped
        if seen is not None:
            raise RatingError(f"the rater has two pairs of {x} vs {y} on one input ({rated.input_id}): "
                              "name the teacher with --teacher")
        out[rated.input_id] = rated
    # the exports this rater rated pairs of: their systems, split and task, to find the inputs they did not show
    batches = store.query(
        "SELECT DISTINCT bp.x, bp.y, bp.split, i.task, "
        "CASE WHEN ca.producer = bp.x THEN ca.role ELSE cb.role END AS x_role, "
        "CASE WHEN ca.producer = bp.x THEN cb.role ELSE ca.role END AS y_role "
        "FROM blind_pairs bp JOIN inputs i ON i.input_id = bp.input_id "
        "JOIN candidates ca ON ca.candidate_id = bp.a_id JOIN candidates cb ON cb.candidate_id = bp.b_id "
        "WHERE (? IS NULL OR bp.split = ?) AND EXISTS (SELECT 1 FROM judgments j WHERE j.judge = ? AND j.method = ? "
        "AND j.first_id = bp.a_id AND j.second_id = bp.b_id) ORDER BY ALL", [split, split, judge, METHOD])
    for bt in batches:
        sx, sy = (bt["x_role"], bt["x"]), (bt["y_role"], bt["y"])
        if not (is_x(*sx) and is_y(*sy)):
            if not (is_y(*sx) and is_x(*sy)):
                continue
            sx, sy = sy, sx
        for r in store.query(
                "SELECT c.input_id, i.split, c.candidate_id AS x_id, d.candidate_id AS y_id FROM candidates c "
                "JOIN candidates d ON d.input_id = c.input_id AND d.role = ? AND d.producer = ? AND d.rank = 0 "
                "JOIN inputs i ON i.input_id = c.input_id WHERE c.role = ? AND c.producer = ? AND c.rank = 0 "
                "AND trim(c.text) = trim(d.text) AND i.split IS NOT DISTINCT FROM ? AND i.task IS NOT DISTINCT FROM ? "
                "ORDER BY c.input_id", [*sy, *sx, bt["split"], bt["task"]]):
            out.setdefault(r["input_id"], Rated(r["input_id"], r["split"], r["x_id"], r["y_id"], 0.5, None, True))
    return [out[k] for k in sorted(out)]


def rater_verdicts(store: Store, rater: str, x: str, y: str, split: str | None = None, *,
                   teacher: str | None = None) -> dict[str, float]:
    """input_id -> P(x >= y) by the rater (identical outputs: 0.5), in input-id order: what `metrics.winrate` takes,
    as it takes the critic's."""
    return {r.input_id: r.p for r in rated_pairs(store, rater, x, y, split, teacher=teacher)}


def paired_rating_difference(store: Store, rater: str, x: str, y: str, reference: str, *, split: str | None = None,
                             teacher: str | None = None, decisions: bool = False) -> Estimate:
    """x's and y's ratings against the same reference, as a paired difference over the inputs both were rated on:
    the same paired interval a critic's judgments give (`metrics.winrate.paired_difference`)."""
    return paired_difference(rater_verdicts(store, rater, x, reference, split, teacher=teacher),
                             rater_verdicts(store, rater, y, reference, split, teacher=teacher), decisions=decisions)


def _critic_verdicts(store: Store, rated: list[Rated]) -> dict[tuple[str, str], dict[str, float]]:
    """(judge, method) -> input_id -> the critic's P(x >= y) on the very candidates the rater saw."""
    if not rated:
        return {}
    cands = sorted({c for r in rated for c in (r.x_id, r.y_id)})
    by_pair = {(r.x_id, r.y_id): r.input_id for r in rated}
    out: dict[tuple[str, str], dict[str, float]] = {}
    for v in store.query(
            f"SELECT judge, method, a_id, b_id, p_a FROM verdicts WHERE judge NOT LIKE '{RATER_PREFIX}%' "
            "AND p_a IS NOT NULL AND list_contains(?, a_id) AND list_contains(?, b_id) "
            "ORDER BY judge, method, created_at", [cands, cands]):
        if (v["a_id"], v["b_id"]) in by_pair:
            out.setdefault((v["judge"], v["method"]), {})[by_pair[(v["a_id"], v["b_id"])]] = v["p_a"]
        elif (v["b_id"], v["a_id"]) in by_pair:
            out.setdefault((v["judge"], v["method"]), {})[by_pair[(v["b_id"], v["a_id"])]] = 1.0 - v["p_a"]
    return {k: dict(sorted(ps.items())) for k, ps in sorted(out.items())}


def _scores(store: Store, judge: str, rated: list[Rated]) -> dict | None:
    """The rater's optional scores on the rated pairs that differ: x's and y's mean (each candidate's scores averaged
    over its showings) and their paired difference, bootstrapped over inputs. None when the rater gave no scores."""
    shown = [r for r in rated if not r.identical]
    cands = sorted({c for r in shown for c in (r.x_id, r.y_id)})
    if not cands:
        return None
    by: dict[str, list[float]] = {}
    for j in store.query("SELECT first_id, score FROM judgments WHERE judge = ? AND method = ? AND score IS NOT NULL "
                         "AND list_contains(?, first_id)", [judge, SCORE_METHOD, cands]):
        by.setdefault(j["first_id"], []).append(j["score"])
    both = [r for r in shown if r.x_id in by and r.y_id in by]
    if not both:
        return None
    sx = [sum(by[r.x_id]) / len(by[r.x_id]) for r in both]
    sy = [sum(by[r.y_id]) / len(by[r.y_id]) for r in both]
    return {"x": _estimate(bootstrap(sx)), "y": _estimate(bootstrap(sy)),
            "difference": _estimate(bootstrap([a - b for a, b in zip(sx, sy)]))}


def _estimate(e: Estimate) -> dict:
    nan = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    return {"value": nan(e.value), "lo": nan(e.lo), "hi": nan(e.hi), "n": e.n}


def report(store: Store, rater: str, x: str, y: str, split: str | None = None, *, teacher: str | None = None) -> dict:
    """The rater's win-tie rate of x over y (both readings, the repo's bootstrap), x's share of the decided pairs,
    the rater's consistency on the swapped repeats, and each critic's figures and agreement on the same pairs."""
    rated = rated_pairs(store, rater, x, y, split, teacher=teacher)
    if not rated:
        where = f" on split {split!r}" if split else ""
        raise RatingError(f"{_judge(rater)} has no ratings of {x} vs {y}{where} (import a ratings file first)")
    ps = {r.input_id: r.p for r in rated}
    prob, decision = win_tie_rate(list(ps.values()))
    decided = [r.p > 0.5 for r in rated if r.p != 0.5]
    repeats = [r.orders_agree for r in rated if r.orders_agree is not None]
    critics = []
    for (judge, method), cps in _critic_verdicts(store, rated).items():
        c_prob, c_decision = win_tie_rate(list(cps.values()))
        both = [(cps[k] > 0.5) == (ps[k] > 0.5) for k in cps if cps[k] != 0.5 and ps[k] != 0.5]
        critics.append({"judge": judge, "method": method, "n": len(cps), "wtr_prob": _estimate(c_prob),
                        "wtr_decision": _estimate(c_decision), "agreement": _estimate(bootstrap(
                            [float(a) for a in both]))})
    return {"rater": _judge(rater), "x": x, "y": y, "split": split, "n": len(rated),
            "identical": sum(r.identical for r in rated), "wtr_prob": _estimate(prob),
            "wtr_decision": _estimate(decision), "x_preferred": _estimate(bootstrap([float(d) for d in decided])),
            "ties": len(rated) - len(decided), "consistency": {"same": sum(repeats), "n": len(repeats)},
            "scores": _scores(store, _judge(rater), rated), "critics": critics, "p": ps}


def _pct(e: dict) -> str:
    if e["value"] is None:
        return f"n/a (n={e['n']})"
    return f"{100 * e['value']:.1f} [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}] (n={e['n']})"


def format_report(r: dict) -> str:
    c, x = r["consistency"], r["x"]
    on = f" on {r['split']}" if r["split"] else ""
    lines = [f"{r['rater']}: {x} vs {r['y']}{on}, {r['n']} inputs ({r['identical']} identical outputs counted as ties)",
             f"  WTR of {x} (mean P): {_pct(r['wtr_prob'])}",
             f"  WTR of {x} (decisions): {_pct(r['wtr_decision'])}",
             f"  {x} preferred among decided pairs: {_pct(r['x_preferred'])}; {r['ties']} ties",
             f"  consistency on swapped repeats: {c['same']} of {c['n']} gave the same system"
             + ("" if c["n"] else " (no repeat rated)")]
    sc = r.get("scores")
    if sc:
        num = lambda e: "n/a" if e["value"] is None else f"{e['value']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"  # noqa: E731
        lines.append(f"  scores on the {sc['x']['n']} differing pairs: {x} {num(sc['x'])}, {r['y']} {num(sc['y'])}; "
                     f"paired difference {num(sc['difference'])}")
    for k in r["critics"]:
        lines.append(f"  critic {k['judge']} ({k['method']}) on the same pairs: WTR (mean P) {_pct(k['wtr_prob'])}, "
                     f"(decisions) {_pct(k['wtr_decision'])}; agrees with the rater on "
                     f"{_pct(k['agreement'])} of the pairs both decided")
    if not r["critics"]:
        lines.append("  no critic verdicts on these pairs")
    return "\n".join(lines)


# -- audit pairs ---------------------------------------------------------------------------------------------------


def audit_pairs(store: Store, rater: str, out: str | os.PathLike, *, split: str | None = None) -> dict:
    """Every pair the rater decided, as `metrics.audit`'s labeled pairs (`id`, `input`, `better`, `worse`, `split`):
    the user's own labels, to audit the critic on the user's own task. Texts as the store holds them."""
    judge = _judge(rater)
    rows = store.query(
        "SELECT v.verdict_id, v.p_a, i.text AS input, i.split, i.task, ca.text AS a, cb.text AS b FROM verdicts v "
        "JOIN inputs i USING (input_id) JOIN candidates ca ON ca.candidate_id = v.a_id "
        "JOIN candidates cb ON cb.candidate_id = v.b_id "
        "WHERE v.judge = ? AND v.method = ? AND v.p_a IS NOT NULL AND v.p_a <> 0.5 AND (? IS NULL OR i.split = ?) "
        "ORDER BY v.input_id, v.verdict_id", [judge, METHOD, split, split])
    pairs, same = [], 0
    for r in rows:
        better, worse = (r["a"], r["b"]) if r["p_a"] > 0.5 else (r["b"], r["a"])
        if " ".join(better.split()) == " ".join(worse.split()):
            same += 1  # the same words spaced differently: no label to audit
            continue
        pairs.append({"id": r["verdict_id"], "input": r["input"], "better": better, "worse": worse,
                      "split": r["split"]})
    if not pairs:
        raise RatingError(f"{judge} has decided no pair{f' on split {split!r}' if split else ''} (ties are not "
                          "labels); import ratings first")
    path = _write(out, [json.dumps(pr, ensure_ascii=False) for pr in pairs])
    tasks = sorted({r["task"] for r in rows})
    return {"file": str(path), "pairs": len(pairs), "skipped_same_text": same, "tasks": tasks}


# -- python -m finetune.rate -----------------------------------------------------------------------------------------


def _open(db: str | None) -> Store:
    from store.db import check_path, default_path

    path = db or default_path()
    check_path(path)
    Store(path, create=False)  # no store there: one line, exit 1 (store.cli's table), nothing created
    return Store(path)  # applies the migrations it lacks (blind_pairs: m011)


def _parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m finetune.rate",
                        description="Blind pairs for any rater, and their ratings as judgments (docs/rating.md).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    db = {"help": "DuckDB store (default: $CRITIC_DISTILL_DB or ./traces.duckdb)"}

    e = sub.add_parser("export", help="write blind pairs of two systems' outputs; the key stays in the store")
    e.add_argument("--x", required=True, metavar="SYSTEM", help="a student's producer, a teacher spec, or 'teacher'")
    e.add_argument("--y", required=True, metavar="SYSTEM", help="the other system")
    e.add_argument("--split", default="test", help="the inputs' split (default test)")
    e.add_argument("--teacher", metavar="SPEC", help="which teacher 'teacher' means when the store has several")
    e.add_argument("--task", help="only the inputs of this task (its name as the store has it, or a task spec)")
    e.add_argument("--repeat", type=int, default=10, metavar="N",
                   help="show N pairs again with the sides swapped, to measure the rater's consistency (default 10)")
    e.add_argument("--seed", type=int, default=0, help="seeds the A/B order, the pair ids and the shuffle")
    e.add_argument("-o", "--out", required=True, metavar="FILE", help="the pairs file to write (.jsonl)")
    e.add_argument("--db", **db)

    i = sub.add_parser("import", help="store a ratings file as judgments and verdicts of rater:NAME")
    i.add_argument("ratings", metavar="RATINGS", help=".jsonl or .csv: pair_id, choice (A|B|tie), "
                                                      "optional score_a, score_b, reason")
    i.add_argument("--rater", required=True, metavar="NAME", help="who rated (stored as judge rater:NAME)")
    i.add_argument("--db", **db)

    r = sub.add_parser("report", help="the rater's win-tie rate of x over y, consistency, and agreement with critics")
    r.add_argument("--rater", required=True, metavar="NAME")
    r.add_argument("--x", required=True, metavar="SYSTEM")
    r.add_argument("--y", required=True, metavar="SYSTEM")
    r.add_argument("--split", help="only this split (default: every split rated)")
    r.add_argument("--teacher", metavar="SPEC", help="which teacher 'teacher' means when the store has several")
    r.add_argument("--format", choices=["text", "json"], default="text")
    r.add_argument("--db", **db)

    a = sub.add_parser("audit-pairs", help="the rater's decided pairs as a metrics.audit pairs file")
    a.add_argument("--rater", required=True, metavar="NAME")
    a.add_argument("-o", "--out", required=True, metavar="FILE")
    a.add_argument("--split", help="only this split")
    a.add_argument("--db", **db)
    return ap


def _db_flag(args) -> str:
    return f" --db {shlex.quote(args.db)}" if args.db else ""


@entry_point()
def main(argv: list[str] | None = None) -> int:
    """Blind pairs out, ratings back in as judgments, the rater's numbers beside the critic's."""
    args = _parser().parse_args(argv)
    if args.command == "import":
        judge = _judge(args.rater)
        read_ratings(args.ratings)  # a bad file fails before the store is opened (opening may migrate it)
        store = _open(args.db)
        s = import_ratings(store, args.ratings, rater=args.rater)
        store.close()
        x, y = s["systems"][0] if len(s["systems"]) == 1 else ("X", "Y")
        print(f"imported {s['ratings']} ratings ({s['ties']} ties, {s['repeats']} swapped repeats, {s['scores']} "
              f"scores) from {s['file']} as {judge}: {s['judgments_written']} judgments and {s['verdicts_written']} "
              f"verdicts written, {s['verdicts']} pairs rated; next: python -m finetune.rate report --rater "
              f"{shlex.quote(args.rater)} --x {shlex.quote(x)} --y {shlex.quote(y)}{_db_flag(args)}")
        return 0
    if args.command == "export":
        store = _open(args.db)
        e = plan_export(store, x=args.x, y=args.y, split=args.split, teacher=args.teacher, repeat=args.repeat,
                    seed=args.seed, task=args.task)
        path = write_pairs(e.rows, args.out)
        store.insert("blind_pairs", e.key)  # after the file is written: no key without its file
        store.close()
        print(f"wrote {len(e.rows)} pairs ({e.pairs} + {e.repeats} swapped repeats) to {path}; {e.identical} inputs "
              f"with identical outputs not shown (ties); next: have the file rated into a ratings.jsonl "
              f"(pair_id, choice A|B|tie), then python -m finetune.rate import ratings.jsonl --rater NAME"
              f"{_db_flag(args)}")
        return 0
    store = _open(args.db)
    if args.command == "report":
        r = report(store, args.rater, args.x, args.y, args.split, teacher=args.teacher)
        print(json.dumps(r, indent=2) if args.format == "json" else format_report(r))
        return 0
    s = audit_pairs(store, args.rater, args.out, split=args.split)
    task = next((t for t in s["tasks"] if t != "humor"), None) if len(s["tasks"]) == 1 else None
    print(f"wrote {s['pairs']} decided pairs of {_judge(args.rater)} to {s['file']}; next: python -m metrics.audit "
          f"--pairs {shlex.quote(s['file'])}{f' --task {shlex.quote(task)}' if task else ''}{_db_flag(args)}")
    return 0


__all__ = ["Export", "plan_export", "Rated", "Rating", "RatingError", "System", "audit_pairs", "export_pairs", "format_report",
           "import_ratings", "paired_rating_difference", "rated_pairs", "rater_verdicts", "read_ratings", "report",
           "resolve_system", "write_pairs"]


if __name__ == "__main__":
    sys.exit(main())
