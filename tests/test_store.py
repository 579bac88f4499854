"""The trace store on real DuckDB files: migrations, idempotent and buffered writes, read-only queries, the CLI,
a reader beside a writing process, secrets kept out of the file, and the LM cache served from `lm_cache`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from store import stable_id
from store.db import ReadOnlyError, Store, StoreError
from store.migrations import MIGRATIONS, migrate

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(ROOT)}
SECRET_KEY = "sk-test-PLANTEDSECRET123456"
SECRET_HEADER = "Bearer PLANTEDSECRET"
PLANTED = ["PLANTEDSECRET", SECRET_KEY, SECRET_HEADER]


def _input(i: int, text: str | None = None) -> dict:
    text = text or f"sentence {i}"
    return {"input_id": stable_id("input", "humor", text), "task": "humor", "text": text, "split": "train",
            "source": "test", "created_at": datetime(2025, 1, 1)}


def _lm_call(i: int, run_id: str = "run-1") -> dict:
    return {"call_id": f"call-{i}", "run_id": run_id, "stage": "teach", "model": "openai/test",
            "messages": json.dumps([{"role": "user", "content": f"paraphrase {i}"}]), "prompt_tokens": 10,
            "completion_tokens": 5, "latency_s": 0.1, "cost": 0.001, "cache_hit": i % 2 == 0, "created_at": datetime.now()}


def _cli(*args: str, db: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "store", *args] + (["--db", str(db)] if db is not None else [])
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)


def _count(path: Path, table: str) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "traces.duckdb"
    Store(path)
    return path


@pytest.fixture
def filled(db) -> Path:
    store = Store(db)
    store.insert("inputs", [_input(i) for i in range(3)])
    store.insert("lm_calls", [_lm_call(i) for i in range(4)])
    return db


# -- schema and writes -------------------------------------------------------------------------------------------


def test_migrations_applied_once_and_recorded(tmp_path):
    path = tmp_path / "t.duckdb"
    Store(path)
    first = Store(path).query("SELECT version, name, applied_at FROM _migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in first] == [(i, fn.__name__) for i, fn in enumerate(MIGRATIONS, 1)]

    store = Store(path)  # reopening applies nothing and records nothing new
    assert store.query("SELECT version, name, applied_at FROM _migrations ORDER BY version") == first
    with store.connect() as con:
        assert migrate(con) == []
    names = {name for name, _, _ in store.tables()}
    assert {"runs", "lm_calls", "lm_cache", "judgments", "teacher_pairs", "judgment_orders", "win_rates",
            "cost_per_stage"} <= names
    assert "_migrations" not in names


def test_inserts_are_idempotent(db):
    store = Store(db)
    rows = [_input(i) for i in range(5)]
    store.insert("inputs", rows)
    store.insert("inputs", rows)
    store.insert("inputs", rows[:2] + rows[:2])  # duplicates inside one batch too
    assert _count(db, "inputs") == 5

    store.insert("inputs", [{**rows[0], "split": "dev"}])  # an existing id is skipped, not changed ...
    assert store.scalar("SELECT split FROM inputs WHERE input_id = ?", [rows[0]["input_id"]]) == "train"
    store.insert("inputs", [{**rows[0], "split": "dev"}], replace=True)  # ... unless asked to replace
    assert store.scalar("SELECT split FROM inputs WHERE input_id = ?", [rows[0]["input_id"]]) == "dev"
    assert _count(db, "inputs") == 5
    assert stable_id("input", "humor", "x") == stable_id("input", "humor", "x") != stable_id("input", "humor", "y")


def test_insert_column_subset_and_unknown_column(db):
    store = Store(db)
    store.insert("runs", [{"run_id": "r1", "status": "running"}])
    assert store.query("SELECT run_id, status, command FROM runs") == [{"run_id": "r1", "status": "running",
                                                                          "command": None}]
    with pytest.raises(StoreError, match="no column"):
        store.insert("runs", [{"run_id": "r2", "nope": 1}])



def test_large_batch_streams_in_the_table_types_and_casts_odd_values(db):
    """A batch bigger than one Arrow chunk goes to DuckDB as a stream; a chunk whose values are not of their
    columns' types (an int model name, ISO text for a timestamp) is inferred and cast, not lost."""
    store = Store(db)
    rows = [_lm_call(i) for i in range(12_000)]
    for i in range(10_000, 12_000):  # the last chunk as another producer might write it
        rows[i] = {**rows[i], "model": 7, "created_at": "2026-01-02 03:04:05"}
    store.insert("lm_calls", rows)
    store.insert("lm_calls", rows[:6_000])  # a repeat adds nothing
    assert _count(db, "lm_calls") == 12_000
    odd = store.query("SELECT model, created_at FROM lm_calls WHERE call_id = 'call-11000'")[0]
    assert odd == {"model": "7", "created_at": datetime(2026, 1, 2, 3, 4, 5)}
    assert store.scalar("SELECT sum(prompt_tokens) FROM lm_calls") == 120_000
    with pytest.raises((StoreError, duckdb.Error)):
        store.insert("lm_calls", [_lm_call(i) for i in range(20_000, 26_000)] + [{**_lm_call(0), "call_id": "bad",
                                                                                  "prompt_tokens": "many"}])
    assert _count(db, "lm_calls") == 12_000  # a batch that fails writes nothing

