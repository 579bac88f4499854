"""Data out (`python -m store export`, `store/export.py`) on a real store: the datasets are made by the pipeline's own
`finetune.objectives.sql_dataset` over the store's views, from real-shaped inputs, candidates and verdicts. Each
format is read back by the library that will use it: TRL's chat helpers and the smollm2 chat template for JSONL,
`datasets.load_from_disk` for the folder, pyarrow / DuckDB for Parquet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from finetune.objectives import PAIRS_SQL, SFT_SQL, sql_dataset
from programs.program_tasks import from_program
from programs.student import training_prompt
from programs.task_sources import get_task
from store.db import Store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
TEACHER, CRITIC, METHOD = "local/qwen2.5-coder-0.5b-instruct", "local/qwen2.5-coder-0.5b-instruct", "choice-first/logodds"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """A store with a run, three train inputs, the teacher's candidates, student samples judged by the critic, and the
    imitation and DPO datasets made from them as the pipeline makes them."""
    from finetune.feedback import pair_key

    task = get_task("humor")
    path = tmp_path_factory.mktemp("export") / "t.duckdb"
    s = Store(path)
    now = datetime.now()
    texts = ["My cat sat on my laptop.", "It rained all day.", "The meeting ran long."]
    ids = [f"in{n}" for n in range(3)]
    s.insert("runs", [{"run_id": "run1", "started_at": now, "status": "finished", "command": "test", "profile": "tiny",
                       "config": json.dumps({"teacher": TEACHER, "critic": CRITIC, "task": "humor"}),
                       "code_version": "x"}])
    s.insert("inputs", [{"input_id": i, "task": "humor", "text": t, "split": "train", "source": "test",
                         "created_at": now} for i, t in zip(ids, texts)])
    s.insert("candidates", [{"candidate_id": f"{i}-t{r}", "input_id": i, "role": "teacher", "producer": TEACHER,
                             "rank": r, "text": f"Teacher joke {r} about: {t}", "lm_call_id": None, "run_id": "run1",
                             "created_at": now} for i, t in zip(ids, texts) for r in range(2)])
    s.insert("candidates", [{"candidate_id": f"{i}-s{r}", "input_id": i, "role": "sample", "producer": "ck1",
                             "rank": r, "text": f"Sample {r}: {t}", "lm_call_id": None, "run_id": "run1",
                             "created_at": now} for i, t in zip(ids, texts) for r in range(2)])
    p = {"in0": 0.8, "in1": 0.3, "in2": 0.6}  # P(sample 0 >= sample 1)
    s.insert("verdicts", [{"verdict_id": f"v{i}", "input_id": i, "judge": CRITIC, "method": METHOD,
                           "a_id": f"{i}-s0", "b_id": f"{i}-s1", "p_a": p[i], "orders_agree": True, "n_orders": 2,
                           "purpose": "feedback", "run_id": "run1", "created_at": now} for i in ids])
    sft, sft_id = sql_dataset(s, "sft", SFT_SQL, {"teacher": TEACHER, "inputs": ids}, name="imitation",
                              run_id="run1", task=task)
    params = {"judge": CRITIC, "method": METHOD, "producer": "ck1", "pairs": [pair_key(f"{i}-s0", f"{i}-s1") for i in ids],
              "min_confidence": 0.0, "both_orders": False}
    pairs, pairs_id = sql_dataset(s, "pairs", PAIRS_SQL, params, name="dpo-round0", run_id="run1", task=task)
    assert len(sft) == 6 and len(pairs) == 3
    return {"store": s, "path": path, "task": task, "sft": sft, "sft_id": sft_id, "pairs": pairs, "pairs_id": pairs_id,
            "p": {t: p[i] for i, t in zip(ids, texts)}}


def export(built: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "store", "export", *args, "--db", str(built["path"])],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from programs.student_lm import _resolve

    return AutoTokenizer.from_pretrained(_resolve("smollm2-135m-instruct"))


def test_imitation_jsonl_is_what_trl_trains_on(built, tmp_path):
    from datasets import load_dataset
    from trl.data_utils import apply_chat_template, is_conversational

    out = export(built, "imitation", "-o", str(tmp_path / "sft.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "wrote 6 rows of dataset imitation" in out.stderr
    ds = load_dataset("json", data_files=str(tmp_path / "sft.jsonl"), split="train")
    assert len(ds) == 6 and is_conversational(ds[0])
    for row, source in zip(ds, built["sft"]):
        prompt = training_prompt(built["task"], source["input"])  # exactly what the student is trained on
        assert row["messages"] == [*prompt, {"role": "assistant", "content": source["output"]}]
        assert (row["dataset"], row["dataset_id"], row["run_id"]) == ("imitation", built["sft_id"], "run1")
        assert (row["teacher"], row["critic"], row["p_chosen"]) == (TEACHER, CRITIC, None)
    tokenizer = smollm2_tokenizer()
    text = apply_chat_template({"messages": ds[0]["messages"]}, tokenizer)["text"]
    assert built["sft"][0]["input"] in text and built["sft"][0]["output"] in text and "<|im_start|>assistant" in text


def test_dpo_jsonl_is_trl_preference_data(built, tmp_path):
    from datasets import load_dataset
    from trl.data_utils import apply_chat_template, is_conversational

    out = export(built, "dpo-round0", "-o", str(tmp_path / "pairs.jsonl"))
    assert out.returncode == 0, out.stderr
    ds = load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train")
    assert len(ds) == 3 and is_conversational(ds[0])
    for row, source in zip(ds, built["pairs"]):
        assert row["prompt"] == training_prompt(built["task"], source["input"])
        assert row["chosen"] == [{"role": "assistant", "content": source["chosen"]}]
        assert row["rejected"] == [{"role": "assistant", "content": source["rejected"]}]
        assert row["p_chosen"] == pytest.approx(max(built["p"][source["input"]], 1 - built["p"][source["input"]]))
        assert row["p_chosen"] >= 0.5 and row["dataset_id"] == built["pairs_id"] and row["critic"] == CRITIC
    example = apply_chat_template({k: ds[0][k] for k in ("prompt", "chosen", "rejected")}, smollm2_tokenizer())
    assert built["pairs"][0]["chosen"] in example["chosen"] and example["prompt"].endswith("<|im_start|>assistant\n")


def test_parquet_and_datasets_folder_round_trip(built, tmp_path):
    from datasets import load_from_disk

    from store.export import dataset_records

    records, _ = dataset_records(built["store"], "dpo-round0")
    for dest in ("pairs.parquet", "pairs"):
        out = export(built, "dpo-round0", "-o", str(tmp_path / dest))
        assert out.returncode == 0, out.stderr
    assert pq.read_table(tmp_path / "pairs.parquet").to_pylist() == records
    with duckdb.connect() as con:
        n, runs = con.execute(f"SELECT count(*), list_distinct(list(run_id)) FROM '{tmp_path / 'pairs.parquet'}'").fetchone()
    assert (n, runs) == (3, ["run1"])
    ds = load_from_disk(str(tmp_path / "pairs"))
    assert ds.to_list() == records and {"prompt", "chosen", "rejected", "p_chosen", "teacher"} <= set(ds.column_names)


def test_any_read_only_query_and_the_traces(built, tmp_path):
    out = export(built, "--sql", "SELECT input, output, teacher, rank FROM teacher_pairs WHERE rank = 0", "-o",
                 str(tmp_path / "q.parquet"))
    assert out.returncode == 0, out.stderr
    rows = pq.read_table(tmp_path / "q.parquet").to_pylist()
    assert len(rows) == 3 and all(r["messages"][-1] == {"role": "assistant", "content": r["output"]} for r in rows)
    assert rows[0]["messages"][:-1] == training_prompt(built["task"], rows[0]["input"])  # the recorded prompt

    out = export(built, "--traces", str(tmp_path / "traces"))
    assert out.returncode == 0, out.stderr
    files = {p.stem for p in (tmp_path / "traces").glob("*.parquet")}
    assert {"runs", "inputs", "candidates", "verdicts", "datasets", "lm_calls"} <= files
    assert pq.read_table(tmp_path / "traces" / "candidates.parquet").num_rows == 12


@pytest.mark.parametrize("args, message", [
    (["nope", "-o", "x.jsonl"], "no dataset named 'nope'; the store has: dpo-round0, imitation"),
    (["--sql", "SELEKT 1", "-o", "x.jsonl"], "syntax error"),
    (["--sql", "DELETE FROM runs", "-o", "x.parquet"], "read-only"),
    (["imitation", "-o", "x.csv"], "cannot tell the format from '.csv'"),
    (["imitation", "-o", "{file}/sub/x.jsonl"], "cannot write to"),
    (["imitation", "-o", "{file}"], "exists; pass --force"),
    (["imitation"], "pass --out DEST"),
    (["imitation", "--sql", "SELECT 1", "-o", "x.jsonl"], "not both"),
    (["--sql", "SELECT input FROM teacher_pairs WHERE false", "-o", "x.jsonl"], "has no rows"),
])
def test_mistakes_are_one_line(built, tmp_path, args, message):
    existing = tmp_path / "taken.jsonl"
    existing.write_text("keep\n")
    args = [a.replace("{file}", str(existing)) if a.startswith("{file}") else str(tmp_path / a) if a.startswith("x.")
            else a for a in args]
    out = export(built, *args)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
    assert existing.read_text() == "keep\n"


def test_force_replaces_and_raw_keeps_rows(built, tmp_path):
    dest = tmp_path / "sft.parquet"
    dest.write_text("old")
    out = export(built, "imitation", "-o", str(dest), "--force", "--raw")
    assert out.returncode == 0, out.stderr
    rows = pq.read_table(dest).to_pylist()
    assert [{"input": r["input"], "output": r["output"]} for r in rows] == built["sft"]
    assert {r["run_id"] for r in rows} == {"run1"} and "messages" not in rows[0]


def test_exported_jsonl_trains_with_finetune_train(built, tmp_path, tiny_causal_dir, capsys):
    """The scale-out recipe: `store export` then `finetune.train` (as under `accelerate launch`) reads the chat records
    back as the rows and prompts the pipeline trained on, and trains on them."""
    from finetune.train import main as train_main, read_rows

    for name, dest in (("imitation", "sft.jsonl"), ("dpo-round0", "pairs.jsonl")):
        assert export(built, name, "-o", str(tmp_path / dest)).returncode == 0
    sft, pairs = read_rows(str(tmp_path / "sft.jsonl")), read_rows(str(tmp_path / "pairs.jsonl"))
    assert [(r["input"], r["output"]) for r in sft] == [(s["input"], s["output"]) for s in built["sft"]]
    assert [(r["input"], r["chosen"], r["rejected"]) for r in pairs] == [
        (s["input"], s["chosen"], s["rejected"]) for s in built["pairs"]]
    assert all(r["prompt"] == training_prompt(built["task"], r["input"]) for r in sft + pairs)

    base = ["--base", str(tiny_causal_dir), "--max-steps", "1", "--batch-size", "2", "--no-progress"]
    assert train_main(["--objective", "imitation", "--data", str(tmp_path / "sft.jsonl"), "--out",
                       str(tmp_path / "ft"), *base]) == 0
    assert train_main(["--objective", "dpo", "--data", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "dpo"),
                       *base]) == 0
    capsys.readouterr()
    assert (tmp_path / "ft" / "final").is_dir() and (tmp_path / "dpo" / "final").is_dir()


def test_a_program_of_two_predictors_exports_each_step_as_trained(tmp_path):
    """A dataset of a program's steps (`STEPS_SQL` over `teacher_steps`): each record is one predictor's call, with
    that predictor's own prompt and its answer as the student learned it (`Label: value` lines for two outputs)."""
    import dspy

    from finetune.objectives import STEPS_SQL
    from programs.adapter import LabeledAdapter
    from programs.tasks import Task

    class Steps(dspy.Module):
        def __init__(self):
            super().__init__()
            self.find = dspy.Predict("question, context -> evidence, confidence")
            self.answer = dspy.Predict("question, evidence -> answer")

        def forward(self, question, context):
            return self.answer(question=question, evidence=self.find(question=question, context=context).evidence)

    program = Steps()
    task = from_program(program, critic_instruction="Choose the correct answer.", name="steps")
    s, now = Store(tmp_path / "t.duckdb"), datetime.now()
    text = task.encode_inputs({"question": "Why?", "context": "Because it rained."})
    trace = [{"predictor": "find", "inputs": {"question": "Why?", "context": "Because it rained."},
              "outputs": {"evidence": "Because it rained.", "confidence": "high"}},
             {"predictor": "answer", "inputs": {"question": "Why?", "evidence": "Because it rained."},
              "outputs": {"answer": "Rain."}}]
    s.insert("runs", [{"run_id": "run1", "started_at": now, "status": "finished", "command": "test", "profile": "tiny",
                       "config": json.dumps({"teacher": TEACHER, "critic": CRITIC}), "code_version": "x"}])
    s.insert("inputs", [{"input_id": "in0", "task": "steps", "text": text, "split": "train", "source": "test",
                         "created_at": now}])
    s.insert("candidates", [{"candidate_id": "c0", "input_id": "in0", "role": "teacher", "producer": TEACHER, "rank": 0,
                             "text": "Rain.", "lm_call_id": None, "run_id": "run1", "created_at": now,
                             "trace": json.dumps(trace)}])
    rows, _ = sql_dataset(s, "sft", STEPS_SQL, {"teacher": TEACHER, "inputs": ["in0"]}, name="imitation",
                          run_id="run1", task=task)
    assert [r["predictor"] for r in rows] == ["find", "answer"]
    s.close()
    dest = tmp_path / "steps.jsonl"
    done = subprocess.run([sys.executable, "-m", "store", "export", "imitation", "-o", str(dest), "--db",
                           str(tmp_path / "t.duckdb")], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    find, answer = [json.loads(line) for line in dest.read_text().splitlines()]
    assert find["messages"][:-1] == LabeledAdapter().format(program.find.signature, [], trace[0]["inputs"])
    assert find["messages"][-1] == {"role": "assistant", "content": "Evidence: Because it rained.\nConfidence: high"}
    assert answer["messages"][:-1] == LabeledAdapter().format(program.answer.signature, [], trace[1]["inputs"])
    assert answer["messages"][-1]["content"] == "Rain." and answer["predictor"] == "answer"


def test_a_step_that_wrote_an_empty_field_is_recorded_but_not_trained(tmp_path):
    """A teacher run whose first predictor wrote nothing: its row keeps its prompt (the dataset is what the query
    returned), its completion is NULL, and training skips it."""
    import dspy

    from finetune.objectives import STEPS_SQL
    from programs.student import training_examples
    from programs.tasks import Task

    class Steps(dspy.Module):
        def __init__(self):
            super().__init__()
            self.find = dspy.Predict("question -> evidence")
            self.answer = dspy.Predict("question, evidence -> answer")

        def forward(self, question):
            return self.answer(question=question, evidence=self.find(question=question).evidence)

    task = from_program(Steps(), critic_instruction="c", name="steps")
    s, now = Store(tmp_path / "t.duckdb"), datetime.now()
    trace = [{"predictor": "find", "inputs": {"question": "Why?"}, "outputs": {"evidence": ""}},
             {"predictor": "answer", "inputs": {"question": "Why?", "evidence": ""}, "outputs": {"answer": "No idea."}}]
    s.insert("inputs", [{"input_id": "in0", "task": "steps", "text": "Why?", "split": "train", "created_at": now}])
    s.insert("candidates", [{"candidate_id": "c0", "input_id": "in0", "role": "teacher", "producer": TEACHER, "rank": 0,
                             "text": "No idea.", "created_at": now, "trace": json.dumps(trace)}])
    rows, dataset_id = sql_dataset(s, "sft", STEPS_SQL, {"teacher": TEACHER, "inputs": ["in0"]}, name="imitation",
                                   run_id="run1", task=task)
    d = s.query("SELECT prompts, completions FROM datasets WHERE dataset_id = ?", [dataset_id])[0]
    assert len(json.loads(d["prompts"])) == 2 and json.loads(d["completions"]) == [None, {"output": "No idea."}]
    assert [e["output"] for e in training_examples(task, rows)] == ["No idea."]
