"""The judging engine (`metrics.judge`) and the critic's settings (`programs.critic`): the one combination rule, the
stored judgments and verdicts, reruns that ask nothing, and an old store's judgments carried into verdicts.

The judges are small deterministic engines (the thing under test is the critic's rule and the engine's bookkeeping,
not a model): the real critic on the bundled models is in test_audit.py's slow test and in bench/critic_throughput.py.
"""

from __future__ import annotations

import math

import duckdb
import dspy
import pytest

from metrics.judge import judge_verdicts, judgment_id, verdict_id
from programs.adapter import LabeledAdapter
from programs.critic import PAPER, Critic, CriticSettings, CriticSettingsError, combine, logit, sigmoid
from programs.builtin_tasks import HUMOR
from store import Store, stable_id
from store.callback import install
from store.migrations import MIGRATIONS


def test_paper_rule_is_the_mean_probability_over_both_orders():
    p, agree = combine([(0.9, 0.6)], PAPER)  # a first: 0.9; b first: P(b) = 0.6 -> P(a) = 0.4
    assert p == pytest.approx((0.9 + 0.4) / 2) and agree is False


@pytest.mark.parametrize("lean", [0.0, 1.5, -2.0])
def test_log_odds_cancel_a_constant_position_lean_exactly(lean):
    s = 0.8  # the critic's real preference for a, in log-odds
    orders = [(sigmoid(s + lean), sigmoid(-s + lean))]
    p, _ = combine(orders, CriticSettings(aggregate="logodds"))
    assert p == pytest.approx(sigmoid(s))
    calibrated, _ = combine(orders, CriticSettings(aggregate="calibrated", prior=lean))
    assert calibrated == pytest.approx(sigmoid(s))
    if lean:  # the paper's probability mean is pulled toward 0.5 by the same lean
        assert abs(combine(orders, PAPER)[0] - 0.5) < abs(sigmoid(s) - 0.5)


def test_abstain_pointwise_scale_rubrics_and_missing_orders():
    disagree = [(0.9, 0.8)]  # both orders chose position 1
    assert combine(disagree, CriticSettings(abstain_margin=1.0)) == (0.5, False)
    assert combine(disagree, CriticSettings())[0] != 0.5
    wide = [(0.999, 0.6)]  # disagree, but one order is sure: above the margin it is not a tie
    assert combine(wide, CriticSettings(abstain_margin=1.0))[0] > 0.5
    base = combine([(0.7, 0.4)], CriticSettings())[0]
    assert combine([(0.7, 0.4)], CriticSettings(pointwise_weight=0.5), (4.0, 2.0))[0] == pytest.approx(
        sigmoid(logit(base) + 1.0))
    assert combine([(0.7, 0.4)], CriticSettings(scale=2.0))[0] == pytest.approx(sigmoid(2 * logit(base)))
    two = combine([(0.7, 0.4), (0.9, 0.2)], CriticSettings(rubrics=2))[0]
    assert two == pytest.approx(sigmoid((logit(0.7) - logit(0.4) + logit(0.9) - logit(0.2)) / 4))
    assert combine([(None, None)], CriticSettings()) == (None, None)
    assert combine([(0.7, None)], CriticSettings()) == (pytest.approx(0.7), None)  # one order: no agreement to read


def test_settings_are_validated_and_named():
    assert PAPER.method == "reason-first/mean"
    assert CriticSettings().method == "choice-first/logodds"
    assert CriticSettings(rubrics=3, abstain_margin=0.5, pointwise_weight=0.25).method == \
        "choice-first/logodds/rubrics3/abstain0.5/pointwise0.25"
    for bad in (dict(mode="fast"), dict(aggregate="max"), dict(rubrics=0), dict(scale=0.0), dict(abstain_margin=-1)):
        with pytest.raises(CriticSettingsError):
            CriticSettings(**bad)
    with pytest.raises(CriticSettingsError, match="unknown critic setting"):
        CriticSettings.from_dict({"mood": "happy"})
    with pytest.raises(CriticSettingsError, match="phrasing"):
        Critic(HUMOR, CriticSettings(rubrics=len(HUMOR.rubrics) + 1))


