"""`python -m store`: read the trace store from the command line (a thin layer over `store.Store`).

    python -m store query "SELECT stage, sum(cost) FROM lm_calls GROUP BY stage" [--db PATH] [--format table|csv|json]
    python -m store tables [--db PATH]
    python -m store schema [--db PATH]
    python -m store export NAME -o DEST [--format jsonl|parquet|hf] [--force] [--raw] [--db PATH]
    python -m store export --sql "SELECT ..." -o DEST [...]
    python -m store export --traces DIR [--force] [--db PATH]

Read-only: a write statement is refused (exit 2); `export` writes only its destination (`store.export`). A missing file or a SQL error is one line on stderr (exit 1; the
exit codes of every command are in `store.errors`).
Every command opens the file only for as long as it reads, so it works while a pipeline is writing to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from decimal import Decimal
from typing import Any

from store.cli import ArgumentParser, entry_point, say
from store.errors import UserError
from store.db import Store, StoreError, default_path

CELL_CHARS = 120  # table cells are cut here; use --format csv or json for whole values


@entry_point()
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        store = Store(getattr(args, "db", None) or default_path(), create=False)
        if args.command == "query":
            _print_rows(store.query(args.sql), args.format)
        elif args.command == "tables":
            _print_tables(store.tables())
        elif args.command == "export":
            _export(store, args)
        else:
            _print_schema(store)
    except (UserError, BrokenPipeError):
        raise
    except Exception as exc:  # a DuckDB error the store did not translate: still one line, never a traceback
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc
    return 0


def _parser() -> argparse.ArgumentParser:
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--db", default=argparse.SUPPRESS, metavar="PATH",
                    help="the DuckDB file (default: $CRITIC_DISTILL_DB or ./traces.duckdb)")
    parser = ArgumentParser(prog="python -m store", parents=[db],
                                     description="Read the critic-distill trace store (read-only).")
    sub = parser.add_subparsers(dest="command", required=True)
    query = sub.add_parser("query", parents=[db], help="run a read-only SQL query and print the rows")
    query.add_argument("sql", help="SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN statement")
    query.add_argument("--format", "-f", choices=["table", "csv", "json"], default="table")
    sub.add_parser("tables", parents=[db], help="list tables and views with their row counts")
    sub.add_parser("schema", parents=[db], help="print the CREATE statement of every table, view and index")
    export = sub.add_parser("export", parents=[db], help="write a dataset or a query's rows as chat JSONL, Parquet or "
                                                         "a Hugging Face datasets folder; or every table as Parquet")
    export.add_argument("dataset", nargs="?", help="a dataset's name (the newest of that name) or id (datasets table)")
    export.add_argument("--sql", help="a read-only query instead of a dataset")
    export.add_argument("--out", "-o", metavar="DEST", help="the file or folder to write")
    export.add_argument("--format", "-f", choices=["jsonl", "parquet", "hf"],
                        help="default: from DEST's extension (.jsonl, .parquet; none: a datasets folder)")
    export.add_argument("--traces", metavar="DIR", help="write every table as DIR/<table>.parquet instead")
    export.add_argument("--force", action="store_true", help="replace DEST if it exists")
    export.add_argument("--raw", action="store_true", help="the rows as they are, not in chat format")
    return parser


def _export(store: Store, args: argparse.Namespace) -> None:
    from store.export import ExportError, export, export_traces

    if args.traces:
        if args.dataset or args.sql or args.out:
            raise ExportError("--traces writes every table: give it no dataset, --sql or --out")
        paths = export_traces(store, args.traces, force=args.force)
        say(f"wrote {len(paths)} tables to {args.traces}/ as Parquet")
        return
    if not args.out:
        raise ExportError("pass --out DEST (a .jsonl or .parquet file, or a folder for a datasets folder)")
    dest, n, what = export(store, args.out, dataset=args.dataset, sql=args.sql, fmt=args.format, force=args.force,
                           raw=args.raw)
    say(f"wrote {n} rows of {what} to {dest}")


# -- output ----------------------------------------------------------------------------------------------------


def _print_rows(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        json.dump(rows, sys.stdout, default=str, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    elif fmt == "csv":
        if rows:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(rows[0].keys())
            writer.writerows([_cell(v) for v in row.values()] for row in rows)
    elif not rows:
        print("(no rows)", file=sys.stderr)
    else:
        from rich.table import Table
        from rich.text import Text

        table = Table()
        for name in rows[0]:
            values = [row[name] for row in rows if row[name] is not None]
            numeric = bool(values) and all(isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) for v in values)
            table.add_column(Text(str(name)), overflow="fold", min_width=min(len(str(name)), 12),
                             justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*(Text(_short(_cell(v))) for v in row.values()))
        _console().print(table)


def _print_tables(tables: list[tuple[str, str, int]]) -> None:
    from rich.table import Table

    table = Table()
    table.add_column("name")
    table.add_column("kind")
    table.add_column("rows", justify="right")
    for name, kind, rows in tables:
        table.add_row(name, kind, f"{rows:,}")
    _console().print(table)


def _console():
    """The terminal's width on a terminal; piped into a file or a pager, the table's own width (no folding)."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=100_000)


def _print_schema(store: Store) -> None:
    migrations = store.query("SELECT version, name, applied_at FROM _migrations ORDER BY version")
    for m in migrations:
        print(f"-- migration {m['version']}: {m['name']} (applied {m['applied_at']:%Y-%m-%d %H:%M:%S})")
    statements = store.query(
        "SELECT sql FROM (SELECT 1 AS k, table_name AS name, sql FROM duckdb_tables() WHERE schema_name = 'main' "
        "UNION ALL SELECT 2, view_name, sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' "
        "UNION ALL SELECT 3, index_name, sql FROM duckdb_indexes() WHERE schema_name = 'main') "
        "WHERE name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY k, name"
    )
    for row in statements:
        print()
        print(_pretty_create(row["sql"]))


def _pretty_create(sql: str) -> str:
    """CREATE TABLE with one column a line; other statements as DuckDB stores them."""
    if not sql.upper().startswith("CREATE TABLE") or "(" not in sql:
        return sql
    head, body = sql.split("(", 1)
    body = body.rstrip().rstrip(";").rstrip()
    if body.endswith(")"):
        body = body[:-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(body[start:i].strip())
            start = i + 1
    parts.append(body[start:].strip())
    return head.rstrip() + " (\n" + ",\n".join(f"    {p}" for p in parts) + "\n);"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return value


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m store query ... | head`: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
