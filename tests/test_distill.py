"""`CriticDistill`: a user's DSPy program (two input fields) distilled through `compile`, end to end on the tiny
profile: teacher runs and judgments in the store, a trained student, the returned program answering through it on
the prompts it was trained on, `save`/`load`, and a rerun that asks no model anything."""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pydantic
import pytest

from programs.adapter import LabeledAdapter
from programs.distill import CriticDistill, DistillError, PairwiseCritic, task_from_program
from store.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
RUBRIC = "Choose the better answer: the one that answers the question correctly from the context, briefly."


def _example_module(name: str = "qa_distill"):
    """A program of examples/python/ that docs/python-api.md shows: tested here, so it keeps working."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "python" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


QA = _example_module().QA
QASteps = _example_module("qa_steps_distill").QASteps  # example (b): two predictors


class Point(pydantic.BaseModel):
    x: int


class TwoSteps(dspy.Module):
    def __init__(self):
        super().__init__()
        self.angle = dspy.Predict("question -> angle")
        self.answer = dspy.Predict("question, angle -> answer")


class WrongInputs(TwoSteps):
    def forward(self, query):
        return self.answer(question=query, angle=self.angle(question=query).angle)


def _examples(split: str, n: int) -> list[dspy.Example]:
    return _example_module().examples(split)[:n]


def test_a_program_becomes_a_task_of_its_signature():
    task = task_from_program(QA(), PairwiseCritic(RUBRIC))
    assert task.name == "qa" and list(task.inputs) == ["question", "context"] and task.output_name == "answer"
    assert task.student_instruction == "Answer the question using only the context, in one short sentence."
    assert task.critic_instruction == RUBRIC


@pytest.mark.parametrize("program, trainset, message", [
    (TwoSteps(), [dspy.Example(question="q")], "TwoSteps: it has no forward method"),
    (WrongInputs(), [dspy.Example(question="q")], "forward takes (query), but the inputs its predictors read"),
    (dspy.Predict(dspy.Signature({"question": (str, dspy.InputField()), "answer": (Point, dspy.OutputField())})),
     [dspy.Example(question="q")], "field answer is a Point: text, numbers, booleans, lists, dicts and Literal"),
    (QA(), [], "trainset is empty"),
    (QA(), [dspy.Example(question="q")], "trainset[0] has no 'context'"),
    (QA(), [{"question": "q", "context": "c"}], "not a dspy.Example"),
])
def test_programs_and_data_it_cannot_use_are_one_line(tmp_path, program, trainset, message):
    distill = CriticDistill(critic=RUBRIC, profile="tiny", store=str(tmp_path / "t.duckdb"), out=str(tmp_path / "o"))
    with pytest.raises(DistillError) as e:
        distill.compile(program, trainset=trainset)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "t.duckdb").exists()  # nothing created, no model loaded


def _distill_qa(tmp_path, program: type) -> tuple:
    """`compile(program(), teacher=program())` with DPO on 4 train and 2 test QA examples, 2 steps a training: the
    teleprompter, the returned program, the finished run's store, and the examples."""
    from store import Store

    db = tmp_path / "t.duckdb"
    dspy.configure(adapter=LabeledAdapter())  # the student learns the configured adapter's prompts (ChatAdapter's:
    # the test below); LabeledAdapter's are the short ones, so these runs stay fast
    distill = CriticDistill(critic=PairwiseCritic(RUBRIC), objective="dpo", profile="tiny", store=str(db),
                            out=str(tmp_path / "out"), config={"max_steps": 2})
    train, test = _examples("train", 4), _examples("test", 2)
    small = distill.compile(program(), teacher=program(), trainset=train, valset=test)
    s = Store(db, create=False)
    assert s.scalar("SELECT status FROM runs") == "finished"
    return distill, small, s, train, test


