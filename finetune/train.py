"""Train the student with one objective on a JSONL file: the CLI over `finetune.imitate`, `finetune.dpo` and
`finetune.brio`.

    python -m finetune.train --objective imitation --data pairs.jsonl  --base smollm2-135m-instruct --out runs/ft
    python -m finetune.train --objective dpo  --data prefs.jsonl  --base runs/ft/merged --out runs/dpo
    python -m finetune.train --objective brio --data ranked.jsonl --base runs/ft/merged --out runs/brio --db t.duckdb

One JSON object a line:
    imitation {"input": ..., "output": ..., "prompt"?: [chat messages]}
    dpo   {"input": ..., "prompt"?: [...], "chosen": ..., "rejected": ...}
    brio  {"input": ..., "prompt"?: [...], "candidates": [best, ..., worst], "reference"?: ...}
or TRL's conversational format, as `python -m store export` writes it: {"messages": [..., assistant]} for imitation,
{"prompt": [...], "chosen": [assistant], "rejected": [assistant]} for dpo.

Several processes (DDP; gloo on CPU), the same command under a launcher:
    torchrun --nproc-per-node 2 -m finetune.train ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m finetune.train ...   (CPU)
    accelerate launch --num_processes 2 -m finetune.train ...                                    (GPUs)
Every process trains; only the first writes the store rows, the final model and `train_result.json`.
(`accelerate launch --cpu --num_processes N` starts one process: accelerate runs several CPU processes only through
mpirun with `--mpirun_hostfile`.)

Prints the trained model's path on stdout; errors are one line on stderr: exit status 2 for a bad flag or data file,
1 when the store fails (the table is in `store.cli`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from store.cli import ArgumentParser, entry_point  # noqa: E402
from store.errors import UserError  # noqa: E402

TRAINERS = ("imitation", "dpo", "brio")  # `sft` is accepted for imitation, its earlier name


class UsageError(UserError):
    """A bad flag or data file (one line, exit 2)."""


def read_rows(path: str) -> list[dict]:
    """The JSON objects of a JSONL file (blank lines skipped)."""
    file = Path(path).expanduser()
    if not file.exists() or file.is_dir():
        raise UsageError(f"no data file at {path} (pass --data FILE.jsonl)")
    rows = []
    with file.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number} is not JSON ({exc.msg}): one JSON object a line") from exc
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{number} is not a JSON object: one object a line")
            rows.append(from_chat(row, f"{path}:{number}"))
    if not rows:
        raise UsageError(f"{path} holds no rows")
    return rows


def _last(messages: Any, role: str, where: str) -> str:
    if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
            and messages[-1].get("role") == role and isinstance(messages[-1].get("content"), str)):
        raise UsageError(f"{where}: expected chat messages ending in a {role} message")
    return messages[-1]["content"]


def from_chat(row: dict, where: str) -> dict:
    """A row in TRL's conversational format (what `python -m store export` writes: `messages`, or `prompt` /
    `chosen` / `rejected` as messages) as this CLI's columns, the prompt messages kept so training reads them."""
    row = dict(row)
    if "messages" in row:
        messages = row.pop("messages")
        row["output"] = _last(messages, "assistant", where)
        row["prompt"] = messages[:-1]
    for key in ("chosen", "rejected"):
        if isinstance(row.get(key), list):
            row[key] = _last(row[key], "assistant", where)
    if "input" not in row and isinstance(row.get("prompt"), list):
        row["input"] = _last(row["prompt"], "user", where)
    return row


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from programs.student_lm import DEFAULT_STUDENT

    parser = ArgumentParser(
        prog="python -m finetune.train", description=__doc__.split("\n\n")[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--objective", required=True, choices=TRAINERS + ("sft",))
    parser.add_argument("--data", required=True, help="JSONL file, one row a line (shapes below)")
    parser.add_argument("--base", default=DEFAULT_STUDENT,
                        help="student to start from: embedded name, model/adapter folder, GGUF file "
                             f"(default {DEFAULT_STUDENT})")
    parser.add_argument("--out", required=True, help="output folder (final model, train_result.json)")
    parser.add_argument("--full-finetune", action="store_true", help="train all weights instead of a LoRA adapter")
    parser.add_argument("--merge-lora", action="store_true", help="also write a merged full model to OUT/merged")
    parser.add_argument("--max-steps", type=_positive(int), default=None, help="optimizer steps (overrides --epochs)")
    parser.add_argument("--epochs", type=_positive(float), default=None)
    parser.add_argument("--batch-size", type=_positive(int), default=None, help="rows per device step")
    parser.add_argument("--grad-accum", type=_positive(int), default=None)
    parser.add_argument("--lr", type=_positive(float), default=None, help="learning rate (default: per objective)")
    parser.add_argument("--max-length", type=_positive(int), default=None, help="prompt + answer tokens")
    parser.add_argument("--beta", type=_positive(float), default=None, help="DPO's beta")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--objective-name", default=None,
                        help="the store's objective for a DPO run (default dpo; e.g. brio-dpo)")
    parser.add_argument("--db", default=None, help="record the run in this DuckDB store")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--dataset-id", default=None)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _config(args: argparse.Namespace):
    if args.objective in ("imitation", "sft"):
        from finetune.imitate import ImitationConfig as Config
    elif args.objective == "dpo":
        from finetune.dpo import DPOTrainConfig as Config
    else:
        from finetune.brio import BRIOTrainConfig as Config
    if args.beta is not None and args.objective != "dpo":
        raise UsageError("--beta applies to --objective dpo only")
    if args.objective_name is not None and args.objective != "dpo":
        raise UsageError("--objective-name applies to --objective dpo only")
    values = dict(base_model=args.base, output_dir=args.out, lora=not args.full_finetune, merge_lora=args.merge_lora)
    optional = dict(max_steps=args.max_steps, epochs=args.epochs, batch_size=args.batch_size,
                    grad_accum=args.grad_accum, learning_rate=args.lr, max_length=args.max_length, beta=args.beta,
                    seed=args.seed)
    values.update({k: v for k, v in optional.items() if v is not None})
    if args.merge_lora and args.full_finetune:
        raise UsageError("--merge-lora applies to LoRA runs: drop it or --full-finetune")
    return Config(**values)


def train(args: argparse.Namespace):
    """Run the objective that `args` names; returns its TrainResult."""
    from finetune.runner import is_main_process

    config = _config(args)
    rows = read_rows(args.data)
    store = None
    if args.db and is_main_process():
        from store.db import Store

        store = Store(args.db)
    common = dict(store=store, run_id=args.run_id, dataset_id=args.dataset_id, progress=not args.no_progress)
    if args.objective in ("imitation", "sft"):
        from finetune.imitate import train_imitation

        return train_imitation(rows, config, **common)
    if args.objective == "dpo":
        from finetune.dpo import train_dpo

        return train_dpo(rows, config, objective=args.objective_name or "dpo", **common)
    from finetune.brio import train_brio

    return train_brio(rows, config, **common)


def _end_process_group() -> None:
    """Leave the DDP process group, if the Trainer made one (torch warns at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _single_cpu_launch() -> bool:
    """`accelerate launch --cpu --num_processes N` (N > 1, no mpirun): accelerate's simple launcher sets MASTER_ADDR
    for the N processes asked for, then starts one, with no WORLD_SIZE."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes")
    launcher_vars = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return use_cpu and "MASTER_ADDR" in os.environ and not any(v in os.environ for v in launcher_vars)


@entry_point()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad flags: a one-line error, exit 2
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if _single_cpu_launch():
        print("warning: `accelerate launch --cpu` starts one process whatever --num_processes says (accelerate runs "
              "several CPU processes only through mpirun); for DDP on CPU run `ACCELERATE_USE_CPU=1 accelerate launch "
              "--multi_gpu --num_processes N -m finetune.train ...` or `torchrun --nproc-per-node N -m finetune.train "
              "...`", file=sys.stderr)
    try:
        result = train(args)
    finally:
        _end_process_group()
    print(f"finetune.train: rank {rank} of {world} done, {result.steps} steps", file=sys.stderr)
    if rank == 0:
        print(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
