"""A run's language models, resolved from its config and reachable: the teacher, the critic, the second judge and
the reflection LM, each checked (a hosted one's key, then an answer) before any work or download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from programs.config import PipelineConfig


@dataclass
class LMs:
    """The run's language models, resolved and reachable."""

    teacher: Any
    critic: Any
    second_judge: Any | None  # the second, independent judge of the students (--second-judge)
    reflection: Any | None  # proposes instructions for MIPROv2 / GEPA


def run_lms(cfg: PipelineConfig) -> LMs:
    """Reach each hosted model (its key, then an answer), then resolve the teacher, the critic, the second judge and
    the reflection LM (pulling a local one not cached yet) and check the student spec: a spec that is wrong, or a
    hosted model that does not answer, fails here, before any work and before any download."""
    from programs.student_lm import _resolve as resolve_student
    from programs.lm import check_hosted, resolve_lm

    optimizing = cfg.optimize in ("mipro", "gepa")
    check_hosted(cfg.teacher, cfg.critic, cfg.second_judge, (cfg.reflection_lm or cfg.teacher) if optimizing else None)
    lms = LMs(
        teacher=resolve_lm(cfg.teacher, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                           max_tokens=cfg.teacher_max_tokens, seed=cfg.seed),
        critic=resolve_lm(cfg.critic, temperature=0.0, max_tokens=cfg.critic_max_tokens, seed=cfg.seed),
        second_judge=(resolve_lm(cfg.second_judge, temperature=0.0, max_tokens=cfg.critic_max_tokens, seed=cfg.seed)
               if cfg.second_judge else None),
        reflection=(resolve_lm(cfg.reflection_lm or cfg.teacher, temperature=0.7, max_tokens=512, seed=cfg.seed)
                    if optimizing else None))
    resolve_student(cfg.student)
    return lms
