"""The task model: what the teacher writes, what the critic judges, what the student is asked.

A task is data (instructions and field descriptions) from which the DSPy signatures are built, so a new task needs
no new code path. The built-in tasks are in `programs.builtin_tasks`, where a task comes from (a name, a TOML file,
a Python reference: `get_task`) in `programs.task_sources`, and a DSPy program read as a task in
`programs.program_tasks`; this module names them too, so `from programs.tasks import HUMOR, get_task` works.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from store.errors import UserError

if TYPE_CHECKING:
    import dspy


class TaskError(UserError, ValueError):
    """A bad task spec, file or definition: one line for the user."""


@dataclass(frozen=True)
class Task:
    name: str
    teacher_instruction: str  # may use {n} and {numbered} ("1., 2., 3."); write literal braces as {{ }}
    critic_instruction: str
    student_instruction: str
    input_desc: str = ""  # the one input `text` (tasks without input_fields)
    output_desc: str = ""  # the one output `paraphrase` (tasks without output_fields)
    bundled_inputs: Path | None = None
    # worked examples shown to the teacher (DSPy demos): {"text": ..., "outputs": [...]}. The paper's 70B teacher
    # was zero-shot; the small embedded teachers copy the input back without one (measured on Qwen2.5-Coder-0.5B).
    teacher_demos: tuple[dict, ...] = ()
    # inputs for `--ood N` (out-of-distribution evaluation); None: the rows of the inputs whose split is 'ood'
    ood_inputs: Path | None = None
    # other phrasings of critic_instruction, for a critic that averages over rubrics (`critic_rubrics = N`)
    critic_rubrics: tuple[str, ...] = ()
    # a task of any signature: (name, description) of each input and output field, in order. Empty: one input `text`
    # (input_desc) and one output `paraphrase` (output_desc), the built-in tasks' fields and prompts
    input_fields: tuple[tuple[str, str], ...] = ()
    output_fields: tuple[tuple[str, str], ...] = ()
    # the DSPy program the task was made from (`Task.from_program`): it teaches, N runs per input; not part of the
    # task's value (its state names the teacher's candidates instead)
    program: Any = field(default=None, compare=False, repr=False)
    # a program of several predictors: (predictor name, the task of that predictor alone), in the order the program
    # sets them; the last one writes the task's outputs. Empty for a program of one predictor and every other task.
    steps: tuple[tuple[str, Task], ...] = ()
    # the fields that are not text: (name, type as a DSPy signature string writes it: "int", "list[str]",
    # "Literal['bug', 'billing']"). The store keeps their values as JSON; the adapter formats and parses them.
    field_types: tuple[tuple[str, str], ...] = ()
    # pipeline settings this task's own dev split chose (config key, value): beneath a profile, a config file and
    # flags, so they change only what the user left at the default. Empty for every task not measured here.
    defaults: tuple[tuple[str, Any], ...] = field(default=(), compare=False)
    # the DSPy adapter whose prompts the student learns and answers (`programs.student.ADAPTERS`): "labeled" for the
    # command line's tasks (the prompts the embedded models read best); "chat", DSPy's default ChatAdapter, for a
    # user's program (`CriticDistill`), so the distilled program answers under the adapter it will run under
    student_adapter: str = "labeled"

    def __post_init__(self):
        if isinstance(self.bundled_inputs, str):
            object.__setattr__(self, "bundled_inputs", Path(self.bundled_inputs))
        if isinstance(self.ood_inputs, str):
            object.__setattr__(self, "ood_inputs", Path(self.ood_inputs))
        if isinstance(self.teacher_demos, list):
            object.__setattr__(self, "teacher_demos", tuple(self.teacher_demos))
        if isinstance(self.critic_rubrics, list):
            object.__setattr__(self, "critic_rubrics", tuple(self.critic_rubrics))
        for f in ("input_fields", "output_fields"):
            value = getattr(self, f)
            if isinstance(value, dict):
                value = tuple(value.items())
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            object.__setattr__(self, f, value)
        if isinstance(self.field_types, (list, dict)):
            object.__setattr__(self, "field_types", tuple(self.field_types.items() if isinstance(self.field_types, dict)
                                                          else (tuple(t) for t in self.field_types)))
        if isinstance(self.steps, (list, dict)):
            object.__setattr__(self, "steps", tuple(self.steps.items() if isinstance(self.steps, dict) else
                                                    (tuple(s) for s in self.steps)))
        self.validate()

    def validate(self) -> Task:
        """Raise TaskError (one line) for a definition no stage could use; return the task."""
        where = f"task {self.name!r}" if isinstance(self.name, str) and self.name.strip() else "task"
        needed = ["name", "teacher_instruction", "critic_instruction", "student_instruction"]
        needed += [] if self.input_fields else ["input_desc"]
        needed += [] if self.output_fields else ["output_desc"]
        for f in needed:
            value = getattr(self, f)
            if not isinstance(value, str) or not value.strip():
                raise TaskError(f"{where}: {f} must be a non-empty string, got {value!r}")
        for f in ("input_fields", "output_fields"):
            fields = getattr(self, f)
            if not isinstance(fields, tuple) or not all(
                    isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, str) for v in x) for x in fields):
                raise TaskError(f"{where}: {f} must be (name, description) pairs")
            for name, _ in fields:
                if not _FIELD.match(name) or name in RESERVED_FIELDS:
                    raise TaskError(f"{where}: bad field name {name!r}: use a lowercase identifier such as "
                                    "question or context, not " + ", ".join(RESERVED_FIELDS))
        names = [n for n, _ in self.input_fields + self.output_fields]
        if len(set(names)) != len(names):
            raise TaskError(f"{where}: a field name is used twice ({', '.join(names)})")
        if self.student_adapter not in ("labeled", "chat"):
            raise TaskError(f"{where}: student_adapter must be 'labeled' or 'chat', got {self.student_adapter!r}")
        for n, t in self.field_types:
            if n not in self.inputs and n not in self.outputs:
                raise TaskError(f"{where}: field_types names {n!r}, which is not one of its fields")
            parse_type(t, where)

        if "\n" in self.name or len(self.name) > 100:
            raise TaskError(f"{where}: name must be one short line")
        try:
            self.teacher_instruction.format(n=3, numbered="1., 2., 3.")
        except KeyError as e:
            raise TaskError(f"{where}: teacher_instruction has an unknown placeholder {{{e.args[0]}}}; use {{n}} and "
                            "{numbered}, and write a literal brace as {{ or }}") from e
        except IndexError as e:
            raise TaskError(f"{where}: teacher_instruction has a positional placeholder ({{}} or {{0}}); use {{n}} and "
                            "{numbered}, and write a literal brace as {{ or }}") from e
        except ValueError as e:
            raise TaskError(f"{where}: teacher_instruction is not a valid format string ({e}); write a literal brace "
                            "as {{ or }}") from e
        if not all(isinstance(r, str) and r.strip() for r in self.critic_rubrics):
            raise TaskError(f"{where}: critic_rubrics must be a list of non-empty strings")
        for f in ("bundled_inputs", "ood_inputs"):
            if getattr(self, f) is not None and not isinstance(getattr(self, f), Path):
                raise TaskError(f"{where}: {f} must be a path or None, got {getattr(self, f)!r}")
        keys = {*self.inputs, "outputs"}
        for i, d in enumerate(self.teacher_demos, 1):
            if not isinstance(d, dict) or set(d) != keys:
                raise TaskError(f"{where}: teacher demo {i} must have exactly the keys {', '.join(sorted(keys))}")
            outs = d["outputs"]
            if (not all(isinstance(d[k], str) and d[k].strip() for k in self.inputs)
                    or not isinstance(outs, (list, tuple))
                    or not outs or not all(isinstance(o, str) and o.strip() for o in outs)):
                fields = "a text" if list(self.inputs) == ["text"] else " and ".join(self.inputs)
                raise TaskError(f"{where}: teacher demo {i} needs {fields} and a non-empty list of output strings")
        return self

    # -- a program of several predictors -------------------------------------------------------------------------

    def step(self, predictor: str) -> Task:
        """The task of one of the program's predictors alone (its own fields and instructions)."""
        for name, task in self.steps:
            if name == predictor:
                return task
        raise TaskError(f"task {self.name!r} has no predictor {predictor!r} (it has {', '.join(dict(self.steps))})")

    @property
    def final_step(self) -> Task | None:
        """The task of the predictor that writes the program's outputs, None for a task of one predictor: what the
        feedback objectives train, on the inputs the teacher's own run gave that predictor."""
        return self.steps[-1][1] if self.steps else None

    # -- fields ------------------------------------------------------------------------------------------------------

    @property
    def inputs(self) -> dict[str, str]:
        """Input field name -> description, in order."""
        return dict(self.input_fields) or {"text": self.input_desc}

    @property
    def outputs(self) -> dict[str, str]:
        """Output field name -> description, in order."""
        return dict(self.output_fields) or {"paraphrase": self.output_desc}

    @property
    def output_name(self) -> str:
        return next(iter(self.outputs))

    def encode_inputs(self, values: dict[str, str]) -> str:
        """One input as the store's text: the value itself for a one-field task (so the built-in tasks' inputs and
        ids are what they always were), else a JSON object of the fields in order."""
        if len(self.inputs) == 1:
            name = next(iter(self.inputs))
            return values[name] if name not in self.types else json.dumps(values[name], ensure_ascii=False)
        return json.dumps({name: values[name] for name in self.inputs}, ensure_ascii=False)

    def input_values(self, text: str) -> dict[str, str]:
        """The fields of a stored input (`encode_inputs` undone), as the DSPy programs take them."""
        return self._decode(text, self.inputs, "input")

    def _decode(self, text: str, fields: dict[str, str], what: str) -> dict[str, str]:
        try:
            if len(fields) == 1:
                name = next(iter(fields))
                return {name: json.loads(text) if name in self.types else text}
            data = json.loads(text)
            return {name: data[name] for name in fields}
        except (ValueError, TypeError, KeyError) as e:
            raise TaskError(f"task {self.name!r}: the {what} {text[:60]!r} is not a JSON object of "
                            f"{', '.join(fields)}") from e

    def encode_outputs(self, values: Any) -> str | None:
        """One output (a dict or a prediction) as the store's text, like `encode_inputs`; None when a field is
        missing or empty (nothing to learn from or to judge)."""
        get = values.get if isinstance(values, dict) else lambda n: getattr(values, n, None)
        fields = {n: get(n) for n in self.outputs}
        if not all(v is not None if n in self.types else isinstance(v, str) and v.strip() for n, v in fields.items()):
            return None
        fields = {n: _jsonable(v.strip() if isinstance(v, str) else v) for n, v in fields.items()}
        if len(fields) == 1:
            (name, value), = fields.items()
            return value if name not in self.types else json.dumps(value, ensure_ascii=False)
        return json.dumps(fields, ensure_ascii=False)

    def output_values(self, text: str) -> dict[str, str]:
        """The fields of a stored output (`encode_outputs` undone)."""
        return self._decode(text, self.outputs, "output")

    def render_output(self, text: str) -> str:
        """A stored output as the critic reads one candidate: the value itself, or a `Label: value` line a field."""
        from programs.adapter import label

        values = self.output_values(text)
        if len(values) == 1:
            return _shown(next(iter(values.values())))
        return "\n".join(f"{label(n)}: {_shown(v)}" for n, v in values.items())

    def output_text(self, text: str) -> str:
        """A stored output as plain words (its fields' values joined), for the critic-free checks."""
        return "\n".join(map(_shown, self.output_values(text).values()))

    def input_text(self, text: str) -> str:
        """A stored input as plain words, its fields' values joined: what the critic-free checks (length ratio,
        meaning) compare an output with, rather than the JSON around them."""
        return "\n".join(map(_shown, self.input_values(text).values()))

    @functools.cached_property  # read per field and per value: parsed once (the task is frozen)
    def types(self) -> dict[str, Any]:
        """Field name -> its type, for the fields that are not text."""
        return {n: parse_type(t) for n, t in self.field_types}

    def _input_spec(self) -> dict:
        return {name: (self.types.get(name, str), desc) for name, desc in self.inputs.items()}

    def _output_spec(self) -> dict:
        return {name: (self.types.get(name, str), desc) for name, desc in self.outputs.items()}

    def teacher_signature(self, n: int) -> type[dspy.Signature]:
        """literal text -> n outputs as a numbered list (the paper's format: one call, N candidates)."""
        numbered = ", ".join(f"{i}." for i in range(1, n + 1))
        return _make(
            self.teacher_instruction.format(n=n, numbered=numbered),
            inputs=self._input_spec(),
            outputs={self.teacher_output: (str, f"a list numbered {numbered}")},
            name="TeacherSignature",
        )

    @property
    def prompt_format(self) -> str | None:
        """A hash of the named fields, their descriptions and types (and each predictor's, for a program of several),
        which shape the student's prompts and answers beside its instruction (a trainer's identity takes it); None
        for a task of the built-in fields `text` -> `paraphrase`, whose runs keep the ids they had."""
        if not self.input_fields and not self.output_fields:
            return None
        steps = [[n, t.student_instruction, t.input_fields, t.output_fields, t.field_types] for n, t in self.steps]
        data = json.dumps([self.input_fields, self.output_fields, *([steps] if steps else []),
                           *([self.field_types] if self.field_types and not steps else [])], ensure_ascii=False)
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def check_list_teacher(self) -> None:
        """The task's own teacher writes a numbered list of one output each: a task of several output fields needs
        a DSPy program to teach instead."""
        if len(self.outputs) > 1:
            raise TaskError(f"task {self.name!r} has {len(self.outputs)} output fields: its teacher is a DSPy program "
                            "(program = ... in its task file, or CriticDistill's teacher), not a numbered list")
        if self.field_types:
            raise TaskError(f"task {self.name!r} has fields that are not text ({', '.join(dict(self.field_types))}): "
                            "its teacher is a DSPy program (program = ... in its task file, or CriticDistill's "
                            "teacher), not a numbered list")

    @property
    def teacher_output(self) -> str:
        """The teacher's numbered-list field: the output's name made plural (`paraphrase` -> `paraphrases`)."""
        return self.output_name + "s"

    @property
    def rubrics(self) -> tuple[str, ...]:
        """The critic's instruction, then its other phrasings."""
        return (self.critic_instruction, *self.critic_rubrics)

    def critic_signature(self, mode: str = "reason-first", rubric: int = 0) -> type[dspy.Signature]:
        """input, candidate 1, candidate 2 -> a short reason, then the choice (the paper's pairwise critic);
        `choice-first` asks for the choice alone, read from its first token."""
        outputs = {"reason": (str, "one short sentence"), "choice": (Literal["1", "2"], "1 or 2")}
        if mode == "choice-first":
            outputs.pop("reason")
        name, desc = self._candidate
        return _make(
            self.rubrics[rubric],
            inputs=self._input_spec() | {f"{name}_1": (str, desc), f"{name}_2": (str, desc)},
            outputs=outputs,
            name="CriticSignature",
        )

    @property
    def _candidate(self) -> tuple[str, str]:
        """The critic's name and description for one candidate: the output field, or `response` for several."""
        if len(self.outputs) == 1:
            return next(iter(self.outputs.items()))
        return "response", "the response, field by field: " + ", ".join(self.outputs)

    def candidate_fields(self, first: str, second: str) -> dict[str, str]:
        """The critic's two candidate fields (`paraphrase_1`, `paraphrase_2` for the built-in tasks), every output
        field of each rendered."""
        name = self._candidate[0]
        return {f"{name}_1": self.render_output(first), f"{name}_2": self.render_output(second)}

    def pointwise_signature(self) -> type[dspy.Signature]:
        """input, one candidate -> a 1-5 score: no second candidate, so no position to lean to."""
        return _make(
            f"Rate the output from 1 (poor) to 5 (excellent). The standard: {self.critic_instruction}",
            inputs=self._input_spec() | {"output": (str, self._candidate[1])},
            outputs={"score": (Literal["1", "2", "3", "4", "5"], "1, 2, 3, 4 or 5")},
            name="PointwiseSignature",
        )


