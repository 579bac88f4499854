"""What the training layer costs: SFT and DPO tokens/s and peak memory through `finetune` against TRL used directly.

    python bench/train_throughput.py [--model tiny|smollm2-135m-instruct|PATH] [--steps 16] [--rounds 3]
                                     [--batch-size 4] [--threads N]

ours: `finetune.imitate.train_imitation` (SFT) and `finetune.dpo.train_dpo` (DPO), no store, no progress bar.
trl:  `trl.SFTTrainer` / `trl.DPOTrainer` built by hand on the same model folder, the same conversational data, the
      same LoRA settings (r 16, alpha 32, dropout 0.05, all-linear) and the same CPU settings (float32, no activation
      checkpointing, use_cpu), the same batch size, learning rate, max_length, seed and save/log cadence, the trained
      model saved with `trainer.save_model`.

Each run is its own child process, so runs don't share caches or memory.
- tokens/s: the tokens the trainer counted (its `num_tokens` log) over the seconds from loading the model to the saved
  model, imports done before the clock starts; also per CPU-second of that section, a cross-check that a busy
  machine swings less.
- peak memory: the child's `ru_maxrss` (`os.wait4`), imports included, with glibc's mmap threshold pinned
  (MALLOC_MMAP_THRESHOLD_): left adaptive, it makes the peak land on one of two levels by chance.
- Runs alternate (trl, ours, ours, trl, ...) so that a noisy machine slows both alike; each round's back-to-back pair
  gives a ratio, and the median over rounds is reported.
- Both sides use the same torch thread count: 1 for the tiny model (it gains nothing from more, and on a busy
  machine OpenMP's waits between threads swamp it), torch's default otherwise.

Prints the speed ratio ours / trl (target >= 1.0) and the memory ratio ours / trl (target <= 1.0) per objective, each
with PASS or BELOW TARGET, and exits 0 either way. The tiny model is a config-built 2-layer Llama (hidden 64): under
2 minutes on a 2-core machine; SmolLM2-135M takes several minutes even with `--steps 2 --rounds 1`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INPUTS = ROOT / "programs" / "data" / "humor_inputs.jsonl"
INSTRUCTION = "Rewrite the sentence as a humorous paraphrase with the same meaning."
KINDS = ("trl-sft", "ours-sft", "trl-dpo", "ours-dpo")
LEARNING_RATE = {"sft": 2e-4, "dpo": 5e-5}  # the finetune defaults with LoRA
# glibc raises its mmap threshold as large blocks are freed, so a run's peak RSS lands on one of two levels by chance
# (SmolLM2 DPO: 2.7 or 3.5 GB, same code, same data). Pinned at glibc's initial value, it no longer drifts.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}


# -- setup (parent) --------------------------------------------------------------------------------------------------


def rows(n: int = 32) -> list[dict]:
    texts = [json.loads(line)["text"] for line in INPUTS.read_text().splitlines() if line.strip()][:n]
    return [{"input": t, "output": f"Oops! {t.rstrip('.')}, classic Monday.",
             "chosen": f"Oops! {t.rstrip('.')}, classic Monday.", "rejected": f"It is true that {t[0].lower()}{t[1:]}"}
            for t in texts]


def tiny_model(folder: Path) -> Path:
    """A config-built 2-layer Llama (hidden 64) with a byte-level BPE tokenizer trained on the bundled sentences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [json.loads(line)["text"] for line in INPUTS.read_text().splitlines() if line.strip()] + [INSTRUCTION]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    tokenizer.chat_template = (
        "{% for message in messages %}{{ bos_token }}{{ message['role'] }}\n{{ message['content'] }}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}{{ bos_token }}assistant\n{% endif %}"
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def model_folder(spec: str, tmp: Path) -> Path:
    if spec == "tiny":
        return tiny_model(tmp / "tiny")
    from programs.student_lm import _resolve

    folder = Path(_resolve(spec))
    if not folder.is_dir():
        raise SystemExit(f"--model must be 'tiny', an embedded model name or a model folder: {spec}")
    return folder


def run_child(kind: str, args: argparse.Namespace, folder: Path, data: Path, tmp: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{kind}-"))
    cmd = [sys.executable, __file__, "--child", kind, "--model-dir", str(folder), "--data", str(data),
           "--out", str(out / "run"), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]
    with open(out / "stdout.txt", "w+") as stdout, open(out / "stderr.txt", "w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, cwd=ROOT, env=CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (not all children's, as RUSAGE_CHILDREN)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{stderr.read()[-3000:]}")
        result = json.loads(stdout.read().strip().splitlines()[-1])
    result["maxrss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result


# -- one run (child) -------------------------------------------------------------------------------------------------


def _num_tokens(log_history: list[dict]) -> int:
    return int(max(row["num_tokens"] for row in log_history if "num_tokens" in row))


def _cpu_settings(out: Path, objective: str, steps: int, batch_size: int) -> dict:
    """What finetune passes to TRL's configs on CPU, written out."""
    from transformers import TrainingArguments

    checkpointing = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                     else "gradient_checkpointing")
    return dict(output_dir=str(out), max_steps=steps, learning_rate=LEARNING_RATE[objective],
                per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, seed=0,
                logging_strategy="steps", logging_steps=1, logging_first_step=True, save_strategy="steps",
                save_steps=10**6, save_total_limit=1, bf16=False, fp16=False, **{checkpointing: False}, use_cpu=True,
                report_to=[], dataloader_num_workers=0, disable_tqdm=True, max_length=128, dataset_num_proc=None)


def _trl(kind: str, folder: Path, data: list[dict], out: Path, steps: int,
         batch_size: int) -> tuple[int, float, float]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0, c0 = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    prompt = lambda r: [{"role": "user", "content": f"{INSTRUCTION}\n\n{r['input']}"}]  # noqa: E731
    if kind == "trl-sft":
        from trl import SFTConfig, SFTTrainer

        dataset = Dataset.from_list([{"prompt": prompt(r),
                                      "completion": [{"role": "assistant", "content": r["output"]}]} for r in data])
        args = SFTConfig(**_cpu_settings(out, "sft", steps, batch_size), completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)
    else:
        from trl import DPOConfig, DPOTrainer

        dataset = Dataset.from_list([{"prompt": prompt(r), "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                      "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in data])
        args = DPOConfig(**_cpu_settings(out, "dpo", steps, batch_size), beta=0.1)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=lora)
    trainer.train()
    trainer.save_model(str(out / "final"))
    return _num_tokens(trainer.state.log_history), time.perf_counter() - t0, time.process_time() - c0


def _ours(kind: str, folder: Path, data: list[dict], out: Path, steps: int,
          batch_size: int) -> tuple[int, float, float]:
    common = dict(base_model=str(folder), output_dir=str(out), max_steps=steps, batch_size=batch_size,
                  logging_steps=1, save_steps=10**6, max_length=128, instruction=INSTRUCTION)
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "ours-sft":
        from finetune.imitate import ImitationConfig, train_imitation

        result = train_imitation(data, ImitationConfig(**common), progress=False)
    else:
        from finetune.dpo import DPOTrainConfig, train_dpo

        result = train_dpo(data, DPOTrainConfig(**common), progress=False)
    return _num_tokens(result.log_history), time.perf_counter() - t0, time.process_time() - c0


def child(args: argparse.Namespace) -> None:
    import datasets
    import peft  # noqa: F401
    import torch
    import transformers
    import trl  # noqa: F401

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # Everything either side imports, before the clock starts (ours also pulls in what `load_student` imports).
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer  # noqa: F401

    if args.child.startswith("ours"):
        import finetune.dpo  # noqa: F401
        import finetune.imitate  # noqa: F401
        import programs.models  # noqa: F401
        import store.ids  # noqa: F401
    data = json.loads(Path(args.data).read_text())
    run = _ours if args.child.startswith("ours") else _trl
    tokens, seconds, cpu = run(args.child, Path(args.model_dir), data, Path(args.out), args.steps, args.batch_size)
    print(json.dumps({"kind": args.child, "tokens": tokens, "seconds": seconds, "cpu_seconds": cpu}))


# -- report ----------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (config-built), an embedded model name or a folder")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: 1 for tiny, else torch's)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.threads is None:
        args.threads = 1 if args.model == "tiny" else 0

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as name:
        tmp = Path(name)
        folder = model_folder(args.model, tmp)
        data = tmp / "data.json"
        data.write_text(json.dumps(rows()))
        print(f"model {args.model} ({folder}), {args.steps} steps x batch {args.batch_size}, {args.rounds} round(s), "
              f"{args.threads or 'default'} thread(s)")
        runs: dict[str, list[dict]] = {k: [] for k in KINDS}
        for round_ in range(args.rounds):
            for objective in ("sft", "dpo"):
                order = [f"trl-{objective}", f"ours-{objective}"]
                for kind in order if round_ % 2 == 0 else order[::-1]:
                    result = run_child(kind, args, folder, data, tmp)
                    result["tokens_per_s"] = result["tokens"] / result["seconds"]
                    result["tokens_per_cpu_s"] = result["tokens"] / result["cpu_seconds"]
                    runs[kind].append(result)
                    print(f"  {kind:9s} {result['tokens']:6d} tokens in {result['seconds']:6.2f} s = "
                          f"{result['tokens_per_s']:8.1f} tokens/s ({result['tokens_per_cpu_s']:8.1f} per CPU-s), "
                          f"peak RSS {result['maxrss_mb']:7.1f} MB")

    print()
    for objective in ("sft", "dpo"):
        ours, trl = runs[f"ours-{objective}"], runs[f"trl-{objective}"]
        # Each round's two runs ran back to back: compare within the round, then take the median over rounds.
        speed = statistics.median(o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(ours, trl))
        cpu = statistics.median(o["tokens_per_cpu_s"] / t["tokens_per_cpu_s"] for o, t in zip(ours, trl))
        memory = statistics.median(o["maxrss_mb"] / t["maxrss_mb"] for o, t in zip(ours, trl))
        print(f"{objective.upper():4s} speed ours/trl {speed:5.3f} (target >= 1.0): "
              f"{'PASS' if speed >= 1.0 else 'BELOW TARGET'}   [per CPU-second: {cpu:5.3f}]")
        print(f"{objective.upper():4s} peak memory ours/trl {memory:5.3f} (target <= 1.0): "
              f"{'PASS' if memory <= 1.0 else 'BELOW TARGET'}")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
