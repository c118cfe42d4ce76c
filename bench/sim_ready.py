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
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from _sim import (
    BenchError,
    Deadline,
    Outcome,
    Sim,
    descendants,
    direct_endpoint,
    host_info,
    loop_devices,
    netns_of,
    pick_offers,
    rent,
    say,
    ssh_true,
    start_sim,
    stat_fields,
    stop_and_check,
    summary,
    wait_running,
    wait_ssh,
    write_results,
)

from mlops_vast.sim import harness

OFFERS_HINT = "; lower --max-instances"
POLL_S = 0.01  # status polling interval (the simulator's own ticker runs every 50 ms)
SCALE_LEGEND = """\
  running / ready: first PUT -> last instance running / last `ssh true` ok; per-inst: median of each
  instance's own PUT -> ssh ok; sim CPU: the simulator process's own CPU time during the step;
  tot RSS: simulator + every process under it; RSS/inst: tot RSS / N; inst RSS: the instances'
  processes only (unshare, init, sshd); tot PSS: the same processes, shared pages counted once"""


# ----------------------------------------------------------------------------- system inspection


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU time of the process itself, CPU time of its children it has reaped), in seconds."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0, 0.0
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
        found = harness.leftovers(sim.state_dir)
        left = {
            "processes": [f"{pid} {cmdline(pid)[:120]}" for pid in descendants(sim.pid)],
            "netns": found["netns"],
            "links": found["links"],
            "loops": found["loops"],
            "dirs": sorted(p.name for p in instances_dir.iterdir()) if instances_dir.exists() else [],
        }
        if not any(left.values()):
            return time.monotonic() - started
        time.sleep(0.05)
    raise BenchError(f"teardown incomplete after {timeout:g}s: {left}")


# ------------------------------------------------------------------------------ marketplace calls


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


# --------------------------------------------------------------------------------- the benchmarks


def bench_ready(sim: Sim, user: str, key: Path, runs: int, deadline: Deadline,
                say: Callable[[str], None]) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    for run in range(runs):
        offer = pick_offers(sim, 1, hint=OFFERS_HINT)[0]
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
    offers = pick_offers(sim, count, hint=OFFERS_HINT)
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

    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-bench-"))
    results: dict[str, Any] = {
        "params": {"speed": args.speed, "runs": args.runs, "max_instances": args.max_instances},
        "host": host_info(euid=os.geteuid()),
        "errors": [],
    }
    sim: Sim | None = None
    outcome = Outcome(results, say)
    try:
        with outcome.guard():
            key = root / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vastsim-bench",
                            "-f", str(key)], check=True, timeout=30)
            started = time.monotonic()
            sim = start_sim(root, deadline, speed=args.speed, credit=1_000_000)
            results["sim_start_s"] = time.monotonic() - started
            outcome.code = run_benchmarks(sim, key, args, deadline, results, say)
    finally:
        if sim is not None and not stop_and_check(sim, results, say, links=True, loops=True):
            outcome.fail()
        write_results(args.json, results, say)
        shutil.rmtree(root, ignore_errors=True)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
