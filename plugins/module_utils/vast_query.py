# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Vast.ai offer query language, parsed exactly as the official CLI (``vastai`` 1.9.1) does.

Private to the collection; its API may change between releases.

``vastai search offers 'QUERY'`` turns its query into a JSON filter dict on the client and POSTs
that dict to ``/api/v0/bundles/``. Users copy queries between the CLI, the web console and this
collection, so the same text must produce the same request here, quirks included:

- a query is ``field op value`` conditions separated by *spaces* (only spaces: a tab or a newline
  is part of a value, as in the CLI);
- values stay JSON strings (``num_gpus=1`` sends ``"1"``); only ``true``/``false``/``null`` and
  their Python spellings become JSON literals, and the server coerces numeric strings;
- every ``_`` in a value becomes a space (``RTX_4090`` is ``"RTX 4090"``);
- ``gpu_ram``/``gpu_total_ram``/``cpu_ram`` are GB x 1000 (not 1024) sent as float MB, ``duration``
  is days sent as float seconds, and a dotted ``driver_version`` is sent as an integer;
- ``field=any`` (or ``?``, ``*``) removes the field, default filters included.

Where the CLI prints an error, or crashes with a traceback, on odd input, this module raises
``QueryError`` naming the offending token, so a bad query fails before any request is made.

The one extension is ``field ~ regex`` (case-insensitive ``re.search``, ``_`` → space as in
every value). The server has no such operator, so ``gpu_name ~ X`` is resolved against the
known GPU names into ``gpu_name in [...]`` (``ParsedQuery.resolve_gpu_names``), and a regex on
any other field is left to the caller (``ParsedQuery.row_matches``) to apply to returned rows.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_FILTERS",
    "DEFAULT_ORDER",
    "OFFER_FIELDS",
    "OFFER_TYPES",
    "ParsedQuery",
    "QueryError",
    "build_search_body",
    "parse_order",
    "parse_query",
]


class QueryError(ValueError):
    """A query, order or search option that the CLI would reject (or crash on)."""


# The fields the CLI 1.9.1 knows for offers (``vastai.api.query.offers_fields``). Others are
# still sent, with a warning, exactly as the CLI does: the server may know more than the CLI.
OFFER_FIELDS = frozenset({
    "bw_nvlink", "cluster_id", "compute_cap", "cpu_arch", "cpu_cores", "cpu_cores_effective",
    "cpu_ghz", "cpu_ram", "cuda_max_good", "datacenter", "direct_port_count", "disk_bw",
    "disk_space", "dlperf", "dlperf_per_dphtotal", "dph_total", "driver_version", "duration",
    "external", "flops_per_dphtotal", "geolocation", "gpu_arch", "gpu_display_active", "gpu_frac",
    "gpu_max_power", "gpu_max_temp", "gpu_mem_bw", "gpu_name", "gpu_ram", "gpu_total_ram",
    "has_avx", "host_id", "id", "inet_down", "inet_down_cost", "inet_up", "inet_up_cost",
    "machine_id", "min_bid", "mobo_name", "num_gpus", "pci_gen", "pcie_bw", "reliability",
    "rentable", "rented", "static_ip", "storage_cost", "total_flops", "ubuntu_version",
    "verification", "verified", "vms_enabled",
})

# Short names the CLI rewrites before sending. ``reliability`` is *not* aliased to
# ``reliability2`` in 1.9.1 (the CLI has that alias commented out).
FIELD_ALIASES: Mapping[str, str] = {
    "cuda_vers": "cuda_max_good",
    "display_active": "gpu_display_active",
    "dlperf_usd": "dlperf_per_dphtotal",
    "dph": "dph_total",
    "flops_usd": "flops_per_dphtotal",
}

# Unit conversions: the user types GB and days, the server stores MB and seconds. The factors
# and their types are the CLI's (int 1000, float 86400.0) so the float results are bit-identical.
FIELD_MULTIPLIERS: Mapping[str, float] = {
    "cpu_ram": 1000,
    "gpu_ram": 1000,
    "gpu_total_ram": 1000,
    "duration": 24.0 * 60.0 * 60.0,
}

OPERATORS: Mapping[str, str] = {
    "=": "eq", "==": "eq", "eq": "eq",
    "!=": "neq", "neq": "neq", "noteq": "neq", "not eq": "neq",
    "<": "lt", "lt": "lt",
    "<=": "lte", "lte": "lte",
    ">": "gt", "gt": "gt",
    ">=": "gte", "gte": "gte",
    "in": "in",
    "notin": "notin", "nin": "notin", "not in": "notin",
}
REGEX_OPERATOR = "~"
WILDCARDS = ("?", "*", "any")

