"""Critic-independent checks on student outputs (metrics.checks): pure functions over strings."""

import math

import pytest

from metrics.checks import changed_share, copy_rate, distinct_n, edit_similarity, mean_length_ratio, student_checks

INPUTS = ["My cat sat on my laptop all day long.", "It rained during the whole picnic."]


def test_copy_rate_flags_outputs_that_repeat_the_input():
    assert edit_similarity("My cat sat on my laptop.", "my cat sat on my laptop.") == 1.0
    copies = ["My cat sat on my laptop all day long!", "The picnic became a swimming lesson."]
    assert copy_rate(INPUTS, copies) == 0.5  # one punctuation mark changed: still a copy
    assert copy_rate(INPUTS, ["Feline took over my workstation.", "Sky cried on our sandwiches."]) == 0.0


def test_changed_share_and_length_ratio():
    assert changed_share(["a b", "c d "], ["a b", "c e"]) == 0.5
    assert changed_share(["x"], ["x "]) == 0.0  # whitespace is no change
    assert mean_length_ratio(["one two", "one two three four"], ["a b c d", "a b"]) == pytest.approx((2 + 0.5) / 2)
    with pytest.raises(ValueError, match="one output per item"):
        changed_share(["a"], [])


def test_distinct_n():
    assert distinct_n(["the cat", "the cat"], 1) == 0.5
    assert distinct_n(["a b c", "a b d"], 2) == 0.75  # (a b), (b c), (a b), (b d): 3 distinct of 4
    assert math.isnan(distinct_n([""], 1))


def test_student_checks_together():
    outs = ["Feline took over my workstation.", "It rained during the whole picnic."]
    checks = student_checks(INPUTS, outs, before=["Feline took over my workstation.", "Rain crashed the picnic."],
                            similarity=lambda a, b: [1.0 if x == y else 0.5 for x, y in zip(a, b)])
    assert checks["n"] == 2 and checks["copy_rate"] == 0.5 and checks["changed"] == 0.5
    assert checks["meaning"] == 0.75 and 0 < checks["distinct_1"] <= 1 and 0 < checks["distinct_2"] <= 1
    alone = student_checks(INPUTS, outs)
    assert alone["changed"] is None and alone["meaning"] is None
