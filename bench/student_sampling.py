"""What batching buys the feedback step: student candidates/s for k = 6, batched against one at a time.

    LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 python bench/student_sampling.py [--inputs 16] [--k 6]
        [--max-new-tokens 32] [--batch-size 8] [--student smollm2-135m-instruct]

Student: the embedded SmolLM2-135M-Instruct (`programs.student_lm.load_student`), float32 on CPU. Prompts: the chat
messages the pipeline sends it, `programs.student.training_prompt(HUMOR, text)`, on the first `--inputs` bundled
sentences (`programs/data/humor_inputs.jsonl`). Both sides sample with the same settings (nucleus, top_p 0.9,
temperature 1, top_k off, `--max-new-tokens`), through the same function:

batched:        `sample_candidates(..., k=6, batch_size=8)`: one `generate` per 8 inputs, num_return_sequences=6;
one-at-a-time:  one `generate` per candidate at batch 1 (`sample_candidates(..., [prompt], k=1, batch_size=1)`,
                a new seed per candidate): 6 calls per input.

Each side warms up once; then, batch by batch, the batched call and the same inputs one at a time run in turn
(so a busy machine slows both alike), each side's time summed. Prints both rates in candidates/s, the ratio
batched / one-at-a-time, and PASS when it is >= 3 (else BELOW TARGET). Exits 0 either way. A few minutes on a
quiet 2-core machine with the defaults. On a busy one, pass `--threads 1`: two OpenMP threads that keep losing
their core to other processes slow torch down by orders of magnitude (both sides alike, but the run may not end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from finetune.sample import sample_candidates  # noqa: E402
from programs.student_lm import DEFAULT_STUDENT, load_student  # noqa: E402
from programs.student import training_prompt  # noqa: E402
from programs.builtin_tasks import HUMOR  # noqa: E402

TARGET = 3.0
INPUTS = ROOT / "programs" / "data" / "humor_inputs.jsonl"


def sentences(n: int) -> list[str]:
    texts = [json.loads(line)["text"] for line in INPUTS.read_text().splitlines() if line.strip()]
    return [texts[i % len(texts)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default=DEFAULT_STUDENT, help="student spec (embedded name or model folder)")
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--k", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 is far steadier on a busy machine")
    parser.add_argument("--no-share-prompt", action="store_true",
                        help="batched side: prefill each prompt once per candidate row (generate's default)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer = load_student(args.student)
    print(f"student {args.student} loaded in {time.perf_counter() - t0:.1f}s; torch threads {torch.get_num_threads()}")
    texts = sentences(args.inputs + 1)
    prompts = [training_prompt(HUMOR, t) for t in texts]
    warm, prompts = prompts[-1], prompts[:-1]
    settings = dict(method="nucleus", top_p=0.9, temperature=1.0, max_new_tokens=args.max_new_tokens)
    print(f"{args.inputs} inputs, k {args.k}, nucleus top_p 0.9 temperature 1, max_new_tokens {args.max_new_tokens}, "
          f"batch size {args.batch_size}, prompt cache shared: {not args.no_share_prompt}")

    def one_at_a_time(chunk: list, offset: int) -> list[list[str]]:
        return [[sample_candidates(model, tokenizer, [prompt], k=1, batch_size=1, seed=(offset + i) * args.k + c,
                                   **settings)[0][0] for c in range(args.k)] for i, prompt in enumerate(chunk)]

    def batched(chunk: list, offset: int) -> list[list[str]]:
        return sample_candidates(model, tokenizer, chunk, k=args.k, batch_size=args.batch_size, seed=offset,
                                 share_prompt=not args.no_share_prompt, **settings)

    # warm-up: first-call costs (kernels, allocator, tokenizer caches) on each side
    one_at_a_time([warm], 10_000)
    batched([warm] * 2, 10_000)

    # Interleaved by batch (batched, then the same inputs one at a time), so that a busy machine slows both alike.
    seconds = {"one-at-a-time": 0.0, "batched": 0.0}
    outputs: dict[str, list[list[str]]] = {"one-at-a-time": [], "batched": []}
    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        for name, run in (("batched", batched), ("one-at-a-time", one_at_a_time)):
            t0 = time.perf_counter()
            outputs[name] += run(chunk, start)
            seconds[name] += time.perf_counter() - t0
        print(f"  inputs {start + 1}-{start + len(chunk)}: batched {seconds['batched']:.1f}s, "
              f"one-at-a-time {seconds['one-at-a-time']:.1f}s so far", flush=True)

    rates = {}
    for name in ("one-at-a-time", "batched"):
        out = outputs[name]
        n = sum(len(c) for c in out)
        distinct = sum(len(set(c)) for c in out) / max(len(out), 1)
        rates[name] = n / seconds[name]
        print(f"{name:>14}: {n} candidates in {seconds[name]:6.1f}s = {rates[name]:6.2f} candidates/s "
              f"({distinct:.1f} distinct per input), e.g. {out[0][0]!r}")

    ratio = rates["batched"] / rates["one-at-a-time"]
    verdict = "PASS" if ratio >= TARGET else "BELOW TARGET"
    print(f"batched / one-at-a-time = {ratio:.2f}x (target >= {TARGET:.0f}x): {verdict}")


if __name__ == "__main__":
    main()