def _round_trip_and_rerun(tmp_path, distill, small, program: type, train, test) -> None:
    """The returned program answers; `save`/`load` brings every predictor's distilled LM back, answering the same;
    a rerun of the same `compile` asks no model anything (the calls above ran outside any stage)."""
    from store import Store

    pred = small(question=test[0].question, context=test[0].context)
    assert isinstance(pred.answer, str) and pred.answer.strip()
    small.save(str(tmp_path / "small.json"))
    loaded = program()
    loaded.load(str(tmp_path / "small.json"), allow_unsafe_lm_state=True)
    assert [p.lm.model for _, p in loaded.named_predictors()] == [p.lm.model for _, p in small.named_predictors()]
    assert loaded(question=test[0].question, context=test[0].context).answer == pred.answer
    pipeline_calls = "SELECT count(*) FROM lm_calls WHERE NOT cache_hit AND stage IS NOT NULL"
    calls = Store(tmp_path / "t.duckdb", create=False).scalar(pipeline_calls)
    distill.compile(program(), teacher=program(), trainset=train, valset=test)
    assert Store(tmp_path / "t.duckdb", create=False).scalar(pipeline_calls) == calls


@pytest.mark.slow
def test_compile_distills_a_two_input_program_end_to_end(tmp_path):
    distill, small, s, train, test = _distill_qa(tmp_path, QA)
    out = tmp_path / "out"
    producers = {r["producer"] for r in s.query("SELECT DISTINCT producer FROM candidates WHERE role = 'teacher'")}
    assert len(producers) == 1 and "#program-" in producers.pop()  # the teacher program's runs, N per input
    assert s.scalar("SELECT count(*) FROM candidates WHERE role = 'teacher'") >= 6
    assert s.scalar("SELECT count(*) FROM judgments") > 0
    assert s.scalar("SELECT count(*) FROM training_runs WHERE status = 'finished'") == 2  # imitation, then DPO

    # the returned program: a copy of QA whose predictor answers through the distilled model
    assert isinstance(small, QA) and small.answer.lm.model == f"local/{(out / 'student').resolve()}"
    # ... on the very messages its training data recorded
    inputs = {"question": train[0].question, "context": train[0].context}
    dataset = s.query("SELECT rows, prompts FROM datasets WHERE name = 'imitation'")[0]
    recorded = {json.dumps(json.loads(r["input"])): p
                for r, p in zip(json.loads(dataset["rows"]), json.loads(dataset["prompts"]))}
    assert LabeledAdapter().format(small.answer.signature, [], inputs) == recorded[json.dumps(inputs)]
    _round_trip_and_rerun(tmp_path, distill, small, QA, train, test)


def test_a_program_of_two_predictors_is_a_task_of_its_inputs_and_last_output():
    task = task_from_program(QASteps(), PairwiseCritic(RUBRIC))
    assert list(task.inputs) == ["question", "context"] and list(task.outputs) == ["answer"]
    assert [n for n, _ in task.steps] == ["find", "answer"] and list(task.final_step.inputs) == ["question", "evidence"]
    # each predictor's student prompt is that predictor's own, as LabeledAdapter formats it at inference
    from programs.student import training_prompt

    program = QASteps()
    for name, step in task.steps:
        values = {f: f"<{f}>" for f in step.inputs}
        signature = getattr(program, name).signature
        assert training_prompt(step, step.encode_inputs(values)) == LabeledAdapter().format(signature, [], values)
    assert task.prompt_format != task_from_program(QA(), PairwiseCritic(RUBRIC)).prompt_format


