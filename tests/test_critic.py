"""The critic's scoring: probability of the choice from log-probabilities, debiased over both orders.

A small deterministic engine stands in for the judge model here (the thing under test is the critic's logic and
its DSPy plumbing, not a model); the bundled models run the critic in the end-to-end test.
"""

import math

import dspy
import pytest

from programs.adapter import LabeledAdapter
from programs.critic import DEFAULT, PAPER, Critic, choice_probability, logit, sigmoid
from programs.builtin_tasks import HUMOR
from programs.teacher import parse_numbered


def lp(token, logprob, top):
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}


def test_choice_probability_reads_the_answer_token():
    content = [lp("Reason", -0.1, []), lp(":", 0, []), lp(" funny", -1, []), lp("\n", 0, []), lp("Choice", 0, []),
               lp(":", 0, []), lp(" ", 0, []), lp("2", math.log(0.6), [("2", math.log(0.6)), ("1", math.log(0.3)), ("3", -9)])]
    p = choice_probability({"content": content})
    assert abs(p - 0.3 / 0.9) < 1e-9


def test_choice_probability_reads_a_hosted_models_logprob_objects():
    """Through LiteLLM (an OpenAI-compatible server) log-probabilities arrive as pydantic objects, not dicts; the store
    keeps them as plain JSON, which reads the same after a rerun answers from the cache."""
    import json

    from litellm.types.utils import ChatCompletionTokenLogprob, ChoiceLogprobs, TopLogprob

    from store.ids import to_json

    top = [TopLogprob(token="1", logprob=math.log(0.6), bytes=None), TopLogprob(token="2", logprob=math.log(0.2),
                                                                               bytes=None)]
    hosted = ChoiceLogprobs(content=[ChatCompletionTokenLogprob(token="1", logprob=math.log(0.6), bytes=None,
                                                                top_logprobs=top)])
    assert abs(choice_probability(hosted) - 0.75) < 1e-9
    assert abs(choice_probability(json.loads(to_json(hosted))) - 0.75) < 1e-9


def test_choice_probability_ignores_digits_in_the_reason():
    content = [lp("Reason", 0, []), lp(":", 0, []), lp(" 1", math.log(0.9), [(" 1", math.log(0.9)), (" 2", math.log(0.1))]),
               lp(" wins", 0, []), lp("\nChoice", 0, []), lp(":", 0, []), lp(" 1", math.log(0.8), [(" 1", math.log(0.8)), (" 2", math.log(0.2))])]
    assert abs(choice_probability({"content": content}) - 0.8) < 1e-9
    assert choice_probability(None) is None
    assert choice_probability({"content": [lp("Choice", 0, []), lp(":", 0, []), lp(" maybe", 0, [])]}) is None


class PositionBiasedJudge:
    """A judge that prefers 'joke' texts but also leans to position 1: answers with fixed logprobs."""

    def __init__(self, with_logprobs=True):
        self.calls = 0
        self.with_logprobs = with_logprobs

    def complete(self, request):
        self.calls += 1
        user = request.messages[-1].parts[0].text
        first = user.split("Paraphrase 1:")[1].split("Paraphrase 2:")[0]
        p1 = 0.9 if "joke" in first else 0.6  # bias: position 1 gets +0.3
        choice = "1" if p1 >= 0.5 else "2"
        text = f"Reason: one is funnier.\nChoice: {choice}"
        tokens = ["Reason", ":", " one is funnier.", "\n", "Choice", ":", " ", choice]
        logprobs = None
        if self.with_logprobs and request.config.logprobs is not None:
            top = (dspy.lm15.TopLogprob(token="1", logprob=math.log(p1)), dspy.lm15.TopLogprob(token="2", logprob=math.log(1 - p1)))
            logprobs = tuple(dspy.lm15.TokenLogprob(token=t, logprob=-0.01, top=top if i == len(tokens) - 1 else ())
                             for i, t in enumerate(tokens))
        return dspy.lm15.Response(id=None, model=request.model, message=dspy.lm15.Message.assistant(text),
                                  finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=10, output_tokens=8),
                                  logprobs=logprobs)


