"""Every feedback objective through `python -m programs.compile` on the tiny profile: sampling, pair selection,
judging, SQL datasets, training from one warm start, evaluation, the comparison report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store import Store

ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def compile_run(tmp: Path, *extra: str, timeout: int = 2700) -> subprocess.CompletedProcess:
    band = tmp / "band.toml"
    # the tiny student rambles: keep its pairs; DPO and BRIO get learning rates of their own
    band.write_text("length_band = [0.2, 5.0]\nk_samples = 3\ndpo_learning_rate = 3e-5\nbrio_learning_rate = 7e-5\n")
    cmd = [sys.executable, "-m", "programs.compile", "--profile", "tiny", "--limit", "2", "--max-steps", "1",
           "--config", str(band), "--db", str(tmp / "t.duckdb"), "--out", str(tmp / "out"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.mark.slow
def test_all_objectives_from_one_warm_start(tmp_path):
    out = compile_run(tmp_path, "--objective", "all", "--ood", "2")
    assert out.returncode == 0, out.stderr[-4000:]
    s = Store(tmp_path / "t.duckdb", create=False)

    runs = {r["objective"]: r for r in s.query("SELECT objective, status, config, base_model FROM training_runs")}
    assert set(runs) == {"imitation", "ft", "curated", "sd", "brio", "dpo", "brio-dpo"}  # the warm start named apart
    assert all(r["status"] == "finished" for r in runs.values())
    # one warm start: ft, sd, dpo and brio start from the imitation model; brio-dpo's DPO starts from BRIO's model
    warm = s.scalar("SELECT path FROM checkpoints k JOIN training_runs t USING (training_id) "
                    "WHERE t.objective = 'imitation' AND k.merged ORDER BY k.created_at LIMIT 1")  # merged after training
    starts = {name: json.loads(r["config"])["base_model"] for name, r in runs.items()}
    rates = {name: json.loads(r["config"])["learning_rate"] for name, r in runs.items()}
    assert rates == {"imitation": None, "ft": None, "curated": None, "sd": None, "brio": 7e-5, "dpo": 3e-5,
                     "brio-dpo": 3e-5}  # each trainer's own
    assert starts["curated"] == starts["sd"] == starts["dpo"] == starts["brio"] == warm
    assert starts["brio-dpo"] != warm
    for path in s.query("SELECT path, merged FROM checkpoints"):  # a LoRA adapter, or a full (merged) model
        assert (Path(path["path"]) / ("config.json" if path["merged"] else "adapter_config.json")).exists() or \
            (Path(path["path"]) / "config.json").exists(), path

    purposes = {r["purpose"] for r in s.query("SELECT DISTINCT purpose FROM judgments")}
    assert {"eval", "feedback", "brio"} <= purposes
    assert s.scalar("SELECT count(*) FROM candidates WHERE role = 'sample'") > 0
    assert s.scalar("SELECT count(*) FROM feedback_pairs") > 0
    names = {r["name"] for r in s.query("SELECT name FROM datasets")}
    assert {"imitation", "ft", "curated", "sd-round0", "dpo-round0", "brio", "brio-dpo-round0"} <= names

    evals = s.query("SELECT student, split, judge, wtr_prob, wtr_decision FROM evaluations")
    assert {e["split"] for e in evals} == {"test", "ood"}
    assert len({e["student"] for e in evals}) == 7  # warm start + six objectives
    assert all(0 <= e["wtr_prob"] <= 1 and 0 <= e["wtr_decision"] <= 1 for e in evals)

    report = (tmp_path / "out" / "report.md").read_text()
    for label in ("warm start (imitation)", "| FT |", "| curated imitation |", "| SD |", "| BRIO |", "| DPO |",
                  "BRIO→DPO"):
        assert label in report, label
    for png in ("wtr.png", "loss.png", "length_ratio.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000

    # a rerun trains nothing and calls no model
    calls, trainings = s.scalar("SELECT count(*) FROM lm_calls"), s.scalar("SELECT count(*) FROM training_runs")
    assert trainings == 7  # the warm start and six objectives
    again = compile_run(tmp_path, "--objective", "all", "--ood", "2")
    assert again.returncode == 0, again.stderr[-4000:]
    assert s.scalar("SELECT count(*) FROM lm_calls") == calls
    assert s.scalar("SELECT count(*) FROM training_runs") == trainings


@pytest.mark.slow
def test_feedback_every_k_epochs_samples_fresh_pairs_each_round(tmp_path):
    out = compile_run(tmp_path, "--objective", "dpo", "--epochs", "2", "--feedback-every", "1", "--max-steps", "-1")
    assert out.returncode == 0, out.stderr[-4000:]
    s = Store(tmp_path / "t.duckdb", create=False)
    rounds = s.query("SELECT base_model FROM training_runs WHERE objective = 'dpo' ORDER BY started_at")
    assert len(rounds) == 2 and rounds[0]["base_model"] != rounds[1]["base_model"]  # round 2 starts from round 1
    producers = s.scalar("SELECT count(DISTINCT producer) FROM candidates WHERE role = 'sample'")
    assert producers == 2  # on-policy: each round sampled from the model it then trained


def test_user_sql_with_wrong_columns_is_named(tmp_path):
    out = compile_run(tmp_path, "--sft-sql", "SELECT input AS question, output AS answer FROM teacher_pairs",
                      timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "missing ['input', 'output']" in out.stderr and "Traceback" not in out.stderr


def test_feedback_data_keeps_this_rounds_confident_pairs(tmp_path):
    """The default DPO / SD queries over a real store: only the pairs this round judged, only as sure as
    min_confidence asks, and with both_orders_agree only those each order alone decides the same way."""
    from datetime import datetime

    from finetune.feedback import pair_key
    from finetune.objectives import PAIRS_SQL, SD_SQL, sql_dataset

    s = Store(tmp_path / "t.duckdb")
    now = datetime.now()
    # (p of a shown first, p of b shown first): the verdict's P(a) = (p_ab + 1 - p_ba) / 2, the paper's rule
    cases = {"sure": (0.9, 0.2), "flips": (0.9, 0.7), "coin": (0.55, 0.5), "old": (0.9, 0.1)}
    s.insert("inputs", [{"input_id": f"i-{n}", "text": f"input {n}", "split": "train", "task": "humor",
                         "source": "bundled", "created_at": now} for n in cases])
    s.insert("candidates", [{"candidate_id": f"{n}-{x}", "input_id": f"i-{n}", "role": "sample", "producer": "p",
                             "rank": r, "text": f"{x} for {n}", "lm_call_id": None, "run_id": "r", "created_at": now}
                            for n in cases for r, x in enumerate("ab")])
    s.insert("verdicts", [{"verdict_id": f"{n}-{method}", "input_id": f"i-{n}", "judge": "critic", "method": method,
                           "a_id": f"{n}-a", "b_id": f"{n}-b", "p_a": (p_ab + 1 - p_ba) / 2,
                           "orders_agree": (p_ab > 0.5) == (1 - p_ba > 0.5), "n_orders": 2, "purpose": "feedback",
                           "run_id": "r", "created_at": now}
                          for n, (p_ab, p_ba) in cases.items() for method in ("choice-first", "other")])
    this_round = [pair_key(f"{n}-a", f"{n}-b") for n in ("sure", "flips", "coin")]

    def inputs(sql, min_confidence=0.0, both_orders=False):
        params = {"judge": "critic", "method": "choice-first", "producer": "p", "pairs": this_round,
                  "min_confidence": min_confidence,
                  "both_orders": both_orders, "inputs": [f"i-{n}" for n in cases]}
        rows, _ = sql_dataset(s, "pairs" if sql is PAIRS_SQL else "sft", sql, params, name="t", run_id="r")
        return rows

    rows = inputs(PAIRS_SQL)
    assert [r["input"] for r in rows] == ["input coin", "input flips", "input sure"]  # not the other round's
    assert {r["input"]: (r["chosen"], r["rejected"]) for r in rows}["input sure"] == ("a for sure", "b for sure")
    assert [r["input"] for r in inputs(PAIRS_SQL, 0.1)] == ["input flips", "input sure"]
    assert [r["input"] for r in inputs(PAIRS_SQL, both_orders=True)] == ["input sure"]
    assert [r["output"] for r in inputs(SD_SQL, 0.5)] == ["a for sure"]
