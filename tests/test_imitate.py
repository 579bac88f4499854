"""Imitation (FT) on tiny real models: LoRA, full, merged, seq2seq; store rows; rerun and crash-resume."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from finetune.imitate import ImitationConfig, train_imitation, training_id_for
from finetune.runner import RichProgress
from programs.student_lm import format_prompt, generate, is_seq2seq, load_student
from store.db import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    lines = (ROOT / "programs" / "data" / "humor_inputs.jsonl").read_text().splitlines()[:16]
    texts = [json.loads(line)["text"] for line in lines]
    return [{"input": t, "output": f"Oops! {t.rstrip('.')}, classic Monday."} for t in texts]


def _config(base: Path, out: Path, **overrides) -> ImitationConfig:
    values = dict(base_model=str(base), output_dir=str(out), max_steps=8, batch_size=4, learning_rate=5e-3,
                  logging_steps=1, save_steps=50, max_length=96)
    values.update(overrides)
    return ImitationConfig(**values)


def _losses(result) -> list[float]:
    return [row["loss"] for row in result.log_history if "loss" in row]


def _assert_learned(result) -> None:
    """Two epochs over the same 16 pairs (4 steps each): the second epoch's mean loss is lower."""
    losses = _losses(result)
    assert len(losses) == 8
    assert all(l == l and l > 0 for l in losses)  # finite, positive
    assert sum(losses[4:]) < sum(losses[:4])


def _assert_generates(path: str) -> None:
    model, tokenizer = load_student(path)
    assert not model.training
    out = generate(model, tokenizer, ["My cat sat on my laptop.", "It rained all day."], instruction="Be funny.",
                   batch_size=2, max_new_tokens=8)
    assert len(out) == 2 and all(len(group) == 1 and isinstance(group[0], str) for group in out)


def _max_param_diff(a, b) -> float:
    pb = dict(b.named_parameters())
    return max((p - pb[name]).abs().max().item() for name, p in a.named_parameters() if name in pb)


# -- student ---------------------------------------------------------------------------------------------------------


def test_student_prompt_and_generate(tiny_causal_dir, tiny_seq2seq_dir):
    model, tokenizer = load_student(str(tiny_causal_dir))
    assert not is_seq2seq(model) and tokenizer.pad_token is not None
    side = tokenizer.padding_side
    prompt = format_prompt(tokenizer, "Be funny.", "It rained.", seq2seq=False)
    assert prompt.endswith("assistant\n") and "Be funny.\n\nIt rained." in prompt
    out = generate(model, tokenizer, ["a", "a much longer input sentence here", "b"], instruction="Be funny.",
                   batch_size=2, max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=1)
    assert [len(g) for g in out] == [3, 3, 3]
    again = generate(model, tokenizer, ["a", "a much longer input sentence here", "b"], instruction="Be funny.",
                     batch_size=2, max_new_tokens=5, do_sample=True, num_return_sequences=3, seed=1)
    assert out == again  # seeded
    assert tokenizer.padding_side == side  # left padding only while generating

    s2s, s2s_tok = load_student(str(tiny_seq2seq_dir))
    assert is_seq2seq(s2s)
    assert format_prompt(s2s_tok, "Be funny.", "It rained.", seq2seq=True) == "Be funny.\n\nIt rained."
    beams = generate(s2s, s2s_tok, ["It rained."], instruction="Be funny.", max_new_tokens=5, num_beams=2,
                     num_return_sequences=2)
    assert len(beams) == 1 and len(beams[0]) == 2


def test_load_student_errors(tmp_path):
    from programs.student_lm import StudentError

    with pytest.raises(StudentError, match="no model at"):
        load_student(str(tmp_path / "missing"))
    with pytest.raises(StudentError, match="offline"):
        load_student("some-org/some-model")
    with pytest.raises(StudentError, match="not a Hugging Face model folder"):
        load_student(str(tmp_path))


# -- causal ----------------------------------------------------------------------------------------------------------