# The CLI's `search offers` defaults; `-n` (defaults=False) drops all three.
DEFAULT_FILTERS: Mapping[str, Mapping[str, Any]] = {
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
}
DEFAULT_ORDER = "score-"
# `interruptible` is the CLI's other name for `bid`; it is rewritten before sending.
OFFER_TYPES = ("on-demand", "bid", "reserved", "interruptible")

_OPERATOR_HELP = "use one of = != < <= > >= in notin, or ~ for a regex"
_VALUE_HELP = 'a value with spaces must be quoted ("RTX 4090") or written with underscores (RTX_4090)'

# The CLI tokenises with one regex and re.findall; each piece below is one of its groups,
# matched in sequence. That is equivalent because everything after the field is optional and
# greedy, so the CLI's regex never backtracks into an earlier group. The only addition is the
# ` *~` operator, which only matches where the CLI would fail with "Unknown operator ''".
_FIELD_RE = re.compile(r"[a-zA-Z0-9_]+")
_OP_RE = re.compile(r" *[=><!]+| *~| +(?:[lg]te?|nin|neq|eq|not ?eq|not ?in|in) ")
_VALUE_RE = re.compile(r'\[[^\]]+\]|"[^"]+"|[^ ]+')
# A regex may well start with `[` (`[AH]100`), so `~` takes a quoted string or a bare token.
_REGEX_VALUE_RE = re.compile(r'"[^"]+"|[^ ]+')
_OPERATOR_LIKE_RE = re.compile(r"[=<>!~]+|[A-Za-z]+")
_OPERATOR_CHARS_RE = re.compile(r"[=<>!~]+")


@dataclass(frozen=True)
class _Condition:
    """One ``field op value`` as tokenised, before any rewriting."""

    field: str
    op: str  # stripped operator text; "" when the CLI's regex found none
    value: str  # raw value token; "" only at the end of the query
    text: str  # the condition as written, for error messages