def test_the_papers_prompt_keeps_its_judgment_ids():
    assert judgment_id("j", "a", "b") == stable_id("judgment", "j", "a", "b")  # ids of stores made before methods
    assert judgment_id("j", "a", "b", "choice-first", "rubric") != judgment_id("j", "a", "b")
    assert judgment_id("j", "a", "b", "choice-first", "rubric") != judgment_id("j", "a", "b", "choice-first", "other")


class RubricJudge:
    """Prefers texts with 'joke', leans to position 1; answers the choice alone or a reason first, as asked; a 1-5
    score for the pointwise prompt. Records the prompts it saw."""

    def __init__(self):
        self.prompts: list[str] = []

    def complete(self, request):
        system = request.system if isinstance(request.system, str) else ""
        user = request.messages[-1].parts[0].text
        self.prompts.append(system + "\n" + user)
        if "Output:" in user:  # pointwise
            score = "5" if "joke" in user.split("Output:")[1] else "2"
            top = tuple(dspy.lm15.TopLogprob(token=t, logprob=math.log(0.9 if t == score else 0.025))
                        for t in "12345")
            tokens, text = [score], score
        else:
            first = user.split("Paraphrase 1:")[1].split("Paraphrase 2:")[0]
            p1 = 0.9 if "joke" in first else 0.6
            choice = "1" if p1 >= 0.5 else "2"
            top = (dspy.lm15.TopLogprob(token="1", logprob=math.log(p1)),
                   dspy.lm15.TopLogprob(token="2", logprob=math.log(1 - p1)))
            if "Reason" in (request.system or ""):
                tokens = ["Reason", ":", " fun.", "\n", "Choice", ":", " ", choice]
            else:
                tokens = [choice]
            text = "".join(tokens)
        logprobs = tuple(dspy.lm15.TokenLogprob(token=t, logprob=-0.01, top=top if i == len(tokens) - 1 else ())
                         for i, t in enumerate(tokens))
        return dspy.lm15.Response(id=None, model=request.model, message=dspy.lm15.Message.assistant(text),
                                  finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=10, output_tokens=len(tokens)),
                                  logprobs=logprobs)


ITEMS = [{"input_id": "i1", "text": "I lost my keys.", "a_id": "c1", "a": "my keys eloped, a joke",
          "b_id": "c2", "b": "I cannot find my keys."},
         {"input_id": "i2", "text": "It rained.", "a_id": "c3", "a": "the sky wept",
          "b_id": "c4", "b": "a joke about rain"}]


def _judge(store, settings, engine):
    lm = dspy.LM("local/rubric-judge", engine=engine, cache=False)
    with dspy.context(adapter=LabeledAdapter()):
        return judge_verdicts(store, Critic(HUMOR, settings), lm, ITEMS, judge="local/rubric-judge", run_id="r",
                              purpose="test")


def test_engine_stores_judgments_and_verdicts_and_reruns_ask_nothing(tmp_path, dspy_state):
    store = Store(tmp_path / "t.duckdb")
    install(store)
    engine = RubricJudge()
    settings = CriticSettings(rubrics=2, pointwise_weight=0.5)
    verdicts = _judge(store, settings, engine)
    assert len(engine.prompts) == 2 * 2 * 2 + 4  # 2 pairs x 2 rubrics x 2 orders + 4 pointwise scores
    # both orders of one prompt back to back: the second shares the first's instruction and input (prefix reuse)
    assert engine.prompts[0].split("Paraphrase 1:")[0] == engine.prompts[1].split("Paraphrase 1:")[0]
    assert [v.p_a > 0.5 for v in verdicts] == [True, False]  # the joke wins wherever it stands
    rows = store.query("SELECT method, count(*) AS n FROM judgments GROUP BY method ORDER BY method")
    assert {r["method"]: r["n"] for r in rows} == {"choice-first": 4, "choice-first/rubric1": 4, "pointwise": 4}
    stored = store.query("SELECT * FROM verdicts ORDER BY input_id")
    assert [r["verdict_id"] for r in stored] == [verdict_id("local/rubric-judge", settings.method, it["a_id"],
                                                            it["b_id"]) for it in ITEMS]
    assert [r["p_a"] for r in stored] == pytest.approx([v.p_a for v in verdicts])

    engine2 = RubricJudge()  # same prompts, another combination: nothing to ask
    again = _judge(store, CriticSettings(rubrics=2, pointwise_weight=0.5, abstain_margin=0.1, scale=2.0), engine2)
    assert engine2.prompts == [] and len(again) == 2
    _judge(store, CriticSettings(rubrics=1), engine2)
    assert engine2.prompts == []  # the first rubric's judgments are already there
    _judge(store, PAPER, engine2)  # another prompt: asked once per order
    assert len(engine2.prompts) == 4
    assert store.scalar("SELECT count(DISTINCT method) FROM verdicts") == 4


