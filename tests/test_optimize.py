"""The critic as a DSPy metric, and DSPy's optimizers run against it on the embedded 0.5B model (tiny profile)."""

from __future__ import annotations

import math

import dspy
import pytest

from metrics.critic_metric import CriticFeedback, CriticScore, CriticThreshold, _label_probability, outputs_of
from programs.adapter import LabeledAdapter
from programs.builtin_tasks import HUMOR
from store import Store
from store.callback import install, trace_context

SPEC = "local/qwen2.5-coder-0.5b-instruct"
TRAIN = [{"text": t} for t in ("I am tired.", "The bus was late again.", "My cat ignores me.", "It rained all day.")]


def lp(token, logprob, top):
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}


def test_label_probability_reads_the_verdict_token():
    content = [lp("Verdict", -0.1, []), lp(":", -0.1, []),
               lp(" yes", math.log(0.6), [(" yes", math.log(0.6)), (" no", math.log(0.2)), ("Yes", math.log(0.1))])]
    p = _label_probability({"content": content}, "verdict", "yes", "no")
    assert p == pytest.approx(0.7 / 0.9)
    assert _label_probability({"content": content[:2]}, "verdict", "yes", "no") is None


def test_outputs_of_teacher_and_student_predictions():
    assert outputs_of(dspy.Prediction(candidates=["a", " ", "b"])) == ["a", "b"]
    assert outputs_of(dspy.Prediction(paraphrase="x")) == ["x"]
    assert outputs_of(dspy.Prediction(paraphrase="  ")) == []


@pytest.fixture(scope="module")
def lms():
    from programs import models
    from programs.lm import resolve_lm

    models.path("qwen2.5-coder-0.5b-instruct", quiet=True)
    return {"teacher": resolve_lm(SPEC, temperature=0.8, max_tokens=120, seed=0),
            "critic": resolve_lm(SPEC, temperature=0.0, max_tokens=64, seed=0),
            "reflection": resolve_lm(SPEC, temperature=0.7, max_tokens=300, seed=0)}


@pytest.mark.slow
def test_critic_metrics_score_threshold_and_feedback(lms, dspy_state):
    dspy.configure(adapter=LabeledAdapter())
    score = CriticScore(HUMOR, lms["critic"], max_tokens=64)
    gold = dspy.Example(text="I am tired.").with_inputs("text")
    funny = dspy.Prediction(paraphrase="My energy left the building and forgot to say goodbye.")
    rubric = score(gold, funny)
    assert 0.0 <= rubric <= 1.0

    with_ref = dspy.Example(text="I am tired.", reference="I am tired.").with_inputs("text")
    pairwise = score(with_ref, funny)
    assert 0.0 <= pairwise <= 1.0
    assert score(gold, dspy.Prediction(paraphrase="")) == 0.0  # nothing to judge is a zero, not a crash

    assert CriticThreshold(score, threshold=0.0)(gold, funny) is True
    assert CriticThreshold(score, threshold=1.01)(gold, funny) is False

    feedback = CriticFeedback(score)
    cheap = feedback(gold, funny, None, None, None)
    assert cheap.score == pytest.approx(rubric) and cheap.feedback == ""  # no reasons asked for: none paid for
    rich = feedback(with_ref, funny, None, "generate", None)
    assert 0.0 <= rich.score <= 1.0 and rich.feedback.startswith("The critic scored this")
    assert len(rich.feedback) > len("The critic scored this 0.50 (good).")  # the critic's own reasons follow


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["mipro", "gepa"])  # bootstrap: through the pipeline, tests/test_student_lm.py
def test_each_optimizer_runs_against_the_critic(optimizer, lms, tmp_path, dspy_state):
    from finetune.optimize import OptimizeSettings, optimize_teacher

    store = Store(tmp_path / "t.duckdb")
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    settings = OptimizeSettings(optimizer, train_size=2, val_size=2, trials=2, candidates=2, max_metric_calls=8,
                                max_demos=1)

    def run():
        with trace_context(run_id="r", stage="optimize"):
            return optimize_teacher(store, HUMOR, settings=settings, n=3, teacher_name=SPEC, teacher_lm=lms["teacher"],
                                    critic_name=SPEC, critic_lm=lms["critic"], reflection_lm=lms["reflection"],
                                    train=TRAIN, run_id="r", out_dir=tmp_path / "out")

    first = run()
    store.flush()
    assert first.path.exists() and not first.loaded
    trials = store.query("SELECT trial, score, chosen, instructions FROM optimization_trials ORDER BY trial")
    assert len(trials) >= 2 and trials[0]["trial"] == 0  # the unoptimized program, then what the optimizer tried
    assert sum(t["chosen"] for t in trials) == 1
    assert all(0.0 <= t["score"] <= 1.0 and t["instructions"] for t in trials)
    assert first.score == max(t["score"] for t in trials) and first.baseline_score == trials[0]["score"]
    calls = store.scalar("SELECT count(*) FROM lm_calls WHERE stage = 'optimize' AND NOT cache_hit")
    assert calls > 0

    again = run()  # the saved program is loaded: no optimization, no calls
    store.flush()
    assert again.loaded and again.producer == first.producer and again.score == first.score
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE stage = 'optimize' AND NOT cache_hit") == calls
    with dspy.context(lm=lms["teacher"]):
        assert again.program(text="It is Monday.").candidates  # the loaded program still teaches