def test_buffered_add_then_flush(db):
    writer = Store(db, batch_rows=1000, flush_seconds=3600)
    for i in range(10):
        writer.add("lm_calls", _lm_call(i))
    writer.add("lm_calls", _lm_call(0))  # same id twice: one row
    assert _count(db, "lm_calls") == 0  # buffered, not on disk yet
    writer.flush()
    assert _count(db, "lm_calls") == 10

    small = Store(db, batch_rows=5, flush_seconds=3600)
    for i in range(100, 105):
        small.add("lm_calls", _lm_call(i))  # the fifth row fills the batch: written without flush()
    assert _count(db, "lm_calls") == 15
    with Store(db, batch_rows=1000, flush_seconds=3600) as ctx:
        ctx.add("inputs", _input(1))
    assert _count(db, "inputs") == 1  # closing the store flushes it


def test_flushes_wait_in_the_write_ahead_log_until_close(db):
    """Small flushes stay in `.wal` (a checkpoint per flush rewrote whole row groups), readers see them anyway, and
    closing the store checkpoints: the command leaves one self-contained file."""
    wal = Path(f"{db}.wal")
    store = Store(db, flush_seconds=3600)
    for i in range(3):
        store.add("lm_calls", _lm_call(i))
        store.flush()
    assert wal.exists() and wal.stat().st_size > 0
    assert _count(db, "lm_calls") == 3  # a read-only connection sees the logged rows
    store.close()
    assert not wal.exists()
    assert _count(db, "lm_calls") == 3


def test_flush_keeps_rows_while_the_file_is_held(db):
    store = Store(db, batch_rows=1000, flush_seconds=3600, lock_timeout=0.3)
    store.add("inputs", _input(1))
    holder = duckdb.connect(str(db), read_only=True)  # someone else has the file open (here: outside the Store)
    try:
        with pytest.raises(StoreError, match="locked"):
            store.flush()
    finally:
        holder.close()
    store.add("inputs", _input(2))
    store.flush()  # the rows of the failed flush were kept, not dropped
    assert _count(db, "inputs") == 2


@pytest.mark.parametrize("sql", [
    "INSERT INTO runs (run_id) VALUES ('x')",
    "insert into runs (run_id) values ('x')",
    "UPDATE runs SET status = 'x'",
    "DELETE FROM lm_calls",
    "DROP TABLE runs",
    "CREATE TABLE evil (x INT)",
    "ALTER TABLE runs ADD COLUMN x INT",
    "  -- a comment first\n DROP TABLE runs",
    "WITH x AS (SELECT 1) INSERT INTO runs (run_id) SELECT 'x'",
    "SELECT 1; DROP TABLE runs",
    "SELECT 1; COPY (SELECT * FROM lm_calls) TO 'leak.csv'",
    "ATTACH 'other.duckdb' AS other",
    "SET threads = 1",
    "INSTALL httpfs",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'leak.csv'",
])
def test_query_refuses_writes(filled, sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store(filled)
    with pytest.raises(ReadOnlyError):
        store.query(sql)
    assert _count(filled, "runs") == 0 and _count(filled, "lm_calls") == 4
    assert "evil" not in {name for name, _, _ in store.tables()}
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_query_reads(filled):
    store = Store(filled, create=False)
    assert store.scalar("SELECT count(*) FROM lm_calls") == 4
    assert store.query("FROM cost_per_stage")[0]["calls"] == 4
    assert store.query("DESCRIBE runs")[0]["column_name"] == "run_id"
    assert store.query("SELECT text FROM inputs WHERE input_id = ?", [_input(1)["input_id"]]) == [{"text": "sentence 1"}]
    with pytest.raises(StoreError, match="(?i)binder|not found"):
        store.query("SELECT nope FROM lm_calls")
    with pytest.raises(StoreError, match="no store"):
        Store(filled.parent / "missing.duckdb", create=False)


# -- CLI -------------------------------------------------------------------------------------------------------


def test_cli_query_formats(filled):
    sql = "SELECT call_id, cache_hit, created_at FROM lm_calls ORDER BY call_id"

    table = _cli("query", sql, db=filled)
    assert table.returncode == 0, table.stderr
    assert "call_id" in table.stdout and "call-0" in table.stdout and "call-3" in table.stdout

    csv_out = _cli("query", sql, "--format", "csv", db=filled)
    assert csv_out.returncode == 0, csv_out.stderr
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0] == "call_id,cache_hit,created_at" and len(lines) == 5 and lines[1].startswith("call-0,True,")

    js = _cli("query", sql, "--format", "json", db=filled)
    assert js.returncode == 0, js.stderr
    rows = json.loads(js.stdout)
    assert [r["call_id"] for r in rows] == ["call-0", "call-1", "call-2", "call-3"]
    assert rows[0]["cache_hit"] is True and isinstance(rows[0]["created_at"], str)

    env_db = subprocess.run([sys.executable, "-m", "store", "query", "SELECT count(*) AS n FROM inputs", "-f", "json"],
                            capture_output=True, text=True, cwd=ROOT, env={**ENV, "CRITIC_DISTILL_DB": str(filled)})
    assert env_db.returncode == 0 and json.loads(env_db.stdout) == [{"n": 3}]


