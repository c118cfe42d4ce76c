#!/usr/bin/env python3
"""Benchmark vastsim: rent -> SSH-ready latency, and time/memory scaling with concurrent instances.

Starts its own ``vastsim serve`` on a temporary state directory, talks to it only through its
REST API (standard library + httpx), and reaches instances with the real ``ssh`` client on their
direct endpoint (``public_ipaddr`` : ``ports["22/tcp"][0]["HostPort"]``).

1. Readiness: ``--runs`` times, rent one instance and time PUT -> ``actual_status == "running"``
   -> first successful ``ssh ... true``; then destroy it and time until its host is gone.
2. Scaling: for N = 1, 2, 4, ... ``--max-instances``, rent N instances at once, time until all
   are running and all answer ``ssh true``, then measure memory (RSS of the simulator and of
   every process under it, i.e. the instances' unshare/init/sshd), loop devices in use, destroy
   all, check the ledger shows no open instance and that every host was torn down.

Run as root for the namespace host mode (the one this benchmark is meant for):

    .venv/bin/python bench/sim_ready.py --speed 1000 --runs 5 --max-instances 32 --json /tmp/ready.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

API_KEY = "vastsim-bench-key-0123456789abcdef"
CREATE_BODY = {"client_id": "me", "image": "x", "disk": 10, "runtype": "ssh_direc ssh_proxy",
               "cancel_unavail": True}
SEARCH_BODY = {"rentable": {"eq": True}, "order": [["dph_total", "asc"]], "limit": 100}
SSH_OPTIONS = ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
               "-o", "PasswordAuthentication=no", "-o", "ConnectTimeout=5"]
POLL_S = 0.01  # status polling interval (the simulator's own ticker runs every 50 ms)
SSH_RETRY_S = 0.05
SCALE_LEGEND = """\
  running / ready: first PUT -> last instance running / last `ssh true` ok; per-inst: median of each
  instance's own PUT -> ssh ok; sim CPU: the simulator process's own CPU time during the step;
  tot RSS: simulator + every process under it; RSS/inst: tot RSS / N; inst RSS: the instances'
  processes only (unshare, init, sshd); tot PSS: the same processes, shared pages counted once"""


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
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                   timeout=30)

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


def start_sim(root: Path, speed: float, deadline: Deadline, timeout: float = 60.0) -> Sim:
    state_dir = root / "state"
    state_dir.mkdir(parents=True)
    log_path = root / "vastsim.log"
    argv = [sys.executable, "-m", "mlops_vast.sim.cli", "serve", "--state-dir", str(state_dir),
            "--speed", str(speed), "--api-key", API_KEY, "--credit", "1000000", "--log-level", "info"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                   text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    end = time.monotonic() + deadline.cap(timeout)
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=max(0.01, end - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        if line.startswith("VAST_URL="):
            return Sim(process=process, url=line.strip().split("=", 1)[1], state_dir=state_dir,
                       log_path=log_path)
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


# ----------------------------------------------------------------------------- system inspection


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def netns_of(sim: Sim) -> list[str]:
    prefix = f"vastsim-{sim.tag}-"
    return [line.split()[0] for line in _run("ip", "netns", "list").splitlines()
            if line.startswith(prefix)]


def links_of(sim: Sim) -> list[str]:
    found = []
    for line in _run("ip", "-o", "link", "show").splitlines():
        parts = line.split(":")
        if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(f"vs{sim.tag}"):
            found.append(parts[1].strip().split("@")[0])
    return found


def loop_devices(state_dir: Path | None = None) -> list[str]:
    """``losetup -a`` lines, optionally only those backed by a file under ``state_dir``."""
    lines = _run("losetup", "-a").splitlines()
    if state_dir is None:
        return lines
    return [line for line in lines if str(state_dir) in line]


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU time of the process itself, CPU time of its children it has reaped), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return 0.0, 0.0
    fields = stat[stat.rfind(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def _status_kb(pid: int, key: str, path: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{path}") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS:")


def pss_kb(pid: int) -> int:
    return _status_kb(pid, "Pss:", "smaps_rollup")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory_snapshot(sim: Sim) -> dict[str, Any]:
    tree = descendants(sim.pid)
    groups: dict[int, list[int]] = {}
    for pid, top in tree.items():
        groups.setdefault(top, []).append(pid)
    kinds: dict[str, int] = {}
    for pid in tree:
        name = os.path.basename(cmdline(pid).split(" ")[0]) or "?"
        name = "sshd" if name.startswith("sshd") else name
        kinds[name] = kinds.get(name, 0) + 1
    return {
        "sim_rss_kb": rss_kb(sim.pid),
        "sim_pss_kb": pss_kb(sim.pid),
        "instance_rss_kb": sum(rss_kb(pid) for pid in tree),
        "instance_pss_kb": sum(pss_kb(pid) for pid in tree),
        "processes": len(tree),
        "process_groups": len(groups),
        "process_kinds": kinds,
    }


def wait_torn_down(sim: Sim, deadline: Deadline, timeout: float = 60.0) -> float:
    """Wait until no instance process, namespace, link, loop device or instance dir is left."""
    started = time.monotonic()
    end = started + deadline.cap(timeout)
    left: dict[str, Any] = {}
    while time.monotonic() < end:
        instances_dir = sim.state_dir / "instances"
        left = {
            "processes": [f"{pid} {cmdline(pid)[:120]}" for pid in descendants(sim.pid)],
            "netns": netns_of(sim),
            "links": links_of(sim),
            "loops": loop_devices(sim.state_dir),
            "dirs": sorted(p.name for p in instances_dir.iterdir()) if instances_dir.exists() else [],
        }
        if not any(left.values()):
            return time.monotonic() - started
        time.sleep(0.05)
    raise BenchError(f"teardown incomplete after {timeout:g}s: {left}")


# ------------------------------------------------------------------------------ marketplace calls


def pick_offers(sim: Sim, count: int) -> list[dict[str, Any]]:
    """``count`` rentable offers on machines without defects, cheapest first, distinct machines first.

    An offer is taken only while its machine still has enough free GPUs for it, so every PUT is
    expected to start (``cancel_unavail`` would refuse it otherwise).
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
                         f"(wanted {count}); lower --max-instances")
    return chosen


