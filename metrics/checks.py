"""Critic-independent checks on a student's outputs: did training move it, and did it move somewhere sensible?

A small critic can prefer a student for the wrong reasons (a copy of the input, a longer text), and a feedback run
can leave the student where it was. These plain measures over strings say so without asking any model:

    copy_rate(inputs, outputs)            share of outputs that nearly repeat their input (edit similarity >= 0.9)
    changed_share(outputs, before)        share of outputs that differ from another student's (e.g. the warm start)
    mean_length_ratio(inputs, outputs)    mean of words(output) / words(input)
    distinct_n(outputs, n)                distinct word n-grams / all word n-grams, over all outputs (diversity)
    student_checks(...)                   all of them (and meaning similarity, given an embedder) as one dict
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens."""
    return _TOKEN.findall(text.lower())


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Insertions, deletions and substitutions (each cost 1) turning sequence a into b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - word-level Levenshtein distance / the longer text's word count: 1 for the same words, 0 for disjoint."""
    x, y = words(a), words(b)
    longest = max(len(x), len(y))
    return 1.0 if longest == 0 else 1.0 - levenshtein(x, y) / longest


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def copy_rate(inputs: Sequence[str], outputs: Sequence[str], threshold: float = 0.9) -> float:
    """Share of outputs whose edit similarity to their input is at least `threshold` (a copy, not a paraphrase)."""
    _same_length(inputs, outputs)
    return _mean([float(edit_similarity(i, o) >= threshold) for i, o in zip(inputs, outputs)])


def changed_share(outputs: Sequence[str], before: Sequence[str]) -> float:
    """Share of outputs that differ (after stripping) from `before`, item by item: 0 means training moved nothing."""
    _same_length(outputs, before)
    return _mean([float(o.strip() != b.strip()) for o, b in zip(outputs, before)])


def mean_length_ratio(inputs: Sequence[str], outputs: Sequence[str]) -> float:
    """Mean of whitespace words in the output per word of the input (an empty input counts as one word)."""
    _same_length(inputs, outputs)
    return _mean([len(o.split()) / max(1, len(i.split())) for i, o in zip(inputs, outputs)])


def distinct_n(outputs: Sequence[str], n: int = 1) -> float:
    """Distinct word n-grams over all n-grams of all outputs (Li et al. 2016): low when the student repeats itself."""
    grams = [tuple(t[k:k + n]) for o in outputs for t in (words(o),) for k in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"need one output per item, got {len(a)} and {len(b)}")


def student_checks(inputs: Sequence[str], outputs: Sequence[str], *, before: Sequence[str] | None = None,
                   similarity: Callable[[list[str], list[str]], list[float]] | None = None,
                   copy_threshold: float = 0.9) -> dict[str, float | int | None]:
    """Every check for one student's outputs on `inputs`. `before`: another student's outputs on the same inputs
    (the warm start) for `changed`; `similarity(inputs, outputs)`: per-item meaning similarity (e.g.
    `metrics.similarity.meaning_preservation`) for `meaning`. A check that was not asked for is None."""
    inputs, outputs = list(inputs), list(outputs)
    return {
        "n": len(outputs),
        "copy_rate": copy_rate(inputs, outputs, copy_threshold),
        "changed": None if before is None else changed_share(outputs, list(before)),
        "length_ratio": mean_length_ratio(inputs, outputs),
        "meaning": None if similarity is None or not outputs else _mean(similarity(inputs, outputs)),
        "distinct_1": distinct_n(outputs, 1),
        "distinct_2": distinct_n(outputs, 2),
    }
