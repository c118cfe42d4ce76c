#!/usr/bin/env python3
"""Benchmark train.yml's orchestration overhead, and Ansible's per-task cost over SSH with
pipelining and ControlPersist on and off, against vastsim.

Starts its own ``vastsim serve`` on a temporary state directory (``--speed``, 1000 by default, so
Vast's modelled provisioning waits shrink to ~50 ms) and talks to it through its REST API
(standard library + httpx). Every task of every playbook is timed by a small callback plugin that
this script writes into its temporary directory (start of each task, each host's result, the
bandwidth probe's read seconds); ``ansible.posix.profile_tasks`` would time tasks the same way
(task start to next task start), but it is not a dependency of the collection.

1. The main job, ``--runs`` times, exactly as scripts/demo.sh runs it:
   ``ansible-playbook playbooks/train.yml -e @examples/run.yml`` with VAST_URL, VAST_API_KEY (from
   STATE_DIR/api_key), MLOPS_VAST_SSH_KEY, MLOPS_VAST_LEDGER, MLOPS_VAST_EXCLUSIONS and the repo's
   ansible.cfg, plus ``-e run_name=... -e run_results_dir=...`` (a private results directory) and
   ``-e provision_probe_max_seconds=N`` (the probe's reads, 8 s per endpoint by default, cut to N).
   Splits each run's wall time into: the simulator's waits (create -> running of every instance
   rented, measured from the API), the bandwidth probe's reads, the training itself
   (``train_runtime`` of run.log's summary line), the smoke test (smoke.json ``seconds``), and what
   is left, the orchestration overhead; lists the tasks that take longest.
2. Per-task cost over SSH: one instance rented with the REST API, a playbook of ``--tasks``
   ``ansible.builtin.command: true`` and ``--tasks`` ``ansible.builtin.stat`` tasks, run with
   ANSIBLE_PIPELINING on/off x ANSIBLE_SSH_ARGS with/without ControlMaster/ControlPersist,
   ``--repeats`` rounds (interleaved, after one warm-up run).

    .venv/bin/python bench/train_overhead.py --runs 3 --tasks 20 --repeats 3 --json /tmp/train_overhead.json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _sim import (
    BIN,
    REPO,
    BenchError,
    Deadline,
    Outcome,
    Sim,
    ansible_env,
    direct_endpoint,
    host_info,
    pick_offers,
    rent,
    say,
    start_sim,
    stop_and_check,
    summary,
    wait_running,
    wait_ssh,
    write_results,
)

HOST_KEY_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
PERSIST_ARGS = "-o ControlMaster=auto -o ControlPersist=60s"
# (pipelining, ControlPersist), both-on first: the baseline of the ratios.
COMBOS = [(True, True), (True, False), (False, True), (False, False)]
CALLBACK_NAME = "bench_timer"
CALLBACK_SOURCE = '''\
# Written by bench/train_overhead.py: times every task (one JSON line per event).
from __future__ import annotations

DOCUMENTATION = """
name: bench_timer
type: aggregate
short_description: time every task for bench/train_overhead.py
description: One JSON line per task start, per host result and at the end, to the file in BENCH_TIMER_OUT.
requirements: [enable it in callbacks_enabled]
"""

import json
import os
import resource
import time

from ansible.plugins.callback import CallbackBase

PROBES = ("mlops.vast.bandwidth_probe", "bandwidth_probe")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._out = open(os.environ["BENCH_TIMER_OUT"], "a", buffering=1)

    def _write(self, **row):
        row["t"] = time.time()
        # The controller's CPU so far: this process (the strategy, templating, callbacks) and its reaped
        # children (the workers, the modules they ran on localhost, ssh and rsync clients).
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        row["cpu_self"] = own.ru_utime + own.ru_stime
        row["cpu_children"] = children.ru_utime + children.ru_stime
        self._out.write(json.dumps(row, default=str) + "\\n")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write(ev="task", uuid=task._uuid, name=task.get_name(), action=task.action,
                    role=task._role.get_name() if task._role else "")

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def _result(self, status, result):
        row = {"ev": "result", "status": status, "uuid": result._task._uuid, "host": result._host.get_name()}
        if result._task.action in PROBES:
            rows = result._result.get("results") or []
            row["probe_seconds"] = [r.get("seconds") or 0.0 for r in rows if isinstance(r, dict)]
        self._write(**row)

    def v2_runner_on_ok(self, result):
        self._result("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._result("failed", result)

    def v2_runner_on_skipped(self, result):
        self._result("skipped", result)

    def v2_runner_on_unreachable(self, result):
        self._result("unreachable", result)

    def v2_playbook_on_stats(self, stats):
        self._write(ev="end")
        self._out.close()
'''


# ------------------------------------------------------------------------------ the account


def open_instance_ids(sim: Sim) -> list[int]:
    return [int(i) for i in sim.call("GET", "/_sim/ledger")["totals"]["open_instance_ids"]]


def destroy_open(sim: Sim) -> list[int]:
    """Destroy whatever the account still has open (after a failed or interrupted run)."""
    ids = open_instance_ids(sim)
    for instance_id in ids:
        with contextlib.suppress(httpx.HTTPError):
            sim.client.delete(f"/api/v0/instances/{instance_id}/")
    return ids


def check_ledger_and_stop(sim: Sim, results: dict[str, Any], say: Callable[[str], None]) -> bool:
    """Destroy what is still open, check the ledger, then stop the simulator and check; True if clean."""
    clean = True
    try:
        left = destroy_open(sim)
        totals = sim.call("GET", "/_sim/ledger")["totals"]
        results["ledger_totals"] = totals
        say(f"\nledger: {totals['instances']} instances rented in all, open_instances {totals['open_instances']}"
            f"{f' (destroyed {left} left open)' if left else ''}, cost ${totals['cost']:.4f}")
        if left or totals["open_instances"]:
            clean = False
            results["errors"].append(f"instances left open at the end: {left}")
    except (BenchError, httpx.HTTPError) as exc:
        clean = False
        results["errors"].append(f"ledger check: {exc!r}")
        say(f"ledger check FAILED: {exc}")
    return stop_and_check(sim, results, say, links=True, blank_line=False) and clean


# ------------------------------------------------------------------------------ running ansible


STRATEGY: dict[str, str] = {}  # --strategy: ANSIBLE_STRATEGY (and the plugin path for mitogen's)


def strategy_env(name: str) -> dict[str, str]:
    """ANSIBLE_STRATEGY=name; for mitogen_* also ANSIBLE_STRATEGY_PLUGINS from the installed ansible_mitogen."""
    if not name:
        return {}
    env = {"ANSIBLE_STRATEGY": name}
    if name.startswith("mitogen"):
        try:
            import ansible_mitogen  # type: ignore[import-not-found]  # optional: pip install mitogen
        except ImportError:
            raise BenchError("--strategy mitogen_*: mitogen is not installed (pip install mitogen)") from None
        env["ANSIBLE_STRATEGY_PLUGINS"] = str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy")
    return env


def demo_env(sim: Sim, root: Path, key: Path) -> dict[str, str]:
    """demo.sh's environment, with private HOME/XDG dirs and the timing callback enabled (and --strategy's)."""
    return ansible_env(sim, root, MLOPS_VAST_SSH_KEY=str(key), ANSIBLE_CALLBACK_PLUGINS=str(root / "callback_plugins"),
                       ANSIBLE_CALLBACKS_ENABLED=CALLBACK_NAME, **STRATEGY)


def write_callback(root: Path) -> None:
    directory = root / "callback_plugins"
    directory.mkdir(exist_ok=True)
    (directory / f"{CALLBACK_NAME}.py").write_text(CALLBACK_SOURCE)


def run_playbook(argv: list[str], env: dict[str, str], log_path: Path, timeout: float) -> dict[str, Any]:
    """Run ansible-playbook in its own session; on timeout stop that process group. Wall time and rc."""
    started_epoch = time.time()
    started = time.monotonic()
    # The controller's CPU time: ansible-playbook and every process it waited for (its forks, the modules it
    # ran on localhost, ssh clients; not the ControlPersist masters, which are detached, nor the simulator).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = process.wait(timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rc": rc, "wall_s": time.monotonic() - started, "started_at": started_epoch, "ended_at": time.time(),
            "controller_cpu_s": cpu}


def read_timer(path: Path) -> dict[str, Any]:
    """Tasks with start, duration (to the next task's start, as profile_tasks), results; probe seconds."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    starts = [e for e in events if e["ev"] == "task"]
    end_event = next((e for e in events if e["ev"] == "end"), None)
    end = end_event["t"] if end_event else None
    tasks = []
    marks = [*starts, end_event] if end_event else starts
    for index, event in enumerate(starts):
        following = marks[index + 1] if index + 1 < len(marks) else None
        until = following["t"] if following else event["t"]
        statuses = [e["status"] for e in events if e["ev"] == "result" and e["uuid"] == event["uuid"]]
        # A worker's CPU reaches RUSAGE_CHILDREN when Ansible reaps it, which is when it queues the next task: so a
        # task's children CPU is what the interval after its own adds (the last task's, what the end adds).
        reaped_from, reaped_to = marks[index + 1:index + 3] if index + 2 < len(marks) else (event, following)
        tasks.append({"name": event["name"], "role": event["role"], "action": event["action"],
                      "start": event["t"], "duration_s": until - event["t"], "statuses": statuses,
                      "cpu_self_s": following["cpu_self"] - event["cpu_self"] if following else 0.0,
                      "cpu_children_s": reaped_to["cpu_children"] - reaped_from["cpu_children"]
                      if reaped_to and reaped_from else 0.0})
    probe = [s for e in events if e["ev"] == "result" for s in e.get("probe_seconds", [])]
    return {"tasks": tasks, "end": end, "probe_seconds": probe}


def close_masters(control_dir: Path) -> int:
    """``ssh -O exit`` every ControlPersist master whose socket is in ``control_dir``; returns the count."""
    sockets = [p for p in control_dir.iterdir() if p.is_socket()] if control_dir.exists() else []
    for sock in sockets:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"],
                           capture_output=True, timeout=15)
    return len(sockets)


