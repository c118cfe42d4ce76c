"""What the benchmarks under bench/ share: their own ``vastsim serve``, and the checks around it.

Each benchmark starts a simulator on a temporary state directory, talks to it through its REST API
(standard library + httpx, never ``tests/``), and stops it at the end, checking that nothing of its
state directory (network namespace, veth link, loop device, process) is left behind. This module
holds that part, the ways to reach an instance over SSH, and the small pieces every script's
``main()`` repeats (the time budget, SIGTERM as Ctrl-C, the failure record, the JSON file).

The scripts are run as ``.venv/bin/python bench/<name>.py``, so this directory is on ``sys.path``
and they import it as ``_sim``; it is not part of the collection or the package.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import httpx

from mlops_vast.sim import harness

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "vastsim-bench-key-0123456789abcdef"
SEARCH_BODY = {"rentable": {"eq": True}, "order": [["dph_total", "asc"]], "limit": 100}
CREATE_BODY = {"client_id": "me", "image": "x", "disk": 10, "runtype": "ssh_direc ssh_proxy",
               "cancel_unavail": True}
SSH_OPTIONS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
               "-o", "PasswordAuthentication=no", "-o", "ConnectTimeout=5"]
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
SYNC_PARAM = "bench_sync"
# Variables of the caller's environment that could point a client elsewhere or at a real key, or
# change what a client prints (BENCH_TIMER_ is train_overhead's callback's output file).
DROPPED = ("VAST_", "VASTAI_", "ANSIBLE_", "MLOPS_VAST_", "XDG_", "HOME", "COLUMNS", "LINES", "NO_COLOR",
           "FORCE_COLOR", "BENCH_TIMER_")
# What a step may raise that ends the benchmark as a failure rather than a traceback.
FATAL: tuple[type[BaseException], ...] = (httpx.HTTPError, subprocess.SubprocessError, OSError)


class BenchError(RuntimeError):
    """A step of the benchmark failed or ran out of time."""


class Deadline:
    """The overall time budget; every wait asks it for a timeout no longer than what is left."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def cap(self, timeout: float) -> float:
        left = self.left()
        if left <= 0:
            raise BenchError("overall deadline (--deadline) exceeded")
        return min(timeout, left)


def say(line: str) -> None:
    # Flushed, so the figures of a long run show as they come even when piped into a file.
    print(line, flush=True)


# --------------------------------------------------------------------------- the simulator process


