"""Where a task comes from: a built-in name, a TOML file, or a Python reference (`package.module:ATTR`,
`path/file.py:ATTR`); `get_task` takes any of them. docs/tasks.md walks through writing one."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import tomllib
from pathlib import Path
from typing import Any

from programs.builtin_tasks import TASKS
from programs.program_tasks import from_program
from programs.tasks import Task, TaskError, parse_signature

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
        return from_program(obj, critic_instruction=data["critic_instruction"], critic_rubrics=_rubrics(p, data),
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
