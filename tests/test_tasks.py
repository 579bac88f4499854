"""Any task: built-in (humor, formal), a TOML file or a Python reference; signatures built from it; one-line errors for
bad task specs (exit 2 from the CLIs); and the tiny pipeline end to end on the `formal` task."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import dspy
import pytest

from programs.program_tasks import from_program
from programs.adapter import LabeledAdapter
from programs.config import ConfigError, PipelineConfig, build_config
from programs.inputs import InputError, load_inputs
from programs.builtin_tasks import FORMAL, HUMOR, TASKS
from programs.task_sources import get_task
from programs.tasks import Task, TaskError, student_signature

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ELI5 = ROOT / "examples" / "tasks" / "eli5.toml"

TOML_TASK = '''
name = "simplify"
teacher_instruction = "Write {n} simpler versions of the input text as a list numbered as {numbered}."
critic_instruction = "Choose the simpler rewrite that keeps the meaning."
student_instruction = "Rewrite the sentence in simpler words."
input_desc = "a complicated sentence"
output_desc = "a simpler sentence"
inputs = "data/in.jsonl"

[[demos]]
text = "The committee deliberated at length before reaching a consensus."
outputs = ["The group talked a long time before they agreed.", "They discussed it for ages, then agreed."]
'''


def write_task(tmp_path: Path, text: str = TOML_TASK, name: str = "simplify.toml") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "in.jsonl").write_text(
        "\n".join(json.dumps({"text": f"Sentence number {i} is rather convoluted.", "split": s})
                  for i, s in enumerate(["train", "train", "test", "dev", "ood"])) + "\n")
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# --- built-in tasks -------------------------------------------------------------------------------------------------

def test_builtin_names_resolve_to_the_same_objects():
    assert get_task("humor") is HUMOR and get_task("formal") is FORMAL
    assert set(TASKS) >= {"humor", "formal"}


def test_formal_bundled_inputs_are_casual_varied_and_split():
    rows = load_inputs("bundled", FORMAL)
    assert len(rows) >= 150
    assert len({r["text"].lower() for r in rows}) == len(rows)
    splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "dev", "test")}
    assert splits["train"] > splits["test"] > 0 and splits["dev"] > 0 and sum(splits.values()) == len(rows)
    casual = ("gonna", " u ", "can't", "i'm", "wanna", "kinda", "thx", "lol", "!")
    assert sum(any(c in f" {r['text'].lower()} " for c in casual) for r in rows) > 0.3 * len(rows)
    assert all(4 <= len(r["text"].split()) <= 30 for r in rows)
    humor = {r["text"] for r in load_inputs("bundled", HUMOR)}
    assert not humor & {r["text"] for r in rows}
    ood = [json.loads(line) for line in FORMAL.ood_inputs.read_text().splitlines() if line.strip()]
    assert len(ood) >= 20 and {o["split"] for o in ood} == {"ood"}
    from metrics.audit import load_pairs

    pairs = load_pairs(ROOT / "programs" / "data" / "formal_audit_pairs.jsonl").pairs
    assert len(pairs) >= 60 and {pr["input"] for pr in pairs} <= {r["text"] for r in rows}


def test_formal_signatures_and_demo():
    sig = FORMAL.teacher_signature(3)
    assert "3 different formal" in sig.instructions and "1., 2., 3." in sig.instructions
    assert list(sig.input_fields) == ["text"] and list(sig.output_fields) == ["paraphrases"]
    assert "formal and polished" in FORMAL.critic_signature().instructions
    assert len(FORMAL.teacher_demos) == 1 and len(FORMAL.teacher_demos[0]["outputs"]) == 3


# --- TOML tasks -----------------------------------------------------------------------------------------------------

def test_toml_task_loads_with_inputs_relative_to_the_file(tmp_path, monkeypatch):
    p = write_task(tmp_path)
    monkeypatch.chdir(ROOT)  # the task file's own folder, not the working directory, anchors `inputs`
    task = get_task(str(p))
    assert isinstance(task, Task) and task.name == "simplify"
    assert task.bundled_inputs == (tmp_path / "data" / "in.jsonl").resolve()
    assert task.teacher_demos[0]["outputs"][1] == "They discussed it for ages, then agreed."
    rows = load_inputs("bundled", task)
    assert [r["split"] for r in rows] == ["train", "train", "test", "dev", "ood"]


def test_toml_task_name_defaults_to_the_file_stem_and_inputs_are_optional(tmp_path):
    text = "\n".join(line for line in TOML_TASK.splitlines() if not line.startswith(("name", "inputs")))
    task = get_task(str(write_task(tmp_path, text, "my-task.toml")))
    assert task.name == "my-task" and task.bundled_inputs is None
    with pytest.raises(InputError, match="has no bundled inputs; pass --inputs FILE"):
        load_inputs("bundled", task)


def test_example_eli5_task_loads_and_has_train_and_test_inputs():
    task = get_task(str(ELI5))
    assert task.name == "eli5" and len(task.teacher_demos) == 1
    rows = load_inputs("bundled", task)
    assert 30 <= len(rows) <= 60
    assert {r["split"] for r in rows} == {"train", "dev", "test"}
    assert sum(r["split"] == "train" for r in rows) >= 20 and sum(r["split"] == "test" for r in rows) >= 8
    assert "five-year-old" in task.teacher_signature(3).instructions


# --- Python tasks ---------------------------------------------------------------------------------------------------

PY_TASK = '''
from pathlib import Path
from programs.tasks import Task

SHOUT = Task(
    name="shout",
    teacher_instruction="Write {n} versions of the input in capital letters, numbered as {numbered}.",
    critic_instruction="Choose the louder version that keeps the meaning.",
    student_instruction="Rewrite the sentence in capital letters.",
    input_desc="a sentence",
    output_desc="the sentence in capitals",
    bundled_inputs=Path(__file__).parent / "shout.txt",
    teacher_demos=[{"text": "hello there", "outputs": ["HELLO THERE", "HELLO, THERE!"]}],
)
NOT_A_TASK = {"name": "shout"}
'''


def test_python_file_task(tmp_path):
    (tmp_path / "shout.txt").write_text("one line\nanother line\n")
    (tmp_path / "shout_task.py").write_text(PY_TASK)
    task = get_task(f"{tmp_path / 'shout_task.py'}:SHOUT")
    assert task.name == "shout" and task.bundled_inputs == tmp_path / "shout.txt"
    assert task.teacher_demos == ({"text": "hello there", "outputs": ["HELLO THERE", "HELLO, THERE!"]},)
    assert get_task(f"{tmp_path / 'shout_task.py'}:SHOUT") is task  # the file runs once per process
    assert len(load_inputs("bundled", task)) == 2


def test_python_module_task(tmp_path, monkeypatch):
    pkg = tmp_path / "mytasks_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "defs.py").write_text(PY_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_task("mytasks_pkg.defs:SHOUT").name == "shout"
    assert get_task("programs.builtin_tasks:FORMAL") is FORMAL


def test_every_task_named_in_the_docs_resolves(monkeypatch):
    import re

    monkeypatch.chdir(ROOT)  # the docs' commands run from the repository root
    specs = set(re.findall(r"--task (\S+)", (ROOT / "docs" / "tasks.md").read_text())) - {"my.toml"}
    assert {"formal", "examples/tasks/eli5.toml", "examples/tasks/polite.py:POLITE", "programs.builtin_tasks:FORMAL"} <= specs
    for spec in specs:
        assert isinstance(get_task(spec), Task), spec
    polite = get_task("examples/tasks/polite.py:POLITE")
    assert polite.name == "polite" and polite.bundled_inputs == FORMAL.bundled_inputs
    assert "warm and polite" in polite.critic_signature().instructions


# --- signatures from a custom task ----------------------------------------------------------------------------------

def test_signatures_and_prompts_come_from_the_custom_task(tmp_path):
    from programs.student import training_prompt
    from programs.teacher import Teacher

    task = get_task(str(write_task(tmp_path)))
    teacher = task.teacher_signature(2)
    assert teacher.instructions == "Write 2 simpler versions of the input text as a list numbered as 1., 2.."
    assert teacher.input_fields["text"].json_schema_extra["desc"] == "a complicated sentence"
    critic = task.critic_signature()
    assert critic.instructions == task.critic_instruction
    assert list(critic.input_fields) == ["text", "paraphrase_1", "paraphrase_2"]
    assert list(critic.output_fields) == ["reason", "choice"]
    assert critic.input_fields["paraphrase_1"].json_schema_extra["desc"] == "a simpler sentence"
    student = student_signature(task)
    assert student.instructions == "Rewrite the sentence in simpler words."
    assert list(student.output_fields) == ["paraphrase"]

    messages = training_prompt(task, "A needlessly elaborate sentence.")
    assert messages[0]["content"].startswith("Rewrite the sentence in simpler words.")
    assert "a simpler sentence" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "Text: A needlessly elaborate sentence."}

    t = Teacher(task, n=2)
    shown = LabeledAdapter().format(t.generate.signature, demos=t.generate.demos, inputs={"text": "X"})
    assert shown[0]["content"].startswith("Write 2 simpler versions")
    assert shown[2]["content"] == ("1. The group talked a long time before they agreed.\n"
                                   "2. They discussed it for ages, then agreed.")


def test_teacher_instruction_without_placeholders_is_fine(tmp_path):
    text = TOML_TASK.replace("Write {n} simpler versions of the input text as a list numbered as {numbered}.",
                             "Write three simpler versions of the input text, numbered.")
    task = get_task(str(write_task(tmp_path, text)))
    assert task.teacher_signature(3).instructions == "Write three simpler versions of the input text, numbered."


def test_literal_braces_are_escaped_by_doubling(tmp_path):
    text = TOML_TASK.replace("as a list numbered as {numbered}.", "as a list numbered as {numbered}, no {{markup}}.")
    task = get_task(str(write_task(tmp_path, text)))
    assert task.teacher_signature(2).instructions.endswith("numbered as 1., 2., no {markup}.")


# --- errors ---------------------------------------------------------------------------------------------------------

def _bad_cases(tmp_path: Path) -> list[tuple[str, str]]:
    ok = write_task(tmp_path)
    cases = []

    def toml(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    cases.append(("nope", "unknown task 'nope'"))
    cases.append((str(tmp_path / "absent.toml"), "task file not found"))
    cases.append((toml("syntax.toml", 'teacher_instruction = "unclosed\n'), "not valid TOML"))
    cases.append((toml("missing.toml", 'teacher_instruction = "x {n}"\n'),
                  "missing required key(s) critic_instruction, student_instruction, input_desc, output_desc"))
    cases.append((toml("unknown.toml", 'temperature = 0.3\n' + TOML_TASK), "unknown key(s) temperature"))
    cases.append((toml("demokey.toml", TOML_TASK + 'temperature = 0.3\n'),
                  "[[demos]] 1 has unknown key(s) temperature"))
    cases.append((toml("noinputs.toml", TOML_TASK.replace('"data/in.jsonl"', '"data/nothere.jsonl"')),
                  "inputs file not found"))
    cases.append((toml("placeholder.toml", TOML_TASK.replace("{numbered}", "{count}")),
                  "unknown placeholder {count}"))
    cases.append((toml("malformed.toml", TOML_TASK.replace("{numbered}.", "{numbered.")),
                  "not a valid format string"))
    cases.append((toml("positional.toml", TOML_TASK.replace("{numbered}", "{}")), "positional placeholder"))
    cases.append((toml("empty.toml", TOML_TASK.replace('"Rewrite the sentence in simpler words."', '""')),
                  "student_instruction must be a non-empty string"))
    cases.append((toml("type.toml", TOML_TASK.replace('"a simpler sentence"', "3")),
                  "output_desc must be a non-empty string"))
    cases.append((toml("demo.toml", TOML_TASK.replace("outputs = [", "answers = [")), "[[demos]] 1 has unknown key"))
    cases.append((toml("demo2.toml", TOML_TASK.replace('outputs = ["The group', 'outputs = [3, "The group')),
                  "teacher demo 1 needs a text and a non-empty list of output strings"))
    (tmp_path / "shout.txt").write_text("x\n")
    (tmp_path / "defs.py").write_text(PY_TASK)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    cases.append((f"{tmp_path / 'defs.py'}:NOT_A_TASK", "is a dict, not a programs.tasks.Task"))
    cases.append((f"{tmp_path / 'defs.py'}:MISSING", "has no attribute 'MISSING'"))
    cases.append((f"{tmp_path / 'nothere.py'}:SHOUT", "task file not found"))
    cases.append((f"{tmp_path / 'broken.py'}:X", "cannot load (RuntimeError: boom)"))
    cases.append(("no_such_module_xyz:TASK", "cannot import 'no_such_module_xyz'"))
    cases.append(("programs.tasks:", "bad task reference"))
    cases.append((str(ok.with_suffix("")), "unknown task"))
    return cases


def test_bad_task_specs_raise_one_line_task_errors(tmp_path):
    for spec, message in _bad_cases(tmp_path):
        with pytest.raises(TaskError) as info:
            get_task(spec)
        text = str(info.value)
        assert message in text, (spec, text)
        assert "\n" not in text, (spec, text)


def test_a_bad_task_fails_when_the_config_is_built(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'nope'"):  # the task's own one line, not re-wrapped
        build_config("tiny", overrides={"task": "nope"})
    cfg_file = tmp_path / "pipeline.toml"
    cfg_file.write_text(f'task = "{write_task(tmp_path)}"\nlimit = 2\n')
    assert build_config("tiny", str(cfg_file)).task == str(tmp_path / "simplify.toml")
    assert build_config("tiny", overrides={"task": "formal"}).task == "formal"


def test_ood_inputs_follow_the_task(tmp_path):
    from programs.inputs import split_inputs

    cfg = PipelineConfig(task="formal", limit=2, ood_inputs=3)
    chosen = split_inputs(cfg, FORMAL)[0]
    assert len(chosen["ood"]) == 3 and chosen["ood"][0]["text"].startswith("this blender")
    custom = get_task(str(write_task(tmp_path)))  # no ood file: the rows of its inputs whose split is 'ood'
    chosen = split_inputs(PipelineConfig(task="x", ood_inputs=5), custom)[0]
    assert [r["text"] for r in chosen["ood"]] == ["Sentence number 4 is rather convoluted."]
    eli5 = get_task(str(ELI5))
    with pytest.raises(InputError, match="has no out-of-distribution inputs"):
        split_inputs(PipelineConfig(task="eli5", ood_inputs=5), eli5)[0]


def test_cli_bad_task_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('teacher_instruction = "Write {n} things {oops"\n')
    out = subprocess.run([sys.executable, "-m", "programs.compile", "--profile", "tiny", "--task", str(bad),
                          "--db", str(tmp_path / "e.duckdb"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "missing required key(s)" in out.stderr and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.strip()][-1].startswith("error:")
    assert not (tmp_path / "e.duckdb").exists()  # nothing ran


def test_evaluate_and_audit_clis_reject_a_bad_task(tmp_path, capsys):
    from finetune.evaluate import main as evaluate_main
    from metrics.audit import main as audit_main

    inputs = tmp_path / "in.txt"
    inputs.write_text("hello there\n")
    code = evaluate_main(["--student", str(tmp_path), "--inputs", str(inputs), "--task", "nope",
                          "--db", str(tmp_path / "e.duckdb")])
    assert code == 2 and "unknown task 'nope'" in capsys.readouterr().err
    code = audit_main(["--pairs", str(ROOT / "programs" / "data" / "audit_pairs.jsonl"), "--task",
                       str(tmp_path / "missing.toml"), "--db", str(tmp_path / "e.duckdb")])
    assert code == 2 and "task file not found" in capsys.readouterr().err
    assert not (tmp_path / "e.duckdb").exists()


# --- end to end -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_pipeline_end_to_end_on_the_formal_task(tmp_path):
    from store import Store

    db, out = tmp_path / "t.duckdb", tmp_path / "out"
    cmd = [sys.executable, "-m", "programs.compile", "--task", "formal", "--profile", "tiny", "--limit", "2",
           "--max-steps", "2", "--objective", "none", "--db", str(db), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    s = Store(db, create=False)
    assert s.scalar("SELECT status FROM runs") == "finished"
    assert json.loads(s.scalar("SELECT config FROM runs"))["task"] == "formal"
    rows = s.query("SELECT task, text, split FROM inputs ORDER BY split, text")
    bundled = {r["text"] for r in load_inputs("bundled", FORMAL)}
    assert len(rows) == 4 and {r["task"] for r in rows} == {"formal"} and {r["text"] for r in rows} <= bundled
    n_teacher = s.scalar("SELECT count(*) FROM candidates WHERE role = 'teacher'")
    assert 4 <= n_teacher <= 12
    # the teacher was asked the formal task's prompt, with its demo
    prompts = [r["messages"] for r in s.query("SELECT messages FROM lm_calls WHERE stage = 'teach'")]
    assert prompts and all("formal and polished" in str(m) and "hey, can't make it tonight" in str(m) for m in prompts)
    # 2 test inputs x 2 orders, and a pointwise score of each of the 4 outputs (the default critic)
    assert s.scalar("SELECT count(*) FROM judgments WHERE method = 'choice-first'") == 4
    assert s.scalar("SELECT count(*) FROM judgments WHERE method = 'pointwise'") == 4
    judged = [r["messages"] for r in s.query("SELECT messages FROM lm_calls WHERE stage = 'evaluate' "
                                             "AND CAST(messages AS VARCHAR) LIKE '%Choose the better rewrite%'")]
    assert len(judged) >= 2
    ev = s.query("SELECT * FROM evaluations")
    assert len(ev) == 1 and 0.0 <= ev[0]["wtr_prob"] <= 1.0
    assert s.scalar("SELECT count(*) FROM training_runs WHERE status = 'finished'") == 1
    assert "formal" in (out / "report.md").read_text()


# -- tasks of any signature ----------------------------------------------------------------------------------------


def _builtin_prompts() -> dict:
    """Every prompt the built-in tasks send: teacher (with its demo), critic in both modes and every rubric,
    pointwise, student, and the critic metric's rubric and critique."""
    from metrics.critic_metric import CriticScore
    from programs.student import training_prompt
    from programs.teacher import Teacher

    a, out = LabeledAdapter(), {}
    for name, task in TASKS.items():
        t = Teacher(task, 3)
        out[f"{name}/teacher"] = a.format(t.generate.signature, t.generate.demos, {"text": "I am tired."})
        for mode in ("reason-first", "choice-first"):
            for r in range(len(task.rubrics)):
                out[f"{name}/critic/{mode}/{r}"] = a.format(task.critic_signature(mode, r), [], {
                    "text": "I am tired.", "paraphrase_1": "A", "paraphrase_2": "B"})
        out[f"{name}/pointwise"] = a.format(task.pointwise_signature(), [], {"text": "I am tired.", "output": "A"})
        out[f"{name}/student"] = training_prompt(task, "I am tired.")
        metric = CriticScore(task)
        out[f"{name}/rubric"] = a.format(metric._verdict.signature, [], {"text": "I am tired.", "output": "A"})
        out[f"{name}/critique"] = a.format(metric._critique.signature, [], {"text": "I am tired.", "output": "A"})
    return out


