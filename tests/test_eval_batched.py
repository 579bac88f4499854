"""Evaluation's student outputs are generated in batches (`programs.lm.TransformersEngine` gathers concurrent greedy
calls into one `generate`), with the outputs one-at-a-time generation gives, each still its own recorded DSPy call;
a store written one at a time is found again: a rerun generates nothing."""

import json
from pathlib import Path

import dspy
import pytest

from finetune.evaluate import student_outputs
from programs.adapter import LabeledAdapter
from programs.lm import resolve_lm
from programs.student import Student
from programs.builtin_tasks import HUMOR
from store import Store, stable_id
from store.callback import install

ROOT = Path(__file__).resolve().parent.parent


def _items(n: int) -> list[dict]:
    lines = (ROOT / "programs" / "data" / "humor_inputs.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines if line.strip()][:n]
    return [{"input_id": stable_id("input", "humor", t), "text": t} for t in texts]


def _ids_and_texts(outputs: dict) -> dict:
    return {k: (v["candidate_id"], v["text"]) for k, v in outputs.items()}


def _store(path: Path) -> Store:
    store = Store(path)
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    return store


def _student_lm(spec: str, batch_size: int) -> dspy.LM:
    lm = resolve_lm(spec, temperature=0.0, max_tokens=48)
    lm.engine.batch_size = batch_size  # 1: one generate per call, as evaluation generated before batching
    return lm


def _both_ways(spec: str, items: list[dict], tmp_path: Path) -> tuple[dict, dict, Store, Store]:
    """The outputs one at a time (one store), then batched (another: nothing cached from the first)."""
    one_store = _store(tmp_path / "one.duckdb")
    one = student_outputs(one_store, Student(HUMOR), _student_lm(spec, 1), items, producer="p", run_id="r", threads=1)
    store = _store(tmp_path / "batched.duckdb")
    batched = student_outputs(store, Student(HUMOR), _student_lm(spec, 8), items, producer="p", run_id="r")
    return one, batched, one_store, store


@pytest.mark.parametrize("model", ["tiny_causal_dir", "tiny_seq2seq_dir"])
def test_batched_outputs_equal_one_at_a_time_and_each_is_a_recorded_call(model, request, tmp_path):
    items = _items(12)
    one, batched, one_store, store = _both_ways(f"local/{request.getfixturevalue(model)}", items, tmp_path)
    assert len(one) == len(batched) == len(items)
    assert {k: v["text"] for k, v in batched.items()} == {k: v["text"] for k, v in one.items()}
    assert {k: v["candidate_id"] for k, v in batched.items()} == {k: v["candidate_id"] for k, v in one.items()}
    ids = {row["lm_call_id"] for row in batched.values()}
    assert len(ids) == len(items)  # one LM call per output ...
    usage = "SELECT c.input_id, l.prompt_tokens, l.completion_tokens, l.cache_key FROM candidates c JOIN lm_calls l " \
            "ON c.lm_call_id = l.call_id ORDER BY c.input_id"
    recorded = store.query(usage)
    assert len(recorded) == len(items) and all(u["prompt_tokens"] > 0 for u in recorded)  # ... in the store
    assert recorded == one_store.query(usage)  # the same tokens and cache keys as one at a time


def test_a_store_written_one_at_a_time_is_found_by_the_batched_path(tiny_causal_dir, tmp_path):
    items = _items(10)
    spec = f"local/{tiny_causal_dir}"
    store = _store(tmp_path / "t.duckdb")
    first = student_outputs(store, Student(HUMOR), _student_lm(spec, 1), items, producer="p", run_id="r", threads=1)
    calls = store.scalar("SELECT count(*) FROM lm_calls")

    # rerun: the candidate rows are found under the same ids; the model is never even loaded
    lm = resolve_lm(spec, temperature=0.0, max_tokens=48)
    again = student_outputs(store, Student(HUMOR), lm, items, producer="p", run_id="r2")
    assert _ids_and_texts(again) == _ids_and_texts(first)
    assert lm.engine._loaded is None
    assert store.scalar("SELECT count(*) FROM lm_calls") == calls
    assert store.scalar("SELECT count(*) FROM candidates WHERE role = 'student'") == len(items)

    # without the candidate rows, the batched path asks the same cached LM calls: answered from the store
    store.execute("DELETE FROM candidates")
    lm = resolve_lm(spec, temperature=0.0, max_tokens=48)
    third = student_outputs(store, Student(HUMOR), lm, items, producer="p", run_id="r3")
    assert lm.engine._loaded is None  # nothing generated: same cache keys, batched or not
    assert _ids_and_texts(third) == _ids_and_texts(first)


@pytest.mark.slow
def test_bundled_student_batched_equals_one_at_a_time(tmp_path):
    one, batched, _, _ = _both_ways("local/smollm2-135m-instruct", _items(8), tmp_path)
    assert {k: v["text"] for k, v in batched.items()} == {k: v["text"] for k, v in one.items()}
