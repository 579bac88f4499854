"""Audit the critic on labeled pairs, like the paper's Table 1: agreement, position bias, length bias.

    python -m metrics.audit --pairs programs/data/audit_pairs.jsonl                    # the default 1.5B critic
    python -m metrics.audit --pairs my_pairs.jsonl --critic local/qwen2.5-coder-0.5b-instruct --limit 20
    python -m metrics.audit --pairs my_pairs.jsonl --critic openai/gpt-4o-mini --format json

A pairs file has one JSON object per line: `input` (the literal sentence), `better` (the text a person prefers),
`worse` (a flat restatement or an unfaithful sentence), and optionally `id` and `worse_kind`. Each pair is judged
in both orders through `finetune.evaluate.judge_pairs` (purpose 'audit'), so the judgments are stored and a rerun
asks the critic nothing it has already answered.

In the store: the inputs (split 'audit'), the texts as candidates (role 'audit', producer 'audit-file:<sha>',
rank 2i for line i's better text and 2i + 1 for its worse one), the judgments, and one `audits` row per
(judge, file, pairs) with the summary and the per-pair details.

What is measured (the first order judged shows the better text first on even lines and second on odd ones, so the
single-order numbers are those of a critic asked once, with its position lean in them):
- agreement: share of pairs where the P(better) averaged over both orders is > 0.5 (a tie is not agreement)
- single-order agreement: the same from the first order alone
- position-flip rate: share of pairs whose parsed choice names the same position in both orders (the answer
  follows the position, not the text)
- length bias: among decided pairs where the critic disagrees with the label, the share where it chose the longer
  text; and over all decided pairs the share that went to the longer text against the share the labels give
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from metrics.winrate import Estimate, bootstrap  # noqa: E402

EXIT_USAGE = 2
DEFAULT_CRITIC = "local/qwen2.5-coder-1.5b-instruct"
CRITIC_MAX_TOKENS = 96
FIELDS = ("input", "better", "worse")


class AuditError(Exception):
    """A bad pairs file or audit request: one line for the user."""


@dataclass(frozen=True)
class PairFile:
    path: Path
    sha: str  # sha256 of the file's bytes
    pairs: list[dict]  # {id, line, input, better, worse, worse_kind?}


def load_pairs(path: str | os.PathLike) -> PairFile:
    """Read and check a pairs file; every problem is an AuditError that names the file and line."""
    p = Path(path).expanduser()
    if not p.exists():
        raise AuditError(f"pairs file not found: {p}")
    if p.is_dir():
        raise AuditError(f"{p} is a folder; pass a .jsonl file with one pair per line")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AuditError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    pairs: list[dict] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise AuditError(f"{p}:{line_no}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict):
            raise AuditError(f"{p}:{line_no}: expected a JSON object with {', '.join(FIELDS)}")
        bad = [f for f in FIELDS if not isinstance(rec.get(f), str) or not rec[f].strip()]
        if bad:
            raise AuditError(f"{p}:{line_no}: missing or empty {', '.join(repr(f) for f in bad)} "
                             f"(each line needs non-empty strings {', '.join(FIELDS)})")
        better, worse = " ".join(rec["better"].split()), " ".join(rec["worse"].split())
        if better == worse:
            raise AuditError(f"{p}:{line_no}: 'better' and 'worse' are the same text")
        pair_id = str(rec["id"]) if rec.get("id") not in (None, "") else f"line{line_no}"
        if pair_id in seen:
            raise AuditError(f"{p}:{line_no}: pair id {pair_id!r} already used on line {seen[pair_id]}")
        seen[pair_id] = line_no
        pair = {"id": pair_id, "line": line_no, "input": " ".join(rec["input"].split()), "better": better,
                "worse": worse}
        if rec.get("worse_kind"):
            pair["worse_kind"] = str(rec["worse_kind"])
        pairs.append(pair)
    if not pairs:
        raise AuditError(f"{p} has no pairs (expected one JSON object per line with {', '.join(FIELDS)})")
    return PairFile(p, hashlib.sha256(raw).hexdigest(), pairs)


def content_sha(pairs: list[dict]) -> str:
    """A hash standing in for the file's when pairs come from code rather than a file."""
    lines = [json.dumps({k: pr.get(k) for k in ("id", *FIELDS)}, sort_keys=True) for pr in pairs]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def producer_name(file_sha: str) -> str:
    return f"audit-file:{file_sha[:16]}"


