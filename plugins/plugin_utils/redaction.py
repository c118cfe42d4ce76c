# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping the API key out of what plugins return: results, host variables, caches, messages.

Private to the collection.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "********"
# A secret shorter than this is not searched for (it would redact ordinary words).
MIN_SECRET_LENGTH = 8


def redacted(value: Any, secrets: Iterable[str | None] = (), *, min_length: int = MIN_SECRET_LENGTH) -> Any:
    """A JSON-safe deep copy of ``value``: every secret masked in every string (keys too), non-finite
    floats as ``"nan"``/``"inf"``/``"-inf"``, anything else that is not JSON as its text.

    Secrets shorter than ``min_length`` are left alone: searched for in data they would mask ordinary
    words (an inventory's host variables); 1 masks any (a result that must never carry the key)."""
    wanted = tuple(secret for secret in secrets if secret and len(secret) >= min_length)
    return _copy(value, wanted)


def redact_text(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret masked, however short: a message is no place for any part of a key."""
    return _copy(str(text), tuple(secret for secret in secrets if secret))


def _copy(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {_key(k, secrets): _copy(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | deque):
        return [_copy(v, secrets) for v in value]
    return _copy(str(value), secrets)


def _key(key: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(key, bool | int | float) or key is None:
        return key  # JSON writes these as text itself
    return _copy(str(key), secrets)
