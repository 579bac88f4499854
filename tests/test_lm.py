"""`programs.lm`: model specs to `dspy.LM`, and the two in-process engines (transformers, llama.cpp) through DSPy.

Fast tests use the tiny config-built models from conftest (a 2-layer Llama, a 1+1-layer BART); the `slow` ones run
the embedded Qwen2.5-Coder-0.5B GGUF through llama.cpp with a handful of tokens each.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dspy
import pytest
from dspy.lm15 import Message, Request

from programs import lm as lm_module
from programs.adapter import LabeledAdapter
from programs.lm import LlamaCppEngine, ModelSpecError, TransformersEngine, check_reachable, resolve_lm
from store.db import Store

EMBEDDED_GGUF = "local/qwen2.5-coder-0.5b-instruct"


class Rewrite(dspy.Signature):
    """Rewrite the sentence as a humorous paraphrase with the same meaning."""

    text: str = dspy.InputField(desc="the literal sentence")
    paraphrase: str = dspy.OutputField(desc="a funny paraphrase")


def _usage(lm: dspy.LM) -> dict:
    return lm.history[-1]["usage"]


def _logprob_tokens(output) -> list[dict]:
    """The per-token log-probabilities of one `lm(..., logprobs=True)` output (OpenAI shape)."""
    assert isinstance(output, dict), output
    return output["logprobs"]["content"]


@pytest.fixture(params=["causal", "seq2seq"])
def tiny_dir(request, tiny_causal_dir, tiny_seq2seq_dir) -> Path:
    return tiny_causal_dir if request.param == "causal" else tiny_seq2seq_dir


# -- transformers engine on the tiny models --------------------------------------------------------------------


def test_transformers_engine_runs_a_predict_with_the_labeled_adapter(tiny_dir):
    lm = resolve_lm(f"local/{tiny_dir}", max_tokens=12, cache=False)
    assert isinstance(lm, dspy.LM) and isinstance(lm.engine, TransformersEngine)
    with dspy.context(lm=lm, adapter=LabeledAdapter()):
        out = dspy.Predict(Rewrite)(text="My cat sat on the laptop during the Monday meeting.")
    assert isinstance(out.paraphrase, str) and out.paraphrase.strip()
    messages = lm.history[-1]["messages"]
    assert messages[0]["role"] == "system" and "Answer with the paraphrase only" in messages[0]["content"]
    assert "Text: My cat sat on the laptop" in messages[-1]["content"]
    usage = _usage(lm)
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 12


def test_transformers_engine_takes_an_explicit_request(tiny_causal_dir):
    lm = resolve_lm(f"local/{tiny_causal_dir}", cache=False)
    request = Request(model=lm.model, messages=(Message.user("hello"),), config=dspy.lm15.Config(max_tokens=5))
    response = lm(request)
    assert isinstance(response, dspy.lm15.Response)
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 5
    assert isinstance(response.text, str)


def test_transformers_max_tokens_bounds_the_output(tiny_dir):
    lm = resolve_lm(f"local/{tiny_dir}", cache=False)
    counts = {}
    for bound in (3, 10):
        out = lm("hi", max_tokens=bound, logprobs=True, top_logprobs=1)
        tokens = _logprob_tokens(out[0])  # one entry per generated token
        usage = _usage(lm)
        assert len(tokens) == usage["completion_tokens"] <= bound
        counts[bound] = usage["completion_tokens"]
    assert counts[3] == 3 and counts[10] > 3  # a random model rarely ends on its own: the bound is what stops it


def test_transformers_usage_is_reported(tiny_dir):
    lm = resolve_lm(f"local/{tiny_dir}", max_tokens=6, cache=False)
    lm("Tell me something funny about Mondays.")
    short_prompt = _usage(lm)["prompt_tokens"]
    lm("Tell me something funny about Mondays, traffic, rain, coffee, the boss and the dog all at once.")
    usage = _usage(lm)
    assert usage["prompt_tokens"] > short_prompt > 0
    assert 0 < usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_transformers_logprobs_with_top_alternatives(tiny_dir):
    lm = resolve_lm(f"local/{tiny_dir}", max_tokens=5, cache=False)
    out = lm("hi", logprobs=True, top_logprobs=3)
    tokens = _logprob_tokens(out[0])
    assert 0 < len(tokens) <= 5
    for t in tokens:
        assert t["logprob"] <= 0
        assert len(t["top_logprobs"]) == 3
        tops = [a["logprob"] for a in t["top_logprobs"]]
        assert tops == sorted(tops, reverse=True) and all(v <= 0 for v in tops)
        assert t["logprob"] <= tops[0] + 1e-6  # nothing beats the best alternative
    # greedy decoding: the chosen token is the most likely one
    assert tokens[0]["token"] == tokens[0]["top_logprobs"][0]["token"]
    assert "".join(t["token"] for t in tokens).strip() == out[0]["text"]


def test_transformers_same_seed_same_sample(tiny_dir):
    def sample(seed: int) -> str:
        lm = resolve_lm(f"local/{tiny_dir}", temperature=1.0, max_tokens=12, seed=seed, cache=False)
        return lm("Say something about coffee.")[0]

    first = sample(7)
    assert sample(7) == first
    assert any(sample(s) != first for s in (8, 9, 10))  # sampling is on: other seeds give other text


def test_transformers_n_gives_n_outputs(tiny_causal_dir):
    lm = resolve_lm(f"local/{tiny_causal_dir}", temperature=1.0, max_tokens=8, seed=3, cache=False)
    outs = lm("hi", n=3)
    assert isinstance(outs, list) and len(outs) == 3 and all(isinstance(o, str) for o in outs)
    assert len(set(outs)) > 1  # each candidate gets its own seed


# -- resolve_lm: specs and errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("", "empty model spec"),
    ("local/", "needs a model name or path"),
    ("local/does/not/exist.gguf", "no GGUF file at"),
    ("local/no-such-embedded", "unknown local model 'no-such-embedded'"),
    ("gpt-4o-mini", "needs a provider prefix"),
])
def test_resolve_lm_rejects_bad_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message) as info:
        resolve_lm(spec)
    assert "\n" not in str(info.value)


def test_resolve_lm_unknown_embedded_names_the_known_ones():
    with pytest.raises(ModelSpecError) as info:
        resolve_lm("local/no-such-embedded")
    assert "qwen2.5-coder-0.5b-instruct" in str(info.value)


def test_resolve_lm_rejects_a_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelSpecError, match="not a Hugging Face model folder"):
        resolve_lm(f"local/{tmp_path}")


def test_resolve_lm_passes_litellm_strings_through():
    lm = resolve_lm("openai/gpt-4o-mini", temperature=0.3, max_tokens=20, seed=1, cache=False)
    assert isinstance(lm, dspy.LM)
    assert lm.model == "openai/gpt-4o-mini"
    assert lm.engine == "auto"  # DSPy's own engine selection, nothing of ours
    assert lm.kwargs["temperature"] == 0.3 and lm.kwargs["max_tokens"] == 20 and lm.kwargs["seed"] == 1
    assert lm.history == []  # built, never called: no network


def test_check_reachable_fails_fast_with_one_line():
    lm = resolve_lm("openai/gpt-4o-mini", api_key="sk-dummy", api_base="http://127.0.0.1:9", cache=False)
    start = time.monotonic()
    with pytest.raises(ModelSpecError, match="cannot reach openai/gpt-4o-mini") as info:
        check_reachable(lm, timeout=5)
    assert time.monotonic() - start < 15
    assert "\n" not in str(info.value)


def test_check_reachable_skips_local_models(tiny_causal_dir):
    lm = resolve_lm(f"local/{tiny_causal_dir}")
    check_reachable(lm)  # nothing loaded, nothing raised
    assert lm.engine._loaded is None


# -- the store: calls recorded, repeats served from the cache -------------------------------------------------------


def test_store_records_local_calls_and_serves_repeats(tmp_path, tiny_causal_dir, dspy_state, monkeypatch):
    from store.callback import install, trace_context

    calls = []
    real_complete = TransformersEngine.complete

    def counting(self, request):
        calls.append(request)
        return real_complete(self, request)

    monkeypatch.setattr(TransformersEngine, "complete", counting)
    store = Store(tmp_path / "t.duckdb")
    install(store)
    lm = resolve_lm(f"local/{tiny_causal_dir}", max_tokens=8)  # cache on (the default)

    def ask() -> str:
        with dspy.context(lm=lm, adapter=LabeledAdapter()), trace_context(run_id="lm-test", stage="teach"):
            return dspy.Predict(Rewrite)(text="The bus was late again this morning.").paraphrase

    first = ask()
    assert len(calls) == 1
    second = ask()
    assert second == first
    assert len(calls) == 1  # the engine was not asked again
    store.flush()

    rows = store.query("SELECT model, messages, response, prompt_tokens, completion_tokens, latency_s, cache_hit, "
                       "cache_key, run_id, stage FROM lm_calls ORDER BY created_at")
    assert len(rows) == 2
    miss, hit = rows
    assert miss["model"] == f"local/{tiny_causal_dir}"
    assert (miss["run_id"], miss["stage"]) == ("lm-test", "teach")
    assert miss["cache_hit"] is False and hit["cache_hit"] is True
    assert miss["prompt_tokens"] > 0 and 0 < miss["completion_tokens"] <= 8
    assert miss["latency_s"] > 0 and hit["latency_s"] >= 0
    assert miss["cache_key"] == hit["cache_key"] is not None
    assert "The bus was late again" in miss["messages"]
    assert json.loads(hit["response"]) == json.loads(miss["response"])
    assert store.scalar("SELECT count(*) FROM lm_cache") == 1


# -- llama.cpp on the embedded 0.5B GGUF (slow) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_spec() -> str:
    from programs import models

    models.path("qwen2.5-coder-0.5b-instruct", quiet=True)  # pulled once; cached afterwards
    return EMBEDDED_GGUF


PROMPT = "Write one short sentence about cats."


@pytest.mark.slow
def test_llama_usage_max_tokens_and_logprobs(gguf_spec):
    lm = resolve_lm(gguf_spec, temperature=0.0, max_tokens=6, cache=False)
    assert isinstance(lm.engine, LlamaCppEngine)
    text = lm(PROMPT)[0]
    usage = _usage(lm)
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 6
    assert lm.history[-1]["response"].finish_reason == "length"
    assert text

    out = lm(PROMPT, logprobs=True, top_logprobs=3)[0]
    tokens = _logprob_tokens(out)
    assert 0 < len(tokens) <= 6
    for t in tokens:
        assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 3
        assert t["token"] == t["top_logprobs"][0]["token"]  # greedy: the chosen token is the best one
    assert out["text"] == text  # logprobs change the instance, not the answer


@pytest.mark.slow
def test_llama_logprobs_match_llama_cpp_python_own(gguf_spec):
    """Our numpy read of the kept logits gives llama-cpp-python's own numbers, without its full-vocabulary sorts."""
    from programs import models
    from programs.lm import _llama_logprobs, load_llama

    llama, _ = load_llama(models.path("qwen2.5-coder-0.5b-instruct", quiet=True), logits_all=True)
    msgs = [{"role": "user", "content": PROMPT}]
    llama.reset()
    theirs = llama.create_chat_completion(messages=msgs, temperature=0.0, max_tokens=8, logprobs=True,
                                          top_logprobs=5, seed=0)["choices"][0]["logprobs"]["content"]
    llama.reset()
    out = llama.create_chat_completion(messages=msgs, temperature=0.0, max_tokens=8, seed=0)
    ours = _llama_logprobs(llama, out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"], k=5, greedy=True)
    assert len(ours) == len(theirs) == 8  # max_tokens cut it: the last, never-evaluated token is included too
    for a, b in zip(ours, theirs):
        assert a.token == b["token"] and a.logprob == pytest.approx(b["logprob"], abs=1e-4)
        top = {t["token"]: t["logprob"] for t in b["top_logprobs"]}
        for alt in a.top:
            if alt.token in top:
                assert alt.logprob == pytest.approx(top[alt.token], abs=1e-4)


@pytest.mark.slow
def test_llama_temperature_zero_is_deterministic(gguf_spec):
    lm = resolve_lm(gguf_spec, temperature=0.0, max_tokens=10, cache=False)
    assert lm(PROMPT, seed=1)[0] == lm(PROMPT, seed=2)[0]


@pytest.mark.slow
def test_llama_seed_reproducible_and_n(gguf_spec):
    def sample(**kwargs) -> list[str]:
        lm = resolve_lm(gguf_spec, temperature=0.8, max_tokens=12, seed=11, cache=False)
        return lm("Tell me a one-line joke about Mondays.", **kwargs)

    first = sample(n=2)
    assert isinstance(first, list) and len(first) == 2
    assert sample(n=2) == first  # same seed, same samples
    assert first[0] != first[1]  # each candidate has its own seed


def test_a_distilled_student_warns_once_when_called_through_another_adapter(tiny_causal_dir, tmp_path):
    """A folder critic-distill trained (its train_result.json marker) learned one adapter's prompts (LabeledAdapter's
    when the marker names none): the other adapter reaching it gets one warning that says which to use."""
    import json
    import shutil

    for learned, marker in (("labeled", {}), ("chat", {"config": {"adapter": "chat"}})):
        folder = tmp_path / f"student-{learned}" / "final"
        shutil.copytree(tiny_causal_dir, folder)
        (folder.parent / "train_result.json").write_text(json.dumps(marker))
        _warns_once_for_the_other_adapter(folder, learned)


def _warns_once_for_the_other_adapter(folder, learned: str) -> None:
    import warnings

    import dspy

    from programs.adapter import LabeledAdapter
    from programs.lm import resolve_lm

    for adapter, used in ((LabeledAdapter(), "labeled"), (dspy.ChatAdapter(use_json_adapter_fallback=False), "chat")):
        warned = used != learned
        lm = resolve_lm(f"local/{folder}", temperature=0.0, max_tokens=4, cache=False)
        with warnings.catch_warnings(record=True) as caught, dspy.context(lm=lm, adapter=adapter):
            warnings.simplefilter("always")
            for _ in range(2):
                try:
                    dspy.Predict("question -> answer")(question="Why?")
                except Exception:  # noqa: BLE001 - a random tiny model's answer need not parse
                    pass
        mine = [w for w in caught if f"was trained on {learned} prompts" in str(w.message)]
        assert len(mine) == (1 if warned else 0), [str(w.message) for w in caught]
