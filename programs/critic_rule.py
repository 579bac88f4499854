"""The critic's settings and the one rule that turns its answers in both orders into P(a >= b).

Kept apart from `programs.critic` (the DSPy module) so that configs and the store's docs can name them without
loading DSPy; every stage that combines judgments calls `combine`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from store.errors import UserError

MODES = ("reason-first", "choice-first")
AGGREGATES = ("mean", "logodds", "calibrated")
CLIP = 1e-4  # probabilities are clipped to [CLIP, 1 - CLIP] before log-odds (a top-20 read can give exactly 1.0)


class CriticSettingsError(UserError, ValueError):
    """A critic setting out of range: one line for the user."""


@dataclass(frozen=True)
class CriticSettings:
    """How the critic asks and how its answers in both orders become one P(a >= b); `method` names it in the store."""

    mode: str = "choice-first"  # reason-first (the paper: a reason, then the choice) | choice-first (the choice only)
    rubrics: int = 1  # how many phrasings of the rubric to average over: the task's own, then `task.critic_rubrics`
    aggregate: str = "logodds"  # mean (the paper: mean probability) | logodds | calibrated (mean after `prior`)
    scale: float = 1.0  # multiplies the averaged log-odds (a temperature, fit on labeled dev pairs)
    prior: float = 0.0  # the critic's lean to position 1 in log-odds, removed from each order ('calibrated')
    abstain_margin: float = 0.0  # orders that disagree and |log-odds| below this -> a tie (P = 0.5); 0: never
    pointwise_weight: float = 0.0  # log-odds weight of the pointwise score difference (1-5 scale); 0: pairwise only

    def __post_init__(self):
        if self.mode not in MODES:
            raise CriticSettingsError(f"critic mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.aggregate not in AGGREGATES:
            raise CriticSettingsError(f"critic aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
        if not isinstance(self.rubrics, int) or self.rubrics < 1:
            raise CriticSettingsError(f"critic rubrics must be a positive integer, got {self.rubrics!r}")
        for name in ("scale", "abstain_margin", "pointwise_weight"):
            if getattr(self, name) < 0 or (name == "scale" and self.scale == 0):
                raise CriticSettingsError(f"critic {name} must be {'> 0' if name == 'scale' else '>= 0'}, "
                                          f"got {getattr(self, name)!r}")

    @property
    def method(self) -> str:
        """A stable name of these settings: the `method` of their verdicts."""
        parts = [self.mode, self.aggregate]
        if self.rubrics > 1:
            parts.append(f"rubrics{self.rubrics}")
        if self.scale != 1.0:
            parts.append(f"scale{self.scale:g}")
        if self.aggregate == "calibrated":
            parts.append(f"prior{self.prior:g}")
        if self.abstain_margin:
            parts.append(f"abstain{self.abstain_margin:g}")
        if self.pointwise_weight:
            parts.append(f"pointwise{self.pointwise_weight:g}")
        return "/".join(parts)

    @classmethod
    def from_dict(cls, values: dict) -> CriticSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CriticSettingsError(f"unknown critic setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


# the paper's critic, as every store before critic methods judged: a reason, then the choice; mean probability
PAPER = CriticSettings(mode="reason-first", aggregate="mean")
# the pipeline's, the metric's and the audit's default: the best agreement on the dev half of the labeled pairs among
# the settings at least 2x faster than the paper's (docs/results/critic-audit)
DEFAULT = CriticSettings(pointwise_weight=0.5)
# a critic's answer budget in tokens (a reason-first answer's short reason, then the choice): every command's default
MAX_TOKENS = 96


def order_method(mode: str, rubric: int) -> str:
    """The `method` of one judgment (one LM call): its prompt. The paper's prompt keeps the name it always had."""
    return mode if rubric == 0 else f"{mode}/rubric{rubric}"


POINTWISE = "pointwise"  # the method of a pointwise (one candidate, 1-5) judgment


def logit(p: float) -> float:
    p = min(max(p, CLIP), 1 - CLIP)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def combine(orders: list[tuple[float | None, float | None]], settings: CriticSettings,
            scores: tuple[float | None, float | None] | None = None) -> tuple[float | None, bool | None]:
    """(P(a >= b), whether the two orders agreed) from each rubric's (P_first with a first, P_first with b first).

    The one rule every stage uses (pipeline evaluation, feedback, BRIO rankings, the metric, the audit); the store's
    views read its results from `verdicts` instead of restating it.
    """
    a_first = [p for p, _ in orders if p is not None]  # P(a better) when a was shown first
    b_first = [1 - p for _, p in orders if p is not None]  # P(a better) when a was shown second
    if not a_first and not b_first:
        return None, None
    if settings.aggregate == "mean":
        p = sum(a_first + b_first) / len(a_first + b_first)
        x = logit(p)
    else:
        prior = settings.prior if settings.aggregate == "calibrated" else 0.0
        xs = [logit(p) - prior for p in a_first] + [-(logit(1 - p) - prior) for p in b_first]
        if settings.aggregate == "calibrated":
            x = logit(sum(sigmoid(v) for v in xs) / len(xs))
        else:
            x = sum(xs) / len(xs)
    x *= settings.scale
    if settings.pointwise_weight and scores and None not in scores:
        x += settings.pointwise_weight * (scores[0] - scores[1])
    agree = None
    if a_first and b_first:
        agree = (sum(a_first) / len(a_first) > 0.5) == (sum(b_first) / len(b_first) > 0.5)
    if settings.abstain_margin and agree is False and abs(x) < settings.abstain_margin:
        return 0.5, agree
    if settings.aggregate == "mean" and settings.scale == 1.0 and not settings.pointwise_weight:
        return p, agree  # exactly the paper's number
    return sigmoid(x), agree


