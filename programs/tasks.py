"""Task definitions: what the teacher writes, what the critic judges, what the student is asked.

A task is data (instructions and field descriptions) from which the DSPy signatures are built, so a new task needs
no new code path. Humor paraphrase, the paper's task, is the first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dspy

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Task:
    name: str
    teacher_instruction: str  # may use {n} and {numbered} ("1., 2., 3.")
    critic_instruction: str
    student_instruction: str
    input_desc: str
    output_desc: str
    bundled_inputs: Path | None = None
    # worked examples shown to the teacher (DSPy demos): {"text": ..., "outputs": [...]}. The paper's 70B teacher
    # was zero-shot; the small embedded teachers copy the input back without one (measured on Qwen2.5-Coder-0.5B).
    teacher_demos: tuple[dict, ...] = ()

    def teacher_signature(self, n: int) -> type[dspy.Signature]:
        """literal text -> n outputs as a numbered list (the paper's format: one call, N candidates)."""
        numbered = ", ".join(f"{i}." for i in range(1, n + 1))
        return _make(
            self.teacher_instruction.format(n=n, numbered=numbered),
            inputs={"text": (str, self.input_desc)},
            outputs={"paraphrases": (str, f"a list numbered {numbered}")},
            name="TeacherSignature",
        )

    def critic_signature(self) -> type[dspy.Signature]:
        """input, candidate 1, candidate 2 -> a short reason, then the choice (the paper's pairwise critic)."""
        return _make(
            self.critic_instruction,
            inputs={"text": (str, self.input_desc), "paraphrase_1": (str, self.output_desc),
                    "paraphrase_2": (str, self.output_desc)},
            outputs={"reason": (str, "one short sentence"), "choice": (Literal["1", "2"], "1 or 2")},
            name="CriticSignature",
        )


def _make(instructions: str, *, inputs: dict, outputs: dict, name: str) -> type[dspy.Signature]:
    fields = {k: (t, dspy.InputField(desc=d)) for k, (t, d) in inputs.items()}
    fields |= {k: (t, dspy.OutputField(desc=d)) for k, (t, d) in outputs.items()}
    return dspy.Signature(fields, instructions, signature_name=name)


HUMOR = Task(
    name="humor",
    teacher_instruction=(
        "Generate {n} creative and humorous paraphrases with the exact same meaning as the input text. "
        "Format the paraphrases as a list numbered as {numbered} and write nothing else."
    ),
    critic_instruction=(
        "Choose the better paraphrase, based on how humorous and human-like it sounds, "
        "while staying true to the input text."
    ),
    student_instruction="Rewrite the sentence as a humorous paraphrase with the same meaning.",
    input_desc="a literal sentence",
    output_desc="a humorous paraphrase of the text",
    bundled_inputs=DATA / "humor_inputs.jsonl",
    teacher_demos=({
        "text": "Suddenly a big gust of wind came and blew my dress up around my ears!",
        "outputs": ["Oops! A strong breeze came and gave me an impromptu Marilyn Monroe moment.",  # the paper's example
                    "The wind decided my dress looked better as a scarf, right up around my ears!",
                    "A sudden gust turned my dress into a parachute, and I very nearly took off."],
    },),
)

TASKS: dict[str, Task] = {HUMOR.name: HUMOR}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def student_signature(task: Task) -> type[dspy.Signature]:
    """input -> one output: what the distilled student is trained on and asked, through the same adapter."""
    return _make(task.student_instruction, inputs={"text": (str, task.input_desc)},
                 outputs={"paraphrase": (str, task.output_desc)}, name="StudentSignature")
