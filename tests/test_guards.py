"""Guards where the critic is blind (`metrics/guards.py`, `metrics/length_control.py`, the feedback loop): a candidate
that fails the meaning guard never reaches a dataset, a pair whose chosen side drifts is dropped, the critic's length
term is fitted on its own verdicts and removed, and critic-curated imitation reads the best faithful candidate.

The critic here is a small deterministic engine that always prefers the longer paraphrase (the known blind spot;
the thing under test is the guards, not a model). Meaning is the real bundled MiniLM; the store is a real file.
"""

from __future__ import annotations

import math
from datetime import datetime

import dspy
import numpy as np
import pytest

from finetune.feedback import GREEDY_RANK, FeedbackConfig, judge_round, pair_key
from finetune.objectives import CURATED_SQL, PAIRS_SQL, sql_dataset
from metrics.guards import LC, candidate_meaning, record_length_control
from metrics.length_control import controlled, fit
from programs.adapter import LabeledAdapter
from programs.critic import Critic
from programs.builtin_tasks import HUMOR
from store import Store
from store.callback import install


class LongerWins:
    """Prefers the paraphrase with more words, whichever position it is in (a critic with nothing but length bias)."""

    def __init__(self):
        self.calls = 0

    def complete(self, request):
        self.calls += 1
        user = request.messages[-1].parts[0].text
        if "Output:" in user:  # the pointwise 1-5 score: no opinion
            choice = "3"
            top = tuple(dspy.lm15.TopLogprob(token=t, logprob=math.log(0.9 if t == "3" else 0.025)) for t in "12345")
        else:
            first = user.split("Paraphrase 1:")[1].split("Paraphrase 2:")[0]
            second = user.split("Paraphrase 2:")[1]
            p1 = 0.8 if len(first.split()) > len(second.split()) else 0.2
            choice = "1" if p1 >= 0.5 else "2"
            top = (dspy.lm15.TopLogprob(token="1", logprob=math.log(p1)),
                   dspy.lm15.TopLogprob(token="2", logprob=math.log(1 - p1)))
        logprobs = (dspy.lm15.TokenLogprob(token=choice, logprob=-0.01, top=top),)
        return dspy.lm15.Response(id=None, model=request.model, message=dspy.lm15.Message.assistant(choice),
                                  finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=10, output_tokens=1),
                                  logprobs=logprobs)


INPUTS = {"i-keys": "I lost my keys on the way to work this morning.",
          "i-rain": "It rained all day and the picnic was cancelled."}
# per input: the greedy output (faithful, short), a faithful longer sample, and a long sample about something else
SAMPLES = {
    "i-keys": ["My keys vanished on my way to work this morning.",
               "My keys went missing somewhere on my way to the office this morning.",
               "The stock market rallied sharply after the central bank cut its interest rates again today."],
    "i-rain": ["Rain fell all day, so the picnic was called off.",
               "It poured all day long, and so our picnic had to be cancelled.",
               "My neighbour's cat learned to open the fridge door and now eats all of the cheese at night."],
}


def _store(tmp_path, inputs: dict = INPUTS, samples: dict = SAMPLES) -> Store:
    s = Store(tmp_path / "t.duckdb")
    now = datetime.now()
    s.insert("inputs", [{"input_id": iid, "task": "humor", "text": t, "split": "train", "source": "test",
                         "created_at": now} for iid, t in inputs.items()])
    s.insert("candidates", [{"candidate_id": f"{iid}-{r}", "input_id": iid, "role": "sample", "producer": "ckpt",
                             "rank": GREEDY_RANK if r == 0 else r - 1, "text": text, "lm_call_id": None,
                             "run_id": "r", "created_at": now}
                            for iid, texts in samples.items() for r, text in enumerate(texts)])
    return s


def _samples(s: Store) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in s.query("SELECT input_id, candidate_id, text, rank FROM candidates ORDER BY input_id, rank"):
        out.setdefault(r["input_id"], []).append(r)
    return out


def _round(s: Store, cfg: FeedbackConfig) -> dict:
    lm = dspy.LM("local/longer-wins", engine=LongerWins(), cache=False)
    items = s.query("SELECT input_id, text, split FROM inputs ORDER BY input_id")
    with dspy.context(adapter=LabeledAdapter()):
        return judge_round(s, Critic(HUMOR), lm, "local/longer-wins", items, _samples(s), cfg, run_id="r")


