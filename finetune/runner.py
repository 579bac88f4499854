"""The training driver every objective shares (`finetune.imitate`, `finetune.dpo`, `finetune.brio`): an objective
brings its data and its Trainer; the driver runs the stage around it, in order:

1. return the recorded result if `output_dir/train_result.json` exists (the run finished before; a run of other
   settings or data there is refused, never returned as this one);
2. record the run in the store (`training_runs`, status running);
3. load the student (an adapter given as base is merged first) and let the objective build its Trainer;
4. train, resuming from the last Trainer checkpoint in `output_dir` if a previous attempt crashed;
5. save the final model (`output_dir/final`; LoRA: adapter + tokenizer), then the `train_result.json` marker, last
   and atomically; the Trainer checkpoints, kept only for crash recovery (they carry the optimizer state), are
   removed after it;
6. record the result (`training_runs` finished with the log history and a summary, one `checkpoints` row);
7. with `merge_lora`, merge the adapter into its base as a full model in `output_dir/merged` (`merge_adapter`: a
   step after training, so a finished run asked for a merged model is merged, never trained again);
8. write the model card, `README.md`, into `final` and `merged` (`finetune.model_card`; rewritten after evaluation).

A run's training id, and so its output folder, is a hash of its config's identity (`config_identity`): the settings
below are declared once in `TrainConfig`, which every stage's config extends. Under `accelerate launch`/torchrun
every process trains; only the first one (global rank 0) writes the store rows, the final model and the marker.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import datasets
import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from finetune.model_card import MARKER, write_card
from store.ids import stable_id  # not store.db: a run without a store never loads DuckDB
from store.ids import to_json
from programs.legacy_ids import TRAIN_FIELDS_ADDED
from programs.progress import StageProgress, stage_progress
from programs.student_lm import DEFAULT_STUDENT, is_seq2seq, load_student, user_message
from store.errors import UserError

if TYPE_CHECKING:
    from store.db import Store

DEFAULT_INSTRUCTION = "Rewrite the sentence as a humorous paraphrase with the same meaning."


class TrainingError(UserError):
    """A user-facing problem with a training run of any stage (one line, no traceback)."""


class StaleRunError(TrainingError):
    """An output folder holds a finished run of other settings or data."""


# -- the settings every stage shares ---------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """What every training stage is set by, as TRL's configs extend `TrainingArguments`: a stage's config adds its
    own fields and overrides the defaults that differ. `asdict` of it is the run's config row in the store; its
    identity (`config_identity`) names the run and its output folder, so a field's name and default are part of
    every recorded run's id."""

    base_model: str = DEFAULT_STUDENT  # embedded name, model folder, GGUF file or hub id (see programs.student_lm)
    output_dir: str = "runs/train"
    lora: bool = True  # train a LoRA adapter (peft); False: full fine-tuning
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"  # peft's "all-linear", or comma-separated module names (never lm_head)
    merge_lora: bool = False  # also write a merged full model to output_dir/merged
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float | None = None  # None: the stage's lora_learning_rate, or full_learning_rate without LoRA
    batch_size: int = 8  # examples per device step
    grad_accum: int = 1
    max_length: int = 128  # tokens per sequence (causal: prompt + answer)
    seed: int = 0
    logging_steps: int = 5
    save_steps: int = 50  # Trainer checkpoints, kept for crash recovery until the run finishes
    instruction: str = DEFAULT_INSTRUCTION  # the student's prompt for rows that bring no prompt messages
    lr_scheduler_type: str = "linear"  # transformers' SchedulerType: linear, cosine, constant, constant_with_warmup...
    warmup_ratio: float = 0.0  # share of the steps spent warming the learning rate up from 0
    # what else shapes the rows' prompts and answers besides `instruction` (`Task.prompt_format`: a task's named
    # fields and their descriptions), so that a changed field trains anew; None for the built-in tasks' fields
    prompt_format: str | None = None
    # the DSPy adapter whose messages the rows' prompts and answers are (`Task.student_adapter`): recorded in
    # train_result.json, so the student's engine can tell a caller that uses another one
    adapter: str = "labeled"

    # Not fields (not in the run's identity): a stage's default learning rates.
    lora_learning_rate: ClassVar[float] = 2e-4
    full_learning_rate: ClassVar[float] = 5e-5

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return self.lora_learning_rate if self.lora else self.full_learning_rate


