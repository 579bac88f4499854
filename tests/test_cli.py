"""Every `python -m` entry point reports a user error the same way: one line on stderr, `error: <what to fix>`, no
traceback, and the exit code of `store.errors`' table."""

from __future__ import annotations

import importlib

import pytest

from store.budget import BudgetExceeded
from store.cli import entry_point
from store.errors import EXIT_BUDGET, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UserError, exit_code


@pytest.fixture
def quiet_env(monkeypatch):
    """`quiet_libraries` sets environment variables; give them back after the test."""
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)


def _store(tmp_path) -> str:
    from store import Store

    path = tmp_path / "t.duckdb"
    Store(path).close()
    return str(path)


# (module, argv, exit code, what the line says); {tmp} is the test's folder, {db} a store that exists
CASES = [
    ("programs.compile", ["--profile", "tiny", "--limit", "0", "--db", "{tmp}/e.duckdb"], EXIT_USAGE,
     "limit must be a positive integer"),
    ("programs.compile", ["--profile", "nope"], EXIT_USAGE, "invalid choice: 'nope'"),
    ("metrics.audit", ["--pairs", "{tmp}/missing.jsonl", "--db", "{tmp}/e.duckdb"], EXIT_USAGE,
     "pairs file not found"),
    ("metrics.audit", ["--pairs", "x.jsonl", "--mode", "fast"], EXIT_USAGE, "invalid choice: 'fast'"),
    ("finetune.evaluate", ["--student", "{tmp}", "--inputs", "{tmp}/missing.txt", "--db", "{tmp}/e.duckdb"],
     EXIT_USAGE, "input file not found"),
    ("finetune.evaluate", ["--inputs", "x.txt"], EXIT_USAGE, "required: --student"),
    ("finetune.train", ["--objective", "sft", "--data", "{tmp}/missing.jsonl", "--out", "{tmp}/o", "--max-steps", "0"],
     EXIT_USAGE, "must be > 0"),
    ("store.__main__", ["query", "SELECT 1", "--db", "{tmp}/nope.duckdb"], EXIT_FAILED, "no store at"),
    ("store.__main__", ["query", "SELECT * FROM no_such_table", "--db", "{db}"], EXIT_FAILED, "no_such_table"),
    ("store.__main__", ["query", "DROP TABLE runs", "--db", "{db}"], EXIT_USAGE, "the store is read-only here"),
    ("store.__main__", ["nope"], EXIT_USAGE, "invalid choice: 'nope'"),
    ("programs.models", ["path", "no-such-model"], EXIT_USAGE, "unknown embedded model 'no-such-model'"),
    ("programs.models", ["serve", "no-such-model"], EXIT_USAGE, "unknown embedded model 'no-such-model'"),
    ("programs.models", ["serve", "{tmp}/missing.gguf"], EXIT_USAGE, "no GGUF file at"),
]


@pytest.mark.parametrize("module, argv, code, message", CASES,
                         ids=[f"{c[0].split('.')[-1].strip('_')}-{c[3].split()[0]}" for c in CASES])
def test_every_entry_point_reports_a_user_error_in_one_line(module, argv, code, message, tmp_path, capsys,
                                                            quiet_env):
    db = _store(tmp_path) if any("{db}" in a for a in argv) else ""
    main = importlib.import_module(module).main
    got = main([a.format(tmp=tmp_path, db=db) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err and not out
    assert not (tmp_path / "e.duckdb").exists()  # nothing was written before the input checked out


def test_every_user_facing_error_class_is_a_user_error():
    from finetune.objectives import DatasetError
    from finetune.train import UsageError
    from metrics.audit import AuditError
    from programs.config import ConfigError
    from programs.critic_rule import CriticSettingsError
    from programs.inputs import InputError
    from programs.models import ModelError
    from programs.tasks import TaskError
    from store.db import ReadOnlyError, StoreError

    for cls in (ConfigError, InputError, TaskError, CriticSettingsError, ModelError, AuditError, DatasetError,
                UsageError, ReadOnlyError):
        assert issubclass(cls, UserError) and exit_code(cls("x")) == EXIT_USAGE, cls
    assert issubclass(StoreError, UserError) and exit_code(StoreError("x")) == EXIT_FAILED
    assert issubclass(TaskError, ValueError) and issubclass(CriticSettingsError, ValueError)  # still, for callers


def test_every_user_facing_error_class_is_a_user_error():
    """Errors of the layers above (a wrong model spec, an optimizer that can't run, a student that can't load, a
    training that can't start) are user errors too, each declared so in its own module."""
    from finetune.optimize import OptimizeError
    from finetune.runner import StaleRunError, TrainingError
    from programs.lm import ModelSpecError
    from programs.student_lm import StudentError

    for cls in (ModelSpecError, OptimizeError, StudentError, TrainingError, StaleRunError):
        assert issubclass(cls, UserError) and exit_code(cls("x")) == EXIT_USAGE, cls


def test_the_helper_maps_budgets_interrupts_and_bugs(capsys):
    def raising(error: BaseException):
        @entry_point(interrupted="interrupted: rerun it")
        def main(argv=None):
            raise error

        return main

    assert raising(BudgetExceeded("calls", limit=3, calls=3, spent=0.0, stage="teach"))([]) == EXIT_BUDGET
    assert capsys.readouterr().err.strip() == ("budget reached in stage teach: 3 LM calls (--max-calls 3); rerun with a "
                                               "higher budget to continue")
    assert raising(KeyboardInterrupt())([]) == EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip() == "interrupted: rerun it"
    assert raising(UserError("two\n  lines [bold]kept[/bold]"))([]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == "error: two lines [bold]kept[/bold]"  # one line, no markup read
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        raising(RuntimeError("bug"))([])

    @entry_point()
    def fine(argv=None):
        return None

    assert fine([]) == EXIT_OK