def test_a_two_predictor_student_needs_a_teacher_of_the_same_predictors(tmp_path):
    distill = CriticDistill(critic=RUBRIC, profile="tiny", store=str(tmp_path / "t.duckdb"), out=str(tmp_path / "o"))
    with pytest.raises(UserError) as e:  # every mistake is a UserError: one line, before any model
        distill.compile(QASteps(), teacher=QA(), trainset=_examples("train", 2), valset=_examples("test", 1))
    assert "the teacher has (one predictor)" in str(e.value) and "find: question, context -> evidence" in str(e.value)
    with pytest.raises(UserError, match="brio ranks the teacher's outputs"):
        CriticDistill(critic=RUBRIC, profile="tiny", objective="brio", store=str(tmp_path / "t.duckdb"),
                      out=str(tmp_path / "o")).compile(QASteps(), trainset=_examples("train", 2),
                                                       valset=_examples("test", 1))
    assert not (tmp_path / "t.duckdb").exists()


@pytest.mark.slow
def test_compile_distills_a_two_predictor_program_with_feedback(tmp_path):
    """Example (b): a program of two predictors (quote the evidence, then answer) through `compile` with DPO."""
    distill, small, s, train, test = _distill_qa(tmp_path, QASteps)
    out = tmp_path / "out"
    # the teacher's runs, step by step: each candidate's trace has both predictors' calls
    n_teacher = s.scalar("SELECT count(*) FROM candidates WHERE role = 'teacher'")
    assert n_teacher >= 4 and s.scalar("SELECT count(*) FROM teacher_steps") == 2 * n_teacher
    assert {r["predictor"] for r in s.query("SELECT DISTINCT predictor FROM teacher_steps")} == {"find", "answer"}
    # imitation: one student on both predictors, each row on that predictor's own prompt
    program = QASteps()
    dataset = s.query("SELECT rows, prompts FROM datasets WHERE name = 'imitation'")[0]
    rows, prompts = json.loads(dataset["rows"]), json.loads(dataset["prompts"])
    assert {r["predictor"] for r in rows} == {"find", "answer"}
    for r, prompt in zip(rows, prompts):
        signature = getattr(program, r["predictor"]).signature
        assert prompt == LabeledAdapter().format(signature, [], json.loads(r["input"]))
    # feedback: the last predictor, on what it read in the teacher's first run, judged by the critic
    fed = s.query("SELECT text FROM inputs WHERE task = 'qasteps.answer' AND source LIKE 'teacher-steps:%'")
    assert fed and all(set(json.loads(r["text"])) == {"question", "evidence"} for r in fed)
    assert s.scalar("SELECT count(*) FROM judgments WHERE purpose = 'feedback'") > 0
    assert s.scalar("SELECT count(*) FROM training_runs WHERE status = 'finished'") == 2  # imitation, then DPO
    assert s.scalar("SELECT count(*) FROM evaluations") >= 2

    # the returned program: both predictors answer through the distilled model
    student = f"local/{(out / 'student').resolve()}"
    assert isinstance(small, QASteps) and small.find.lm.model == small.answer.lm.model == student
    _round_trip_and_rerun(tmp_path, distill, small, QASteps, train, test)


class Kind(dspy.Module):
    """Fields that are not text: a list of sentences in, one of a few kinds out."""

    def __init__(self):
        super().__init__()
        self.kind = dspy.Predict(dspy.Signature(
            "question, sentences: list[str] -> kind: Literal['person', 'place', 'thing', 'reason', 'time']",
            "Say what kind of answer the question asks for."))

    def forward(self, question, sentences):
        return self.kind(question=question, sentences=sentences)


def _kind_examples(split: str, n: int) -> list[dspy.Example]:
    return [dspy.Example(question=e.question, sentences=[x.strip() + "." for x in e.context.split(".") if x.strip()])
            .with_inputs("question", "sentences") for e in _examples(split, n)]