def test_lora_causal_trains_records_and_reruns(tiny_causal_dir, pairs, tmp_path):
    store = Store(tmp_path / "t.duckdb")
    config = _config(tiny_causal_dir, tmp_path / "lora")
    result = train_imitation(pairs, config, store=store, run_id="r1", dataset_id="d1", progress=False)

    _assert_learned(result)
    assert result.steps == 8 and result.path == str(tmp_path / "lora" / "final")
    final = Path(result.path)
    assert (final / "adapter_config.json").exists() and (final / "tokenizer_config.json").exists()
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_causal_dir)
    assert not list((tmp_path / "lora").glob("checkpoint-*"))
    assert (tmp_path / "lora" / "train_result.json").exists()

    base, _ = load_student(str(tiny_causal_dir))
    trained, _ = load_student(result.path)  # base + adapter, merged
    assert _max_param_diff(trained, base) > 1e-4
    _assert_generates(result.path)

    adapter, _ = load_student(result.path, for_training=True)
    assert adapter.training and any(p.requires_grad for n, p in adapter.named_parameters() if "lora_" in n)

    run = store.query("SELECT * FROM training_runs")
    assert len(run) == 1 and run[0]["status"] == "finished" and run[0]["objective"] == "imitation"
    assert run[0]["training_id"] == result.training_id and run[0]["dataset_id"] == "d1" and run[0]["run_id"] == "r1"
    assert json.loads(run[0]["config"])["lora_r"] == 16
    assert [r["loss"] for r in json.loads(run[0]["metrics"]) if "loss" in r] == _losses(result)
    ckpt = store.query("SELECT * FROM checkpoints")
    assert len(ckpt) == 1 and ckpt[0]["checkpoint_id"] == result.checkpoint_id
    assert Path(ckpt[0]["path"]).exists() and ckpt[0]["step"] == 8 and ckpt[0]["merged"] is False

    # A rerun returns the recorded result without training.
    mtime = (final / "adapter_model.safetensors").stat().st_mtime
    t0 = time.monotonic()
    again = train_imitation(pairs, config, store=store, run_id="r2", dataset_id="d1", progress=False)
    assert time.monotonic() - t0 < 2
    assert again == result
    assert (final / "adapter_model.safetensors").stat().st_mtime == mtime
    assert store.scalar("SELECT count(*) FROM training_runs") == 1

    # The training id ignores where the run is written, and follows the config and the data.
    assert training_id_for(replace(config, output_dir="elsewhere"), "d1") == result.training_id
    assert training_id_for(replace(config, lora_r=8), "d1") != result.training_id


def test_full_causal(tiny_causal_dir, pairs, tmp_path):
    result = train_imitation(pairs, _config(tiny_causal_dir, tmp_path / "full", lora=False, learning_rate=1e-3),
                             progress=False)
    _assert_learned(result)
    final = Path(result.path)
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()
    base, _ = load_student(str(tiny_causal_dir))
    trained, _ = load_student(result.path)
    assert _max_param_diff(trained, base) > 1e-4
    assert trained.config.use_cache is not False
    _assert_generates(result.path)


