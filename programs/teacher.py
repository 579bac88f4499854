"""The teacher: a literal input -> N candidate outputs in one call (the paper: N = 3, temperature 0.8)."""

from __future__ import annotations

import re
import threading
from contextlib import nullcontext

import dspy

from programs.tasks import Task, TaskError
from store.errors import UserError

_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.*\S)\s*$")


def parse_numbered(text: str, n: int) -> list[str]:
    """Items of a numbered (or bulleted) list; a lone unnumbered answer counts as one item."""
    items = [m.group(1).strip().strip('"').strip() for line in (text or "").splitlines() if (m := _ITEM.match(line))]
    if not items and text and text.strip():
        items = [text.strip().strip('"')]
    seen, unique = set(), []
    for item in items:
        if item and item.lower() not in seen:
            seen.add(item.lower())
            unique.append(item)
    return unique[:n]


def numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


class Teacher(dspy.Module):
    def __init__(self, task: Task, n: int = 3):
        super().__init__()
        task.check_list_teacher()
        self.n = n
        self.task = task
        self.generate = dspy.Predict(task.teacher_signature(n))
        self.generate.demos = [
            dspy.Example(**{k: d[k] for k in task.inputs}, **{task.teacher_output: numbered(d["outputs"][:n])})
            .with_inputs(*task.inputs)
            for d in task.teacher_demos
        ]

    def forward(self, text: str) -> dspy.Prediction:
        """`text`: one stored input (a JSON object of the fields for a task of several input fields)."""
        raw = getattr(self.generate(**self.task.input_values(text)), self.task.teacher_output)
        return dspy.Prediction(candidates=parse_numbered(raw, self.n), raw=raw)


def program_producer(model: str, program: dspy.Module) -> str:
    """The `producer` a teacher program's candidates carry: the model and a hash of the program's state, so an edited
    program (new instructions, new demos) teaches afresh instead of reusing the candidates of the one before."""
    from store import stable_id, to_json

    state = stable_id("teacher-program", type(program).__qualname__, to_json(program.dump_state()))
    return f"{model}#program-{state[:10]}"


def program_steps(program: dspy.Module, trace: list) -> list[dict]:
    """A run's DSPy trace as the store keeps it (`candidates.trace`): each predictor call's name, inputs and outputs."""
    names = {id(p): name for name, p in program.named_predictors()}
    return [{"predictor": names.get(id(p), type(p).__name__),
             "inputs": {n: inputs.get(n) for n in p.signature.input_fields},
             "outputs": {n: getattr(outputs, n, None) for n in p.signature.output_fields}}
            for p, inputs, outputs in trace]


class ProgramTeacher(dspy.Module):
    """Any DSPy program as the teacher: N candidates from N runs of it at distinct rollout ids, DSPy's way of asking
    an LM again at its temperature without the cache answering (each run is still cached and recorded, so a rerun
    makes no call). A predictor with its own LM rolls out on that LM; the others on the LM in context."""

    def __init__(self, program: dspy.Module, task: Task, n: int = 3):
        super().__init__()
        self.program = program
        self.task = task
        self.n = n
        self._own_lms = threading.Lock()  # predictors with their own LM get a rollout copy in place: one run at a time

    def _rollout(self, i: int, inputs: dict) -> tuple[dspy.Prediction, list[dict]]:
        """The program's prediction in rollout `i`, and its trace: each predictor call's name, inputs and outputs."""
        own = [(p, p.lm) for _, p in self.program.named_predictors() if p.lm is not None]
        context_lm = dspy.settings.lm
        with self._own_lms if own else nullcontext():
            try:
                for p, lm in own:  # a shallow copy: the same model, another rollout id
                    p.lm = lm.copy(rollout_id=i)
                with dspy.context(lm=context_lm.copy(rollout_id=i) if context_lm is not None else None, trace=[]):
                    prediction = self.program(**inputs)
                    return prediction, program_steps(self.program, dspy.settings.trace)
            finally:
                for p, lm in own:
                    p.lm = lm

    def _check_returns(self, prediction) -> None:
        """A program that returns none of the task's output fields is a mistake no rerun mends (its last predictor
        in `__init__` is not the one that answers, or it wraps the answer in fields of its own): one line, not a
        teacher that writes nothing."""
        names = set(prediction.keys()) if hasattr(prediction, "keys") else set()
        if names and not names & set(self.task.outputs):
            raise TaskError(f"{type(self.program).__name__} returned {', '.join(sorted(names))}, but its task's "
                            f"output is {', '.join(self.task.outputs)} (the last predictor `__init__` sets): return "
                            "that predictor's prediction, or set the predictor that answers last")

    def forward(self, text: str) -> dspy.Prediction:
        """N runs of the program: its distinct final outputs as candidates, with the trace of the run that wrote each
        (`traces`, stored beside the candidate)."""
        inputs, candidates, traces = self.task.input_values(text), [], []
        failed = None
        for i in range(self.n):
            try:
                prediction, trace = self._rollout(i, inputs)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - a run whose answer does not parse is no candidate; the call
                failed = e  # is in lm_calls / module_calls with its error, and the other runs still count
                continue
            self._check_returns(prediction)
            value = self.task.encode_outputs(prediction)  # every output field, or None
            if value is not None and value not in candidates:
                candidates.append(value)
                traces.append(trace)
        if not candidates and failed is not None:
            raise failed
        return dspy.Prediction(candidates=candidates, raw=None, traces=traces)