@dataclass
class TrainResult:
    training_id: str
    checkpoint_id: str
    path: str  # the model to use: output_dir/final, or output_dir/merged with merge_lora
    log_history: list[dict]
    steps: int
    seconds: float


# -- identity --------------------------------------------------------------------------------------------------------

# Fields that change where or how often a run writes, not the weights it trains.
NOT_WEIGHTS = frozenset({"output_dir", "merge_lora", "logging_steps", "save_steps"})


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def config_identity(config: TrainConfig) -> dict[str, Any]:
    """A stage config as its training id sees it: everything but output_dir, newer fields only when set."""
    values = asdict(config)
    values.pop("output_dir")
    for f in fields(config):
        if f.name in TRAIN_FIELDS_ADDED and values[f.name] == _default(f):
            values.pop(f.name)
    return values


def changed_settings(config: TrainConfig, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings that shape the weights and are not at their defaults (the base model, the instruction and the
    `skip`ped ones aside): what an output folder's name must add to its start and data to be that run's alone."""
    left_out = NOT_WEIGHTS | {"base_model", "instruction", *skip}
    return {f.name: getattr(config, f.name) for f in fields(config)
            if f.name not in left_out and getattr(config, f.name) != _default(f)}


def training_id(kind: str, config: TrainConfig, dataset_key: str | None) -> str:
    """Stable across reruns and output folders: the kind of run, the config's identity, and the dataset."""
    return stable_id(kind, config_identity(config), dataset_key)


def dataset_key(rows: list[dict], dataset_id: str | None, keys: Sequence[str]) -> str:
    """The dataset in a training id: its store id, or else the `keys` of its rows (what the objective trains on)."""
    if dataset_id is not None:
        return dataset_id
    return stable_id([[row.get(k) for k in keys] for row in rows])


# -- what objectives share -------------------------------------------------------------------------------------------


def prompt_messages(row: dict, instruction: str) -> list[dict]:
    """A row's own prompt messages (the DSPy adapter's, so the student is trained on exactly what it will be asked at
    inference), or instruction + input as one user turn."""
    return row.get("prompt") or [{"role": "user", "content": user_message(instruction, row["input"])}]


def require_causal(model: Any, objective: str, error: type[TrainingError]) -> None:
    if is_seq2seq(model):
        raise error(f"{objective} needs a causal student (a decoder-only model), not a seq2seq one like BART or T5")


# transformers 5.2x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns); TRL's configs
# still default the old one to True, so turn off whichever this version reads.
_CHECKPOINTING = (
    "activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def device_args(config: TrainConfig, output_dir: Path) -> dict:
    """TrainingArguments shared by every trainer. On CPU: float32, no gradient checkpointing (TRL's defaults,
    bf16 + checkpointing, cost ~17x per step there)."""
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.lr(),
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio or 0,  # transformers 5: a float in [0, 1) is a ratio
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        seed=config.seed,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        bf16=bool(cuda and torch.cuda.is_bf16_supported()),
        fp16=False,
        **{_CHECKPOINTING: False},
        use_cpu=not cuda,
        # Under DDP: an adapter's weights all take part in every forward, so skip DDP's search for unused ones (an
        # extra pass over the graph each step, and a warning); Trainer turns it on for every PEFT model.
        ddp_find_unused_parameters=False if config.lora else None,
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def lora_config(config: TrainConfig, task_type: str):
    """peft's LoraConfig from the stage's settings."""
    from peft import LoraConfig

    targets = config.target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type=task_type,
    )


def with_adapter(model: Any, config: TrainConfig, task_type: str) -> Any:
    """`model` with a new LoRA adapter, for Trainers that take no `peft_config`; seeded, so that a rerun starts from
    the same adapter weights."""
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    return get_peft_model(model, lora_config(config, task_type))


# -- progress --------------------------------------------------------------------------------------------------------


class RichProgress(TrainerCallback):
    """The optimizer steps as a stage's progress (`programs.progress`): a bar in a terminal, a line a minute
    elsewhere, with the latest loss."""

    def __init__(self, description: str = "train"):
        self.description = description
        self.progress: StageProgress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = stage_progress(self.description, total=state.max_steps, done=state.global_step,
                                       unit="steps").start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(note=f"loss {logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.close(state.global_step)

    def close(self, step: int | None = None, *, ok: bool = True) -> None:
        """End the bar (and its lines): at the end of training, or when training fails."""
        if self.progress is not None:
            self.progress.update(completed=step)
            self.progress.stop(ok=ok)
            self.progress = None


# -- saving ----------------------------------------------------------------------------------------------------------


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _save_final(trainer, tokenizer, config: TrainConfig, output_dir: Path) -> None:
    """Write output_dir/final, staged in a temp folder and renamed into place (merging is a later step,
    `merge_adapter`)."""
    from peft import PeftModel

    model = trainer.model
    # Trainer sets `config.use_cache = args.use_cache` (False) on the model; saved that way, generation would run
    # without a KV cache. Restore it for the saved model.
    (model.get_base_model() if isinstance(model, PeftModel) else model).config.use_cache = True
    final = output_dir / "final"
    tmp = output_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if isinstance(model, PeftModel):
        # Name the base by its spec (e.g. the embedded model's name), so load_student finds it on any machine.
        adapter_config = tmp / "adapter_config.json"
        data = json.loads(adapter_config.read_text())
        base = config.base_model
        if Path(base).expanduser().exists():
            base = str(Path(base).expanduser().resolve())
        data["base_model_name_or_path"] = base
        adapter_config.write_text(json.dumps(data, indent=2))
    _replace_dir(tmp, final)


def _write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    os.replace(tmp, path)


def _remove_checkpoints(output_dir: Path) -> None:
    """Trainer checkpoints only serve crash recovery (they hold optimizer state, 3x the model): gone once the run is
    recorded."""
    for ckpt in output_dir.glob("checkpoint-*"):
        if ckpt.is_dir():
            shutil.rmtree(ckpt, ignore_errors=True)


# -- store rows ------------------------------------------------------------------------------------------------------


def is_main_process() -> bool:
    """True in a plain run and on the first process (global rank 0) of `accelerate launch`/torchrun/mpirun: the one
    that writes store rows, the final model and the marker. Read from the launcher's environment, as accelerate does,
    so it can be asked before any Trainer (and its process group) exists."""
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(name, "").strip():
            return int(os.environ[name]) == 0
    return True


def _run_row(training_id: str, objective: str, config: TrainConfig, run_id, dataset_id, status: str, started_at,
             finished_at=None, metrics=None) -> dict:
    return {
        "training_id": training_id, "run_id": run_id, "objective": objective, "base_model": config.base_model,
        "dataset_id": dataset_id, "config": to_json(asdict(config)), "status": status, "metrics": metrics,
        "started_at": started_at, "finished_at": finished_at,
    }


SUMMARY_KEYS = {  # TRL's DPO metrics (the last logged value of each) under shorter names
    "rewards/accuracies": "reward_accuracy", "rewards/margins": "reward_margin", "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected", "logps/chosen": "logps_chosen", "logps/rejected": "logps_rejected",
}


def training_summary(log_history: list[dict]) -> dict[str, float | int | None]:
    """Did the run move the model? Steps, the first and last logged loss and, for DPO, the last logged reward
    accuracy (share of pairs whose chosen answer the policy prefers more than the reference does), reward margin and
    the chosen / rejected rewards and log-probabilities."""
    logged = [row for row in log_history if "loss" in row]
    summary: dict[str, float | int | None] = {
        "steps": max((int(row.get("step", 0)) for row in log_history), default=0),
        "first_loss": logged[0]["loss"] if logged else None,
        "final_loss": logged[-1]["loss"] if logged else None,
    }
    for key, name in SUMMARY_KEYS.items():
        values = [row[key] for row in log_history if key in row]
        if values:
            summary[name] = values[-1]
    return summary


def _record_finished(store: Store, result: TrainResult, config: TrainConfig, run_id, dataset_id, merged: bool,
                     started_at, finished_at, *, replace: bool, objective: str) -> None:
    metrics = to_json([*result.log_history, {"summary": training_summary(result.log_history)}])
    store.insert("training_runs", [_run_row(result.training_id, objective, config, run_id, dataset_id, "finished",
                                            started_at, finished_at, metrics)], replace=replace)
    store.insert("checkpoints", [{
        "checkpoint_id": result.checkpoint_id, "training_id": result.training_id, "path": result.path,
        "step": result.steps, "merged": merged, "created_at": finished_at,
    }], replace=replace)


# -- the stage -------------------------------------------------------------------------------------------------------


def recorded_result(config: TrainConfig, *, objective: str, training_id: Callable[[TrainConfig], str] | None,
                    store: Store | None = None, run_id: str | None = None,
                    dataset_id: str | None = None) -> TrainResult | None:
    """Step 1: the result of the run that finished in `config.output_dir` (its marker), recorded into `store` when
    given (a run first made without a store, or into another one); None when no run finished there.
    `training_id(config)` is this run's id; a finished run with another one (other settings or data) is refused
    rather than returned as if it were this one. Whether it was merged does not count: merging comes after."""
    output_dir = Path(config.output_dir)
    marker = output_dir / MARKER
    if not marker.exists():
        return None
    recorded = json.loads(marker.read_text())
    result = TrainResult(**recorded["result"])
    was = recorded.get("config") or {}
    if training_id is not None and training_id(replace(config, merge_lora=was.get("merge_lora", False))) != (
            result.training_id):
        changed = sorted(k for k, v in asdict(config).items() if k not in NOT_WEIGHTS and k in was and was[k] != v)
        what = f"other settings ({', '.join(changed)})" if changed else "another dataset or settings"
        raise StaleRunError(f"{output_dir} holds a finished run with {what}: use another output folder for this one")
    if store is not None and is_main_process():
        times = [datetime.fromisoformat(recorded[k]) if recorded.get(k) else None for k in ("started_at", "finished_at")]
        _record_finished(store, result, config, run_id, dataset_id, bool(recorded.get("merged")), *times,
                         replace=False, objective=objective)
    return result


def merge_adapter(result: TrainResult, config: TrainConfig, *, store: Store | None = None) -> TrainResult:
    """Step 7: a finished LoRA run as a full model, its adapter merged into the base, written once to
    output_dir/merged (a step after training, so asking for a merged model never trains again). A full fine-tune, or
    a run already merged, comes back as it is."""
    output_dir = Path(config.output_dir)
    merged, final = output_dir / "merged", output_dir / "final"
    if Path(result.path) == merged or not (final / "adapter_config.json").exists():
        return result
    if is_main_process() and not (merged / "config.json").exists():
        model, tokenizer = load_student(str(final))  # base + adapter, merged
        tmp = output_dir / ".merged.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, merged)
    out = replace(result, path=str(merged), checkpoint_id=stable_id(result.training_id, str(merged)))
    if store is not None and is_main_process():
        store.insert("checkpoints", [{"checkpoint_id": out.checkpoint_id, "training_id": out.training_id,
                                      "path": out.path, "step": out.steps, "merged": True,
                                      "created_at": datetime.now()}])
    return out


def _train(
    config: TrainConfig,
    *,
    objective: str,
    training_id: str,
    build: Callable[[Any, Any, list], Any],
    n_examples: int,
    what: str,
    error: type[TrainingError],
    check_model: Callable[[Any], None] | None,
    store: Store | None,
    run_id: str | None,
    dataset_id: str | None,
    progress: bool,
    description: str,
) -> TrainResult:
    """Steps 2-6: record the run, load the student, train with the Trainer that `build(model, tokenizer, callbacks)`
    returns (resuming its last checkpoint in `config.output_dir`), save the final model, write the marker, record the
    result. Never merges: `run_training` trains with `merge_lora=False` and merges afterwards (step 7)."""
    output_dir = Path(config.output_dir)
    main = is_main_process()
    started_at = datetime.now()

    # 2. Record the run as running.
    if store is not None and main:
        store.insert("training_runs", [_run_row(training_id, objective, config, run_id, dataset_id, "running",
                                                started_at)], replace=True)

    try:
        # 3. The student, on a plain base (an adapter given as base is merged first).
        model, tokenizer = load_student(config.base_model, for_training=True)
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        if check_model is not None:
            check_model(model)

        # 4. Train, resuming a crashed attempt.
        output_dir.mkdir(parents=True, exist_ok=True)
        callbacks = [RichProgress(f"{description} {Path(config.base_model).name}")] if progress and main else []
        bars_were_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            trainer = build(model, tokenizer, callbacks)
        finally:
            if not bars_were_disabled:
                datasets.enable_progress_bars()
        kept = len(trainer.train_dataset)
        if kept == 0:
            raise error(f"every {what}'s completion falls beyond max_length={config.max_length}: raise max_length")
        if kept < n_examples:
            warnings.warn(
                f"{n_examples - kept} of {n_examples} {what}s had their whole completion cut by "
                f"max_length={config.max_length} and were dropped",
                stacklevel=4,  # the caller of train_imitation / train_dpo / train_brio
            )
        trainer.remove_callback(PrinterCallback)  # the log history goes to the store, not to stdout
        last = get_last_checkpoint(str(output_dir))
        t0 = time.monotonic()
        try:
            trainer.train(resume_from_checkpoint=last)
        finally:
            for callback in callbacks:  # a failed or interrupted run ends its progress too
                callback.close(ok=False)
        seconds = time.monotonic() - t0

        # 5. The model, then the marker, last (first process only; the others wait for it).
        if trainer.is_world_process_zero():
            _save_final(trainer, tokenizer, config, output_dir)
        path = str(output_dir / "final")
        result = TrainResult(
            training_id=training_id,
            checkpoint_id=stable_id(training_id, path),
            path=path,
            log_history=list(trainer.state.log_history),
            steps=int(trainer.state.global_step),
            seconds=round(seconds, 3),
        )
        finished_at = datetime.now()
        if trainer.is_world_process_zero():
            _write_json_atomic(output_dir / MARKER, {
                "result": asdict(result), "objective": objective, "config": asdict(config), "dataset_id": dataset_id,
                "run_id": run_id, "merged": False, "world_size": int(trainer.args.world_size),
                "n_examples": kept,
                "started_at": started_at.isoformat(), "finished_at": finished_at.isoformat(),
            })
            _remove_checkpoints(output_dir)
        trainer.accelerator.wait_for_everyone()
    except BaseException:
        if store is not None and main:
            store.insert("training_runs", [_run_row(training_id, objective, config, run_id, dataset_id, "failed",
                                                    started_at, datetime.now())], replace=True)
        raise

    # 6. Record the result.
    if store is not None and main:
        _record_finished(store, result, config, run_id, dataset_id, False, started_at, finished_at,
                         replace=True, objective=objective)
    return result


def run_training(
    config: TrainConfig,
    *,
    objective: str,
    training_id: Callable[[TrainConfig], str],
    n_examples: int,
    check_data: Callable[[], None],
    build: Callable[[TrainConfig, Any, Any, list], Any],
    what: str = "pair",
    error: type[TrainingError] = TrainingError,
    check_model: Callable[[Any], None] | None = None,
    store: Store | None = None,
    run_id: str | None = None,
    dataset_id: str | None = None,
    progress: bool = True,
    description: str = "train",
) -> TrainResult:
    """Steps 1-7 of a stage: what each `train_*` function runs around its objective. `training_id(config)` is the
    run's id (for a config of other settings, the id that run would have); `check_data()` refuses unusable data,
    asked only when no finished run is returned; `build(config, model, tokenizer, callbacks)` returns the
    objective's Trainer over its `n_examples` examples (`what`s). `check_model` may refuse the loaded student (e.g.
    a seq2seq model for a causal-only objective) with `error`. Recorded in `store` under `objective` when given."""
    # 1. A finished run is not trained again (without data, its result is returned unchecked).
    result = recorded_result(config, objective=objective, training_id=training_id if n_examples else None,
                             store=store, run_id=run_id, dataset_id=dataset_id)
    if result is None:
        check_data()
        # Merging is a step after training: the run trained (and its id) is the same with or without it.
        trained = replace(config, merge_lora=False)
        result = _train(
            trained, objective=objective, training_id=training_id(trained),
            build=lambda model, tokenizer, callbacks: build(trained, model, tokenizer, callbacks),
            n_examples=n_examples, what=what, error=error, check_model=check_model, store=store, run_id=run_id,
            dataset_id=dataset_id, progress=progress, description=description,
        )
    # 7. Merge, when asked.
    if config.merge_lora:
        result = merge_adapter(result, config, store=store)
    # 8. The model card in each model folder (a finished run found without one gets it now).
    if is_main_process():
        write_card(config.output_dir, store)
    return result
