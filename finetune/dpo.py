"""DPO: the paper's preference objective, on (chosen, rejected) pairs labelled by the critic.

TRL's `DPOTrainer` on a conversational preference dataset (the prompt as chat messages, each answer as one assistant
turn), causal students only. The reference is the warm start itself, frozen (the paper's "DPO (frozen reference)"):

- with LoRA (the default) `base_model` is a full model (an imitation run's `merged` folder, an embedded name, a model
  folder; an adapter folder is merged into its base first) and a new adapter is trained on it; the reference is that
  model with the adapter disabled, so no second copy is held;
- with full fine-tuning, the reference is a frozen copy of the starting weights.

The steps are imitation's (`finetune.imitate`): return the recorded result when `output_dir/train_result.json` exists;
record the run (`training_runs`, objective `dpo`, or what the caller names, e.g. `brio-dpo`); train, resuming the last
Trainer checkpoint; save `output_dir/final` (and `output_dir/merged` with `merge_lora`), then the marker; record the
result and one `checkpoints` row.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.imitate import (
    DEFAULT_INSTRUCTION,
    TrainingError,
    TrainResult,
    _device_args,
    _lora_config,
    _stable_id,
    config_identity,
    merge_adapter,
    recorded_result,
    run_training,
)
from programs.student_lm import DEFAULT_STUDENT, is_seq2seq, user_message

if TYPE_CHECKING:
    from store.db import Store


class DPOError(TrainingError):
    """A user-facing problem with a DPO run (one line, no traceback)."""


@dataclass
class DPOTrainConfig:
    """Everything that defines a DPO run; `asdict` of it is the run's config row in the store."""

    base_model: str = DEFAULT_STUDENT  # the warm start: an imitation run's merged model, a model folder, a name
    output_dir: str = "runs/dpo"
    lora: bool = True  # a new adapter on base_model; the reference is base_model (adapter disabled)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str = "all-linear"  # peft's "all-linear", or comma-separated module names (never lm_head)
    merge_lora: bool = False  # also write a merged full model to output_dir/merged
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float | None = None  # None: 5e-5 with LoRA, 5e-6 for full fine-tuning
    beta: float = 0.1  # how far the policy may move from the reference (higher: less)
    # TRL's loss_type: one name or a list mixed by loss_weights, e.g. ["sigmoid", "sft"] (RPO: DPO + NLL on chosen)
    loss_type: str | list[str] = "sigmoid"
    loss_weights: list[float] | None = None  # one weight per loss_type; None: 1 each
    label_smoothing: float = 0.0  # cDPO: the chance a label is flipped (a noisy critic), in [0, 0.5)
    batch_size: int = 4  # pairs per device step (each pair is two sequences)
    grad_accum: int = 1
    max_length: int = 128  # prompt + answer, in tokens
    seed: int = 0
    logging_steps: int = 5
    save_steps: int = 50
    instruction: str = field(default=DEFAULT_INSTRUCTION)
    lr_scheduler_type: str = "linear"  # transformers' SchedulerType: linear, cosine, constant, constant_with_warmup...
    warmup_ratio: float = 0.0  # share of the steps spent warming the learning rate up from 0

    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 5e-5 if self.lora else 5e-6


def training_id_for(config: DPOTrainConfig, dataset_key: str | None, objective: str = "dpo") -> str:
    """Stable across reruns and output folders: the objective, the config without output_dir, and the dataset."""
    return _stable_id(objective, config_identity(config), dataset_key)


# -- data ------------------------------------------------------------------------------------------------------------


def _dataset_key(pairs: list[dict], dataset_id: str | None) -> str:
    if dataset_id is not None:
        return dataset_id
    return _stable_id([[p.get("input"), p.get("prompt"), p.get("chosen"), p.get("rejected")] for p in pairs])


