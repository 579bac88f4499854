"""Input sources (the bundled sentences, a txt/jsonl/csv/parquet file, or EmpatheticDialogues when online) and the
run's choice among them per split.

Every source yields `{"text", "split"}` rows; a file without a split column is split by a hash of the text
(70/15/15 train/dev/test), so a row keeps its split across reruns and machines.
"""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from programs.tasks import Task
from store.errors import UserError

if TYPE_CHECKING:
    from programs.config import PipelineConfig

TEXT_COLUMNS = ("text", "input", "sentence", "prompt", "utterance")
REFERENCE_COLUMNS = ("reference", "teacher", "target", "output")
SPLITS = ("train", "dev", "test", "ood")


class InputError(UserError):
    """Bad or unreadable inputs: one line for the user."""


def hash_split(text: str) -> str:
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < 15 else "dev" if bucket < 30 else "train"


def _split(record: dict, split_col: str | None, text: str) -> str:
    """The record's own split, or one by a hash of `text` when it names none that we know."""
    split = str(record.get(split_col) or "").strip().lower() if split_col else ""
    return split if split in SPLITS else hash_split(text)


def _check_text(value: object, path: Path, where: str, field: str) -> None:
    """A text field holds a string (or nothing): a list, an object, a number or a boolean would become its Python
    text silently, so it is refused in one line that names the file, the line (or row) and the field."""
    if value is not None and not isinstance(value, str):
        kind = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}.get(
            type(value), f"a {type(value).__name__}")
        raise InputError(f"{path}:{where}: field {field!r} is {kind}, not text ({str(value)[:60]})")


def _field_rows(records: list[dict], path: Path, where: list[str] | None, task: Task) -> list[dict]:
    """Rows of a task with several input fields: one column per field, the row's text their JSON object."""
    keys = {k.lower(): k for k in records[0]}
    missing = [f for f in task.inputs if f not in keys]
    if missing:
        raise InputError(f"{path}: no column for the task's input field(s) {', '.join(missing)} (task {task.name!r} "
                         f"takes {', '.join(task.inputs)}; found {', '.join(records[0])})")
    split_col = keys.get("split")
    typed = task.types  # a field that is not text takes its JSON value as it is (a list, a number)
    rows = []
    for i, r in enumerate(records):
        place = where[i] if where else f"row {i + 1}"
        for field in [keys[f] for f in task.inputs if f not in typed] + ([split_col] if split_col else []):
            _check_text(r.get(field), path, place, field)
        values = {f: r.get(keys[f]) if f in typed else " ".join(str(r.get(keys[f]) or "").split())
                  for f in task.inputs}
        if not all(v is not None if f in typed else v for f, v in values.items()):
            empty = [f for f, v in values.items() if v is None or v == ""]
            raise InputError(f"{path}:{place}: empty input field(s) {', '.join(empty)}")
        text = task.encode_inputs(values)
        rows.append({"text": text, "split": _split(r, split_col, text)})
    return rows


def _rows_from_records(records: list[dict], path: Path, where: list[str] | None = None,
                       task: Task | None = None) -> list[dict]:
    """Rows from records; `where` names each record's place for errors (`3` for line 3, `row 3`). A task with
    several input fields takes a column for each; a task with one takes its field's column, or a text column."""
    if not records:
        return []
    if task is not None and len(task.inputs) > 1:
        return _field_rows(records, path, where, task)
    keys = {k.lower(): k for k in records[0]}
    names = ((next(iter(task.inputs)),) if task is not None else ()) + TEXT_COLUMNS
    col = next((keys[c] for c in names if c in keys), None)
    if col is None:
        raise InputError(f"{path}: no text column (looked for {', '.join(dict.fromkeys(names))}; found "
                         f"{', '.join(records[0])})")
    split_col = keys.get("split")
    ref_col = next((keys[c] for c in REFERENCE_COLUMNS if c in keys and keys[c] != col), None)
    rows = []
    for i, r in enumerate(records):
        for field in (col, split_col, ref_col):
            if field is not None:
                _check_text(r.get(field), path, where[i] if where else f"row {i + 1}", field)
        text = r.get(col)
        if text is None or not str(text).strip():
            continue
        row = {"text": " ".join(str(text).split()), "split": _split(r, split_col, str(text))}
        if ref_col and r.get(ref_col) is not None and str(r[ref_col]).strip():
            row["reference"] = " ".join(str(r[ref_col]).split())  # a teacher reference that comes with the input
        rows.append(row)
    return rows