def audit_input_id(task_name: str, text: str) -> str:
    """Audit inputs get their own ids (split 'audit'), apart from the same sentence in the pipeline's inputs."""
    from store import stable_id

    return stable_id("input", task_name, text, "audit")


def _words(text: str) -> int:
    return len(text.split())


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def summarize(items: list[dict]) -> dict[str, Any]:
    """The audit's numbers from per-pair rows.

    Each row: p_better (debiased, or None), better_first (the first order judged showed the better text first),
    p_first_order (P(better) from that first order alone, or None), choices ((choice, choice) of the two orders,
    each 1 | 2 | None), better_words, worse_words, worse_kind (optional).
    """
    judged = [it for it in items if it["p_better"] is not None]
    agree = [1.0 if it["p_better"] > 0.5 else 0.0 for it in judged]
    single = [1.0 if it["p_first_order"] > 0.5 else 0.0 for it in items if it["p_first_order"] is not None]
    both_parsed = [it for it in items if None not in it["choices"]]
    flips = [1.0 if it["choices"][0] == it["choices"][1] else 0.0 for it in both_parsed]

    # length: only pairs the critic decided (P != 0.5) whose texts differ in length
    decided = [it for it in judged if it["p_better"] != 0.5 and it["better_words"] != it["worse_words"]]
    chose_longer = [(it["p_better"] > 0.5) == (it["better_words"] > it["worse_words"]) for it in decided]
    disagreed = [longer for it, longer in zip(decided, chose_longer) if it["p_better"] < 0.5]
    label_longer = [it["better_words"] > it["worse_words"] for it in decided]

    # position lean, from every order judged: how often the better text wins when shown first / second
    shown_first = [c == 1 for it in items for c, pos in zip(it["choices"], it["positions"]) if c and pos == 1]
    shown_second = [c == 2 for it in items for c, pos in zip(it["choices"], it["positions"]) if c and pos == 2]
    position_two = [c == 2 for it in items for c in it["choices"] if c]

    by_kind: dict[str, dict] = {}
    for kind in sorted({it.get("worse_kind") for it in judged if it.get("worse_kind")}):
        flags = [a for it, a in zip(judged, agree) if it.get("worse_kind") == kind]
        by_kind[kind] = {"n": len(flags), "agreement": _share([bool(f) for f in flags])}

    agreement = bootstrap(agree)
    return {
        "n": len(judged),
        "n_pairs": len(items),
        "agreement": agreement,
        "single_order_agreement": bootstrap(single),
        "position_flip_rate": bootstrap(flips),
        "length_bias": _share(disagreed),
        "length_bias_n": len(disagreed),
        "longer_chosen": _share(chose_longer),
        "longer_expected": _share(label_longer),
        "length_decided_n": len(decided),
        "better_wins_when_first": _share(shown_first),
        "better_wins_when_second": _share(shown_second),
        "position_two_share": _share(position_two),
        "ties": sum(1 for it in judged if it["p_better"] == 0.5),
        "failed_pairs": len(items) - len(judged),
        "by_kind": by_kind,
    }


