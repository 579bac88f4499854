"""Cost and usage: the `usage_per_stage` / `usage_per_run` views over real calls, and the LM budget (`--max-calls`,
`--max-cost`) that stops before the call that would pass it, on real models, with a rerun that goes on from there.

The fast tests run the tiny config-built Llama from conftest through `resolve_lm` (a real transformers engine) and,
for cost, the same model behind a local OpenAI-compatible HTTP endpoint that DSPy reaches as `deepseek/deepseek-chat`
— a priced model — so the cost is what DSPy's own pricing records. The slow test runs the pipeline CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from store.budget import Budget, BudgetExceeded
from store.db import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(ROOT)}
QUESTIONS = [f"Tell me one thing about the number {i}." for i in range(8)]


def _cli(db: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "store", "query", sql, "--format", "json", "--db", str(db)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)


def _ask(lm, question: str) -> str | None:
    """One LM call the way the pipeline's stages make them: a failure is logged and the work goes on."""
    try:
        return lm(question)[0]
    except Exception:  # noqa: BLE001 - what teach/evaluate do; BudgetExceeded must not end here
        return None


def _session(db: Path, budget: Budget | None = None):
    """What one command gets: a fresh Store, the store's cache and callback (a new process would get the same)."""
    from store.callback import install

    store = Store(db)
    install(store, budget=budget)
    return store


# -- the views ---------------------------------------------------------------------------------------------------


def test_usage_views_count_real_calls_and_cache_hits(tmp_path, tiny_causal_dir, dspy_state):
    from programs.lm import resolve_lm
    from store.callback import trace_context

    db = tmp_path / "t.duckdb"
    lm = resolve_lm(f"local/{tiny_causal_dir}", max_tokens=4)
    store = _session(db)
    store.insert("runs", [{"run_id": "r1", "status": "finished", "profile": "tiny", "started_at": datetime.now()}])
    with trace_context(run_id="r1", stage="teach"):
        for q in QUESTIONS[:3]:
            _ask(lm, q)
    with trace_context(run_id="r1", stage="evaluate"):
        for q in QUESTIONS[:2] + QUESTIONS[3:4]:  # two answered from the store, one new
            _ask(lm, q)
    store.flush()

    rows = {r["stage"]: r for r in store.query("SELECT * FROM usage_per_stage WHERE run_id = 'r1'")}
    assert set(rows) == {"teach", "evaluate"}
    teach, evaluate = rows["teach"], rows["evaluate"]
    assert (teach["calls"], teach["cache_hits"], teach["model_calls"], teach["errors"]) == (3, 0, 3, 0)
    assert (evaluate["calls"], evaluate["cache_hits"], evaluate["model_calls"]) == (3, 2, 1)
    assert teach["model"] == f"local/{tiny_causal_dir}"
    raw = store.query("SELECT sum(prompt_tokens) AS p, sum(completion_tokens) AS c, sum(latency_s) AS s "
                      "FROM lm_calls WHERE stage = 'teach'")[0]
    assert teach["prompt_tokens"] == raw["p"] > 0 and 0 < teach["completion_tokens"] == raw["c"] <= 12
    assert teach["total_tokens"] == raw["p"] + raw["c"]
    assert teach["latency_s"] == pytest.approx(raw["s"], abs=1e-3) and teach["mean_latency_s"] > 0
    assert evaluate["prompt_tokens"] == store.scalar(
        "SELECT prompt_tokens FROM lm_calls WHERE stage = 'evaluate' AND NOT cache_hit")  # hits spend nothing
    assert teach["cost"] is None and evaluate["cost"] is None  # a local model has no price: NULL, not 0
    assert teach["first_call_at"] <= teach["last_call_at"] <= evaluate["first_call_at"]

    run = store.query("SELECT * FROM usage_per_run")
    assert len(run) == 1 and run[0]["run_id"] == "r1" and run[0]["status"] == "finished"
    assert (run[0]["calls"], run[0]["cache_hits"], run[0]["model_calls"]) == (6, 2, 4)
    assert run[0]["prompt_tokens"] == teach["prompt_tokens"] + evaluate["prompt_tokens"]
    assert store.scalar("SELECT calls FROM cost_per_stage WHERE stage = 'teach'") == 3  # the m002 view still works


