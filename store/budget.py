"""A budget on the LM calls one command makes: a number of calls that really go to a model, and/or dollars spent.

The check sits where a real call is about to happen: `StoreCache.get` found no answer in the store, so the model is
next. A call the budget does not allow is not made; `BudgetExceeded` is raised in its place. Calls answered from the
store's cache are free and never counted, so a rerun with a higher budget replays what is done and goes on from there.

Cost is what the provider's pricing says a call cost (`lm_calls.cost`); calls with no reported cost (local models)
count as free. A call's cost is known only once it is made, so before each call the budget expects it to cost as much
as the costliest call so far (for every call in flight): it stops before the spend could pass the limit. Only the
first priced call, whose price nothing predicts yet, can pass it.
"""

from __future__ import annotations

import threading


class BudgetExceeded(BaseException):
    """The next LM call would pass the budget, so it was not made.

    A `BaseException`, like `KeyboardInterrupt`: the pipeline's (and DSPy's) `except Exception` handlers, which log a
    failed call and go on with the next item, let it through, so the whole command stops where it is.
    """

    def __init__(self, kind: str, *, limit: float, calls: int, spent: float, stage: str | None = None):
        self.kind, self.limit, self.calls, self.spent, self.stage = kind, limit, calls, spent, stage
        super().__init__(self.describe())

    def describe(self, flags: dict[str, str] | None = None) -> str:
        """One line: what was reached. `flags` names the limits as the user set them (e.g. {"calls": "--max-calls"})."""
        name = (flags or {}).get(self.kind) or ("max_calls" if self.kind == "calls" else "max_cost")
        where = f" in stage {self.stage}" if self.stage else ""
        if self.kind == "calls":
            return f"budget reached{where}: {self.calls} LM calls ({name} {self.limit:g})"
        return (f"budget reached{where}: ${self.spent:.4f} spent on {self.calls} LM calls; the next could pass "
                f"{name} {self.limit:g}")


class Budget:
    """Counts the real (not cached) LM calls of this process and what they cost; refuses the call that would pass."""

    def __init__(self, max_calls: int | None = None, max_cost: float | None = None):
        if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 0):
            raise ValueError(f"max_calls must be a non-negative integer, got {max_calls!r}")
        if max_cost is not None and (isinstance(max_cost, bool) or not isinstance(max_cost, (int, float))
                                     or not max_cost > 0):
            raise ValueError(f"max_cost must be a positive number of dollars, got {max_cost!r}")
        self.max_calls = max_calls
        self.max_cost = None if max_cost is None else float(max_cost)
        self.calls = 0  # real calls started (allowed) in this process
        self.spent = 0.0  # their reported cost, summed as they finish
        self.priciest = 0.0  # the costliest single call so far: what the next one is expected to cost
        self.in_flight = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.max_calls is not None or self.max_cost is not None

    def reserve(self, stage: str | None = None) -> None:
        """Allow one more real call, or raise `BudgetExceeded` (the call is then not made)."""
        with self._lock:
            if self.max_calls is not None and self.calls >= self.max_calls:
                raise BudgetExceeded("calls", limit=self.max_calls, calls=self.calls, spent=self.spent, stage=stage)
            if self.max_cost is not None:
                expected = self.spent + (self.in_flight + 1) * self.priciest
                if self.spent >= self.max_cost or expected > self.max_cost:
                    raise BudgetExceeded("cost", limit=self.max_cost, calls=self.calls, spent=self.spent, stage=stage)
            self.calls += 1
            self.in_flight += 1

    def settle(self, cost: float | None) -> None:
        """A reserved call finished (or failed): add what it cost."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            if cost:
                self.spent += float(cost)
                self.priciest = max(self.priciest, float(cost))
