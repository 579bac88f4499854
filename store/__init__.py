"""The DuckDB trace store: the single source of truth for calls, candidates, judgments, datasets, runs and evaluations.

Names resolve on first use (PEP 562), so `store.ids` can be imported without loading DuckDB (training code does).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReadOnlyError", "Store", "StoreError", "default_path", "stable_id", "to_json"]


def __getattr__(name: str) -> Any:
    if name in ("stable_id", "to_json"):
        from store import ids

        return getattr(ids, name)
    if name in __all__:
        from store import db

        return getattr(db, name)
    raise AttributeError(f"module 'store' has no attribute {name!r}")
