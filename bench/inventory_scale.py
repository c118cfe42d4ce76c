#!/usr/bin/env python3
"""Benchmark the inventory plugin mlops.vast.vast on a large account: ansible-inventory uncached vs cached.

Starts its own ``vastsim serve`` on a temporary state directory (``--log-level debug``, so its
access log tells which requests each run sent), fills the account with ``--instances`` instances
(default 200: 8 pages of 25 of ``GET /api/v1/instances/``) and times:

1. ``ansible-inventory -i <cfg> --list`` in a subprocess, ``--runs`` rounds after one warm-up:
   the start-up floor (``-i localhost,``, no plugin), uncached (``cache: false``), the cache fill
   (``cache: true`` with ``--flush-cache``) and cached (``cache: true``, the run after a fill);
   min/median/max, requests sent, hosts listed (must be every instance), uncached/cached ratio.
2. The same parses in-process (the plugin loaded as Ansible loads it, ``InventoryData`` +
   ``DataLoader``), without ansible-inventory's start-up, plus the listing alone through the
   collection's ``VastClient``: where the time of a run goes.

Instances cost nothing here: each is rented (``PUT /api/v0/asks/{offer}/``) and stopped at once,
at ``--speed 1`` where provisioning takes 3 s, so it never reaches ``loading`` and no host (sshd,
namespace, disk) is ever booted; stopped instances free their GPUs, so the ~84 offers are rented
again and again. All are destroyed at the end (one bulk ``DELETE /api/v0/instances/``) and the
ledger must show no open instance.

    .venv/bin/python bench/inventory_scale.py --instances 200 --runs 5 --json /tmp/inventory_scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
API_KEY = "vastsim-bench-key-0123456789abcdef"
PLUGIN = "mlops.vast.vast"
PAGE_SIZE = 25  # the plugin's page size of GET /api/v1/instances/
LABEL_PREFIX = "bench-"
# Speed 1: provisioning lasts 3 s, far longer than rent + stop, so no instance ever boots a host.
SPEED = 1.0
CREATE_BODY = {"client_id": "me", "image": "pytorch/pytorch:latest", "disk": 10,
               "runtype": "ssh_direc ssh_proxy", "cancel_unavail": True}
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')
SYNC_PARAM = "bench_sync"
# The example inventory/vast.yml, with every status and only this benchmark's labels.
INVENTORY_OPTIONS: dict[str, Any] = {
    "plugin": PLUGIN,
    "statuses": [],
    "label_prefix": LABEL_PREFIX,
    "hostnames": ["label", "id"],
    "prefer_direct": True,
    "keyed_groups": [{"key": "vast_gpu_name", "prefix": "gpu", "separator": "_"},
                     {"key": "vast_label", "prefix": "label", "separator": "_"},
                     {"key": "vast_actual_status", "prefix": "status", "separator": "_"}],
    "groups": {"vast_multi_gpu": "vast_num_gpus | int > 1"},
    "compose": {"ansible_python_interpreter": "'/usr/bin/python3'",
                "vast_price_per_hour": "vast_dph_total | float | round(4)"},
}


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


# --------------------------------------------------------------------------- the simulator process


@dataclass
class Sim:
    process: subprocess.Popen[str]
    url: str
    state_dir: Path
    log_path: Path
    stdout: list[str]  # every stdout line (the access log at --log-level debug), appended by a thread
    client: httpx.Client = field(init=False)
    _syncs: int = 0

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                   timeout=60)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def tag(self) -> str:
        # Mirrors HostManager.tag: netns are named vastsim-<tag>-<id>, host-side veths vs<tag>...
        return hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:4]

    def log_tail(self, limit: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-limit:]
        return ""

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
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


def start_sim(root: Path, host_mode: str, deadline: Deadline, timeout: float = 60.0) -> Sim:
    state_dir = root / "state"
    state_dir.mkdir(parents=True)
    log_path = root / "vastsim.log"
    argv = [sys.executable, "-m", "mlops_vast.sim.cli", "serve", "--state-dir", str(state_dir),
            "--speed", str(SPEED), "--api-key", API_KEY, "--credit", "1000000", "--host-mode", host_mode,
            "--log-level", "debug"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                   text=True, cwd=REPO)
    lines: list[str] = []
    ended = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
        ended.set()

    threading.Thread(target=reader, daemon=True).start()
    end = time.monotonic() + deadline.cap(timeout)
    while time.monotonic() < end and not ended.is_set():
        url = next((line.strip().split("=", 1)[1] for line in list(lines) if line.startswith("VAST_URL=")), None)
        if url:
            return Sim(process=process, url=url, state_dir=state_dir, log_path=log_path, stdout=lines)
        time.sleep(0.01)
    process.kill()
    process.wait(10)
    raise BenchError(f"vastsim did not print VAST_URL= within {timeout:g}s:\n"
                     f"{log_path.read_text(errors='replace')[-3000:]}")


def stop_sim(sim: Sim, timeout: float = 60.0) -> dict[str, Any]:
    """SIGTERM, wait; SIGKILL only if it ignored SIGTERM. Returns exit code and shutdown time."""
    started = time.monotonic()
    killed = False
    with contextlib.suppress(Exception):
        sim.client.close()
    if sim.process.poll() is None:
        sim.process.send_signal(signal.SIGTERM)
        try:
            sim.process.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            sim.process.kill()
            sim.process.wait(10)
    return {"returncode": sim.process.returncode, "shutdown_s": round(time.monotonic() - started, 3),
            "sigkilled": killed}


def _run(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def netns_of(sim: Sim) -> list[str]:
    prefix = f"vastsim-{sim.tag}-"
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.startswith(prefix)]


def children_of(pid: int) -> list[int]:
    """Every process below ``pid`` (the simulator's instance hosts, if any were booted)."""
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rfind(")") + 2:].split()[1])
    found = []
    for child in parents:
        current = child
        while current in parents and current not in (pid, 0, 1):
            current = parents[current]
        if current == pid and child != pid:
            found.append(child)
    return found


