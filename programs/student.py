"""The student as a DSPy program: one output per input, from any LM spec (the distilled checkpoint included).

Training prompts are built with the same adapter and signature (`training_prompt`), so the fine-tuned student sees
at inference exactly the messages it was trained on.
"""

from __future__ import annotations

import dspy

from programs.adapter import LabeledAdapter
from programs.tasks import Task, student_signature


def training_prompt(task: Task, text: str) -> list[dict[str, str]]:
    """The chat messages DSPy sends the student for `text`: the prompt half of an SFT pair."""
    return LabeledAdapter().format(student_signature(task), demos=[], inputs=task.input_values(text))


class Student(dspy.Module):
    def __init__(self, task: Task):
        super().__init__()
        self.task = task
        self.rewrite = dspy.Predict(student_signature(task))

    def forward(self, text: str) -> dspy.Prediction:
        """`text`: one stored input (a JSON object of the fields for a task of several input fields)."""
        return self.rewrite(**self.task.input_values(text))