def _call(i, stage, *, hit=False, cost=None, error=None, run_id="r2", model="deepseek/deepseek-chat"):
    return {"call_id": f"c{i}", "run_id": run_id, "stage": stage, "model": model, "cache_hit": hit, "error": error,
            "prompt_tokens": None if hit else 100, "completion_tokens": None if hit else 20,
            "latency_s": 0.0 if hit else 2.0, "cost": cost, "created_at": datetime(2025, 1, 1, 0, 0, i)}


def test_usage_views_sum_reported_costs_and_the_cli_reads_them(tmp_path):
    db = tmp_path / "t.duckdb"
    store = Store(db)
    store.insert("runs", [{"run_id": "r2", "status": "stopped", "profile": "tiny", "started_at": datetime.now()}])
    store.insert("lm_calls", [
        _call(1, "teach", cost=0.002), _call(2, "teach", cost=0.003), _call(3, "teach", hit=True),
        _call(4, "teach", cost=None, error="APIError: boom"),  # failed: no cost reported
        _call(5, "evaluate", model="local/qwen", cost=None), _call(6, "evaluate", model="local/qwen", hit=True),
    ])
    rows = {(r["stage"], r["model"]): r for r in store.query("SELECT * FROM usage_per_stage")}
    teach = rows[("teach", "deepseek/deepseek-chat")]
    assert (teach["calls"], teach["cache_hits"], teach["model_calls"], teach["errors"]) == (4, 1, 3, 1)
    assert teach["cost"] == pytest.approx(0.005)
    assert (teach["prompt_tokens"], teach["completion_tokens"], teach["total_tokens"]) == (300, 60, 360)
    assert teach["latency_s"] == 6.0 and teach["mean_latency_s"] == 2.0  # the mean leaves cache hits out
    assert rows[("evaluate", "local/qwen")]["cost"] is None

    out = _cli(db, "SELECT * FROM usage_per_run")
    assert out.returncode == 0, out.stderr
    (run,) = json.loads(out.stdout)
    assert run["status"] == "stopped" and run["calls"] == 6 and run["model_calls"] == 4 and run["errors"] == 1
    assert run["cost"] == pytest.approx(0.005) and run["total_tokens"] == 480

    # the docs' usage queries (docs/store.md, examples 1 and 19) run as written
    docs = (ROOT / "docs" / "store.md").read_text()

    def example(title: str) -> list[dict]:
        sql = docs.split(f"**{title}**")[1].split("```sql")[1].split("```")[0]
        out = _cli(db, sql)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    per_stage = example("1. Calls, tokens, latency and cost per stage of the latest run")
    assert [r["stage"] for r in per_stage] == ["teach", "evaluate"]
    assert per_stage[0]["cost"] == pytest.approx(0.005) and per_stage[1]["cost"] is None
    (per_run,) = example("19. What each run cost, newest first, and which ones a budget stopped")
    assert per_run["status"] == "stopped" and per_run["model_calls"] == 4


def test_report_has_a_cost_and_usage_table_from_the_view(tmp_path):
    from dataclasses import asdict

    from finetune.report import write_report
    from programs.config import PipelineConfig

    store = Store(tmp_path / "t.duckdb")
    store.insert("lm_calls", [
        _call(1, "teach", cost=0.002), _call(2, "teach", cost=0.003), _call(3, "teach", hit=True),
        _call(5, "evaluate", model="local/qwen"), _call(6, "evaluate", model="local/qwen", hit=True),
    ])
    usage = store.query("SELECT * FROM usage_per_stage WHERE run_id = 'r2' ORDER BY first_call_at")
    path = write_report(tmp_path / "out", config=asdict(PipelineConfig()), counts={}, evaluations=[], log_history=[],
                        examples=[], command="python -m programs.compile", db="t.duckdb", usage=usage)
    lines = path.read_text().splitlines()
    table = lines[lines.index("## Cost and usage") + 2:]
    assert table[0].startswith("| stage | model | LM calls | from the store | to the model |")
    assert table[2] == "| teach | `deepseek/deepseek-chat` | 3 | 1 | 2 | 0 | 200 | 40 | 4.0 | 2.00 | 0.0050 |"
    assert table[3] == "| evaluate | `local/qwen` | 2 | 1 | 1 | 0 | 100 | 20 | 2.0 | 2.00 | – |"  # no price: –
    assert table[4] == "| **total** |  | 5 | 2 | 3 | 0 | 300 | 60 | 6.0 | – | 0.0050 |"
    assert "WHERE run_id = 'r2'" in path.read_text()