def test_builtin_prompts_are_byte_identical_to_before_tasks_had_fields():
    import hashlib

    prompts = _builtin_prompts()
    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()
    # measured on 186c1bf, before tasks of any signature: a change here re-asks every stored call
    assert (len(prompts), digest) == (22, "eb19c8679523ba691701d909ec410ea7d054ea1d5418d392bc2a5e578ee82dec")
    assert HUMOR.inputs == {"text": "a literal sentence"} and HUMOR.output_name == "paraphrase"
    assert HUMOR.encode_inputs({"text": "I am tired."}) == "I am tired."  # so input ids stay what they were


QA = ROOT / "examples" / "tasks" / "qa.toml"


def test_a_two_input_signature_task_from_toml():
    from programs.student import training_prompt
    from programs.teacher import Teacher

    task = get_task(str(QA))
    assert list(task.inputs) == ["question", "context"] and task.output_name == "answer"
    rows = load_inputs("bundled", task)
    assert len(rows) == 48 and {r["split"] for r in rows} == {"train", "dev", "test"}
    values = task.input_values(rows[0]["text"])
    assert set(values) == {"question", "context"} and json.loads(rows[0]["text"]) == values
    assert task.encode_inputs(values) == rows[0]["text"]
    system, user = training_prompt(task, rows[0]["text"])
    assert user["content"] == f"Question: {values['question']}\nContext: {values['context']}"
    assert system["content"].endswith("Answer with the answer only: a one-sentence answer to the question, taken "
                                      "from the context.")
    critic = LabeledAdapter().format(task.critic_signature("choice-first"), [], {**values, **task.candidate_fields(
        "It rained.", "A pipe burst.")})
    assert critic[-1]["content"].endswith("Answer 1: It rained.\nAnswer 2: A pipe burst.")
    teacher = Teacher(task, 3)
    demo = teacher.generate.demos[0]
    assert demo.question.startswith("Why was the museum") and demo.answers.startswith("1. ")


