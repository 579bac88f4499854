"""Distill a two-predictor DSPy program into the embedded 135M student, with feedback: first quote the evidence
from the context, then answer from it (example (b) of docs/python-api.md).

    python examples/python/qa_steps_distill.py       # tiny profile: a few minutes on a laptop CPU

One student learns both predictors, each from the teacher's runs of that predictor (its own prompt), as DSPy's
multitask fine-tuning does; the critic's feedback (DPO) then trains the last predictor, the one that answers.
tests/test_distill.py runs the same steps, and examples/tasks/qa_steps.toml names this program for the CLI.
"""

import json
from pathlib import Path

import dspy

from programs.distill import CriticDistill, PairwiseCritic

DATA = Path(__file__).resolve().parent.parent / "tasks" / "qa_inputs.jsonl"
RUBRIC = "Choose the better answer: the one that answers the question correctly from the context, briefly."


class QASteps(dspy.Module):
    def __init__(self):
        super().__init__()
        self.find = dspy.Predict(dspy.Signature(
            "question, context -> evidence", "Copy the one sentence of the context that answers the question."))
        self.answer = dspy.Predict(dspy.Signature(
            "question, evidence -> answer", "Answer the question from the evidence, in one short sentence."))

    def forward(self, question: str, context: str) -> dspy.Prediction:
        evidence = self.find(question=question, context=context).evidence
        return self.answer(question=question, evidence=evidence)


def examples(split: str) -> list[dspy.Example]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return [dspy.Example(question=r["question"], context=r["context"]).with_inputs("question", "context")
            for r in rows if r["split"] == split]


if __name__ == "__main__":
    distill = CriticDistill(critic=PairwiseCritic(RUBRIC), objective="dpo", profile="tiny", store="qa-steps.duckdb",
                            out="out/qa-steps")
    small = distill.compile(QASteps(), teacher=QASteps(), trainset=examples("train"), valset=examples("test"))
    test = examples("test")[0]
    print(small(question=test.question, context=test.context).answer)
    small.save("out/qa-steps/qa-steps-small.json")