def test_the_judgment_orders_view_restates_the_papers_rule(tmp_path, dspy_state):
    """`judgment_orders.p_a` restates the paper's rule in SQL (the mean of both orders): on judgments made with the
    paper's settings it equals the engine's verdict, so the view and `combine` cannot drift apart."""
    store = Store(tmp_path / "t.duckdb")
    install(store)
    _judge(store, PAPER, RubricJudge())
    stored = {frozenset((r["a_id"], r["b_id"])): (r["a_id"], r["p_a"])
              for r in store.query("SELECT a_id, b_id, p_a FROM verdicts WHERE method = ?", [PAPER.method])}
    rows = store.query("SELECT a_id, b_id, p_a FROM judgment_orders WHERE method = 'reason-first'")
    assert len(rows) == len(stored) == len(ITEMS)
    for r in rows:
        a_id, p_a = stored[frozenset((r["a_id"], r["b_id"]))]
        assert r["p_a"] == pytest.approx(p_a if a_id == r["a_id"] else 1 - p_a)


def test_old_store_judgments_become_verdicts_by_the_rule_they_were_made_under(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)")
    for version, fn in enumerate(MIGRATIONS[:6], start=1):  # a store as the code before critic methods left it
        fn(con)
        con.execute("INSERT INTO _migrations VALUES (?, ?, now())", [version, fn.__name__])
    con.execute("INSERT INTO inputs (input_id, text, split) VALUES ('i1', 'I lost my keys.', 'train')")
    con.execute("INSERT INTO candidates (candidate_id, input_id, role, producer, rank, text) VALUES "
                "('c1', 'i1', 'sample', 's', 0, 'keys eloped'), ('c2', 'i1', 'sample', 's', 1, 'keys lost')")
    for first, second, choice, p in (("c1", "c2", 1, 0.9), ("c2", "c1", 1, 0.6)):
        con.execute("INSERT INTO judgments (judgment_id, input_id, judge, first_id, second_id, choice, p_first, "
                    "source, purpose) VALUES (?, 'i1', 'local/j', ?, ?, ?, ?, 'logprobs', 'feedback')",
                    [judgment_id("local/j", first, second), first, second, choice, p])
    con.close()

    store = Store(path)
    assert store.scalar("SELECT count(*) FROM judgments WHERE method = 'reason-first'") == 2
    verdict, = store.query("SELECT * FROM verdicts")
    expected, agree = combine([(0.9, 0.6)], PAPER)  # the view-free rule, in Python
    assert verdict["verdict_id"] == verdict_id("local/j", PAPER.method, "c1", "c2")
    assert verdict["p_a"] == pytest.approx(expected) and verdict["orders_agree"] == agree
    pair, = store.query("SELECT chosen, rejected, confidence, method FROM feedback_pairs")
    assert (pair["chosen"], pair["rejected"], pair["method"]) == ("keys eloped", "keys lost", PAPER.method)
    assert pair["confidence"] == pytest.approx(abs(expected - 0.5) * 2)
