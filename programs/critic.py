"""The critic: a pairwise judge, asked in both presentation orders, scored by the probability of its choice.

The paper reads P("1") against P("2") at the answer token (Multiple Choice Prompting) and averages over both
orders; the embedded critics lean heavily to one position (docs/results/critic-audit), so the two-order average is
not optional. `CriticSettings` names the other levers, each measured there: reading the choice before any
reason (`choice-first`, several times faster), averaging log-odds instead of probabilities (a constant lean to one
position cancels exactly), an ensemble of rubric phrasings, a pointwise 1-5 score blended in, and abstaining (a tie)
when the two orders disagree. Where a backend gives no log-probabilities the parsed choices stand in for them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import dspy
from dspy.utils.exceptions import AdapterParseError, LMUnsupportedFeatureError

from programs.critic_rule import (  # noqa: F401 - the settings and the rule are part of the critic's API
    DEFAULT, MAX_TOKENS, PAPER, POINTWISE, CriticSettings, CriticSettingsError, combine, logit, order_method, sigmoid)
from programs.tasks import Task
from store.callback import last_lm_call_id

@dataclass
class OrderJudgment:
    first: str
    second: str
    choice: int | None  # 1 | 2 | None when the answer could not be parsed
    p_first: float | None  # P(the candidate shown first is better)
    source: str  # logprobs | parsed | failed
    reason: str | None
    lm_call_id: str | None
    method: str = "reason-first"


@dataclass
class PointJudgment:
    score: float | None  # expected 1-5 score over the score tokens
    choice: int | None  # the score answered
    source: str
    lm_call_id: str | None


def _plain(value):
    """Plain dicts and lists: a hosted model's log-probabilities arrive through LiteLLM as pydantic objects."""
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _answer_token(logprobs: dict | None, label: str, options: tuple[str, ...]) -> dict[str, float] | None:
    """Probabilities of `options` at the token that answers `<label>:` (or the first token of a bare answer)."""
    tokens = (_plain(logprobs) or {}).get("content") or []
    bare = label + ":" not in "".join(t.get("token") or "" for t in tokens).lower()  # the answer alone, e.g. "1"
    text = ""
    for tok in tokens:
        token = tok.get("token") or ""
        after_label = text.lower().rfind(label + ":")
        answers = (after_label >= 0 and not text[after_label + len(label) + 1:].strip()) or (bare and not text.strip())
        if answers and token.strip()[:1] in options:
            p = dict.fromkeys(options, 0.0)
            for alt in tok.get("top_logprobs") or [{"token": token, "logprob": tok.get("logprob", 0.0)}]:
                key = (alt.get("token") or "").strip()
                if key in p:
                    p[key] += math.exp(alt["logprob"])
            return p if sum(p.values()) > 0 else None
        text += token
    return None


def choice_probability(logprobs: dict | None, label: str = "choice") -> float | None:
    """P("1") / (P("1") + P("2")) at the token that answers `Choice:`, from the top log-probabilities there."""
    p = _answer_token(logprobs, label, ("1", "2"))
    return None if p is None else p["1"] / (p["1"] + p["2"])


def expected_score(logprobs: dict | None, label: str = "score") -> float | None:
    """The expected 1-5 score over the score tokens' probabilities (renormalised)."""
    p = _answer_token(logprobs, label, ("1", "2", "3", "4", "5"))
    return None if p is None else sum(int(k) * v for k, v in p.items()) / sum(p.values())


class Critic(dspy.Module):
    """The pairwise critic of a task, asked as `settings` say; `judge` is the task's own rubric's predictor."""

    def __init__(self, task: Task, settings: CriticSettings | None = None, *, top_logprobs: int = 20,
                 max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.settings = settings or DEFAULT
        if self.settings.rubrics > len(task.rubrics):
            raise CriticSettingsError(f"critic rubrics = {self.settings.rubrics}, but task {task.name!r} has "
                                      f"{len(task.rubrics)} phrasing(s) of its rubric (critic_instruction, "
                                      "critic_rubrics)")
        self.task = task
        mode = self.settings.mode
        self.judge = dspy.Predict(task.critic_signature(mode))
        self.rubric_judges = [dspy.Predict(task.critic_signature(mode, r)) for r in range(1, self.settings.rubrics)]
        self.scorer = dspy.Predict(task.pointwise_signature())  # asked only with pointwise_weight > 0
        self.top_logprobs = top_logprobs
        # choice-first needs the answer's first token only; a reason takes a sentence
        self.max_tokens = max_tokens if mode == "reason-first" else min(max_tokens, 4)
        self._logprobs_ok = True

    @property
    def method(self) -> str:
        return self.settings.method

    def _predictor(self, rubric: int) -> dspy.Predict:
        return self.judge if rubric == 0 else self.rubric_judges[rubric - 1]

    def _call(self, predictor: dspy.Predict, **inputs):
        config = dict(temperature=0.0, max_tokens=self.max_tokens)
        if self._logprobs_ok:
            config |= dict(logprobs=True, top_logprobs=self.top_logprobs)
        try:
            return predictor(**inputs, config=config)
        except LMUnsupportedFeatureError:
            if not self._logprobs_ok:
                raise
            self._logprobs_ok = False  # this backend has no log-probabilities: parsed choices from here on
            return self._call(predictor, **inputs)

    def judge_order(self, text: str, first: str, second: str, rubric: int = 0) -> OrderJudgment:
        method = order_method(self.settings.mode, rubric)
        try:
            pred = self._call(self._predictor(rubric), **self.task.input_values(text),
                              **self.task.candidate_fields(first, second))
        except (AdapterParseError, ValueError) as e:
            return OrderJudgment(first, second, None, None, "failed", f"unparsable answer: {str(e)[:200]}",
                                 last_lm_call_id(), method)
        choice = int(pred.choice)
        p = choice_probability(getattr(pred, "logprobs", None))
        source = "logprobs"
        if p is None:
            p, source = (1.0 if choice == 1 else 0.0), "parsed"
        return OrderJudgment(first, second, choice, p, source, getattr(pred, "reason", None), last_lm_call_id(), method)

    def score_one(self, text: str, output: str) -> PointJudgment:
        """The pointwise rubric score of one output (used when `pointwise_weight` > 0)."""
        try:
            pred = self._call(self.scorer, **self.task.input_values(text), output=self.task.render_output(output))
        except (AdapterParseError, ValueError):
            return PointJudgment(None, None, "failed", last_lm_call_id())
        score = expected_score(getattr(pred, "logprobs", None))
        source = "logprobs"
        if score is None:
            score, source = float(pred.score), "parsed"
        return PointJudgment(score, int(pred.score), source, last_lm_call_id())

    def forward(self, text: str, a: str, b: str) -> dspy.Prediction:
        """P(a is better than b): every rubric in both orders (and the pointwise scores), combined by `combine`."""
        orders, pairs = [], []
        for r in range(self.settings.rubrics):
            ab, ba = self.judge_order(text, a, b, r), self.judge_order(text, b, a, r)
            orders += [asdict(ab), asdict(ba)]
            pairs.append((ab.p_first, ba.p_first))
        scores = ((self.score_one(text, a).score, self.score_one(text, b).score) if self.settings.pointwise_weight
                  else None)
        p, agree = combine(pairs, self.settings, scores)
        return dspy.Prediction(p_a=p, orders_agree=agree, orders=orders)