# -- the budget --------------------------------------------------------------------------------------------------


def test_max_calls_stops_before_the_call_and_a_rerun_continues(tmp_path, tiny_causal_dir, dspy_state):
    from programs.lm import resolve_lm
    from store.callback import trace_context

    db = tmp_path / "t.duckdb"
    lm = resolve_lm(f"local/{tiny_causal_dir}", max_tokens=4)
    budget = Budget(max_calls=3)
    store = _session(db, budget)
    answered = []
    with pytest.raises(BudgetExceeded) as info, trace_context(run_id="r", stage="teach"):
        for q in QUESTIONS:
            answered.append(_ask(lm, q))  # the `except Exception` inside does not swallow the stop
    store.flush()
    assert len(answered) == 3 and budget.calls == 3
    assert info.value.kind == "calls" and info.value.stage == "teach"
    assert info.value.describe({"calls": "--max-calls"}) == "budget reached in stage teach: 3 LM calls (--max-calls 3)"
    # the refused call left no trace: three calls made, three rows, three cached answers
    assert store.scalar("SELECT count(*) FROM lm_calls") == 3
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE NOT cache_hit") == 3
    assert store.scalar("SELECT count(*) FROM lm_cache") == 3

    # a rerun (new store, cache and callback, as in a new process) with a higher budget continues from there
    budget = Budget(max_calls=10)
    store = _session(db, budget)
    with trace_context(run_id="r", stage="teach"):
        again = [_ask(lm, q) for q in QUESTIONS]
    store.flush()
    assert again[:3] == answered
    assert budget.calls == len(QUESTIONS) - 3  # only the new ones count against this command's budget
    real = store.query("SELECT cache_key, count(*) AS n FROM lm_calls WHERE NOT cache_hit GROUP BY cache_key")
    assert len(real) == len(QUESTIONS) and all(r["n"] == 1 for r in real)  # no call was made twice
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE cache_hit") == 3


def test_budget_stops_parallel_workers_cleanly(tmp_path, tiny_causal_dir, dspy_state):
    from programs.lm import resolve_lm
    from programs.parallel import imap
    from store.callback import trace_context

    db = tmp_path / "t.duckdb"
    lm = resolve_lm(f"local/{tiny_causal_dir}", max_tokens=4)
    budget = Budget(max_calls=2)
    store = _session(db, budget)
    done = []
    with pytest.raises(BudgetExceeded), trace_context(run_id="p", stage="evaluate"):
        for item, answer in imap(lambda q: _ask(lm, q), QUESTIONS, threads=4):
            done.append(item)
    store.flush()
    assert budget.calls == 2 and budget.in_flight == 0
    assert len(done) <= 2
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE NOT cache_hit") == 2  # every call made is recorded
    assert store.scalar("SELECT count(*) FROM lm_cache") == 2
    assert store.scalar("SELECT count(DISTINCT stage) FROM lm_calls WHERE stage = 'evaluate'") == 1


