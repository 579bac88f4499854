"""The student as a DSPy program: one output per input, from any LM spec (the distilled checkpoint included).

Training prompts are built with the same adapter and signature (`training_prompt`), so the fine-tuned student sees
at inference exactly the messages it was trained on.
"""

from __future__ import annotations

import json

import dspy

from programs.adapter import LabeledAdapter
from programs.tasks import Task, student_signature


# the adapters a student learns the prompts of (`Task.student_adapter`): LabeledAdapter's plain labels, which the
# small embedded models read best, or DSPy's default ChatAdapter, which a user's program runs under unconfigured
ADAPTERS = {"labeled": LabeledAdapter, "chat": dspy.ChatAdapter}


def student_adapter(task: Task) -> dspy.Adapter:
    """The adapter the task's student is trained on and answers through."""
    return ADAPTERS[task.student_adapter]()


def training_prompt(task: Task, text: str) -> list[dict[str, str]]:
    """The chat messages DSPy sends the student for `text`: the prompt half of an SFT pair, as the adapter's
    `format_finetune_data` writes it (DSPy's `BootstrapFinetune` trains on the same)."""
    return student_adapter(task).format(student_signature(task), demos=[], inputs=task.input_values(text))


def training_completion(task: Task, text: str) -> str:
    """A stored output as the student's answer to `training_prompt`: the adapter's own rendering, the assistant
    message of its `format_finetune_data` (LabeledAdapter: the value itself for a task of one output field, a
    `Label: value` line a field for several; ChatAdapter: its `[[ ## field ## ]]` sections)."""
    return student_adapter(task).format_assistant_message_content(student_signature(task), task.output_values(text))


def parse_completion(task: Task, completion: str) -> str | None:
    """A student's raw answer as a stored output (`training_completion` undone), None when it cannot be read."""
    if len(task.outputs) == 1 and not task.field_types and task.student_adapter == "labeled":
        return completion
    try:
        return task.encode_outputs(student_adapter(task).parse(student_signature(task), completion))
    except Exception:  # noqa: BLE001 - an answer missing a field is no candidate
        return None


def row_task(task: Task, row: dict) -> tuple[Task, bool]:
    """The task a dataset row trains: the task itself, or, for a row with a `predictor` column (`teacher_steps`), that
    predictor of a program of several; True then, its input and outputs being JSON objects of that predictor's
    fields."""
    predictor = row.get("predictor")
    if predictor and task.steps:
        return task.step(predictor), True
    return task, False


def row_input(task: Task, row: dict) -> tuple[Task, str]:
    """The task a dataset row trains and its input as that task stores it."""
    step, stepped = row_task(task, row)
    return step, step.encode_inputs(json.loads(row["input"])) if stepped else row["input"]


def training_answers(task: Task, row: dict, outputs: tuple[str, ...] = ("output",)) -> dict[str, str] | None:
    """For each column in `outputs`, the answer the student learns (or learns to prefer) from a dataset row, as it
    writes it, through the predictor the row is of; None for a step that wrote an empty field: nothing to learn."""
    step, stepped = row_task(task, row)
    stored = {c: step.encode_outputs(json.loads(row[c])) if stepped else row[c] for c in outputs}
    if any(v is None for v in stored.values()):
        return None
    return {c: training_completion(step, v) for c, v in stored.items()}


def training_example(task: Task, row: dict, outputs: tuple[str, ...] = ("output",)) -> dict | None:
    """A dataset row as the student trains on it: its `input`, the `prompt` the student reads and its answers
    (`training_answers`); None when it has nothing to learn."""
    answers = training_answers(task, row, outputs)
    if answers is None:
        return None
    step, text = row_input(task, row)
    return {"input": text, **answers, "prompt": training_prompt(step, text)}


def training_examples(task: Task, rows: list[dict], outputs: tuple[str, ...] = ("output",)) -> list[dict]:
    """`training_example` of every row that has something to learn."""
    return [e for r in rows if (e := training_example(task, r, outputs)) is not None]


class Student(dspy.Module):
    def __init__(self, task: Task):
        super().__init__()
        self.task = task
        self.rewrite = dspy.Predict(student_signature(task))

    def forward(self, text: str) -> dspy.Prediction:
        """`text`: one stored input (a JSON object of the fields for a task of several input fields)."""
        with dspy.context(adapter=student_adapter(self.task)):  # the prompts it was trained on
            return self.rewrite(**self.task.input_values(text))


def student_program(program: dspy.Module, lm: dspy.LM | None = None) -> dspy.Module:
    """A copy of `program` as its distilled student runs it: every predictor on `lm` (None: the LM in context) and
    without demos, so it sends the messages the student was trained on (each predictor's own signature, demo-free).
    The program's LMs are shared with the copy's originals rather than copied (a local model is not duplicated)."""
    own = [(p, p.lm) for _, p in program.named_predictors()]
    try:
        for p, _ in own:
            p.lm = None
        copy = program.deepcopy()
    finally:
        for p, original in own:
            p.lm = original
    for _, p in copy.named_predictors():
        p.lm, p.demos = lm, []
    return copy


class ProgramStudent(dspy.Module):
    """A program of several predictors as the student: the user's program, each predictor on the LM in context (the
    distilled student), run on one stored input like `Student`."""

    def __init__(self, task: Task, program: dspy.Module):
        super().__init__()
        self.task = task
        self.program = student_program(program)

    def forward(self, text: str) -> dspy.Prediction:
        """The program's prediction; its `_steps` are each predictor's call (`program_steps`), which evaluation
        stores with the output, to compare the student with the teacher step by step."""
        from programs.teacher import program_steps

        with dspy.context(adapter=student_adapter(self.task), trace=[]):
            prediction = self.program(**self.task.input_values(text))
            prediction._steps = program_steps(self.program, dspy.settings.trace)
        return prediction
