"""Imitation: the paper's FT stage, cross-entropy on the teacher's (input, output) pairs.

Causal students train with TRL's `SFTTrainer` on a conversational prompt-completion dataset (loss on the completion
only); seq2seq students (BART, T5) with transformers' `Seq2SeqTrainer`. LoRA through peft by default, full
fine-tuning on request. The run around the trainer (resume, saving, the marker, store rows, merging) is the shared
driver's, `finetune.runner`; self-distillation (objective `sd`) is this stage on the critic's positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.runner import (
    TrainConfig,
    TrainingError,
    TrainResult,
    dataset_key,
    device_args,
    lora_config,
    prompt_messages,
    run_training,
    training_id,
    with_adapter,
)
from programs.student_lm import is_seq2seq, render_prompt, user_message

if TYPE_CHECKING:
    from store.db import Store


class ImitationError(TrainingError):
    """A user-facing problem with an imitation run (one line, no traceback)."""


@dataclass
class ImitationConfig(TrainConfig):
    """Everything that defines an imitation run: the shared `TrainConfig` settings (learning rate by default 2e-4
    with LoRA, 5e-5 for full fine-tuning)."""

    output_dir: str = "runs/imitation"


def training_id_for(config: ImitationConfig, dataset_key: str | None) -> str:
    """Stable across reruns and output folders: the config without output_dir, plus the dataset."""
    return training_id("imitation", config, dataset_key)


# -- data ------------------------------------------------------------------------------------------------------------


def _check_pairs(pairs: list[dict]) -> None:
    if not pairs:
        raise ImitationError("no training pairs: pass at least one {'input': ..., 'output': ...}")
    for i, pair in enumerate(pairs):
        if not isinstance(pair.get("input"), str) or not isinstance(pair.get("output"), str):
            raise ImitationError(f"pair {i} needs string 'input' and 'output' fields, got keys {sorted(pair)}")


def conversational_dataset(pairs: list[dict], instruction: str):
    """TRL's conversational prompt-completion format: the loss falls on the assistant's completion only."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {
                "prompt": prompt_messages(p, instruction),
                "completion": [{"role": "assistant", "content": p["output"]}],
            }
            for p in pairs
        ]
    )


def seq2seq_dataset(pairs: list[dict], tokenizer: Any, instruction: str, max_length: int):
    """Tokenized encoder inputs and labels; labels end with EOS (so the student learns to stop) even when the
    tokenizer does not add one itself."""
    from datasets import Dataset

    # A pair's own prompt messages are rendered as the student sees them at inference (programs.lm.TransformersEngine).
    sources = [render_prompt(tokenizer, p.get("prompt") or user_message(instruction, p["input"]), seq2seq=True)
               for p in pairs]
    inputs = tokenizer(sources, max_length=max_length, truncation=True)
    targets = tokenizer(text_target=[p["output"] for p in pairs], max_length=max_length, truncation=True)
    eos = tokenizer.eos_token_id
    labels = []
    for ids in targets["input_ids"]:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids[: max_length - 1] + [eos]
        labels.append(ids)
    return Dataset.from_dict(
        {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "labels": labels}
    )


# -- trainers --------------------------------------------------------------------------------------------------------


def _causal_trainer(model, tokenizer, pairs, config: ImitationConfig, output_dir: Path, callbacks):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        **device_args(config, output_dir),
        max_length=config.max_length,
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=conversational_dataset(pairs, config.instruction),
        processing_class=tokenizer,
        peft_config=lora_config(config, "CAUSAL_LM") if config.lora else None,
        callbacks=callbacks,
    )


def _seq2seq_trainer(model, tokenizer, pairs, config: ImitationConfig, output_dir: Path, callbacks):
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    if config.lora:
        model = with_adapter(model, config, "SEQ_2_SEQ_LM")
    args = Seq2SeqTrainingArguments(**device_args(config, output_dir), remove_unused_columns=False)
    return Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=seq2seq_dataset(pairs, tokenizer, config.instruction, config.max_length),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


# -- the stage -------------------------------------------------------------------------------------------------------


def train_imitation(
    pairs: list[dict],
    config: ImitationConfig,
    *,
    store: Store | None = None,
    run_id: str | None = None,
    dataset_id: str | None = None,
    progress: bool = True,
    objective: str = "imitation",
) -> TrainResult:
    """Fine-tune the student on teacher pairs `{"input": ..., "output": ...}`; resumable, recorded when `store` is
    given. Without `dataset_id` the pairs themselves identify the dataset in the training id. `objective` names the
    run in the store: "imitation" (the warm start), "ft" (more imitation after it), "curated" or "sd"
    (self-distillation: SFT on the critic's positives); stores made before name the warm start "ft" too."""
    key = dataset_key(pairs, dataset_id, ("input", "output"))

    def build(trained: ImitationConfig, model, tokenizer, callbacks):
        make = _seq2seq_trainer if is_seq2seq(model) else _causal_trainer
        return make(model, tokenizer, pairs, trained, Path(trained.output_dir), callbacks)

    return run_training(
        config, objective=objective, training_id=lambda c: training_id_for(c, key), n_examples=len(pairs),
        check_data=lambda: _check_pairs(pairs), build=build, what="pair", error=ImitationError, store=store,
        run_id=run_id, dataset_id=dataset_id, progress=progress, description="imitate",
    )