class InstanceWatcher:
    """Polls the instance list; for each instance seen running: create -> running from the API.

    ``duration`` (now - start_date) and ``uptime_mins`` ((now - running_since) / 60) are computed by
    the simulator with the same ``now``, so their difference is create -> running exactly.
    """

    def __init__(self, sim: Sim, interval: float = 0.1) -> None:
        self.client = httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {sim.api_key}"},
                                   timeout=10)
        self.interval = interval
        self.seen: dict[int, dict[str, Any]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                for row in self.client.get("/api/v0/instances/").json()["instances"]:
                    if row.get("actual_status") == "running" and row.get("uptime_mins") is not None \
                            and row["id"] not in self.seen:
                        self.seen[row["id"]] = {
                            "id": row["id"], "label": row.get("label"), "machine_id": row.get("machine_id"),
                            "create_to_running_s": float(row["duration"]) - float(row["uptime_mins"]) * 60.0}
            self.stop.wait(self.interval)

    def __enter__(self) -> InstanceWatcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.client.close()


# ------------------------------------------------------------------------ 1. train.yml's overhead


def summary_line(run_log: Path) -> dict[str, Any] | None:
    """The Hugging Face summary line (``{'train_runtime': ...}``) of run.log, the last one."""
    if not run_log.exists():
        return None
    for line in reversed(run_log.read_text(errors="replace").splitlines()):
        text = line.strip()
        if text.startswith("{") and "train_runtime" in text:
            with contextlib.suppress(ValueError, SyntaxError):
                return ast.literal_eval(text)
    return None


def short_reason(reason: str) -> str:
    """'bandwidth: weights: 0.153 MB/s < 5 MB/s' out of the exclusion's long reason."""
    rate = re.search(r"[\w.-]+: [\d.]+ MB/s < [\d.]+ MB/s", reason)
    return f"{reason.split(':', 1)[0]}: {rate.group(0)}" if rate else reason[:80]


def train_once(sim: Sim, root: Path, key: Path, index: int, args: argparse.Namespace,
               deadline: Deadline) -> dict[str, Any]:
    run_name = f"bench-train-{index}"
    run_dir = root / "train" / str(index)
    results_dir = run_dir / "results"
    run_dir.mkdir(parents=True)
    timer = run_dir / "timer.jsonl"
    env = {**demo_env(sim, root, key), "BENCH_TIMER_OUT": str(timer),
           # A fresh local ledger and exclusions file: every run starts from nothing, as a first demo does.
           "MLOPS_VAST_LEDGER": str(run_dir / "contracts.jsonl"),
           "MLOPS_VAST_EXCLUSIONS": str(run_dir / "excluded_machines.json")}
    probe = (["-e", "provision_probe=false"] if args.probe_seconds <= 0
             else ["-e", f"provision_probe_max_seconds={args.probe_seconds:g}"])
    # --good-hosts-only: the catalogue's defective machines excluded up front, as the manual script excludes them.
    market = (["-e", json.dumps({"provision_exclude_machines": sorted(args.defective)})]
              if args.good_hosts_only else [])
    argv = [str(BIN / "ansible-playbook"), "playbooks/train.yml", "-e", "@examples/run.yml",
            "-e", f"run_name={run_name}", "-e", f"run_results_dir={results_dir}", *probe, *market]
    with InstanceWatcher(sim) as watcher:
        run = run_playbook(argv, env, run_dir / "ansible.log", deadline.cap(args.run_timeout))
    masters = close_masters(root / "home" / ".ansible" / "cp")
    out: dict[str, Any] = {"run_name": run_name, **run, "argv": argv[1:], "masters_closed": masters}
    timing = read_timer(timer)
    tasks = timing["tasks"]
    out["tasks"] = tasks
    rows = [r for r in sim.call("GET", "/_sim/ledger")["rows"] if r.get("label") == run_name]
    out["rented"] = [{"id": r["id"], "machine_id": r["machine_id"], "status": r["status"]} for r in rows]
    instances = [i for i in watcher.seen.values() if i["label"] == run_name]
    out["instances"] = instances
    rejected = {}
    exclusions = run_dir / "excluded_machines.json"
    if exclusions.exists():
        with contextlib.suppress(ValueError):
            rejected = json.loads(exclusions.read_text()).get("machines", {})
    out["rejected"] = {mid: short_reason(str(v.get("reason", ""))) for mid, v in rejected.items()}
    if run["rc"] != 0:
        tail = (run_dir / "ansible.log").read_text(errors="replace")[-2500:]
        raise BenchError(f"{run_name}: ansible-playbook exited {run['rc']}:\n{tail}")
    if len(instances) != len(rows):
        raise BenchError(f"{run_name}: saw {len(instances)} of {len(rows)} rented instances running "
                         "(the watcher polls every 0.1 s)")
    summary_row = summary_line(results_dir / "run.log")
    smoke = json.loads((results_dir / "smoke.json").read_text())
    if summary_row is None:
        raise BenchError(f"{run_name}: no train_runtime summary line in {results_dir / 'run.log'}")
    watch = next((t for t in tasks if t["action"] in ("mlops.vast.watch", "watch")), None)
    watch_start = watch["start"] if watch else None
    started_at = results_dir / "STARTED_AT"
    exit_file = results_dir / "EXIT_CODE"
    train_end = exit_file.stat().st_mtime if exit_file.exists() else None  # rsync -a kept the host's mtime
    first_task = tasks[0]["start"] if tasks else run["started_at"]
    out.update({
        "startup_s": first_task - run["started_at"],
        "shutdown_s": run["ended_at"] - timing["end"] if timing["end"] else None,
        "create_to_running_s": sum(i["create_to_running_s"] for i in instances),
        "probe_read_s": sum(timing["probe_seconds"]),
        "train_runtime_s": float(summary_row["train_runtime"]),
        "smoke_s": float(smoke["seconds"]),
        "train_host_s": (train_end - float(started_at.read_text().strip()))
        if train_end and started_at.exists() else None,
        "train_waited_s": max(0.0, train_end - watch_start) if train_end and watch_start else 0.0,
        "watch_s": watch["duration_s"] if watch else None,
        # The watch's time after the run had ended: its poll interval (run_poll_interval_s) and its own work.
        "watch_after_end_s": max(0.0, watch["start"] + watch["duration_s"] - max(train_end, watch["start"]))
        if watch and train_end else None,
    })
    waits = out["create_to_running_s"] + out["probe_read_s"]
    out["overhead_s"] = run["wall_s"] - waits - out["train_runtime_s"] - out["smoke_s"]
    out["overhead_critical_s"] = run["wall_s"] - waits - out["train_waited_s"] - out["smoke_s"]
    return out


def task_key(task: dict[str, Any]) -> str:
    return task["name"]


def print_train(runs: list[dict[str, Any]], modelled: float, speed: float, top: int,
                say: Callable[[str], None]) -> dict[str, Any]:
    rows = [
        ("wall (ansible-playbook process)", "wall_s"),
        ("  start-up (process start -> first task)", "startup_s"),
        ("  create -> running, all rents (API)", "create_to_running_s"),
        ("  bandwidth probe reads", "probe_read_s"),
        ("  smoke test (smoke.json seconds)", "smoke_s"),
        ("  training (train_runtime)", "train_runtime_s"),
        ("overhead = wall - waits - train - smoke", "overhead_s"),
        ("training on the host (STARTED_AT -> exit)", "train_host_s"),
        ("  of which the playbook waited for", "train_waited_s"),
        ("overhead, training waited for only", "overhead_critical_s"),
        ("controller CPU (ansible-playbook + children)", "controller_cpu_s"),
        ("watch task (run_poll_interval_s: 5)", "watch_s"),
        ("  after the run had ended", "watch_after_end_s"),
    ]
    stats: dict[str, Any] = {}
    say(f"  {'':44} {'min':>8} {'median':>8} {'max':>8}")
    for label, key in rows:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            continue
        stats[key] = summary(values)
        s = stats[key]
        say(f"  {label:44} {s['min']:8.3f} {s['median']:8.3f} {s['max']:8.3f}  s")
    wall = stats["wall_s"]["median"]
    rents = statistics.median(len(r["instances"]) for r in runs)
    tasks_started = statistics.median(len(r["tasks"]) for r in runs)
    c2r = [i["create_to_running_s"] for r in runs for i in r["instances"]]
    say(f"  rents per run: {rents:g} (create -> running each: {min(c2r):.3f}-{max(c2r):.3f}s, modelled "
        f"{modelled:.3f}s = {modelled * speed:.0f}s of Vast's timings / speed {speed:g}; the rest is the host's "
        f"boot); tasks started per run: {tasks_started:g}, {1000 * stats['overhead_s']['median'] / tasks_started:.0f} "
        f"ms of overhead per task, {1000 * stats['controller_cpu_s']['median'] / tasks_started:.0f} ms of "
        "controller CPU per task")
    say(f"  overhead / wall (medians): {stats['overhead_s']['median'] / wall:.2f}; "
        f"(training + smoke) / wall: {(stats['train_runtime_s']['median'] + stats['smoke_s']['median']) / wall:.2f}; "
        f"waits / wall: {(stats['create_to_running_s']['median'] + stats['probe_read_s']['median']) / wall:.2f}")

    per_run: list[dict[str, tuple[float, int]]] = []
    by_role: list[dict[str, float]] = []
    for run in runs:
        totals: dict[str, tuple[float, int]] = {}
        roles: dict[str, float] = {}
        for task in run["tasks"]:
            seconds, count = totals.get(task_key(task), (0.0, 0))
            totals[task_key(task)] = (seconds + task["duration_s"], count + 1)
            role = (task["role"] or "(play)").removeprefix("mlops.vast.")
            roles[role] = roles.get(role, 0.0) + task["duration_s"]
        per_run.append(totals)
        by_role.append(roles)
    keys = {k for totals in per_run for k in totals}
    ranked = sorted(((statistics.median(t.get(k, (0.0, 0))[0] for t in per_run),
                      statistics.median(t.get(k, (0.0, 0))[1] for t in per_run), k) for k in keys), reverse=True)
    say(f"\n  top {top} tasks by time (median over runs of each task's time per run, task start -> next task "
        "start; n: times it ran per run):")
    for seconds, count, name in ranked[:top]:
        say(f"  {seconds:7.3f}s {seconds / wall:5.1%}  n={count:g}  {name}")
    roles = {k for r in by_role for k in r}
    role_rows = sorted(((statistics.median(r.get(k, 0.0) for r in by_role), k) for k in roles), reverse=True)
    say("  by role (median s): " + ", ".join(f"{k} {v:.2f}" for v, k in role_rows))
    cpu = print_cpu_by_action(runs, top, say)
    return {"summary": stats, "top_tasks": [{"name": k, "median_s": s, "per_run": c} for s, c, k in ranked[:top]],
            "by_role": {k: v for v, k in role_rows}, "cpu_by_action": cpu}


def print_cpu_by_action(runs: list[dict[str, Any]], top: int, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Where the controller's CPU goes: per action, the main process's share and its children's (workers, local
    modules, ssh), medians over runs of each action's total per run."""
    per_run: list[dict[str, tuple[float, float, int]]] = []
    for run in runs:
        totals: dict[str, tuple[float, float, int]] = {}
        for task in run["tasks"]:
            own, children, count = totals.get(task["action"], (0.0, 0.0, 0))
            totals[task["action"]] = (own + task.get("cpu_self_s", 0.0), children + task.get("cpu_children_s", 0.0),
                                      count + 1)
        per_run.append(totals)
    actions = {k for totals in per_run for k in totals}
    rows = []
    for action in actions:
        own = statistics.median(t.get(action, (0.0, 0.0, 0))[0] for t in per_run)
        children = statistics.median(t.get(action, (0.0, 0.0, 0))[1] for t in per_run)
        count = statistics.median(t.get(action, (0.0, 0.0, 0))[2] for t in per_run)
        rows.append({"action": action, "cpu_self_s": own, "cpu_children_s": children, "tasks": count})
    rows.sort(key=lambda r: r["cpu_self_s"] + r["cpu_children_s"], reverse=True)
    total_self = sum(r["cpu_self_s"] for r in rows)
    total_children = sum(r["cpu_children_s"] for r in rows)
    say(f"\n  controller CPU by action (median CPU-s per run; tasks: {total_self:.2f} s in ansible-playbook's own "
        f"process, {total_children:.2f} s in its children):")
    say(f"  {'action':40} {'n':>5} {'own':>7} {'children':>9} {'per task':>9}")
    for row in rows[:top]:
        per_task = (row["cpu_self_s"] + row["cpu_children_s"]) / row["tasks"] if row["tasks"] else 0.0
        say(f"  {row['action'][:40]:40} {row['tasks']:5g} {row['cpu_self_s']:7.2f} {row['cpu_children_s']:9.2f} "
            f"{per_task:9.3f}")
    return rows


def bench_train(sim: Sim, root: Path, key: Path, args: argparse.Namespace, deadline: Deadline,
                results: dict[str, Any], say: Callable[[str], None]) -> int:
    info = sim.call("GET", "/_sim/info")
    modelled = sum(info["timings"][k] for k in ("provisioning", "created", "loading"))
    probe = ("provision_probe=false" if args.probe_seconds <= 0
             else f"provision_probe_max_seconds={args.probe_seconds:g}")
    market = (f"; the catalogue's defective machines excluded: {sorted(args.defective)}" if args.good_hosts_only
              else "; the demo's market: the cheapest offer is a slow-link host, probed, rejected and destroyed")
    say(f"\n1. train.yml -e @examples/run.yml against vastsim, {args.runs} runs (-e {probe}; "
        f"fresh exclusions and ledger files each run{market})")
    runs: list[dict[str, Any]] = []
    results["train"] = {"runs": runs, "probe": probe}
    exit_code = 0
    for index in range(1, args.runs + 1):
        try:
            run = train_once(sim, root, key, index, args, deadline)
        except BenchError as exc:
            exit_code = 1
            results["errors"].append(f"train run {index}: {exc}")
            say(f"  run {index}: FAILED: {exc}")
            left = destroy_open(sim)
            if left:
                say(f"  destroyed instances the run left open: {left}")
            if "deadline" in str(exc):
                break
            continue
        finally:
            with contextlib.suppress(BenchError, httpx.HTTPError):
                if open_instance_ids(sim):
                    results["errors"].append(f"train run {index} left instances open: {destroy_open(sim)}")
                    exit_code = 1
        runs.append(run)
        rejected = "; ".join(f"machine {m}: {why}" for m, why in run["rejected"].items())
        say(f"  run {index}: wall {run['wall_s']:.2f}s, {len(run['tasks'])} tasks, {len(run['instances'])} "
            f"instance(s) rented{f' (rejected {rejected})' if rejected else ''}; train_runtime "
            f"{run['train_runtime_s']:.2f}s, smoke {run['smoke_s']:.2f}s, overhead {run['overhead_s']:.2f}s, "
            f"controller CPU {run['controller_cpu_s']:.2f}s")
    if runs:
        say("")
        results["train"]["report"] = print_train(runs, modelled, args.speed, args.top, say)
    return exit_code


# ------------------------------------------------------------- 1b. against the scripted manual lifecycle


def bench_manual(sim: Sim, root: Path, key: Path, args: argparse.Namespace, deadline: Deadline,
                 results: dict[str, Any], say: Callable[[str], None]) -> int:
    """bench/manual_lifecycle.py ``--manual`` times on this simulator, then both side by side."""
    from manual_lifecycle import STEPS, run_manual

    train_runs = results.get("train", {}).get("runs") or []
    exclude = {int(m) for run in train_runs for m in run.get("rejected", {})}
    if args.good_hosts_only:
        exclude |= args.defective
    say(f"\n1b. the seeds' manual lifecycle (bench/manual_lifecycle.py: vastai CLI, ssh, rsync, tmux), "
        f"{args.manual} runs, the same job and poll interval; machines train.yml rejected excluded: "
        f"{sorted(exclude) or 'none'}")
    runs: list[dict[str, Any]] = []
    results["manual"] = {"runs": runs, "excluded": sorted(exclude)}
    code = 0
    for index in range(1, args.manual + 1):
        try:
            run = run_manual(sim, root, key, index, exclude_machines=exclude, deadline=deadline)
        except (BenchError, subprocess.SubprocessError, OSError) as exc:
            code = 1
            results["errors"].append(f"manual run {index}: {exc}")
            say(f"  run {index}: FAILED: {exc}")
            left = destroy_open(sim)
            if left:
                say(f"  destroyed instances the run left open: {left}")
            continue
        runs.append(run)
        say(f"  run {index}: wall {run['wall_s']:.2f}s, {run['commands']} commands, train_runtime "
            f"{run['train_runtime_s']:.2f}s, overhead {run['overhead_s']:.2f}s, controller CPU "
            f"{run['controller_cpu_s']:.2f}s")
    if not runs:
        return code
    say("  by step (median s): " + ", ".join(
        f"{name} {statistics.median(r['steps'].get(name, 0.0) for r in runs):.2f}" for name in STEPS))
    if not train_runs:
        return code

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(float(r[key]) for r in rows if r.get(key) is not None)

    rows = [
        ("wall", med(train_runs, "wall_s"), med(runs, "wall_s")),
        ("  create -> running (API)", med(train_runs, "create_to_running_s"), med(runs, "create_to_running_s")),
        ("  bandwidth probe reads", med(train_runs, "probe_read_s"), 0.0),
        ("  smoke test", med(train_runs, "smoke_s"), 0.0),
        ("  training (train_runtime)", med(train_runs, "train_runtime_s"), med(runs, "train_runtime_s")),
        ("overhead (wall - waits - train - smoke)", med(train_runs, "overhead_s"), med(runs, "overhead_s")),
        ("controller CPU-seconds", med(train_runs, "controller_cpu_s"), med(runs, "controller_cpu_s")),
    ]
    say(f"\n  {'medians':44} {'train.yml':>10} {'manual':>10} {'ratio':>7}")
    for label, mine, theirs in rows:
        ratio = f"{mine / theirs:7.2f}" if theirs > 0 else f"{'':>7}"
        say(f"  {label:44} {mine:10.2f} {theirs:10.2f} {ratio}  s")
    tasks = statistics.median(len(r["tasks"]) for r in train_runs)
    commands = statistics.median(r["commands"] for r in runs)
    ratio = med(train_runs, "overhead_s") / med(runs, "overhead_s")
    rents = ("rents the same good host, " if args.good_hosts_only
             else "rents twice (the slow-link host is probed, rejected and destroyed), ")
    say(f"  tasks per train.yml run: {tasks:g}; commands per manual run: {commands:g}; orchestration overhead "
        f"train.yml / manual: {ratio:.2f}x (goal <= 2x). train.yml also "
        f"{rents}"
        "probes its link, checks the GPU, builds a uv environment, smoke-tests, verifies checkpoints "
        "and proves the instance gone; the script does none of that.")
    results["manual"]["comparison"] = {"rows": [{"what": r[0].strip(), "train_yml": r[1], "manual": r[2]}
                                                for r in rows],
                                       "tasks": tasks, "commands": commands, "overhead_ratio": ratio,
                                       "good_hosts_only": args.good_hosts_only}
    return code


# --------------------------------------------------------------- 2. pipelining x ControlPersist


def register_key(sim: Sim, key: Path) -> None:
    """Add the public key to the account unless it is there (part 1's provision role adds it too)."""
    public = key.with_suffix(".pub").read_text().split()
    listed = sim.call("GET", "/api/v0/ssh/")
    if not any(str(k.get("public_key") or k.get("ssh_key") or "").split()[:2] == public[:2] for k in listed):
        sim.call("POST", "/api/v0/ssh/", json={"ssh_key": " ".join(public)})


def rent_ready(sim: Sim, key: Path, deadline: Deadline) -> tuple[int, dict[str, Any]]:
    """Rent the cheapest offer on a machine without defects; wait until it runs and answers ``ssh true``."""
    register_key(sim, key)
    instance_id = rent(sim, pick_offers(sim, 1)[0], label="bench-ssh")
    end = time.monotonic() + deadline.cap(120)  # one limit for running and ssh together
    _, row = wait_running(sim, instance_id, deadline, timeout=120, poll=0.05)
    host, port = direct_endpoint(row)
    user = sim.call("GET", "/_sim/info")["ssh_user"]
    wait_ssh(host, port, user, key, deadline, timeout=max(0.0, end - time.monotonic()), retry=0.1)
    return instance_id, {"host": host, "port": port, "user": user, "machine_id": row["machine_id"]}


def ssh_playbook(path: Path, count: int) -> Path:
    tasks = [{"name": f"command true {i}", "ansible.builtin.command": "true", "changed_when": False}
             for i in range(1, count + 1)]
    tasks += [{"name": f"stat {i}", "ansible.builtin.stat": {"path": "/etc/hostname"}} for i in range(1, count + 1)]
    path.write_text(json.dumps([{"name": "trivial tasks", "hosts": "bench", "gather_facts": False,
                                 "tasks": tasks}], indent=1) + "\n")  # JSON is YAML
    return path


def combo_env(base: dict[str, str], pipelining: bool, persist: bool, control_dir: Path,
              timer: Path) -> dict[str, str]:
    return {**base, "ANSIBLE_PIPELINING": str(pipelining),
            "ANSIBLE_SSH_ARGS": f"{PERSIST_ARGS} {HOST_KEY_ARGS}" if persist else HOST_KEY_ARGS,
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_dir), "BENCH_TIMER_OUT": str(timer)}