def _pairs(s: Store, judged: dict) -> list[dict]:
    params = {"judge": "local/longer-wins", "method": judged["method"], "producer": "ckpt", "pairs": judged["pairs"],
              "min_confidence": 0.0, "both_orders": False}
    rows, _ = sql_dataset(s, "pairs", PAIRS_SQL, params, name="dpo-round0", run_id="r")
    return rows


WIDE = dict(length_lo=0.1, length_hi=10.0)  # the length band out of the way: the guards alone decide


def test_without_the_meaning_guard_the_length_loving_critic_trains_on_drift(tmp_path, dspy_state):
    s = _store(tmp_path)
    install(s)
    rows = _pairs(s, _round(s, FeedbackConfig(**WIDE)))
    chosen = {r["chosen"] for r in rows}
    assert chosen == {SAMPLES["i-keys"][2], SAMPLES["i-rain"][2]}  # the off-topic, longest sample wins: the blind spot


def test_a_candidate_below_the_meaning_floor_never_reaches_a_dataset(tmp_path, dspy_state):
    s = _store(tmp_path)
    install(s)
    judged = _round(s, FeedbackConfig(meaning_floor=0.5, **WIDE))
    meaning = {r["candidate_id"]: r["meaning"] for r in s.query("SELECT candidate_id, meaning FROM similarities")}
    assert len(meaning) == 6  # every candidate of the round scored once, stored
    assert all(meaning[f"{iid}-2"] < 0.5 < meaning[f"{iid}-1"] for iid in INPUTS)
    rows = _pairs(s, judged)
    assert len(rows) == 2
    drift = {SAMPLES[iid][2] for iid in INPUTS}
    assert not drift & {t for r in rows for t in (r["chosen"], r["rejected"])}
    assert {r["chosen"] for r in rows} == {SAMPLES["i-keys"][1], SAMPLES["i-rain"][1]}  # faithful and longer
    judgments = s.query("SELECT first_id, second_id FROM judgments")
    assert not {f"{iid}-2" for iid in INPUTS} & {x for j in judgments for x in j.values()}  # never even judged


def test_a_pair_whose_chosen_side_drifts_is_dropped_by_the_margin(tmp_path, dspy_state):
    s = _store(tmp_path)
    install(s)
    judged = _round(s, FeedbackConfig(meaning_margin=0.1, **WIDE))
    assert judged["dropped_margin"] == 2 and judged["pairs"] == []  # the critic chose the drifted side both times
    assert _pairs(s, judged) == []


def test_the_length_term_is_fitted_and_removed():
    rng = np.random.default_rng(0)
    diffs = rng.integers(-12, 13, size=400).astype(float)
    scale = diffs.std()
    truth = 1.0 * np.tanh(diffs / scale)  # the critic's log-odds: all length, plus noise
    p = 1 / (1 + np.exp(-(truth + rng.normal(0, 0.3, size=400))))
    length_fit = fit(p, diffs)
    assert length_fit.slope == pytest.approx(1.0, abs=0.15) and length_fit.scale == pytest.approx(scale)
    after = np.array([controlled(float(x), float(d), length_fit) for x, d in zip(p, diffs)])
    longer = diffs > 0
    assert (p[longer] >= 0.5).mean() > 0.8  # the raw verdicts favour the longer text
    assert abs((after[longer] >= 0.5).mean() - 0.5) < 0.1  # controlled: a coin flip, as nothing but length spoke
    # one intercept per group keeps a better student's real lead while removing the length term
    groups = ["good"] * 200 + ["bad"] * 200
    shifted = 1 / (1 + np.exp(-(truth + np.where(np.array(groups) == "good", 1.0, -1.0))))
    grouped = fit(shifted, diffs, groups)
    assert grouped.slope == pytest.approx(1.0, abs=0.1)
    assert grouped.intercepts["good"] == pytest.approx(1.0, abs=0.1) and grouped.intercepts["bad"] < 0
    assert fit([0.7, 0.6], [3.0, 1.0]).slope == 0.0  # too few verdicts: nothing to remove