class _ChatServer:
    """An OpenAI-compatible `/chat/completions` endpoint over the tiny transformers model (what a llama.cpp or vLLM
    server is to a hosted provider): DSPy reaches it under a priced model name, so calls get a price."""

    def __init__(self, model_dir: Path):
        from programs.student_lm import load_student

        self.model, self.tok = load_student(str(model_dir))
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = json.dumps(server.complete(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def complete(self, body: dict) -> dict:
        import torch

        self.requests += 1
        messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                     else "".join(p.get("text", "") for p in m["content"])} for m in body["messages"]]
        prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = self.tok(prompt, return_tensors="pt", add_special_tokens=False)
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 4
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=limit, do_sample=False, pad_token_id=self.tok.pad_token_id)
        new = out[0, enc["input_ids"].shape[1]:]
        text = self.tok.decode(new, skip_special_tokens=True)
        return {"id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": int(enc["input_ids"].shape[1]), "completion_tokens": int(len(new)),
                          "total_tokens": int(enc["input_ids"].shape[1] + len(new))}}

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def priced_server(tiny_causal_dir):
    server = _ChatServer(tiny_causal_dir)
    yield server
    server.close()


def test_max_cost_uses_the_recorded_cost_and_stops_before_passing_it(tmp_path, priced_server, dspy_state):
    from programs.lm import resolve_lm
    from store.callback import trace_context

    db = tmp_path / "t.duckdb"
    lm = resolve_lm("deepseek/deepseek-chat", api_base=priced_server.url, api_key="test-key", max_tokens=4,
                    num_retries=0)
    # find a call's price on a store of its own, then allow about 2.5 calls' worth
    probe = _session(tmp_path / "probe.duckdb")
    with trace_context(run_id="probe", stage="teach"):
        _ask(lm, "How much does one call cost?")
    price = probe.scalar("SELECT cost FROM lm_calls")
    assert price and price > 0, "the priced endpoint should report a cost"

    limit = 2.5 * price
    budget = Budget(max_cost=limit)
    store = _session(db, budget)
    with pytest.raises(BudgetExceeded) as info, trace_context(run_id="c", stage="teach"):
        for q in QUESTIONS:
            _ask(lm, q)
    store.flush()
    assert info.value.kind == "cost"
    recorded = store.query("SELECT count(*) AS n, sum(cost) AS cost, max(cost) AS priciest FROM lm_calls "
                           "WHERE NOT cache_hit")[0]
    assert recorded["n"] == budget.calls == 2  # a third call of the same price would have passed the limit
    assert budget.spent == pytest.approx(recorded["cost"])  # the check runs on what lm_calls records
    assert recorded["cost"] <= limit < recorded["cost"] + recorded["priciest"]
    assert store.scalar("SELECT sum(cost) FROM usage_per_stage WHERE run_id = 'c'") == pytest.approx(recorded["cost"])

    # a rerun with a higher budget: the two priced answers come back from the store for free
    requests = priced_server.requests
    budget = Budget(max_cost=1.0)
    store = _session(db, budget)
    with trace_context(run_id="c", stage="teach"):
        for q in QUESTIONS[:4]:
            _ask(lm, q)
    store.flush()
    assert budget.calls == 2 and priced_server.requests == requests + 2
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE cache_hit AND cost IS NULL") == 2


def test_litellm_compatibility_path_is_priced_budgeted_and_cached_in_the_store(tmp_path, priced_server, dspy_state):
    """Calls DSPy sends through LiteLLM (engine="litellm" here; in use: providers lm15 does not know, extra headers,
    a gateway in OPENAI_API_BASE) get their tokens and price recorded, count against --max-cost, and are answered
    from the store by the next command."""
    from programs.lm import resolve_lm
    from store.callback import trace_context

    db = tmp_path / "t.duckdb"
    lm = resolve_lm("deepseek/deepseek-chat", api_base=priced_server.url, api_key="test-key", max_tokens=4,
                    num_retries=0, engine="litellm")
    budget = Budget(max_cost=1.0)
    store = _session(db, budget)
    with trace_context(run_id="c", stage="teach"):
        first = [_ask(lm, q) for q in QUESTIONS[:2]]
    store.flush()
    rows = store.query("SELECT cost, prompt_tokens, completion_tokens FROM lm_calls ORDER BY created_at")
    assert len(rows) == 2 and all(r["cost"] > 0 and r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
                                  for r in rows)
    assert budget.spent == pytest.approx(sum(r["cost"] for r in rows))
    assert store.scalar("SELECT count(*) FROM lm_cache") == 2

    requests = priced_server.requests
    store = _session(db)  # the next command: a new cache, filled from the store
    with trace_context(run_id="c", stage="teach"):
        again = [_ask(lm, q) for q in QUESTIONS[:2]]
    store.flush()
    assert again == first and priced_server.requests == requests
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE cache_hit") == 2