def stop_and_check(sim: Sim, results: dict[str, Any], say: Callable[[str], None]) -> bool:
    """Stop the simulator and look for anything of its state dir left behind; True if clean."""
    stopped = stop_sim(sim)
    leftover = {"netns": netns_of(sim),
                "processes": [line for line in _run("ps", "-eo", "pid,args").splitlines()
                              if str(sim.state_dir) in line and "ps -eo" not in line]}
    results["stop"] = stopped
    results["leftovers"] = leftover
    found = {k: v for k, v in leftover.items() if v}
    say(f"\nvastsim stopped: exit code {stopped['returncode']} after {stopped['shutdown_s']:.2f}s"
        f"{' (had to SIGKILL)' if stopped['sigkilled'] else ''}; left behind (vastsim-{sim.tag}-* netns, "
        f"processes of its state dir): {found or 'nothing'}")
    clean = stopped["returncode"] == 0 and not stopped["sigkilled"] and not found
    if not clean:
        results["errors"].append(f"unclean stop: {stopped} {leftover}")
    if not clean or results["errors"]:
        say("vastsim log tail:\n" + sim.log_tail(2000))
    return clean


# ------------------------------------------------------------------------------ the account's rows


def populate(sim: Sim, count: int, deadline: Deadline) -> dict[str, Any]:
    """Rent ``count`` instances, each stopped right away; wait until all are ``exited``."""
    started = time.monotonic()
    offers = sim.call("POST", "/api/v0/bundles/", json={"order": [["dph_total", "asc"]], "limit": 1000})["offers"]
    if not offers:
        raise BenchError("the simulator lists no offer")
    ids: list[int] = []
    for index in range(count):
        deadline.cap(1)
        offer = offers[index % len(offers)]
        body = {**CREATE_BODY, "label": f"{LABEL_PREFIX}{index:03d}"}
        created = sim.call("PUT", f"/api/v0/asks/{offer['id']}/", json=body)
        if not created.get("success"):
            raise BenchError(f"renting offer {offer['id']} did not start: {created}")
        ids.append(int(created["new_contract"]))
        stopped = sim.call("PUT", f"/api/v0/instances/{ids[-1]}/", json={"state": "stopped"})
        if not stopped.get("success"):
            raise BenchError(f"stopping instance {ids[-1]} failed: {stopped}")
    rented_s = time.monotonic() - started
    end = time.monotonic() + deadline.cap(60)
    statuses: dict[str, int] = {}
    while time.monotonic() < end:
        rows = sim.call("GET", "/api/v0/instances/")["instances"]
        statuses = {}
        for row in rows:
            statuses[str(row["actual_status"])] = statuses.get(str(row["actual_status"]), 0) + 1
        if len(rows) == count and statuses == {"exited": count}:
            break
        time.sleep(0.1)
    else:
        raise BenchError(f"instances not all exited within 60s: {statuses}")
    machines = sim.call("GET", "/_sim/machines")["machines"]
    busy = {m["machine_id"]: m["free_gpus"] for m in machines if m["free_gpus"] != m["gpus_total"]}
    hosts = children_of(sim.pid)
    if busy or hosts:
        raise BenchError(f"stopped instances still hold GPUs {busy} or booted hosts (pids {hosts})")
    first = sim.call("GET", "/api/v1/instances/", params={"select_filters": "{}", "limit": PAGE_SIZE})
    return {"ids": ids, "offers": len(offers), "machines": len(machines),
            "gpus": sum(m["gpus_total"] for m in machines), "rent_and_stop_s": rented_s,
            "total_s": time.monotonic() - started, "statuses": statuses,
            "v1_total_instances": first["total_instances"]}


