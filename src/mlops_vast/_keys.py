"""The Vast API key on the way into a playbook run: never in the environment ansible-runner records.

ansible-runner writes the whole environment of a run into ``artifacts/<ident>/command`` (and ``envvars=``
into ``env/envvars``). So the key goes into a 0600 file in a private temporary directory outside the
private data directory, the run gets only ``VAST_API_KEY_FILE`` (which the collection's key resolution
reads right after ``VAST_API_KEY``), and the file is deleted when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

# The official CLI's key files, in the order the collection reads them (plugins/module_utils/api_client.py).
KEY_FILES = ("{xdg_config}/vastai/vast_api_key", "~/.vast_api_key")
KEY_VARIABLES = ("VAST_API_KEY", "VAST_API_KEY_FILE")


def _expand(path: str, environ: Mapping[str, str]) -> str:
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, path[2:]) if path.startswith("~/") else path


def resolve_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The key as the collection would find it (``VAST_API_KEY``, ``VAST_API_KEY_FILE``, the CLI's files), or
    None when there is none. A ``VAST_API_KEY_FILE`` that cannot be read raises OSError."""
    environ = os.environ if environ is None else environ
    if environ.get("VAST_API_KEY", "").strip():
        return environ["VAST_API_KEY"].strip()
    if environ.get("VAST_API_KEY_FILE"):
        key = Path(_expand(environ["VAST_API_KEY_FILE"], environ)).read_text().strip()
        if not key:
            raise OSError(f"VAST_API_KEY_FILE names {environ['VAST_API_KEY_FILE']}, which is empty")
        return key
    home = environ.get("HOME") or os.path.expanduser("~")
    xdg_config = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    for pattern in KEY_FILES:
        with contextlib.suppress(OSError):
            key = Path(_expand(pattern.format(xdg_config=xdg_config), environ)).read_text().strip()
            if key:
                return key
    return None


class KeyFile:
    """A 0600 file holding the key, in a 0700 directory of its own; removed on exit (or ``close()``)."""

    def __init__(self, key: str) -> None:
        self._dir = tempfile.mkdtemp(prefix="mlops-vast-key-")
        os.chmod(self._dir, 0o700)
        self.path = os.path.join(self._dir, "vast_api_key")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> KeyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scrub_env(env: Mapping[str, str], key_file: str | None) -> dict[str, str]:
    """``env`` without the key: ``VAST_API_KEY`` removed, ``VAST_API_KEY_FILE`` naming ``key_file`` (or removed)."""
    out = {name: value for name, value in env.items() if name not in KEY_VARIABLES}
    if key_file:
        out["VAST_API_KEY_FILE"] = key_file
    return out


def files_containing(root: Path, secret: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``secret`` (for checks that a run leaked nothing)."""
    needle = secret.encode()
    found = []
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                if needle in path.read_bytes():
                    found.append(path)
    return found
