"""How fast the store takes LM-call rows, and what logging costs a running DSPy program.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/store_ingest.py [--rows 100000] [--calls 100] [--sleep-ms 200]

(a) rows/s for 100,000 realistic `lm_calls` rows through `Store.insert` (one batch, then batches of 10,000) and
    through `Store.add` + `flush` (the Store's default batching), against row-by-row `executemany` INSERTs into the
    same schema in one transaction, measured in the same run (time-capped, then extrapolated). Target: >= 100,000
    rows/s batched. The 10,000-row line shows what each extra flush costs (opening the file, a checkpoint on close):
    about 75,000 rows/s here; a pipeline flushes every few seconds, far below either rate.
(b) a DSPy program of `--calls` Predict calls on an engine that sleeps `--sleep-ms` per call (a stand-in for a model:
    200 ms by default, still faster than the fastest embedded call, a 0.5B critic judgment at about 1.3 s),
    once without the store (DSPy's in-memory cache, no callbacks) and once with `store.callback.install`: both wall
    times, the callback's own seconds plus flush seconds, and their share of the run. Target: <= 2%.

Prints PASS or BELOW TARGET per figure and exits 0 either way. Runs in well under two minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb  # noqa: E402

from store.db import Store  # noqa: E402

ROWS_TARGET = 100_000  # rows/s
SHARE_TARGET = 0.02  # of the program's wall time
BASELINE_SECONDS = 8.0  # row-by-row inserts are slow: time-capped, then extrapolated


def verdict(ok: bool) -> str:
    return "PASS" if ok else "BELOW TARGET"


# -- (a) ingest ---------------------------------------------------------------------------------------------------


def lm_call_rows(n: int) -> list[dict]:
    """Rows shaped like the callback's: a system + user message (~500 chars of JSON), kwargs, one response."""
    system = ("Your input fields are:\n1. `text` (str): the sentence to rewrite\nYour output fields are:\n"
              "1. `paraphrases` (str): a numbered list of humorous paraphrases\nIn adhering to this structure, your "
              "objective is: Rewrite the sentence as funny paraphrases with the same meaning.")
    now = datetime.now()
    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": f"[[ ## text ## ]]\nMy cat number {i} sat on the laptop during the "
                                                f"Monday meeting.\n\nRespond with the field `[[ ## paraphrases ## ]]`."}]
        rows.append({
            "call_id": uuid.uuid4().hex, "run_id": "bench-run", "stage": "teach", "module_call_id": uuid.uuid4().hex,
            "cache_key": hashlib.sha256(str(i).encode()).hexdigest(), "model": "openai/gpt-4o-mini",
            "messages": json.dumps(messages), "kwargs": json.dumps({"temperature": 0.7, "max_tokens": 512}),
            "response": json.dumps([f"[[ ## paraphrases ## ]]\n1. Cat {i} held a Monday meeting on my keyboard."]),
            "logprobs": None, "prompt_tokens": 120 + i % 7, "completion_tokens": 30 + i % 5,
            "latency_s": 0.5 + (i % 100) / 100, "cost": 2.1e-5, "cache_hit": i % 10 == 0, "error": None,
            "created_at": now,
        })
    return rows


