"""Server-side evaluation of Vast search queries (offer search and the v1 instance list).

The official CLI parses the user's query client-side and sends a dict of
``{field: {op: value}}``; numbers arrive as JSON strings (``{"gt": "0.99"}``), GB
fields already scaled to MB, underscores already turned into spaces. This module
is the server's half: coercion, operators, virtual columns, ordering.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Keys that ride alongside the filters in a search body but are not filters.
SEARCH_CONTROL_KEYS = frozenset(
    {"order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols", "q"}
)

OPERATOR_ALIASES = {
    "eq": "eq",
    "==": "eq",
    "=": "eq",
    "neq": "neq",
    "ne": "neq",
    "noteq": "neq",
    "!=": "neq",
    "gt": "gt",
    "gte": "gte",
    "lt": "lt",
    "lte": "lte",
    "in": "in",
    "notin": "notin",
    "nin": "notin",
}

DEFAULT_OFFER_LIMIT = 64
MAX_OFFER_LIMIT = 1000


class QueryError(ValueError):
    """A query the server rejects with 400 (the message is Vast's ``msg``)."""


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return None if math.isnan(number) else number
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return None


def _normalise_text(value: str, field: str) -> str:
    # The docs show underscored GPU names inside `in` lists, so names compare with `_` as a space.
    return value.replace("_", " ") if field == "gpu_name" else value


def _compare(op: str, actual: Any, wanted: Any, field: str) -> bool:
    if op in ("in", "notin"):
        if not isinstance(wanted, list):
            raise QueryError(f"Invalid query: '{op}' on {field} needs a list value")
        hit = any(_compare("eq", actual, item, field) for item in wanted)
        return hit if op == "in" else not hit
    if wanted is None:
        return (actual is None) if op == "eq" else (actual is not None) if op == "neq" else False
    if actual is None:
        return op == "neq"
    if isinstance(actual, bool):
        wanted_bool = _as_bool(wanted)
        if wanted_bool is None:
            raise QueryError(f"Invalid query: {field} is a boolean, got {wanted!r}")
        if op == "eq":
            return actual is wanted_bool
        if op == "neq":
            return actual is not wanted_bool
        raise QueryError(f"Invalid query: operator {op} does not apply to boolean {field}")
    if isinstance(actual, int | float):
        number = _as_number(wanted)
        if number is None:
            raise QueryError(f"Invalid query: {field} is numeric, got {wanted!r}")
        return _ordered(op, float(actual), number)
    text = _normalise_text(str(actual), field)
    target = _normalise_text(str(wanted), field)
    return _ordered(op, text, target)


def _ordered(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return left == right
    if op == "neq":
        return left != right
    if op == "gt":
        return left > right
    if op == "gte":
        return left >= right
    if op == "lt":
        return left < right
    if op == "lte":
        return left <= right
    raise QueryError(f"Invalid query: unknown operator {op}")


Getter = Callable[[Mapping[str, Any]], Any]


def offer_virtual_columns() -> dict[str, Getter]:
    """Columns offer search filters on that are not plain row keys."""
    return {
        "verified": lambda row: row.get("verification") == "verified",
        # Rows carry free text ("Texas, US"); filters use the two-letter code.
        "geolocation": lambda row: str(row.get("geolocation") or "").rsplit(",", 1)[-1].strip(),
        "datacenter": lambda row: (row.get("hosting_type") or 0) >= 1,
        "secure_cloud": lambda row: (row.get("hosting_type") or 0) >= 1,
        # The CLI sends dotted driver versions as the integer form of the driver_vers column.
        "driver_version": lambda row: row.get("driver_vers"),
        "cuda_vers": lambda row: row.get("cuda_max_good"),
        "dph": lambda row: row.get("dph_total"),
        "dlperf_usd": lambda row: row.get("dlperf_per_dphtotal"),
        "flops_usd": lambda row: row.get("flops_per_dphtotal"),
        "display_active": lambda row: row.get("gpu_display_active"),
    }


# Accepted in queries but not filters in the simulator (Vast treats them as hints).
IGNORED_FILTERS = frozenset({"target_reliability", "allocated_storage"})


def normalise_conditions(field: str, conditions: Any) -> dict[str, Any]:
    """Map a field's conditions to canonical operator names, rejecting what Vast rejects."""
    if not isinstance(conditions, Mapping):
        # Older clients send `field: value` for equality.
        return {"eq": conditions}
    canonical: dict[str, Any] = {}
    for op, value in conditions.items():
        name = OPERATOR_ALIASES.get(str(op).lower())
        if name is None:
            raise QueryError(f"Invalid query: unknown operator '{op}' on {field}")
        canonical[name] = value
    return canonical


def build_predicate(
    filters: Mapping[str, Any],
    known_columns: Iterable[str],
    virtual: Mapping[str, Getter] | None = None,
) -> Callable[[Mapping[str, Any]], bool]:
    """Compile a filter dict into a row predicate; unknown columns are a 400 like Vast's."""
    virtual = virtual or {}
    known = set(known_columns)
    compiled: list[tuple[str, Getter, dict[str, Any]]] = []
    for field, conditions in filters.items():
        if field in SEARCH_CONTROL_KEYS or field in IGNORED_FILTERS:
            continue
        if field in virtual:
            getter = virtual[field]
        elif field in known:
            getter = _plain_getter(field)
        else:
            raise QueryError(f"Error in query parameters: {field} is not a valid search key")
        compiled.append((field, getter, normalise_conditions(field, conditions)))

    def predicate(row: Mapping[str, Any]) -> bool:
        for field, getter, conditions in compiled:
            actual = getter(row)
            for op, wanted in conditions.items():
                if not _compare(op, actual, wanted, field):
                    return False
        return True

    return predicate


def _plain_getter(field: str) -> Getter:
    return lambda row: row.get(field)


def parse_order(order: Any, aliases: Mapping[str, str] | None = None) -> list[tuple[str, bool]]:
    """Vast's ``order`` is ``[[field, "asc"|"desc"], ...]``; return ``(field, descending)`` pairs."""
    if order in (None, "", []):
        return []
    if not isinstance(order, list):
        raise QueryError("Invalid query: order must be a list of [field, direction] pairs")
    aliases = aliases or {}
    parsed: list[tuple[str, bool]] = []
    for item in order:
        if isinstance(item, str):
            field, direction = item, "asc"
        elif isinstance(item, list | tuple) and len(item) in (1, 2):
            field = str(item[0])
            direction = str(item[1]) if len(item) == 2 else "asc"
        else:
            raise QueryError(f"Invalid query: bad order entry {item!r}")
        if direction.lower() not in ("asc", "desc"):
            raise QueryError(f"Invalid query: order direction must be asc or desc, got {direction!r}")
        parsed.append((aliases.get(field, field), direction.lower() == "desc"))
    return parsed


def sort_rows(
    rows: list[dict[str, Any]], order: list[tuple[str, bool]], tiebreak: str = "id"
) -> list[dict[str, Any]]:
    """Stable multi-key sort with nulls last in either direction, then ``tiebreak`` ascending."""
    result = sorted(rows, key=lambda row: row.get(tiebreak) or 0)
    for field, descending in reversed(order):
        present = [row for row in result if row.get(field) is not None]
        missing = [row for row in result if row.get(field) is None]
        present.sort(key=lambda row, f=field: _sort_key(row.get(f)), reverse=descending)
        result = present + missing
    return result


def _sort_key(value: Any) -> tuple[int, Any]:
    number = _as_number(value) if not isinstance(value, str) else None
    if number is not None:
        return (0, number)
    return (1, str(value))


def parse_limit(value: Any, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    number = _as_number(value)
    if number is None:
        raise QueryError(f"Invalid query: limit must be a number, got {value!r}")
    return min(int(number), maximum)