@pytest.mark.parametrize("with_logprobs", [True, False])
def test_critic_debiases_over_both_orders(with_logprobs):
    engine = PositionBiasedJudge(with_logprobs)
    lm = dspy.LM("local/judge", engine=engine, cache=False)
    critic = Critic(HUMOR, PAPER)
    with dspy.context(lm=lm, adapter=LabeledAdapter()):
        pred = critic(text="I lost my keys.", a="my keys eloped, a joke", b="I cannot find my keys.")
    assert engine.calls == 2
    first, second = pred.orders
    assert (first["first"], second["first"]) == ("my keys eloped, a joke", "I cannot find my keys.")
    if with_logprobs:
        assert first["source"] == second["source"] == "logprobs"
        assert abs(pred.p_a - (0.9 + (1 - 0.6)) / 2) < 1e-9  # 0.65: the joke wins once the position lean cancels
    else:
        assert first["source"] == "parsed"
        assert pred.p_a == 0.5  # parsed choices: both orders said "1", so the position bias cancels to a tie


def test_default_critic_reads_the_choice_alone_and_cancels_the_lean_in_log_odds():
    from test_judge import RubricJudge  # answers the choice alone when asked for it alone; scores 1-5 pointwise

    engine = RubricJudge()
    critic = Critic(HUMOR)
    assert critic.settings == DEFAULT and critic.settings.mode == "choice-first"
    with dspy.context(lm=dspy.LM("local/judge", engine=engine, cache=False), adapter=LabeledAdapter()):
        pred = critic(text="I lost my keys.", a="my keys eloped, a joke", b="I cannot find my keys.")
    pairwise = (logit(0.9) - logit(0.6)) / 2  # the position lean (+ in both orders) cancels exactly
    joke, plain = 0.9 * 5 + 0.025 * (1 + 2 + 3 + 4), 0.9 * 2 + 0.025 * (1 + 3 + 4 + 5)  # expected 1-5 scores
    expected = sigmoid(pairwise + DEFAULT.pointwise_weight * (joke - plain))  # + the pointwise scores' difference
    assert pred.p_a == pytest.approx(expected, abs=1e-3) and pred.orders_agree is False
    assert all("Reason" not in p.split("\n")[0] for p in engine.prompts[:2])  # no reason asked before the choice


def test_unparsable_answer_is_a_failed_judgment_not_a_crash():
    class Rambler:
        def complete(self, request):
            return dspy.lm15.Response(id=None, model=request.model, message=dspy.lm15.Message.assistant("I like both!"),
                                      finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=5, output_tokens=3))

    critic = Critic(HUMOR, PAPER)
    with dspy.context(lm=dspy.LM("local/rambler", engine=Rambler(), cache=False), adapter=LabeledAdapter()):
        j = critic.judge_order("t", "a", "b")
        pred = critic(text="t", a="a", b="b")
    assert j.source == "failed" and j.choice is None and j.p_first is None
    assert pred.p_a is None


def test_labeled_adapter_round_trip():
    sig = HUMOR.critic_signature()
    adapter = LabeledAdapter()
    msgs = adapter.format(sig, demos=[], inputs={"text": "t", "paraphrase_1": "a", "paraphrase_2": "b"})
    assert "Reason: <one short sentence>" in msgs[0]["content"] and "Paraphrase 2: b" in msgs[-1]["content"]
    assert adapter.parse(sig, "Reason: the first is funnier\nChoice: Paraphrase 2") == {"reason": "the first is funnier", "choice": "2"}
    teacher_sig = HUMOR.teacher_signature(3)
    assert adapter.parse(teacher_sig, "Paraphrases: 1. a\n2. b") == {"paraphrases": "1. a\n2. b"}


def test_parse_numbered_lists():
    assert parse_numbered("1. one\n2) two\n3. \"three\"\n4. four", 3) == ["one", "two", "three"]
    assert parse_numbered("just one answer", 3) == ["just one answer"]
    assert parse_numbered("1. same\n2. Same", 3) == ["same"]


def test_unparsable_answer_is_recorded_as_a_failed_call(tmp_path, dspy_state):
    from store import Store
    from store.callback import install

    class Rambler:
        def complete(self, request):
            return dspy.lm15.Response(id=None, model=request.model, message=dspy.lm15.Message.assistant("no idea"),
                                      finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=5, output_tokens=2))

    store = Store(tmp_path / "t.duckdb")
    install(store)
    with dspy.context(lm=dspy.LM("local/rambler", engine=Rambler(), cache=False), adapter=LabeledAdapter()):
        j = Critic(HUMOR).judge_order("t", "a", "b")
    store.flush()
    failed = store.query("SELECT module, error FROM module_calls WHERE error IS NOT NULL")
    calls = store.query("SELECT response FROM lm_calls")
    assert j.source == "failed" and j.lm_call_id is not None
    assert failed and "AdapterParseError" in failed[0]["error"]
    assert calls and "no idea" in calls[0]["response"]
