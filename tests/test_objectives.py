"""DPO and BRIO on tiny real models, and the `finetune.train` CLI (in-process, and under `accelerate launch`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from finetune.brio import (
    BRIOCollator,
    BRIOError,
    BRIOTrainConfig,
    candidate_dataset,
    mean_candidate_length,
    ranking_loss,
    score_completions,
    train_brio,
)
from finetune.dpo import DPOError, DPOTrainConfig, train_dpo
from finetune.runner import RichProgress
from programs.student_lm import generate, load_student
from finetune.train import main as train_main
from store.db import Store

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = "Rewrite the sentence as a humorous paraphrase with the same meaning."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tiny models gain nothing from a second thread, and on a busy machine OpenMP's waits between two threads
    cost ~10x: train them on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    lines = (ROOT / "programs" / "data" / "humor_inputs.jsonl").read_text().splitlines()[:16]
    return [json.loads(line)["text"] for line in lines]


def _funny(t: str) -> str:
    return f"Oops! {t.rstrip('.')}, classic Monday."


def _flat(t: str) -> str:
    return f"It is true that {t[0].lower()}{t[1:]}"


@pytest.fixture(scope="module")
def pairs(texts) -> list[dict]:
    return [{"input": t, "chosen": _funny(t), "rejected": _flat(t)} for t in texts]


def _jumbled(text: str) -> str:
    """The same words out of order: an untrained model scores it about like the original."""
    words = text.split()
    return " ".join(words[1::2] + words[0::2])


@pytest.fixture(scope="module")
def groups(texts) -> list[dict]:
    return [{"input": t, "candidates": [_funny(t), _flat(t), _jumbled(_funny(t))]} for t in texts]


def _losses(result) -> list[float]:
    return [row["loss"] for row in result.log_history if "loss" in row]


def _assert_generates(path: str) -> None:
    model, tokenizer = load_student(path)
    out = generate(model, tokenizer, ["My cat sat on my laptop.", "It rained all day."], instruction=INSTRUCTION,
                   batch_size=2, max_new_tokens=8)
    assert len(out) == 2 and all(len(group) == 1 and isinstance(group[0], str) for group in out)


def _margins(model_path, pairs) -> list[float]:
    """log p(chosen) − log p(rejected) per pair (sums over tokens, as DPO's implicit reward)."""
    model, tokenizer = load_student(str(model_path))
    chosen = score_completions(model, tokenizer, [{"input": p["input"], "completion": p["chosen"]} for p in pairs],
                               length_penalty=0.0)
    rejected = score_completions(model, tokenizer, [{"input": p["input"], "completion": p["rejected"]} for p in pairs],
                                 length_penalty=0.0)
    return [c - r for c, r in zip(chosen, rejected)]


def _best_above_worst(model_path, groups) -> int:
    """How many groups the model's length-normalised score ranks best above worst."""
    model, tokenizer = load_student(str(model_path))
    best = score_completions(model, tokenizer, [{"input": g["input"], "completion": g["candidates"][0]}
                                                for g in groups])
    worst = score_completions(model, tokenizer, [{"input": g["input"], "completion": g["candidates"][-1]}
                                                 for g in groups])
    return sum(b > w for b, w in zip(best, worst))


def _dpo_config(base, out, **overrides) -> DPOTrainConfig:
    values = dict(base_model=str(base), output_dir=str(out), max_steps=8, batch_size=4, learning_rate=5e-3,
                  logging_steps=1, save_steps=50, max_length=160)
    values.update(overrides)
    return DPOTrainConfig(**values)


def _brio_config(base, out, **overrides) -> BRIOTrainConfig:
    values = dict(base_model=str(base), output_dir=str(out), max_steps=8, batch_size=4, learning_rate=5e-3,
                  logging_steps=1, save_steps=50, max_length=160)
    values.update(overrides)
    return BRIOTrainConfig(**values)


# -- the BRIO loss ---------------------------------------------------------------------------------------------------


def test_ranking_loss():
    assert ranking_loss(torch.tensor([[3.0, 2.0, 1.0]])).item() == 0.0  # ranked right, by more than the margins
    # ranked backwards: gap 1: (1.001 + 1.001) / 2, gap 2: 2.002
    assert ranking_loss(torch.tensor([[1.0, 2.0, 3.0]]), margin=0.001).item() == pytest.approx(3.003)
    # a padded candidate takes no part
    scores = torch.tensor([[1.0, 2.0, 99.0], [1.0, 2.0, 3.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    assert ranking_loss(scores, valid).item() == pytest.approx((1.001 * 3) / 3 + 2.002)
    # equal scores still pay the margin
    assert ranking_loss(torch.zeros(1, 2), margin=0.01).item() == pytest.approx(0.01)


def test_brio_collator_masks_prompts(tiny_tokenizer, groups):
    data = candidate_dataset(groups[:2], tiny_tokenizer, INSTRUCTION, max_length=160)
    assert len(data) == 2 and len(data[0]["input_ids"]) == 4  # reference (= best) + 3 candidates
    assert data[0]["input_ids"][0] == data[0]["input_ids"][1]
    batch = BRIOCollator(tiny_tokenizer.pad_token_id)([data[0], data[1]])
    assert batch["input_ids"].shape[0] == 8
    assert batch["reference_index"].tolist() == [0, 4]
    assert batch["candidate_index"].tolist() == [[1, 2, 3], [5, 6, 7]]
    start = data[0]["starts"][1]
    labels = batch["labels"][1]
    assert (labels[:start] == -100).all() and (labels[start : len(data[0]["input_ids"][1])] != -100).all()
    completion = tiny_tokenizer.decode(batch["input_ids"][1][start : len(data[0]["input_ids"][1])])
    assert completion.startswith(groups[0]["candidates"][0])  # the completion is the candidate (+ end of turn)
    lengths = [len(ids) - s for row in data for ids, s in zip(row["input_ids"][1:], row["starts"][1:])]
    assert mean_candidate_length(data) == pytest.approx(sum(lengths) / len(lengths))


# -- DPO -------------------------------------------------------------------------------------------------------------


def test_dpo_lora_trains_records_and_reruns(tiny_causal_dir, pairs, tmp_path):
    store = Store(tmp_path / "t.duckdb")
    config = _dpo_config(tiny_causal_dir, tmp_path / "dpo")
    before = _margins(tiny_causal_dir, pairs)
    result = train_dpo(pairs, config, store=store, run_id="r1", dataset_id="d1", progress=False)

    losses = _losses(result)
    assert result.steps == 8 and len(losses) == 8 and all(l == l for l in losses)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the first step
    assert sum(losses[4:]) < sum(losses[:4])
    final = Path(result.path)
    assert result.path == str(tmp_path / "dpo" / "final")
    adapter = json.loads((final / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_causal_dir)
    assert not list((tmp_path / "dpo").glob("checkpoint-*"))
    assert json.loads((tmp_path / "dpo" / "train_result.json").read_text())["world_size"] == 1

    after = _margins(final, pairs)
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0  # chosen − rejected grew on the training pairs
    assert sum(a > b for a, b in zip(after, before)) >= 14
    _assert_generates(result.path)

    run = store.query("SELECT * FROM training_runs")
    assert len(run) == 1 and run[0]["status"] == "finished" and run[0]["objective"] == "dpo"
    assert run[0]["training_id"] == result.training_id and run[0]["dataset_id"] == "d1"
    assert json.loads(run[0]["config"])["beta"] == 0.1
    assert any("rewards/margins" in row for row in json.loads(run[0]["metrics"]))
    ckpt = store.query("SELECT * FROM checkpoints")
    assert len(ckpt) == 1 and ckpt[0]["training_id"] == result.training_id and ckpt[0]["step"] == 8

    t0 = time.monotonic()
    again = train_dpo(pairs, config, store=store, run_id="r2", dataset_id="d1", progress=False)
    assert time.monotonic() - t0 < 2 and again == result
    assert store.scalar("SELECT count(*) FROM training_runs") == 1


def test_dpo_full_finetune_frozen_reference(tiny_causal_dir, pairs, tmp_path):
    store = Store(tmp_path / "t.duckdb")
    config = _dpo_config(tiny_causal_dir, tmp_path / "full", lora=False, learning_rate=1e-3)
    before = _margins(tiny_causal_dir, pairs)
    result = train_dpo(pairs, config, store=store, objective="brio-dpo", progress=True)
    losses = _losses(result)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and sum(losses[4:]) < sum(losses[:4])
    final = Path(result.path)
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()
    after = _margins(final, pairs)
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0
    trained, _ = load_student(result.path)
    assert trained.config.use_cache is not False
    _assert_generates(result.path)
    assert store.scalar("SELECT objective FROM training_runs") == "brio-dpo"
    assert store.scalar("SELECT status FROM training_runs") == "finished"


def test_dpo_on_merged_warm_start(tiny_causal_dir, pairs, tmp_path):
    """The warm start is an adapter folder (an imitation run's final): merged first, then a new adapter on top."""
    first = train_dpo(pairs, _dpo_config(tiny_causal_dir, tmp_path / "a", max_steps=2), progress=False)
    second = train_dpo(pairs, _dpo_config(first.path, tmp_path / "b", max_steps=2), progress=False)
    losses = _losses(second)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # the reference is the warm start, not the raw base
    assert json.loads((Path(second.path) / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(first.path).resolve())
    _assert_generates(second.path)


def test_dpo_guards(tiny_causal_dir, tiny_seq2seq_dir, pairs, tmp_path):
    with pytest.raises(DPOError, match="no preference pairs"):
        train_dpo([], _dpo_config(tiny_causal_dir, tmp_path / "none"), progress=False)
    with pytest.raises(DPOError, match="'chosen' and 'rejected'"):
        train_dpo([{"input": "x", "chosen": "y"}], _dpo_config(tiny_causal_dir, tmp_path / "bad"), progress=False)
    store = Store(tmp_path / "t.duckdb")
    with pytest.raises(DPOError, match="DPO needs a causal student"):
        train_dpo(pairs, _dpo_config(tiny_seq2seq_dir, tmp_path / "s2s"), store=store, progress=False)
    assert store.scalar("SELECT status FROM training_runs") == "failed"
    with pytest.raises(DPOError, match="raise max_length"):
        train_dpo(pairs, _dpo_config(tiny_causal_dir, tmp_path / "short", max_length=8), progress=False)


# -- BRIO ------------------------------------------------------------------------------------------------------------


def test_brio_trains_ranks_records_and_reruns(tiny_causal_dir, groups, tmp_path):
    store = Store(tmp_path / "t.duckdb")
    config = _brio_config(tiny_causal_dir, tmp_path / "brio")
    before = _best_above_worst(tiny_causal_dir, groups)
    result = train_brio(groups, config, store=store, run_id="r1", dataset_id="d1", progress=False)

    losses = _losses(result)
    assert result.steps == 8 and len(losses) == 8
    assert sum(losses[4:]) < sum(losses[:4])
    logged = [row for row in result.log_history if "loss" in row]
    assert all("ce_loss" in row and "rank_loss" in row for row in logged)
    ranking = [row["rank_loss"] for row in logged]
    assert sum(ranking[4:]) < sum(ranking[:4])  # the candidates come into the critic's order
    _, tokenizer = load_student(str(tiny_causal_dir))
    expected_weight = mean_candidate_length(candidate_dataset(groups, tokenizer, INSTRUCTION, 160))
    assert logged[0]["rank_weight"] == pytest.approx(expected_weight)  # λ = mean candidate length in tokens
    assert 30 < expected_weight < 70

    after = _best_above_worst(result.path, groups)
    assert after > before and after >= 14, (before, after)
    _assert_generates(result.path)

    run = store.query("SELECT * FROM training_runs")
    assert len(run) == 1 and run[0]["objective"] == "brio" and run[0]["status"] == "finished"
    assert json.loads(run[0]["config"])["margin"] == 0.001
    ckpt = store.query("SELECT * FROM checkpoints")
    assert len(ckpt) == 1 and ckpt[0]["path"] == result.path and ckpt[0]["merged"] is False

    t0 = time.monotonic()
    assert train_brio(groups, config, store=store, dataset_id="d1", progress=False) == result
    assert time.monotonic() - t0 < 2
    assert store.scalar("SELECT count(*) FROM training_runs") == 1


def test_brio_full_resumes_after_crash(tiny_causal_dir, groups, tmp_path, monkeypatch):
    config = _brio_config(tiny_causal_dir, tmp_path / "crash", lora=False, learning_rate=1e-3, max_steps=4,
                          save_steps=2, merge_lora=False)

    def crash(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(RichProgress, "on_step_end", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_brio(groups, config, progress=True)
    assert [p.name for p in (tmp_path / "crash").glob("checkpoint-*")] == ["checkpoint-2"]

    ran = []
    with monkeypatch.context() as patch:
        patch.setattr(RichProgress, "on_step_end",
                      lambda self, args, state, control, **kw: ran.append(state.global_step))
        result = train_brio(groups, config, progress=True)
    assert ran == [3, 4] and result.steps == 4
    assert (Path(result.path) / "config.json").exists()
    _assert_generates(result.path)


def test_brio_guards(tiny_causal_dir, tiny_seq2seq_dir, groups, tmp_path):
    with pytest.raises(BRIOError, match="no candidate groups"):
        train_brio([], _brio_config(tiny_causal_dir, tmp_path / "none"), progress=False)
    with pytest.raises(BRIOError, match="at least 2 strings"):
        train_brio([{"input": "x", "candidates": ["one"]}], _brio_config(tiny_causal_dir, tmp_path / "one"),
                   progress=False)
    with pytest.raises(BRIOError, match="BRIO needs a causal student"):
        train_brio(groups, _brio_config(tiny_seq2seq_dir, tmp_path / "s2s"), progress=False)


# -- the CLI ---------------------------------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli(tiny_causal_dir, texts, pairs, groups, tmp_path, capsys):
    db = tmp_path / "t.duckdb"
    sft = _jsonl(tmp_path / "sft.jsonl", [{"input": t, "output": _funny(t)} for t in texts])
    dpo = _jsonl(tmp_path / "dpo.jsonl", pairs)
    brio = _jsonl(tmp_path / "brio.jsonl", groups)
    base = ["--base", str(tiny_causal_dir), "--max-steps", "2", "--batch-size", "4", "--lr", "1e-3", "--no-progress",
            "--db", str(db)]

    assert train_main(["--objective", "imitation", "--data", str(sft), "--out", str(tmp_path / "sft"), *base]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "sft" / "final")
    assert train_main(["--objective", "dpo", "--data", str(dpo), "--out", str(tmp_path / "dpo"), "--beta", "0.2",
                       "--base", str(tmp_path / "sft" / "final"), *base[2:]]) == 0
    assert train_main(["--objective", "brio", "--data", str(brio), "--out", str(tmp_path / "brio"),
                       "--full-finetune", *base]) == 0
    capsys.readouterr()
    rows = Store(db).query("SELECT objective, status, base_model, config FROM training_runs ORDER BY started_at")
    assert [(r["objective"], r["status"]) for r in rows] == [("imitation", "finished"), ("dpo", "finished"),
                                                             ("brio", "finished")]
    assert json.loads(rows[1]["config"])["beta"] == 0.2 and rows[1]["base_model"] == str(tmp_path / "sft" / "final")
    assert json.loads(rows[2]["config"])["lora"] is False
    assert Store(db).scalar("SELECT count(*) FROM checkpoints") == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--objective", "dpo", "--data", "missing.jsonl", "--out", "x"], "no data file at missing.jsonl"),
        (["--objective", "dpo", "--data", "{bad}", "--out", "x"], "is not JSON"),
        (["--objective", "dpo", "--data", "{sft}", "--out", "x"], "'chosen' and 'rejected'"),
        (["--objective", "sft", "--data", "{sft}", "--out", "x", "--beta", "0.1"], "--beta applies to"),
        (["--objective", "ppo", "--data", "{sft}", "--out", "x"], "invalid choice"),
        (["--objective", "sft", "--data", "{sft}", "--out", "x", "--max-steps", "0"], "must be > 0"),
        (["--objective", "sft", "--data", "{sft}"], "required: --out"),
    ],
    ids=["missing", "not-json", "wrong-rows", "beta-on-sft", "objective", "steps", "no-out"],
)
def test_cli_errors(argv, message, tiny_causal_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "output": "b"}\nnot json\n')
    sft = _jsonl(tmp_path / "sft.jsonl", [{"input": "a", "output": "b"}])
    argv = [a.format(bad=bad, sft=sft) for a in argv] + ["--base", str(tiny_causal_dir), "--no-progress"]
    try:
        code = train_main(argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err, err


# -- several processes -----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_accelerate_launch_ddp_on_cpu(objective, tiny_causal_dir, texts, pairs, tmp_path):
    """Two CPU processes (gloo) through accelerate: both train, one writes the model, the marker and the store row."""
    rows = [{"input": t, "output": _funny(t)} for t in texts] if objective == "sft" else pairs
    data = _jsonl(tmp_path / "data.jsonl", rows)
    out, db = tmp_path / "out", tmp_path / "t.duckdb"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "finetune.train", "--objective", objective,
           "--data", str(data), "--base", str(tiny_causal_dir), "--out", str(out), "--max-steps", "2",
           "--batch-size", "2", "--lr", "1e-3", "--no-progress", "--db", str(db)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2 done, 2 steps" in proc.stderr and "rank 1 of 2 done, 2 steps" in proc.stderr
    marker = json.loads((out / "train_result.json").read_text())
    assert marker["world_size"] == 2 and marker["result"]["steps"] == 2
    assert proc.stdout.strip().splitlines() == [str(out / "final")]  # one process reports the model
    # one final model, no leftovers (TRL's checkpoint saving also leaves a model card, README.md)
    assert {p.name for p in out.iterdir()} - {"README.md"} == {"final", "train_result.json"}
    store = Store(db)
    assert store.scalar("SELECT count(*) FROM training_runs") == 1
    assert store.scalar("SELECT status FROM training_runs") == "finished"
    assert store.scalar("SELECT count(*) FROM checkpoints") == 1
    _assert_generates(str(out / "final"))


# -- settings reach the trainer, runs are keyed by them --------------------------------------------------------------


def test_dpo_settings_reach_trl_and_the_summary_is_recorded(tiny_causal_dir, pairs, tmp_path):
    from finetune.dpo import _dpo_trainer

    config = _dpo_config(tiny_causal_dir, tmp_path / "mix", max_steps=4, loss_type=["sigmoid", "sft"],
                         loss_weights=[1.0, 0.5], lr_scheduler_type="constant_with_warmup", warmup_ratio=0.25)
    model, tokenizer = load_student(str(tiny_causal_dir), for_training=True)
    trainer = _dpo_trainer(model, tokenizer, pairs, config, tmp_path / "mix", [])
    assert trainer.args.loss_type == ["sigmoid", "sft"] and trainer.args.loss_weights == [1.0, 0.5]
    assert trainer.args.lr_scheduler_type == "constant_with_warmup" and trainer.args.warmup_steps == 0.25
    robust = _dpo_trainer(model, tokenizer, pairs, _dpo_config(tiny_causal_dir, tmp_path / "r", loss_type="robust",
                                                                label_smoothing=0.1, beta=0.3), tmp_path / "r", [])
    assert (robust.label_smoothing, robust.beta, robust.args.loss_type) == (0.1, 0.3, ["robust"])

    store = Store(tmp_path / "t.duckdb")
    result = train_dpo(pairs, config, store=store, progress=False)
    rates = [row["learning_rate"] for row in result.log_history if "learning_rate" in row]
    assert rates[-1] == rates[-2] == 5e-3  # warmed up, then constant
    summary = json.loads(store.scalar("SELECT metrics FROM training_runs"))[-1]["summary"]
    assert summary["steps"] == 4 and 0 <= summary["reward_accuracy"] <= 1
    assert {"reward_margin", "reward_chosen", "reward_rejected", "logps_chosen", "logps_rejected"} <= set(summary)
    assert json.loads(store.scalar("SELECT config FROM training_runs"))["loss_type"] == ["sigmoid", "sft"]


def _trainers(dpo_learning_rate=None):
    from finetune.stage_configs import objective_trainers
    from programs.config import PipelineConfig
    from programs.task_sources import get_task

    cfg = PipelineConfig(max_steps=4, max_length=160, dpo_learning_rate=dpo_learning_rate)
    return objective_trainers(cfg, get_task("humor"))


def _context(tmp_path, base_dir, dpo_learning_rate=None):
    from finetune.runner import TrainResult
    from finetune.objectives import ObjectiveContext
    from programs.critic import Critic
    from programs.task_sources import get_task

    task = get_task("humor")
    warm = TrainResult(training_id="warm", checkpoint_id="warm-ckpt", path=str(base_dir), log_history=[], steps=0,
                       seconds=0.0)
    return ObjectiveContext(store=Store(tmp_path / "t.duckdb"), task=task, run_id="r", out_dir=tmp_path / "out",
                            warm=warm, train_inputs=[], teacher="t", critic=Critic(task), critic_lm=None,
                            critic_name="c", trainers=_trainers(dpo_learning_rate))


def test_a_changed_learning_rate_trains_a_new_student(tiny_causal_dir, pairs, tmp_path):
    """Before, a student's folder was named by its start, data and epochs only: a rerun with another learning rate
    got the old model back (with a warning). Every weight setting off its default is now in the name."""
    from finetune.objectives import _dpo

    ctx = _context(tmp_path, tiny_causal_dir, dpo_learning_rate=5e-3)
    first = _dpo(ctx, ctx.warm, pairs, "d1", "dpo", 1.0)
    ctx.trainers = _trainers(dpo_learning_rate=1e-3)
    second = _dpo(ctx, ctx.warm, pairs, "d1", "dpo", 1.0)
    assert Path(second.path).parent != Path(first.path).parent and second.training_id != first.training_id
    assert second.steps == 4 and Path(second.path).name == "merged"
    (a, tok), (b, _) = load_student(first.path), load_student(second.path)
    ids = tok(["It rained all day."], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert not torch.allclose(a(ids).logits, b(ids).logits, atol=1e-4)  # really trained, with the new rate
    assert json.loads(ctx.store.scalar("SELECT config FROM training_runs WHERE training_id = ?",
                                       [second.training_id]))["learning_rate"] == 1e-3
    assert ctx.store.scalar("SELECT count(*) FROM training_runs") == 2
    ctx.trainers = _trainers(dpo_learning_rate=5e-3)
    t0 = time.monotonic()
    assert _dpo(ctx, ctx.warm, pairs, "d1", "dpo", 1.0) == first and time.monotonic() - t0 < 5  # the same: reused


def test_student_folders_at_the_defaults_keep_their_earlier_names(tmp_path):
    from finetune.imitate import ImitationConfig
    from finetune.objectives import _out
    from store import stable_id

    ctx = _context(tmp_path, tmp_path)
    for config in (DPOTrainConfig(base_model="b", merge_lora=True, instruction="x"),
                   ImitationConfig(base_model="b", merge_lora=True, instruction="x")):
        assert _out(ctx, "dpo", config, "ckpt", "d1", 1.0, skip=("epochs",)) == str(
            tmp_path / "out" / f"student-dpo-{stable_id('ckpt', 'd1', 1.0)[:10]}")
    assert _out(ctx, "brio", BRIOTrainConfig(base_model="b", merge_lora=True), "ckpt", "d1") == str(
        tmp_path / "out" / f"student-brio-{stable_id('ckpt', 'd1')[:10]}")
    assert _out(ctx, "dpo", DPOTrainConfig(beta=0.2), "ckpt", "d1", 1.0) != _out(ctx, "dpo", DPOTrainConfig(),
                                                                                 "ckpt", "d1", 1.0)
