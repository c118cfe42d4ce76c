"""One way to run a simulator from the outside: start ``vastsim serve`` on a state directory and wait
until it serves (its ready file, not a line on stdout), stop it by its pid, and check that it left
nothing behind (network namespaces, links, loop devices, processes of its state directory).

The tests, the benchmarks, the Molecule scenarios and ``scripts/demo.sh`` use it, the last two through
``vastsim start``, ``vastsim stop`` and ``vastsim check-clean``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mlops_vast.sim.hosts import state_tag

READY_FILE = "ready.json"
KEYS_FILE = "accepted_keys"


class SimError(RuntimeError):
    """The simulator did not start, or did not stop when asked."""


@dataclass
class SimProcess:
    """A running simulator, as its ready file describes it."""

    url: str
    pid: int
    state_dir: Path
    api_key: str = field(repr=False)  # the first account's key (STATE_DIR/api_key): never in a repr
    host_mode: str
    log_path: Path | None = None
    process: subprocess.Popen[Any] | None = None  # set when this process started it and may wait for it

    @property
    def tag(self) -> str:
        return state_tag(self.state_dir)

    def log_tail(self, limit: int = 3000) -> str:
        if self.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""


def ready_path(state_dir: Path) -> Path:
    return state_dir / READY_FILE


def read_ready(path: Path) -> dict[str, Any] | None:
    """The ready file's content, or None while there is none (it is written whole, by a rename)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_ready(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, path)


def start(state_dir: Path, *args: str, api_keys: Sequence[str] = (), log_path: Path | None = None,
          stdout: int | IO[Any] | None = subprocess.DEVNULL, timeout: float = 30.0, detach: bool = False,
          cwd: Path | None = None, python: str = sys.executable) -> SimProcess:
    """``vastsim serve`` on ``state_dir`` with ``args``; returns once it serves.

    ``api_keys`` are passed in a file (never on the command line, where ``ps`` shows them). Its log (stderr)
    is appended to ``log_path``; ``stdout`` (the ``VAST_URL=`` line, the access log at ``--log-level
    debug``) goes where the caller says. ``detach`` starts it in a session of its own, for a simulator that
    outlives the caller (``vastsim start``). SimError, with the end of its log, when it does not serve.
    """
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = ready_path(state_dir)
    ready.unlink(missing_ok=True)
    argv = [python, "-m", "mlops_vast.sim.cli", "serve", "--state-dir", str(state_dir), "--ready-file", str(ready)]
    if api_keys:
        keys_file = state_dir / KEYS_FILE
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(f"{key}\n" for key in api_keys))
        argv += ["--api-key-file", str(keys_file)]
    argv += list(args)
    log_path = log_path or state_dir.parent / f"{state_dir.name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log, cwd=cwd,
                                   start_new_session=detach)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = read_ready(ready)
        if info and info.get("pid") == process.pid:
            return SimProcess(url=info["url"], pid=process.pid, state_dir=state_dir,
                              api_key=Path(info["api_key_file"]).read_text().strip(), host_mode=info["host_mode"],
                              log_path=log_path, process=process)
        if process.poll() is not None:
            raise SimError(f"vastsim exited ({process.returncode}) before serving:\n{_tail(log_path)}")
        time.sleep(0.02)
    process.kill()
    process.wait(10)
    raise SimError(f"vastsim did not serve within {timeout:g} s:\n{_tail(log_path)}")


def find(state_dir: Path) -> SimProcess | None:
    """The simulator serving ``state_dir`` now (None when none is).

    A serving simulator holds ``STATE_DIR/lock`` and wrote its pid there; a ready file left by one that was
    killed outright is never believed on its own (its pid may be someone else's by now).
    """
    state_dir = state_dir.resolve()
    pid = _lock_holder(state_dir)
    if pid is None:
        return None
    info = read_ready(ready_path(state_dir)) or {}
    if info.get("pid") != pid:
        info = {}  # served without --ready-file, or still starting: only the pid is known
    key = ""
    with contextlib.suppress(OSError):
        key = Path(info.get("api_key_file") or state_dir / "api_key").read_text().strip()
    return SimProcess(url=info.get("url", ""), pid=pid, state_dir=state_dir, api_key=key,
                      host_mode=info.get("host_mode", ""))


