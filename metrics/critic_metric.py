"""The critic as a DSPy metric: a score in [0, 1], a pass/fail for optimizers that filter, and GEPA feedback.

Against a reference (the example's `reference` field) the score is the pairwise critic's probability that the
prediction is at least as good as the reference, averaged over both presentation orders (the paper's WTR, per item).
Without one it is a pointwise rubric: the critic's probability of "yes" to "is this a good output for the input?".
Predictions with several outputs (the teacher's numbered list) score the mean over their outputs.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from dataclasses import replace

from programs.critic import DEFAULT, Critic, CriticSettings
from programs.tasks import Task


def outputs_of(pred: Any, name: str = "paraphrase") -> list[str]:
    """The texts a prediction offers: the teacher's candidates, or a student's single output (field `name`)."""
    if isinstance(pred, str):
        return [pred]
    candidates = getattr(pred, "candidates", None)
    if candidates is not None:
        return [c for c in candidates if c and c.strip()]
    for field in (name, "paraphrase", "output", "answer"):
        value = getattr(pred, field, None)
        if isinstance(value, str):
            return [value] if value.strip() else []
    return []


def _inputs(task: Task) -> dict:
    """The task's input fields, then the one output judged."""
    fields = {n: (task.types.get(n, str), dspy.InputField(desc=d)) for n, d in task.inputs.items()}
    return fields | {"output": (str, dspy.InputField(desc=next(iter(task.outputs.values()))))}


def _rubric_signature(task: Task) -> type[dspy.Signature]:
    rubric = getattr(task, "rubric", None) or (
        f"Judge whether the output is a good one for the input. The standard: {task.critic_instruction}")
    return dspy.Signature({
        **_inputs(task),
        # a plain string read leniently ("Yes", "no."): small critics do not keep to the case of a Literal
        "verdict": (str, dspy.OutputField(desc="yes if it meets the standard, else no")),
    }, rubric, signature_name="RubricSignature")


def _reason_signature(task: Task) -> type[dspy.Signature]:
    rubric = getattr(task, "rubric", None) or task.critic_instruction
    return dspy.Signature({
        **_inputs(task),
        "critique": (str, dspy.OutputField(desc="one or two sentences: what is good, what to improve")),
    }, f"Critique the output for the input. The standard: {rubric}", signature_name="CritiqueSignature")


def _label_probability(logprobs: dict | None, label: str, yes: str, no: str) -> float | None:
    """P(yes) / (P(yes) + P(no)) at the token that answers `<label>:`, or at the first token when the answer is
    the bare value (the adapter's prompt already ended with the label)."""
    tokens = (logprobs or {}).get("content") or []
    full = "".join(t.get("token") or "" for t in tokens).lower()
    text = ""
    for tok in tokens:
        token = tok.get("token") or ""
        at = text.lower().rfind(label + ":")
        answers = (at >= 0 and not text[at + len(label) + 1:].strip()) or (label + ":" not in full and not text.strip())
        if answers and token.strip():
            p = {yes: 0.0, no: 0.0}
            for alt in tok.get("top_logprobs") or [{"token": token, "logprob": tok.get("logprob", 0.0)}]:
                key = (alt.get("token") or "").strip().lower()
                for want in p:
                    if key and want.startswith(key):
                        p[want] += math.exp(alt["logprob"])
            total = p[yes] + p[no]
            return p[yes] / total if total > 0 else None
        text += token
    return None


