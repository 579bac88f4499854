"""The DuckDB trace store: one file, short-lived connections, batched idempotent writes.

DuckDB lets one process write a file at a time and a writer's open connection locks out every other process, readers
included. So nothing here holds a connection: each flush and each query opens the file, does its work in one
transaction and closes it, retrying while another process holds the lock. That is what lets
`python -m store query` read a file that a pipeline is writing.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - imported before exit: see _flush_at_exit
import glob
import json
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from store.errors import EXIT_FAILED, EXIT_USAGE, UserError
from store.migrations import migrate

DEFAULT_DB = "traces.duckdb"
# The two call logs take most rows and have ids unique by construction (DSPy's call ids): no primary-key index to
# maintain on every insert (that index halved ingest speed); a batch skips ids already present instead.
APPEND_ONLY = {"lm_calls": "call_id", "module_calls": "call_id"}
# One DuckDB row group: the unit DuckDB compresses and writes. A flush of a burst fills one; a pipeline's slow trickle
# flushes by age (flush_seconds) long before.
ROW_GROUP = 122_880
LARGE_BATCH = 10_000
STREAM_CHUNK = 5_000  # rows per Arrow batch handed to DuckDB


class StoreError(UserError):
    """The store could not do it (no store at the path, a SQL error, a lock held too long): one line, no traceback,
    exit code 1 (`store.errors`)."""

    exit_code = EXIT_FAILED


class ReadOnlyError(StoreError):
    """A write refused by a read-only store: a user error, exit code 2."""

    exit_code = EXIT_USAGE


def default_path() -> str:
    return os.environ.get("CRITIC_DISTILL_DB") or DEFAULT_DB


def check_path(path: str | os.PathLike) -> None:
    """Fail in one line, before any model loads and without creating anything, when `path` cannot be a store: a
    folder, a file that is not a DuckDB database, or a new file whose folder cannot be created there."""
    path = str(path)
    if path.startswith("md:"):
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise StoreError(f"--db {p} is a folder; pass a file path such as {p / DEFAULT_DB}")
    if p.exists():
        with Store(p, create=False).connect(read_only=True):  # not a DuckDB file: "cannot open ..."
            return
    folder = p.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise StoreError(f"cannot create the store {p}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create the store {p}: no permission to write in {folder}")


_WRITE = re.compile(
    r"^\s*(insert|update|delete|create|drop|alter|copy|attach|detach|install|load|pragma|set|call|checkpoint|"
    r"vacuum|truncate|merge|export|import|begin|commit|rollback|use)\b",
    re.IGNORECASE,
)


_READ_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN,
                    duckdb.StatementType.MULTI}  # MULTI: PIVOT, which DuckDB expands into several statements


def _refuse_writes(sql: str) -> None:
    """Refuse every statement that is not a read, including ones after the first (`SELECT 1; COPY ... TO 'f'`):
    a read-only connection stops writes to the store, but not COPY TO, EXPORT, ATTACH, SET or INSTALL."""
    refusal = "the store is read-only here: only SELECT, WITH, DESCRIBE, SHOW, EXPLAIN and SUMMARIZE run"
    if _WRITE.match(sql):
        raise ReadOnlyError(refusal)
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise StoreError(str(exc).splitlines()[0]) from exc
    if not statements:
        raise StoreError("no SQL statement given")
    for statement in statements:
        body = re.sub(r"^\s*explain(\s+analyze)?\b", "", statement.query, flags=re.IGNORECASE)
        if statement.type not in _READ_STATEMENTS or _WRITE.match(body):
            raise ReadOnlyError(refusal)


JOURNAL = ".journal-"  # + the writing process's id and the Store's: `traces.duckdb.journal-1234-7f3a...`


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    return str(value)


def _decode(obj: dict) -> Any:
    return datetime.fromisoformat(obj["$datetime"]) if obj.keys() == {"$datetime"} else obj


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (its journal is its own business while it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    # "different configuration": this process already has the file open the other way (a read-only query in one
    # thread while another thread flushes); it clears when that connection closes, like another process's lock
    return ("lock" in text or "being used by another process" in text or "conflicting" in text
            or "different configuration" in text)


def _defer_checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Leave small writes in the write-ahead log when this connection closes. A checkpoint rewrites each table's
    last row group whole, so checkpointing at every flush cost time growing with the table (0.32 s per one-row
    flush at 1,000 `lm_calls` rows, 6% of a pipeline); DuckDB still checkpoints by itself once the log passes
    `checkpoint_threshold` (16 MB), readers see the log's rows, and `Store.close()` checkpoints at the end."""
    try:
        con.execute("PRAGMA disable_checkpoint_on_shutdown")
    except duckdb.Error:  # a server that manages its own storage (a remote store)
        pass


