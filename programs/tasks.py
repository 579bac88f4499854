"""Task definitions: what the teacher writes, what the critic judges, what the student is asked.

A task is data (instructions and field descriptions) from which the DSPy signatures are built, so a new task needs
no new code path. Humor paraphrase, the paper's task, is the first one; plain -> formal rewriting is the second.
`get_task` takes a built-in name, a TOML file, or a Python reference (`package.module:ATTR`, `path/file.py:ATTR`);
docs/tasks.md walks through writing one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
    input_desc: str
    output_desc: str
    bundled_inputs: Path | None = None
    # worked examples shown to the teacher (DSPy demos): {"text": ..., "outputs": [...]}. The paper's 70B teacher
    # was zero-shot; the small embedded teachers copy the input back without one (measured on Qwen2.5-Coder-0.5B).
    teacher_demos: tuple[dict, ...] = ()
    # inputs for `--ood N` (out-of-distribution evaluation); None: the rows of the inputs whose split is 'ood'
    ood_inputs: Path | None = None
    # other phrasings of critic_instruction, for a critic that averages over rubrics (`critic_rubrics = N`)
    critic_rubrics: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.bundled_inputs, str):
            object.__setattr__(self, "bundled_inputs", Path(self.bundled_inputs))
        if isinstance(self.ood_inputs, str):
            object.__setattr__(self, "ood_inputs", Path(self.ood_inputs))
        if isinstance(self.teacher_demos, list):
            object.__setattr__(self, "teacher_demos", tuple(self.teacher_demos))
        if isinstance(self.critic_rubrics, list):
            object.__setattr__(self, "critic_rubrics", tuple(self.critic_rubrics))
        self.validate()

    def validate(self) -> Task:
        """Raise TaskError (one line) for a definition no stage could use; return the task."""
        where = f"task {self.name!r}" if isinstance(self.name, str) and self.name.strip() else "task"
        for f in ("name", "teacher_instruction", "critic_instruction", "student_instruction", "input_desc",
                  "output_desc"):
            value = getattr(self, f)
            if not isinstance(value, str) or not value.strip():
                raise TaskError(f"{where}: {f} must be a non-empty string, got {value!r}")
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
        for i, d in enumerate(self.teacher_demos, 1):
            if not isinstance(d, dict) or set(d) != {"text", "outputs"}:
                raise TaskError(f"{where}: teacher demo {i} must have exactly the keys text and outputs")
            outs = d["outputs"]
            if (not isinstance(d["text"], str) or not d["text"].strip() or not isinstance(outs, (list, tuple))
                    or not outs or not all(isinstance(o, str) and o.strip() for o in outs)):
                raise TaskError(f"{where}: teacher demo {i} needs a text and a non-empty list of output strings")
        return self

    def teacher_signature(self, n: int) -> type[dspy.Signature]:
        """literal text -> n outputs as a numbered list (the paper's format: one call, N candidates)."""
        numbered = ", ".join(f"{i}." for i in range(1, n + 1))
        return _make(
            self.teacher_instruction.format(n=n, numbered=numbered),
            inputs={"text": (str, self.input_desc)},
            outputs={"paraphrases": (str, f"a list numbered {numbered}")},
            name="TeacherSignature",
        )

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
        return _make(
            self.rubrics[rubric],
            inputs={"text": (str, self.input_desc), "paraphrase_1": (str, self.output_desc),
                    "paraphrase_2": (str, self.output_desc)},
            outputs=outputs,
            name="CriticSignature",
        )

    def pointwise_signature(self) -> type[dspy.Signature]:
        """input, one candidate -> a 1-5 score: no second candidate, so no position to lean to."""
        return _make(
            f"Rate the output from 1 (poor) to 5 (excellent). The standard: {self.critic_instruction}",
            inputs={"text": (str, self.input_desc), "output": (str, self.output_desc)},
            outputs={"score": (Literal["1", "2", "3", "4", "5"], "1, 2, 3, 4 or 5")},
            name="PointwiseSignature",
        )


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
OPTIONAL_KEYS = ("name", "inputs", "ood_inputs", "demos", "critic_rubrics")


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
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise TaskError(f"{p}: missing required key(s) {', '.join(missing)}")
    values: dict[str, Any] = {k: data[k] for k in REQUIRED_KEYS}
    values["name"] = data.get("name", p.stem)
    for k, field in (("inputs", "bundled_inputs"), ("ood_inputs", "ood_inputs")):
        if k in data:
            if not isinstance(data[k], str) or not data[k].strip():
                raise TaskError(f"{p}: {k} must be a file path (relative to the task file)")
            f = (p.parent / Path(data[k]).expanduser()).resolve()
            if not f.is_file():
                raise TaskError(f"{p}: {k} file not found: {f}")
            values[field] = f
    demos = data.get("demos", [])
    if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
        raise TaskError(f"{p}: demos must be [[demos]] tables with text and outputs")
    for i, d in enumerate(demos, 1):
        extra, lacking = sorted(set(d) - {"text", "outputs"}), [k for k in ("text", "outputs") if k not in d]
        if extra:
            raise TaskError(f"{p}: [[demos]] {i} has unknown key(s) {', '.join(extra)}; a demo has text and outputs "
                            "(task keys go above the first [[demos]] header)")
        if lacking:
            raise TaskError(f"{p}: [[demos]] {i} lacks {' and '.join(lacking)}")
    values["teacher_demos"] = tuple(dict(d) for d in demos)
    rubrics = data.get("critic_rubrics", [])
    if not isinstance(rubrics, list) or not all(isinstance(r, str) and r.strip() for r in rubrics):
        raise TaskError(f"{p}: critic_rubrics must be a list of non-empty strings")
    values["critic_rubrics"] = tuple(rubrics)
    try:
        return Task(**values)
    except TaskError as e:
        raise TaskError(f"{p}: {e}") from e


def load_python_task(spec: str) -> Task:
    """A `Task` object named by `package.module:ATTR` (importable from the current folder) or `path/to/file.py:ATTR`."""
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
    if not isinstance(obj, Task):
        raise TaskError(f"{spec} is a {type(obj).__name__}, not a programs.tasks.Task")
    return obj.validate()


def _module_name(path: Path) -> str:
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + path.read_bytes()).hexdigest()[:12]
    return f"_critic_distill_task_{digest}"


def student_signature(task: Task) -> type[dspy.Signature]:
    """input -> one output: what the distilled student is trained on and asked, through the same adapter."""
    return _make(task.student_instruction, inputs={"text": (str, task.input_desc)},
                 outputs={"paraphrase": (str, task.output_desc)}, name="StudentSignature")
