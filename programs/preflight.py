"""What a run checks before any model loads: its task, its inputs per split, the fit of each into the models'
contexts, and a program's predictors against the student's: a mistake fails here in one line, not hours in."""

from __future__ import annotations

from typing import Any

from programs import progress
from programs.config import ConfigError, PipelineConfig
from programs.inputs import split_inputs


def check_run(cfg: PipelineConfig) -> tuple[Any, dict[str, list[dict]], int]:
    """The task, its inputs per split and how many evaluation inputs overlapping train were dropped, checked before
    any model loads."""
    from programs.task_sources import get_task

    task = get_task(cfg.task)  # a TaskError is a user error: its one line
    progress.interval()  # a bad CRITIC_DISTILL_PROGRESS_INTERVAL, too
    if cfg.critic_rubrics > len(task.rubrics):
        raise ConfigError(f"critic_rubrics = {cfg.critic_rubrics}, but task {task.name!r} has {len(task.rubrics)} "
                          "phrasing(s) of its rubric (critic_instruction, critic_rubrics)")
    from programs.config import objectives

    ranked = [o for o in objectives(cfg) if o in ("brio", "brio-dpo")]
    if task.steps and ranked:
        raise ConfigError(f"{ranked[0]} ranks the teacher's outputs for one input against each other, but each run of "
                          f"task {task.name!r}'s program wrote its output from its own {task.steps[0][0]!r} step: "
                          "with several predictors use dpo or sd (they train the last predictor on one set of its "
                          "inputs) or ft")
    chosen, dropped = split_inputs(cfg, task)
    from programs.lm import check_context

    check_context([r["text"] for rows in chosen.values() for r in rows], [cfg.teacher, cfg.critic, cfg.second_judge],
                  answer_tokens=cfg.critic_max_tokens,
                  judged_tokens=max(cfg.teacher_max_tokens, cfg.student_max_tokens))
    return task, chosen, dropped


def check_steps(task, teacher_program: Any, student_program: Any) -> None:
    """A student of several predictors learns each from the teacher's predictor of the same name and fields, and runs
    as the program: say so in one line, before any model, when the teacher or the student program is not there."""
    if not task.steps:
        return
    if student_program is None:
        raise ConfigError(f"task {task.name!r} has several predictors: the student runs as that program, so pass it")
    from programs.program_tasks import from_program
    from programs.tasks import Task, TaskError

    def fields(t: Task) -> list[tuple[str, list[str], list[str]]]:
        return [(n, list(s.inputs), list(s.outputs)) for n, s in t.steps]

    mine = fields(task)
    try:
        theirs = fields(from_program(teacher_program, critic_instruction=task.critic_instruction))
    except TaskError as e:
        raise ConfigError(f"the teacher program: {e}") from e
    if theirs != mine:
        def show(steps):
            return "; ".join(f"{n}: {', '.join(i)} -> {', '.join(o)}" for n, i, o in steps) or "one predictor"
        raise ConfigError(f"the student learns each predictor from the teacher's of the same name and fields, but the "
                          f"teacher has ({show(theirs)}) and the student ({show(mine)})")
