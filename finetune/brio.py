"""BRIO: cross-entropy on the reference plus a ranking loss over candidates ranked by the critic.

Liu et al. 2022 ("BRIO: Bringing Order to Abstractive Summarization"), as the paper uses it: for each input a list of
candidates ranked best-first, and

    loss = CE(reference) + λ · Σ_k mean_{i} max(0, s_{i+k} − s_i + k · margin)

where s is a candidate's length-normalised sequence log-probability under the student (the sum of its tokens'
log-probabilities over |tokens| ** length_penalty), k runs over the rank gaps 1 … n−1, margin defaults to 0.001 and
λ (`rank_weight`) to the mean output length in tokens of the training candidates, which puts the per-token scores
on the scale of a sequence. The reference defaults to the best candidate.

A `transformers.Trainer` subclass: the collator lays out each group as [reference, candidate 1, …, candidate n] and
the loss scores them all with one forward over the padded batch, prompt tokens masked out. LoRA through peft by
default; causal students only. The run around the trainer (resume, saving, the marker, store rows: objective `brio`;
merging) is the shared driver's, `finetune.runner`.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainingArguments

from finetune.runner import (
    DEFAULT_INSTRUCTION,
    TrainConfig,
    TrainingError,
    TrainResult,
    dataset_key,
    device_args,
    prompt_messages,
    require_causal,
    run_training,
    training_id,
    with_adapter,
)

if TYPE_CHECKING:
    from store.db import Store


class BRIOError(TrainingError):
    """A user-facing problem with a BRIO run (one line, no traceback)."""


@dataclass
class BRIOTrainConfig(TrainConfig):
    """Everything that defines a BRIO run: the shared `TrainConfig` settings and BRIO's own. `base_model` is the warm
    start (an imitation run's model, a model folder, a name)."""

    output_dir: str = "runs/brio"
    batch_size: int = 2  # groups per device step (each group is 1 + n candidates sequences)
    margin: float = 0.001  # BRIO's margin per rank gap
    rank_weight: float | None = None  # λ; None: the mean output length in tokens of the training candidates
    length_penalty: float = 1.0  # s = sum log p / |tokens| ** length_penalty (BRIO's α)

    lora_learning_rate = 1e-4  # the learning rate when `learning_rate` is None (TrainConfig.lr)
    full_learning_rate = 2e-5


def training_id_for(config: BRIOTrainConfig, dataset_key: str | None) -> str:
    """Stable across reruns and output folders: the config without output_dir, plus the dataset."""
    return training_id("brio", config, dataset_key)


# -- the loss --------------------------------------------------------------------------------------------------------


def ranking_loss(scores: torch.Tensor, valid: torch.Tensor | None = None, margin: float = 0.001) -> torch.Tensor:
    """BRIO's margin ranking loss over `scores` (groups × candidates, best first): for each rank gap k, the mean over
    the pairs (i, i+k) of max(0, s_{i+k} − s_i + k · margin), summed over k. `valid` masks padded candidates."""
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    total = scores.new_zeros(())
    for k in range(1, scores.shape[1]):
        both = valid[:, :-k] & valid[:, k:]
        if both.any():
            hinge = torch.relu(scores[:, k:] - scores[:, :-k] + k * margin)
            total = total + (hinge * both).sum() / both.sum()
    return total


def _accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   *, logits_to_keep: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities of the label tokens, mask of the label tokens), both (sequences × positions) from the first
    completion position on. Only the logits of those positions are computed (`logits_to_keep`), not the prompt's."""
    is_label = labels != -100
    first = int(is_label.float().argmax(dim=1).min())  # the earliest completion token in the batch (prompts ≥ 1)
    first = max(first, 1)
    keep = input_ids.shape[1] - first + 1  # the positions first-1 … L-1; the last one predicts nothing
    kwargs = {"logits_to_keep": keep} if logits_to_keep else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).logits
    logits = logits[:, -keep:-1].float()
    targets = labels[:, first:]
    mask = targets != -100
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    logps = (picked - logits.logsumexp(dim=-1)) * mask
    return logps, mask