@dataclass
class ParsedQuery:
    """A parsed query: the server-side filters plus the client-side regex conditions."""

    text: str
    filters: dict[str, dict[str, Any]]
    regex: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unknown_fields: list[str] = field(default_factory=list)

    def resolve_gpu_names(self, gpu_names: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The filter dict with ``gpu_name ~ X`` rewritten to ``gpu_name in [every known match]``.

        ``gpu_names`` is the body of ``GET /api/v0/gpu_names/unique/`` (``gpu_names`` list).
        Underscores in it are read as spaces, as the CLI's cache of that list uses them and the
        server compares names with spaces. Regexes on other fields are left for ``row_matches``.
        """
        filters = copy.deepcopy(self.filters)
        pattern = self.regex.get("gpu_name")
        if pattern is None:
            return filters
        compiled = _compile(pattern, "gpu_name", self.text)
        known: list[str] = []
        for name in gpu_names:
            spaced = str(name).replace("_", " ")
            if spaced not in known:
                known.append(spaced)
        matches = [name for name in known if compiled.search(name)]
        condition = filters.setdefault("gpu_name", {})
        if "in" in condition and isinstance(condition["in"], list):
            # Conditions are ANDed: an explicit `gpu_name in [...]` narrows the regex's matches.
            matches = [name for name in matches if name in condition["in"]]
        if not matches:
            sample = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise QueryError(
                f"No known GPU name matches 'gpu_name ~ {pattern}' in \"{self.text}\"; known names "
                f"include {sample or '(none: the GPU name list was empty)'}. Fix the regex (it is a "
                "case-insensitive search, and _ stands for a space)."
            )
        condition["in"] = matches
        return filters

    def row_matches(self, row: Mapping[str, Any]) -> bool:
        """Whether an offer row satisfies every ``field ~ regex`` condition (case-insensitive)."""
        for name, pattern in self.regex.items():
            value = row.get(name)
            if value is None:
                return False
            if not _compile(pattern, name, self.text).search(str(value)):
                return False
        return True

    def unknown_gpu_names(self, gpu_names: Iterable[str]) -> list[str]:
        """The ``gpu_name =``/``in`` values that no GPU on the market is called (_ read as a space).

        Case counts, as in the server's comparison: ``rtx_4090`` finds nothing, so it is unknown too.
        Only asked once a search came back empty: the list holds what is listed now, so a real model
        that is simply not offered today would also be "unknown", which is still why nothing matched.
        """
        known = {str(name).replace("_", " ") for name in gpu_names}
        condition = self.filters.get("gpu_name") or {}
        wanted = [condition["eq"]] if isinstance(condition.get("eq"), str) else []
        wanted += [value for value in condition.get("in") or [] if isinstance(value, str)]
        return [name for name in wanted if name.replace("_", " ") not in known]


def no_offer_reason(parsed: ParsedQuery, gpu_names: Iterable[str]) -> str:
    """Why a search found no offer at all, in words that say what to change."""
    names = sorted({str(name).replace("_", " ") for name in gpu_names})
    unknown = parsed.unknown_gpu_names(names)
    if unknown:
        by_case = {name.casefold(): name for name in names}
        hints = [f"{name!r} is written {by_case[name.replace('_', ' ').casefold()]!r}" for name in unknown
                 if name.replace("_", " ").casefold() in by_case]
        if hints:
            return (f"no GPU on the market is called {', '.join(map(repr, unknown))}: names are case-sensitive "
                    f"({'; '.join(hints)})")
        sample = ", ".join(names[:12]) or "(none)"
        return (f"no GPU on the market is called {', '.join(map(repr, unknown))}; names on the market now: "
                f"{sample}. Write them as the CLI does (RTX_4090 or \"RTX 4090\"), or use gpu_name ~ REGEX")
    return f"no offer on the market matches {parsed.text!r}; loosen the query"


def parse_query(text: str | Sequence[str] | None, *, defaults: bool = True) -> ParsedQuery:
    """Parse an offer query exactly as ``vastai search offers`` 1.9.1 does, plus ``~``.

    A list is joined with spaces, as the CLI joins its positional arguments.
    Raises ``QueryError`` wherever the CLI would print an error or crash.
    """
    query = _join(text)
    filters: dict[str, dict[str, Any]] = copy.deepcopy(dict(DEFAULT_FILTERS)) if defaults else {}
    result = ParsedQuery(text=query, filters=filters)
    conditions = _tokenise(query)
    for index, cond in enumerate(conditions):
        _apply(result, cond, conditions[index - 1] if index else None)
    return result


def parse_order(text: str | None) -> list[list[str]]:
    """``'dph+,score-'`` → ``[["dph_total", "asc"], ["score", "desc"]]``, as the CLI's ``-o``.

    A leading or trailing ``-`` means descending, ``+`` ascending, neither ascending; the
    ``+`` test comes second, so it wins when both are present (the CLI's order of checks).
    ``None`` means the CLI's default ``score-``; an empty string sends an empty order.
    """
    if text is None:
        text = DEFAULT_ORDER
    if not isinstance(text, str):
        raise QueryError(f"order must be a string like 'dph+,score-', got {text!r}")
    order: list[list[str]] = []
    for item in text.split(","):
        name = item.strip()
        if not name:
            continue
        direction, column = "asc", name
        if name.strip("-") != name:
            direction, column = "desc", name.strip("-")
        if name.strip("+") != name:
            direction, column = "asc", name.strip("+")
        order.append([FIELD_ALIASES.get(column, column), direction])
    return order


def build_search_body(
    query: str | Sequence[str] | ParsedQuery | None,
    *,
    order: str | None = None,
    offer_type: str = "on-demand",
    limit: int | str | None = None,
    storage_gb: float | str = 5.0,
    defaults: bool = True,
    gpu_names: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The JSON body ``vastai search offers`` POSTs to ``/api/v0/bundles/`` for the same arguments.

    ``order`` is ``-o``, ``offer_type`` is ``-t``, ``limit`` is ``--limit``, ``storage_gb`` is
    ``--storage`` and ``defaults=False`` is ``-n``. With ``gpu_names`` given, ``gpu_name ~ X``
    is resolved into ``gpu_name in [...]``; without them it is left out of the body, so apply
    ``ParsedQuery.row_matches`` to the rows. A ``ParsedQuery`` is used as is (its own defaults).
    """
    parsed = query if isinstance(query, ParsedQuery) else parse_query(query, defaults=defaults)
    body: dict[str, Any] = (
        parsed.resolve_gpu_names(gpu_names) if gpu_names is not None else copy.deepcopy(parsed.filters)
    )
    if offer_type not in OFFER_TYPES:
        # The CLI sends any -t text as is; the server then answers with an error or nothing.
        raise QueryError(f"Unknown offer type '{offer_type}': use one of {', '.join(OFFER_TYPES)}")
    # Assigning these keys after the filters mirrors the CLI, which also overwrites a filter
    # that happens to be called `order`, `type` or `allocated_storage` (keeping its position).
    body["order"] = parse_order(order)
    body["type"] = "bid" if offer_type == "interruptible" else offer_type
    count = _as_int(limit, "limit")
    if count:  # the CLI tests truthiness, so --limit 0 sends no limit
        body["limit"] = count
    body["allocated_storage"] = _as_float(storage_gb, "storage_gb")
    return body


# ------------------------------------------------------------------------------------ internals


def _join(text: str | Sequence[str] | None) -> str:
    if text is None:
        return ""
    if isinstance(text, str):
        return text.strip()
    if isinstance(text, Sequence):
        return " ".join(str(part) for part in text).strip()
    raise QueryError(f"A query must be a string or a list of strings, got {type(text).__name__}")


def _tokenise(query: str) -> list[_Condition]:
    """Split the query into conditions; text the CLI's regex cannot consume is an error."""
    conditions: list[_Condition] = []
    pos = 0
    while pos < len(query):
        start = pos
        match = _FIELD_RE.match(query, pos)
        if match is None:
            # The CLI's findall would skip this text and then fail with "Unconsumed text".
            token = query[pos:].split(" ", 1)[0]
            raise QueryError(
                f"Cannot parse '{token}' at position {pos} of \"{query}\": expected a field name. A query is "
                f"field op value conditions separated by spaces (e.g. num_gpus>=2 gpu_name=RTX_4090); {_VALUE_HELP}"
            )
        name = match.group()
        pos = match.end()
        op_match = _OP_RE.match(query, pos)
        op = op_match.group() if op_match else ""
        pos = _skip_spaces(query, pos + len(op))
        value_re = _REGEX_VALUE_RE if op.strip() == REGEX_OPERATOR else _VALUE_RE
        value_match = value_re.match(query, pos)
        value = value_match.group() if value_match else ""
        pos += len(value)
        end = pos
        pos = _skip_spaces(query, pos)
        conditions.append(_Condition(name, op.strip(), value, query[start:end]))
    return conditions


def _skip_spaces(query: str, pos: int) -> int:
    # Only the space character: the CLI's regex uses ` *`, so a tab stays inside a value.
    while pos < len(query) and query[pos] == " ":
        pos += 1
    return pos


def _apply(result: ParsedQuery, cond: _Condition, previous: _Condition | None) -> None:
    """Apply one condition to ``result`` with the CLI's rules, in the CLI's order of checks."""
    query = result.text
    name = FIELD_ALIASES.get(cond.field, cond.field)
    if cond.op == REGEX_OPERATOR:
        _note_field(result, name)
        _apply_regex(result, name, cond)
        return

    value: Any = cond.value.strip(",[]")
    if name == "driver_version" and "." in value:
        if OPERATORS.get(cond.op) in ("in", "notin"):
            # The CLI crashes here (AttributeError): it converts the whole list text to an int
            # (or to None) before splitting it.
            raise QueryError(
                f"'{cond.op}' with a dotted driver_version in \"{query}\" does not work in the CLI: "
                "use driver_version>= and driver_version<= instead, or integer versions (535086005)"
            )
        version = _numeric_version(value)
        if version is None:
            raise QueryError(
                f"Invalid driver_version '{cond.value}' in \"{query}\": write the version as X.Y.Z without "
                "quotes (e.g. driver_version>=535.86.05), or as the integer it becomes (535086005)"
            )
        value = version
    _note_field(result, name)

    op = OPERATORS.get(cond.op)
    if op is None:
        raise QueryError(_operator_error(cond, previous, query))
    if op in ("in", "notin"):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if value == 0 and not isinstance(value, str):
        # 0.0.0 becomes the integer 0, which the CLI's blank-value check rejects.
        raise QueryError(f"'{cond.text}' in \"{query}\" is rejected by the CLI (0.0.0 counts as blank): "
                         "use driver_version>=0.0.1 or leave the condition out")
    if not value:
        # Empty, or an empty list (`[]`, `[,]`): the CLI's "Value cannot be blank".
        raise QueryError(
            f"Missing value in '{cond.text}' in \"{query}\": write e.g. num_gpus>=2, gpu_name in [RTX_4090,A100_SXM4]"
            f" or rentable=any; {_VALUE_HELP}"
        )
    if isinstance(value, str) and value in WILDCARDS:
        if op != "eq":
            raise QueryError(
                f"Wildcard '{value}' in '{cond.text}' in \"{query}\" only works with = (it removes the "
                f"filter, defaults included): write {cond.field}=any"
            )
        result.filters.pop(name, None)
        result.regex.pop(name, None)
        return

    if isinstance(value, str):
        value = value.replace("_", " ").strip('"')
    elif isinstance(value, list):
        value = [item.replace("_", " ").strip('"') for item in value]

    if name in FIELD_MULTIPLIERS:
        value = _scaled(value, name, cond, query)
    elif value in ("true", "True"):
        value = True
    elif value in ("false", "False"):
        value = False
    elif value in ("None", "null"):
        value = None
    result.filters.setdefault(name, {})[op] = value


def _apply_regex(result: ParsedQuery, name: str, cond: _Condition) -> None:
    pattern = cond.value.replace("_", " ").strip('"')
    if not pattern:
        raise QueryError(
            f"Missing regex in '{cond.text}' in \"{result.text}\": write e.g. gpu_name ~ A100|RTX_4090|H100"
        )
    _compile(pattern, name, result.text)
    result.regex[name] = pattern  # the same field twice: the last regex wins, as with operators


def _note_field(result: ParsedQuery, name: str) -> None:
    # The CLI warns once per condition; one warning per field is enough to act on.
    if name not in OFFER_FIELDS and name not in result.unknown_fields:
        result.unknown_fields.append(name)
        result.warnings.append(
            f"Unrecognized field '{name}' in \"{result.text}\": it is sent anyway, as the CLI does; "
            "check the spelling against the offer fields"
        )


def _operator_error(cond: _Condition, previous: _Condition | None, query: str) -> str:
    """Name the operator the user most likely meant, not just the empty one the regex found."""
    if cond.op:
        bad = cond.op
    elif cond.value and _OPERATOR_LIKE_RE.fullmatch(cond.value):
        bad = cond.value  # `gpu_name like A100`
    elif not cond.value and previous is not None and previous.op and _OPERATOR_CHARS_RE.fullmatch(previous.value):
        # `gpu_name =~ A100` tokenises as `gpu_name = "~"` followed by a bare `A100`, and
        # `gpu_name ~= A100` as the regex "=" followed by `A100`.
        bad = previous.op + previous.value
    else:
        # Most often the rest of a value with spaces: `gpu_name=RTX 4090`, or single quotes.
        quotes = " (single quotes do not group words here)" if "'" in query else ""
        if cond.value:
            where = f"Missing operator between '{cond.field}' and '{cond.value}'"
        else:
            where = f"Missing operator and value after '{cond.field}'"
        return f"{where} in \"{query}\": {_OPERATOR_HELP}; {_VALUE_HELP}{quotes}"
    return f"Unknown operator '{bad}' in \"{query}\": {_OPERATOR_HELP}"


def _numeric_version(text: str) -> int | None:
    """``535.86.05`` → 535086005, as the CLI's ``numeric_version``: None if it is not X.Y.Z."""
    parts = text.split(".")
    if len(parts) != 3:
        return None
    try:
        # int() rather than a digit check, so odd input (`+1.2.3`) gives what the CLI gives.
        return int("".join(part.zfill(3) for part in parts))
    except ValueError:
        return None


def _scaled(value: Any, name: str, cond: _Condition, query: str) -> float:
    unit = "days" if name == "duration" else "GB"
    if isinstance(value, list):
        # The CLI crashes here (TypeError: float() of a list).
        raise QueryError(
            f"'{cond.op}' does not work with {name} in \"{query}\" ({name} takes one number in {unit}): "
            f"use {name}>= and {name}<= instead"
        )
    try:
        scaled = float(value) * FIELD_MULTIPLIERS[name]
    except ValueError:
        raise QueryError(
            f"Value '{cond.value}' in '{cond.text}' in \"{query}\" is not a number: {name} takes a number "
            f"in {unit} (e.g. {name}>=24)"
        ) from None
    if not math.isfinite(scaled):
        # The CLI crashes when it serialises this (JSON has no inf or nan).
        raise QueryError(f"Value '{cond.value}' in '{cond.text}' in \"{query}\" is not a finite number")
    return scaled


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    # Cached because row_matches runs the same few patterns over every returned offer.
    return re.compile(pattern, re.IGNORECASE)


def _compile(pattern: str, name: str, query: str) -> re.Pattern[str]:
    try:
        return _compiled(pattern)
    except re.error as exc:
        raise QueryError(
            f"Invalid regex '{pattern}' in '{name} ~ ...' in \"{query}\": {exc}. Use Python regex syntax, "
            "e.g. gpu_name ~ A100|RTX_4090|H100 (_ stands for a space)"
        ) from None


def _as_int(value: int | str | None, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise QueryError(f"{name} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be a whole number, got {value!r}") from None


def _as_float(value: float | str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name} must be a number of GB, got {value!r}") from None
    if not math.isfinite(number):
        raise QueryError(f"{name} must be a finite number of GB, got {value!r}")
    return number
