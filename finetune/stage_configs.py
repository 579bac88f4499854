"""The pipeline's config read per stage: each trainer's typed config and the feedback loop's, derived here and only
here (as TRL gives each trainer its own config), so a stage never reads the pipeline's keys itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from finetune.brio import BRIOTrainConfig
from finetune.dpo import DPOTrainConfig
from finetune.feedback import FeedbackConfig
from finetune.imitate import ImitationConfig

if TYPE_CHECKING:
    from programs.config import PipelineConfig
    from programs.tasks import Task


def dpo_pairs_per_step(batch_size: int) -> int:
    """DPO reads two sequences a pair: half the pairs of imitation's examples, the same sequences per step."""
    return max(1, batch_size // 2)


def brio_groups_per_step(batch_size: int) -> int:
    """A BRIO group is the reference and the teacher's candidates (4 sequences at the default 3): a quarter."""
    return max(1, batch_size // 4)


def _student(task: Task) -> dict:
    """What shapes every training row's prompt: the task's student instruction, field format and adapter."""
    return dict(instruction=task.student_instruction, prompt_format=task.prompt_format, adapter=task.student_adapter)


def warm_start_config(cfg: PipelineConfig, task: Task) -> ImitationConfig:
    """The imitation warm start: `warmstart_*` keys, else the shared ones; merged later only when an objective
    follows (the caller decides, since merging is not part of the run's id)."""
    return ImitationConfig(
        base_model=cfg.student, merge_lora=False, **_student(task), lora=cfg.lora,
        epochs=cfg.warmstart_epochs or cfg.epochs,
        max_steps=cfg.max_steps if cfg.warmstart_max_steps is None else cfg.warmstart_max_steps,
        learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed)


@dataclass
class ObjectiveTrainers:
    """The objectives' trainer configs after the warm start, complete but for where each run starts, its epochs and
    its folder (set with `dataclasses.replace`)."""

    imitation: ImitationConfig  # ft, curated and sd
    dpo: DPOTrainConfig  # dpo and the DPO half of brio-dpo
    brio: BRIOTrainConfig

    @property
    def epochs(self) -> float:
        """Every objective's epochs (`feedback_epochs`, else `epochs`), split into rounds by `feedback_every`."""
        return self.imitation.epochs


def objective_trainers(cfg: PipelineConfig, task: Task) -> ObjectiveTrainers:
    """`feedback_*` keys, else the shared ones; DPO and BRIO with their own learning rates (None: the trainer's
    default) and their batches in pairs and groups."""
    common = dict(merge_lora=True, **_student(task), lora=cfg.lora, epochs=cfg.feedback_epochs or cfg.epochs,
                  max_steps=cfg.max_steps if cfg.feedback_max_steps is None else cfg.feedback_max_steps,
                  max_length=cfg.max_length, seed=cfg.seed, lr_scheduler_type=cfg.feedback_lr_scheduler_type,
                  warmup_ratio=cfg.feedback_warmup_ratio)
    return ObjectiveTrainers(
        imitation=ImitationConfig(**common, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size),
        dpo=DPOTrainConfig(**common, learning_rate=cfg.dpo_learning_rate,
                           batch_size=dpo_pairs_per_step(cfg.batch_size), beta=cfg.dpo_beta,
                           loss_type=cfg.dpo_loss_type, loss_weights=cfg.dpo_loss_weights,
                           label_smoothing=cfg.dpo_label_smoothing),
        brio=BRIOTrainConfig(**common, learning_rate=cfg.brio_learning_rate,
                             batch_size=brio_groups_per_step(cfg.batch_size)))


def feedback_config(cfg: PipelineConfig) -> FeedbackConfig:
    """How the feedback loop samples the student, picks its pairs and keeps the judged ones."""
    return FeedbackConfig(k=cfg.k_samples, method=cfg.sampling, pair_selection=cfg.pair_selection,
                          temperature=cfg.sampling_temperature, top_p=cfg.sampling_top_p, anchor=cfg.pair_anchor,
                          min_confidence=cfg.min_confidence, both_orders_agree=cfg.both_orders_agree,
                          meaning_floor=cfg.meaning_floor, meaning_margin=cfg.meaning_margin,
                          length_control=cfg.length_control, length_lo=cfg.length_band[0],
                          length_hi=cfg.length_band[1], seed=cfg.seed, max_new_tokens=cfg.student_max_tokens)