# A read-only connection reaches the store's own tables and views and nothing else: no file on the machine
# (`read_csv('/etc/passwd')`, `glob`, `COPY`), no URL, no extension installed or loaded on the fly; and no statement
# can undo it. The settings die with the connection's database instance, which closes with the connection.
_LOCK_DOWN = ("SET enable_external_access = false", "SET autoinstall_known_extensions = false",
              "SET autoload_known_extensions = false", "SET lock_configuration = true")


def _lock_down(con: duckdb.DuckDBPyConnection) -> None:
    for statement in _LOCK_DOWN:
        con.execute(statement)


_open_stores: weakref.WeakSet = weakref.WeakSet()  # stores with rows that may still be buffered at exit


@atexit.register
def _flush_at_exit() -> None:
    """A process that ends normally writes what its stores still buffer (a journal covers a kill; this keeps one from
    being left behind, and `python -m store query` sees the last rows at once). A first insert makes DuckDB import
    pandas, which imports concurrent.futures.thread, an import that fails once the interpreter is exiting: hence
    that import at the top of this module."""
    for store in list(_open_stores):
        try:
            store.flush()
        except Exception:  # noqa: BLE001 - the journal still holds the rows for the next writer
            pass


_path_locks: dict[str, threading.RLock] = {}
_path_locks_guard = threading.Lock()


def _path_lock(path: str) -> threading.RLock:
    """One lock per file in this process: its threads take turns with the file (DuckDB refuses a read-only and a
    read-write connection to one file in one process at once), while other processes are waited out by retrying."""
    key = path if path.startswith("md:") else os.path.abspath(path)
    with _path_locks_guard:
        return _path_locks.setdefault(key, threading.RLock())


