"""Reading an instance's /workspace for a fault's trigger (faults.py): ``when_log`` and ``when_partial``.

The simulator reads the instance's own disk from outside: ``instances/<id>/workspace`` (loopback), or
``/proc/<pid>/root/workspace`` through a process of the instance's mount namespace (namespace). The
instance owns every file there, so each step below it is opened without following a symlink: a link
planted there cannot make the simulator read its own files. A file or directory that is missing,
unreadable or of the wrong type is simply "not yet".

These run in a worker thread (fault_effects.py), so they may block on the disk without stalling the
event loop; each is bounded (the last ``TAIL_BYTES`` of a log, ``MAX_ENTRIES`` names of a directory).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import stat
from collections.abc import Generator, Iterator

from mlops_vast.sim.faults import WORKSPACE, compile_pattern
from mlops_vast.sim.host_backend import WorkspaceView

TAIL_BYTES = 256 * 1024
MAX_ENTRIES = 4096  # names of one directory a glob component looks at, per check
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block the read


def relative_parts(path: str) -> list[str]:
    """``/workspace/a/b`` -> ``["a", "b"]`` (paths were validated by faults.workspace_path)."""
    return [part for part in path[len(WORKSPACE) :].split("/") if part]


@contextlib.contextmanager
def _root_fd(root: WorkspaceView) -> Iterator[int]:
    if root.mount and not os.path.ismount(root.path):
        raise FileNotFoundError(root.path)
    fd = os.open(root.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_dir(parent: int, name: str) -> int:
    return os.open(name, _DIR_FLAGS, dir_fd=parent)


@contextlib.contextmanager
def _descend(parent: int, names: list[str]) -> Iterator[int]:
    """The directory ``parent/names...``, every step without following a symlink."""
    fds: list[int] = []
    try:
        current = parent
        for name in names:
            current = _open_dir(current, name)
            fds.append(current)
        yield current
    finally:
        for fd in reversed(fds):
            os.close(fd)


def read_tail(
    root: WorkspaceView, path: str, limit: int = TAIL_BYTES, seen: dict[str, tuple[int, ...]] | None = None
) -> bytes | None:
    """The last ``limit`` bytes of the regular file ``path`` (as the instance names it); None when there is
    none, or, with ``seen``, when it is the same file with the same size and mtime as last time."""
    *dirs, name = relative_parts(path)
    try:
        with _root_fd(root) as top, _descend(top, dirs) as directory:
            fd = os.open(name, _FILE_FLAGS, dir_fd=directory)
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    return None
                identity = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                if seen is not None:
                    if seen.get(root.path) == identity:
                        return None
                    seen[root.path] = identity
                handle.seek(max(0, info.st_size - limit))
                return handle.read(limit)
    except (OSError, ValueError):
        return None


def log_matches(root: WorkspaceView, spec: dict[str, str], seen: dict[str, tuple[int, ...]] | None = None) -> bool:
    """``when_log``: whether ``spec["pattern"]`` matches the tail of ``spec["path"]`` on the instance.

    ``seen`` (per fault) skips a file that has not changed since a check that did not match.
    """
    data = read_tail(root, spec["path"], seen=seen)
    return data is not None and compile_pattern(spec["pattern"]).search(data.decode("utf-8", "replace")) is not None


def _matching_dirs(parent: int, parts: list[str]) -> Generator[int, None, None]:
    """Directory fds matching the glob components ``parts`` below ``parent`` (each closed after its yield)."""
    part, rest = parts[0], parts[1:]
    if re.search(r"[*?[]", part):
        names: list[str] = []
        with os.scandir(parent) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_ENTRIES:
                    break
                if fnmatch.fnmatchcase(entry.name, part) and not (entry.name.startswith(".") and part[0] != "."):
                    names.append(entry.name)
        names.sort()
    else:
        names = [part]
    for name in names:
        try:
            fd = _open_dir(parent, name)
        except OSError:
            continue  # not there, a file, or a symlink
        try:
            if rest:
                yield from _matching_dirs(fd, rest)
            else:
                yield fd
        finally:
            os.close(fd)


def partial_exists(root: WorkspaceView, spec: dict[str, str]) -> bool:
    """``when_partial``: whether a directory matching ``spec["glob"]`` lacks ``spec["missing"]`` (a checkpoint
    being written). Glob components are shell patterns of one path component each; hidden names need a
    pattern that starts with a dot, as in the shell."""
    try:
        with _root_fd(root) as top, contextlib.closing(_matching_dirs(top, relative_parts(spec["glob"]))) as dirs:
            for directory in dirs:
                try:
                    os.stat(spec["missing"], dir_fd=directory, follow_symlinks=False)
                except FileNotFoundError:
                    return True
                except OSError:
                    continue
    except OSError:
        return False
    return False


def first_hit(
    kind: str, spec: dict[str, str], roots: list[tuple[int, WorkspaceView]], seen: dict[str, tuple[int, ...]]
) -> int | None:
    """The id of the first instance (of ``(instance_id, root)``) on which the trigger fires, or None."""
    for instance_id, root in roots:
        hit = log_matches(root, spec, seen) if kind == "when_log" else partial_exists(root, spec)
        if hit:
            return instance_id
    return None
