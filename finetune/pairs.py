"""Pick the pair the critic judges, and the length filter (the paper's feedback step).

The paper samples k = 6 candidates from the student, takes "the pair with the largest n-gram edit distance", has
the critic label one positive and one negative, and drops pairs whose length ratio to the input lies outside
[0.8, 1.2] (the critic prefers longer outputs; without the filter the student's outputs nearly double in length).

    ngram_edit_distance(a, b, n=1)   Levenshtein distance over word n-grams / the longer n-gram sequence, in [0, 1]
    select_pair(candidates)          (i, j) of the most different pair, or None
    select_pair(c, anchor=g)         (g, j): the candidate most different from candidate g (e.g. the greedy output)
    select_pair(c, allowed=ids)      only among the candidates `ids` (e.g. those inside the length band)
    length_ratio(output, input)      words(output) / words(input)
    within_length(output, input)     0.8 <= ratio <= 1.2
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from metrics.checks import levenshtein as _levenshtein
from metrics.checks import words  # noqa: F401 - part of this module's API


def ngrams(tokens: Sequence[str], n: int = 1) -> list[tuple[str, ...]]:
    """Consecutive word n-grams; a text shorter than n words is one (shorter) gram, an empty one none."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if 0 < len(tokens) < n:
        return [tuple(tokens)]
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def ngram_edit_distance(a: str, b: str, n: int = 1) -> float:
    """Levenshtein distance between the word n-gram sequences of a and b, divided by the longer sequence's length.

    Tokens are lower-cased words and punctuation marks; each n-gram is one symbol. Normalising by the longer length
    makes the distance comparable across candidates of different lengths and bounds it to [0, 1]: 0 for equal
    token sequences, 1 when no n-gram lines up (disjoint texts, or one text empty). The paper does not say how it
    normalises; raw counts would make the longest candidates look "most different" by length alone, which is
    the very bias the length filter fights. Symmetric. n = 1 compares words; n = 2 also counts word order locally.
    """
    x, y = ngrams(words(a), n), ngrams(words(b), n)
    longest = max(len(x), len(y))
    if longest == 0:
        return 0.0
    return _levenshtein(x, y) / longest


def _distinct_among(candidates: Sequence[str], order: Sequence[int]) -> list[int]:
    """Of the indices `order`, in that order, the first of each distinct non-blank candidate text (stripped)."""
    seen: dict[str, int] = {}
    for i in order:
        key = candidates[i].strip()
        if key and key not in seen:
            seen[key] = i
    return list(seen.values())


def select_pair(
    candidates: Sequence[str],
    *,
    method: str = "edit",
    embed: Callable[[list[str]], np.ndarray] | None = None,
    n: int = 1,
    allowed: Sequence[int] | None = None,
    anchor: int | None = None,
) -> tuple[int, int] | None:
    """Indices of the two most different candidates, or None with fewer than 2 distinct non-blank ones.

    method "edit": the largest `ngram_edit_distance(·, ·, n)` (the paper's choice); "embedding": the largest cosine
    distance between sentence embeddings, `embed(texts) -> (len(texts), dim)` array (default: the bundled MiniLM,
    `metrics.similarity.embed`). Duplicates and blank candidates are skipped (a blank output is no paraphrase to
    judge); ties go to the earliest pair, so the choice is deterministic. `allowed` limits the choice to those
    indices (filter first, then pick: the most different pair among the ones that pass). With `anchor` (an allowed,
    non-blank index) one side is fixed: the result is (anchor, j) for the candidate j most different from it, or
    None when every other candidate repeats it. Without it the result is (i, j) with i < j.
    """
    if method not in ("edit", "embedding"):
        raise ValueError(f"unknown pair selection method {method!r}; use 'edit' or 'embedding'")
    allowed_set = set(range(len(candidates)) if allowed is None else allowed)
    if anchor is not None and (anchor not in allowed_set or not candidates[anchor].strip()):
        return None
    order = [i for i in range(len(candidates)) if i in allowed_set and i != anchor]
    # the anchor goes first, so deduplication keeps it (and drops the candidates that repeat it)
    idx = _distinct_among(candidates, ([anchor] if anchor is not None else []) + order)
    if len(idx) < 2:
        return None
    if method == "edit":
        def distance(p: int, q: int) -> float:
            return ngram_edit_distance(candidates[idx[p]], candidates[idx[q]], n)
    else:
        if embed is None:
            from metrics.similarity import embed
        vectors = np.asarray(embed([candidates[i] for i in idx]), dtype=np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms == 0, 1.0, norms)
        dist = 1.0 - vectors @ vectors.T

        def distance(p: int, q: int) -> float:
            return float(dist[p, q])

    firsts = [0] if anchor is not None else range(len(idx))
    best, best_pair = -np.inf, None
    for p in firsts:
        for q in range(p + 1, len(idx)):
            d = distance(p, q)
            if d > best:
                best, best_pair = d, (idx[p], idx[q])
    return best_pair


def length_ratio(output: str, input: str) -> float:
    """Words in the output per word of the input (whitespace-separated words; inf for an empty input only)."""
    out_words, in_words = len(output.split()), len(input.split())
    if in_words == 0:
        return 1.0 if out_words == 0 else float("inf")
    return out_words / in_words


def within_length(output: str, input: str, lo: float = 0.8, hi: float = 1.2) -> bool:
    """The paper's length filter: keep an output whose length ratio to its input lies in [lo, hi]."""
    return lo <= length_ratio(output, input) <= hi
