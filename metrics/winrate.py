"""Win-tie rate of a student against a reference, with a bootstrap confidence interval.

Each item carries the critic's debiased P(student >= reference), averaged over both presentation orders. Two
readings, both reported: the paper's WTR, the mean of that probability, and the decision WTR, the
share of items where the probability favours the student (ties, p = 0.5, count as wins: win-*tie* rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float
    lo: float
    hi: float
    n: int

    NONE = "none judged (n=0)"  # an estimate of nothing is never printed as a number

    def __str__(self) -> str:
        if not self.n:
            return self.NONE
        return f"{100 * self.value:.1f} [{100 * self.lo:.1f}, {100 * self.hi:.1f}] (n={self.n})"

    def signed(self) -> str:
        """A difference in points, sign always shown: +7.4 [-0.9, +15.9] (n=69)."""
        if not self.n:
            return self.NONE
        return f"{100 * self.value:+.1f} [{100 * self.lo:+.1f}, {100 * self.hi:+.1f}] (n={self.n})"

    def interval(self) -> str:
        """×100 with its interval and no n, for a table with an n column: 48.6 [41.2, 55.9]; – for none."""
        return "–" if not self.n else f"{100 * self.value:.1f} [{100 * self.lo:.1f}, {100 * self.hi:.1f}]"


def bootstrap(values: list[float] | np.ndarray, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean with a percentile bootstrap interval."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return Estimate(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), int(x.size))


def win_tie_rate(p_student: list[float | None], **kw) -> tuple[Estimate, Estimate]:
    """(probability WTR, decision WTR) from per-item debiased P(student >= reference)."""
    ps = [p for p in p_student if p is not None]
    return bootstrap(ps, **kw), bootstrap([1.0 if p >= 0.5 else 0.0 for p in ps], **kw)


def paired_difference(p_x: dict[str, float | None], p_y: dict[str, float | None], *, decisions: bool = False,
                      **kw) -> Estimate:
    """Mean per-item difference (x - y) of two students' P(student >= reference) on the items both have, with a
    bootstrap over items: the same inputs judged for both, so their shared difficulty cancels (unlike comparing two
    separate intervals)."""
    shared = [k for k in p_x if k in p_y and p_x[k] is not None and p_y[k] is not None]
    if decisions:
        diffs = [float(p_x[k] >= 0.5) - float(p_y[k] >= 0.5) for k in shared]
    else:
        diffs = [p_x[k] - p_y[k] for k in shared]
    return bootstrap(diffs, **kw)