_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")
# names the prompts use for something else: the critic's candidates and score, the teacher's list
RESERVED_FIELDS = ("output", "outputs", "reason", "choice", "score", "candidates", "response")


def parse_signature(spec: str, descriptions: dict[str, str] | None = None) -> tuple[tuple, tuple]:
    """`"question, context -> answer"` as (input_fields, output_fields), each field's description from
    `descriptions` (default: its name)."""
    descriptions = descriptions or {}
    if not isinstance(spec, str) or spec.count("->") != 1:
        raise TaskError(f"signature {spec!r} must look like \"question, context -> answer\"")
    sides = [[f.strip() for f in side.split(",") if f.strip()] for side in spec.split("->")]
    if not sides[0] or not sides[1]:
        raise TaskError(f"signature {spec!r} needs at least one input and one output field")
    unknown = sorted(set(descriptions) - set(sides[0]) - set(sides[1]))
    if unknown:
        raise TaskError(f"field description(s) for {', '.join(unknown)}, which signature {spec!r} does not name")
    inputs, outputs = (tuple((n, descriptions.get(n, n.replace("_", " "))) for n in side) for side in sides)
    return inputs, outputs


def _make(instructions: str, *, inputs: dict, outputs: dict, name: str) -> type[dspy.Signature]:
    import dspy

    spec = {k: (t, dspy.InputField(desc=d)) for k, (t, d) in inputs.items()}
    spec |= {k: (t, dspy.OutputField(desc=d)) for k, (t, d) in outputs.items()}
    return dspy.Signature(spec, instructions, signature_name=name)


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "tuple": tuple,
          "Literal": Literal, "Optional": Optional, "Union": Union, "Any": Any, "None": None}