def _lock_holder(state_dir: Path) -> int | None:
    """The pid of the simulator holding the state directory's lock, or None when nobody holds it."""
    path = state_dir / "lock"
    try:
        handle = open(path)  # noqa: SIM115 - closed below, the lock with it
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else None
        return None  # it could be taken: nobody serves this state directory


def stop(sim: SimProcess, timeout: float = 30.0) -> int | None:
    """SIGTERM, and wait until it is gone: its exit code when this process started it, else None.

    SimError when it ignored SIGTERM for ``timeout`` seconds (it is SIGKILLed then).
    """
    process = sim.process
    if process is not None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                raise SimError(f"vastsim {sim.pid} ignored SIGTERM for {timeout:g} s") from None
        return process.returncode
    if not _alive(sim.pid):
        return None
    os.kill(sim.pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(sim.pid):
            return None
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(sim.pid, signal.SIGKILL)
    raise SimError(f"vastsim {sim.pid} ignored SIGTERM for {timeout:g} s")


def stop_checked(sim: SimProcess, timeout: float = 30.0) -> None:
    """Stop ``sim``; SimError unless it exited cleanly and left nothing behind."""
    code = stop(sim, timeout)
    left = {kind: items for kind, items in leftovers(sim.state_dir).items() if items}
    if code not in (0, None):
        raise SimError(f"vastsim exited {code}: {sim.log_tail(2000)}")
    if left:
        raise SimError(f"vastsim left behind: {left}")


@contextlib.contextmanager
def running(state_dir: Path, *args: str, **options: Any) -> Iterator[SimProcess]:
    """A simulator for the block; afterwards it must have exited cleanly and left nothing behind."""
    sim = start(state_dir, *args, **options)
    try:
        yield sim
    finally:
        stop_checked(sim)


def leftovers(state_dir: Path) -> dict[str, list[str]]:
    """What a simulator on ``state_dir`` may leave behind, by kind; all empty when it left nothing.

    Network namespaces ``vastsim-<tag>-*`` and links ``vs<tag>*`` (namespace backend), loop devices
    backed by its disk images, and processes whose command line names the state directory.
    """
    state_dir = state_dir.resolve()
    tag = state_tag(state_dir)
    found: dict[str, list[str]] = {"netns": [], "links": [], "loops": [], "processes": []}
    found["netns"] = [line.split()[0] for line in _output("ip", "netns", "list").splitlines()
                      if line.startswith(f"vastsim-{tag}-")]
    for line in _output("ip", "-o", "link", "show").splitlines():
        parts = line.split(":")
        if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(f"vs{tag}"):
            found["links"].append(parts[1].strip().split("@")[0])
    found["loops"] = [line for line in _output("losetup", "-a").splitlines() if f"{state_dir}/" in line]
    # The caller and what it runs under name the state directory too (`timeout 120 vastsim stop --state-dir X`,
    # a script given it): they are the ones asking, not something the simulator left.
    asking = _ancestry(os.getpid())
    # The state directory itself or a path below it, not /x/state.log or /x/state2.
    names_it = re.compile(re.escape(str(state_dir)) + r"(?=/|\s|$)")
    for line in _output("ps", "-ww", "-eo", "pid,args").splitlines():
        pid, _, command = line.strip().partition(" ")
        if names_it.search(command) and pid.isdigit() and int(pid) not in asking and not command.startswith("ps -ww"):
            found["processes"].append(line.strip())
    return found


def _ancestry(pid: int) -> set[int]:
    """``pid``, its parent, the parent's parent and so on up to init."""
    found: set[int] = set()
    while pid > 0 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            # The command name, in parentheses, may itself hold spaces and parentheses: the fields follow the last one.
            pid = int(stat[stat.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            if pid == os.getpid():
                found.add(os.getppid())  # without /proc, the parent at least
            break
    return found


def _output(*argv: str) -> str:
    """stdout of a system tool; empty when it is not installed (the simulator cannot have used it then)."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) holds nothing any more.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rfind(")") + 2:].split()[0] != "Z"
    return True


def _tail(path: Path, limit: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-limit:]
    return ""