class CriticScore:
    """`metric(example, pred, trace=None) -> float in [0, 1]`: usable by `dspy.Evaluate` and every optimizer."""

    def __init__(self, task: Task, lm: dspy.LM | None = None, *, reference_field: str = "reference",
                 max_tokens: int = 128, settings: CriticSettings | None = None):
        self.task = task
        self.lm = lm
        self.reference_field = reference_field
        self.max_tokens = max_tokens
        # the score comes from the critic as the pipeline asks it (by default the choice alone), so that a score asked
        # for with reasons equals the one asked for without (GEPA checks); the reasons are a second, separate call
        settings = settings or DEFAULT
        self._choice = Critic(task, settings, max_tokens=8)
        self._explain_pair = Critic(task, replace(settings, mode="reason-first", rubrics=1, pointwise_weight=0.0),
                                    max_tokens=max_tokens)
        self._verdict = dspy.Predict(_rubric_signature(task))
        self._critique = dspy.Predict(_reason_signature(task))

    def __call__(self, example: Any, pred: Any, trace: Any = None) -> float:
        return self.judge(example, pred, reasons=False)[0]

    def judge(self, example: Any, pred: Any, *, reasons: bool) -> tuple[float, list[str]]:
        """(score, the critic's reasons); reasons cost the critic a sentence per order, so they are opt-in."""
        texts = outputs_of(pred, self.task.output_name) if len(self.task.outputs) == 1 and not self.task.field_types \
            else [t for t in [self.task.encode_outputs(pred)] if t]
        if not texts:
            return 0.0, ["no output to judge (empty or unparsable prediction)"]
        get = example.get if hasattr(example, "get") else lambda n: getattr(example, n, None)
        types = self.task.types
        if any(get(n) is None if n in types else not isinstance(get(n), str) for n in self.task.inputs):
            return 0.0, [f"the example lacks the input field(s) {', '.join(self.task.inputs)}"]
        source = self.task.encode_inputs({n: get(n) for n in self.task.inputs})  # as the store keeps an input
        reference = example.get(self.reference_field) if hasattr(example, "get") else None
        with dspy.context(lm=self.lm) if self.lm is not None else nullcontext():
            scored = [self._against(source, t, reference, reasons) if reference else self._rubric_score(source, t, reasons)
                      for t in texts]
        scores = [s for s, _ in scored]
        return sum(scores) / len(scores), [r for _, rs in scored for r in rs if r]

    def _against(self, source: str, output: str, reference: str, reasons: bool) -> tuple[float, list[str]]:
        pred = self._choice(text=source, a=output, b=reference)
        p = pred.p_a if pred.p_a is not None else 0.0
        if not reasons:
            return p, []
        why = self._explain_pair(text=source, a=output, b=reference)
        return p, [f"Against the reference, with the output shown {'first' if i == 0 else 'second'}: {o['reason']}"
                   for i, o in enumerate(why.orders) if o.get("reason")]

    def _rubric_score(self, source: str, output: str, reasons: bool) -> tuple[float, list[str]]:
        config = dict(temperature=0.0, max_tokens=8, logprobs=True, top_logprobs=20)
        try:
            pred = self._verdict(**self.task.input_values(source), output=self.task.render_output(output),
                                 config=config)
            p = _label_probability(getattr(pred, "logprobs", None), "verdict", "yes", "no")
            if p is None:
                word = (pred.verdict or "").strip().lower()
                if not word.startswith(("yes", "no")):
                    return 0.0, [f"the critic's verdict was neither yes nor no: {pred.verdict!r}"]
                p = 1.0 if word.startswith("yes") else 0.0
        except (AdapterParseError, ValueError) as e:
            return 0.0, [f"the critic's answer could not be read: {str(e)[:160]}"]
        if not reasons:
            return p, []
        try:
            critique = self._critique(**self.task.input_values(source), output=self.task.render_output(output),
                                      config=dict(temperature=0.0, max_tokens=self.max_tokens)).critique
        except (AdapterParseError, ValueError):
            critique = None
        return p, [critique]


class CriticThreshold:
    """`metric(...) -> bool`: score >= threshold, for optimizers that keep traces whose metric is truthy."""

    def __init__(self, score: CriticScore, threshold: float = 0.5):
        self.score = score
        self.threshold = threshold

    def __call__(self, example: Any, pred: Any, trace: Any = None) -> bool:
        return self.score(example, pred, trace) >= self.threshold


class CriticFeedback:
    """GEPA's feedback metric: the score, and the critic's reasons as the text GEPA reflects on.

    GEPA calls with `pred_name=None` to score whole programs; only calls for one predictor need the reasons, so the
    others use the critic without its sentence (a fraction of the tokens).
    """

    def __init__(self, score: CriticScore):
        self.score = score

    def __call__(self, gold: Any, pred: Any, trace: Any = None, pred_name: str | None = None,
                 pred_trace: Any = None) -> dspy.Prediction:
        if pred_name is None:
            return dspy.Prediction(score=self.score(gold, pred, trace), feedback="")
        value, reasons = self.score.judge(gold, pred, reasons=True)
        verdict = "good" if value >= 0.5 else "weak"
        feedback = f"The critic scored this {value:.2f} ({verdict})." + (" " + " ".join(reasons) if reasons else "")
        return dspy.Prediction(score=value, feedback=feedback)