_TYPE_NODES = (ast.Expression, ast.Name, ast.Subscript, ast.Tuple, ast.Constant, ast.Load, ast.BinOp, ast.BitOr)


@functools.lru_cache(maxsize=256)
def parse_type(name: str, where: str = "task") -> Any:
    """A field type as a signature string writes it (`int`, `list[str]`, `Literal['a', 'b']`): built from the JSON
    types and `typing`'s Literal / Optional / Union only, never from names in the caller's scope (DSPy's own
    signature parser looks those up, which would make a stored type mean whatever is in scope)."""
    try:
        tree = ast.parse(name, mode="eval")
    except SyntaxError as e:
        raise TaskError(f"{where}: cannot read the field type {name!r}") from e
    odd = [n for n in ast.walk(tree) if not isinstance(n, _TYPE_NODES) or isinstance(n, ast.Name) and n.id not in _TYPES]
    if odd:
        what = odd[0].id if isinstance(odd[0], ast.Name) else type(odd[0]).__name__
        raise TaskError(f"{where}: the field type {name!r} uses {what}; types are built from "
                        f"{', '.join(k for k in _TYPES if k != 'None')}")
    return eval(compile(tree, "<field type>", "eval"), {"__builtins__": {}}, dict(_TYPES))  # noqa: S307 - checked above


