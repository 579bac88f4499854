"""How fast the review page answers over a store of the default run's size.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/review_pages.py [--db /work/runs/fresh/traces.duckdb] \
        [--lm-calls 30000] [--repeat 5]

Copies the store (the original is never opened for writing), grows its `lm_calls` to `--lm-calls` rows by copying
the rows it has under new ids (the default run made about 2,200 calls with its cache; a run without one, or a few
runs in one store, reach tens of thousands; the Runs page's per-stage usage reads all of them), starts the real
server (`python -m finetune.review`) on a free port and times each page over HTTP, median of `--repeat` after one
warm-up, against two baselines measured in the same run: the server's floor (a refused request: HTTP and the token
check, no store) and one bare `Store.query` (open the file read-only, one row, close), which every page pays per
query. Target: every page under 1 s. Prints PASS or BELOW TARGET per page and exits 0 either way.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from store.db import Store  # noqa: E402

TARGET_S = 1.0
PAGES = ["/", "/outputs?split=test", "/outputs?split=test&filter=flips", "/outputs?split=test&filter=drift",
         "/training", "/rate"]


def grow(path: Path, n: int) -> int:
    """Copy `lm_calls` rows under new ids until the table holds about `n` rows."""
    con = duckdb.connect(str(path))
    have = con.execute("SELECT count(*) FROM lm_calls").fetchone()[0]
    copies = max(0, -(-n // max(have, 1)) - 1)
    for k in range(1, copies + 1):
        con.execute(f"INSERT INTO lm_calls SELECT * REPLACE (call_id || '-copy{k}' AS call_id) FROM lm_calls "
                    "WHERE call_id NOT LIKE '%-copy%'")
    total = con.execute("SELECT count(*) FROM lm_calls").fetchone()[0]
    con.execute("CHECKPOINT")
    con.close()
    return total


def fetch(url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    return code, time.perf_counter() - t0


def median_time(url: str, repeat: int) -> tuple[int, float]:
    code, _ = fetch(url)  # warm-up
    return code, statistics.median(fetch(url)[1] for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="/work/runs/fresh/traces.duckdb")
    ap.add_argument("--lm-calls", type=int, default=30_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="review-bench-"))
    db = tmp / "traces.duckdb"
    shutil.copy(args.db, db)
    calls = grow(db, args.lm_calls)
    counts = {t: n for t, _, n in Store(db, create=False).tables() if t in ("candidates", "verdicts", "judgments")}
    print(f"store: copy of {args.db}, {calls:,} lm_calls, " + ", ".join(f"{n:,} {t}" for t, n in counts.items()))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "finetune.review", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        base, token = re.search(r"(http://\S+/)\?token=(\S+)", proc.stdout.readline()).groups()
        deadline = time.monotonic() + 60
        while True:
            try:
                if fetch(f"{base}?token={token}")[0] == 200:
                    break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.2)
        _, floor = median_time(f"{base}rate", args.repeat)  # no token: refused before any store work
        store = Store(db, create=False)
        t = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            store.query("SELECT 1")
            t.append(time.perf_counter() - t0)
        one_query = statistics.median(t)
        print(f"baselines: refused request {1000 * floor:.1f} ms; one bare Store.query {1000 * one_query:.1f} ms")
        for page in PAGES:
            sep = "&" if "?" in page else "?"
            code, seconds = median_time(f"{base}{page.lstrip('/')}{sep}token={token}", args.repeat)
            ok = code == 200 and seconds < TARGET_S
            print(f"{page:40s} {1000 * seconds:8.1f} ms  ({seconds / one_query:5.1f}x one query)  "
                  f"{'PASS' if ok else 'BELOW TARGET'} (target < {TARGET_S:.0f} s, HTTP {code})")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
