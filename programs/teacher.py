"""The teacher: a literal input -> N candidate outputs in one call (the paper: N = 3, temperature 0.8)."""

from __future__ import annotations

import re
import threading
from contextlib import nullcontext

import dspy

from programs.tasks import Task

_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$")


def parse_numbered(text: str, n: int) -> list[str]:
    """Items of a numbered (or bulleted) list; a lone unnumbered answer counts as one item."""
    items = [m.group(1).strip().strip('"').strip() for line in (text or "").splitlines() if (m := _ITEM.match(line))]
    if not items and text and text.strip():
        items = [text.strip().strip('"')]
    seen, unique = set(), []
    for item in items:
        if item and item.lower() not in seen:
            seen.add(item.lower())
            unique.append(item)
    return unique[:n]


def numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


class Teacher(dspy.Module):
    def __init__(self, task: Task, n: int = 3):
        super().__init__()
        task.check_list_teacher()
        self.n = n
        self.task = task
        self.generate = dspy.Predict(task.teacher_signature(n))
        self.generate.demos = [
            dspy.Example(**{k: d[k] for k in task.inputs}, **{task.teacher_output: numbered(d["outputs"][:n])})
            .with_inputs(*task.inputs)
            for d in task.teacher_demos
        ]

    def forward(self, text: str) -> dspy.Prediction:
        """`text`: one stored input (a JSON object of the fields for a task of several input fields)."""
        raw = getattr(self.generate(**self.task.input_values(text)), self.task.teacher_output)
        return dspy.Prediction(candidates=parse_numbered(raw, self.n), raw=raw)


class ProgramTeacher(dspy.Module):
    """Any DSPy program as the teacher: N candidates from N runs of it at distinct rollout ids, DSPy's way of asking
    an LM again at its temperature without the cache answering (each run is still cached and recorded, so a rerun
    makes no call). A predictor with its own LM rolls out on that LM; the others on the LM in context."""

    def __init__(self, program: dspy.Module, task: Task, n: int = 3):
        super().__init__()
        self.program = program
        self.task = task
        self.n = n
        self._own_lms = threading.Lock()  # predictors with their own LM get a rollout copy in place: one run at a time

    def _rollout(self, i: int, inputs: dict) -> dspy.Prediction:
        own = [(p, p.lm) for _, p in self.program.named_predictors() if p.lm is not None]
        context_lm = dspy.settings.lm
        with self._own_lms if own else nullcontext():
            try:
                for p, lm in own:  # a shallow copy: the same model, another rollout id
                    p.lm = lm.copy(rollout_id=i)
                with dspy.context(lm=context_lm.copy(rollout_id=i) if context_lm is not None else None):
                    return self.program(**inputs)
            finally:
                for p, lm in own:
                    p.lm = lm

    def forward(self, text: str) -> dspy.Prediction:
        inputs, candidates = self.task.input_values(text), []
        for i in range(self.n):
            value = self.task.encode_outputs(self._rollout(i, inputs))  # every output field, or None
            if value is not None and value not in candidates:
                candidates.append(value)
        return dspy.Prediction(candidates=candidates, raw=None)
