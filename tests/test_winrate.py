import numpy as np

from metrics.winrate import bootstrap, win_tie_rate


def test_bootstrap_interval_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = bootstrap(rng.random(20))
    large = bootstrap(rng.random(2000))
    assert small.lo <= small.value <= small.hi
    assert (large.hi - large.lo) < (small.hi - small.lo)


def test_win_tie_rate_counts_ties_as_wins_and_skips_missing():
    prob, decision = win_tie_rate([0.9, 0.5, 0.1, None])
    assert prob.n == decision.n == 3
    assert abs(prob.value - 0.5) < 1e-9
    assert abs(decision.value - 2 / 3) < 1e-9
    assert 0 <= decision.lo <= decision.hi <= 1


def test_empty_is_nan_not_an_error():
    prob, _ = win_tie_rate([])
    assert prob.n == 0 and np.isnan(prob.value)
