# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the file-writing actions share: a mode given as text, content given as text or data, and a file written
whole or not at all.

Private to the collection.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from ansible.plugins.filter.core import to_nice_json


class FileSpecError(Exception):
    """A mode or a content that cannot be written, worded for the user."""


def parse_mode(mode: Any) -> int:
    """``"0644"`` (or ``"644"``) as permission bits; a number (YAML's unquoted ``0644`` is 420) as the bits
    themselves, as ``ansible.builtin.file`` takes it."""
    if isinstance(mode, int) and not isinstance(mode, bool):
        value = mode
    else:
        try:
            value = int(str(mode), 8)
        except ValueError:
            value = -1
    if not 0 <= value <= 0o7777:
        raise FileSpecError(f"mode must be an octal string such as '0644', got {mode!r}")
    return value


def content_bytes(content: Any) -> bytes:
    """Text as UTF-8; a dict or a list as JSON, indented as ``to_nice_json`` does."""
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, (Mapping, list)):
        return to_nice_json(content).encode("utf-8")
    # Ansible wraps templated values in tagged subclasses; name the plain type the user wrote.
    plain = next(kind.__name__ for kind in type(content).__mro__ if kind.__module__ == "builtins")
    raise FileSpecError(f"content must be text, a dict or a list, got {plain}: pass it through to_json or string "
                        "to write it")


def write_atomic(path: str, data: bytes, mode: int | None = None) -> None:
    """A reader sees the old file or the new one, never a part: written beside it, then renamed over it. Without
    ``mode`` the file keeps ``mkstemp``'s private 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if mode is not None:
                os.fchmod(out.fileno(), mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