def test_cli_tables_and_schema(filled):
    out = _cli("tables", db=filled)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if " lm_calls " in line)
    assert "table" in line and line.rstrip(" │").endswith("4")
    assert "cost_per_stage" in out.stdout and "view" in out.stdout and "_migrations" not in out.stdout

    schema = _cli("schema", db=filled)
    assert schema.returncode == 0, schema.stderr
    assert "CREATE TABLE lm_calls (" in schema.stdout and "CREATE VIEW judgment_orders" in schema.stdout
    assert "-- migration 1: m001_initial" in schema.stdout


@pytest.mark.parametrize("sql", ["DROP TABLE lm_calls", "DELETE FROM lm_calls", "SELECT 1; DROP TABLE lm_calls"])
def test_cli_refuses_writes(filled, sql):
    out = _cli("query", sql, db=filled)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr
    assert _count(filled, "lm_calls") == 4


def test_cli_errors_are_one_line(filled, tmp_path):
    missing = _cli("query", "SELECT 1", db=tmp_path / "nope.duckdb")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "nope.duckdb" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    assert not (tmp_path / "nope.duckdb").exists()  # reading never creates a file

    bad = _cli("query", "SELEC 1", db=filled)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr


# -- a reader beside a writing process -----------------------------------------------------------------------------

WRITER = """
import sys, time
from datetime import datetime
from store.db import Store
store = Store(sys.argv[1], batch_rows=10_000, flush_seconds=3600)
i, end = 0, time.monotonic() + float(sys.argv[2])
while True:
    for _ in range(200):
        store.add("lm_calls", {"call_id": f"w-{i}", "stage": "writer", "model": "m", "messages": '[{"role": "user"}]',
                               "latency_s": 0.01, "cache_hit": False, "created_at": datetime.now()})
        i += 1
    store.flush()
    if i == 200:
        print("ready", flush=True)
    if time.monotonic() > end:
        break
    time.sleep(0.02)
print(i, flush=True)
"""


def test_cli_reads_while_another_process_writes(db):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "3"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        counts = []
        while writer.poll() is None or len(counts) < 3:
            out = _cli("query", "SELECT count(*) AS n FROM lm_calls", "--format", "json", db=db)
            assert out.returncode == 0, out.stderr
            counts.append(json.loads(out.stdout)[0]["n"])
        written = int(writer.stdout.readline())
        assert writer.wait(timeout=60) == 0, writer.stderr.read()
    finally:
        if writer.poll() is None:
            writer.kill()
    assert len(counts) >= 3
    assert counts == sorted(counts) and counts[-1] > counts[0] >= 200
    assert counts[-1] <= written == _count(db, "lm_calls")


def test_threads_read_while_another_thread_flushes(db):
    """One process, two threads: DuckDB refuses a read-only and a read-write connection to one file at once in a
    process; the store makes them take turns instead of failing (or dropping the writer's rows)."""
    import threading

    writer, reader = Store(db, batch_rows=50), Store(db, create=False)
    stop, errors, reads = threading.Event(), [], []

    def write():
        i = 0
        try:
            while not stop.is_set():
                writer.add("inputs", _input(i, f"threaded {i}"))
                i += 1
            writer.flush()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        reads.append(("written", i))

    def read():
        while not stop.is_set():
            try:
                reads.append(reader.scalar("SELECT count(*) FROM inputs"))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    start = time.monotonic()
    while time.monotonic() - start < 1.0 or (len(reads) < 3 and time.monotonic() - start < 20):
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    written = dict(r for r in reads if isinstance(r, tuple))["written"]
    counts = [r for r in reads if not isinstance(r, tuple)]
    assert len(counts) >= 2 and counts == sorted(counts)
    assert _count(db, "inputs") == written > 0


