"""Progress a person can see when the output is not a terminal (a CI log, `nohup`, a notebook): real stages, piped,
print a line when they start, one every CRITIC_DISTILL_PROGRESS_INTERVAL seconds with counts, and one when they end;
a log file gets the same lines."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from programs import progress

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _texts(n: int) -> list[str]:
    lines = (ROOT / "programs" / "data" / "humor_inputs.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()][:n]


def test_training_piped_prints_start_periodic_counts_and_end(tiny_causal_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"input": t, "output": f"Oops! {t}"}) + "\n" for t in _texts(16)))
    cmd = [sys.executable, "-m", "finetune.train", "--objective", "imitation", "--data", str(data),
           "--base", str(tiny_causal_dir), "--out", str(tmp_path / "ft"), "--max-steps", "30", "--batch-size", "2",
           "--max-length", "96"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**ENV, progress.INTERVAL_ENV: "0.1"})  # stdout and stderr are pipes, not a terminal
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d imitate ", line)]
    assert re.search(r"imitate \S+: start, 30 steps$", lines[0]), lines
    assert re.search(r"imitate \S+: done, 30/30 steps in [\d.]+s · loss [\d.]+$", lines[-1]), lines
    periodic = [re.search(r": (\d+)/30 steps, [\d.]+s", line) for line in lines[1:-1]]
    assert periodic and all(periodic), lines
    counts = [int(m.group(1)) for m in periodic]
    assert counts == sorted(counts)  # the count moves forward, line by line
    assert "━" not in out.stderr  # no rich bar printed once at the end
    assert out.stdout.strip().endswith("final")  # stdout stays the model's path


def test_generation_stage_writes_its_lines_to_a_log_file(tiny_causal_dir, tmp_path, monkeypatch):
    import dspy

    from finetune.evaluate import student_outputs
    from programs.adapter import LabeledAdapter
    from programs.lm import resolve_lm
    from programs.student import Student
    from programs.builtin_tasks import HUMOR
    from store import Store, stable_id
    from store.callback import install

    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    store = Store(tmp_path / "t.duckdb")
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    items = [{"input_id": stable_id("input", "humor", t), "text": t} for t in _texts(12)]
    lm = resolve_lm(f"local/{tiny_causal_dir}", temperature=0.0, max_tokens=48)
    with progress.log_to(tmp_path / "out" / "progress.log") as log:
        student_outputs(store, Student(HUMOR), lm, items[:4], producer="tiny", run_id="r")
        student_outputs(store, Student(HUMOR), lm, items, producer="tiny", run_id="r")  # 4 done before
    lines = log.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d generate: start, 4 inputs", lines[0]), lines
    assert any(re.search(r"generate: start, 12 inputs \(4 done before\)$", line) for line in lines), lines
    assert re.search(r"generate: done, 12/12 inputs in [\d.]+s$", lines[-1]), lines


def test_a_bad_interval_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    with pytest.raises(progress.ProgressError, match="CRITIC_DISTILL_PROGRESS_INTERVAL='soon'"):
        with progress.stage_progress("teach", total=3):
            pass
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    with pytest.raises(progress.ProgressError):
        progress.interval()


def test_durations_read_like_a_person_writes_them():
    assert [progress.duration(s) for s in (0.42, 45, 120, 7 * 60 + 3, 2 * 3600 + 3 * 60)] == \
        ["0.4s", "45s", "2m 0s", "7m 3s", "2h 3m"]
