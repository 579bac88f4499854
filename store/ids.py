"""Content-hash ids and redacted JSON: what training code needs from the store without loading DuckDB."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from store.redact import redact


def stable_id(*parts: Any) -> str:
    """A short content hash: the same inputs give the same id on every rerun, so inserts are idempotent."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def to_json(value: Any) -> str | None:
    """JSON text for a JSON column, with secrets removed (nothing secret ever reaches the file)."""
    if value is None:
        return None
    return json.dumps(redact(value), default=_plain, ensure_ascii=False)


def _plain(value: Any) -> Any:
    """A pydantic object (a hosted model's log-probabilities through LiteLLM) as its fields, anything else as text."""
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else str(value)