def load_file(path: str | Path, task: Task | None = None) -> list[dict]:
    """Rows of an input file, with the columns `task`'s input fields name (by default one text column)."""
    p = Path(path).expanduser()
    try:
        if not p.exists():
            raise InputError(f"input file not found: {p}")
    except OSError as e:  # a name too long, a folder that cannot be searched
        raise InputError(f"cannot read {p}: {e.strerror or e}") from e
    if p.is_dir():
        raise InputError(f"{p} is a folder; pass a .txt, .jsonl, .csv or .parquet file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".txt":
            lines = p.read_text(encoding="utf-8").splitlines()
            if task is not None and len(task.inputs) > 1:
                raise InputError(f"{p}: a .txt file holds one text a line; task {task.name!r} takes the fields "
                                 f"{', '.join(task.inputs)}: use .jsonl, .csv or .parquet with a column for each")
            rows = [{"text": " ".join(t.split()), "split": hash_split(" ".join(t.split()))} for t in lines if t.strip()]
        elif suffix in (".jsonl", ".json"):
            records, where = [], []
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"{p}:{i}: not valid JSON ({e.msg})") from e
                    records.append(rec if isinstance(rec, dict) else {"text": rec})
                    where.append(str(i))
            rows = _rows_from_records(records, p, where, task)
        elif suffix == ".csv":
            with open(p, newline="", encoding="utf-8-sig") as f:  # "CSV UTF-8" from a spreadsheet starts with a BOM
                rows = _rows_from_records(list(csv.DictReader(f)), p, task=task)  # every CSV value is text
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = _rows_from_records(pq.read_table(p).to_pylist(), p, task=task)
        else:
            raise InputError(f"{p}: unsupported input type {suffix or '(none)'}; use .txt, .jsonl, .csv or .parquet")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text ({e.reason})") from e
    except OSError as e:
        raise InputError(f"cannot read {p}: {e.strerror or e}") from e
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt parquet/csv: say so in one line
        raise InputError(f"cannot read {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if not rows:
        raise InputError(f"{p} has no input texts")
    return rows


def load_empathetic_dialogues(limit: int | None = None) -> list[dict]:
    """The paper's source: first-person situation prompts from EmpatheticDialogues (needs the network)."""
    try:
        from datasets import load_dataset

        rows = []
        for split, ours in (("train", "train"), ("validation", "dev"), ("test", "test")):
            ds = load_dataset("facebook/empathetic_dialogues", split=split)
            seen = set()
            for prompt in ds["prompt"]:
                text = " ".join(prompt.replace("_comma_", ",").split())
                if text not in seen:
                    seen.add(text)
                    rows.append({"text": text, "split": ours})
    except Exception as e:  # noqa: BLE001
        raise InputError(f"cannot load EmpatheticDialogues (offline? use the bundled inputs or a file): {str(e)[:200]}") from e
    return rows[:limit] if limit else rows


def load_inputs(source: str, task: Task) -> list[dict]:
    """`bundled`, `empathetic_dialogues`, or a file path."""
    if source == "bundled":
        if task.bundled_inputs is None:
            raise InputError(f"task {task.name} has no bundled inputs; pass --inputs FILE")
        return load_file(task.bundled_inputs, task)
    if source in ("empathetic_dialogues", "hf:empathetic_dialogues"):
        return load_empathetic_dialogues()
    return load_file(source, task)


def split_inputs(cfg: PipelineConfig, task: Task) -> tuple[dict[str, list[dict]], int]:
    """The run's inputs per split (input_id = hash of task + text, so a rerun finds the same rows), and how many
    evaluation inputs were dropped because the same text is among the train inputs (a student evaluated on what it
    was trained on; a file's split column can do that). Inputs without such overlap, the bundled ones included, are
    chosen exactly as before."""
    from store import stable_id

    rows = load_inputs(cfg.inputs, task)
    chosen: dict[str, list[dict]] = {}
    dropped = 0
    for split in ("train", cfg.eval_split):
        items = [r for r in rows if r["split"] == split]
        if split != "train":
            trained = {r["text"] for r in chosen["train"]}
            kept = [r for r in items if r["text"] not in trained]
            dropped, items = len(items) - len(kept), kept
            if dropped:
                from programs.progress import console

                console.print(f"warning: {dropped} {split} input(s) also in train were dropped from {split}",
                              highlight=False, soft_wrap=True)
        limit = cfg.split_limit(split)
        items = items[:limit] if limit else items
        if not items:
            raise InputError(f"the inputs have no {split!r} rows (add a 'split' column, or more rows)")
        chosen[split] = [{"input_id": stable_id("input", task.name, r["text"]), "text": r["text"], "split": split}
                         for r in items]
    if cfg.ood_inputs:
        # the task's out-of-distribution file, else the inputs' rows whose split is 'ood'
        ood = load_file(task.ood_inputs, task) if task.ood_inputs else [r for r in rows if r["split"] == "ood"]
        if not ood:
            raise InputError(f"task {task.name} has no out-of-distribution inputs (no ood_inputs file, no rows "
                             "with split 'ood'); pass --ood 0")
        chosen["ood"] = [{"input_id": stable_id("input", task.name, r["text"]), "text": r["text"], "split": "ood"}
                         for r in ood[: cfg.ood_inputs]]
    return chosen, dropped


def store_inputs(store, cfg: PipelineConfig, task: Task, chosen: dict[str, list[dict]]) -> None:
    source = cfg.inputs if cfg.inputs in ("bundled", "empathetic_dialogues") else str(Path(cfg.inputs).resolve())
    store.insert("inputs", [{**r, "task": task.name, "source": source, "created_at": datetime.now()}
                            for items in chosen.values() for r in items])
