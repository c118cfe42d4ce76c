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
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
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
        try:
            key = Path(_expand(environ["VAST_API_KEY_FILE"], environ)).read_text().strip()
        except OSError as exc:
            raise OSError(f"VAST_API_KEY_FILE names {environ['VAST_API_KEY_FILE']}, which cannot be read "
                          f"({exc.strerror or exc}): fix the path, or unset it to use VAST_API_KEY") from None
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


# Run by a process of its own, in its own session: it outlives a caller killed with SIGKILL. It blocks until the
# caller's end of the pipe closes (its close(), or its death), then waits while any process still has the key
# file in its environment (the playbook an orphaned guard is tearing down, a sweep's trials), then removes.
_JANITOR = """
import os, shutil, sys, time
fd, marker, dirs = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3:]
while os.read(fd, 1):
    pass
def in_use():
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if marker in handle.read().split(b"\\0"):
                        return True
            except OSError:
                pass
    return False
end = time.monotonic() + 30 * 86400
while any(os.path.exists(d) for d in dirs) and in_use() and time.monotonic() < end:
    time.sleep(2)
for d in dirs:
    shutil.rmtree(d, ignore_errors=True)
"""


class KeyFile:
    """A 0600 file holding the key, in a 0700 directory of its own; removed on exit (or ``close()``).

    A caller killed without a chance to close (SIGKILL, a crash) would leave the key on disk, so a janitor process
    removes the directory (and the ``also`` directories, the call's other private files) once the caller is gone
    and no process started with this key file is left."""

    def __init__(self, key: str, also: Iterable[str | os.PathLike[str]] = ()) -> None:
        self._dir = tempfile.mkdtemp(prefix="mlops-vast-key-")
        os.chmod(self._dir, 0o700)
        self.path = os.path.join(self._dir, "vast_api_key")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key + "\n")
        # The key's own directory last: once it is gone, everything else is (what the janitor's watchers rely on).
        self._dirs = [*(os.fspath(d) for d in also), self._dir]
        self._alive_fd: int | None = None
        self._janitor: subprocess.Popen[bytes] | None = None
        with contextlib.suppress(OSError):
            self._start_janitor()

    def _start_janitor(self) -> None:
        read_fd, write_fd = os.pipe()  # not inherited by what this process starts: only its death closes it
        try:
            env = {name: value for name, value in os.environ.items() if name not in KEY_VARIABLES}
            self._janitor = subprocess.Popen(
                [sys.executable, "-I", "-c", _JANITOR, str(read_fd), f"VAST_API_KEY_FILE={self.path}", *self._dirs],
                pass_fds=(read_fd,), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._alive_fd = write_fd

    def close(self) -> None:
        for directory in self._dirs:
            shutil.rmtree(directory, ignore_errors=True)
        if self._alive_fd is not None:
            os.close(self._alive_fd)
            self._alive_fd = None
        if self._janitor is not None:  # it ends at once: nothing left to remove
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._janitor.wait(timeout=5)
            self._janitor = None

    def hand_over(self) -> None:
        """Leave the file to the janitor, for processes still using it (teardowns that go on after a Ctrl-C): it
        removes it once none of them is left."""
        if self._janitor is None:  # no janitor to hand it to: the teardowns need the key more than it needs going
            return
        if self._alive_fd is not None:
            os.close(self._alive_fd)
            self._alive_fd = None
        self._janitor = None

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