def sequence_scores(logps: torch.Tensor, mask: torch.Tensor, length_penalty: float = 1.0) -> torch.Tensor:
    """Sum of token log-probabilities over |tokens| ** length_penalty (0: the plain sum; 1: the per-token mean)."""
    lengths = mask.sum(dim=1).clamp(min=1).to(logps.dtype)
    return logps.sum(dim=1) / lengths**length_penalty


# -- data ------------------------------------------------------------------------------------------------------------


def _check_groups(groups: list[dict]) -> None:
    if not groups:
        raise BRIOError("no candidate groups: pass at least one {'input': ..., 'candidates': [best, ..., worst]}")
    for i, group in enumerate(groups):
        candidates = group.get("candidates")
        if not isinstance(candidates, list) or len(candidates) < 2 or not all(isinstance(c, str) for c in candidates):
            raise BRIOError(f"group {i} needs 'candidates': a list of at least 2 strings, ranked best first")
        if group.get("reference") is not None and not isinstance(group["reference"], str):
            raise BRIOError(f"group {i}: 'reference' must be a string (or left out: the best candidate)")
        if not isinstance(group.get("input"), str) and not isinstance(group.get("prompt"), list):
            raise BRIOError(f"group {i} needs a string 'input' (or a 'prompt' list of chat messages)")


def encode(tokenizer: Any, messages: list[dict], completion: str) -> tuple[list[int], int]:
    """(token ids of prompt + completion through the chat template, index of the first completion token), the way
    TRL's prompt-completion path tokenizes: the completion is what follows the rendered prompt, end-of-turn included."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    return ids, start


def candidate_dataset(groups: list[dict], tokenizer: Any, instruction: str, max_length: int):
    """One row per group: the token ids of [reference, candidate 1, …] (truncated to max_length) and where each
    completion starts. A group whose prompt alone fills max_length is dropped."""
    from datasets import Dataset

    rows = []
    for g in groups:
        messages = prompt_messages(g, instruction)
        texts = [g.get("reference") or g["candidates"][0], *g["candidates"]]
        encoded = [encode(tokenizer, messages, t) for t in texts]
        if any(start >= min(len(ids), max_length) for ids, start in encoded):
            continue
        rows.append({"input_ids": [ids[:max_length] for ids, _ in encoded], "starts": [s for _, s in encoded]})
    if not rows:
        return Dataset.from_dict({"input_ids": [], "starts": []})
    return Dataset.from_list(rows)


def mean_candidate_length(dataset) -> float:
    """The mean completion length in tokens of the candidates (the reference excluded): BRIO's default λ."""
    lengths = [len(ids) - start for row in dataset for ids, start in zip(row["input_ids"][1:], row["starts"][1:])]
    return sum(lengths) / max(len(lengths), 1)


