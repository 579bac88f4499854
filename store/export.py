"""Data out: a dataset, or any read-only query, as chat JSONL, Parquet or a Hugging Face `datasets` folder; the traces
as one Parquet file per table.

A row with `input` and `output` (imitation, FT, SD; BRIO's ranked `text`) becomes the chat-messages format that TRL's
`SFTTrainer` and hosted fine-tuning APIs take, `{"messages": [..prompt.., {"role": "assistant", ...}]}`; a row with
`input`, `chosen` and `rejected` (DPO) becomes TRL's conversational preference format, `{"prompt": [...], "chosen":
[{"role": "assistant", ...}], "rejected": [...]}`. The prompt is the one the student was trained on: the chat messages
recorded with the dataset (`datasets.prompts`, written by `finetune.objectives.sql_dataset`), so the export needs no
task code. Every record keeps its other columns and carries its lineage: `dataset`, `dataset_id`, `run_id`,
`teacher`, `critic` and `p_chosen` (the critic's P(chosen >= rejected) over both orders, where a verdict made the
row; BRIO rows keep their `score`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from store.errors import UserError
from store.db import Store

FORMATS = ("jsonl", "parquet", "hf")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", "": "hf"}
LINEAGE = ("dataset", "dataset_id", "run_id", "teacher", "critic", "p_chosen")


class ExportError(UserError):
    """An export that cannot be done as asked (unknown dataset, bad destination, rows of no chat shape): one line."""


# -- what to export ------------------------------------------------------------------------------------------------


def find_dataset(store: Store, name: str) -> dict:
    """The `datasets` row named `name` (the newest one of that name), or whose id is `name` or starts with it."""
    rows = store.query("SELECT d.*, r.config ->> 'teacher' AS teacher, r.config ->> 'critic' AS critic "
                       "FROM datasets d LEFT JOIN runs r USING (run_id) "
                       "WHERE d.name = ? OR starts_with(d.dataset_id, ?) ORDER BY (d.name = ?) DESC, d.created_at DESC",
                       [name, name, name])
    if not rows:
        names = [r["name"] for r in store.query("SELECT DISTINCT name FROM datasets ORDER BY name")]
        known = f"the store has: {', '.join(names)}" if names else "the store has no datasets yet (train first)"
        raise ExportError(f"no dataset named {name!r}; {known} (or pass --sql)")
    return rows[0]


def dataset_records(store: Store, name: str) -> tuple[list[dict], dict]:
    """A dataset's rows in chat format with their lineage, and the `datasets` row they came from."""
    meta = find_dataset(store, name)
    rows = json.loads(meta["rows"]) if meta["rows"] else []
    prompts = json.loads(meta["prompts"]) if meta.get("prompts") else None
    if prompts is None and rows:
        raise ExportError(f"dataset {meta['name']} ({meta['dataset_id'][:12]}) was recorded without its prompts "
                          "(before they were kept); rerun the command that trained on it, or export --raw")
    judged = _judged(store, meta, rows)
    lineage = {"dataset": meta["name"], "dataset_id": meta["dataset_id"], "run_id": meta["run_id"],
               "teacher": meta["teacher"], "critic": meta["critic"]}
    completions = json.loads(meta["completions"]) if meta.get("completions") else [None] * len(rows)
    records = []
    for row, prompt, answers in zip(rows, prompts or [], completions):
        record = chat_record({**row, **(answers or {})}, prompt)  # the answers as the student learned them
        p = judged.get(_pair_key(row))
        records.append({**record, **lineage, "p_chosen": p})
    return records, meta


def query_records(store: Store, sql: str, *, raw: bool = False) -> list[dict]:
    """The rows of a read-only query (the path `python -m store query` takes): in chat format when they have its
    columns and not `raw`, their prompt from a `prompt` column or else the one recorded for that input."""
    rows = store.query(sql)
    if raw or not rows or not chat_kind(rows[0]):
        return rows
    recorded = _recorded_prompts(store) if "prompt" not in rows[0] else {}
    records = []
    for row in rows:
        prompt = row.pop("prompt", None)
        prompt = json.loads(prompt) if isinstance(prompt, str) else prompt or recorded.get(row["input"])
        if prompt is None:
            raise ExportError(f"no recorded training prompt for the input {row['input'][:60]!r}: select a `prompt` "
                              "column (chat messages), or export the rows as they are with --raw")
        records.append(chat_record(row, prompt))
    return records


