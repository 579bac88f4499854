"""Teacher and critic behind a real OpenAI-compatible server: `python -m programs.models serve` (llama.cpp's own
server) as a subprocess, the tiny pipeline against it with parallel calls, then a rerun.

The server's access log is the witness: every completion request it answered is one `lm_calls` row, the critic's
judgments come from the log-probabilities it returned, and a rerun sends it no completion request at all."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from store import Store
from store.errors import EXIT_USAGE

MODEL = "qwen2.5-coder-0.5b-instruct"
SPEC = f"openai/{MODEL}"
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
COMPLETION = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" 200')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "programs.models", "serve", *args]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The embedded 0.5B model served on a free local port; stopped (and waited for) when the module's tests end."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(serve_cmd(MODEL, "--port", str(port)), stdout=out, stderr=subprocess.STDOUT, env=ENV)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the server never answered: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield {"base": base, "port": port, "log": log, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def completions(log: Path) -> int:
    """Completion requests the server answered, from its access log."""
    return len(COMPLETION.findall(log.read_text()))


def test_serve_refuses_an_unknown_model_in_one_line():
    out = subprocess.run(serve_cmd("no-such-model"), capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == EXIT_USAGE
    assert out.stderr.strip().startswith("error: unknown embedded model 'no-such-model'"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not out.stdout


def test_serve_refuses_a_port_in_use_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(serve_cmd(MODEL, "--port", str(port)), capture_output=True, text=True, env=ENV,
                             timeout=120)
    assert out.returncode == EXIT_USAGE
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot serve on 127.0.0.1:{port}"), out.stderr
    assert "port in use" in lines[0] and not out.stdout


@pytest.mark.slow
def test_tiny_pipeline_against_the_server_every_call_stored_judged_by_logprobs_rerun_silent(server, tmp_path):
    # what `serve` printed is what the user copies: the base URL and the spec
    printed = server["log"].read_text()
    assert f"OPENAI_BASE_URL={server['base']}" in printed and f"--teacher {SPEC} --critic {SPEC}" in printed
    db, out = tmp_path / "t.duckdb", tmp_path / "out"
    # teach, imitate, evaluate: the feedback stage judges through the same engine (metrics/judge.py), and leaving
    # it out keeps the test to a few minutes on 2 cores
    cmd = [sys.executable, "-m", "programs.compile", "--profile", "tiny", "--limit", "2", "--max-steps", "2",
           "--objective", "none",
           "--teacher", SPEC, "--critic", SPEC, "--threads", "2", "--db", str(db), "--out", str(out)]
    env = {**ENV, "OPENAI_BASE_URL": server["base"], "OPENAI_API_KEY": "none"}

    before = completions(server["log"])
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    served = completions(server["log"]) - before

    s = Store(db, create=False)
    assert s.scalar("SELECT status FROM runs") == "finished"
    # every request the server answered is a stored call, each with its response (cached repeats never reach it)
    calls = s.query(f"SELECT response, error, cache_hit, logprobs, latency_s, created_at FROM lm_calls "
                    f"WHERE model = '{SPEC}'")
    assert served > 0 and sum(not c["cache_hit"] for c in calls) == served
    assert all(c["response"] and c["error"] is None for c in calls)
    # the teacher's candidates and the critic's judgments came from the server
    assert s.scalar(f"SELECT count(*) FROM candidates WHERE role = 'teacher' AND producer = '{SPEC}'") >= 2
    judged = s.query(f"SELECT method, source, p_first, score FROM judgments WHERE judge = '{SPEC}'")
    choices = [j for j in judged if j["method"] == "choice-first"]
    points = [j for j in judged if j["method"] == "pointwise"]
    assert len(choices) == 4 and len(points) >= 2  # 2 test inputs x both orders; 1-5 scores of each output
    # from log-probabilities, not parsed answers: probabilities and expected scores, not just 0/1 and integers
    assert {j["source"] for j in judged} == {"logprobs"}
    assert sum(0 < j["p_first"] < 1 for j in choices) >= len(choices) // 2
    assert any(j["score"] != round(j["score"]) for j in points)
    assert s.scalar(f"SELECT count(*) FROM lm_calls WHERE model = '{SPEC}' AND logprobs IS NOT NULL") >= len(judged)
    # --threads 2: some calls were in flight together (the server answers one at a time; the client did not wait)
    spans = sorted((c["created_at"].timestamp() - c["latency_s"], c["created_at"].timestamp())
                   for c in calls if not c["cache_hit"])
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    n_calls = s.scalar("SELECT count(*) FROM lm_calls")
    s.close()

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert completions(server["log"]) - before == served  # the server saw no new completion request
    assert Store(db, create=False).scalar("SELECT count(*) FROM lm_calls") == n_calls