def rent(sim: Sim, offer: dict[str, Any]) -> int:
    response = sim.client.put(f"/api/v0/asks/{offer['id']}/", json=CREATE_BODY)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200 or not body.get("success"):
        raise BenchError(f"renting offer {offer['id']} (machine {offer['machine_id']}): "
                         f"HTTP {response.status_code} {response.text[:300]}")
    return int(body["new_contract"])


def destroy_all(sim: Sim, ids: list[int]) -> list[str]:
    errors = []
    for instance_id in ids:
        try:
            response = sim.client.delete(f"/api/v0/instances/{instance_id}/")
            if response.status_code != 200:
                errors.append(f"destroy {instance_id}: HTTP {response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            errors.append(f"destroy {instance_id}: {exc!r}")
    return errors


def open_instances(sim: Sim) -> int:
    return int(sim.call("GET", "/_sim/ledger")["totals"]["open_instances"])


def direct_endpoint(row: dict[str, Any]) -> tuple[str, int]:
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


def wait_ssh(host: str, port: int, user: str, key: Path, deadline: Deadline,
             timeout: float = 60.0) -> tuple[float, int]:
    """Retry ``ssh true`` until it succeeds; returns (monotonic time of success, attempts)."""
    end = time.monotonic() + deadline.cap(timeout)
    attempts = 0
    while time.monotonic() < end:
        attempts += 1
        if ssh_true(host, port, user, key, timeout=max(1.0, min(15.0, end - time.monotonic()))):
            return time.monotonic(), attempts
        time.sleep(SSH_RETRY_S)
    raise BenchError(f"ssh {user}@{host} -p {port} true did not succeed within {timeout:g}s "
                     f"({attempts} attempts)")


def wait_running(sim: Sim, instance_id: int, deadline: Deadline, timeout: float = 60.0,
                 seen: dict[str, float] | None = None) -> tuple[float, dict[str, Any]]:
    """Poll one instance until ``actual_status == "running"``; returns (monotonic time, row)."""
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
        time.sleep(POLL_S)
    raise BenchError(f"instance {instance_id} not running within {timeout:g}s: "
                     f"{row.get('actual_status')} / {row.get('status_msg')}")


# --------------------------------------------------------------------------------- the benchmarks


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "mean": statistics.fmean(values)}