@dataclass
class Sim(harness.SimProcess):
    """A simulator started through the project's harness, with a client and its access log."""

    stdout: list[str] = field(default_factory=list)  # every stdout line (the access log at debug), by a thread
    client_timeout: float = 30.0
    client: httpx.Client = field(init=False)
    _syncs: int = 0

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"},
                                   timeout=self.client_timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of one request; anything but HTTP 200 is a BenchError."""
        response = self.client.request(method, path, **kwargs)
        if response.status_code != 200:
            raise BenchError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def sync(self, timeout: float = 10.0) -> int:
        """A position in ``stdout`` after which every request answered so far has been logged.

        Sends a marked ``GET /_sim/info`` and waits for its access-log line: the server logs in
        order, so every earlier request's line is already there.
        """
        self._syncs += 1
        marker = f"{SYNC_PARAM}={self._syncs}"
        self.call("GET", "/_sim/info", params={SYNC_PARAM: self._syncs})
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lines = list(self.stdout)
            for index in range(len(lines) - 1, -1, -1):
                if f"{marker} HTTP/" in lines[index]:
                    return index + 1
            time.sleep(0.005)
        raise BenchError(f"the access log never showed {marker} (is vastsim at --log-level debug?)")

    def requests_between(self, start: int, end: int) -> list[str]:
        """``METHOD target`` of every request logged between two ``sync()`` positions."""
        found = []
        for line in self.stdout[start:end]:
            match = ACCESS_LINE.search(line)
            if match and SYNC_PARAM not in match["target"]:
                found.append(f"{match['method']} {match['target']}")
        return found

    def measure(self, work: Callable[[], T]) -> tuple[T, float, list[str]]:
        """``work()``'s result, its wall seconds, and the requests the simulator logged meanwhile.

        The syncs stay outside the timed part; they need ``--log-level debug``.
        """
        start = self.sync()
        t0 = time.perf_counter()
        value = work()
        elapsed = time.perf_counter() - t0
        return value, elapsed, self.requests_between(start, self.sync())


def start_sim(root: Path, deadline: Deadline, *, speed: float | None = None, api_key: str | None = API_KEY,
              credit: int | None = None, host_mode: str | None = None, log_level: str = "info",
              cwd: Path | None = None, client_timeout: float = 30.0, timeout: float = 60.0) -> Sim:
    """``vastsim serve`` on ``root/state`` through the project's harness, logging to ``root/vastsim.log``;
    returns once it serves (its ready file).

    ``None`` leaves an option to vastsim's default; with ``api_key=None`` vastsim makes a key and the
    Sim reads it from ``STATE/api_key``, as scripts/demo.sh does.
    """
    state_dir = root / "state"
    state_dir.mkdir(parents=True)
    log_path = root / "vastsim.log"
    args: list[str] = []
    for option, value in (("--speed", speed), ("--credit", credit), ("--host-mode", host_mode),
                          ("--log-level", log_level)):
        if value is not None:
            args += [option, str(value)]
    wait = deadline.cap(timeout)  # before starting: running out of time must not leave a simulator behind
    try:
        started = harness.start(state_dir, *args, api_keys=[api_key] if api_key else [], log_path=log_path,
                                stdout=subprocess.PIPE, timeout=wait, cwd=cwd)
    except harness.SimError as exc:
        raise BenchError(str(exc)) from None
    process = started.process
    assert process is not None and process.stdout is not None
    lines: list[str] = []

    def reader() -> None:
        # Drains stdout for the simulator's whole life: a full pipe would block its access log.
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.decode(errors="replace"))

    threading.Thread(target=reader, daemon=True).start()
    return Sim(**{name.name: getattr(started, name.name) for name in fields(started)}, stdout=lines,
               client_timeout=client_timeout)


def stop_sim(sim: Sim, timeout: float = 60.0) -> dict[str, Any]:
    """SIGTERM, wait; SIGKILL only if it ignored SIGTERM. Returns exit code and shutdown time."""
    started = time.monotonic()
    killed = False
    with contextlib.suppress(Exception):
        sim.client.close()
    try:
        harness.stop(sim, timeout)
    except harness.SimError:
        killed = True
    assert sim.process is not None
    return {"returncode": sim.process.returncode, "shutdown_s": round(time.monotonic() - started, 3),
            "sigkilled": killed}


# ----------------------------------------------------------------------------- system inspection


def netns_of(sim: Sim) -> list[str]:
    return harness.leftovers(sim.state_dir)["netns"]


def loop_devices(state_dir: Path | None = None) -> list[str]:
    """``losetup -a`` lines: those backed by a file under ``state_dir``, or every one (None)."""
    if state_dir is not None:
        return harness.leftovers(state_dir)["loops"]
    try:
        return subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except OSError:
        return []


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from the third (state) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields resume after the last ')'.
    return stat[stat.rfind(")") + 2:].split()


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := stat_fields(entry.name)) is not None:
            parents[int(entry.name)] = int(fields[1])
    return parents


def descendants(root: int) -> dict[int, int]:
    """Every process below ``root`` -> the child of ``root`` it descends from (its instance)."""
    parents = _parent_map()
    found: dict[int, int] = {}
    for pid in parents:
        chain, current = [], pid
        while current in parents and current not in (root, 0, 1):
            chain.append(current)
            current = parents[current]
        if current == root and chain:
            found[pid] = chain[-1]
    return found


def stop_and_check(sim: Sim, results: dict[str, Any], say: Callable[[str], None], *, links: bool = False,
                   loops: bool = False, blank_line: bool = True) -> bool:
    """Stop the simulator and look for anything of its state dir left behind; True if clean.

    ``links`` and ``loops`` also look for ``vs<tag>*`` links and loop devices (namespace host mode
    makes them; ``losetup`` may be missing where only loopback mode is used). Records ``stop`` and
    ``leftovers`` in ``results``; ``blank_line=False`` when the caller has just printed its own lines.
    """
    stopped = stop_sim(sim)
    results["stop"] = stopped
    leftover: dict[str, list[str]] = {}
    failed = None
    try:
        found_all = harness.leftovers(sim.state_dir)
    except (OSError, subprocess.SubprocessError) as exc:  # a hung tool: unknown is not clean
        found_all, failed = {}, exc
    wanted = ["netns", *(["links"] if links else []), *(["loops"] if loops else []), "processes"]
    leftover = {name: found_all.get(name, []) for name in wanted}
    results["leftovers"] = leftover
    found = {k: v for k, v in leftover.items() if v}
    looked_for = ", ".join([f"vastsim-{sim.tag}-* netns", *([f"vs{sim.tag}* links"] if links else []),
                            *(["loop devices"] if loops else []), "processes of its state dir"])
    gap = "\n" if blank_line else ""
    say(f"{gap}vastsim stopped: exit code {stopped['returncode']} after {stopped['shutdown_s']:.2f}s"
        f"{' (had to SIGKILL)' if stopped['sigkilled'] else ''}; left behind ({looked_for}): {found or 'nothing'}")
    if failed is not None:
        results["errors"].append(f"leftover check: {failed!r}")
        say(f"leftover check FAILED: {failed}")
    clean = stopped["returncode"] == 0 and not stopped["sigkilled"] and not found and failed is None
    if not clean:
        results["errors"].append(f"unclean stop: {stopped} {leftover}")
    if not clean or results["errors"]:
        say("vastsim log tail:\n" + sim.log_tail(2000))
    return clean


# ------------------------------------------------------------------------ instances and their sshd


def pick_offers(sim: Sim, count: int, hint: str = "") -> list[dict[str, Any]]:
    """``count`` rentable offers on machines without defects, cheapest first, distinct machines first.

    An offer is taken only while its machine still has enough free GPUs for it, so every PUT is
    expected to start (``cancel_unavail`` would refuse it otherwise). ``hint`` ends the error.
    """
    offers = sim.call("POST", "/api/v0/bundles/", json=SEARCH_BODY)["offers"]
    machines = {m["machine_id"]: m for m in sim.call("GET", "/_sim/machines")["machines"]}
    free = {mid: m["free_gpus"] for mid, m in machines.items() if not m["defects"]}
    chosen: list[dict[str, Any]] = []
    for distinct in (True, False):
        used_machines = {o["machine_id"] for o in chosen}
        for offer in offers:
            if len(chosen) == count:
                return chosen
            mid = offer["machine_id"]
            if offer in chosen or mid not in free or free[mid] < offer["num_gpus"]:
                continue
            if distinct and mid in used_machines:
                continue
            chosen.append(offer)
            used_machines.add(mid)
            free[mid] -= offer["num_gpus"]
    if len(chosen) < count:
        raise BenchError(f"only {len(chosen)} offers can be rented at once on machines without defects "
                         f"(wanted {count}){hint}")
    return chosen


def rent(sim: Sim, offer: dict[str, Any], **fields: Any) -> int:
    """``PUT /api/v0/asks/{offer}/`` with CREATE_BODY (``fields`` override or add to it); the instance id."""
    response = sim.client.put(f"/api/v0/asks/{offer['id']}/", json={**CREATE_BODY, **fields})
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200 or not body.get("success"):
        raise BenchError(f"renting offer {offer['id']} (machine {offer['machine_id']}): "
                         f"HTTP {response.status_code} {response.text[:300]}")
    return int(body["new_contract"])


def direct_endpoint(row: dict[str, Any]) -> tuple[str, int]:
    """(host, port) of an instance's direct SSH endpoint, from its row of the instance list."""
    try:
        return str(row["public_ipaddr"]), int(row["ports"]["22/tcp"][0]["HostPort"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise BenchError(f"instance {row.get('id')} is running but has no direct SSH port: "
                         f"ports={row.get('ports')!r}") from None


def ssh_true(host: str, port: int, user: str, key: Path, timeout: float = 15.0) -> bool:
    argv = ["ssh", *SSH_OPTIONS, "-i", str(key), "-p", str(port), f"{user}@{host}", "true"]
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wait_ssh(host: str, port: int, user: str, key: Path, deadline: Deadline, timeout: float = 60.0,
             retry: float = 0.05) -> tuple[float, int]:
    """Retry ``ssh true`` every ``retry`` s until it succeeds; returns (monotonic time of success, attempts)."""
    end = time.monotonic() + deadline.cap(timeout)
    attempts = 0
    while time.monotonic() < end:
        attempts += 1
        if ssh_true(host, port, user, key, timeout=max(1.0, min(15.0, end - time.monotonic()))):
            return time.monotonic(), attempts
        time.sleep(retry)
    raise BenchError(f"ssh {user}@{host} -p {port} true did not succeed within {timeout:g}s "
                     f"({attempts} attempts)")


def wait_running(sim: Sim, instance_id: int, deadline: Deadline, timeout: float = 60.0,
                 seen: dict[str, float] | None = None, poll: float = 0.01) -> tuple[float, dict[str, Any]]:
    """Poll one instance every ``poll`` s until ``actual_status == "running"``; returns (monotonic time, row).

    ``seen`` gets the monotonic time each status was first seen.
    """
    end = time.monotonic() + deadline.cap(timeout)
    row: dict[str, Any] = {}
    while time.monotonic() < end:
        row = sim.call("GET", f"/api/v0/instances/{instance_id}/")["instances"] or {}
        now = time.monotonic()
        status = str(row.get("actual_status"))
        if seen is not None:
            seen.setdefault(status, now)
        if status == "running":
            return now, row
        if not row or status in ("exited", "offline") or str(row.get("status_msg") or "").startswith("Error"):
            break
        time.sleep(poll)
    raise BenchError(f"instance {instance_id} not running within {timeout:g}s: "
                     f"{row.get('actual_status')} / {row.get('status_msg')}")


# ------------------------------------------------------------------------------ clients, figures


def client_env(sim: Sim, root: Path) -> dict[str, str]:
    """This environment without DROPPED, a private HOME/XDG under ``root``, the venv first on PATH, the sim."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED)}
    home = root / "home"
    home.mkdir(exist_ok=True)
    return {**base, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),  # no stray key file
            "XDG_CACHE_HOME": str(home / ".cache"), "PATH": f"{BIN}:{base.get('PATH', '')}",
            "VAST_URL": sim.url, "VAST_API_KEY": sim.api_key}


def ansible_env(sim: Sim, root: Path, **extra: str) -> dict[str, str]:
    """``client_env`` plus the repository's ansible.cfg, a private local temp dir and no colours; ``extra`` on top."""
    return {**client_env(sim, root), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_LOCAL_TEMP": str(root / "ansible-local"), "ANSIBLE_NOCOLOR": "1", **extra}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, for in-process work that reads it (Ansible's config, the plugins)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def summary(values: list[float], *, iqr: bool = False) -> dict[str, float]:
    """min, median, max, mean of ``values``; with ``iqr`` also their interquartile range."""
    stats = {"min": min(values), "median": statistics.median(values), "max": max(values),
             "mean": statistics.fmean(values)}
    if iqr:
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        stats["iqr"] = quartiles[2] - quartiles[0]
    return stats


def noted(diff: float, *spreads: float) -> str:
    """A difference of medians, flagged when it is smaller than the runs' own spread (IQRs added)."""
    spread = sum(spreads)
    return f"{diff:.3f}s" + (f" (within the run-to-run spread, IQR {spread:.3f}s)" if abs(diff) < spread else "")


# ---------------------------------------------------------------------------------------- main()


def host_info(**extra: Any) -> dict[str, Any]:
    """The machine the figures were taken on, for the JSON results."""
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(), **extra}


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM to the benchmark unwinds like Ctrl-C, so the simulator is still stopped."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Outcome:
    """A benchmark run's exit code; a fatal error or an interrupt is recorded in ``results``, not raised."""

    def __init__(self, results: dict[str, Any], say: Callable[[str], None]) -> None:
        self.results = results
        self.say = say
        self.code = 0

    def fail(self) -> None:
        """Exit non-zero, keeping the code of an earlier failure (130 for an interrupt)."""
        self.code = self.code or 1

    @contextlib.contextmanager
    def guard(self, *also: type[Exception]) -> Iterator[None]:
        """Run the body with SIGTERM as Ctrl-C; BenchError, FATAL and ``also`` end it as a failure."""
        try:
            with terminate_as_interrupt():
                yield
        except (BenchError, *FATAL, *also) as exc:
            self.code = 1
            self.results["errors"].append(f"fatal: {exc!r}")
            self.say(f"FAILED: {exc}")
        except KeyboardInterrupt:
            self.code = 130
            self.results["errors"].append("interrupted")
            self.say("interrupted")


def write_results(path: Path | None, results: dict[str, Any], say: Callable[[str], None]) -> None:
    """The results as JSON in ``path``, if one was given (``--json``)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    say(f"results written to {path}")
