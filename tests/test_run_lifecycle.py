"""A run's row says how the command ended (`store.runs.recorded_run`): finished, interrupted, stopped by a budget or
failed, with finished_at, and the exception still reaches the caller. On a real DuckDB file."""

from __future__ import annotations

import textwrap
from datetime import datetime

import pytest

from store import Store
from store.budget import BudgetExceeded
from store.errors import EXIT_USAGE
from store.runs import recorded_run


def _row(run_id: str = "run-1") -> dict:
    return {"run_id": run_id, "started_at": datetime(2024, 1, 2, 3, 4, 5), "status": "running", "command": "test",
            "profile": None, "config": "{}", "code_version": "x"}


def _stored(store: Store, run_id: str = "run-1") -> dict:
    rows = store.query("SELECT status, started_at, finished_at, command FROM runs WHERE run_id = ?", [run_id])
    assert len(rows) == 1, rows
    return rows[0]


def test_a_run_that_ends_well_is_finished(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    with recorded_run(store, _row()) as row:
        during = _stored(store)
        assert row["run_id"] == "run-1"
    assert during["status"] == "running" and during["finished_at"] is None
    after = _stored(store)
    assert after["status"] == "finished" and after["finished_at"] >= after["started_at"]
    assert after["started_at"] == datetime(2024, 1, 2, 3, 4, 5) and after["command"] == "test"


@pytest.mark.parametrize("error, status", [
    (KeyboardInterrupt(), "interrupted"),
    (BudgetExceeded("calls", limit=2, calls=2, spent=0.0), "stopped"),
    (ValueError("a bug"), "failed"),
    (SystemExit(1), "failed"),  # any other BaseException too: nothing is left 'running'
])
def test_a_run_that_ends_early_says_why_and_the_error_goes_on(tmp_path, error, status):
    store = Store(tmp_path / "t.duckdb")
    with pytest.raises(type(error)) as raised:
        with recorded_run(store, _row()):
            raise error
    assert raised.value is error
    after = _stored(store)
    assert after["status"] == status and after["finished_at"] is not None


def test_a_rerun_is_the_same_row_running_again(tmp_path):
    store = Store(tmp_path / "t.duckdb")
    with pytest.raises(ValueError):
        with recorded_run(store, _row()):
            raise ValueError("first try")
    with recorded_run(store, _row()):
        assert _stored(store)["status"] == "running" and _stored(store)["finished_at"] is None
    assert _stored(store)["status"] == "finished"
    assert store.scalar("SELECT count(*) FROM runs") == 1


PROGRAM = '''
    import dspy


    class Mislabeled(dspy.Module):
        """Declares `reply` but returns a field of its own: a task mistake the teach stage stops on."""

        def __init__(self):
            super().__init__()
            self.reply = dspy.Predict("text -> reply")

        def forward(self, text):
            return dspy.Prediction(answer="not the task's output field")


    MISLABELED = Mislabeled()
'''


def test_an_evaluation_that_raises_leaves_its_run_failed(tiny_causal_dir, tmp_path, capsys):
    """`python -m finetune.evaluate` whose teacher program stops the run (a UserError in the teach stage): the
    command's one line and exit code, and its run row 'failed' with finished_at, not 'running' forever."""
    from finetune.evaluate import main

    (tmp_path / "prog.py").write_text(textwrap.dedent(PROGRAM))
    task = tmp_path / "task.toml"
    task.write_text('program = "prog.py:MISLABELED"\ncritic_instruction = "Choose the better reply."\n')
    inputs = tmp_path / "in.txt"
    inputs.write_text("hello there\nhow are you\n")
    db = tmp_path / "e.duckdb"
    code = main(["--student", str(tiny_causal_dir), "--inputs", str(inputs), "--task", str(task),
                 "--critic", f"local/{tiny_causal_dir}", "--db", str(db)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "Mislabeled returned answer, but its task's output is reply" in err, err
    store = Store(db, create=False)
    runs = store.query("SELECT status, finished_at, command FROM runs")
    assert len(runs) == 1 and runs[0]["command"] == "python -m finetune.evaluate"
    assert runs[0]["status"] == "failed" and runs[0]["finished_at"] is not None
    assert store.scalar("SELECT count(*) FROM inputs") == 2  # it got as far as the inputs