@pytest.mark.slow
def test_compile_distills_a_program_whose_fields_are_not_text(tmp_path):
    """A list in and a Literal out, through `compile`: the store keeps them as JSON, the prompts show the list as
    DSPy formats it, and the student learns the choice as the adapter writes it."""
    from store import Store

    db, out = tmp_path / "t.duckdb", tmp_path / "out"
    dspy.configure(adapter=LabeledAdapter())  # the short prompts (ChatAdapter's: the typed two-step test below)
    distill = CriticDistill(critic=PairwiseCritic("Choose the kind that fits the question."), objective="imitation",
                            profile="tiny", store=str(db), out=str(out), config={"max_steps": 2})
    train, test = _kind_examples("train", 4), _kind_examples("test", 2)
    small = distill.compile(Kind(), trainset=train, valset=test)

    s = Store(db, create=False)
    assert s.scalar("SELECT status FROM runs") == "finished"
    stored = [json.loads(r["text"]) for r in s.query("SELECT text FROM inputs")]
    assert all(isinstance(v["sentences"], list) for v in stored)
    kinds = [json.loads(r["text"]) for r in s.query("SELECT text FROM candidates WHERE role = 'teacher'")]
    assert kinds and set(kinds) <= {"person", "place", "thing", "reason", "time"}
    dataset = s.query("SELECT rows, prompts, completions FROM datasets WHERE name = 'imitation'")[0]
    rows, prompts = json.loads(dataset["rows"]), json.loads(dataset["prompts"])
    assert [c["output"] for c in json.loads(dataset["completions"])] == [json.loads(r["output"]) for r in rows]
    values = json.loads(rows[0]["input"])
    assert prompts[0] == LabeledAdapter().format(Kind().kind.signature, [], values)
    assert json.dumps(values["sentences"], ensure_ascii=False) in prompts[0][-1]["content"]
    assert small.kind.lm.model == f"local/{(out / 'student').resolve()}"
    assert s.scalar("SELECT count(*) FROM evaluations") >= 1