def destroy_all(sim: Sim, ids: list[int]) -> dict[str, Any]:
    started = time.monotonic()
    answer = sim.call("DELETE", "/api/v0/instances/", json={"instance_ids": ids}) if ids else {"failed": []}
    ledger = sim.call("GET", "/_sim/ledger")["totals"]
    return {"destroyed": len(answer.get("updated", [])), "failed": answer.get("failed", []),
            "open_instances": ledger["open_instances"], "ledger_instances": ledger["instances"],
            "destroy_s": time.monotonic() - started}


# ------------------------------------------------------------------------------------ measurements


def summary(values: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": statistics.fmean(values), "iqr": quartiles[2] - quartiles[0]}


def noted(diff: float, *spreads: float) -> str:
    """A difference of medians, flagged when it is smaller than the runs' own spread (IQRs added)."""
    spread = sum(spreads)
    return f"{diff:.3f}s" + (f" (within the run-to-run spread, IQR {spread:.3f}s)" if abs(diff) < spread else "")


def write_cfg(path: Path, constructed: bool = True, **extra: Any) -> Path:
    """The benchmark's config; ``constructed=False`` leaves out keyed_groups, groups and compose."""
    options = {k: v for k, v in INVENTORY_OPTIONS.items()
               if constructed or k not in ("keyed_groups", "groups", "compose")}
    path.write_text(json.dumps({**options, **extra}, indent=2) + "\n")  # JSON is YAML
    return path


def ansible_env(sim: Sim, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAST_", "VASTAI_", "ANSIBLE_", "MLOPS_VAST_", "XDG_"))}
    home = root / "home"
    home.mkdir(exist_ok=True)
    env.update({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(root / "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
        # A source that fails to parse is an error, not an empty inventory timed as a fast one.
        "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),  # no stray key file
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "VAST_URL": sim.url,
        "VAST_API_KEY": API_KEY,
    })
    return env


def hosts_listed(stdout: str) -> tuple[int, int]:
    """(hosts in ``_meta.hostvars``, hosts of the group ``vast``) of ``ansible-inventory --list``."""
    data = json.loads(stdout)
    return len(data.get("_meta", {}).get("hostvars", {})), len(data.get("vast", {}).get("hosts", []))


def run_inventory(sim: Sim, argv: list[str], env: dict[str, str], deadline: Deadline,
                  expect_hosts: int | None) -> dict[str, Any]:
    start = sim.sync()
    t0 = time.perf_counter()
    completed = subprocess.run([str(BIN / "ansible-inventory"), *argv], env=env, cwd=REPO, capture_output=True,
                               text=True, stdin=subprocess.DEVNULL, timeout=deadline.cap(300))
    elapsed = time.perf_counter() - t0
    requests = sim.requests_between(start, sim.sync())
    if completed.returncode != 0:
        raise BenchError(f"ansible-inventory {' '.join(argv)} exited {completed.returncode}: "
                         f"{completed.stderr[-2000:]}")
    sample = {"s": elapsed, "requests": len(requests), "request_lines": requests,
              "stdout_bytes": len(completed.stdout)}
    if expect_hosts is not None:
        hostvars, group = hosts_listed(completed.stdout)
        sample["hosts"] = hostvars
        if hostvars != expect_hosts or group != expect_hosts:
            raise BenchError(f"ansible-inventory {' '.join(argv)} listed {hostvars} hosts ({group} in the group "
                             f"vast), expected {expect_hosts}")
    return sample


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
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


def bench_subprocess(sim: Sim, cfgs: dict[str, Path], env: dict[str, str], count: int, runs: int,
                     deadline: Deadline, say: Callable[[str], None]) -> dict[str, Any]:
    variants: dict[str, tuple[list[str], int | None]] = {
        "startup": (["-i", "localhost,", "--list"], None),
        "uncached": (["-i", str(cfgs["nocache"]), "--list"], count),
        "fill": (["-i", str(cfgs["cache"]), "--list", "--flush-cache"], count),
        "cached": (["-i", str(cfgs["cache"]), "--list"], count),
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_no in range(runs + 1):  # round 0 is the warm-up (page cache, .pyc files)
        for name, (argv, expect) in variants.items():  # cached always runs right after a fill
            sample = run_inventory(sim, argv, env, deadline, expect)
            if round_no:
                samples[name].append(sample)
        if round_no:
            say(f"  round {round_no}/{runs}: " + ", ".join(
                f"{name} {samples[name][-1]['s']:.3f}s/{samples[name][-1]['requests']} req" for name in variants))
    return {name: {"samples": rows, "summary": summary([r["s"] for r in rows]),
                   "requests": sorted({r["requests"] for r in rows}),
                   "request_lines": rows[-1]["request_lines"]} for name, rows in samples.items()}


def bench_in_process(sim: Sim, cfgs: dict[str, Path], env: dict[str, str], count: int, runs: int,
                     deadline: Deadline, say: Callable[[str], None]) -> dict[str, Any]:
    """The plugin's work without ansible-inventory: parse() into an InventoryData, as the manager does."""
    with environment({k: env[k] for k in ("ANSIBLE_CONFIG", "ANSIBLE_LOCAL_TEMP", "VAST_URL", "VAST_API_KEY",
                                           "XDG_CONFIG_HOME", "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED")}):
        t0 = time.perf_counter()
        from ansible.inventory.data import InventoryData
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.plugins.loader import init_plugin_loader, inventory_loader

        init_plugin_loader([str(REPO / ".collections")])
        from ansible_collections.mlops.vast.plugins.module_utils.vast_api import VastClient

        if inventory_loader.get(PLUGIN) is None:
            raise BenchError(f"inventory_loader cannot find {PLUGIN}")
        import_s = time.perf_counter() - t0

        def parse(cfg: Path, cache: bool) -> int:
            plugin = inventory_loader.get(PLUGIN)
            inventory = InventoryData()
            plugin.parse(inventory, DataLoader(), str(cfg), cache=cache)
            if plugin.get_option("cache"):  # InventoryManager does this after parse()
                plugin.update_cache_if_changed()
            group = inventory.groups.get("vast")
            return len(group.get_hosts()) if group else 0

        def manage(cfg: Path, cache: bool) -> int:
            # What ansible-inventory builds (cache=False is --flush-cache): plugin lookup, parse, reconcile.
            group = InventoryManager(loader=DataLoader(), sources=[str(cfg)], cache=cache).groups.get("vast")
            return len(group.get_hosts()) if group else 0

        def fetch() -> int:
            with VastClient(API_KEY, sim.url) as client:
                return len(list(client.iter_instances({}, page_size=PAGE_SIZE)))

        variants: dict[str, Callable[[], int]] = {
            "fetch": fetch,
            "uncached": lambda: parse(cfgs["nocache"], cache=True),
            "fill": lambda: parse(cfgs["cache"], cache=False),
            "cached": lambda: parse(cfgs["cache"], cache=True),
            "bare": lambda: parse(cfgs["bare"], cache=True),
            "manager_uncached": lambda: manage(cfgs["nocache"], cache=True),
            "manager_cached": lambda: manage(cfgs["cache"], cache=True),
        }
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for round_no in range(runs + 1):
            for name, work in variants.items():
                deadline.cap(1)
                start = sim.sync()
                t1 = time.perf_counter()
                found = work()
                elapsed = time.perf_counter() - t1
                requests = sim.requests_between(start, sim.sync())
                if found != count:
                    raise BenchError(f"in-process {name}: {found} hosts/rows, expected {count}")
                if round_no:
                    samples[name].append({"s": elapsed, "requests": len(requests)})
    say(f"  import ansible + plugin loader + {PLUGIN}: {import_s:.3f}s (once per process)")
    return {"import_s": import_s,
            **{name: {"samples": rows, "summary": summary([r["s"] for r in rows]),
                      "requests": sorted({r["requests"] for r in rows})} for name, rows in samples.items()}}


# ------------------------------------------------------------------------------------- reporting


def table(rows: list[tuple[str, dict[str, Any]]], say: Callable[[str], None], hosts: str = "") -> None:
    say(f"  {'':54} {'min':>7} {'median':>7} {'max':>7}  requests{hosts}")
    for label, data in rows:
        s = data["summary"]
        requests = "/".join(map(str, data["requests"]))
        extra = f"  {data['samples'][-1].get('hosts', '-'):>5}" if hosts else ""
        say(f"  {label:54} {s['min']:7.3f} {s['median']:7.3f} {s['max']:7.3f}  {requests:>8}{extra}")


def report(results: dict[str, Any], count: int, say: Callable[[str], None]) -> None:
    sub, inproc = results.get("subprocess"), results.get("in_process")
    pages = math.ceil(count / PAGE_SIZE)
    if sub:
        say("")
        table([("start-up floor (-i localhost, --list)", sub["startup"]),
               ("uncached (cache: false)", sub["uncached"]),
               ("cache fill (cache: true, --flush-cache)", sub["fill"]),
               ("cached (cache: true, run after a fill)", sub["cached"])], say, hosts="  hosts")
        unc, cac, floor = (sub[k]["summary"]["median"] for k in ("uncached", "cached", "startup"))
        spread = (sub["uncached"]["summary"]["iqr"], sub["cached"]["summary"]["iqr"])
        say(f"  uncached / cached (medians): {unc / cac:.2f}x; uncached - cached: {noted(unc - cac, *spread)}; "
            f"requests per uncached run: {'/'.join(map(str, sub['uncached']['requests']))} "
            f"(ceil({count}/{PAGE_SIZE}) = {pages} pages), cached: {'/'.join(map(str, sub['cached']['requests']))}")
        say(f"  over the start-up floor: uncached +{unc - floor:.3f}s, cached +{cac - floor:.3f}s "
            f"({(unc - floor) / max(cac - floor, 1e-9):.2f}x)")
    if inproc:
        say("")
        table([(f"listing only (VastClient, {pages} pages)", inproc["fetch"]),
               ("plugin parse, uncached (cache: false)", inproc["uncached"]),
               ("plugin parse, cache fill (cache=False)", inproc["fill"]),
               ("plugin parse, cached", inproc["cached"]),
               ("plugin parse, uncached, no keyed_groups/groups/compose", inproc["bare"]),
               ("InventoryManager(sources=[cfg]), uncached", inproc["manager_uncached"]),
               ("InventoryManager(sources=[cfg]), cached", inproc["manager_cached"])], say)
        unc, cac, fetch = (inproc[k]["summary"]["median"] for k in ("uncached", "cached", "fetch"))
        bare = inproc["bare"]["summary"]["median"]
        say(f"  plugin parse uncached / cached (medians): {unc / cac:.2f}x; of an uncached parse: listing "
            f"{fetch:.3f}s ({fetch / unc:.0%}), making {count} hosts with their vars {bare - fetch:.3f}s "
            f"({(bare - fetch) / unc:.0%}), keyed_groups/groups/compose (Ansible's templating) {unc - bare:.3f}s "
            f"({(unc - bare) / unc:.0%})")
    if sub and inproc:
        for kind in ("uncached", "cached"):
            total = sub[kind]["summary"]["median"]
            floor = sub["startup"]["summary"]["median"]
            manager = inproc[f"manager_{kind}"]["summary"]["median"]
            parse = inproc[kind]["summary"]["median"]
            rest = total - floor - manager
            say(f"  {kind} ansible-inventory --list, {total:.3f}s: start-up floor {floor:.3f}s "
                f"({floor / total:.0%}), InventoryManager {manager:.3f}s ({manager / total:.0%}; the plugin's "
                f"parse {parse:.3f}s), the rest {rest:.3f}s ({rest / total:.0%}: first-time imports and loading, "
                "each host's vars, JSON output)")


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


def run_benchmark(sim: Sim, root: Path, args: argparse.Namespace, deadline: Deadline, results: dict[str, Any],
                  say: Callable[[str], None]) -> None:
    info = sim.call("GET", "/_sim/info")
    load = os.getloadavg()
    results["host"]["loadavg_start"] = load
    say(f"vastsim pid {sim.pid} at {sim.url}: host mode {info['host_mode']}, speed {info['speed']:g}, "
        f"started in {results['sim_start_s']:.2f}s; {os.cpu_count()} CPUs (load average {load[0]:.2f}), "
        f"kernel {platform.release()}, Python {platform.python_version()}")
    filled = populate(sim, args.instances, deadline)
    results["populate"] = {k: v for k, v in filled.items() if k != "ids"}
    results["instance_ids"] = filled["ids"]
    say(f"{args.instances} instances ({LABEL_PREFIX}000...) rented and stopped in {filled['rent_and_stop_s']:.2f}s "
        f"({filled['offers']} offers on {filled['machines']} machines, rented again as stopped ones freed "
        f"their GPUs); all {filled['statuses']} after {filled['total_s']:.2f}s, no host booted, every GPU free; "
        f"v1 list: total_instances {filled['v1_total_instances']}, "
        f"{math.ceil(args.instances / PAGE_SIZE)} pages of {PAGE_SIZE}")
    if filled["v1_total_instances"] != args.instances:
        raise BenchError(f"v1 list shows {filled['v1_total_instances']} instances, expected {args.instances}")

    cfgs = {"nocache": write_cfg(root / "nocache_vast.yml", cache=False),
            "bare": write_cfg(root / "bare_vast.yml", constructed=False, cache=False),
            "cache": write_cfg(root / "cached_vast.yml", cache=True, cache_plugin="ansible.builtin.jsonfile",
                               cache_connection=str(root / "inventory-cache"), cache_timeout=3600)}
    env = ansible_env(sim, root)
    say(f"\n1. ansible-inventory -i CFG --list in a subprocess ({args.runs} rounds after 1 warm-up; "
        "statuses: [], keyed_groups/groups/compose of inventory/vast.yml)")
    results["subprocess"] = bench_subprocess(sim, cfgs, env, args.instances, args.runs, deadline, say)
    say("\n2. the same parses in-process (no ansible-inventory start-up)")
    results["in_process"] = bench_in_process(sim, cfgs, env, args.instances, args.runs, deadline, say)
    report(results, args.instances, say)


def destroy_and_verify(sim: Sim, results: dict[str, Any], say: Callable[[str], None]) -> None:
    """Destroy every instance (one bulk DELETE), check the ledger; records errors, never raises."""
    try:
        ids = results.get("instance_ids") or [row["id"] for row in sim.call("GET", "/api/v0/instances/")["instances"]]
        destroyed = destroy_all(sim, ids)
    except (BenchError, httpx.HTTPError, ValueError, KeyError) as exc:
        results["errors"].append(f"destroy: {exc!r}")
        say(f"\ndestroying the instances FAILED: {exc}")
        return
    results["destroy"] = destroyed
    say(f"\ndestroyed {destroyed['destroyed']} instances in one bulk DELETE ({destroyed['destroy_s']:.2f}s, "
        f"failed: {destroyed['failed'] or 'none'}); ledger totals.open_instances: {destroyed['open_instances']}")
    if destroyed["failed"] or destroyed["open_instances"]:
        results["errors"].append(f"instances left open after the bulk destroy: {destroyed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200, help="instances in the account (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds of each variant (default 5)")
    parser.add_argument("--host-mode", choices=("loopback", "namespace"), default="loopback",
                        help="vastsim --host-mode; no host is ever booted, so it hardly matters (default loopback)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=900.0,
                        help="overall time limit in seconds (default 900)")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.runs < 1:
        parser.error("--instances and --runs must be >= 1")
    if args.host_mode == "namespace" and os.geteuid() != 0:
        parser.error("--host-mode namespace needs root")
    if not (BIN / "ansible-inventory").exists():
        parser.error(f"{BIN / 'ansible-inventory'} not found: run with the virtualenv's python")

    def say(line: str) -> None:
        print(line, flush=True)

    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-bench-inv-"))
    results: dict[str, Any] = {
        "params": {"instances": args.instances, "runs": args.runs, "host_mode": args.host_mode, "speed": SPEED,
                   "page_size": PAGE_SIZE},
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "euid": os.geteuid()},
        "errors": [],
    }
    sim: Sim | None = None
    exit_code = 0
    try:
        with terminate_as_interrupt():
            started = time.monotonic()
            sim = start_sim(root, args.host_mode, deadline)
            results["sim_start_s"] = time.monotonic() - started
            try:
                run_benchmark(sim, root, args, deadline, results, say)
            finally:
                destroy_and_verify(sim, results, say)
    except (BenchError, httpx.HTTPError, subprocess.SubprocessError, OSError, ValueError) as exc:
        exit_code = 1
        results["errors"].append(f"fatal: {exc!r}")
        say(f"FAILED: {exc}")
    except KeyboardInterrupt:
        exit_code = 130
        results["errors"].append("interrupted")
        say("interrupted")
    finally:
        if sim is not None and not stop_and_check(sim, results, say):
            exit_code = exit_code or 1
        if results["errors"]:
            exit_code = exit_code or 1
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
            say(f"results written to {args.json}")
        shutil.rmtree(root, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
