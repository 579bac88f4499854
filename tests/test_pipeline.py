"""`python -m programs.compile` as a user runs it: the tiny profile end to end on the bundled models, a rerun that
makes no new LM call, a `kill -9` mid-run that the next invocation finishes, and clear errors for bad input."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store import Store

ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TINY = ["--profile", "tiny", "--limit", "2", "--max-steps", "2"]


def compile_cmd(tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "programs.compile", *TINY, "--db", str(tmp / "t.duckdb"), "--out", str(tmp / "out"), *extra]


def run(cmd, timeout=1800):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def counts(db: Path) -> dict[str, int]:
    s = Store(db, create=False)
    return {name: n for name, kind, n in s.tables() if kind == "table"}


def real_calls(db: Path) -> int:
    return Store(db, create=False).scalar("SELECT count(*) FROM lm_calls WHERE NOT cache_hit")


def check_store(db: Path, out: Path, *, feedback: bool = True) -> None:
    """The store after the README's main job on the tiny profile: imitation, then DPO on the critic's feedback
    (`feedback`, the default), then evaluation with the default critic (choice-first + pointwise)."""
    s = Store(db, create=False)
    c = counts(db)
    students = 2 if feedback else 1
    assert c["inputs"] == 4 and c["runs"] == 1
    assert s.scalar("SELECT status FROM runs") == "finished"
    n_teacher = s.scalar("SELECT count(*) FROM candidates WHERE role = 'teacher'")
    assert 4 <= n_teacher <= 12  # 1..3 per input
    assert s.scalar("SELECT count(*) FROM candidates WHERE role = 'student'") == 2 * students
    # every candidate is linked to the LM call that wrote it
    assert s.scalar("SELECT count(*) FROM candidates c LEFT JOIN lm_calls l ON c.lm_call_id = l.call_id "
                    "WHERE c.role <> 'sample' AND l.call_id IS NULL") == 0
    assert s.scalar("SELECT count(*) FROM judgments j LEFT JOIN lm_calls l ON j.lm_call_id = l.call_id "
                    "WHERE l.call_id IS NULL") == 0
    methods = {r["method"] for r in s.query("SELECT DISTINCT method FROM judgments")}
    assert methods == {"choice-first", "pointwise"}  # the default critic: the choice alone, and 1-5 scores
    # 2 test inputs x students, both orders
    assert s.scalar("SELECT count(*) FROM judgments WHERE purpose = 'eval' AND method = 'choice-first'") == 4 * students
    purposes = {r["purpose"] for r in s.query("SELECT DISTINCT purpose FROM verdicts")}
    assert purposes == ({"eval", "feedback", "student-eval"} if feedback else {"eval"})
    ev = s.query("SELECT * FROM evaluations ORDER BY student")
    assert len(ev) == students + (1 if feedback else 0) and all(e["n"] >= 1 for e in ev)
    for e in ev:
        for key in ("wtr_prob", "wtr_prob_lo", "wtr_prob_hi", "wtr_decision"):
            assert 0.0 <= e[key] <= 1.0
        assert e["wtr_prob_lo"] <= e["wtr_prob"] <= e["wtr_prob_hi"]
    tr = s.query("SELECT objective, status, metrics FROM training_runs ORDER BY started_at")
    assert [t["status"] for t in tr] == ["finished"] * students and "loss" in tr[0]["metrics"]
    assert [t["objective"] for t in tr][1:] == (["dpo"] if feedback else [])
    ckpt = s.scalar("SELECT path FROM checkpoints ORDER BY created_at LIMIT 1")
    assert (Path(ckpt) / "adapter_config.json").exists()
    assert s.scalar("SELECT count(*) FROM datasets") == students
    assert s.scalar("SELECT count(*) FROM lm_calls WHERE prompt_tokens > 0 AND NOT cache_hit") >= 6
    report = (out / "report.md").read_text()
    assert report.count("WTR") >= 2 and (out / "wtr.png").stat().st_size > 1000
    assert ("## What feedback bought" in report) == feedback


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_rerun_makes_no_new_calls(tmp_path):
    first = run(compile_cmd(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"vs teacher, test, judge \S+: WTR mean P [\d.]+ \[[\d., ]+\] \(n=2\) · length-controlled [\d.]+ "
                     r"\[[\d., ]+\] \(n=2\) · decisions", first.stderr)
    # the lead: what feedback bought over imitation by the critic that labelled the pairs, paired (raw and length-
    # controlled) and direct, each with its interval; then where the independent check stands
    assert re.search(r"DPO vs warm start \(imitation\), test, judge \S+ \(the critic that labelled the training pairs\): "
                     r"paired difference [+-][\d.]+ \[[+-][\d.]+, [+-][\d.]+\] \(n=\d\) points of WTR \(mean P\) · "
                     r"length-controlled [+-][\d.]+ .* direct comparison WTR [\d.]+", first.stderr)
    assert "independent check: none in the store yet: `python -m finetune.rate export`" in first.stderr
    check_store(tmp_path / "t.duckdb", tmp_path / "out")
    # piped, not a terminal: every stage says when it starts and ends, with counts, on stderr and in the log file
    log = (tmp_path / "out" / "progress.log").read_text()
    for stage in ("teach", r"imitate \S+", "sample", "judge", "generate"):
        for text in (first.stderr, log):
            assert re.search(rf"\d\d:\d\d:\d\d {stage}: start, \d+ ", text), stage
            assert re.search(rf"\d\d:\d\d:\d\d {stage}: done, \d+/\d+ \w+ in ", text), stage
    assert re.search(r"run \w+: done in ", log) and "━" not in first.stderr
    before, calls = counts(tmp_path / "t.duckdb"), real_calls(tmp_path / "t.duckdb")

    again = run(compile_cmd(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    after = counts(tmp_path / "t.duckdb")
    assert real_calls(tmp_path / "t.duckdb") == calls  # every LM call answered from the store
    for table in ("inputs", "candidates", "judgments", "evaluations", "training_runs", "checkpoints", "datasets",
                  "runs", "lm_cache"):
        assert after[table] == before[table], table
    assert after["lm_calls"] == before["lm_calls"]  # finished work is skipped outright: not even a cache lookup


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_finishes_with_nothing_lost_or_duplicated(tmp_path):
    db = tmp_path / "t.duckdb"
    imitation = ("--objective", "none")  # killed while teaching: the feedback stages are the main test's
    proc = subprocess.Popen(compile_cmd(tmp_path, *imitation), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        try:
            if db.exists() and Store(db, create=False, lock_timeout=5).scalar("SELECT count(*) FROM candidates") >= 2:
                killed_at = "teach"
                break
        except Exception:  # noqa: BLE001 - the writer may hold the file for a moment
            continue
    assert proc.poll() is None, "the pipeline finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_at == "teach"
    assert Store(db, create=False).scalar("SELECT status FROM runs") == "running"

    resumed = run(compile_cmd(tmp_path, *imitation))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    check_store(db, tmp_path / "out", feedback=False)
    s = Store(db, create=False)
    assert s.scalar("SELECT count(*) FROM candidates") == s.scalar(
        "SELECT count(DISTINCT (input_id, role, producer, rank)) FROM candidates")
    assert s.scalar("SELECT count(*) FROM judgments") == s.scalar(
        "SELECT count(DISTINCT (judge, first_id, second_id, method)) FROM judgments")


def test_bad_flags_and_inputs_give_one_line_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("teacher = [unclosed\n")
    unknown_key = tmp_path / "unknown.toml"
    unknown_key.write_text('tacher = "local/x"\n')
    cases = [
        (["--inputs", str(empty)], "has no input texts"),
        (["--inputs", str(tmp_path / "missing.csv")], "input file not found"),
        (["--teacher", "local/no-such-model"], "unknown local model"),
        (["--student", "/no/such/student"], "no model at /no/such/student"),
        (["--config", str(bad_toml)], "not valid TOML"),
        (["--config", str(unknown_key)], "unknown config key(s): tacher"),
        (["--limit", "0"], "limit must be a positive integer"),
        (["--critic-rubrics", "9"], "critic_rubrics = 9, but task 'humor' has 3"),
        (["--critic-rubrics", "0"], "critic rubrics must be a positive integer"),
    ]
    for extra, message in cases:
        out = run([sys.executable, "-m", "programs.compile", "--profile", "tiny", "--db", str(tmp_path / "e.duckdb"),
                   *extra], timeout=120)
        assert out.returncode == 2, (extra, out.stderr[-2000:])
        assert message in out.stderr, (extra, out.stderr[-2000:])
        assert "Traceback" not in out.stderr, extra
    out = run([sys.executable, "-m", "programs.compile", "--profile", "nope"], timeout=60)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_unreachable_api_model_is_reported(tmp_path):
    env = {**ENV, "OPENAI_API_KEY": "sk-test-not-a-real-key-000000", "OPENAI_API_BASE": "http://127.0.0.1:9/v1",
           "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    out = subprocess.run([sys.executable, "-m", "programs.compile", "--profile", "tiny", "--db", str(tmp_path / "e.duckdb"),
                          "--teacher", "openai/gpt-4o-mini"], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cannot reach openai/gpt-4o-mini" in out.stderr and "Traceback" not in out.stderr
