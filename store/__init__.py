"""The DuckDB trace store: the single source of truth for calls, candidates, judgments, datasets, runs and evaluations."""

from store.db import ReadOnlyError, Store, StoreError, default_path, stable_id, to_json

__all__ = ["ReadOnlyError", "Store", "StoreError", "default_path", "stable_id", "to_json"]
