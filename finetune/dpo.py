"""DPO: the paper's preference objective, on (chosen, rejected) pairs labelled by the critic.

TRL's `DPOTrainer` on a conversational preference dataset (the prompt as chat messages, each answer as one assistant
turn), causal students only. The reference is the warm start itself, frozen (the paper's "DPO (frozen reference)"):

- with LoRA (the default) `base_model` is a full model (an imitation run's `merged` folder, an embedded name, a model
  folder; an adapter folder is merged into its base first) and a new adapter is trained on it; the reference is that
  model with the adapter disabled, so no second copy is held;
- with full fine-tuning, the reference is a frozen copy of the starting weights.

The run around the trainer (resume, saving, the marker, store rows: objective `dpo`, or what the caller names, e.g.
`brio-dpo`; merging) is the shared driver's, `finetune.runner`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.runner import (
    TrainConfig,
    TrainingError,
    TrainResult,
    dataset_key,
    device_args,
    lora_config,
    prompt_messages,
    require_causal,
    run_training,
    training_id,
)

if TYPE_CHECKING:
    from store.db import Store


class DPOError(TrainingError):
    """A user-facing problem with a DPO run (one line, no traceback)."""


@dataclass
class DPOTrainConfig(TrainConfig):
    """Everything that defines a DPO run: the shared `TrainConfig` settings and DPO's own. `base_model` is the warm
    start (an imitation run's merged model, a model folder, a name); with LoRA a new adapter is trained on it and the
    reference is base_model with the adapter disabled."""

    output_dir: str = "runs/dpo"
    batch_size: int = 4  # pairs per device step (each pair is two sequences)
    beta: float = 0.1  # how far the policy may move from the reference (higher: less)
    # TRL's loss_type: one name or a list mixed by loss_weights, e.g. ["sigmoid", "sft"] (RPO: DPO + NLL on chosen)
    loss_type: str | list[str] = "sigmoid"
    loss_weights: list[float] | None = None  # one weight per loss_type; None: 1 each
    label_smoothing: float = 0.0  # cDPO: the chance a label is flipped (a noisy critic), in [0, 0.5)

    lora_learning_rate = 5e-5  # the learning rate when `learning_rate` is None (TrainConfig.lr)
    full_learning_rate = 5e-6


def training_id_for(config: DPOTrainConfig, dataset_key: str | None, objective: str = "dpo") -> str:
    """Stable across reruns and output folders: the objective, the config without output_dir, and the dataset."""
    return training_id(objective, config, dataset_key)


# -- data ------------------------------------------------------------------------------------------------------------


def _check_pairs(pairs: list[dict]) -> None:
    if not pairs:
        raise DPOError("no preference pairs: pass at least one {'input': ..., 'chosen': ..., 'rejected': ...}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair.get("chosen"), str) or not isinstance(pair.get("rejected"), str):
            raise DPOError(f"pair {i} needs string 'chosen' and 'rejected' fields, got keys {sorted(pair)}")
        if not isinstance(pair.get("input"), str) and not isinstance(pair.get("prompt"), list):
            raise DPOError(f"pair {i} needs a string 'input' (or a 'prompt' list of chat messages)")


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


# -- the trainer -----------------------------------------------------------------------------------------------------


def _dpo_trainer(model, tokenizer, pairs: list[dict], config: DPOTrainConfig, output_dir: Path, callbacks):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        **device_args(config, output_dir),
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
        peft_config=lora_config(config, "CAUSAL_LM") if config.lora else None,
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
    key = dataset_key(pairs, dataset_id, ("input", "prompt", "chosen", "rejected"))
    return run_training(
        config,
        objective=objective,
        training_id=lambda c: training_id_for(c, key, objective),
        n_examples=len(pairs),
        check_data=lambda: _check_pairs(pairs),
        build=lambda trained, model, tokenizer, callbacks: _dpo_trainer(model, tokenizer, pairs, trained,
                                                                        Path(trained.output_dir), callbacks),
        what="pair",
        error=DPOError,
        check_model=lambda model: require_causal(model, "DPO", DPOError),
        store=store,
        run_id=run_id,
        dataset_id=dataset_id,
        progress=progress,
        description=objective,
    )