def test_budget_settings_are_checked_and_kept_out_of_the_run_id():
    from programs.config import ConfigError, build_config

    base = build_config("tiny", None, {})
    capped = build_config("tiny", None, {"max_calls": 40, "max_cost": 0.5})
    assert (capped.max_calls, capped.max_cost) == (40, 0.5)
    assert capped.identity() == base.identity()  # a rerun with another budget continues the same run
    assert "max_calls" not in base.identity() and "max_cost" not in base.identity()
    for bad in ({"max_calls": -1}, {"max_cost": 0}, {"max_cost": -2.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_config("tiny", None, bad)
    with pytest.raises(ValueError):
        Budget(max_calls=-1)
    assert not Budget().active and Budget(max_calls=0).active
    with pytest.raises(BudgetExceeded):
        Budget(max_calls=0).reserve()  # --max-calls 0: only answers already in the store


# -- the pipeline CLI (slow) -------------------------------------------------------------------------------------

TINY = ["--profile", "tiny", "--limit", "2", "--max-steps", "2", "--objective", "none"]


def _compile(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "programs.compile", *TINY, "--db", str(tmp / "t.duckdb"), "--out", str(tmp / "out"),
           *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=1800)


@pytest.mark.slow
def test_pipeline_stops_at_max_calls_then_a_rerun_finishes_without_repeating_calls(tmp_path):
    from store.errors import EXIT_BUDGET

    db = tmp_path / "t.duckdb"
    first = _compile(tmp_path, "--max-calls", "3")
    assert first.returncode == EXIT_BUDGET, first.stderr[-3000:]
    assert "budget reached in stage teach: 3 LM calls (--max-calls 3); rerun with a higher budget to continue" \
        in " ".join(first.stderr.split())
    assert "Traceback" not in first.stderr
    store = Store(db, create=False)
    (run,) = store.query("SELECT run_id, status, finished_at FROM runs")
    assert run["status"] == "stopped" and run["finished_at"] is not None
    made = store.query("SELECT cache_key FROM lm_calls WHERE run_id = ? AND NOT cache_hit", [run["run_id"]])
    assert len(made) == 3  # the 4th call was not made
    assert store.scalar("SELECT count(*) FROM lm_calls") == 3
    assert store.scalar("SELECT count(*) FROM lm_cache") == 3  # flushed: the answers are there for the rerun
    assert store.scalar("SELECT count(*) FROM candidates WHERE role = 'teacher'") >= 3  # finished work was written
    assert not (tmp_path / "out" / "report.md").exists()

    again = _compile(tmp_path)  # no budget: finishes the same run
    assert again.returncode == 0, again.stderr[-3000:]
    (run2,) = store.query("SELECT run_id, status FROM runs")
    assert run2 == {"run_id": run["run_id"], "status": "finished"}
    real = store.query("SELECT cache_key, count(*) AS n FROM lm_calls WHERE NOT cache_hit GROUP BY cache_key")
    assert all(r["n"] == 1 for r in real)  # no call was made twice ...
    assert {m["cache_key"] for m in made} <= {r["cache_key"] for r in real}
    # ... and the first invocation's teacher candidates were kept, not asked for again
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE stage = 'teach' AND NOT cache_hit") == 4

    usage = store.query("SELECT stage, calls, model_calls FROM usage_per_stage WHERE run_id = ?", [run["run_id"]])
    assert {"teach", "evaluate"} <= {u["stage"] for u in usage}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Cost and usage" in report and "| teach |" in report and "| evaluate |" in report