class Explain(dspy.Module):
    """Two output fields, as `dspy.ChainOfThought` gives a signature (`reasoning`, then the answer)."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.ChainOfThought(dspy.Signature(
            "question, context -> answer", "Answer the question using only the context, in one short sentence."))

    def forward(self, question: str, context: str) -> dspy.Prediction:
        return self.answer(question=question, context=context)


def test_chain_of_thought_is_a_task_of_two_outputs():
    task = task_from_program(Explain(), PairwiseCritic(RUBRIC))
    assert list(task.outputs) == ["reasoning", "answer"] and list(task.inputs) == ["question", "context"]


@pytest.mark.slow
def test_compile_distills_a_program_of_two_output_fields(tmp_path, dspy_state):
    """reasoning and answer: the teacher's runs stored as JSON of both, the student trained on the adapter's rendering
    of both, the critic reading both (a 2-step student rarely writes both yet, so the critic is asked directly)."""
    from programs.critic import Critic
    from programs.lm import resolve_lm
    from programs.student import training_completion
    from store import Store

    db, out = tmp_path / "t.duckdb", tmp_path / "out"
    dspy.configure(adapter=LabeledAdapter())
    distill = CriticDistill(critic=RUBRIC, objective="imitation", profile="tiny", store=str(db), out=str(out),
                            config={"max_steps": 2})
    train, test = _examples("train", 4), _examples("test", 2)
    try:
        small = distill.compile(Explain(), trainset=train, valset=test)
    except DistillError as e:  # a 2-step student rarely writes both fields: then no student is chosen, in one line
        assert str(e).startswith("the student failed on ") and "missing field(s)" in str(e), str(e)
        small = None
    s = Store(db, create=False)
    failed = s.scalar("SELECT count(*) FROM student_failures")
    assert (small is None) == (failed == s.scalar("SELECT count(*) FROM inputs WHERE split = 'test'"))
    rows = s.query("SELECT input_id, text FROM candidates WHERE role = 'teacher' ORDER BY input_id, rank")
    outputs = [json.loads(r["text"]) for r in rows]
    assert outputs and all(set(o) == {"reasoning", "answer"} for o in outputs)
    task = task_from_program(Explain(), PairwiseCritic(RUBRIC))
    trained = json.loads(s.scalar("SELECT rows FROM datasets WHERE name = 'imitation'"))
    assert trained and all(training_completion(task, r["output"]).startswith("Reasoning: ") and
                           "\nAnswer: " in training_completion(task, r["output"]) for r in trained)
    assert small is None or small.answer.predict.lm.model.startswith("local/")  # its predictor: the student

    text = s.scalar("SELECT text FROM inputs WHERE split = 'train' LIMIT 1")
    critic_lm = resolve_lm("local/qwen2.5-coder-0.5b-instruct", temperature=0.0, max_tokens=8)
    with dspy.context(lm=critic_lm, adapter=LabeledAdapter()):
        judged = Critic(task).judge_order(text, rows[0]["text"], rows[-1]["text"])
    assert judged.choice in (1, 2, None)
    prompt = critic_lm.history[-1]["messages"][-1]["content"]
    assert "Response 1: Reasoning: " in prompt and "\nAnswer: " in prompt and "Response 2: Reasoning: " in prompt


@pytest.mark.slow
def test_a_program_optimized_with_gepa_against_the_critic_is_then_distilled(tmp_path, monkeypatch, dspy_state):
    """examples/python/qa_gepa_distill.py: GEPA optimizes QA with the critic as its feedback metric, then the
    optimized program teaches; its runs (its state in the producer name) are the student's training data."""
    from store import Store, stable_id, to_json

    monkeypatch.syspath_prepend(str(ROOT / "examples" / "python"))
    import qa_gepa_distill

    optimized, small = qa_gepa_distill.optimize_then_distill(store=str(tmp_path / "t.duckdb"),
                                                             out=str(tmp_path / "out"), max_metric_calls=8,
                                                             objective="imitation")  # feedback: tested above
    s = Store(tmp_path / "t.duckdb", create=False)
    state = stable_id("teacher-program", type(optimized).__qualname__, to_json(optimized.dump_state()))
    producers = {r["producer"] for r in s.query("SELECT DISTINCT producer FROM candidates WHERE role = 'teacher'")}
    assert producers == {f"local/qwen2.5-coder-0.5b-instruct#program-{state[:10]}"}
    trained = json.loads(s.scalar("SELECT rows FROM datasets WHERE name = 'imitation'"))
    outputs = {r["text"] for r in s.query("SELECT text FROM candidates WHERE role = 'teacher'")}
    assert trained and {r["output"] for r in trained} <= outputs  # the optimized program's runs, and only those
    assert s.scalar("SELECT count(*) FROM training_runs WHERE status = 'finished'") == 1
    assert small.answer.lm.model.startswith("local/")


def test_the_critic_metric_scores_a_program_of_two_inputs():
    """`CriticDistill.metric` reads every input field of an example (GEPA's and dspy.Evaluate's metric)."""
    metric = CriticDistill(critic=RUBRIC, profile="tiny").metric(QA(), feedback=False)
    value, reasons = metric.judge(dspy.Example(question="Why?"), dspy.Prediction(answer="Because."), reasons=False)
    assert value == 0.0 and "lacks the input field(s) question, context" in reasons[0]


def test_the_critic_metric_reads_fields_that_are_not_text():
    metric = CriticDistill(critic="Choose the kind that fits.", profile="tiny").metric(Kind(), feedback=False)
    value, reasons = metric.judge(dspy.Example(question="Who?"), dspy.Prediction(kind="person"), reasons=False)
    assert value == 0.0 and "lacks the input field(s) question, sentences" in reasons[0]
    value, reasons = metric.judge(dspy.Example(question="Who?", sentences=["Otto did."]), dspy.Prediction(kind=None),
                                  reasons=False)
    assert value == 0.0 and "no output to judge" in reasons[0]
    assert metric.task.encode_outputs(dspy.Prediction(kind="person")) == '"person"'


