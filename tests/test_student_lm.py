"""The pipeline with an optimized teacher, then the distilled student as an LM in an ordinary DSPy program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from store import Store

ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
SPEC = "local/qwen2.5-coder-0.5b-instruct"


def compile_cmd(tmp: Path) -> list[str]:
    return [sys.executable, "-m", "programs.compile", "--profile", "tiny", "--limit", "2", "--max-steps", "2",
            "--optimize", "bootstrap", "--objective", "none", "--db", str(tmp / "t.duckdb"), "--out", str(tmp / "out")]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("optimized")
    done = subprocess.run(compile_cmd(tmp), capture_output=True, text=True, env=ENV, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


@pytest.mark.slow
def test_pipeline_optimizes_the_teacher_and_reports_before_and_after(pipeline):
    tmp, done = pipeline
    s = Store(tmp / "t.duckdb", create=False)
    assert "optimized teacher (bootstrap) vs teacher as written" in done.stderr
    trials = s.query("SELECT trial, score, chosen FROM optimization_trials ORDER BY trial")
    assert len(trials) == 2 and sum(t["chosen"] for t in trials) == 1
    producers = {r["producer"] for r in s.query("SELECT DISTINCT producer FROM candidates WHERE role = 'teacher'")}
    optimized = [p for p in producers if "+bootstrap-" in p]
    assert len(optimized) == 1 and SPEC in producers  # the optimized teacher taught; the original wrote the baseline
    # the student learned from the optimized teacher's outputs
    rows = json.loads(s.scalar("SELECT rows FROM datasets WHERE name = 'imitation'"))
    taught = {r["text"] for r in s.query("SELECT text FROM candidates WHERE producer = ?", [optimized[0]])}
    assert rows and all(r["output"] in taught for r in rows)
    assert s.scalar("SELECT count(*) FROM evaluations WHERE student = ? AND reference = ?", [optimized[0], SPEC]) == 1
    assert list((tmp / "out").glob("program-bootstrap-*.json"))
    report = (tmp / "out" / "report.md").read_text()
    assert "## Teacher optimization" in report and "optimized teacher" in report

    calls = s.scalar("SELECT count(*) FROM lm_calls WHERE NOT cache_hit")
    again = subprocess.run(compile_cmd(tmp), capture_output=True, text=True, env=ENV, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "optimize: loaded" in again.stderr  # the saved program, not a second optimization
    assert Store(tmp / "t.duckdb", create=False).scalar("SELECT count(*) FROM lm_calls WHERE NOT cache_hit") == calls


@pytest.mark.slow
def test_distilled_student_is_an_lm_for_any_dspy_program(pipeline, dspy_state):
    from metrics.critic_metric import CriticScore
    from programs.adapter import LabeledAdapter
    from programs.lm import resolve_lm
    from programs.builtin_tasks import HUMOR

    tmp, _ = pipeline
    link = tmp / "out" / "student"
    assert link.is_symlink() and (link / "adapter_config.json").exists()
    student = resolve_lm(f"local/{link}", temperature=0.0, max_tokens=48)
    critic = resolve_lm(SPEC, temperature=0.0, max_tokens=64, seed=0)
    dspy.configure(lm=student, adapter=LabeledAdapter())

    program = dspy.Predict("text -> paraphrase")  # an ordinary DSPy program, nothing from this project
    devset = [dspy.Example(text=t).with_inputs("text") for t in ("I am tired.", "The coffee is cold.")]
    result = dspy.Evaluate(devset=devset, metric=CriticScore(HUMOR, critic, max_tokens=64), num_threads=1,
                           display_progress=False, failure_score=0.0)(program)
    assert len(result.results) == 2
    assert 0.0 <= result.score <= 100.0
    assert any(h["model"].endswith("student") for h in student.history)  # the student answered
    assert all(isinstance(pred, dspy.Prediction) for _, pred, _ in result.results)