def test_merged_lora_matches_adapter(tiny_causal_dir, pairs, tmp_path):
    store = Store(tmp_path / "t.duckdb")
    result = train_imitation(pairs, _config(tiny_causal_dir, tmp_path / "m", merge_lora=True, max_steps=4),
                             store=store, progress=True)
    assert result.path == str(tmp_path / "m" / "merged")
    assert (tmp_path / "m" / "final" / "adapter_config.json").exists()
    assert not (Path(result.path) / "adapter_config.json").exists()
    merged, tok = load_student(result.path)
    via_adapter, _ = load_student(str(tmp_path / "m" / "final"))
    ids = tok(["It rained all day."], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.allclose(merged(ids).logits, via_adapter(ids).logits, atol=1e-5)
    rows = store.query("SELECT path, merged FROM checkpoints ORDER BY merged")
    assert [(r["path"], r["merged"]) for r in rows] == [(str(tmp_path / "m" / "final"), False), (result.path, True)]
    _assert_generates(result.path)


def test_merging_a_finished_run_reuses_its_adapter(tiny_causal_dir, pairs, tmp_path):
    """Asking a finished LoRA run for a merged model merges its adapter; it does not train again (before: merge_lora
    was part of the run's identity, and the warm start was trained twice)."""
    store = Store(tmp_path / "t.duckdb")
    config = _config(tiny_causal_dir, tmp_path / "w", max_steps=4)
    plain = train_imitation(pairs, config, store=store, progress=False)
    assert plain.path == str(tmp_path / "w" / "final") and not (tmp_path / "w" / "merged").exists()
    adapter_mtime = (Path(plain.path) / "adapter_model.safetensors").stat().st_mtime

    merged = train_imitation(pairs, replace(config, merge_lora=True), store=store, progress=False)
    assert merged.path == str(tmp_path / "w" / "merged") and merged.training_id == plain.training_id
    assert merged.steps == plain.steps and merged.log_history == plain.log_history
    assert (Path(plain.path) / "adapter_model.safetensors").stat().st_mtime == adapter_mtime  # not trained again
    assert store.scalar("SELECT count(*) FROM training_runs") == 1
    assert store.scalar("SELECT count(*) FROM checkpoints WHERE merged") == 1
    a, tok = load_student(merged.path)
    b, _ = load_student(plain.path)
    ids = tok(["It rained all day."], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-5)
    assert train_imitation(pairs, replace(config, merge_lora=True), progress=False) == merged  # once


def test_training_ids_of_earlier_runs_stay_the_same():
    """Ids computed by the code before the newer fields (schedule, DPO loss) existed: at their defaults, a rerun on
    an old output folder finds its run."""
    from finetune.brio import BRIOTrainConfig
    from finetune.brio import training_id_for as brio_id
    from finetune.dpo import DPOTrainConfig
    from finetune.dpo import training_id_for as dpo_id

    plain = ImitationConfig(base_model="smollm2-135m-instruct", instruction="x")
    assert training_id_for(plain, "d1") == "b77d19c725cb0869c0fda5c5"
    assert training_id_for(replace(plain, merge_lora=True), "d1") == "e07fc45036bdb511ed34dbc1"
    assert dpo_id(DPOTrainConfig(base_model="b", merge_lora=True), "d1", "dpo") == "bbc34a536c87887e24d187de"
    assert brio_id(BRIOTrainConfig(base_model="b", merge_lora=True), "d1") == "99bb75a6a94078e4e5948d08"
    assert training_id_for(replace(plain, lr_scheduler_type="cosine"), "d1") != "b77d19c725cb0869c0fda5c5"


def test_crash_resumes_from_checkpoint(tiny_causal_dir, pairs, tmp_path, monkeypatch):
    config = _config(tiny_causal_dir, tmp_path / "crash", max_steps=6, save_steps=2)
    store = Store(tmp_path / "t.duckdb")

    def crash(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(RichProgress, "on_step_end", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_imitation(pairs, config, store=store, progress=True)
    assert [p.name for p in (tmp_path / "crash").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (tmp_path / "crash" / "train_result.json").exists()
    assert store.scalar("SELECT status FROM training_runs") == "failed"

    ran = []
    with monkeypatch.context() as patch:
        patch.setattr(RichProgress, "on_step_end", lambda self, args, state, control, **kw: ran.append(state.global_step))
        result = train_imitation(pairs, config, store=store, progress=True)
    assert ran == [3, 4, 5, 6]  # resumed after step 2, not from scratch
    assert result.steps == 6
    assert [row["step"] for row in result.log_history if "loss" in row] == [1, 2, 3, 4, 5, 6]
    assert store.scalar("SELECT status FROM training_runs") == "finished"


def test_guards(tiny_causal_dir, pairs, tmp_path):
    from finetune.imitate import ImitationError
    from finetune.runner import StaleRunError

    with pytest.raises(ImitationError, match="no training pairs"):
        train_imitation([], _config(tiny_causal_dir, tmp_path / "none"), progress=False)
    with pytest.raises(ImitationError, match="string 'input' and 'output'"):
        train_imitation([{"input": "x"}], _config(tiny_causal_dir, tmp_path / "bad"), progress=False)
    store = Store(tmp_path / "t.duckdb")
    with pytest.raises(ImitationError, match="raise max_length"):
        train_imitation(pairs, _config(tiny_causal_dir, tmp_path / "short", max_length=8), store=store, progress=False)
    assert store.scalar("SELECT status FROM training_runs") == "failed"

    config = _config(tiny_causal_dir, tmp_path / "once", max_steps=1)
    first = train_imitation(pairs, config, progress=False)
    with pytest.raises(StaleRunError, match="another dataset or settings: use another output folder"):
        train_imitation(pairs[:4], config, progress=False)  # other data: never the old model as if it were this one
    with pytest.raises(StaleRunError, match=r"other settings \(learning_rate\)"):
        train_imitation(pairs, replace(config, learning_rate=1e-3), progress=False)
    assert train_imitation(pairs, config, progress=False) == first


# -- seq2seq ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_seq2seq(tiny_seq2seq_dir, pairs, tmp_path, lora):
    config = _config(tiny_seq2seq_dir, tmp_path / "s2s", lora=lora, learning_rate=2e-2 if lora else 2e-3)
    result = train_imitation(pairs, config, progress=False)
    _assert_learned(result)
    final = Path(result.path)
    assert (final / "adapter_config.json").exists() == lora
    base, _ = load_student(str(tiny_seq2seq_dir))
    trained, _ = load_student(result.path)
    assert is_seq2seq(trained) and _max_param_diff(trained, base) > 1e-4
    _assert_generates(result.path)


# -- the bundled student ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_generates_and_trains(pairs, tmp_path):
    model, tokenizer = load_student("smollm2-135m-instruct")
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    out = generate(model, tokenizer, [p["input"] for p in pairs[:2]], instruction=ImitationConfig().instruction,
                   max_new_tokens=24)
    assert len(out) == 2 and all(group[0] for group in out)

    config = ImitationConfig(output_dir=str(tmp_path / "smol"), max_steps=2, logging_steps=1)
    result = train_imitation(pairs, config, progress=False)
    assert result.steps == 2 and len(_losses(result)) == 2
    assert json.loads((Path(result.path) / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "smollm2-135m-instruct"
    )
    print(f"\nSmolLM2 LoRA: {result.seconds / result.steps:.2f} s/step (batch 8, max_length 128)")
    trained, tok = load_student(result.path)
    assert generate(trained, tok, [pairs[0]["input"]], instruction=config.instruction, max_new_tokens=8)[0][0]