def test_length_control_in_the_loop_stores_the_fit_and_reads_controlled_verdicts(tmp_path, dspy_state):
    # a third input: the fit needs three verdicts before it removes anything
    s = _store(tmp_path, {**INPUTS, "i-bus": "The bus was late again, so I walked."},
               {**SAMPLES, "i-bus": ["The bus was late once more, so I walked.",
                                     "Once again the bus was running late, so I just walked there on foot.",
                                     "Penguins cannot fly, but they are excellent swimmers in very cold water."]})
    install(s)
    judged = _round(s, FeedbackConfig(length_control=True, meaning_floor=0.5, **WIDE))
    assert judged["method"] == Critic(HUMOR).method + LC
    fits = s.query("SELECT * FROM length_fits")
    assert len(fits) == 1 and fits[0]["purpose"] == "feedback" and fits[0]["n"] == 3 and fits[0]["slope"] > 0
    lc = s.query("SELECT a_id, b_id, p_a FROM verdicts WHERE method = ?", [judged["method"]])
    raw = {pair_key(r["a_id"], r["b_id"]): r["p_a"] for r in s.query(
        "SELECT a_id, b_id, p_a FROM verdicts WHERE method = ?", [Critic(HUMOR).method])}
    assert len(lc) == 3
    # three pairs, all won by the longer side: the fit gives the length all the credit and the verdicts move to 0.5
    for r in lc:
        assert abs(r["p_a"] - 0.5) < abs(raw[pair_key(r["a_id"], r["b_id"])] - 0.5)
    assert len(_pairs(s, judged)) == 3  # the dataset reads the controlled verdicts (method .../lc)


def test_record_length_control_on_a_store_built_for_the_test(tmp_path):
    s = Store(tmp_path / "t.duckdb")
    rng = np.random.default_rng(1)
    pairs = []
    for n in range(120):
        d = int(rng.integers(-8, 9))
        pairs.append({"input_id": f"i{n}", "a_id": f"a{n}", "b_id": f"b{n}", "a": "w " * (10 + d), "b": "w " * 10,
                      "p_a": float(1 / (1 + np.exp(-(0.2 + 1.5 * np.tanh(d / 5) + rng.normal(0, 0.2)))))})
    length_fit, lc = record_length_control(s, pairs, judge="critic", method="m", purpose="eval", run_id="r",
                                           groups=["student"] * 120)
    assert length_fit.slope > 1.0
    stored = s.query("SELECT slope, n FROM length_fits")
    assert stored == [{"slope": pytest.approx(length_fit.slope), "n": 120}]
    rows = {r["a_id"]: r["p_a"] for r in s.query("SELECT a_id, p_a FROM verdicts WHERE method = 'm/lc'")}
    assert len(rows) == 120 and rows["a0"] == pytest.approx(lc["a0|b0"])
    controlled_longer = [lc[f"a{n}|b{n}"] for n, pr in enumerate(pairs) if len(pr["a"]) > len(pr["b"])]
    raw_longer = [pr["p_a"] for pr in pairs if len(pr["a"]) > len(pr["b"])]
    assert np.mean(controlled_longer) < np.mean(raw_longer)  # the longer side loses what length bought it


def test_curated_imitation_reads_the_critics_best_faithful_teacher_candidate(tmp_path):
    s = _store(tmp_path)
    now = datetime.now()
    s.execute("UPDATE candidates SET role = 'teacher', producer = 'teacher', rank = rank + 1")
    teacher = {r["candidate_id"]: r for r in s.query("SELECT * FROM candidates")}
    # the critic ranks the drifted candidate first, the longer faithful one second
    score = {"0": 0.2, "1": 0.6, "2": 0.9}
    verdicts = []
    for cid in teacher:
        rest = [c for c in teacher if c != cid and teacher[c]["input_id"] == teacher[cid]["input_id"]]
        for other in rest:
            if cid < other:
                p = 0.5 + (score[cid[-1]] - score[other[-1]]) / 2
                verdicts.append({"verdict_id": f"{cid}|{other}", "input_id": teacher[cid]["input_id"],
                                 "judge": "critic", "method": "m", "a_id": cid, "b_id": other, "p_a": p,
                                 "orders_agree": True, "n_orders": 2, "purpose": "brio", "run_id": "r",
                                 "created_at": now})
    s.insert("verdicts", verdicts)
    candidate_meaning(s, [{"candidate_id": cid, "input": INPUTS[c["input_id"]], "text": c["text"]}
                          for cid, c in teacher.items()])
    params = {"teacher": "teacher", "judge": "critic", "method": "m", "inputs": list(INPUTS),
              "embedder": "all-minilm-l6-v2"}
    best = sql_dataset(s, "sft", CURATED_SQL, {**params, "meaning_floor": -1.0}, name="c", run_id="r")[0]
    assert {r["output"] for r in best} == {SAMPLES[i][2] for i in INPUTS}  # best-of-N alone takes the drift
    guarded = sql_dataset(s, "sft", CURATED_SQL, {**params, "meaning_floor": 0.5}, name="c", run_id="r")[0]
    assert {r["output"] for r in guarded} == {SAMPLES[i][1] for i in INPUTS}