@pytest.mark.parametrize("body, message", [
    ('[fields]\nquestion = "q"\n', "[fields] describes a signature's fields; add signature"),
    ('signature = "question context answer"\n', "must look like"),
    ('signature = "question ->"\n', "needs at least one input and one output field"),
    ('signature = "q -> a"\n[fields]\nz = "zed"\n', "field description(s) for z"),
    ('signature = "Question -> a"\n', "bad field name 'Question'"),
    ('signature = "q, output -> a"\n', "bad field name 'output'"),
    ('signature = "q, q -> a"\n', "a field name is used twice"),
    ('signature = "q, c -> a"\n[[demos]]\nq = "x"\noutputs = ["y"]\n', "[[demos]] 1 lacks c"),
])
def test_bad_signature_tasks_are_one_line(tmp_path, body, message):
    f = tmp_path / "t.toml"
    f.write_text('teacher_instruction = "t"\ncritic_instruction = "c"\nstudent_instruction = "s"\n' + body)
    with pytest.raises(TaskError) as e:
        get_task(str(f))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_inputs_of_a_signature_task_need_a_column_per_field(tmp_path):
    task = get_task(str(QA))
    bad = tmp_path / "in.jsonl"
    bad.write_text(json.dumps({"question": "Why?"}) + "\n")
    with pytest.raises(InputError, match="no column for the task's input field.s. context"):
        load_inputs(str(bad), task)
    bad.write_text(json.dumps({"question": "Why?", "context": ["a list"]}) + "\n")
    with pytest.raises(InputError, match="field 'context' is a list"):
        load_inputs(str(bad), task)
    txt = tmp_path / "in.txt"
    txt.write_text("Why?\n")
    with pytest.raises(InputError, match="use .jsonl, .csv or .parquet with a column for each"):
        load_inputs(str(txt), task)
    csv = tmp_path / "in.csv"
    csv.write_text("Question,Context,split\nWhy?,Because.,test\n")
    assert load_inputs(str(csv), task) == [{"text": '{"question": "Why?", "context": "Because."}', "split": "test"}]


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_on_a_two_input_task(tmp_path):
    """question, context -> answer from a task file: teacher, critic and student see both fields, and the store keeps
    each input as a JSON object of them (feedback on such a task runs in tests/test_distill.py)."""
    from store import Store

    db, out = tmp_path / "t.duckdb", tmp_path / "out"
    cmd = [sys.executable, "-m", "programs.compile", "--task", str(QA), "--profile", "tiny", "--limit", "2",
           "--max-steps", "2", "--objective", "none", "--db", str(db), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    s = Store(db, create=False)
    assert s.scalar("SELECT status FROM runs") == "finished"
    texts = [r["text"] for r in s.query("SELECT text FROM inputs")]
    assert texts and all(set(json.loads(t)) == {"question", "context"} for t in texts)
    teach = [str(r["messages"]) for r in s.query("SELECT messages FROM lm_calls WHERE stage = 'teach'")]
    assert teach and all("Question: " in m and "Context: " in m for m in teach)
    judged = [str(r["messages"]) for r in s.query("SELECT messages FROM lm_calls WHERE stage = 'evaluate' "
                                                   "AND CAST(messages AS VARCHAR) LIKE '%Answer 1:%'")]
    assert judged and all("Question: " in m and "Context: " in m for m in judged)
    assert s.scalar("SELECT count(*) FROM training_runs WHERE status = 'finished'") == 1
    assert s.scalar("SELECT count(*) FROM evaluations") >= 1
    prompts = json.loads(s.scalar("SELECT prompts FROM datasets WHERE name = 'imitation'"))
    assert prompts and prompts[0][-1]["content"].startswith("Question: ")


QA_PROGRAM = ROOT / "examples" / "tasks" / "qa_program.toml"


def _tiny_compile(task: Path, objective: str, tmp_path: Path):
    """`python -m programs.compile` on the tiny profile, 2 inputs a split, 2 steps: the finished run's store."""
    from store import Store

    db = tmp_path / "t.duckdb"
    cmd = [sys.executable, "-m", "programs.compile", "--task", str(task), "--profile", "tiny", "--limit", "2",
           "--max-steps", "2", "--objective", objective, "--db", str(db), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    s = Store(db, create=False)
    assert s.scalar("SELECT status FROM runs") == "finished"
    return s


def test_a_task_file_can_name_a_dspy_program():
    from programs.student import training_prompt

    task = get_task(str(QA_PROGRAM))
    assert type(task.program).__name__ == "QA" and task.name == "qa-program"
    assert list(task.inputs) == ["question", "context"] and task.output_name == "answer"
    assert task.student_instruction == task.program.answer.signature.instructions
    text = load_inputs("bundled", task)[0]["text"]
    # the student is trained on the program's own prompt
    assert training_prompt(task, text) == LabeledAdapter().format(task.program.answer.signature, [],
                                                                  task.input_values(text))


@pytest.mark.parametrize("body, message", [
    ('program = "{py}:QA"\nsignature = "a -> b"\ncritic_instruction = "c"\n', "signature come from the program"),
    ('program = "{py}:QA"\n', "missing required key critic_instruction"),
    ('program = "{py}"\ncritic_instruction = "c"\n', "program must be path/to/file.py:ATTR"),
    ('program = "{py}:Nope"\ncritic_instruction = "c"\n', "has no attribute 'Nope'"),
    ('program = "{py}:examples"\ncritic_instruction = "c"\n', "examples is a function, not a DSPy program"),
])
def test_bad_program_task_files_are_one_line(tmp_path, body, message):
    f = tmp_path / "t.toml"
    f.write_text(body.format(py=ROOT / "examples" / "python" / "qa_distill.py"))
    with pytest.raises(TaskError) as e:
        get_task(str(f))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_program_named_as_a_task_asks_for_its_rubric():
    with pytest.raises(TaskError, match="is a DSPy program: name it in a task file with the critic's rubric"):
        get_task(f"{ROOT / 'examples' / 'python' / 'qa_distill.py'}:QA")


@pytest.mark.slow
def test_tiny_pipeline_runs_a_program_named_in_a_task_file(tmp_path):
    s = _tiny_compile(QA_PROGRAM, "none", tmp_path)
    producers = [r["producer"] for r in s.query("SELECT DISTINCT producer FROM candidates WHERE role = 'teacher'")]
    assert len(producers) == 1 and "#program-" in producers[0]  # the program taught, N runs per input
    assert s.scalar("SELECT count(*) FROM evaluations") >= 1


QA_STEPS = ROOT / "examples" / "tasks" / "qa_steps.toml"


@pytest.mark.slow
def test_tiny_pipeline_runs_a_program_of_two_predictors_from_a_task_file(tmp_path):
    """examples/tasks/qa_steps.toml (quote the evidence, then answer) through the CLI with DPO: the student learns
    both predictors from the teacher's steps, feedback trains the last one, evaluation runs the program."""
    s = _tiny_compile(QA_STEPS, "dpo", tmp_path)
    assert {r["predictor"] for r in s.query("SELECT DISTINCT predictor FROM teacher_steps")} == {"find", "answer"}
    rows = json.loads(s.scalar("SELECT rows FROM datasets WHERE name = 'imitation'"))
    assert {r["predictor"] for r in rows} == {"find", "answer"}
    assert s.scalar("SELECT count(*) FROM inputs WHERE task = 'qa-steps.answer'") >= 1
    assert s.scalar("SELECT count(*) FROM training_runs WHERE status = 'finished'") == 2
    # evaluation ran the program on the student: both predictors' prompts reached it
    student_calls = [str(r["messages"]) for r in s.query("SELECT messages FROM lm_calls WHERE stage = 'evaluate' "
                                                         "AND model NOT LIKE '%qwen%'")]
    assert any("Context: " in m for m in student_calls) and any("Evidence: " in m for m in student_calls)
    assert s.scalar("SELECT count(*) FROM evaluations") >= 2


@pytest.mark.slow
def test_finetune_evaluate_runs_a_program_of_two_predictors(tmp_path):
    """`python -m finetune.evaluate --task qa_steps.toml`: the program teaches the references and the student runs
    the program, both predictors, as the pipeline's evaluation does."""
    from store import Store

    db = tmp_path / "t.duckdb"
    cmd = [sys.executable, "-m", "finetune.evaluate", "--student", "smollm2-135m-instruct", "--task", str(QA_STEPS),
           "--inputs", str(ROOT / "examples" / "tasks" / "qa_inputs.jsonl"), "--limit", "2",
           "--critic", "local/qwen2.5-coder-0.5b-instruct", "--db", str(db)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    s = Store(db, create=False)
    teacher = s.query("SELECT DISTINCT producer FROM candidates WHERE role = 'teacher'")
    assert len(teacher) == 1 and "#program-" in teacher[0]["producer"]
    assert {r["predictor"] for r in s.query("SELECT DISTINCT predictor FROM teacher_steps")} == {"find", "answer"}
    student_calls = [str(r["messages"]) for r in s.query("SELECT messages FROM lm_calls WHERE model LIKE '%smollm2%'")]
    assert any("Context: " in m for m in student_calls) and any("Evidence: " in m for m in student_calls)
    assert s.scalar("SELECT count(*) FROM evaluations") == 1


def test_a_task_of_several_outputs_needs_a_program_to_teach(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('teacher_instruction = "t"\ncritic_instruction = "c"\nstudent_instruction = "s"\n'
                 'signature = "question -> reasoning, answer"\n')
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"question": f"q{i}?", "split": s}) + "\n"
                              for i, s in enumerate(["train", "test"])))
    task = get_task(str(f))
    assert list(task.outputs) == ["reasoning", "answer"]
    assert task.candidate_fields(task.encode_outputs({"reasoning": "r", "answer": "a"}), '{"reasoning": "x", '
                                 '"answer": "y"}') == {"response_1": "Reasoning: r\nAnswer: a",
                                                       "response_2": "Reasoning: x\nAnswer: y"}
    cmd = [sys.executable, "-m", "programs.compile", "--task", str(f), "--inputs", str(inputs), "--db",
           str(tmp_path / "t.duckdb"), "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode == 2 and "its teacher is a DSPy program" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "t.duckdb").exists()


def test_a_changed_field_description_trains_a_new_student():
    """The student's prompt and answer depend on the fields beside the instruction: a description edited is a new
    training id (and a new folder); the built-in tasks keep the ids they had (no prompt_format in their identity)."""
    from dataclasses import replace

    from finetune.imitate import ImitationConfig
    from finetune.runner import config_identity, training_id

    qa = get_task(str(QA))
    edited = replace(qa, output_fields=(("answer", "one word"),))
    ids = {t.name + str(t.output_fields): training_id("sft", ImitationConfig(
        instruction=t.student_instruction, prompt_format=t.prompt_format), "d1") for t in (qa, edited)}
    assert len(set(ids.values())) == 2 and qa.prompt_format and qa.prompt_format != edited.prompt_format
    assert HUMOR.prompt_format is None and FORMAL.prompt_format is None
    assert "prompt_format" not in config_identity(ImitationConfig(instruction=HUMOR.student_instruction,
                                                                  prompt_format=HUMOR.prompt_format))


class Triage(dspy.Module):
    """Fields that are not text: a list in, a Literal choice and a number out."""

    def __init__(self):
        super().__init__()
        self.triage = dspy.Predict(dspy.Signature(
            "ticket, tags: list[str] -> category: Literal['bug', 'billing', 'other'], priority: int",
            "Sort the support ticket and rate its priority from 1 to 5."))

    def forward(self, ticket, tags):
        return self.triage(ticket=ticket, tags=tags)


def test_a_program_with_fields_that_are_not_text():
    from programs.student import parse_completion, student_signature, training_completion, training_prompt

    program = Triage()
    task = from_program(program, critic_instruction="Choose the better triage.")
    assert dict(task.field_types) == {"tags": "list[str]", "category": "Literal['bug', 'billing', 'other']",
                                      "priority": "int"}
    signature = program.triage.signature
    assert {n: f.annotation for n, f in student_signature(task).fields.items()} == {
        n: f.annotation for n, f in signature.fields.items()}
    values = {"ticket": "I was charged twice.", "tags": ["payment", "urgent"]}
    text = task.encode_inputs(values)
    assert task.input_values(text) == values  # the list kept as a list, through the store's JSON
    assert training_prompt(task, text) == LabeledAdapter().format(signature, [], values)
    assert '["payment", "urgent"]' in training_prompt(task, text)[-1]["content"]

    stored = task.encode_outputs(dspy.Prediction(category="billing", priority=4))
    assert json.loads(stored) == {"category": "billing", "priority": 4}
    completion = training_completion(task, stored)
    assert completion == LabeledAdapter().format_assistant_message_content(
        signature, {"category": "billing", "priority": 4}) == "Category: billing\nPriority: 4"
    assert parse_completion(task, completion) == stored  # a sample parses back to the stored value
    assert parse_completion(task, "Category: refund\nPriority: 4") is None  # not one of the choices
    assert task.encode_outputs({"category": "bug", "priority": None}) is None
    assert task.render_output(stored) == "Category: billing\nPriority: 4"
    plain = from_program(dspy.Predict(dspy.Signature("ticket, tags -> category, priority", signature.instructions)),
                              critic_instruction="c")
    assert task.prompt_format != plain.prompt_format  # a type is part of the student's prompt


def test_one_typed_output_is_stored_as_json():
    from programs.student import parse_completion

    task = from_program(dspy.Predict("question -> answer: int"), critic_instruction="c")
    assert task.encode_outputs({"answer": 3}) == "3" and task.output_values("3") == {"answer": 3}
    assert parse_completion(task, "3") == "3" and parse_completion(task, "three") is None
    with pytest.raises(TaskError, match="teacher is a DSPy program"):
        task.check_list_teacher()


@pytest.mark.parametrize("spec, message", [
    ("Point", "uses Point; types are built from str, int"),
    ("__import__('os')", "uses Call"),
    ("list[", "cannot read the field type"),
])
def test_field_types_are_json_types_only(spec, message):
    with pytest.raises(TaskError, match=re.escape(message)):
        Task(name="t", teacher_instruction="t", critic_instruction="c", student_instruction="s",
             input_fields=(("q", "q"),), output_fields=(("a", "a"),), field_types=(("a", spec),))


def test_an_inputs_file_gives_a_typed_field_its_json_value(tmp_path):
    task = from_program(Triage(), critic_instruction="Choose the better triage.")
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"ticket": "Charged twice.", "tags": ["payment"], "split": "test"}) + "\n")
    (row,) = load_inputs(str(f), task)
    assert task.input_values(row["text"]) == {"ticket": "Charged twice.", "tags": ["payment"]}
    f.write_text(json.dumps({"ticket": ["not", "text"], "tags": ["payment"]}) + "\n")
    with pytest.raises(InputError, match="field 'ticket' is a list"):
        load_inputs(str(f), task)
