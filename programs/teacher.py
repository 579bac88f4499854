"""The teacher: a literal input -> N candidate outputs in one call (the paper: N = 3, temperature 0.8)."""

from __future__ import annotations

import re

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