def bench_ready(sim: Sim, user: str, key: Path, runs: int, deadline: Deadline,
                say: Callable[[str], None]) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    for run in range(runs):
        offer = pick_offers(sim, 1)[0]
        seen: dict[str, float] = {}
        t0 = time.monotonic()
        instance_id = rent(sim, offer)
        t_put = time.monotonic()
        try:
            t_running, row = wait_running(sim, instance_id, deadline, seen=seen)
            host, port = direct_endpoint(row)
            t_ssh, attempts = wait_ssh(host, port, user, key, deadline)
            warm_start = time.monotonic()
            warm_ok = ssh_true(host, port, user, key)
            warm = time.monotonic() - warm_start
        finally:
            t_destroy = time.monotonic()
            errors = destroy_all(sim, [instance_id])
        if errors:
            raise BenchError("; ".join(errors))
        if open_instances(sim):
            raise BenchError(f"ledger still shows open instances after destroying {instance_id}")
        wait_torn_down(sim, deadline)
        teardown = time.monotonic() - t_destroy
        sample = {
            "instance_id": instance_id, "offer_id": offer["id"], "machine_id": offer["machine_id"],
            "put_s": t_put - t0, "create_to_running_s": t_running - t0, "running_to_ssh_s": t_ssh - t_running,
            "total_s": t_ssh - t0, "ssh_attempts": attempts, "warm_ssh_true_s": warm if warm_ok else None,
            "destroy_to_torn_down_s": teardown,
            "status_first_seen_s": {status: round(at - t0, 4) for status, at in seen.items()},
        }
        samples.append(sample)
        say(f"  run {run + 1}/{runs}: create->running {sample['create_to_running_s']:.3f}s, "
            f"running->ssh {sample['running_to_ssh_s']:.3f}s, total {sample['total_s']:.3f}s "
            f"({attempts} ssh attempt{'s' if attempts > 1 else ''}), teardown {teardown:.3f}s")
    keys = ["create_to_running_s", "running_to_ssh_s", "total_s", "warm_ssh_true_s", "destroy_to_torn_down_s"]
    stats = {k: summary([s[k] for s in samples if s[k] is not None]) for k in keys
             if any(s[k] is not None for s in samples)}
    return {"samples": samples, "summary": stats}


def destroy_and_verify(sim: Sim, ids: list[int], count: int, result: dict[str, Any]) -> None:
    """Destroy every instance of a step, check the ledger, wait until their hosts are gone.

    Has its own time limit rather than the overall deadline, so a step that ran out of time is
    still cleaned up before the simulator is stopped.
    """
    started = time.monotonic()
    errors = destroy_all(sim, ids)
    if errors:
        raise BenchError("; ".join(errors))
    result["open_instances_after_destroy"] = open_instances(sim)
    if result["open_instances_after_destroy"]:
        raise BenchError(f"ledger shows {result['open_instances_after_destroy']} "
                         "open instances after destroying all")
    wait_torn_down(sim, Deadline(120 + 2 * count), timeout=60 + 2 * count)
    result["destroy_to_torn_down_s"] = time.monotonic() - started