class AnswersFirst(dspy.Module):
    """Its predictors in `__init__` in the other order than it calls them: the task's output is `evidence`."""

    def __init__(self):
        super().__init__()
        self.answer = dspy.Predict("question, evidence -> answer")
        self.find = dspy.Predict("question, context -> evidence")

    def forward(self, question, context):
        return dspy.Prediction(answer=f"{question} {context}")  # what its predictors would give, without an LM


def test_a_program_that_returns_other_fields_than_its_task_stops_teaching_in_one_line(tmp_path):
    from programs.teach import teach
    from programs.teacher import ProgramTeacher
    from programs.tasks import TaskError
    from store import Store

    task = task_from_program(AnswersFirst(), PairwiseCritic(RUBRIC))
    assert list(task.outputs) == ["evidence"]
    inputs = [{"input_id": f"i{n}", "text": task.encode_inputs({"question": f"q{n}", "context": "c"})}
              for n in range(3)]
    with pytest.raises(TaskError) as e:
        teach(Store(tmp_path / "t.duckdb"), ProgramTeacher(AnswersFirst(), task), None, inputs, producer="p",
              run_id="r", threads=2)
    assert "AnswersFirst returned answer, but its task's output is evidence" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_typed_two_step_program_answers_in_a_fresh_process_under_dspys_default_adapter(tmp_path, dspy_state):
    """A router with a Literal label, then a reply writer, distilled with no adapter configured: the student learns
    ChatAdapter's prompts, every label it gives is one of the four, the saved program answers in a fresh process
    with no configure line (and no warning about the adapter), and the report compares each step with the teacher's."""
    import subprocess
    import sys

    from store import Store

    example = _example_module("support_distill")
    dspy_state.configure(adapter=None)
    db, out = tmp_path / "t.duckdb", tmp_path / "out"
    distill = example.distill(max_steps=4)
    distill.store, distill.out = str(db), str(out)
    small = distill.compile(example.Support(), teacher=example.Support(), trainset=example.examples("train"),
                            valset=example.examples("test"))
    assert dspy_state.settings.adapter is None  # compile put the user's (absent) adapter back

    s = Store(db, create=False)
    config = json.loads(s.scalar("SELECT config FROM training_runs LIMIT 1"))
    assert config["adapter"] == "chat" and config["max_length"] == 512
    prompts = json.loads(s.scalar("SELECT prompts FROM datasets WHERE name = 'imitation'"))
    assert all("[[ ## " in p[-1]["content"] for p in prompts)  # each row on its own predictor's ChatAdapter prompt
    assert dspy.ChatAdapter().format(example.Support().route.signature, [], {"ticket": example.TICKETS[0]}) in prompts
    labels = []
    for ticket in example.TICKETS:
        with dspy.context(trace=[]):
            answer = small(ticket=ticket)
            labels.append(dspy.settings.trace[0][2].category)
        assert answer.reply.strip()
    assert set(labels) <= set(example.CATEGORIES)

    report = (out / "report.md").read_text()
    assert "## Step by step" in report and "| `route` |" in report and "| `reply` |" in report
    assert s.scalar("SELECT count(*) FROM candidates WHERE role = 'student' AND trace IS NOT NULL") >= 3

    saved = tmp_path / "support-small.json"
    small.save(str(saved))
    code = ("import json, sys, dspy; sys.path.insert(0, sys.argv[1]); from support_distill import Support; "
            "p = Support(); p.load(sys.argv[2], allow_unsafe_lm_state=True); out = []\n"
            "for t in ['I was billed for a plan I never bought.', 'My order has not shipped after ten days.']:\n"
            "    with dspy.context(trace=[]):\n"
            "        r = p(ticket=t); out.append([dspy.settings.trace[0][2].category, r.reply])\n"
            "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-W", "always", "-c", code, str(ROOT / "examples" / "python"), str(saved)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(label in example.CATEGORIES and reply.strip() for label, reply in answers)
    assert "was trained on" not in done.stderr  # the adapter it learned is the one it runs under
