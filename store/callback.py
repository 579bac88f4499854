"""Record every DSPy LM and module call in the store, and serve DSPy's response cache from it.

Two DSPy extension points, used as DSPy means them: a `BaseCallback` sees each call start and end, and `dspy.cache`
(DSPy's response cache) is replaced by `StoreCache`, so a rerun finds its answers in the same DuckDB file that
holds the traces — "cached in the store" — and the callback knows which calls were cache hits and what they used.
"""

from __future__ import annotations

import contextvars
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import dspy
from dspy.clients.cache import Cache
from dspy.utils.callback import BaseCallback

from store.budget import Budget, BudgetExceeded
from store.db import Store
from store.ids import to_json

_run_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("run_id", default=None)
_stage: contextvars.ContextVar[str | None] = contextvars.ContextVar("stage", default=None)
_module_stack: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("module_stack", default=())
_last_lookup = threading.local()  # what StoreCache saw for this thread's current LM call
_last_call = threading.local()  # id of this thread's latest finished LM call, to link candidates and judgments
# This thread's open LM call and the budget: None outside an LM call, False inside one with nothing reserved, True
# once StoreCache found no answer and the budget allowed the real call (the callback settles it when the call ends).
_budget_slot = threading.local()


@contextmanager
def trace_context(*, run_id: str | None = None, stage: str | None = None):
    """Label the LM and module calls made inside: which run, which stage."""
    tokens = []
    if run_id is not None:
        tokens.append((_run_id, _run_id.set(run_id)))
    if stage is not None:
        tokens.append((_stage, _stage.set(stage)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def last_lm_call_id() -> str | None:
    """The call id of the LM call this thread finished last (the row in `lm_calls` that produced an output)."""
    return getattr(_last_call, "value", None)


class StoreCache(Cache):
    """DSPy's response cache, kept in the store's `lm_cache` table (memory in front, DuckDB behind)."""

    def __init__(self, store: Store, budget: Budget | None = None):
        super().__init__(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
        self.store = store
        self.budget = budget if budget is not None and budget.active else None
        import json

        for row in store.query("SELECT cache_key, record FROM lm_cache"):
            record = _restore(json.loads(row["record"]))
            if record is not None:
                self.memory_cache[row["cache_key"]] = record

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        key = self._key(request, ignored_args_for_cache_key)
        record = super().get(request, ignored_args_for_cache_key)
        _last_lookup.value = {"key": key, "hit": record is not None, "record": record}
        if record is None and self.budget is not None and getattr(_budget_slot, "value", None) is False:
            # a miss: DSPy calls the model next. This is the last point where the call can still not happen.
            self.budget.reserve(stage=_stage.get())
            _budget_slot.value = True
        return record

    def put(self, request: dict[str, Any], value: Any, ignored_args_for_cache_key: list[str] | None = None,
            enable_memory_cache: bool = True) -> None:
        key = self._key(request, ignored_args_for_cache_key)
        _last_lookup.value = {"key": key, "hit": False, "record": value}
        record = _persistable(value)
        if record is None:  # nothing we can write as JSON and read back: this process's memory only
            return super().put(request, value, ignored_args_for_cache_key, enable_memory_cache)
        with self._lock:
            self.memory_cache[key] = value
        self.store.add("lm_cache", {"cache_key": key, "record": to_json(record), "created_at": datetime.now()})

    def _key(self, request, ignored):
        try:
            return self.cache_key(request, ignored)
        except Exception:
            return None


# DSPy caches plain dicts for its native engine and LiteLLM's own response objects (pydantic models under
# litellm.types) for calls on LiteLLM's compatibility path (providers lm15 does not know, extra headers, a gateway
# set by environment variable). Those are kept as their JSON and rebuilt on load, so a rerun finds them too.
_LITELLM = "_litellm_response"


def _is_litellm(value: Any) -> bool:
    return type(value).__module__.startswith("litellm.types.")


def _persistable(value: Any) -> dict | None:
    if isinstance(value, dict):
        return value
    cls = type(value)
    if _is_litellm(value) and hasattr(value, "model_dump"):
        try:
            return {_LITELLM: {"module": cls.__module__, "type": cls.__qualname__,
                               "data": value.model_dump(mode="json")}}
        except Exception:  # noqa: BLE001 - an object LiteLLM cannot dump stays in memory
            return None
    return None


def _restore(record: Any) -> Any:
    """A stored record as DSPy cached it; None for one this LiteLLM cannot rebuild (the call is then made again)."""
    if not (isinstance(record, dict) and _LITELLM in record):
        return record
    import importlib

    spec = record[_LITELLM]
    if not str(spec.get("module", "")).startswith("litellm.types."):  # the trust rule of DSPy's own disk cache
        return None
    try:
        cls = getattr(importlib.import_module(spec["module"]), spec["type"])
        return cls(**spec["data"])
    except Exception:  # noqa: BLE001 - another LiteLLM version's shape
        return None


def _usage_and_cost(record: Any) -> tuple[dict, float | None]:
    """Token usage and the provider's price of a fresh answer, from either kind of cache record."""
    if isinstance(record, dict):
        return record.get("usage") or {}, record.get("cost")
    if _is_litellm(record):
        usage = getattr(record, "usage", None)
        usage = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage or {})
        return usage, (getattr(record, "_hidden_params", None) or {}).get("response_cost")
    return {}, None


def _messages(inputs: dict[str, Any]) -> Any:
    request = inputs.get("request") or (inputs.get("prompt") if not isinstance(inputs.get("prompt"), str) else None)
    if request is not None and hasattr(request, "messages"):
        from dspy.clients.lm15_boundary import history_messages

        return history_messages(request)
    if inputs.get("messages") is not None:
        return inputs["messages"]
    return [{"role": "user", "content": inputs.get("prompt")}]


def _texts(record: dict | None, outputs: Any) -> list[str | None]:
    if record and isinstance(record, dict) and record.get("outputs") is not None:
        outputs = record["outputs"]
    if outputs is None:
        return []
    if not isinstance(outputs, list):
        outputs = [outputs]
    return [o.get("text") if isinstance(o, dict) else (o if isinstance(o, str) else str(o)) for o in outputs]


def _logprobs(record: dict | None, outputs: Any) -> list | None:
    """Each output's log-probabilities: from the cache record, else from what the LM returned (a LiteLLM answer's
    record is its response object, so a hosted model's log-probabilities are read from the outputs)."""
    if record and isinstance(record, dict) and record.get("outputs") is not None:
        outputs = record["outputs"]
    if not isinstance(outputs, list):
        outputs = [outputs]
    found = [o.get("logprobs") for o in outputs if isinstance(o, dict) and o.get("logprobs")]
    return found or None


class StoreCallback(BaseCallback):
    """Writes one `lm_calls` row per LM call and one `module_calls` row per module call, in batches."""

    def __init__(self, store: Store, budget: Budget | None = None):
        self.store = store
        self.budget = budget
        self._open: dict[str, dict[str, Any]] = {}
        self.seconds = 0.0  # time spent in this callback: the logging overhead bench/store_ingest.py reports

    def on_module_start(self, call_id, instance, inputs):
        t0 = time.perf_counter()
        stack = _module_stack.get()
        self._open[call_id] = {"t": time.perf_counter(), "module": type(instance).__name__, "inputs": inputs,
                               "parent": stack[-1] if stack else None, "token": _module_stack.set(stack + (call_id,))}
        self.seconds += time.perf_counter() - t0

    def on_module_end(self, call_id, outputs, exception=None):
        t0 = time.perf_counter()
        start = self._open.pop(call_id, None)
        if start is None:
            return
        try:
            _module_stack.reset(start["token"])
        except ValueError:  # ended in another context (threads): the stack there is already right
            pass
        self.store.add("module_calls", {
            "call_id": call_id, "run_id": _run_id.get(), "stage": _stage.get(), "parent_call_id": start["parent"],
            "module": start["module"], "inputs": to_json(_plain(start["inputs"])), "outputs": to_json(_plain(outputs)),
            "error": _error(exception), "latency_s": time.perf_counter() - start["t"], "created_at": datetime.now(),
        })
        self.seconds += time.perf_counter() - t0

    def on_lm_start(self, call_id, instance, inputs):
        t0 = time.perf_counter()
        _last_lookup.value = None
        _budget_slot.value = False
        stack = _module_stack.get()
        self._open[call_id] = {"t": time.perf_counter(), "model": getattr(instance, "model", type(instance).__name__),
                               "inputs": inputs, "module": stack[-1] if stack else None,
                               "lm_kwargs": dict(getattr(instance, "kwargs", {}) or {})}
        self.seconds += time.perf_counter() - t0

    def on_lm_end(self, call_id, outputs, exception=None):
        t0 = time.perf_counter()
        start = self._open.pop(call_id, None)
        reserved, _budget_slot.value = getattr(_budget_slot, "value", None), None
        if start is None or isinstance(exception, BudgetExceeded):  # refused by the budget: no call was made
            return
        latency = time.perf_counter() - start["t"]
        _last_call.value = call_id
        seen = getattr(_last_lookup, "value", None) or {}
        usage, cost = _usage_and_cost(seen.get("record"))
        record = seen.get("record") if isinstance(seen.get("record"), dict) else None
        if reserved and self.budget is not None:
            self.budget.settle(None if seen.get("hit") else cost)
        inputs = start["inputs"]
        kwargs = {**start["lm_kwargs"], **{k: v for k, v in inputs.items() if k not in ("prompt", "messages", "request")}}
        self.store.add("lm_calls", {
            "call_id": call_id, "run_id": _run_id.get(), "stage": _stage.get(), "module_call_id": start["module"],
            "cache_key": seen.get("key"), "model": start["model"], "messages": to_json(_plain(_messages(inputs))),
            "kwargs": to_json(_plain(kwargs)), "response": to_json(_texts(record, outputs)),
            "logprobs": to_json(_logprobs(record, outputs)),
            "prompt_tokens": None if seen.get("hit") else usage.get("prompt_tokens"),
            "completion_tokens": None if seen.get("hit") else usage.get("completion_tokens"),
            "latency_s": latency, "cost": None if seen.get("hit") else cost,
            "cache_hit": bool(seen.get("hit")), "error": _error(exception), "created_at": datetime.now(),
        })
        if not seen.get("hit"):  # a call the model answered: its row, its cache entry, its tokens survive a kill -9
            self.store.sync()
        self.seconds += time.perf_counter() - t0


def _error(exception: BaseException | None) -> str | None:
    return None if exception is None else f"{type(exception).__name__}: {exception}"[:2000]


def _plain(value: Any) -> Any:
    """JSON-able view of DSPy objects (Predictions, Examples, Requests) for the JSON columns."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k not in ("self", "lm")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "toDict"):
        return _plain(value.toDict())
    if hasattr(value, "items") and callable(value.items):
        return _plain(dict(value.items()))
    return str(value)


def install(store: Store, budget: Budget | None = None) -> StoreCallback:
    """Route DSPy's cache and callbacks through the store for this process; with a `budget`, a real LM call that
    would pass it is not made (`store.budget.BudgetExceeded` is raised instead)."""
    callback = StoreCallback(store, budget)
    dspy.cache = StoreCache(store, budget)
    existing = [c for c in (dspy.settings.callbacks or []) if not isinstance(c, StoreCallback)]
    dspy.configure(callbacks=existing + [callback])
    return callback
