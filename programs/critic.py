"""The critic: a pairwise judge, asked in both presentation orders, scored by the probability of its choice.

The paper reads P("1") against P("2") at the answer token (Multiple Choice Prompting) and averages over both
orders; the embedded critics lean heavily to one position (DESIGN.md §3), so the two-order average is not optional.
Where a backend gives no log-probabilities the parsed choices of both orders stand in for them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import dspy
from dspy.utils.exceptions import AdapterParseError, LMUnsupportedFeatureError

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


def choice_probability(logprobs: dict | None, label: str = "choice") -> float | None:
    """P("1") / (P("1") + P("2")) at the token that answers `Choice:`, from the top log-probabilities there."""
    tokens = (logprobs or {}).get("content") or []
    bare = label + ":" not in "".join(t.get("token") or "" for t in tokens).lower()  # the answer alone, e.g. "1"
    text = ""
    for tok in tokens:
        token = tok.get("token") or ""
        after_label = text.lower().rfind(label + ":")
        answers = (after_label >= 0 and not text[after_label + len(label) + 1:].strip()) or (bare and not text.strip())
        if answers and token.strip()[:1] in ("1", "2"):
            p = {"1": 0.0, "2": 0.0}
            for alt in tok.get("top_logprobs") or [{"token": token, "logprob": tok.get("logprob", 0.0)}]:
                key = (alt.get("token") or "").strip()
                if key in p:
                    p[key] += math.exp(alt["logprob"])
            total = p["1"] + p["2"]
            return p["1"] / total if total > 0 else None
        text += token
    return None


class Critic(dspy.Module):
    def __init__(self, task: Task, *, top_logprobs: int = 20, max_tokens: int = 96):
        super().__init__()
        self.judge = dspy.Predict(task.critic_signature())
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self._logprobs_ok = True

    def judge_order(self, text: str, first: str, second: str) -> OrderJudgment:
        config = dict(temperature=0.0, max_tokens=self.max_tokens)
        if self._logprobs_ok:
            config |= dict(logprobs=True, top_logprobs=self.top_logprobs)
        try:
            pred = self.judge(text=text, paraphrase_1=first, paraphrase_2=second, config=config)
        except LMUnsupportedFeatureError:
            if not self._logprobs_ok:
                raise
            self._logprobs_ok = False  # this backend has no log-probabilities: parsed choices from here on
            return self.judge_order(text, first, second)
        except (AdapterParseError, ValueError) as e:
            return OrderJudgment(first, second, None, None, "failed", f"unparsable answer: {str(e)[:200]}", last_lm_call_id())
        choice = int(pred.choice)
        p = choice_probability(getattr(pred, "logprobs", None))
        source = "logprobs"
        if p is None:
            p, source = (1.0 if choice == 1 else 0.0), "parsed"
        return OrderJudgment(first, second, choice, p, source, getattr(pred, "reason", None), last_lm_call_id())

    def forward(self, text: str, a: str, b: str) -> dspy.Prediction:
        """P(a is better than b), averaged over showing a first and showing b first."""
        ab = self.judge_order(text, a, b)
        ba = self.judge_order(text, b, a)
        ps = [p for p in (ab.p_first, None if ba.p_first is None else 1 - ba.p_first) if p is not None]
        return dspy.Prediction(p_a=sum(ps) / len(ps) if ps else None, orders=[asdict(ab), asdict(ba)])
