"""Length-controlled verdicts: the critic's preference for the longer output, fitted on its own verdicts and removed.

The embedded critic prefers the longer text (docs/critic.md: length bias 84%, 0% on padded pairs), so a student can
win its verdicts by writing more. Length-controlled AlpacaEval (Dubois et al. 2024) fits the judge's preference as a
logistic regression on a length feature and reads the win rate with that term set to zero; here the same, per item:

    feature(a, b)        tanh((words(a) - words(b)) / scale), scale = the standard deviation of the differences
    fit(p, x, groups)    logit P(a >= b) = intercept[group] + slope * x, soft labels p (cross-entropy, Newton steps)
    controlled(p, x, f)  sigmoid(logit p - slope * x): the verdict with the length term removed

A pair of the student's own samples has no "side" (a and b are in arbitrary order), so its fit has no intercept;
students judged against the teacher's reference get one intercept per student (their quality), so the slope is what
length buys within a student, not the difference between a long student and a short one. The fit is plain numpy:
two to a few dozen parameters, a few hundred verdicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

_EPS = 1e-4  # verdicts of exactly 0 or 1 (a person's rating) keep a finite log-odds


@dataclass(frozen=True)
class LengthFit:
    slope: float  # log-odds per unit of the length feature; > 0: the critic prefers the longer output
    scale: float  # words: the standard deviation of the word-count differences the fit saw
    n: int  # verdicts fitted
    intercepts: dict[str, float] | None = None  # per group (student), when fitted with groups

    def feature(self, a_words: float, b_words: float) -> float:
        return float(np.tanh((a_words - b_words) / self.scale))


def word_count(text: str) -> int:
    return len(text.split())


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit(p: Sequence[float], diffs: Sequence[float], groups: Sequence[str] | None = None, *,
        l2: float = 1e-3, iterations: int = 50) -> LengthFit:
    """The critic's length term on verdicts `p` (P(a >= b)) of pairs whose word counts differ by `diffs` (a - b).
    `groups`: one intercept per group (e.g. the student, against one reference); None: no intercept (pairs of
    interchangeable sides). Too few verdicts, or no spread in length, give slope 0 (nothing to remove)."""
    y, d = np.asarray(p, dtype=float), np.asarray(diffs, dtype=float)
    if y.shape != d.shape:
        raise ValueError(f"need one length difference per verdict, got {len(d)} and {len(y)}")
    scale = float(np.std(d)) if d.size else 0.0
    names = sorted(set(groups)) if groups is not None else []
    if d.size < 3 or scale == 0:
        return LengthFit(0.0, scale or 1.0, int(d.size), {g: 0.0 for g in names} if groups is not None else None)
    x = np.tanh(d / scale)
    columns = [x] + [np.asarray([g == name for g in groups], dtype=float) for name in names]
    X = np.stack(columns, axis=1)
    w = np.zeros(X.shape[1])
    for _ in range(iterations):  # Newton's method on the soft-label cross-entropy with a little ridge
        q = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (q - y) + l2 * w
        hess = (X * (q * (1 - q))[:, None]).T @ X + l2 * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    intercepts = {name: float(w[1 + k]) for k, name in enumerate(names)} if groups is not None else None
    return LengthFit(float(w[0]), scale, int(d.size), intercepts)


def controlled(p: float | None, diff: float, length_fit: LengthFit) -> float | None:
    """The verdict with the fitted length term removed; None stays None. A tie (0.5) between texts of different
    lengths leans to the shorter one by the fitted amount: that is the term removed."""
    if p is None:
        return None
    z = float(_logit(np.asarray([p]))[0]) - length_fit.slope * float(np.tanh(diff / length_fit.scale))
    return float(1 / (1 + np.exp(-z)))


__all__ = ["LengthFit", "controlled", "fit", "word_count"]
