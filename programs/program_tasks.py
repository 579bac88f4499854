"""A DSPy program read as a task: each predictor's fields, types and instructions, and the inputs of a program of
several predictors (`Task.from_program`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from programs.tasks import Task, TaskError, type_name

def from_program(program: Any, *, critic_instruction: str, critic_rubrics: tuple[str, ...] = (),
                 name: str | None = None, keep_program: bool = False, **more: Any) -> Task:
    """The task a DSPy program defines, with the critic's rubric; `keep_program` keeps the program as the task's
    teacher. One predictor: its signature's fields and instructions. Several: the program's inputs (the predictors'
    inputs no predictor writes) and the last predictor's outputs, with a step per predictor."""
    what = type(program).__name__
    predictors = program.named_predictors() if hasattr(program, "named_predictors") else None
    if predictors is None:
        raise TaskError(f"{getattr(program, '__name__', what)} is a {what}, not a DSPy program (a dspy.Module)")
    if not predictors:
        raise TaskError(f"{what} has no predictors (dspy.Predict, dspy.ChainOfThought, ...): nothing to distill")
    try:
        adapter = more.get("student_adapter", "labeled")  # every predictor's prompts: one adapter
        steps = [(n, replace(_predictor_task(p, what, n, critic_instruction, critic_rubrics, adapter),
                             student_adapter=adapter)) for n, p in predictors]
        if len(steps) == 1:
            task = steps[0][1]
            return replace(task, name=name or what.lower(), program=program if keep_program else None, **more)
        task_name = name or what.lower()
        steps = [(n, replace(t, name=f"{task_name}.{n}")) for n, t in steps]
        final = steps[-1][1]
        inputs = _program_inputs(program, steps)
        types = {n: t for _, step in steps for n, t in step.field_types}
        return Task(
            name=task_name, teacher_instruction=final.teacher_instruction,
            critic_instruction=critic_instruction, critic_rubrics=tuple(critic_rubrics),
            student_instruction=final.student_instruction, input_fields=inputs, output_fields=final.output_fields,
            field_types=tuple((n, types[n]) for n, _ in inputs + final.output_fields if n in types),
            program=program if keep_program else None, steps=tuple(steps), **more)
    except TaskError as e:
        raise TaskError(f"{what}: {e}") from e


def _predictor_task(predictor: Any, what: str, name: str, critic_instruction: str,
                    critic_rubrics: tuple[str, ...], adapter: str = "labeled") -> Task:
    """One predictor as a task: its fields, described as the student's adapter shows them (so a student's training
    prompt is the program's own: `LabeledAdapter`'s descriptions, or for ChatAdapter each field's own, DSPy's
    `${name}` placeholder included), and its instructions."""
    from programs.adapter import describe

    if adapter != "labeled":
        def describe(f: Any, default: str | None = None) -> str | None:  # noqa: F811 - the field's own, as declared
            extra = getattr(f, "json_schema_extra", None) or {}
            return extra.get("desc") if isinstance(extra, dict) else None

    signature = predictor.signature
    of = "" if name == "self" else f" of predictor {name}"
    types = tuple((n, type_name(f.annotation, f"field {n}{of}"))
                  for n, f in {**signature.input_fields, **signature.output_fields}.items() if f.annotation is not str)
    instructions = signature.instructions.strip()
    return Task(name=name, teacher_instruction=instructions.replace("{", "{{").replace("}", "}}"),  # the program teaches
                critic_instruction=critic_instruction, critic_rubrics=tuple(critic_rubrics),
                student_instruction=instructions,
                input_fields=tuple((n, describe(f, n.replace("_", " ")) or f"${{{n}}}")
                                   for n, f in signature.input_fields.items()),
                # a field without a description keeps DSPy's placeholder, which no prompt shows, as in the program
                output_fields=tuple((n, describe(f) or f"${{{n}}}") for n, f in signature.output_fields.items()),
                field_types=types)


def _program_inputs(program: Any, steps: list[tuple[str, Task]]) -> tuple[tuple[str, str], ...]:
    """The inputs of a program of several predictors: each predictor's inputs that no predictor writes, in order of
    first use; `forward`'s own parameters, where it names them, must be those."""
    import inspect

    written = {n for _, t in steps for n in t.outputs}
    fields: dict[str, str] = {}
    for _, t in steps:
        for n, desc in t.inputs.items():
            if n not in written:
                fields.setdefault(n, desc)
    forward = getattr(type(program), "forward", None)  # not via the instance: DSPy warns of a direct forward call
    if forward is None:
        raise TaskError("it has no forward method: write one that calls its predictors and returns the last one's "
                        "prediction")
    params = list(inspect.signature(forward).parameters.values())[1:]
    if not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        named = [p.name for p in params]
        if set(named) != set(fields):
            raise TaskError(f"forward takes ({', '.join(named)}), but the inputs its predictors read and none writes "
                            f"are ({', '.join(fields)}): they must be the same fields")
    if not fields:
        raise TaskError("every input of its predictors is written by another predictor: the program has no inputs")
    return tuple(fields.items())