def _check_pairs(pairs: list[dict]) -> None:
    if not pairs:
        raise DPOError("no preference pairs: pass at least one {'input': ..., 'chosen': ..., 'rejected': ...}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair.get("chosen"), str) or not isinstance(pair.get("rejected"), str):
            raise DPOError(f"pair {i} needs string 'chosen' and 'rejected' fields, got keys {sorted(pair)}")
        if not isinstance(pair.get("input"), str) and not isinstance(pair.get("prompt"), list):
            raise DPOError(f"pair {i} needs a string 'input' (or a 'prompt' list of chat messages)")


def prompt_messages(row: dict, instruction: str) -> list[dict]:
    """A row's own prompt messages (the DSPy adapter's), or instruction + input as one user turn, as imitation does."""
    return row.get("prompt") or [{"role": "user", "content": user_message(instruction, row["input"])}]


def preference_dataset(pairs: list[dict], instruction: str):
    """TRL's conversational preference format: prompt messages, and each answer as one assistant turn."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": prompt_messages(p, instruction),
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
    )


def require_causal(model: Any, objective: str, error: type[TrainingError]) -> None:
    if is_seq2seq(model):
        raise error(f"{objective} needs a causal student (a decoder-only model), not a seq2seq one like BART or T5")


# -- the trainer -----------------------------------------------------------------------------------------------------


def _dpo_trainer(model, tokenizer, pairs: list[dict], config: DPOTrainConfig, output_dir: Path, callbacks):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **_device_args(config, output_dir),
        beta=config.beta,
        loss_type=[config.loss_type] if isinstance(config.loss_type, str) else list(config.loss_type),
        loss_weights=config.loss_weights,
        label_smoothing=config.label_smoothing,
        max_length=config.max_length,
        dataset_num_proc=None,
    )
    ref_model = None
    if not config.lora:
        # Without one, TRL reloads the reference from `model.config._name_or_path`: a second read of the weights, and
        # the wrong ones when the student was changed after loading (an added pad token, a merged adapter).
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    return DPOTrainer(
        model=model,
        ref_model=ref_model,  # with LoRA: None, and TRL disables the adapter to score the reference
        args=args,
        train_dataset=preference_dataset(pairs, config.instruction),
        processing_class=tokenizer,
        peft_config=_lora_config(config, "CAUSAL_LM") if config.lora else None,
        callbacks=callbacks,
    )


# -- the stage -------------------------------------------------------------------------------------------------------


def train_dpo(
    pairs: list[dict],
    config: DPOTrainConfig,
    *,
    store: Store | None = None,
    run_id: str | None = None,
    dataset_id: str | None = None,
    objective: str = "dpo",
    progress: bool = True,
) -> TrainResult:
    """Train the student on preference pairs `{"input", "prompt"?, "chosen", "rejected"}`; resumable, recorded under
    `objective` when `store` is given. Without `dataset_id` the pairs themselves identify the dataset."""
    # 1. A finished run is not trained again; merging, when asked, is a step after training.
    key = _dataset_key(pairs, dataset_id) if pairs else None
    trained = replace(config, merge_lora=False)
    recorded = recorded_result(config, objective=objective, store=store, run_id=run_id, dataset_id=dataset_id,
                               training_id=(lambda c: training_id_for(c, key, objective)) if pairs else None)
    if recorded is not None:
        return merge_adapter(recorded, config, store=store) if config.merge_lora else recorded

    _check_pairs(pairs)
    result = run_training(
        trained,
        objective=objective,
        training_id=training_id_for(trained, key, objective),
        build=lambda model, tokenizer, callbacks: _dpo_trainer(model, tokenizer, pairs, trained,
                                                               Path(config.output_dir), callbacks),
        n_examples=len(pairs),
        what="pair",
        error=DPOError,
        check_model=lambda model: require_causal(model, "DPO", DPOError),
        store=store,
        run_id=run_id,
        dataset_id=dataset_id,
        progress=progress,
        description=objective,
    )
    return merge_adapter(result, config, store=store) if config.merge_lora else result
