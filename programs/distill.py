"""`CriticDistill`: distill a DSPy program into a small local model with a teacher and a critic, as a teleprompter.

    distill = CriticDistill(critic=PairwiseCritic("Choose the answer that is correct and brief."),
                            student_model="smollm2-135m-instruct", objective="dpo", store="traces.duckdb")
    small = distill.compile(QA(), teacher=QA(), trainset=train, valset=test)   # dspy.Example lists
    small(question="...", context="...")          # answers through the distilled local model
    small.save("qa-small.json")                    # QA().load("qa-small.json", allow_unsafe_lm_state=True)

`compile` runs the same pipeline as `python -m programs.compile` (inputs → teach → imitate → feedback → evaluate,
every call and row in the store, a rerun asking nothing twice) on a task made from the student program's
signatures and the critic's rubric, with the teacher program as teacher. It returns a copy of the student program
whose predictors run on the distilled model (a `local/...` LM, the same spec `resolve_lm` and every command take).
The student is trained on the prompts of the adapter the program will run under (DSPy's configured one at
`compile`, ChatAdapter when none is; `adapter=` chooses) for each predictor's signature, demo-free, through the
adapter's own formatting (`format_finetune_data`'s messages, as DSPy's `BootstrapFinetune` trains), so the copy
answers in a fresh process with no configure line. The teacher and the critic keep `LabeledAdapter`, the prompts the
small embedded models read best, inside the pipeline only. A program of several
predictors trains one student on every predictor's steps of the teacher's runs; the feedback objectives train its
last predictor. Like `programs/compile.py` this is the top
layer: nothing imports it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from programs.config import build_config
from programs.program_tasks import from_program
from programs.student import ADAPTERS, student_program
from programs.tasks import Task, TaskError
from store.errors import UserError

CHAT_MAX_LENGTH = 512  # ChatAdapter's prompts are ~3x LabeledAdapter's: a 128-token row would lose its answer


class DistillError(UserError):
    """A program, a dataset or a setting `CriticDistill` cannot use: one line."""


@dataclass(frozen=True)
class PairwiseCritic:
    """The critic: a rubric (what makes one output better than another), other phrasings of it for a critic set to
    average over rubrics, and the model that judges (default: the profile's critic)."""

    rubric: str
    rephrasings: tuple[str, ...] = ()
    model: str | None = None


def task_from_program(program: dspy.Module, critic: PairwiseCritic, name: str | None = None,
                      student_adapter: str = "labeled") -> Task:
    """The task a program defines (`programs.program_tasks.from_program`), with the critic's rubric."""
    try:
        return from_program(program, critic_instruction=critic.rubric, critic_rubrics=critic.rephrasings,
                                 name=name, student_adapter=student_adapter)
    except TaskError as e:
        raise DistillError(str(e)) from e


def _rows(examples: list, task: Task, split: str, what: str) -> list[dict]:
    rows, types = [], task.types
    for i, ex in enumerate(examples):
        if not isinstance(ex, dspy.Example):
            raise DistillError(f"{what}[{i}] is a {type(ex).__name__}, not a dspy.Example")
        try:
            values = {n: ex[n] for n in task.inputs}
        except KeyError as e:
            raise DistillError(f"{what}[{i}] has no {e.args[0]!r}: every example needs {', '.join(task.inputs)}") from e
        bad = [n for n, v in values.items() if n not in types and (not isinstance(v, str) or not v.strip())]
        if bad:
            raise DistillError(f"{what}[{i}]: {', '.join(bad)} must be non-empty text")
        try:
            json.dumps({n: values[n] for n in types if n in values})
        except TypeError as e:
            raise DistillError(f"{what}[{i}]: {e}: a field that is not text must be a JSON value") from e
        rows.append({**values, "split": split})
    return rows


def _write_inputs(path: Path, rows: list[dict]) -> None:
    """The examples as an inputs file (a column per field, and the split), replaced atomically and only when it
    changed, so that a rerun names the same file with the same content: the same run."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


@dataclass
class CriticDistill(Teleprompter):
    """A teleprompter: `compile(student, teacher=..., trainset=...)` returns the student program distilled.

    `objective`: `dpo` (the default: imitation, then DPO on the critic's feedback), `imitation` (the warm start
    only), or any of `python -m programs.compile --objective` (`brio`, `brio-dpo`, `sd`, `ft`). `profile` sets
    the sizes and the default teacher and critic models (`tiny` for a first look); `config` takes any other key of
    `programs.config.PipelineConfig`."""

    critic: PairwiseCritic | str
    student_model: str | None = None
    teacher_model: str | None = None  # the LM of the teacher program's predictors that have none
    objective: str = "dpo"
    store: str = "traces.duckdb"
    out: str = "out/distill"
    profile: str = "default"
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # the adapter whose prompts the student learns: "chat" (DSPy's ChatAdapter) or "labeled" (LabeledAdapter);
    # None: the one configured in DSPy when `compile` is called (ChatAdapter when none is), the one the program
    # will run under
    adapter: str | None = None

    @property
    def _critic(self) -> PairwiseCritic:
        return PairwiseCritic(self.critic) if isinstance(self.critic, str) else self.critic

    def metric(self, program: dspy.Module, *, feedback: bool = True) -> Any:
        """The critic as a DSPy metric for `program`'s task (`metrics.critic_metric`): with `feedback`, GEPA's
        (the score and the critic's reasons), else a score in [0, 1] for `dspy.Evaluate` and the other optimizers.
        Optimize the teacher with it, then distill the optimized program: `compile(..., teacher=optimized)`."""
        from metrics.critic_metric import CriticFeedback, CriticScore
        from programs.lm import resolve_lm

        critic = self._critic
        cfg = build_config(self.profile, overrides={**self.config, "critic": critic.model})
        lm = resolve_lm(cfg.critic, temperature=0.0, max_tokens=cfg.critic_max_tokens, seed=cfg.seed)
        score = CriticScore(task_from_program(program, critic, self.name), lm)
        return CriticFeedback(score) if feedback else score

    def compile(self, student: dspy.Module, *, trainset: list, teacher: dspy.Module | None = None,
                valset: list | None = None) -> dspy.Module:
        """Distill `teacher` (default: `student` as it is, on the teacher model) into a small model trained on the
        student's prompts; `valset` (default: none, the pipeline then holds out by a hash of each input) is what
        the students are evaluated on."""
        from programs.compile import run
        from programs.lm import resolve_lm

        critic = self._critic
        adapter = self._adapter()
        task = task_from_program(student, critic, self.name, student_adapter=adapter)
        if not trainset:
            raise DistillError("trainset is empty")
        rows = _rows(trainset, task, "train", "trainset") + _rows(valset or [], task, "test", "valset")
        out = Path(self.out)
        inputs = out / "inputs.jsonl"
        objective = {"imitation": "none"}.get(self.objective, self.objective)
        overrides = {**({"max_length": CHAT_MAX_LENGTH} if adapter == "chat" else {}), **self.config, "task": task,
                     "inputs": str(inputs.resolve()), "objective": objective, "student": self.student_model,
                     "teacher": self.teacher_model, "critic": critic.model}
        cfg = build_config(self.profile, overrides=overrides)
        if not valset:
            rows = [{k: v for k, v in r.items() if k != "split"} for r in rows]  # split by a hash of each input
        _write_inputs(inputs, rows)
        configured = dspy.settings.adapter
        try:
            summary = run(cfg, db=self.store, out=str(out), command=f"CriticDistill.compile({type(student).__name__})",
                          teacher_program=teacher if teacher is not None else student, student_program=student)
        finally:  # the pipeline's teacher and critic read LabeledAdapter; the program goes back to the user's
            dspy.configure(adapter=configured)
        if summary["best"] is None:  # every evaluation output failed: there is no distilled program to hand back
            raise DistillError(f"{summary['failed'] or 'no evaluation judged any output of the student'}; no student "
                               f"was chosen (the failures: SELECT * FROM student_failures in {self.store})")
        return student_program(student, resolve_lm(f"local/{(out / 'student').resolve()}", temperature=0.0,
                                                   max_tokens=cfg.student_max_tokens))


    def _adapter(self) -> str:
        """`adapter`, or the name of the one DSPy has configured; one line for one the student cannot learn."""
        if self.adapter is not None:
            if self.adapter not in ADAPTERS:
                raise DistillError(f"adapter must be one of {', '.join(ADAPTERS)}, got {self.adapter!r}")
            return self.adapter
        configured = dspy.settings.adapter
        for name, cls in ADAPTERS.items():
            if configured is None and name == "chat" or type(configured) is cls:
                return name
        raise DistillError(f"the student learns ChatAdapter's or LabeledAdapter's prompts, and DSPy is configured with "
                           f"{type(configured).__name__}: pass CriticDistill(adapter='chat' or 'labeled')")


__all__ = ["CriticDistill", "DistillError", "PairwiseCritic", "task_from_program"]
