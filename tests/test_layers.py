"""The house is one-way: each layer imports only from the layers below it, and no module imports the top layer.

    store  <  programs  <  metrics  <  finetune  <  programs.compile, programs.distill

`store` keeps the traces; `programs` holds tasks, signatures, teacher, critic, student and the LM layer; `metrics`
turns the critic into metrics, judgments, win rates and audits; `finetune` trains and evaluates students;
`programs/compile.py` is the pipeline, the only module that knows every stage, and `programs/distill.py` the
teleprompter that runs it on a user's program, so they are the top layer although they sit in programs/. Every import counts, wherever it is written: at the top of a module, inside a function, under
`if TYPE_CHECKING:`. Import cycles between modules, and imports of modules that are not there, fail too. The
checker reads the sources with `ast` and imports nothing.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("store", "programs", "metrics", "finetune")
TOP = "programs.compile"
TOP_MODULES = (TOP, "programs.distill")  # the top layer, named for the pipeline
RANK = {"store": 0, "programs": 1, "metrics": 2, "finetune": 3, TOP: 4}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (a module of the tree, or the package it names)
    where: str  # file:line
    statement: str  # the import as written
    missing: str = ""  # the module the import names, when the tree has no such module


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    if any(module == m or module.startswith(m + ".") for m in TOP_MODULES):
        return TOP
    return module.split(".")[0]


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))}


def edges(root: Path) -> list[Edge]:
    """Every import of a module of the tree, from every module of the tree."""
    known = modules(root)
    found: list[Edge] = []
    for source, path in known.items():
        is_package = path.name == "__init__.py"
        text = path.read_text()
        tree = ast.parse(text, filename=str(path))
        for node in ast.walk(tree):  # walks function bodies and `if TYPE_CHECKING:` blocks too
            targets: list[str] = []
            named: list[str] = []  # the modules the statement names, each of which must exist when it is ours
            if isinstance(node, ast.Import):
                targets = named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against the importing module's package
                    package = source.split(".") if is_package else source.split(".")[:-1]
                    package = package[: len(package) - (node.level - 1)]
                    base = ".".join(package + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
                targets = [_join(base, a.name) if _join(base, a.name) in known else base for a in node.names]
                named = [base]
            for target in dict.fromkeys(targets):
                name = target
                # `import store.db` and `import store.db.x` both resolve to the longest known module
                while target and target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in known and target != source:
                    missing = name if name in named and name not in known else ""
                    found.append(Edge(source, target, f"{path.relative_to(root)}:{node.lineno}",
                                      ast.get_source_segment(text, node) or ast.unparse(node), missing))
    return found


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def shim(module: str) -> bool:
    """A `__main__` module: `python -m pkg` running the pipeline, and nothing else."""
    return module.rsplit(".", 1)[-1] == "__main__"


def layer_violations(found: list[Edge]) -> list[str]:
    out = []
    for e in found:
        if layer(e.target) == TOP and shim(e.source):
            continue
        if RANK[layer(e.target)] > RANK[layer(e.source)]:
            out.append(f"{e.where}: `{e.statement}` — {layer(e.source)} may not import {layer(e.target)}")
    return out


def compile_importers(found: list[Edge]) -> list[str]:
    return [f"{e.where}: `{e.statement}` — only a __main__ shim may import {TOP}"
            for e in found if layer(e.target) == TOP and layer(e.source) != TOP and not shim(e.source)]


def missing_modules(found: list[Edge]) -> list[str]:
    """An import of a module that is not there (one left behind by a move, say), even inside a function."""
    return [f"{e.where}: `{e.statement}` — there is no module {e.missing}" for e in found if e.missing]


def cycles(found: list[Edge]) -> list[str]:
    """Each strongly connected component of the module graph with more than one module, as one cycle through it."""
    graph: dict[str, list[str]] = {}
    for e in found:
        graph.setdefault(e.source, [])
        graph.setdefault(e.target, [])
        if e.target not in graph[e.source]:
            graph[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph is a few dozen modules, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    out = []
    for component in components:
        members = set(component)
        start = min(component)
        came_from: dict[str, str] = {}
        frontier, last = [start], None
        while last is None:  # breadth first inside the component: the shortest way back to the start
            step = []
            for v in frontier:
                for w in graph[v]:
                    if w == start:
                        last = v
                        break
                    if w in members and w not in came_from:
                        came_from[w] = v
                        step.append(w)
                if last is not None:
                    break
            frontier = step
        path = [last]
        while path[-1] != start:
            path.append(came_from[path[-1]])
        path.reverse()
        where = {(e.source, e.target): e.where for e in reversed(found)}
        hops = [f"{a} ({where[a, b]})" for a, b in zip(path, path[1:] + [start])]
        out.append("import cycle: " + " -> ".join(hops) + f" -> {start}")
    return out


def check(root: Path) -> list[str]:
    found = edges(root)
    return layer_violations(found) + compile_importers(found) + missing_modules(found) + cycles(found)


def test_the_house_is_one_way():
    problems = check(ROOT)
    assert not problems, "imports against the layers (" + " < ".join(RANK) + "):\n" + "\n".join(problems)


def test_the_checker_sees_every_module():
    names = modules(ROOT)
    assert {"store.db", "programs.lm", "programs.compile", "metrics.judge", "finetune.imitate"} <= set(names)
    assert len(edges(ROOT)) > 50


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_checker_reports_what_today_s_code_had(tmp_path):
    """The three kinds of import this test forbids, as they stood in the tree before the move: a lazy import inside
    a function, a top-level import, a private helper taken from the pipeline; plus an import under TYPE_CHECKING,
    relative imports, cycles and an import of a module that is not there."""
    write(tmp_path, {
        "store/__init__.py": "",
        "store/db.py": "import json\n",
        "programs/__init__.py": "",
        "programs/lm.py": """\
            from programs import models

            def resolve(spec):
                if spec.startswith("local/"):
                    from finetune.student import load_student
                    return load_student(spec)
            """,
        "programs/models.py": "from store.db import json\n",
        "programs/optimize.py": """\
            from typing import TYPE_CHECKING
            from metrics.critic_metric import CriticScore
            if TYPE_CHECKING:
                from finetune import student
            """,
        "programs/compile.py": "from finetune.student import load_student\n",
        "programs/__main__.py": "from programs.compile import main\n",
        "metrics/__init__.py": "",
        "metrics/critic_metric.py": "from programs.models import json\n",
        "metrics/audit.py": "from . import winrate\n",
        "metrics/winrate.py": "import metrics.judge\n",
        "metrics/judge.py": "from .audit import winrate\n",
        "finetune/__init__.py": "",
        "finetune/student.py": "from programs import lm\n\ndef f():\n    from programs.gone import x\n",
        "finetune/evaluate.py": """\
            def main():
                from programs.compile import _quiet_libraries
                _quiet_libraries()
            """,
    })
    problems = check(tmp_path)
    text = "\n".join(problems)
    assert "programs/lm.py:5: `from finetune.student import load_student` — programs may not import finetune" in text
    assert "programs/optimize.py:2: `from metrics.critic_metric import CriticScore` — programs may not import metrics" in text
    assert "programs/optimize.py:4: `from finetune import student` — programs may not import finetune" in text
    assert "finetune/evaluate.py:2: `from programs.compile import _quiet_libraries` — finetune may not import programs.compile" in text
    assert "finetune/evaluate.py:2: `from programs.compile import _quiet_libraries` — only a __main__ shim may import programs.compile" in text
    assert "import cycle: finetune.student (finetune/student.py:1) -> programs.lm (programs/lm.py:5) -> finetune.student" in text
    assert ("import cycle: metrics.audit (metrics/audit.py:1) -> metrics.winrate (metrics/winrate.py:1) -> "
            "metrics.judge (metrics/judge.py:1) -> metrics.audit") in text
    assert "finetune/student.py:4: `from programs.gone import x` — there is no module programs.gone" in text
    # allowed: the pipeline importing any layer, a __main__ shim importing the pipeline, downward imports
    assert "programs/compile.py" not in text and "programs/__main__.py" not in text
    assert "programs/models.py" not in text and "metrics/critic_metric.py" not in text
    assert len(problems) == 8, text
