"""Every trained student of a run against the teacher, on each evaluation split, by each judge (the critic and the
second judge): one `finetune.evaluate.evaluate` per (student, split, judge), with the meaning kept beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune.compare import mean_meaning
from finetune.evaluate import evaluate
from programs.critic import Critic
from programs.lm import resolve_lm
from programs.tasks import Task
from store import Store


def judge_students(store: Store, task: Task, students: list[tuple[str, Any]], *, student: Any, teacher_name: str,
                   splits: dict[str, list[dict]], judges: list[tuple[str, Any]], critic: Critic, run_id: str,
                   threads: Callable[[str], int], max_tokens: int) -> list[dict]:
    """One evaluation dict per (student, split, judge), in that order: its WTR against `teacher_name`'s outputs, the
    judged items, the failures, the meaning and the student's training log. `student` is the DSPy module each
    trained model runs as (on the LM in context); `judges` are (name, LM); `threads(name)`: the parallel calls a
    judge takes."""
    evaluations = []
    for label, model in students:
        student_lm = resolve_lm(f"local/{Path(model.path).resolve()}", temperature=0.0, max_tokens=max_tokens)
        for split, items in splits.items():
            for judge_name, lm in judges:
                r = evaluate(store, student=student, student_lm=student_lm, student_name=model.checkpoint_id,
                             checkpoint_id=model.checkpoint_id, critic=critic, critic_lm=lm, critic_name=judge_name,
                             inputs=items, teacher_name=teacher_name, split=split, run_id=run_id,
                             threads=threads(judge_name))
                evaluations.append({"label": label, "judge": judge_name, "split": split, **r,
                                    "meaning": mean_meaning(r["items"], task), "log_history": model.log_history})
    return evaluations
