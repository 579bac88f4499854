"""What the LM layer costs: generation tokens/s through it, against raw llama-cpp-python on the same GGUF.

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/lm_throughput.py [--model NAME|PATH] [--prompts 6] [--max-tokens 48]

layer: `resolve_lm("local/<gguf>", temperature=0, cache=False)` + `dspy.Predict` with `LabeledAdapter`, with the
       store callback installed on a temporary DuckDB file (every call recorded, as in the pipeline).
raw:   `llama_cpp.Llama.create_chat_completion` on its own instance of the same file with the same settings
       (n_ctx, n_threads, n_batch) as `programs.lm.load_llama`, on the same chat messages the adapter writes,
       with the same sampling settings as the engine (temperature 0, same max_tokens).

Completion tokens are taken from the usage each side reports. Both sides warm up once, then run interleaved
(raw, layer, raw, layer, ...) so that a noisy machine slows both alike. Prints both rates, the ratio layer / raw,
and PASS when it is >= 0.9 (else BELOW TARGET). Exits 0 either way. About 20 s on a quiet 2-core machine with the 0.5B model (minutes when it is busy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

from programs import models  # noqa: E402
from programs.adapter import LabeledAdapter  # noqa: E402
from programs.lm import LlamaCppEngine, load_llama, resolve_lm  # noqa: E402
from store.callback import install  # noqa: E402
from store.db import Store  # noqa: E402

TARGET = 0.9
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
INPUTS = ROOT / "programs" / "data" / "humor_inputs.jsonl"


class Rewrite(dspy.Signature):
    """Rewrite the sentence as a humorous paraphrase with the same meaning."""

    text: str = dspy.InputField(desc="the literal sentence")
    paraphrase: str = dspy.OutputField(desc="a funny paraphrase")


def gguf_path(model: str) -> Path:
    if models.is_embedded(model):
        return models.path(model)
    path = Path(model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise SystemExit(f"--model must be an embedded model name or a .gguf file: {model}")
    return path


def sentences(n: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in INPUTS.read_text().splitlines() if line.strip()]
    return [texts[i % len(texts)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embedded model name or path to a .gguf file")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    path = gguf_path(args.model)
    lm = resolve_lm(f"local/{args.model if models.is_embedded(args.model) else path}", temperature=0.0,
                    max_tokens=args.max_tokens, cache=False)
    engine = lm.engine
    assert isinstance(engine, LlamaCppEngine), type(engine)

    # The layer's instance (what the engine will use) and the baseline's own one, with equal settings.
    from llama_cpp import Llama

    load_llama(engine.model_path, n_ctx=engine.n_ctx, logits_all=False, n_threads=engine.n_threads)
    raw_llama = Llama(model_path=engine.model_path, n_ctx=engine.n_ctx, logits_all=False, n_threads=engine.n_threads,
                      n_batch=512, verbose=False, seed=0)
    raw_kwargs = dict(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, max_tokens=args.max_tokens, seed=0,
                      repeat_penalty=1.0)  # what LlamaCppEngine sends for temperature 0

    workdir = Path(tempfile.mkdtemp(prefix="lm-throughput-"))
    store = Store(workdir / "bench.duckdb")
    callback = install(store)
    adapter = LabeledAdapter()
    predict = dspy.Predict(Rewrite)

    # Time spent inside the engine, to tell the layer's own overhead (DSPy, adapter, callback, store) from noise.
    in_engine = [0.0]
    complete = engine.complete

    def timed_complete(request):
        t0 = time.perf_counter()
        try:
            return complete(request)
        finally:
            in_engine[0] += time.perf_counter() - t0

    engine.complete = timed_complete

    def messages_for(text: str) -> list[dict]:
        return adapter.format(Rewrite, demos=[], inputs={"text": text})

    def run_raw(text: str) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        out = raw_llama.create_chat_completion(messages=messages_for(text), **raw_kwargs)
        seconds = time.perf_counter() - t0
        return seconds, out["usage"]["completion_tokens"], out["choices"][0]["message"]["content"] or ""

    def run_layer(text: str) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        with dspy.context(lm=lm, adapter=adapter):
            predict(text=text)
        seconds = time.perf_counter() - t0
        entry = lm.history[-1]
        if entry["messages"] != messages_for(text):
            raise SystemExit("the layer sent other messages than the baseline: the comparison would be unfair")
        return seconds, entry["usage"]["completion_tokens"], entry["outputs"][0]

    texts = sentences(args.prompts + 1)
    print(f"model {path.name}, {args.prompts} prompts, max_tokens {args.max_tokens}, temperature 0, "
          f"n_ctx {engine.n_ctx}, n_threads {engine.n_threads or 'llama.cpp default'}")
    run_raw(texts[-1])  # warm-up: first-call costs on each side (graph, buffers, DSPy/adapter/store first use)
    run_layer(texts[-1])
    store.flush()  # the store's first write has one-time costs too (DuckDB's Arrow scan imports pandas)

    totals = {"raw": [0.0, 0], "layer": [0.0, 0]}
    same = 0
    in_engine[0] = 0.0
    for i, text in enumerate(texts[:-1]):
        raw_s, raw_tok, raw_text = run_raw(text)
        layer_s, layer_tok, layer_text = run_layer(text)
        totals["raw"][0] += raw_s
        totals["raw"][1] += raw_tok
        totals["layer"][0] += layer_s
        totals["layer"][1] += layer_tok
        same += raw_text.strip() == layer_text.strip()
        print(f"  prompt {i + 1}: raw {raw_tok:3d} tok {raw_s:6.2f} s ({raw_tok / raw_s:5.1f} tok/s) | "
              f"layer {layer_tok:3d} tok {layer_s:6.2f} s ({layer_tok / layer_s:5.1f} tok/s)")

    t0 = time.perf_counter()
    store.flush()  # what the store still owes is part of the layer's cost
    totals["layer"][0] += time.perf_counter() - t0
    recorded = store.scalar("SELECT count(*) FROM lm_calls")

    raw_rate = totals["raw"][1] / totals["raw"][0]
    layer_rate = totals["layer"][1] / totals["layer"][0]
    ratio = layer_rate / raw_rate
    print(f"raw llama-cpp-python: {totals['raw'][1]} tokens in {totals['raw'][0]:.2f} s = {raw_rate:.2f} tok/s")
    print(f"through the layer:    {totals['layer'][1]} tokens in {totals['layer'][0]:.2f} s = {layer_rate:.2f} tok/s "
          f"(callback {callback.seconds * 1000:.1f} ms, {recorded} lm_calls rows recorded)")
    overhead = totals["layer"][0] - in_engine[0]
    print(f"layer time outside llama.cpp (DSPy, adapter, callback, store): {overhead:.3f} s in all, "
          f"{overhead / args.prompts * 1000:.1f} ms per call ({overhead / totals['layer'][0]:.1%} of the layer's time)")
    print(f"identical answers: {same}/{args.prompts}")
    print(f"ratio layer/raw: {ratio:.3f} (target >= {TARGET}) {'PASS' if ratio >= TARGET else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
    sys.exit(0)