def resolved_settings(env: dict[str, str]) -> dict[str, Any]:
    """What ansible-config says the ssh connection's pipelining and ssh_args are under ``env``."""
    out = subprocess.run([str(BIN / "ansible-config"), "dump", "--only-changed", "-t", "connection",
                          "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    found: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        for section in json.loads(out.stdout):
            for entry in section.get("ssh", []):
                if entry["name"] in ("pipelining", "ssh_args"):
                    found[entry["name"]] = entry["value"]
    return found


def label_of(pipelining: bool, persist: bool) -> str:
    return f"pipelining {'on ' if pipelining else 'off'} / ControlPersist {'on ' if persist else 'off'}"


def ssh_run(base: dict[str, str], root: Path, playbook: Path, inventory: Path, pipelining: bool, persist: bool,
            tag: str, count: int, deadline: Deadline, timeout: float) -> dict[str, Any]:
    control_dir = root / "cp" / tag  # short: a control socket's path must stay under ~100 bytes
    control_dir.mkdir(parents=True)
    timer = root / "ssh" / f"{tag}.jsonl"
    env = combo_env(base, pipelining, persist, control_dir, timer)
    try:
        run = run_playbook([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)], env,
                           root / "ssh" / f"{tag}.log", deadline.cap(timeout))
    finally:
        sockets = close_masters(control_dir)
    if run["rc"] != 0:
        raise BenchError(f"{label_of(pipelining, persist)}: ansible-playbook exited {run['rc']}:\n"
                         f"{(root / 'ssh' / f'{tag}.log').read_text(errors='replace')[-2000:]}")
    tasks = read_timer(timer)["tasks"]
    if len(tasks) != 2 * count or any(t["statuses"] != ["ok"] for t in tasks):
        raise BenchError(f"{label_of(pipelining, persist)}: expected {2 * count} ok tasks, got "
                         f"{[(t['name'], t['statuses']) for t in tasks][:5]}...")
    durations = [t["duration_s"] for t in tasks]
    return {"pipelining": pipelining, "persist": persist, "wall_s": run["wall_s"],
            "control_sockets": sockets,
            "first_task_s": durations[0],
            "per_task_s": sum(durations) / len(durations),
            "per_task_after_first_s": sum(durations[1:]) / (len(durations) - 1),
            "command_s": statistics.median(durations[1:count]),
            "stat_s": statistics.median(durations[count:])}


def bench_ssh(sim: Sim, root: Path, key: Path, args: argparse.Namespace, deadline: Deadline,
              results: dict[str, Any], say: Callable[[str], None]) -> int:
    say(f"\n2. per-task cost over SSH: {args.tasks} x command true + {args.tasks} x stat, pipelining x "
        f"ControlPersist, {args.repeats} rounds (interleaved, after 1 warm-up run)")
    section: dict[str, Any] = {"runs": []}
    results["ssh"] = section
    (root / "ssh").mkdir()
    base = demo_env(sim, root, key)
    instance_id: int | None = None
    try:
        started = time.monotonic()
        instance_id, endpoint = rent_ready(sim, key, deadline)
        section["instance"] = {"id": instance_id, **endpoint, "rent_to_ssh_s": time.monotonic() - started}
        say(f"  instance {instance_id} on machine {endpoint['machine_id']} at {endpoint['host']}:{endpoint['port']} "
            f"answers ssh true {section['instance']['rent_to_ssh_s']:.2f}s after PUT")
        inventory = root / "ssh" / "inventory.ini"
        inventory.write_text(f"bench ansible_host={endpoint['host']} ansible_port={endpoint['port']} "
                             f"ansible_user={endpoint['user']} ansible_ssh_private_key_file={key} "
                             "ansible_python_interpreter=/usr/bin/python3\n")
        playbook = ssh_playbook(root / "ssh" / "trivial.yml", args.tasks)
        settings = {}
        for pipelining, persist in COMBOS:
            got = resolved_settings(combo_env(base, pipelining, persist, root / "cp", root / "ssh" / "x.jsonl"))
            want = {"pipelining": pipelining,
                    "ssh_args": f"{PERSIST_ARGS} {HOST_KEY_ARGS}" if persist else HOST_KEY_ARGS}
            if got != want:
                raise BenchError(f"ansible-config resolves {got}, expected {want}")
            settings[label_of(pipelining, persist)] = got
        section["settings"] = settings
        say(f"  ansible-config confirms each combination (ANSIBLE_SSH_ARGS: '{HOST_KEY_ARGS}', with "
            f"'{PERSIST_ARGS}' for ControlPersist on; a fresh ANSIBLE_SSH_CONTROL_PATH_DIR per run, its "
            "master closed after)")
        ssh_run(base, root, playbook, inventory, True, True, "warm", args.tasks, deadline, args.run_timeout)
        for round_index in range(args.repeats):
            order = COMBOS[round_index % 4:] + COMBOS[:round_index % 4]
            for pipelining, persist in order:
                tag = f"{round_index}{'p' if pipelining else 'n'}{'c' if persist else 'n'}"
                row = ssh_run(base, root, playbook, inventory, pipelining, persist, tag, args.tasks, deadline,
                              args.run_timeout)
                row["round"] = round_index
                section["runs"].append(row)
                if row["control_sockets"] != (1 if persist else 0):
                    raise BenchError(f"{label_of(pipelining, persist)}: {row['control_sockets']} control "
                                     "sockets after the run (expected 1 with ControlPersist, else 0)")
    except BenchError as exc:
        results["errors"].append(f"ssh: {exc}")
        say(f"  FAILED: {exc}")
        return 1
    finally:
        if instance_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                sim.client.delete(f"/api/v0/instances/{instance_id}/")
    print_ssh(section, args.tasks, say)
    return 0


def print_ssh(section: dict[str, Any], count: int, say: Callable[[str], None]) -> None:
    table = {}
    for pipelining, persist in COMBOS:
        rows = [r for r in section["runs"] if (r["pipelining"], r["persist"]) == (pipelining, persist)]
        table[(pipelining, persist)] = {k: statistics.median(r[k] for r in rows)
                                        for k in ("wall_s", "first_task_s", "per_task_s", "per_task_after_first_s",
                                                  "command_s", "stat_s")}
    base = table[(True, True)]
    title = f"medians of {len(section['runs']) // 4} runs"
    say(f"\n  {title:31} {'wall':>7} {'1st task':>8} {'per task':>8} "
        f"{'after 1st':>9} {'command':>8} {'stat':>8} {'wall':>7} {'per task':>8}")
    say(f"  {'':31} {'s':>7} {'ms':>8} {'ms':>8} {'ms':>9} {'ms':>8} {'ms':>8} {'x on/on':>7} {'x on/on':>8}")
    for combo, row in table.items():
        say(f"  {label_of(*combo):31} {row['wall_s']:7.2f} {1000 * row['first_task_s']:8.0f} "
            f"{1000 * row['per_task_s']:8.0f} {1000 * row['per_task_after_first_s']:9.0f} "
            f"{1000 * row['command_s']:8.0f} {1000 * row['stat_s']:8.0f} {row['wall_s'] / base['wall_s']:7.2f} "
            f"{row['per_task_after_first_s'] / base['per_task_after_first_s']:8.2f}")
    say(f"  1st task: connection set-up plus the first module; per task: all {2 * count} tasks' time / "
        f"{2 * count}; after 1st: the other {2 * count - 1}; command, stat: medians of each kind (1st excluded); "
        "ratios: wall and 'after 1st' against both on")
    section["table"] = {label_of(*combo): row for combo, row in table.items()}


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=1000.0,
                        help="vastsim --speed; at 1000 Vast's modelled waits are ~50 ms (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="runs of train.yml; 0 skips part 1 (default 3)")
    parser.add_argument("--probe-seconds", type=float, default=1.0,
                        help="-e provision_probe_max_seconds for train.yml (examples/run.yml leaves the "
                        "role's 8); 0 passes -e provision_probe=false, which lets a slow-link host through "
                        "(default 1)")
    parser.add_argument("--top", type=int, default=12, help="slowest tasks listed (default 12)")
    parser.add_argument("--strategy", default="",
                        help="ANSIBLE_STRATEGY for every ansible-playbook run, e.g. mitogen_linear (mitogen's "
                        "strategy plugins are found in the installed ansible_mitogen); default: ansible.cfg's")
    parser.add_argument("--manual", type=int, default=0,
                        help="also run bench/manual_lifecycle.py's scripted manual lifecycle this many times on the "
                        "same simulator (the machines train.yml rejected excluded) and compare (default 0)")
    parser.add_argument("--good-hosts-only", action="store_true",
                        help="exclude the catalogue's defective machines from train.yml's offers too, so that both "
                        "it and the manual script rent the same good host and nothing is rejected: orchestration "
                        "against orchestration (default: the demo's market, where train.yml rejects a slow host first)")
    parser.add_argument("--tasks", type=int, default=20,
                        help="K: part 2's playbook has K command and K stat tasks (default 20)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="R: rounds of the 4 combinations in part 2; 0 skips it (default 3)")
    parser.add_argument("--run-timeout", type=float, default=600.0,
                        help="limit of one ansible-playbook run in seconds (default 600)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=1800.0,
                        help="overall time limit in seconds (default 1800)")
    args = parser.parse_args(argv)
    if args.runs < 0 or args.repeats < 0 or args.manual < 0 or args.tasks < 2 or args.speed <= 0 or args.top < 1:
        parser.error("--runs, --repeats and --manual must be >= 0, --tasks >= 2, --top >= 1, --speed > 0")
    for tool in ("ssh", "ssh-keygen", "ip", "rsync", "tmux"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found on PATH")

    try:
        STRATEGY.update(strategy_env(args.strategy))
    except BenchError as exc:
        parser.error(str(exc))
    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-bench-"))
    results: dict[str, Any] = {
        "params": {k: v for k, v in vars(args).items() if k != "json"},
        "host": host_info(euid=os.geteuid()),
        "errors": [],
    }
    sim: Sim | None = None
    outcome = Outcome(results, say)
    try:
        with outcome.guard():
            key = root / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vastsim-bench", "-f", str(key)],
                           check=True, timeout=30)
            write_callback(root)
            started = time.monotonic()
            # No --api-key: the simulator makes one and the bench reads STATE/api_key, as demo.sh does.
            sim = start_sim(root, deadline, speed=args.speed, api_key=None, credit=1_000_000)
            info = sim.call("GET", "/_sim/info")
            results["sim"] = {"host_mode": info["host_mode"], "timings": info["timings"],
                              "start_s": time.monotonic() - started}
            modelled = sum(info["timings"][k] for k in ("provisioning", "created", "loading"))
            args.defective = {int(m["machine_id"]) for m in sim.call("GET", "/_sim/machines")["machines"]
                              if m["defects"]}
            say(f"vastsim pid {sim.pid} at {sim.url}: host mode {info['host_mode']}, speed {args.speed:g} "
                f"(modelled create->running {modelled:.3f}s), started in {results['sim']['start_s']:.2f}s; "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, kernel {platform.release()}; tasks timed by a "
                f"callback in {root}")
            if args.runs:
                outcome.code |= bench_train(sim, root, key, args, deadline, results, say)
            if args.manual:
                outcome.code |= bench_manual(sim, root, key, args, deadline, results, say)
            if args.repeats:
                outcome.code |= bench_ssh(sim, root, key, args, deadline, results, say)
    finally:
        if sim is not None and not check_ledger_and_stop(sim, results, say):
            outcome.fail()
        close_masters(root / "home" / ".ansible" / "cp")
        results["loadavg_end"] = os.getloadavg()
        say(f"load average at the end: {' '.join(f'{x:.2f}' for x in results['loadavg_end'])} "
            f"({os.cpu_count()} CPUs; other work on the machine skews every figure)")
        write_results(args.json, results, say)
        shutil.rmtree(root, ignore_errors=True)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
