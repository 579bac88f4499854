"""Distill a two-input DSPy program (question, context -> answer) into the embedded 135M student, with feedback.

    python examples/python/qa_distill.py            # tiny profile: a few minutes on a laptop CPU

docs/python-api.md walks through it; tests/test_distill.py runs the same steps.
"""

import json
from pathlib import Path

import dspy

from programs.distill import CriticDistill, PairwiseCritic

DATA = Path(__file__).resolve().parent.parent / "tasks" / "qa_inputs.jsonl"


class QA(dspy.Module):
    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict(dspy.Signature(
            "question, context -> answer", "Answer the question using only the context, in one short sentence."))

    def forward(self, question: str, context: str) -> dspy.Prediction:
        return self.answer(question=question, context=context)


def examples(split: str) -> list[dspy.Example]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return [dspy.Example(question=r["question"], context=r["context"]).with_inputs("question", "context")
            for r in rows if r["split"] == split]


if __name__ == "__main__":
    distill = CriticDistill(
        critic=PairwiseCritic("Choose the better answer: the one that answers the question correctly from the "
                              "context, briefly."),
        objective="dpo", profile="tiny", store="qa.duckdb", out="out/qa")
    small = distill.compile(QA(), teacher=QA(), trainset=examples("train"), valset=examples("test"))
    test = examples("test")[0]
    print(small(question=test.question, context=test.context).answer)
    small.save("out/qa/qa-small.json")
