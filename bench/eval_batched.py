"""What batching buys evaluation: the student's outputs for the test inputs/s, batched against one at a time.

    LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 python bench/eval_batched.py [--inputs 24]
        [--max-new-tokens 64] [--batch-size 8] [--student smollm2-135m-instruct] [--threads 0]

Student: the embedded SmolLM2-135M-Instruct as the pipeline evaluates it, a DSPy LM (`local/<student>`, greedy,
`--max-new-tokens`, the default profile's `student_max_tokens`) behind `programs.student.Student(HUMOR)`, on the
first `--inputs` bundled sentences (`programs/data/humor_inputs.jsonl`), every call recorded in a temporary store.
Both sides go through `finetune.evaluate.student_outputs`, the evaluation's own function; DSPy's cache is off so
that neither side answers from the other's calls:

batched:        the engine gathers the concurrent calls of `student_outputs` (its default: as many threads as the
                engine batches) into one `generate` of up to `--batch-size` prompts
                (`programs.student_lm.generate_ids`);
one-at-a-time:  the engine with batch size 1 and one thread: one `generate` per input, as evaluation ran before.

Each side warms up once; then, batch by batch, the batched side and the same inputs one at a time run in turn (so a
busy machine slows both alike), each side's time summed. Prints both rates in outputs/s, how many outputs are the
same on both sides (greedy: they should all be), the ratio batched / one-at-a-time and PASS when it is >= 2 (else
BELOW TARGET). Exits 0 either way. A few minutes on a quiet 2-core machine; on a busy one pass `--threads 1`.
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402
import torch  # noqa: E402

from finetune.evaluate import student_outputs  # noqa: E402
from programs.adapter import LabeledAdapter  # noqa: E402
from programs.lm import resolve_lm  # noqa: E402
from programs.student import Student  # noqa: E402
from programs.student_lm import DEFAULT_STUDENT  # noqa: E402
from programs.builtin_tasks import HUMOR  # noqa: E402
from store import Store, stable_id  # noqa: E402
from store.callback import install  # noqa: E402
from store.cli import quiet_libraries  # noqa: E402

TARGET = 2.0
INPUTS = ROOT / "programs" / "data" / "humor_inputs.jsonl"


def items(n: int) -> list[dict]:
    texts = [json.loads(line)["text"] for line in INPUTS.read_text().splitlines() if line.strip()][:n]
    return [{"input_id": stable_id("input", HUMOR.name, t), "text": t} for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default=DEFAULT_STUDENT, help="student spec (embedded name or model folder)")
    parser.add_argument("--inputs", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 is far steadier on a busy machine")
    args = parser.parse_args()

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    store = Store(Path(tempfile.mkdtemp(prefix="eval-batched-")) / "bench.duckdb")
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    student = Student(HUMOR)
    lms = {}
    for name, batch_size in (("batched", args.batch_size), ("one-at-a-time", 1)):
        lms[name] = resolve_lm(f"local/{args.student}", temperature=0.0, max_tokens=args.max_new_tokens, cache=False)
        lms[name].engine.batch_size = batch_size
    threads = {"batched": None, "one-at-a-time": 1}  # None: student_outputs' default, the engine's batch size
    chosen = items(args.inputs + 1)
    warm, chosen = chosen[-1:], chosen[:-1]
    print(f"student {args.student}, {len(chosen)} inputs, greedy, max_new_tokens {args.max_new_tokens}, "
          f"batch size {args.batch_size}, torch threads {torch.get_num_threads()}", flush=True)

    # warm-up: loading the model and first-call costs, on each side
    for name, lm in lms.items():
        student_outputs(store, student, lm, warm, producer=f"warm-{name}", run_id="bench", threads=threads[name])

    # Interleaved by batch (batched, then the same inputs one at a time), so that a busy machine slows both alike.
    seconds = {name: 0.0 for name in lms}
    outputs: dict[str, dict] = {name: {} for name in lms}
    for start in range(0, len(chosen), args.batch_size):
        chunk = chosen[start : start + args.batch_size]
        for name, lm in lms.items():
            t0 = time.perf_counter()
            outputs[name].update(student_outputs(store, student, lm, chunk, producer=name, run_id="bench",
                                                 threads=threads[name]))
            seconds[name] += time.perf_counter() - t0
        print(f"  inputs {start + 1}-{start + len(chunk)}: batched {seconds['batched']:.1f}s, "
              f"one-at-a-time {seconds['one-at-a-time']:.1f}s so far", flush=True)

    rates = {}
    for name in ("one-at-a-time", "batched"):
        n = len(outputs[name])
        rates[name] = n / seconds[name]
        print(f"{name:>14}: {n} outputs in {seconds[name]:6.1f}s = {rates[name]:5.2f} outputs/s "
              f"({seconds[name] / max(n, 1):.2f}s each)")
    same = sum(outputs["batched"].get(k, {}).get("text") == v["text"] for k, v in outputs["one-at-a-time"].items())
    print(f"same output on both sides: {same}/{len(outputs['one-at-a-time'])}")
    ratio = rates["batched"] / rates["one-at-a-time"]
    verdict = "PASS" if ratio >= TARGET else "BELOW TARGET"
    print(f"batched / one-at-a-time = {ratio:.2f}x (target >= {TARGET:.0f}x): {verdict}")


if __name__ == "__main__":
    main()