def audit(pairs: list[dict], critic, critic_lm, *, store, judge: str, run_id: str, source: str = "pairs",
          file_sha: str | None = None, task=None, threads: int = 1) -> dict[str, Any]:
    """Judge each labeled pair in both orders with `critic` on `critic_lm`, store the summary in `audits`, return it.

    `pairs`: dicts with input, better, worse (and id, line, worse_kind as `load_pairs` gives them). `file_sha` names
    the pairs file (producer 'audit-file:<sha>'); without it a hash of the pairs stands in.
    """
    import dspy

    from finetune.evaluate import judge_pairs, judgment_id
    from programs.adapter import LabeledAdapter
    from programs.tasks import HUMOR
    from programs.teach import candidate_id
    from store import stable_id, to_json
    from store.callback import trace_context

    task = task or HUMOR
    if not pairs:
        raise AuditError("no pairs to audit")
    pairs = [{**pr, "id": pr.get("id") or f"pair{i + 1}", "line": pr.get("line") or i + 1} for i, pr in enumerate(pairs)]
    file_sha = file_sha or content_sha(pairs)
    producer = producer_name(file_sha)
    now = datetime.now()

    inputs, candidates, items = {}, [], []
    for pr in pairs:
        input_id = audit_input_id(task.name, pr["input"])
        inputs[input_id] = {"input_id": input_id, "task": task.name, "text": pr["input"], "split": "audit",
                            "source": source, "created_at": now}
        rank = 2 * (pr["line"] - 1)  # the file is the producer's list: line i's texts at ranks 2i, 2i + 1
        better_id = candidate_id(input_id, "audit", producer, rank)
        worse_id = candidate_id(input_id, "audit", producer, rank + 1)
        for cid, text, r in ((better_id, pr["better"], rank), (worse_id, pr["worse"], rank + 1)):
            candidates.append({"candidate_id": cid, "input_id": input_id, "role": "audit", "producer": producer,
                               "rank": r, "text": text, "lm_call_id": None, "run_id": run_id, "created_at": now})
        better_first = len(items) % 2 == 0  # alternate, so that the first order alone is not always better-first
        a, b = (("better", better_id), ("worse", worse_id)) if better_first else (("worse", worse_id), ("better", better_id))
        items.append({"input_id": input_id, "text": pr["input"], "a_id": a[1], "a": pr[a[0]], "b_id": b[1], "b": pr[b[0]],
                      "pair": pr, "better_first": better_first, "better_id": better_id, "worse_id": worse_id})

    store.insert("inputs", list(inputs.values()))
    store.insert("candidates", candidates)
    context = {} if dspy.settings.adapter is not None else {"adapter": LabeledAdapter()}
    with trace_context(run_id=run_id, stage="audit"), dspy.context(**context):
        judge_pairs(store, critic, critic_lm, [{k: it[k] for k in ("input_id", "text", "a_id", "a", "b_id", "b")}
                                               for it in items],
                    judge=judge, run_id=run_id, purpose="audit", threads=threads)

    ids = [judgment_id(judge, f, s) for it in items for f, s in ((it["a_id"], it["b_id"]), (it["b_id"], it["a_id"]))]
    stored = {r["judgment_id"]: r for r in store.query(
        "SELECT judgment_id, choice, p_first, source FROM judgments WHERE list_contains(?, judgment_id)", [ids])}
    rows = []
    failed = 0
    for it in items:
        pr = it["pair"]
        orders = [stored.get(judgment_id(judge, it["a_id"], it["b_id"])) or {},
                  stored.get(judgment_id(judge, it["b_id"], it["a_id"])) or {}]
        failed += sum(1 for o in orders if o.get("p_first") is None)
        # P(better) from each order, and where the better text stood in it (1 or 2)
        positions = (1, 2) if it["better_first"] else (2, 1)
        p_orders = [None if o.get("p_first") is None else (o["p_first"] if pos == 1 else 1 - o["p_first"])
                    for o, pos in zip(orders, positions)]
        ps = [p for p in p_orders if p is not None]
        rows.append({
            "pair_id": pr["id"], "line": pr["line"], "worse_kind": pr.get("worse_kind"),
            "better_first": it["better_first"], "positions": positions,
            "choices": tuple(o.get("choice") for o in orders),
            "sources": [o.get("source") for o in orders],
            "p_orders": p_orders, "p_first_order": p_orders[0],
            "p_better": sum(ps) / len(ps) if ps else None,
            "better_words": _words(pr["better"]), "worse_words": _words(pr["worse"]),
        })
    summary = summarize(rows)
    pair_ids = [pr["id"] for pr in pairs]
    audit_id = stable_id("audit", judge, file_sha, pair_ids, *(() if task.name == "humor" else (task.name,)))
    agreement: Estimate = summary["agreement"]
    details = {
        "file_sha": file_sha, "producer": producer, "pair_ids": pair_ids, "failed_judgments": failed,
        **{k: v for k, v in summary.items() if not isinstance(v, Estimate)},
        **{k: _est_dict(v) for k, v in summary.items() if isinstance(v, Estimate)},
        "items": [{k: v for k, v in r.items() if k != "positions"} for r in rows],
    }
    store.insert("audits", [{
        "audit_id": audit_id, "run_id": run_id, "judge": judge, "source": source, "n": summary["n"],
        "agreement": _num(agreement.value), "agreement_lo": _num(agreement.lo), "agreement_hi": _num(agreement.hi),
        "position_flip_rate": _num(summary["position_flip_rate"].value),
        "single_order_agreement": _num(summary["single_order_agreement"].value),
        "length_bias": summary["length_bias"], "details": to_json(details), "created_at": datetime.now(),
    }], replace=True)
    return {"audit_id": audit_id, "run_id": run_id, "judge": judge, "source": source, "failed_judgments": failed,
            **summary, "items": rows}


