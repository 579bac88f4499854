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


def test_paired_difference_cancels_shared_difficulty_that_separate_intervals_do_not():
    from metrics.winrate import paired_difference

    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.1, 0.9, 60)  # each input's difficulty, shared by both students
    x = {f"i{k}": float(d + 0.05) for k, d in enumerate(difficulty)}  # x is 5 points better on every input
    y = {f"i{k}": float(d) for k, d in enumerate(difficulty)}
    y["only-y"] = 0.9  # inputs only one student answered are left out
    diff = paired_difference(x, y)
    assert diff.n == 60 and abs(diff.value - 0.05) < 1e-9 and diff.lo > 0  # paired: certain
    px, _ = win_tie_rate(list(x.values()))
    py, _ = win_tie_rate([v for k, v in y.items() if k != "only-y"])
    assert px.lo < py.hi  # unpaired: the two intervals overlap, the same lift looks like a tie
    decided = paired_difference({"a": 0.6, "b": 0.4}, {"a": 0.4, "b": 0.4}, decisions=True)
    assert decided.value == 0.5 and "+50.0" in decided.signed()
