# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A playbook's variables held against its argument spec (``playbooks/<name>.meta.yml``), beyond what
``ansible.builtin.validate_argument_spec`` checks: names that are not in the spec (with the closest
one that is), and ranges (``minimum``, ``maximum``, ``exclusive_minimum`` next to ``type``); and the
values with every default filled in and every type converted, so the defaults live in the spec alone.

Private to the collection.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

# The keys of an option that the range check reads; ArgumentSpecValidator ignores them.
RANGE_KEYS = ("minimum", "maximum", "exclusive_minimum")
# A text option's form: ``pattern`` (a regular expression the whole value must match) and ``pattern_says`` (what it
# asks for, in words, for the message).
PATTERN_KEYS = ("pattern", "pattern_says")
# A text option that names a directory on the controller (``directory: true``): when given, it must exist there.
DIRECTORY_KEY = "directory"
TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "list": "a list",
              "dict": "a mapping", "str": "a string", "path": "a path", "raw": "a value"}
_UNCONVERTIBLE = re.compile(r"^argument '(?P<name>[^']+)' is of type .* unable to convert to (?P<type>\w+)")
_SUB_UNCONVERTIBLE = re.compile(r"^argument '(?P<sub>[^']+)' is of type \S+ found in '(?P<name>[^']+)'\. "
                                r".*unable to convert to (?P<type>\w+)")
_SUB_UNKNOWN = re.compile(r"^(?P<names>[\w.\[\]-]+(?:, [\w.\[\]-]+)*)\. Supported parameters include: "
                          r"(?P<supported>.+?)\.?$")
_SUB_MISSING = re.compile(r"^missing required arguments: (?P<subs>.+) found in (?P<name>\S+)$")
_BAD_ELEMENT = re.compile(r"^Elements value for option '(?P<name>[^']+)' is of type .* "
                          r"unable to convert to (?P<type>\w+)")


def plain_errors(errors: list[str], values: Mapping[str, Any], spec: Mapping[str, Any] | None = None) -> list[str]:
    """The validator's errors, with "unable to convert" said as what the value must be and what it was
    (not for the ``no_log`` options of ``spec``: their values are never shown)."""
    secret = {name for name, option in (spec or {}).items() if option.get("no_log")}
    said = []
    for error in errors:
        sub, missing = _SUB_UNCONVERTIBLE.match(error), _SUB_MISSING.match(error)
        if sub:
            wanted = TYPE_WORDS.get(sub["type"], f"of type {sub['type']}")
            shown = _sub_value(values, sub["name"], sub["sub"], spec)
            said.append(f"{sub['name']}.{sub['sub']} must be {wanted}, got {shown}")
            continue
        unknown = _SUB_UNKNOWN.match(error)
        if unknown:
            supported = [key.strip() for key in unknown["supported"].split(",")]
            for path in (part.strip() for part in unknown["names"].split(",")):
                parent, _dot, key = path.rpartition(".")
                close = difflib.get_close_matches(key, supported, n=1)
                said.append(f"{path} is not a key of {parent or 'this option'}"
                            + (f"; did you mean {close[0]}?" if close else f" (its keys: {', '.join(supported)})"))
            continue
        if missing:
            plural = "," in missing["subs"]
            said.append(f"{missing['name']} needs {missing['subs']} (required key{'s' if plural else ''})")
            continue
        whole, element = _UNCONVERTIBLE.match(error), _BAD_ELEMENT.match(error)
        match = whole or element
        if match and match["name"] in values:
            wanted = TYPE_WORDS.get(match["type"], f"of type {match['type']}")
            subject = match["name"] if whole else f"each item of {match['name']}"
            shown = "a value not shown" if match["name"] in secret else repr(str(values[match["name"]]))
            error = f"{subject} must be {wanted}, got {shown}"
        said.append(error)
    return said


def _sub_value(values: Mapping[str, Any], name: str, sub: str, spec: Mapping[str, Any] | None = None) -> str:
    """How a wrong suboption value is shown: the first item's of a list of dicts that has it (never a no_log one)."""
    if ((((spec or {}).get(name) or {}).get("options") or {}).get(sub) or {}).get("no_log"):
        return "a value not shown"
    given = values.get(name)
    for item in given if isinstance(given, list) else [given]:
        if isinstance(item, Mapping) and sub in item:
            return repr(str(item[sub]))
    return "a value of the wrong type"