def _est_dict(e: Estimate) -> dict[str, Any]:
    return {"value": _num(e.value), "lo": _num(e.lo), "hi": _num(e.hi), "n": e.n}


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result with intervals as plain dicts (for --format json)."""
    return {k: (_est_dict(v) if isinstance(v, Estimate) else v) for k, v in result.items()}


# -- CLI ---------------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _pct_ci(e: Estimate) -> str:
    if e.n == 0:
        return "-"
    return f"{100 * e.value:.1f}% [{100 * e.lo:.1f}, {100 * e.hi:.1f}]"


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"critic audit · {result['judge']}", caption=str(result["source"]), title_justify="left",
                  caption_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("over", justify="right")
    table.add_row("agreement (debiased, both orders)", _pct_ci(result["agreement"]), f"{result['n']} pairs")
    table.add_row("single-order agreement", _pct_ci(result["single_order_agreement"]),
                  f"{result['single_order_agreement'].n} pairs")
    flips = result["position_flip_rate"]
    table.add_row("position-flip rate", _pct_ci(flips), f"{flips.n} pairs")
    table.add_row("  better wins when shown 1st / 2nd",
                  f"{_pct(result['better_wins_when_first'])} / {_pct(result['better_wins_when_second'])}", "")
    table.add_row("length bias (disagreements -> longer)", _pct(result["length_bias"]),
                  f"{result['length_bias_n']} pairs")
    table.add_row("decisions -> longer (labels)",
                  f"{_pct(result['longer_chosen'])} ({_pct(result['longer_expected'])})",
                  f"{result['length_decided_n']} pairs")
    for kind, k in result["by_kind"].items():
        table.add_row(f"  agreement, worse = {kind}", _pct(k["agreement"]), f"{k['n']} pairs")
    table.add_row("ties (P = 0.5)", str(result["ties"]), "")
    table.add_row("failed judgments", str(result["failed_judgments"]), f"{2 * result['n_pairs']} judged")
    Console().print(table)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metrics.audit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, metavar="FILE.jsonl",
                   help="labeled pairs: one {input, better, worse} object per line")
    p.add_argument("--critic", default=DEFAULT_CRITIC, metavar="SPEC",
                   help=f"model spec of the critic (default {DEFAULT_CRITIC})")
    p.add_argument("--db", default=None, help="DuckDB store (default: $CRITIC_DISTILL_DB or ./traces.duckdb)")
    p.add_argument("--limit", type=int, metavar="N", help="audit only the first N pairs")
    p.add_argument("--task", default="humor", help="whose critic to audit: humor (default) | formal | a task .toml "
                                                   "file | package.module:ATTR | file.py:ATTR (docs/tasks.md)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="how to print the result")
    return p


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    pair_file = load_pairs(args.pairs)  # a bad file fails here, before any model is loaded
    if args.limit is not None and args.limit < 1:
        raise AuditError(f"--limit must be at least 1 (got {args.limit})")
    pairs = pair_file.pairs[: args.limit] if args.limit else pair_file.pairs
    from programs.tasks import TaskError, get_task

    try:
        task = get_task(args.task)
    except TaskError as e:
        raise AuditError(str(e)) from e

    import dspy

    from programs.adapter import LabeledAdapter
    from programs.critic import Critic
    from programs.lm import check_reachable
    from programs.progress import console
    from store import Store, stable_id, to_json
    from store.callback import install
    from store.db import default_path

    _quiet_libraries()
    critic_lm = resolve_lm(args.critic, temperature=0.0, max_tokens=CRITIC_MAX_TOKENS, seed=0)
    check_reachable(critic_lm)
    db = args.db or default_path()
    store = Store(db)
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    source = str(pair_file.path.resolve())
    run_id = stable_id("run", "audit", args.critic, pair_file.sha, [pr["id"] for pr in pairs],
                       *(() if task.name == "humor" else (task.name,)))  # humor keeps its earlier ids
    run_row = {"run_id": run_id, "started_at": datetime.now(), "status": "running", "command": command,
               "profile": None, "config": to_json({"pairs": source, "critic": args.critic, "limit": args.limit,
                                                     "file_sha": pair_file.sha, "task": args.task}),
               "code_version": _code_version()}
    store.insert("runs", [run_row], replace=True)
    console.print(f"audit {run_id[:12]} · critic {args.critic} · {len(pairs)} pairs · store {db}", highlight=False)
    try:
        result = audit(pairs, Critic(task, max_tokens=CRITIC_MAX_TOKENS), critic_lm, store=store, judge=args.critic,
                       run_id=run_id, source=source, file_sha=pair_file.sha, task=task,
                       threads=1 if args.critic.startswith("local/") else 4)
    except BaseException:
        store.insert("runs", [{**run_row, "status": "failed", "finished_at": datetime.now()}], replace=True)
        raise
    store.insert("runs", [{**run_row, "status": "finished", "finished_at": datetime.now()}], replace=True)
    store.close()  # flush, then checkpoint: one self-contained file
    return result


def _quiet_libraries() -> None:
    """The progress bar tells the story; the libraries' warnings and log chatter would drown it."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("LiteLLM", "litellm", "httpx", "dspy"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("critic-distill")
    except PackageNotFoundError:
        return "unknown"


def resolve_lm(spec: str, **kwargs):
    """`programs.lm.resolve_lm` (a seam for tests, which put a deterministic judge here)."""
    from programs.lm import resolve_lm as resolve

    return resolve(spec, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = "python -m metrics.audit " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        result = run(args, command)
    except AuditError as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to finish (judgments so far are kept)", file=sys.stderr)
        return 130
    except Exception as e:  # typed errors from the model and store layers: one line, no traceback
        from programs.lm import ModelSpecError
        from programs.models import ModelError
        from store import StoreError

        if isinstance(e, (ModelSpecError, ModelError)):
            return _fail(e)
        if isinstance(e, StoreError):
            return _fail(e, 1)
        raise
    if args.format == "json":
        print(json.dumps(as_json({k: v for k, v in result.items() if k != "items"}) | {"items": result["items"]},
                         default=str, indent=2))
    else:
        print_table(result)
    return 0


def _fail(e: Exception | str, code: int = EXIT_USAGE) -> int:
    from programs.progress import console

    console.print(f"[red]error:[/] {e}", soft_wrap=True, highlight=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