@dataclass
class BRIOCollator:
    """Pads every group's sequences into one batch: `input_ids`, `attention_mask`, `labels` (-100 on prompt and
    padding), and where each group's reference (`reference_index`) and candidates (`candidate_index`, -1 past a
    group's last) sit in it."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        seqs, starts, reference_index, candidate_rows = [], [], [], []
        for f in features:
            reference_index.append(len(seqs))
            candidate_rows.append(list(range(len(seqs) + 1, len(seqs) + len(f["input_ids"]))))
            seqs += f["input_ids"]
            starts += f["starts"]
        length = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
        labels = torch.full((len(seqs), length), -100, dtype=torch.long)
        for i, (ids, start) in enumerate(zip(seqs, starts)):
            row = torch.tensor(ids, dtype=torch.long)
            input_ids[i, : len(ids)] = row
            attention_mask[i, : len(ids)] = 1
            labels[i, start : len(ids)] = row[start:]
        width = max(len(rows) for rows in candidate_rows)
        candidate_index = torch.full((len(features), width), -1, dtype=torch.long)
        for g, rows in enumerate(candidate_rows):
            candidate_index[g, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "reference_index": torch.tensor(reference_index, dtype=torch.long),
            "candidate_index": candidate_index,
        }


# -- the trainer -----------------------------------------------------------------------------------------------------


class BRIOTrainer(Trainer):
    """`Trainer` with BRIO's loss: token-mean cross-entropy on the references + λ · the ranking loss of the
    candidates' length-normalised scores, all from one forward. Logs `ce_loss`, `rank_loss` and `rank_weight` beside
    `loss`."""

    loss_is_scaled_for_ga = False  # a per-batch mean: Trainer divides it by the accumulation steps

    def __init__(self, *args, rank_weight: float, margin: float = 0.001, length_penalty: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank_weight = rank_weight
        self.margin = margin
        self.length_penalty = length_penalty
        self._logits_to_keep = _accepts_logits_to_keep(self.model)
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logps, mask = token_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"],
                                     logits_to_keep=self._logits_to_keep)
        references = inputs["reference_index"]
        ce = -logps[references].sum() / mask[references].sum().clamp(min=1)
        scores = sequence_scores(logps, mask, self.length_penalty)
        candidates = inputs["candidate_index"]
        valid = candidates >= 0
        rank = ranking_loss(scores[candidates.clamp(min=0)], valid, self.margin)
        loss = ce + self.rank_weight * rank
        self._metrics["ce_loss"].append(ce.detach().item())
        self._metrics["rank_loss"].append(rank.detach().item())
        return (loss, {"scores": scores.detach()}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._metrics and "loss" in logs:
            logs.update({k: sum(v) / len(v) for k, v in self._metrics.items()})
            logs["rank_weight"] = self.rank_weight
            self._metrics.clear()
        super().log(logs, start_time)


def _brio_trainer(model, tokenizer, groups: list[dict], config: BRIOTrainConfig, output_dir: Path, callbacks):
    dataset = candidate_dataset(groups, tokenizer, config.instruction, config.max_length)
    if config.lora:
        model = with_adapter(model, config, "CAUSAL_LM")
    rank_weight = config.rank_weight if config.rank_weight is not None else mean_candidate_length(dataset)
    args = TrainingArguments(**device_args(config, output_dir), remove_unused_columns=False)
    return BRIOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=BRIOCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=callbacks,
        rank_weight=float(rank_weight),
        margin=config.margin,
        length_penalty=config.length_penalty,
    )


# -- scoring (evaluation, tests) -------------------------------------------------------------------------------------


def score_completions(
    model: Any,
    tokenizer: Any,
    rows: list[dict],
    *,
    instruction: str = DEFAULT_INSTRUCTION,
    length_penalty: float = 1.0,
    batch_size: int = 16,
) -> list[float]:
    """The student's score of each `{"input" | "prompt", "completion"}` row: its completion's log-probability given
    the prompt, over |tokens| ** length_penalty (1: BRIO's length-normalised score; 0: the plain sum, as in DPO)."""
    encoded = [encode(tokenizer, prompt_messages(r, instruction), r["completion"]) for r in rows]
    collate = BRIOCollator(tokenizer.pad_token_id)
    keep = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(encoded), batch_size):
                chunk = encoded[start : start + batch_size]
                batch = collate([{"input_ids": [ids], "starts": [s]} for ids, s in chunk])
                logps, mask = token_logprobs(model, batch["input_ids"].to(model.device),
                                             batch["attention_mask"].to(model.device),
                                             batch["labels"].to(model.device), logits_to_keep=keep)
                scores += sequence_scores(logps, mask, length_penalty).tolist()
    finally:
        model.train(was_training)
    return scores


# -- the stage -------------------------------------------------------------------------------------------------------


def train_brio(
    groups: list[dict],
    config: BRIOTrainConfig,
    *,
    store: Store | None = None,
    run_id: str | None = None,
    dataset_id: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the student on ranked candidates `{"input", "prompt"?, "candidates": [best, …, worst], "reference"?}`;
    resumable, recorded (objective `brio`) when `store` is given. Without `dataset_id` the groups identify the
    dataset."""
    key = dataset_key(groups, dataset_id, ("input", "prompt", "candidates", "reference"))
    return run_training(
        config,
        objective="brio",
        training_id=lambda c: training_id_for(c, key),
        n_examples=len(groups),
        check_data=lambda: _check_groups(groups),
        build=lambda trained, model, tokenizer, callbacks: _brio_trainer(model, tokenizer, groups, trained,
                                                                         Path(trained.output_dir), callbacks),
        what="group",
        error=BRIOError,
        check_model=lambda model: require_causal(model, "BRIO", BRIOError),
        store=store,
        run_id=run_id,
        dataset_id=dataset_id,
        progress=progress,
        description="brio",
    )