def validated(values: Mapping[str, Any], spec: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The values converted to their types with the defaults filled in, and the validator's errors."""
    known = {name: value for name, value in values.items() if name in spec}
    # NaN passes every range check (each comparison is false) and int() of infinity raises OverflowError, which the
    # validator does not catch: said here, and left out of what it converts.
    known, errors = finite_values(known, spec)
    result = ArgumentSpecValidator(dict(spec)).validate(known)
    converted = dict(result.validated_parameters)
    for name, option in spec.items():
        if option.get("options") and name in converted:
            converted[name] = _unset_left_out(converted[name], known.get(name), option["options"])
    return converted, errors + list(result.error_messages)


def finite_values(values: Mapping[str, Any], spec: Mapping[str, Any],
                  prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """The values without the numbers that are not finite (also inside dicts and lists of dicts), and one sentence
    for each of those."""
    kept: dict[str, Any] = {}
    errors: list[str] = []
    for name, value in values.items():
        option = spec.get(name) or {}
        where = f"{prefix}{name}"
        if _not_finite(value, option):
            shown = "a value not shown" if option.get("no_log") else repr(value)
            errors.append(f"{where} must be a finite number, got {shown}")
            continue
        sub = option.get("options")
        if sub and isinstance(value, Mapping):
            value, more = finite_values(value, sub, f"{where}.")
            errors += more
        elif sub and isinstance(value, list):
            items = []
            for index, item in enumerate(value):
                if isinstance(item, Mapping):
                    item, more = finite_values(item, sub, f"{where}[{index}].")
                    errors += more
                items.append(item)
            value = items
        kept[name] = value
    return kept, errors


def holds_secrets(value: Any, option: Mapping[str, Any]) -> bool:
    """Whether a value of the option holds a secret: the option is no_log, or it has a key that is (a source's
    headers), given."""
    if option.get("no_log"):
        return bool(value)
    sub = option.get("options") or {}
    if isinstance(value, list):
        return any(holds_secrets(item, option) for item in value)
    return isinstance(value, Mapping) and any(holds_secrets(value.get(key), spec) for key, spec in sub.items())


def _not_finite(value: Any, option: Mapping[str, Any]) -> bool:
    if option.get("type") not in ("int", "float"):
        return False
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return False  # not a number at all: the validator says so
    return isinstance(value, float) and not math.isfinite(value)


def _unset_left_out(value: Any, given: Any, suboptions: Mapping[str, Any]) -> Any:
    """A dict option's value (or each item of a list of dicts) without the suboptions nobody gave and no default
    fills: the validator makes them null, and ``x.gpu_count | default(offer's)`` would then take the null."""
    if isinstance(value, list):
        items = given if isinstance(given, list) and len(given) == len(value) else [None] * len(value)
        return [_unset_left_out(item, other, suboptions) for item, other in zip(value, items, strict=True)]
    if not isinstance(value, Mapping):
        return value
    given = given if isinstance(given, Mapping) else {}
    return {key: item for key, item in value.items()
            if not (item is None and key not in given and suboptions.get(key, {}).get("default") is None)}


def problems(values: Mapping[str, Any], spec: Mapping[str, Any], *, where: str = "the argument spec",
             converted: Mapping[str, Any] | None = None, base_dir: str | None = None) -> list[str]:
    """Every name not in ``spec`` and every value out of its range, one sentence each.

    ``converted`` is ``validated(values, spec)[0]`` when the caller has it already; a relative directory is looked
    for under ``base_dir`` (default: the current directory)."""
    found = []
    for name in sorted(set(values) - set(spec)):
        close = difflib.get_close_matches(name, list(spec), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        found.append(f"{name} is not a variable of {where}{hint}")
    if converted is None:
        converted = validated(values, spec)[0]
    found += _range_problems(values, spec, converted, prefix="", base_dir=base_dir or os.getcwd())
    return found


def _range_problems(values: Mapping[str, Any], spec: Mapping[str, Any], converted: Mapping[str, Any], *,
                    prefix: str, base_dir: str) -> list[str]:
    """Values out of their range, also inside a dict's suboptions (named ``run_recovery.wait_in_place_s``)."""
    found = []
    for name, option in spec.items():
        value = converted.get(name)
        given = values.get(name) if isinstance(values, Mapping) else None
        if option.get("options") and isinstance(value, Mapping) and given is not None:
            # Given as text (-e name='{"key": 1}') the dict is the converted value; its defaults are in range.
            found += _range_problems(given if isinstance(given, Mapping) else value, option["options"], value,
                                     prefix=f"{prefix}{name}.", base_dir=base_dir)
            continue
        if option.get("type") == "list" and option.get("elements") == "dict" and isinstance(given, str):
            # Ansible would make [{"lr": "0.1"}] of "lr=0.1": a list of mappings is never written as text.
            found.append(f"{prefix}{name} must be a list of mappings ([{{name: value}}, ...]), got {given!r}")
            continue
        if option.get("options") and isinstance(value, list) and isinstance(given, list):
            for index, (item, converted_item) in enumerate(zip(given, value, strict=False)):
                if isinstance(item, Mapping) and isinstance(converted_item, Mapping):
                    found += _range_problems(item, option["options"], converted_item,
                                             prefix=f"{prefix}{name}[{index}].", base_dir=base_dir)
            continue
        if option.get(DIRECTORY_KEY) and name in values and isinstance(value, str) and value.strip():
            path = os.path.join(base_dir, os.path.expanduser(value))  # an absolute value stays itself
            if not os.path.isdir(path):
                where = "" if os.path.isabs(os.path.expanduser(value)) else f" (relative paths start at {base_dir})"
                found.append(f"{prefix}{name} {value!r} is not a directory on this controller{where}")
            continue
        pattern, says = (option.get(key) for key in PATTERN_KEYS)
        if pattern and name in values and isinstance(value, str) and not re.fullmatch(pattern, value):
            short = value if len(value) <= 80 else f"{value[:40]}...{value[-20:]}"
            shown = "a value not shown" if option.get("no_log") else repr(short)
            found.append(f"{prefix}{name} {says or 'must match ' + pattern}, got {shown}")
            continue
        if name not in values or isinstance(value, bool) or not isinstance(value, int | float):
            continue  # a default is in range by construction; a wrong type is validate_argument_spec's to report
        low, high, above = (option.get(key) for key in RANGE_KEYS)
        label = prefix + name
        if low is not None and value < low:
            found.append(f"{label} must be at least {low:g}, got {value:g}")
        if high is not None and value > high:
            found.append(f"{label} must be at most {high:g}, got {value:g}")
        if above is not None and value <= above:
            found.append(f"{label} must be more than {above:g}, got {value:g}")
    return found
