# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which live ansible-playbook runs each run name on this controller.

A run's name is its instance's label, and renting finds the label's instance and takes it over, as a re-run after
a killed controller should. Two runs of one name at once would therefore share one instance: the second would
smoke-test on the first's host, skip its own launch, watch the first's training and tear it down. A run claims its
name first; a claim counts while the ansible-playbook that made it lives (its pid, with the start time that pid had,
so a pid reused by another process is no claim), and needs no release: a killed run's claim lapses with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from typing import Any

MAX_PARENTS = 64  # a process chain is never this deep; the walk stops here whatever /proc says


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields from the state on (the name, in parentheses, may hold spaces)."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When the process began (clock ticks since boot), or None when it is not there (or is a zombie: it has
    ended, and only waits for its parent to read its exit status)."""
    fields = _stat_fields(pid)
    if not fields or len(fields) <= 19 or fields[0] == "Z":
        return None
    return int(fields[19])


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _is_playbook(pid: int) -> bool:
    argv = (_cmdline(pid) or b"").split(b"\0")
    return any(os.path.basename(arg) == b"ansible-playbook" for arg in argv[:2])


def playbook_process(pid: int | None = None) -> int:
    """The ansible-playbook that runs this task: the nearest ansible-playbook at or above ``pid`` (a module's own
    Python sits under one of its workers), then up through its parents with the very same command line (Ansible's
    workers are forks of it and keep it), not into another ansible-playbook that started this one (a sweep starts
    its trials' playbooks: each trial's is its own). ``pid`` itself (default this process) when none is above it."""
    start = os.getpid() if pid is None else pid
    current: int | None = start
    for _step in range(MAX_PARENTS):
        if current is None or current <= 1 or _is_playbook(current):
            break
        current = _parent(current)
    if current is None or current <= 1 or not _is_playbook(current):
        return start
    argv = _cmdline(current)
    for _step in range(MAX_PARENTS):
        parent = _parent(current)
        if not parent or parent <= 1 or _cmdline(parent) != argv:
            break
        current = parent
    return current


class RunClaims:
    """One file per claimed name, in a directory beside the contract ledger."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, name: str) -> str:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.path, f"{digest[:32]}.json")

    def holder(self, name: str) -> dict[str, Any] | None:
        """The live claim on ``name`` ({name, pid, started, claimed_at}), or None."""
        try:
            with open(self._file(name), encoding="utf-8") as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("name") != name:
            return None
        pid = record.get("pid")
        started = process_start(pid) if isinstance(pid, int) else None
        if started is None or started != record.get("started"):
            return None  # that run has ended (or its pid belongs to another process now)
        return record

    def claim(self, name: str, pid: int, *, write: bool = True) -> dict[str, Any] | None:
        """Claim ``name`` for the process ``pid``: None when it is now (or, with ``write`` false, would be) ours;
        another live process's claim, untouched, when there is one."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        with open(os.path.join(self.path, ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the look and the write as one: two runs starting together
            held = self.holder(name)
            if held is not None and held["pid"] != pid:
                return held
            if write:
                record = {"name": name, "pid": pid, "started": process_start(pid), "claimed_at": time.time()}
                fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".claim-")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as handle:
                        json.dump(record, handle)
                    os.replace(tmp, self._file(name))
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        return None
