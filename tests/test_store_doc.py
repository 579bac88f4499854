"""docs/store.md describes the store the migrations build: the same tables, the same views, the same columns.

A real store (every migration in `store/migrations.py` applied to a fresh DuckDB file) is read from DuckDB's catalog
and compared with the schema docs/store.md lays out: under `## Schema`, each table is a `### \\`name\\`` heading and
each view a `#### \\`name\\`` heading under `### Views`, followed by a markdown table whose first cell names the
column(s) in backticks. The test fails naming each table, view and column that one side has and the other lacks.
Every ```sql example in the doc runs on that store too.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from store.db import Store

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "store.md"

_HEADING = re.compile(r"^(#{2,4}) (.*)$")
_OBJECT = re.compile(r"^`(\w+)`")
_NAME = re.compile(r"`(\w+)`")


def documented_schema(text: str) -> dict[str, tuple[str, set[str]]]:
    """{name: (kind, columns)} for every table and view that the doc's `## Schema` section gives a heading."""
    objects: dict[str, tuple[str, set[str]]] = {}
    in_schema = in_views = False
    current: str | None = None
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        heading = _HEADING.match(line)
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            current = None
            if level == 2:
                in_schema, in_views = title == "Schema", False
            elif in_schema and level == 3 and title == "Views":
                in_views = True
            elif in_schema:
                name = _OBJECT.match(title)
                if level == 3:
                    in_views = False
                if name and (level == 3 or (level == 4 and in_views)):
                    current = name.group(1)
                    assert current not in objects, f"docs/store.md describes {current} twice"
                    objects[current] = ("view" if level == 4 else "table", set())
            continue
        if current and line.startswith("|"):
            first = line.strip("|").split("|")[0]
            objects[current][1].update(_NAME.findall(first))
    return objects


def store_schema(path: Path) -> dict[str, tuple[str, set[str]]]:
    """{name: (kind, columns)} for every table and view in the store's main schema, from DuckDB's catalog."""
    Store(path)
    with duckdb.connect(str(path), read_only=True) as con:
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables "
                                 "WHERE table_schema = 'main'").fetchall())
        out: dict[str, tuple[str, set[str]]] = {
            name: ("view" if kind == "VIEW" else "table", set()) for name, kind in kinds.items()}
        for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns "
                                         "WHERE table_schema = 'main'").fetchall():
            out[table][1].add(column)
    return out


def schema_differences(doc: dict, real: dict) -> list[str]:
    problems = []
    for name in sorted(doc.keys() - real.keys()):
        problems.append(f"{doc[name][0]} {name}: in docs/store.md, not in the store")
    for name in sorted(real.keys() - doc.keys()):
        problems.append(f"{real[name][0]} {name}: in the store, not in docs/store.md")
    for name in sorted(doc.keys() & real.keys()):
        (doc_kind, doc_cols), (real_kind, real_cols) = doc[name], real[name]
        if doc_kind != real_kind:
            problems.append(f"{name}: docs/store.md describes a {doc_kind}, the store has a {real_kind}")
        problems += [f"column {name}.{c}: in docs/store.md, not in the store" for c in sorted(doc_cols - real_cols)]
        problems += [f"column {name}.{c}: in the store, not in docs/store.md" for c in sorted(real_cols - doc_cols)]
    return problems


def test_the_doc_parser_reads_tables_views_and_columns():
    text = """
## Schema
### `runs` — one row per command
| column | type | meaning |
|---|---|---|
| `run_id` | VARCHAR, PK | hash, see `runs` |
| `started_at`, `finished_at` | TIMESTAMP | |
### Views
#### `win_rates` — a view
| column | meaning |
|---|---|
| `objective` | the `training_runs` objective |
```sql
| `not_a_column` |
```
## Budgets
### `not_schema`
| `nothing` |
"""
    assert documented_schema(text) == {"runs": ("table", {"run_id", "started_at", "finished_at"}),
                                       "win_rates": ("view", {"objective"})}
    real = {"runs": ("table", {"run_id", "started_at", "status"}), "win_rates": ("table", {"objective"}),
            "audits": ("table", {"audit_id"})}
    assert schema_differences(documented_schema(text), real) == [
        "table audits: in the store, not in docs/store.md",
        "column runs.finished_at: in docs/store.md, not in the store",
        "column runs.status: in the store, not in docs/store.md",
        "win_rates: docs/store.md describes a view, the store has a table",
    ]


def test_docs_store_md_matches_the_migrated_store(tmp_path):
    doc = documented_schema(DOC.read_text())
    real = store_schema(tmp_path / "t.duckdb")
    problems = schema_differences(doc, real)
    assert not problems, "docs/store.md and store/migrations.py disagree:\n" + "\n".join(problems)


def test_every_sql_example_in_the_doc_runs_on_the_migrated_store(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 20
    failures = []
    for sql in blocks:
        try:
            store.query(sql)
        except Exception as exc:  # noqa: BLE001 - collect every failing example
            failures.append(f"{sql.strip().splitlines()[0]} ...: {exc}")
    assert not failures, "docs/store.md examples that do not run:\n" + "\n".join(failures)
