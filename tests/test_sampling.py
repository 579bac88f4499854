"""Student sampling (finetune.sample), pair selection and the length filter (finetune.pairs), embedding similarity
(metrics.similarity): k candidates per prompt, batching that changes nothing, the most different pair."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.pairs import length_ratio, ngram_edit_distance, select_pair, within_length
from finetune.sample import dedupe_keep_k, sample_candidates
from programs.student_lm import render_prompt

INSTRUCTION = "Rewrite the sentence as a humorous paraphrase with the same meaning."
TEXTS = [
    "My cat knocked a full glass of water off the table while staring right at me.",
    "The dog ate my sandwich.",
    "I spent twenty minutes chasing our hamster after it escaped from its cage again.",
]


def _messages(text: str) -> list[dict]:
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}]


PROMPTS = [_messages(t) for t in TEXTS]


@pytest.fixture(scope="module")
def tiny_causal(tiny_causal_dir):
    from programs.student_lm import load_student

    return load_student(str(tiny_causal_dir))


@pytest.fixture(scope="module")
def tiny_seq2seq(tiny_seq2seq_dir):
    from programs.student_lm import load_student

    return load_student(str(tiny_seq2seq_dir))


@pytest.fixture(params=["causal", "seq2seq"])
def student(request, tiny_causal, tiny_seq2seq):
    return tiny_causal if request.param == "causal" else tiny_seq2seq


# -- sampling ------------------------------------------------------------------------------------------------------


def test_prompts_render_like_the_inference_engine(tiny_causal, tiny_seq2seq):
    _, tok = tiny_causal
    messages = PROMPTS[0]
    # the one rendering (programs.student_lm) the inference engine and sampling share: the chat template for a causal
    # model, contents joined for seq2seq.
    assert render_prompt(tok, messages, seq2seq=False) == tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert render_prompt(tiny_seq2seq[1], messages, seq2seq=True) == f"{INSTRUCTION}\n\n{TEXTS[0]}"
    assert render_prompt(tok, "verbatim input", seq2seq=False) == "verbatim input"


def test_dedupe_keeps_k_slots():
    assert dedupe_keep_k(["a", " a", "b", "c", "c", "c"], 6) == ["a", "b", "c", "a", "b", "c"]
    assert dedupe_keep_k(["", "x", "", "x"], 4) == ["x"] * 4
    assert dedupe_keep_k(["", " "], 3) == [""] * 3


@pytest.mark.parametrize("method", ["nucleus", "diverse_beam"])
def test_k_candidates_per_prompt(student, method):
    model, tok = student
    side = tok.padding_side
    out = sample_candidates(model, tok, PROMPTS, k=6, method=method, batch_size=2, max_new_tokens=8)
    assert len(out) == len(PROMPTS)
    assert all(len(c) == 6 and all(isinstance(s, str) for s in c) for c in out)
    assert model.training is False and tok.padding_side == side  # state restored


def test_nucleus_is_deterministic_by_seed(tiny_causal):
    model, tok = tiny_causal
    import torch

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sample_candidates(model, tok, PROMPTS, k=4, seed=7, max_new_tokens=8)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched
    b = sample_candidates(model, tok, PROMPTS, k=4, seed=7, max_new_tokens=8)
    c = sample_candidates(model, tok, PROMPTS, k=4, seed=8, max_new_tokens=8)
    assert a == b
    assert a != c
    # a random tiny model samples near-uniformly: k draws per prompt really are different
    assert all(len(set(cands)) > 1 for cands in a)


@pytest.mark.parametrize(
    "method,extra",
    [("beam", {}), ("diverse_beam", {}), ("diverse_beam", {"num_beam_groups": 2, "diversity_penalty": 0.5})],
)
def test_batched_equals_one_at_a_time(student, method, extra):
    model, tok = student
    kwargs = dict(k=6, method=method, max_new_tokens=6, **extra)
    batched = sample_candidates(model, tok, PROMPTS, batch_size=3, **kwargs)
    single = [sample_candidates(model, tok, [p], batch_size=1, **kwargs)[0] for p in PROMPTS]
    assert batched == single


def test_diverse_beam_diversifies(tiny_causal):
    model, tok = tiny_causal
    plain = sample_candidates(model, tok, PROMPTS, k=6, method="beam", max_new_tokens=6)
    diverse = sample_candidates(model, tok, PROMPTS, k=6, method="diverse_beam", diversity_penalty=100.0,
                                max_new_tokens=6)
    for p, d in zip(plain, diverse):
        # a huge Hamming penalty makes every group start with its own token (at most one of them is EOS)
        assert len(set(d)) >= 5
        assert len(set(d)) >= len(set(p))


def test_plain_string_prompts(tiny_causal):
    model, tok = tiny_causal
    from programs.student_lm import format_prompt

    strings = [format_prompt(tok, INSTRUCTION, t, seq2seq=False) for t in TEXTS]
    assert sample_candidates(model, tok, strings, k=3, method="beam", max_new_tokens=5) == sample_candidates(
        model, tok, [[{"role": "user", "content": f"{INSTRUCTION}\n\n{t}"}] for t in TEXTS], k=3, method="beam",
        max_new_tokens=5,
    )


def test_bad_arguments(tiny_causal):
    model, tok = tiny_causal
    with pytest.raises(ValueError):
        sample_candidates(model, tok, PROMPTS, method="top_k")
    assert sample_candidates(model, tok, [], k=6) == []


# -- pairs -----------------------------------------------------------------------------------------------------------


def test_edit_distance_properties():
    a = "The cat sat on the mat."
    b = "A dog slept under my warm bed."
    assert ngram_edit_distance(a, a) == 0.0
    assert ngram_edit_distance(a, a.upper()) == 0.0  # case-folded
    assert ngram_edit_distance(a, b) == ngram_edit_distance(b, a)
    assert ngram_edit_distance("red green blue", "one two three four") == 1.0  # disjoint
    assert ngram_edit_distance("", "") == 0.0 and ngram_edit_distance("", a) == 1.0
    # one substitution in six words (+ the full stop): 1 / 7
    assert ngram_edit_distance(a, "The dog sat on the mat.") == pytest.approx(1 / 7)
    # bigrams see word order that unigrams do not
    assert ngram_edit_distance("a b c d", "b a c d", n=1) == 0.5
    assert ngram_edit_distance("a b c d", "b a c d", n=2) == pytest.approx(2 / 3)
    for x, y in [(a, b), (a, "The cat sat."), ("x", a)]:
        for n in (1, 2, 3):
            assert 0.0 <= ngram_edit_distance(x, y, n) <= 1.0


def test_select_pair_picks_the_most_different():
    candidates = [
        "My cat knocked the glass over.",
        "My cat knocked the glass over.",
        "My cat knocked a glass over!",
        "Gravity has a new favourite employee: my cat.",
        "My cat knocked the glass over!",
    ]
    i, j = select_pair(candidates)
    assert i < j and 3 in (i, j) and 1 not in (i, j)  # the odd one out; a duplicate never stands in for the first
    assert ngram_edit_distance(candidates[i], candidates[j]) == max(
        ngram_edit_distance(x, y) for x in candidates for y in candidates
    )
    assert select_pair(["same", "same ", "same"]) is None
    assert select_pair(["only one", "", "  "]) is None  # blanks never count
    assert select_pair([]) is None
    with pytest.raises(ValueError):
        select_pair(candidates, method="bleu")


def test_length_filter():
    text = "one two three four five six seven eight nine ten"
    assert length_ratio("a b c d e", text) == 0.5
    assert within_length(" ".join(["w"] * 8), text) and within_length(" ".join(["w"] * 12), text)
    assert not within_length(" ".join(["w"] * 7), text)
    assert not within_length(" ".join(["w"] * 13), text)
    assert within_length("a b", text, lo=0.1, hi=0.3)
    assert length_ratio("", "") == 1.0 and length_ratio("x", "") == float("inf")


def test_select_pair_with_a_given_embedder():
    vectors = {"a": [1.0, 0.0], "b": [0.9, 0.1], "c": [-1.0, 0.2]}
    assert select_pair(["a", "b", "c"], method="embedding", embed=lambda t: np.array([vectors[x] for x in t])) == (0, 2)


# -- similarity (the bundled MiniLM) -------------------------------------------------------------------------------


def test_similarity_on_minilm():
    from metrics import similarity

    literal = "Suddenly a big gust of wind came and blew my dress up around my ears!"
    paraphrase = "Oops! A strong breeze came and lifted my dress right up to my ears."
    unrelated = "The quarterly tax report is due at the accounting office on Monday."
    vectors = similarity.embed([literal, paraphrase, unrelated])
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert similarity.embed([]).shape == (0, 384)
    assert similarity.load_embedder() is similarity.load_embedder()
    close, far = similarity.meaning_preservation([literal, literal], [paraphrase, unrelated])
    assert close > far + 0.3
    assert similarity.cosine([literal], [literal])[0] == pytest.approx(1.0, abs=1e-5)
    # embedding pair selection: the odd one out is in the pair
    candidates = [paraphrase, "A big gust of wind blew my dress up to my ears.", unrelated]
    pair = select_pair(candidates, method="embedding")
    assert pair is not None and 2 in pair


def test_select_pair_among_allowed_and_anchored():
    candidates = ["a b c d", "a b c e", "x y z w", "a b c d"]
    assert select_pair(candidates) in {(0, 2), (1, 2)}  # the most different, across all
    assert select_pair(candidates, allowed=[0, 1, 3]) == (0, 1)  # only among those that pass a filter
    assert select_pair(candidates, allowed=[0, 3]) is None  # two copies of one text: no pair
    assert select_pair(candidates, anchor=1) == (1, 2)  # the one most different from the anchor
    assert select_pair(candidates, anchor=3, allowed=[0, 3]) is None  # the rest repeats the anchor
    assert select_pair(candidates, anchor=2, allowed=[0, 1]) is None  # an anchor outside the filter


def _cands(texts, greedy=None):
    rows = [{"candidate_id": f"c{i}", "text": t, "rank": i} for i, t in enumerate(texts)]
    if greedy is not None:
        rows.insert(0, {"candidate_id": "g", "text": greedy, "rank": -1})
    return rows


def test_pick_pair_filters_by_length_first_then_picks():
    """The most different pair overall has a candidate outside the band; the pair is chosen among those inside
    (before: the input was dropped)."""
    from finetune.feedback import FeedbackConfig, pick_pair

    text = "one two three four five"
    cands = _cands(["one two three four five", "one two three four six",
                    "totally different words here now and then some more"])
    pair, why = pick_pair(cands, text, FeedbackConfig(anchor="none"))
    assert why == "different" and {pair[0]["candidate_id"], pair[1]["candidate_id"]} == {"c0", "c1"}
    # too long and too short only: nothing to judge
    pair, why = pick_pair(_cands(["a", "a b c d e f g h i j"]), text, FeedbackConfig(anchor="none"))
    assert pair is None and why == "length"
    assert pick_pair(_cands(["same", "same"]), "same", FeedbackConfig())[1] == "identical"


def test_pick_pair_anchors_on_the_greedy_output():
    from finetune.feedback import FeedbackConfig, pick_pair

    text = "one two three four five"
    cands = _cands(["one two three four five", "five four three two one", "one two three four six"],
                   greedy="one two three four seven")
    pair, why = pick_pair(cands, text, FeedbackConfig(anchor="greedy"))
    assert why == "anchored" and pair[0]["candidate_id"] == "g" and pair[1]["candidate_id"] == "c1"
    # the paper's rule ignores the greedy output
    pair, why = pick_pair(cands, text, FeedbackConfig(anchor="none"))
    assert why == "different" and "g" not in {pair[0]["candidate_id"], pair[1]["candidate_id"]}
    # a greedy output outside the band: the most different in-band pair of samples
    cands[0]["text"] = "one"
    pair, why = pick_pair(cands, text, FeedbackConfig(anchor="greedy"))
    assert why == "different" and "g" not in {pair[0]["candidate_id"], pair[1]["candidate_id"]}


def test_greedy_is_the_models_argmax_output(tiny_causal):
    model, tokenizer = tiny_causal
    prompts = [[{"role": "user", "content": "It rained all day."}], [{"role": "user", "content": "A cat."}]]
    greedy = sample_candidates(model, tokenizer, prompts, k=1, method="greedy", max_new_tokens=6, batch_size=2)
    alone = [sample_candidates(model, tokenizer, [p], k=1, method="greedy", max_new_tokens=6)[0] for p in prompts]
    assert greedy == alone and all(len(g) == 1 for g in greedy)
    with pytest.raises(ValueError, match="k=1"):
        sample_candidates(model, tokenizer, prompts, k=2, method="greedy")


def test_sampling_settings_tag_the_producer():
    from finetune.feedback import FeedbackConfig, sample_producer

    assert sample_producer("ckpt", FeedbackConfig()) == "ckpt"  # the defaults: the producer samples had before
    hot = sample_producer("ckpt", FeedbackConfig(temperature=0.7))
    assert hot.startswith("ckpt~") and hot != sample_producer("ckpt", FeedbackConfig(top_p=0.95))
