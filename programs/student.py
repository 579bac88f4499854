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


def training_completion(task: Task, text: str) -> str:
    """A stored output as the student's answer to `training_prompt`: the adapter's own rendering (the value itself
    for a task of one output field; a `Label: value` line a field for several)."""
    return LabeledAdapter().format_assistant_message_content(student_signature(task), task.output_values(text))


def parse_completion(task: Task, completion: str) -> str | None:
    """A student's raw answer as a stored output (`training_completion` undone), None when it cannot be read."""
    if len(task.outputs) == 1:
        return completion
    try:
        return task.encode_outputs(LabeledAdapter().parse(student_signature(task), completion))
    except Exception:  # noqa: BLE001 - an answer missing a field is no candidate
        return None


class Student(dspy.Module):
    def __init__(self, task: Task):
        super().__init__()
        self.task = task
        self.rewrite = dspy.Predict(student_signature(task))

    def forward(self, text: str) -> dspy.Prediction:
        """`text`: one stored input (a JSON object of the fields for a task of several input fields)."""
        return self.rewrite(**self.task.input_values(text))