def bench_scale(sim: Sim, user: str, key: Path, count: int, deadline: Deadline) -> dict[str, Any]:
    offers = pick_offers(sim, count)
    ids: list[int] = []
    put_at: dict[int, float] = {}
    running_at: dict[int, float] = {}
    ssh_at: dict[int, float] = {}
    attempts: dict[int, int] = {}
    result: dict[str, Any] = {"n": count, "machines": len({o["machine_id"] for o in offers}),
                              "offer_ids": [o["id"] for o in offers]}
    cpu_before = cpu_seconds(sim.pid)
    t0 = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            for offer in offers:
                instance_id = rent(sim, offer)
                ids.append(instance_id)
                put_at[instance_id] = time.monotonic()
            result["all_put_s"] = time.monotonic() - t0
            futures = {}
            end = time.monotonic() + deadline.cap(120 + 5 * count)
            rows: dict[int, dict[str, Any]] = {}
            while len(running_at) < count:
                if time.monotonic() > end:
                    pending = {i: (rows.get(i, {}).get("actual_status"), rows.get(i, {}).get("status_msg"))
                               for i in ids if i not in running_at}
                    raise BenchError(f"not all running in time; pending {pending}")
                listing = sim.call("GET", "/api/v0/instances/")["instances"]
                now = time.monotonic()
                rows = {row["id"]: row for row in listing if row["id"] in put_at}
                for instance_id, row in rows.items():
                    if instance_id in running_at:
                        continue
                    if row.get("actual_status") == "running":
                        running_at[instance_id] = now
                        host, port = direct_endpoint(row)
                        futures[instance_id] = pool.submit(wait_ssh, host, port, user, key, deadline,
                                                           max(10.0, end - now))
                    elif str(row.get("status_msg") or "").startswith("Error"):
                        raise BenchError(f"instance {instance_id} failed: {row.get('status_msg')}")
                time.sleep(POLL_S * 2)
            result["all_running_s"] = max(running_at.values()) - t0
            for instance_id, future in futures.items():
                ssh_at[instance_id], attempts[instance_id] = future.result(timeout=deadline.cap(end - t0))
        result["all_ready_s"] = max(ssh_at.values()) - t0
        cpu_after = cpu_seconds(sim.pid)
        result["sim_cpu_s"] = cpu_after[0] - cpu_before[0]
        result["sim_children_cpu_s"] = cpu_after[1] - cpu_before[1]
        per_instance = [ssh_at[i] - put_at[i] for i in ids]
        result["per_instance_ready_s"] = summary(per_instance)
        result["per_instance_running_to_ssh_s"] = summary([ssh_at[i] - running_at[i] for i in ids])
        result["ssh_attempts_max"] = max(attempts.values())
        time.sleep(0.3)  # let the per-connection sshd children of the last logins exit
        result["memory"] = memory_snapshot(sim)
        result["loops_of_sim"] = len(loop_devices(sim.state_dir))
        result["loops_all"] = len(loop_devices())
        result["netns_of_sim"] = len(netns_of(sim))
    except BaseException:
        # Clean up, but let the first failure be the one reported.
        with contextlib.suppress(Exception):
            destroy_and_verify(sim, ids, count, result)
        raise
    destroy_and_verify(sim, ids, count, result)
    return result


# ------------------------------------------------------------------------------------- reporting


def mb(kb: float) -> float:
    return kb / 1024.0


def print_ready(ready: dict[str, Any], say: Callable[[str], None]) -> None:
    labels = {"create_to_running_s": "create -> running", "running_to_ssh_s": "running -> ssh ok",
              "total_s": "total (create -> ssh ok)", "warm_ssh_true_s": "ssh true, already up",
              "destroy_to_torn_down_s": "destroy -> torn down"}
    say(f"  {'':28} {'min':>8} {'median':>8} {'max':>8}")
    for key, label in labels.items():
        if key in ready["summary"]:
            s = ready["summary"][key]
            say(f"  {label:28} {s['min']:8.3f} {s['median']:8.3f} {s['max']:8.3f}  s")


