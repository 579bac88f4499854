"""A student whose program fails is one clear line, never a NaN: each failure is stored, counts as a loss, and an
evaluation that judged nothing chooses no student."""

import dspy

from finetune.evaluate import evaluate, failure_line
from metrics.winrate import Estimate
from programs.adapter import LabeledAdapter
from programs.critic import DEFAULT, Critic
from programs.distill import PairwiseCritic, task_from_program
from programs.lm import resolve_lm
from programs.student import Student
from programs.teach import candidate_id
from store import Store, stable_id
from store.callback import install


class Count(dspy.Module):
    def __init__(self):
        super().__init__()
        self.count = dspy.Predict(dspy.Signature("question -> count: int", "How many are there? A whole number."))

    def forward(self, question):
        return self.count(question=question)


def test_every_output_failing_is_stored_and_counted_as_losses(tiny_causal_dir, tmp_path):
    task = task_from_program(Count(), PairwiseCritic("Choose the right count."), "count")
    store = Store(tmp_path / "t.duckdb")
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    questions = ["How many legs has a spider?", "How many days has a week?", "How many wheels has a bicycle?"]
    inputs = [{"input_id": stable_id("input", task.name, task.encode_inputs({"question": q})),
               "text": task.encode_inputs({"question": q})} for q in questions]
    store.insert("candidates", [{"candidate_id": candidate_id(i["input_id"], "teacher", "T", 0),
                                 "input_id": i["input_id"], "role": "teacher", "producer": "T", "rank": 0,
                                 "text": task.encode_outputs({"count": n})} for i, n in zip(inputs, (8, 7, 2))])
    # a randomly initialised model writes no whole number: every answer fails to parse
    student_lm = resolve_lm(f"local/{tiny_causal_dir}", temperature=0.0, max_tokens=8)
    critic_lm = resolve_lm("local/qwen2.5-coder-0.5b-instruct", temperature=0.0, max_tokens=32)
    r = evaluate(store, student=Student(task), student_lm=student_lm, student_name="s", checkpoint_id=None,
                 critic=Critic(task, DEFAULT), critic_lm=critic_lm, critic_name="critic", inputs=inputs,
                 teacher_name="T", split="test", run_id="r")

    stored = store.query("SELECT input_id, error, lm_call_id FROM student_failures WHERE producer = 's'")
    assert {f["input_id"] for f in stored} == {i["input_id"] for i in inputs}
    assert all(f["error"].startswith("AdapterParseError") and f["lm_call_id"] for f in stored)
    assert r["items"] == [] and set(r["failed"]) == {i["input_id"] for i in inputs}
    assert (r["wtr_prob"].value, r["wtr_prob"].n) == (0.0, 3)  # three losses, not an estimate of nothing
    line = failure_line(r)
    assert line.startswith("the student failed on 3 of 3 evaluation inputs: AdapterParseError")
    assert store.scalar("SELECT count(*) FROM lm_calls WHERE model LIKE '%qwen%'") == 0  # nothing to judge
    row = store.query("SELECT n, wtr_prob, details FROM evaluations")[0]
    assert row["n"] == 3 and row["wtr_prob"] == 0.0 and '"failed"' in row["details"]


def test_an_estimate_of_nothing_is_never_printed_as_a_number():
    none = Estimate(float("nan"), float("nan"), float("nan"), 0)
    assert str(none) == none.signed() == "none judged (n=0)" and none.interval() == "–"
    assert "nan" not in f"{none} {none.signed()} {none.interval()}"
    assert str(Estimate(0.5, 0.4, 0.6, 10)) == "50.0 [40.0, 60.0] (n=10)"