class Store:
    """A DuckDB trace file. Cheap to create; holds no open connection between operations."""

    def __init__(self, path: str | os.PathLike | None = None, *, lock_timeout: float = 60.0,
                 batch_rows: int = ROW_GROUP, flush_seconds: float = 5.0, create: bool = True):
        self.path = str(path or default_path())
        self.lock_timeout = lock_timeout
        self.batch_rows = batch_rows
        self.flush_seconds_total = 0.0  # time spent writing buffered rows: part of the logging overhead
        self.flush_seconds = flush_seconds
        self._buffers: dict[str, list[dict]] = {}
        self._buffered = 0
        self._last_flush = time.monotonic()
        self._lock = threading.RLock()
        self._schemas: dict[str, pa.Schema] = {}
        self._unsynced: list[tuple[str, dict]] = []  # buffered rows not yet in this process's journal
        self._journal = None if self.path.startswith("md:") else f"{self.path}{JOURNAL}{os.getpid()}-{id(self):x}"
        _open_stores.add(self)
        if not self.path.startswith("md:") and not Path(self.path).exists() and not create:
            raise StoreError(f"no store at {self.path} (run the pipeline first, or pass --db PATH)")
        if create:
            if not self.path.startswith("md:"):
                try:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the store {self.path}: {exc.strerror or exc}") from exc
            with self.connect() as con:
                migrate(con)
            self._replay()

    # -- connections -------------------------------------------------------------------------------------------

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file for one unit of work, waiting while another process (or thread) holds it."""
        with _path_lock(self.path), self._connect(read_only) as con:
            if not read_only:
                _defer_checkpoint(con)
            elif not self.path.startswith("md:"):  # a remote store is itself external access
                _lock_down(con)
            yield con

    def checkpoint(self) -> None:
        """Write what the write-ahead log holds into the file itself (`close()` does this): a command leaves one
        self-contained .duckdb file behind."""
        self.flush()
        t0 = time.perf_counter()
        try:
            with self.connect() as con:
                con.execute("CHECKPOINT")
        finally:
            self.flush_seconds_total += time.perf_counter() - t0

    @contextmanager
    def _connect(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.02
        while True:
            try:
                con = duckdb.connect(self.path, read_only=read_only)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    if _is_lock_error(exc):
                        raise StoreError(f"{self.path} stayed locked by another process for {self.lock_timeout:.0f}s") from exc
                    raise StoreError(f"cannot open {self.path}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
        try:
            yield con
        finally:
            con.close()

    # -- reads -------------------------------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | None = None, *, read_only: bool = True) -> list[dict]:
        """Rows as dicts. Read-only unless asked: a write statement is refused before it reaches DuckDB."""
        if read_only:
            _refuse_writes(sql)
        self.flush()
        with self.connect(read_only=read_only) as con:
            try:
                cur = con.execute(sql, params or [])
            except duckdb.Error as exc:
                if read_only and "read-only" in str(exc).lower():
                    raise ReadOnlyError(f"the store is read-only here: {str(exc).splitlines()[0]}") from exc
                if read_only and "disabled by configuration" in str(exc):
                    raise ReadOnlyError("a query here reads the store's own tables and views only, no file or URL "
                                        f"({str(exc).splitlines()[0]})") from exc
                raise StoreError(str(exc).splitlines()[0]) from exc
            if cur.description is None:
                return []
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def columns(self, sql: str, params: Sequence[Any] | dict | None = None) -> list[str]:
        """The column names a read query returns, without reading its rows."""
        if _WRITE.match(sql):
            raise ReadOnlyError("only read queries have columns to check")
        self.flush()
        with self.connect(read_only=True) as con:
            cur = con.execute(f"SELECT * FROM ({sql.strip().rstrip(';')}) LIMIT 0", params or [])
            return [d[0] for d in cur.description]

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        rows = self.query(sql, params)
        return next(iter(rows[0].values())) if rows else None

    def tables(self) -> list[tuple[str, str, int]]:
        """(name, kind, rows) for every table and view, migrations bookkeeping excluded."""
        with self.connect(read_only=True) as con:
            objs = con.execute(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = 'main' AND table_name NOT LIKE '\\_%' ESCAPE '\\' ORDER BY table_type, table_name"
            ).fetchall()
            out = []
            for name, kind in objs:
                n = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                out.append((name, "view" if kind == "VIEW" else "table", n))
        return out

    # -- writes ------------------------------------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """One write statement in its own transaction (pipeline code only; never user SQL)."""
        self.flush()
        with self.connect() as con:
            con.execute(sql, params or [])

    def insert(self, table: str, rows: list[dict], *, replace: bool = False) -> None:
        """Insert rows now, in one transaction; rows whose id exists are skipped (or replaced)."""
        if rows:
            with self.connect() as con:
                self._insert(con, table, rows, replace)

    def add(self, table: str, row: dict) -> None:
        """Buffer a row; buffers go to disk in batches, by count or age, and on flush()."""
        with self._lock:
            self._buffers.setdefault(table, []).append(row)
            self._buffered += 1
            if self._journal is not None:
                self._unsynced.append((table, row))
            due = self._buffered >= self.batch_rows or time.monotonic() - self._last_flush > self.flush_seconds
        if due:
            self.flush()

    def sync(self) -> None:
        """Make every buffered row survive a crash, a `kill -9` included, without a flush: append the rows to this
        process's journal beside the file (one write of JSON lines, microseconds where a flush takes tens of
        milliseconds). The next `Store` opened on the file for writing puts a dead process's journal into the store;
        a flush empties the process's own. A remote (`md:`) store flushes instead."""
        if self._journal is None:
            return self.flush()
        t0 = time.perf_counter()
        with self._lock:
            rows, self._unsynced = self._unsynced, []
            if rows:
                data = "".join(json.dumps({"t": table, "r": row}, default=_encode) + "\n" for table, row in rows)
                fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data.encode())
                finally:
                    os.close(fd)
        self.flush_seconds_total += time.perf_counter() - t0

    def _replay(self) -> None:
        """Put the rows of journals left by processes that died before their flush into the store (ids make it
        idempotent: a row already there is skipped), then remove those journals."""
        for journal in Path(self.path).parent.glob(f"{glob.escape(Path(self.path).name)}{JOURNAL}*"):
            pid = journal.name.rsplit(JOURNAL, 1)[-1].split("-")[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            buffers: dict[str, list[dict]] = {}
            for line in journal.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line, object_hook=_decode)
                except json.JSONDecodeError:  # the last line of a process killed mid-write
                    continue
                buffers.setdefault(entry["t"], []).append(entry["r"])
            with self.connect() as con:
                con.execute("BEGIN TRANSACTION")
                for table, rows in buffers.items():
                    self._insert(con, table, rows, False)
                con.execute("COMMIT")
            journal.unlink(missing_ok=True)

    def flush(self) -> None:
        t0 = time.perf_counter()
        try:
            self._flush()
        finally:
            self.flush_seconds_total += time.perf_counter() - t0

    def _flush(self) -> None:
        with self._lock:
            buffers, self._buffers, self._buffered = self._buffers, {}, 0
            unsynced, self._unsynced = self._unsynced, []
            self._last_flush = time.monotonic()
            if not any(buffers.values()):
                return
            opened = False
            try:
                with self.connect() as con:
                    opened = True
                    con.execute("BEGIN TRANSACTION")
                    for table, rows in buffers.items():
                        self._insert(con, table, rows, False)
                    con.execute("COMMIT")
                if self._journal is not None and os.path.exists(self._journal):
                    os.remove(self._journal)  # every row it held is in the store now
            except BaseException:
                if not opened:  # the file could not be opened: keep the rows for the next flush instead of losing them
                    for table, rows in buffers.items():
                        self._buffers[table] = rows + self._buffers.get(table, [])
                    self._buffered += sum(len(rows) for rows in buffers.values())
                    self._unsynced = unsynced + self._unsynced
                raise

    def _arrow_schema(self, con: duckdb.DuckDBPyConnection, table: str) -> pa.Schema:
        """The table's columns, in order, with their types as Arrow types."""
        if table not in self._schemas:
            self._schemas[table] = con.sql(f'SELECT * FROM "{table}" LIMIT 0').to_arrow_table().schema
        return self._schemas[table]

    def _batch(self, con: duckdb.DuckDBPyConnection, table: str, rows: list[dict],
               present: list[str]) -> pa.RecordBatchReader | pa.Table:
        """The rows as a stream of Arrow batches in the table's own types, converted while DuckDB writes the batch
        before (DuckDB releases the GIL meanwhile): 1.4x the rows/s of converting everything first, and a typed
        struct array is the fastest route from dicts to Arrow. Rows whose values are of other types than their
        columns (an int for a VARCHAR) go as Arrow infers them, and DuckDB casts."""
        table_schema = self._arrow_schema(con, table)
        schema = pa.schema([table_schema.field(c) for c in present])
        struct = pa.struct(list(schema))

        def typed(chunk: list[dict]) -> pa.RecordBatch:
            return pa.RecordBatch.from_struct_array(pa.array(chunk, type=struct))

        def inferred(chunk: list[dict]) -> pa.Table:
            return pa.table({c: [r.get(c) for r in chunk] for c in present})

        try:
            head = typed(rows[:STREAM_CHUNK])
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return inferred(rows)

        def chunks() -> Iterator[pa.RecordBatch]:
            yield head
            for start in range(STREAM_CHUNK, len(rows), STREAM_CHUNK):
                chunk = rows[start:start + STREAM_CHUNK]
                try:
                    yield typed(chunk)
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                    try:
                        yield from inferred(chunk).cast(schema).to_batches()
                    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                        raise StoreError(f"table {table}: a value does not fit its column ({exc})") from exc

        return pa.RecordBatchReader.from_batches(schema, chunks())

    def _insert(self, con: duckdb.DuckDBPyConnection, table: str, rows: list[dict], replace: bool) -> None:
        columns = self._arrow_schema(con, table).names
        keys = set().union(*map(dict.keys, rows))
        unknown = keys - set(columns)
        if unknown:
            raise StoreError(f"table {table} has no column(s) {sorted(unknown)}")
        if table in APPEND_ONLY:  # no index to catch a repeat inside the batch itself: keep each id's first row
            key = APPEND_ONLY[table]
            rows = list({r[key]: r for r in reversed(rows)}.values())[::-1]
        present = [c for c in columns if c in keys]  # absent columns keep their defaults
        con.register("_batch", self._batch(con, table, rows, present))
        try:
            cols = ", ".join(f'"{c}"' for c in present)
            if table in APPEND_ONLY:
                key = APPEND_ONLY[table]
                con.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM _batch '
                            f'WHERE "{key}" NOT IN (SELECT "{key}" FROM "{table}")')
            else:
                verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
                con.execute(f'{verb} INTO "{table}" ({cols}) SELECT {cols} FROM _batch')
        finally:
            con.unregister("_batch")
        if len(rows) >= LARGE_BATCH:
            # a batch this big is a row group worth keeping as it is: skip the checkpoint's merging of small row
            # groups, which rewrites what earlier flushes wrote (it halved the rows/s of 10,000-row flushes)
            try:
                con.execute("SET max_vacuum_tasks = 0")
            except duckdb.Error:  # a server that does not take the setting (a remote store) merges as it likes
                pass

    def close(self) -> None:
        self.checkpoint()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
