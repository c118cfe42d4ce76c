# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Variables files handed to ``ansible-playbook -e @FILE``, with YAML's ``!unsafe`` kept.

Ansible templates every string it reads from such a file again. A value already templated once (a sweep trial's
variables, rendered by sweep.yml) or marked ``!unsafe`` by its author (a prompt template with ``{{ }}``, a shell
``${#ARR[@]}``) must reach the playbook as written: it is written back as ``!unsafe``.

Private to the collection (the mlops_vast package loads it too).
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Mapping
from typing import Any

import yaml

UNSAFE_TAG = "!unsafe"


class UnsafeText(str):
    """Text that Ansible must not template (YAML's ``!unsafe``)."""

    __slots__ = ()


class _Loader(yaml.SafeLoader):
    pass


def _construct_unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    # As Ansible reads the tag: the value's own type first (!unsafe 1 is a number, !unsafe '' null), then every
    # string in it, a mapping's and a list's too, is marked.
    untagged = copy.copy(node)
    untagged.tag = loader.resolve(type(node), node.value, (True, False))
    return _marked(loader.construct_object(untagged, deep=True))


def _marked(value: Any) -> Any:
    if isinstance(value, str):
        return UnsafeText(value)
    if isinstance(value, dict):
        return {key: _marked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_marked(item) for item in value]
    return value


_Loader.add_constructor(UNSAFE_TAG, _construct_unsafe)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # no anchors: the file is read by people too


def _represent_unsafe(dumper: yaml.SafeDumper, text: UnsafeText) -> yaml.Node:
    if dumper.resolve(yaml.ScalarNode, str(text), (True, False)) != _STR:
        # Ansible would read "!unsafe 0.1" as a number, "!unsafe ''" as null: such text holds no template anyway.
        return dumper.represent_str(str(text))
    return dumper.represent_scalar(UNSAFE_TAG, str(text))


_STR = "tag:yaml.org,2002:str"
_Dumper.add_representer(UnsafeText, _represent_unsafe)


def load(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, with the strings under ``!unsafe`` (a mapping's and a list's too) as
    :class:`UnsafeText`."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader with one more tag, which builds only plain values


def plain(value: Any, *, unsafe: bool = False) -> Any:
    """``value`` as plain YAML types (Ansible's tagged strings and numbers are subclasses); strings become
    :class:`UnsafeText` when ``unsafe`` (or when they already were)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item, unsafe=unsafe) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item, unsafe=unsafe) for item in value]
    if isinstance(value, str):
        return UnsafeText(value) if unsafe or isinstance(value, UnsafeText) else str(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, datetime.date):
        return value
    return UnsafeText(str(value)) if unsafe else str(value)


def dump(data: Mapping[str, Any], *, unsafe: bool = False) -> str:
    """A variables file's text: ``unsafe`` marks every string, else only those that were :class:`UnsafeText`."""
    return yaml.dump(plain(data, unsafe=unsafe), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def write(path: str | os.PathLike[str], data: Mapping[str, Any], *, unsafe: bool = False) -> None:
    """Writes a variables file readable by its owner only (run_env may hold tokens)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was there before
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(dump(data, unsafe=unsafe))
