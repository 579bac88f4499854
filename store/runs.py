"""A command's `runs` row through its life: 'running' while it works, then how it ended.

Every command that records a run (`programs.compile`, `finetune.evaluate`, `metrics.audit`) wraps its work in
`recorded_run`, so a crash, a budget or Ctrl-C never leaves a row that says 'running' for a command that is gone.

    with recorded_run(store, run_row):
        ...  # the command's stages
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from store.budget import BudgetExceeded

if TYPE_CHECKING:
    from store.db import Store


@contextmanager
def recorded_run(store: Store, run_row: dict) -> Iterator[dict]:
    """Write `run_row` (its id stable, so a rerun is the same row) as 'running', with no finished_at (a rerun's row
    does not keep the last run's); on exit, its status and finished_at:
    finished, interrupted (Ctrl-C), stopped (a budget reached: the same command with a higher one goes on) or failed
    (any other exception). The exception goes on up; the store stays open (the caller closes it)."""
    store.insert("runs", [{**run_row, "status": "running", "finished_at": None}], replace=True)
    try:
        yield run_row
    except KeyboardInterrupt:
        _ended(store, run_row, "interrupted")
        raise
    except BudgetExceeded:
        _ended(store, run_row, "stopped")
        raise
    except BaseException:
        _ended(store, run_row, "failed")
        raise
    _ended(store, run_row, "finished")


def _ended(store: Store, run_row: dict, status: str) -> None:
    store.insert("runs", [{**run_row, "status": status, "finished_at": datetime.now()}], replace=True)
