"""Remove secrets before anything is written: API keys and authorization headers never reach the store."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|auth[_-]?token|access[_-]?token|secret|password|headers|cookie)", re.I)
# Bearer tokens and the common provider key shapes (sk-…, sk-ant-…, hf_…, gsk_…, AIza…).
SECRET_VALUES = re.compile(r"(Bearer\s+\S+|\bsk-[A-Za-z0-9_\-]{8,}|\bhf_[A-Za-z0-9]{8,}|\bgsk_[A-Za-z0-9]{8,}|\bAIza[0-9A-Za-z_\-]{20,})")
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (REDACTED if isinstance(k, str) and SECRET_KEYS.search(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return SECRET_VALUES.sub(REDACTED, value)
    return value