def type_name(annotation: Any, where: str) -> str:
    """A field's type as a string `parse_type` reads back as the same type (what the store and the run's config
    record); a type that does not round-trip (a class of its own, a pydantic model) is one line."""
    name = annotation.__name__ if isinstance(annotation, type) else repr(annotation).replace("typing.", "")
    try:
        if parse_type(name, where) == annotation:
            return name
    except TaskError:
        pass
    raise TaskError(f"{where} is a {name}: text, numbers, booleans, lists, dicts and Literal choices can be "
                    "distilled (the store keeps them as JSON)")


def _jsonable(value: Any) -> Any:
    """An output value as JSON holds it (a pydantic value, a tuple: their plain form)."""
    return json.loads(json.dumps(value, ensure_ascii=False, default=lambda v: v.model_dump()
                                 if hasattr(v, "model_dump") else list(v) if isinstance(v, (set, tuple)) else str(v)))


def _shown(value: Any) -> str:
    """A field's value in the critic's prompt or a check, as the adapter shows it to the student: text as it is, a
    list or an object as JSON, a number or a boolean as Python writes it."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)


def student_signature(task: Task) -> type[dspy.Signature]:
    """input -> one output: what the distilled student is trained on and asked, through the same adapter."""
    return _make(task.student_instruction, inputs=task._input_spec(), outputs=task._output_spec(),
                 name="StudentSignature")