def print_scale(rows: list[dict[str, Any]], say: Callable[[str], None]) -> None:
    ok = [r for r in rows if "memory" in r]
    if not ok:
        return

    def total_kb(r: dict[str, Any]) -> int:
        return int(r["memory"]["sim_rss_kb"] + r["memory"]["instance_rss_kb"])

    def sum_pss(r: dict[str, Any]) -> int:
        return int(r["memory"]["sim_pss_kb"] + r["memory"]["instance_pss_kb"])

    base = ok[0]
    # (heading, unit, width, value)
    columns: list[tuple[str, str, int, Callable[[dict[str, Any]], str]]] = [
        ("N", "", 3, lambda r: f"{r['n']}"),
        ("running", "all, s", 8, lambda r: f"{r['all_running_s']:.3f}"),
        ("ready", "all, s", 8, lambda r: f"{r['all_ready_s']:.3f}"),
        ("per-inst", "med s", 8, lambda r: f"{r['per_instance_ready_s']['median']:.3f}"),
        ("wall/N", "s", 6, lambda r: f"{r['all_ready_s'] / r['n']:.3f}"),
        ("ready", f"xN={base['n']}", 6, lambda r: f"{r['all_ready_s'] / base['all_ready_s']:.2f}"),
        ("sim CPU", "s", 7, lambda r: f"{r['sim_cpu_s']:.2f}"),
        ("tot RSS", "MB", 7, lambda r: f"{mb(total_kb(r)):.1f}"),
        ("RSS/inst", "MB", 8, lambda r: f"{mb(total_kb(r)) / r['n']:.2f}"),
        ("RSS", f"xN={base['n']}", 6, lambda r: f"{total_kb(r) / total_kb(base):.2f}"),
        ("sim RSS", "MB", 7, lambda r: f"{mb(r['memory']['sim_rss_kb']):.1f}"),
        ("inst RSS", "MB/inst", 8, lambda r: f"{mb(r['memory']['instance_rss_kb']) / r['n']:.2f}"),
        ("tot PSS", "MB", 7, lambda r: f"{mb(sum_pss(r)):.1f}"),
        ("loops", "", 5, lambda r: f"{r['loops_of_sim']}"),
    ]
    say("  " + " ".join(f"{head:>{width}}" for head, _, width, _ in columns))
    say("  " + " ".join(f"{unit:>{width}}" for _, unit, width, _ in columns))
    for r in ok:
        say("  " + " ".join(f"{value(r):>{width}}" for _, _, width, value in columns))


def counts_up_to(limit: int) -> list[int]:
    counts, n = [], 1
    while n <= limit:
        counts.append(n)
        n *= 2
    if limit > 0 and counts[-1] != limit:
        counts.append(limit)
    return counts


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


