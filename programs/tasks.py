"""Task definitions: what the teacher writes, what the critic judges, what the student is asked.

A task is data (instructions and field descriptions) from which the DSPy signatures are built, so a new task needs
no new code path. Humor paraphrase, the paper's task, is the first one; plain -> formal rewriting is the second.
`get_task` takes a built-in name, a TOML file, or a Python reference (`package.module:ATTR`, `path/file.py:ATTR`);
docs/tasks.md walks through writing one.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import json
import re
import importlib.util
import sys
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from store.cli import UserError

if TYPE_CHECKING:
    import dspy

DATA = Path(__file__).parent / "data"


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

    @classmethod
    def from_program(cls, program: Any, *, critic_instruction: str, critic_rubrics: tuple[str, ...] = (),
                     name: str | None = None, keep_program: bool = False, **more: Any) -> Task:
        """The task a DSPy program defines, with the critic's rubric; `keep_program` keeps the program as the task's
        teacher. One predictor: its signature's fields and instructions. Several: the program's inputs (the
        predictors' inputs no predictor writes) and the last predictor's outputs, with a step per predictor."""
        what = type(program).__name__
        predictors = program.named_predictors() if hasattr(program, "named_predictors") else None
        if predictors is None:
            raise TaskError(f"{getattr(program, '__name__', what)} is a {what}, not a DSPy program (a dspy.Module)")
        if not predictors:
            raise TaskError(f"{what} has no predictors (dspy.Predict, dspy.ChainOfThought, ...): nothing to distill")
        try:
            steps = [(n, _predictor_task(p, what, n, critic_instruction, critic_rubrics)) for n, p in predictors]
            if len(steps) == 1:
                task = steps[0][1]
                return replace(task, name=name or what.lower(), program=program if keep_program else None, **more)
            task_name = name or what.lower()
            steps = [(n, replace(t, name=f"{task_name}.{n}")) for n, t in steps]
            final = steps[-1][1]
            inputs = _program_inputs(program, steps)
            types = {n: t for _, step in steps for n, t in step.field_types}
            return cls(
                name=task_name, teacher_instruction=final.teacher_instruction,
                critic_instruction=critic_instruction, critic_rubrics=tuple(critic_rubrics),
                student_instruction=final.student_instruction, input_fields=inputs, output_fields=final.output_fields,
                field_types=tuple((n, types[n]) for n, _ in inputs + final.output_fields if n in types),
                program=program if keep_program else None, steps=tuple(steps), **more)
        except TaskError as e:
            raise TaskError(f"{what}: {e}") from e

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
    critic_rubrics=(
        "Which paraphrase is funnier and more natural, while saying the same thing as the input text?",
        "Pick the paraphrase a person would enjoy more: witty and fluent, with the meaning of the input text kept.",
    ),
    student_instruction="Rewrite the sentence as a humorous paraphrase with the same meaning.",
    # the 1.5B critic is blind to lost meaning and padding (docs/critic.md): on the dev split an independent rater
    # preferred critic-curated imitation behind a meaning floor to imitation 76.9% of decided pairs, and DPO 27.6%
    # (docs/results/humor-guards). On formal, where the critic can judge, DPO unguarded stays the default.
    defaults=(("objective", "curated"), ("meaning_floor", 0.75), ("length_control", True)),
    input_desc="a literal sentence",
    output_desc="a humorous paraphrase of the text",
    bundled_inputs=DATA / "humor_inputs.jsonl",
    ood_inputs=DATA / "ood_inputs.jsonl",
    teacher_demos=({
        "text": "Suddenly a big gust of wind came and blew my dress up around my ears!",
        "outputs": ["Oops! A strong breeze came and gave me an impromptu Marilyn Monroe moment.",  # the paper's example
                    "The wind decided my dress looked better as a scarf, right up around my ears!",
                    "A sudden gust turned my dress into a parachute, and I very nearly took off."],
    },),
)

FORMAL = Task(
    name="formal",
    teacher_instruction=(
        "Rewrite the input text in {n} different formal and polished ways with the exact same meaning. "
        "Format the rewrites as a list numbered as {numbered} and write nothing else."
    ),
    critic_instruction=(
        "Choose the better rewrite, based on how formal and polished it sounds, "
        "while keeping the meaning of the input text."
    ),
    critic_rubrics=(
        "Which rewrite is more formal and polished, while saying the same thing as the input text?",
        "Pick the rewrite that would suit a formal letter best, with the meaning of the input text kept.",
    ),
    student_instruction="Rewrite the sentence in a formal, polished style with the same meaning.",
    input_desc="a casual, informal sentence",
    output_desc="a formal rewrite of the text",
    bundled_inputs=DATA / "formal_inputs.jsonl",
    ood_inputs=DATA / "formal_ood_inputs.jsonl",
    teacher_demos=({
        "text": "hey, can't make it tonight, something came up at work, sorry!!",
        "outputs": ["I regret that I will be unable to attend this evening, as a matter has arisen at work.",
                    "Please accept my apologies; an unexpected work commitment prevents me from attending tonight.",
                    "Unfortunately, something has come up at work, so I will not be able to join you this evening."],
    },),
)

TASKS: dict[str, Task] = {HUMOR.name: HUMOR, FORMAL.name: FORMAL}

REQUIRED_KEYS = ("teacher_instruction", "critic_instruction", "student_instruction", "input_desc", "output_desc")
OPTIONAL_KEYS = ("name", "inputs", "ood_inputs", "demos", "critic_rubrics", "signature", "fields", "program")
# a task file naming a program takes the fields and the instructions from it: these keys would say them twice
PROGRAM_DEFINES = ("signature", "fields", "teacher_instruction", "student_instruction", "input_desc", "output_desc",
                   "demos")
SIGNATURE_KEYS = ("signature", "fields")  # with a signature, input_desc and output_desc give way to [fields]


def get_task(spec: str | Task) -> Task:
    """A task from a built-in name, a `.toml` file, or a Python reference `package.module:ATTR` / `file.py:ATTR`.

    Raises TaskError with a one-line message for anything that does not give a usable task.
    """
    if isinstance(spec, Task):
        return spec.validate()
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError(f"task must be a name, a .toml file or module:ATTR, got {spec!r}")
    spec = spec.strip()
    if spec in TASKS:
        return TASKS[spec]
    if spec.lower().endswith(".toml"):
        return load_toml_task(spec)
    if ":" in spec:
        return load_python_task(spec)
    hint = " (a file? task files end in .toml)" if Path(spec).expanduser().is_file() else ""
    raise TaskError(f"unknown task {spec!r}{hint}; use a built-in task ({', '.join(TASKS)}), a FILE.toml, "
                    "or a Python reference package.module:ATTR or path/to/file.py:ATTR")


def _file_error(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_toml_task(path: str | Path) -> Task:
    """A task from a TOML file: the Task fields as keys, `inputs` (and `ood_inputs`) relative to the file,
    `[[demos]]` tables with `text` and `outputs`; `name` defaults to the file's stem."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TaskError(f"task file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise TaskError(f"{p}: not valid TOML ({_file_error(e)})") from e
    except OSError as e:
        raise TaskError(f"cannot read {p}: {e.strerror or e}") from e
    unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise TaskError(f"{p}: unknown key(s) {', '.join(unknown)}; known: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    if "program" in data:
        return _program_task(p, data)
    if "fields" in data and "signature" not in data:
        raise TaskError(f"{p}: [fields] describes a signature's fields; add signature = \"question, context -> "
                        "answer\"")
    required = [k for k in REQUIRED_KEYS if "signature" not in data or k not in ("input_desc", "output_desc")]
    missing = [k for k in required if k not in data]
    if missing:
        raise TaskError(f"{p}: missing required key(s) {', '.join(missing)}")
    values: dict[str, Any] = {k: data[k] for k in REQUIRED_KEYS if k in data}
    values["name"] = data.get("name", p.stem)
    if "signature" in data:
        fields = data.get("fields", {})
        if not isinstance(fields, dict) or not all(isinstance(v, str) and v.strip() for v in fields.values()):
            raise TaskError(f"{p}: [fields] must map each field name to its description")
        try:
            values["input_fields"], values["output_fields"] = parse_signature(data["signature"], fields)
        except TaskError as e:
            raise TaskError(f"{p}: {e}") from e
    values |= _files(p, data)
    demos = data.get("demos", [])
    if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
        raise TaskError(f"{p}: demos must be [[demos]] tables with text and outputs")
    keys = [n for n, _ in values.get("input_fields", ())] or ["text"]
    keys.append("outputs")
    for i, d in enumerate(demos, 1):
        extra, lacking = sorted(set(d) - set(keys)), [k for k in keys if k not in d]
        if extra:
            raise TaskError(f"{p}: [[demos]] {i} has unknown key(s) {', '.join(extra)}; a demo has "
                            f"{' and '.join(keys)} (task keys go above the first [[demos]] header)")
        if lacking:
            raise TaskError(f"{p}: [[demos]] {i} lacks {' and '.join(lacking)}")
    values["teacher_demos"] = tuple(dict(d) for d in demos)
    values["critic_rubrics"] = _rubrics(p, data)
    try:
        return Task(**values)
    except TaskError as e:
        raise TaskError(f"{p}: {e}") from e


def _files(p: Path, data: dict) -> dict[str, Path]:
    """`inputs` and `ood_inputs` of a task file, relative to it."""
    values = {}
    for k, field_name in (("inputs", "bundled_inputs"), ("ood_inputs", "ood_inputs")):
        if k in data:
            if not isinstance(data[k], str) or not data[k].strip():
                raise TaskError(f"{p}: {k} must be a file path (relative to the task file)")
            f = (p.parent / Path(data[k]).expanduser()).resolve()
            if not f.is_file():
                raise TaskError(f"{p}: {k} file not found: {f}")
            values[field_name] = f
    return values


def _rubrics(p: Path, data: dict) -> tuple[str, ...]:
    rubrics = data.get("critic_rubrics", [])
    if not isinstance(rubrics, list) or not all(isinstance(r, str) and r.strip() for r in rubrics):
        raise TaskError(f"{p}: critic_rubrics must be a list of non-empty strings")
    return tuple(rubrics)


def _program_task(p: Path, data: dict) -> Task:
    """A task file that names a DSPy program (`program = "file.py:ATTR"`, relative to the file): the program gives
    the fields and instructions and teaches; the file gives the critic's rubric and the inputs."""
    twice = [k for k in PROGRAM_DEFINES if k in data]
    if twice:
        raise TaskError(f"{p}: {', '.join(twice)} come from the program ({data['program']}); leave them out")
    if "critic_instruction" not in data:
        raise TaskError(f"{p}: missing required key critic_instruction (the critic's rubric)")
    spec = data["program"]
    if not isinstance(spec, str) or ":" not in spec:
        raise TaskError(f"{p}: program must be path/to/file.py:ATTR or package.module:ATTR, got {spec!r}")
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        spec = f"{(p.parent / Path(target).expanduser()).resolve()}:{attr}"
    obj = load_python_object(spec)
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as e:  # noqa: BLE001 - the user's class failed to build: say so in one line
            raise TaskError(f"{p}: cannot build {attr}() ({type(e).__name__}: {_file_error(e)})") from e
    try:
        return Task.from_program(obj, critic_instruction=data["critic_instruction"], critic_rubrics=_rubrics(p, data),
                                 name=data.get("name", p.stem), keep_program=True, **_files(p, data))
    except TaskError as e:
        raise TaskError(f"{p}: {e}") from e


def load_python_task(spec: str) -> Task:
    """A `Task` object named by `package.module:ATTR` (importable from the current folder) or `path/to/file.py:ATTR`."""
    obj = load_python_object(spec)
    if hasattr(obj, "named_predictors"):  # a dspy.Module, or its class
        raise TaskError(f"{spec} is a DSPy program: name it in a task file with the critic's rubric "
                        f"(program = \"{spec}\", critic_instruction = \"...\"; docs/tasks.md), or distill it in "
                        "Python with CriticDistill (docs/python-api.md)")
    if not isinstance(obj, Task):
        raise TaskError(f"{spec} is a {type(obj).__name__}, not a programs.tasks.Task")
    return obj.validate()


def load_python_object(spec: str) -> Any:
    """The object `package.module:ATTR` or `path/to/file.py:ATTR` names (a file is loaded once per content)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise TaskError(f"bad task reference {spec!r}: use package.module:ATTR or path/to/file.py:ATTR")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise TaskError(f"task file not found: {path}")
        name = _module_name(path)  # loaded once per process and file content (build_config and run both ask)
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 - the user's file failed to run: say where, in one line
                del sys.modules[name]
                raise TaskError(f"{path}: cannot load ({type(e).__name__}: {_file_error(e)})") from e
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise TaskError(f"cannot import {target!r} for task {spec!r} ({_file_error(e)}; run from the folder that "
                            "holds the package, or use path/to/file.py:ATTR)") from e
        except Exception as e:  # noqa: BLE001
            raise TaskError(f"cannot import {target!r} for task {spec!r} ({type(e).__name__}: {_file_error(e)})") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TaskError(f"{target} has no attribute {attr!r} (task {spec!r})")
        obj = getattr(obj, part)
    return obj


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + path.read_bytes()).hexdigest()[:12]
    return f"_critic_distill_task_{digest}"


def _predictor_task(predictor: Any, what: str, name: str, critic_instruction: str,
                    critic_rubrics: tuple[str, ...]) -> Task:
    """One predictor as a task: its fields, described as `LabeledAdapter` shows them (so a student's training prompt
    is the program's own), and its instructions."""
    from programs.adapter import describe

    signature = predictor.signature
    of = "" if name == "self" else f" of predictor {name}"
    types = tuple((n, type_name(f.annotation, f"field {n}{of}"))
                  for n, f in {**signature.input_fields, **signature.output_fields}.items() if f.annotation is not str)
    instructions = signature.instructions.strip()
    return Task(name=name, teacher_instruction=instructions.replace("{", "{{").replace("}", "}}"),  # the program teaches
                critic_instruction=critic_instruction, critic_rubrics=tuple(critic_rubrics),
                student_instruction=instructions,
                input_fields=tuple((n, describe(f, n.replace("_", " "))) for n, f in signature.input_fields.items()),
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
