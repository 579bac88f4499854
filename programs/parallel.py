"""Run LM-bound work on a thread pool (hosted models), or inline (local models: one llama.cpp context serves one
call at a time). Each worker runs in a copy of the caller's context, so DSPy settings and the store's run/stage
labels follow the work into the thread. An exception in one worker (`store.budget.BudgetExceeded` included: it
is a BaseException, and the pool passes those on too) stops the rest: queued work is cancelled."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def imap(fn: Callable[[T], R], items: Iterable[T], threads: int = 1) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) pairs: in order when inline, in completion order on a pool."""
    items = list(items)
    if threads <= 1 or len(items) <= 1:
        for item in items:
            yield item, fn(item)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = {pool.submit(contextvars.copy_context().run, fn, item): item for item in items}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            # a stop (the LM budget, Ctrl-C) or a failure: start no more work; the calls already running finish and
            # are recorded (the pool waits for them), so a rerun finds their answers in the store
            for future in futures:
                future.cancel()
            raise