def run_benchmarks(sim: Sim, key: Path, args: argparse.Namespace, deadline: Deadline,
                   results: dict[str, Any], say: Callable[[str], None]) -> int:
    """Both benchmarks against a started simulator; returns 1 if any step failed."""
    exit_code = 0
    info = sim.call("GET", "/_sim/info")
    user = info["ssh_user"]
    results["sim"] = {"host_mode": info["host_mode"], "ssh_user": user, "timings": info["timings"],
                      "idle_rss_kb": rss_kb(sim.pid)}
    sim.call("POST", "/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text().strip()})
    modelled = sum(info["timings"][k] for k in ("provisioning", "created", "loading"))
    say(f"vastsim pid {sim.pid} at {sim.url}: host mode {info['host_mode']}, speed {args.speed:g} "
        f"(modelled create->running wait {modelled:.3f}s), started in {results['sim_start_s']:.2f}s, "
        f"idle RSS {mb(rss_kb(sim.pid)):.1f} MB; {os.cpu_count()} CPUs, kernel {platform.release()}")
    if info["host_mode"] != "namespace":
        say("  note: not root, so instances are loopback sshds (no namespaces, no loop devices)")

    if args.runs:
        say(f"\n1. rent -> SSH ready, one instance at a time ({args.runs} runs)")
        try:
            results["ready"] = bench_ready(sim, user, key, args.runs, deadline, say)
            print_ready(results["ready"], say)
        except BenchError as exc:
            exit_code = 1
            results["errors"].append(f"ready: {exc}")
            say(f"  FAILED: {exc}")

    rows: list[dict[str, Any]] = []
    results["scale"] = rows
    counts = counts_up_to(args.max_instances)
    if counts:
        say("\n2. scaling: N instances rented at once, until all running and all answer ssh true "
            f"(N = {', '.join(map(str, counts))})")
    for count in counts:
        try:
            row = bench_scale(sim, user, key, count, deadline)
        except BenchError as exc:
            exit_code = 1
            rows.append({"n": count, "error": str(exc)})
            results["errors"].append(f"scale N={count}: {exc}")
            say(f"  N={count}: FAILED: {exc}")
            if "deadline" in str(exc):
                break
            continue
        rows.append(row)
        m = row["memory"]
        say(f"  N={count}: all running {row['all_running_s']:.3f}s, all ssh ok {row['all_ready_s']:.3f}s, "
            f"{m['processes']} processes {m['process_kinds']}, {row['loops_of_sim']} loop devices, "
            f"torn down in {row['destroy_to_torn_down_s']:.2f}s, "
            f"ledger open_instances after destroy: {row['open_instances_after_destroy']}")
    if any("memory" in r for r in rows):
        say("")
        print_scale(rows, say)
        say(SCALE_LEGEND)
    return exit_code


def stop_and_check(sim: Sim, results: dict[str, Any], say: Callable[[str], None]) -> bool:
    """Stop the simulator and look for anything of its state dir left behind; True if clean."""
    stopped = stop_sim(sim)
    leftover = {"netns": netns_of(sim), "links": links_of(sim), "loops": loop_devices(sim.state_dir),
                "processes": [line for line in _run("ps", "-eo", "pid,args").splitlines()
                              if str(sim.state_dir) in line and "ps -eo" not in line]}
    results["stop"] = stopped
    results["leftovers"] = leftover
    found = {k: v for k, v in leftover.items() if v}
    say(f"\nvastsim stopped: exit code {stopped['returncode']} after {stopped['shutdown_s']:.2f}s"
        f"{' (had to SIGKILL)' if stopped['sigkilled'] else ''}; "
        f"left behind (vastsim-{sim.tag}-* netns, vs{sim.tag}* links, loops, processes): "
        f"{found or 'nothing'}")
    clean = stopped["returncode"] == 0 and not stopped["sigkilled"] and not found
    if not clean:
        results["errors"].append(f"unclean stop: {stopped} {leftover}")
    if not clean or results["errors"]:
        say("vastsim log tail:\n" + sim.log_tail(2000))
    return clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=1000.0,
                        help="vastsim --speed; at 1000 Vast's modelled waits are ~50 ms (default 1000)")
    parser.add_argument("--runs", type=int, default=5, help="single-instance runs (default 5)")
    parser.add_argument("--max-instances", type=int, default=32,
                        help="largest concurrent count of the scaling sweep 1, 2, 4, ...; 0 skips it "
                        "(default 32)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=1200.0,
                        help="overall time limit in seconds (default 1200)")
    args = parser.parse_args(argv)
    if args.runs < 0 or args.max_instances < 0 or args.speed <= 0:
        parser.error("--runs and --max-instances must be >= 0, --speed > 0")
    for tool in ("ssh", "ssh-keygen", "ip", "losetup"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found on PATH")

    def say(line: str) -> None:
        print(line, flush=True)

    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-bench-"))
    results: dict[str, Any] = {
        "params": {"speed": args.speed, "runs": args.runs, "max_instances": args.max_instances},
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "euid": os.geteuid()},
        "errors": [],
    }
    sim: Sim | None = None
    exit_code = 0
    try:
        with terminate_as_interrupt():
            key = root / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vastsim-bench",
                            "-f", str(key)], check=True, timeout=30)
            started = time.monotonic()
            sim = start_sim(root, args.speed, deadline)
            results["sim_start_s"] = time.monotonic() - started
            exit_code = run_benchmarks(sim, key, args, deadline, results, say)
    except (BenchError, httpx.HTTPError, subprocess.SubprocessError, OSError) as exc:
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
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
            say(f"results written to {args.json}")
        shutil.rmtree(root, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