def bench_ingest(n: int, workdir: Path) -> None:
    print(f"(a) ingest: {n:,} lm_calls rows, ~{len(json.dumps(lm_call_rows(1)[0]['messages']))} chars of messages each")
    rows = lm_call_rows(n)
    Store(workdir / "warmup.duckdb").insert("lm_calls", rows[:10])  # first-use costs of DuckDB and pyarrow

    path = workdir / "baseline.duckdb"
    Store(path)
    columns = list(rows[0])
    sql = f"INSERT INTO lm_calls ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    con = duckdb.connect(str(path))
    con.execute("BEGIN TRANSACTION")
    done, t0 = 0, time.perf_counter()
    while done < n and time.perf_counter() - t0 < BASELINE_SECONDS:
        con.executemany(sql, [tuple(r[c] for c in columns) for r in rows[done:done + 500]])
        done += 500
    con.execute("COMMIT")
    con.close()
    baseline = done / (time.perf_counter() - t0)
    capped = f" ({done:,} rows in {BASELINE_SECONDS:.0f}s, extrapolated)" if done < n else ""
    label = "baseline: row-by-row executemany INSERT, one transaction:"
    print(f"    {label:<58}{baseline:>10,.0f} rows/s{capped}")

    for batch in (n, 10_000):
        store = Store(workdir / f"insert-{batch}.duckdb")
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            store.insert("lm_calls", rows[start:start + batch])
        rate = n / (time.perf_counter() - t0)
        label = f"Store.insert, {n // batch} call(s) of {batch:,} rows:"
        print(f"    {label:<58}{rate:>10,.0f} rows/s  x{rate / baseline:,.0f} baseline  {verdict(rate >= ROWS_TARGET)}")
        assert store.scalar("SELECT count(*) FROM lm_calls") == n

    store = Store(workdir / "add.duckdb")
    t0 = time.perf_counter()
    for row in rows:
        store.add("lm_calls", row)
    store.flush()
    rate = n / (time.perf_counter() - t0)
    label = f"Store.add + flush (default batch_rows={store.batch_rows:,}):"
    print(f"    {label:<58}{rate:>10,.0f} rows/s  x{rate / baseline:,.0f} baseline  {verdict(rate >= ROWS_TARGET)}")
    assert store.scalar("SELECT count(*) FROM lm_calls") == n


# -- (b) logging overhead --------------------------------------------------------------------------------------------


class SleepEngine:
    """A DSPy engine standing in for a model: waits `seconds`, then answers."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.calls = 0

    def complete(self, request):
        import dspy

        self.calls += 1
        time.sleep(self.seconds)
        return dspy.lm15.Response(
            id=f"r{self.calls}", model=request.model,
            message=dspy.lm15.Message.assistant(f"[[ ## paraphrase ## ]]\nFunny version {self.calls}\n\n"
                                                "[[ ## completed ## ]]"),
            finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=60, output_tokens=8))

    def close(self):
        pass


def run_program(n_calls: int, sleep_s: float, label: str) -> float:
    import dspy

    predict = dspy.Predict("text -> paraphrase")
    lm = dspy.LM("bench/sleepy", engine=SleepEngine(sleep_s))
    t0 = time.perf_counter()
    with dspy.context(lm=lm):
        for i in range(n_calls):
            predict(text=f"[{label}] My cat number {i} sat on the laptop during the Monday meeting.")
    return time.perf_counter() - t0


def bench_overhead(n_calls: int, sleep_s: float, workdir: Path) -> None:
    import dspy
    from dspy.clients.cache import Cache

    from store.callback import install, trace_context

    print(f"(b) logging overhead: {n_calls} dspy.Predict calls, engine sleeps {sleep_s * 1000:.0f} ms per call")
    dspy.cache = Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
    dspy.configure(callbacks=[])
    run_program(5, 0.0, "warmup")
    without = run_program(n_calls, sleep_s, f"plain-{uuid.uuid4().hex}")

    store = Store(workdir / "overhead.duckdb")
    flush_seconds, flushes = [0.0], [0]
    flush = store.flush

    def timed_flush() -> None:
        flushes[0] += store._buffered > 0
        t0 = time.perf_counter()
        flush()
        flush_seconds[0] += time.perf_counter() - t0

    store.flush = timed_flush  # instrumentation only: the real flush runs
    callback = install(store)
    t0 = time.perf_counter()
    with trace_context(run_id="bench", stage="overhead"):
        run_program(n_calls, sleep_s, f"store-{uuid.uuid4().hex}")
    store.flush()
    with_store = time.perf_counter() - t0
    logged = store.scalar("SELECT count(*) FROM lm_calls WHERE run_id = 'bench'")
    assert logged == n_calls, logged

    own = callback.seconds + flush_seconds[0]
    share = own / with_store
    print(f"    without store: {without:6.2f} s   with store: {with_store:6.2f} s   "
          f"(difference {with_store - without:+.2f} s, {(with_store - without) / without:+.1%}: sleep jitter included)")
    print(f"    callback {callback.seconds:.3f} s + {flushes[0]} flush(es) {flush_seconds[0]:.3f} s = {own:.3f} s "
          f"= {share:.2%} of the run (a flush made inside the callback counts twice)  {verdict(share <= SHARE_TARGET)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--sleep-ms", type=float, default=200.0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        bench_ingest(args.rows, Path(tmp))
        bench_overhead(args.calls, args.sleep_ms / 1000, Path(tmp))
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