def chat_kind(row: dict) -> str | None:
    """'preference' (input, chosen, rejected), 'sft' (input, output; or BRIO's input, text) or None."""
    if "input" not in row:
        return None
    if "chosen" in row and "rejected" in row:
        return "preference"
    if "output" in row or "text" in row:
        return "sft"
    return None


def chat_record(row: dict, prompt: list[dict]) -> dict:
    """One row as TRL's conversational format (SFT messages or a preference triple); its other columns kept."""
    kind = chat_kind(row)
    prompt = [dict(m) for m in prompt]
    if kind == "preference":
        rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected", "prompt", "messages")}
        return {"prompt": prompt, "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}], **rest}
    if kind == "sft":
        answer = row["output"] if "output" in row else row["text"]
        rest = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
        return {"messages": [*prompt, {"role": "assistant", "content": answer}], **rest}
    raise ExportError(f"rows need columns input + output (or text), or input + chosen + rejected to be chat "
                      f"records; these have {sorted(row)} (export them as they are with --raw)")


def _pair_key(row: dict) -> tuple:
    if "chosen" in row and "rejected" in row:
        return (row.get("input"), row["chosen"], row["rejected"])
    return (row.get("input"), row.get("output"))


def _judged(store: Store, meta: dict, rows: list[dict]) -> dict[tuple, float]:
    """P(chosen >= rejected) of each row the critic's feedback verdicts made (DPO pairs, SD positives), this run's
    verdicts first: keyed (input, chosen, rejected) and (input, chosen)."""
    if not rows or not meta.get("critic") or not any("chosen" in r or meta["name"].startswith("sd") for r in rows):
        return {}
    found = store.query(
        "SELECT i.text AS input, ca.text AS a, cb.text AS b, v.p_a FROM verdicts v "
        "JOIN candidates ca ON ca.candidate_id = v.a_id JOIN candidates cb ON cb.candidate_id = v.b_id "
        "JOIN inputs i ON i.input_id = v.input_id "
        "WHERE v.judge = ? AND v.purpose = 'feedback' AND v.p_a IS NOT NULL AND list_contains(?, i.text) "
        "ORDER BY (v.run_id = ?) DESC, v.created_at DESC",
        [meta["critic"], sorted({r["input"] for r in rows if "input" in r}), meta["run_id"]])
    out: dict[tuple, float] = {}
    for v in found:
        for chosen, rejected, p in ((v["a"], v["b"], v["p_a"]), (v["b"], v["a"], 1 - v["p_a"])):
            out.setdefault((v["input"], chosen, rejected), p)
            if p >= 0.5:
                out.setdefault((v["input"], chosen), p)
    return out


def _recorded_prompts(store: Store) -> dict[str, list[dict]]:
    """input text -> the training prompt recorded for it (newest dataset first)."""
    out: dict[str, list[dict]] = {}
    for d in store.query("SELECT rows, prompts FROM datasets WHERE prompts IS NOT NULL ORDER BY created_at DESC"):
        for row, prompt in zip(json.loads(d["rows"]), json.loads(d["prompts"])):
            if "input" in row:
                out.setdefault(row["input"], prompt)
    return out


# -- where it goes -------------------------------------------------------------------------------------------------


def output_format(dest: str | os.PathLike, fmt: str | None = None) -> str:
    """The format asked for, or the one `dest`'s extension names (.jsonl, .parquet; no extension: a folder)."""
    if fmt:
        if fmt not in FORMATS:
            raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
        return fmt
    suffix = Path(dest).suffix.lower()
    if suffix not in EXTENSIONS:
        raise ExportError(f"cannot tell the format from {suffix!r}: name the file .jsonl or .parquet, or a folder, "
                          "or pass --format jsonl|parquet|hf")
    return EXTENSIONS[suffix]


def _staging(dest: Path, force: bool) -> Path:
    """A temporary sibling of `dest` to write into (renamed into place when complete), after checking `dest`."""
    if dest.exists() and not force:
        raise ExportError(f"{dest} exists; pass --force to replace it")
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=parent, prefix=f".{dest.name}."))
    except OSError as exc:
        raise ExportError(f"cannot write to {parent}: {exc.strerror or exc}") from exc