# -- DSPy: secrets never stored; the LM cache lives in lm_cache ----------------------------------------------------


def test_secrets_never_reach_the_file(db, dspy_state):
    dspy = dspy_state
    from dspy.utils.dummies import DummyLM

    from store.callback import install, trace_context

    store = Store(db)
    install(store)
    lm = DummyLM([{"answer": "blue"}, {"answer": "green"}])
    lm.kwargs.update(api_key=SECRET_KEY, headers={"Authorization": SECRET_HEADER})  # the LM's own settings
    dspy.configure(lm=lm)
    predict = dspy.Predict("question -> answer")
    with trace_context(run_id="secret-run", stage="teach"):
        assert predict(question="What colour is the sky?").answer == "blue"
        # a key pasted into the input itself is scrubbed too
        assert predict(question=f"Use key {SECRET_KEY} with header '{SECRET_HEADER}'").answer == "green"
    store.flush()

    rows = store.query("SELECT stage, run_id, model, kwargs FROM lm_calls")
    assert len(rows) == 2 and all(r["stage"] == "teach" and r["run_id"] == "secret-run" for r in rows)
    assert json.loads(rows[0]["kwargs"])["api_key"] == "[redacted]"
    assert store.scalar("SELECT count(*) FROM module_calls") == 2

    for name, _, _ in store.tables():
        text = json.dumps(store.query(f'SELECT * FROM "{name}"'), default=str)
        for secret in PLANTED:
            assert secret not in text, f"{secret!r} found in {name}"
    raw = b"".join(p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name))
    assert b"What colour is the sky?" in raw  # the scan does see stored text: the check below means something
    for secret in PLANTED:
        assert secret.encode() not in raw


class FixedEngine:
    """A custom DSPy engine: one fixed answer, and a count of the times it was really asked."""

    def __init__(self):
        self.calls = 0

    def complete(self, request):
        import dspy

        self.calls += 1
        return dspy.lm15.Response(
            id=f"fixed-{self.calls}", model=request.model,
            message=dspy.lm15.Message.assistant("[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"),
            finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=5, output_tokens=3))

    def close(self):
        pass


def test_lm_cache_lives_in_the_store(db, dspy_state):
    dspy = dspy_state
    from store.callback import install, trace_context

    engine = FixedEngine()

    def run(label: str) -> str:
        store = Store(db)  # a fresh Store, cache and callback: what a rerun in a new process gets
        install(store)
        with dspy.context(lm=dspy.LM("test/fixed", engine=engine)), trace_context(run_id=label, stage="teach"):
            answer = dspy.Predict("question -> answer")(question="What is six times seven?").answer
        store.flush()
        return answer

    assert run("first") == "42"
    assert engine.calls == 1
    assert _count(db, "lm_cache") == 1

    assert run("second") == "42"
    assert engine.calls == 1  # answered from lm_cache, the engine was not asked again

    rows = Store(db).query("SELECT run_id, cache_key, cache_hit, prompt_tokens, completion_tokens, response "
                           "FROM lm_calls ORDER BY created_at")
    assert [(r["run_id"], r["cache_hit"]) for r in rows] == [("first", False), ("second", True)]
    assert rows[0]["cache_key"] == rows[1]["cache_key"] is not None
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (5, 3)
    assert rows[1]["prompt_tokens"] is None  # a hit spends no tokens
    assert "42" in json.loads(rows[1]["response"])[0]
    assert Store(db).scalar("SELECT cache_hits FROM cost_per_stage WHERE run_id = 'second'") == 1


def test_a_process_that_ends_normally_writes_what_it_buffered(tmp_path):
    """Rows still buffered when a process exits normally are written then: no journal is left for the next writer,
    and a read-only query sees them at once."""
    db = tmp_path / "exit.duckdb"
    script = (f"from datetime import datetime\nfrom store.db import Store\nfrom store import stable_id\n"
              f"s = Store({str(db)!r})\n"
              f"s.add('inputs', {{'input_id': stable_id('input', 'humor', 'x'), 'task': 'humor', 'text': 'x', "
              f"'split': 'train', 'source': 'test', 'created_at': datetime(2025, 1, 1)}})\n"
              f"s.sync()\n")  # as the DSPy callback does after a call: a journal exists until the flush
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    assert Store(db, create=False).query("SELECT text FROM inputs") == [{"text": "x"}]
    assert not list(tmp_path.glob("exit.duckdb.journal-*"))
