"""Optimize a DSPy program with GEPA against the critic, then distill the optimized program (docs/python-api.md).

    python examples/python/qa_gepa_distill.py       # tiny profile: a few minutes on a laptop CPU

The optimized program is the teacher: its runs are the student's training data, and its candidates in the store
carry its state (`candidates.producer` ends in `#program-<hash>`), apart from the unoptimized program's.
"""

import dspy

from programs.adapter import LabeledAdapter
from programs.distill import CriticDistill, PairwiseCritic
from programs.lm import resolve_lm

from qa_distill import QA, examples  # noqa: E402 - the program and the data of qa_distill.py, beside this file

RUBRIC = "Choose the better answer: the one that answers the question correctly from the context, briefly."


def optimize_then_distill(store: str = "qa.duckdb", out: str = "out/qa-gepa", max_metric_calls: int = 12,
                          objective: str = "dpo"):
    distill = CriticDistill(critic=PairwiseCritic(RUBRIC), objective=objective, profile="tiny", store=store, out=out)
    teacher_lm = resolve_lm("local/qwen2.5-coder-0.5b-instruct", temperature=0.8, max_tokens=96)
    dspy.configure(lm=teacher_lm, adapter=LabeledAdapter())  # the small embedded models need the labeled prompts
    gepa = dspy.GEPA(metric=distill.metric(QA()), reflection_lm=resolve_lm("local/qwen2.5-coder-0.5b-instruct",
                                                                            temperature=0.7, max_tokens=512),
                     max_metric_calls=max_metric_calls, reflection_minibatch_size=2, use_merge=False, seed=0)
    train, dev = examples("train")[:6], examples("dev")[:3]
    optimized = gepa.compile(QA(), trainset=train, valset=dev)
    small = distill.compile(QA(), teacher=optimized, trainset=examples("train")[:8], valset=examples("test")[:4])
    return optimized, small


if __name__ == "__main__":
    optimized, small = optimize_then_distill()
    print("optimized instructions:", optimized.answer.signature.instructions)
    test = examples("test")[0]
    print(small(question=test.question, context=test.context).answer)