def _place(tmp: Path, dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    os.rename(tmp, dest)


def write_records(records: list[dict], dest: str | os.PathLike, fmt: str | None = None, *, force: bool = False) -> Path:
    """Write `records` to `dest` as JSONL, Parquet or a `datasets` folder; complete or not at all."""
    if not records:
        raise ExportError("nothing to export: the dataset or query has no rows")
    fmt = output_format(dest, fmt)
    dest = Path(dest)
    tmp = _staging(dest, force)
    try:
        if fmt == "jsonl":
            path = tmp / dest.name
            with path.open("w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            _place(path, dest)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            path = tmp / dest.name
            pq.write_table(_arrow(records), path)
            _place(path, dest)
        else:
            from datasets import Dataset

            path = tmp / "dataset"
            Dataset(_arrow(records)).save_to_disk(str(path))
            _place(path, dest)
    except OSError as exc:
        raise ExportError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _arrow(records: list[dict]):
    """Records as one Arrow table (values Arrow cannot type, such as Decimals in a mixed column, as text)."""
    import pyarrow as pa

    try:
        return pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.Table.from_pylist([{k: v if isinstance(v, (list, dict, type(None))) else str(v)
                                      for k, v in r.items()} for r in records])


def export_traces(store: Store, dest: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Every table of the store as `<dest>/<table>.parquet`, written to a temporary folder and renamed into place.
    Through Arrow, not DuckDB's COPY: a read-only connection may not touch files (`store.db._LOCK_DOWN`)."""
    import pyarrow.parquet as pq

    dest = Path(dest)
    tmp = _staging(dest, force)
    tables = [name for name, kind, _ in store.tables() if kind == "table"]
    try:
        store.flush()
        with store.connect(read_only=True) as con:
            for name in tables:
                cur = con.execute(f'SELECT * FROM "{name}"')
                table = cur.to_arrow_table() if hasattr(cur, "to_arrow_table") else cur.fetch_arrow_table()  # 2.x, 1.x
                pq.write_table(table, tmp / f"{name}.parquet")
        _place(tmp, dest)
    except OSError as exc:
        raise ExportError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [dest / f"{name}.parquet" for name in tables]


def export(store: Store, dest: str | os.PathLike, *, dataset: str | None = None, sql: str | None = None,
           fmt: str | None = None, force: bool = False, raw: bool = False) -> tuple[Path, int, str]:
    """Export a dataset by name (or id) or a read-only query's rows; returns (destination, rows, what)."""
    if (dataset is None) == (sql is None):
        raise ExportError("name one dataset or pass --sql, not both")
    output_format(dest, fmt)  # a bad format fails before any reading
    if dataset is not None:
        if raw:
            meta = find_dataset(store, dataset)
            records = [{**r, "dataset": meta["name"], "dataset_id": meta["dataset_id"], "run_id": meta["run_id"],
                        "teacher": meta["teacher"], "critic": meta["critic"]} for r in json.loads(meta["rows"] or "[]")]
        else:
            records, meta = dataset_records(store, dataset)
        what = f"dataset {meta['name']} ({meta['dataset_id'][:12]})"
    else:
        records, what = query_records(store, sql, raw=raw), "query"
    return write_records(records, dest, fmt, force=force), len(records), what


__all__ = ["ExportError", "chat_record", "dataset_records", "export", "export_traces", "query_records",
           "write_records"]
