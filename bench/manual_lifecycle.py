#!/usr/bin/env python3
"""The seeds' manual lifecycle, scripted with the official ``vastai`` CLI, ssh, rsync and tmux, against vastsim:
what an experienced user types by hand, and the yardstick for train.yml's orchestration overhead.

    search offers -> create instance -> wait running -> ssh answers -> rsync the code -> start the training in
    tmux -> poll (exit code, log tail) -> rsync the checkpoints and the log back -> destroy -> verify gone

The same job as ``examples/run.yml`` (examples/tiny_trainer, the same command and poll interval), on the same
simulator as train.yml. No guard rails: no estimate, no bandwidth probe, no GPU check, no smoke test, no uv
environment (the trainer needs only the standard library), no checksum of the checkpoints.

Standalone it starts its own simulator (as every bench script does, through ``_sim.py``):

    .venv/bin/python bench/manual_lifecycle.py --runs 3 --json /tmp/manual.json

``bench/train_overhead.py --manual N`` runs it N times on the train runs' simulator and prints both side by side.
``run_manual()`` is that entry point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from _sim import (
    BIN,
    REPO,
    SSH_OPTIONS,
    BenchError,
    Deadline,
    Outcome,
    Sim,
    client_env,
    host_info,
    say,
    start_sim,
    stop_and_check,
    summary,
    write_results,
)

VASTAI = BIN / "vastai"
REMOTE = "/workspace/run"
STEPS = ("ssh key", "search", "create", "wait running", "wait ssh", "rsync code", "start tmux", "poll",
         "rsync back", "destroy", "verify gone")


def example_run() -> dict[str, Any]:
    """examples/run.yml's query, order, image, disk, command and poll interval."""
    run = yaml.safe_load((REPO / "examples" / "run.yml").read_text())
    return {k: run[f"run_{k}"] for k in ("query", "order", "image", "disk_gb", "command", "poll_interval_s")}


class Manual:
    """One scripted manual run; every command is a subprocess, as typed in a shell."""

    def __init__(self, sim: Sim, root: Path, key: Path, label: str, *, exclude_machines: set[int],
                 poll_s: float | None = None, wait_poll_s: float = 1.0, deadline: Deadline) -> None:
        self.sim, self.root, self.key, self.label = sim, root, key, label
        self.env = {**client_env(sim, root), "VASTAI_NO_UPDATE_CHECK": "1", "COLUMNS": "300", "TERM": "dumb"}
        self.job = example_run()
        self.poll_s = self.job["poll_interval_s"] if poll_s is None else poll_s
        self.wait_poll_s = wait_poll_s
        self.exclude = exclude_machines
        self.deadline = deadline
        self.steps: dict[str, float] = {}
        self.commands = 0
        self.instance_id: int | None = None
        self.ssh: list[str] = []
        self.remote = ""
        self.rsync_e = ""

    # ---------------------------------------------------------------------------------- plumbing

    def sh(self, argv: list[str], *, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.commands += 1
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=self.root,
                              stdin=subprocess.DEVNULL, timeout=self.deadline.cap(timeout))
        if check and done.returncode != 0:
            raise BenchError(f"{' '.join(argv[:4])}... exited {done.returncode}: {(done.stderr or done.stdout)[-800:]}")
        return done

    def vastai(self, *args: str, raw: bool = True) -> Any:
        done = self.sh([str(VASTAI), *args, *(["--raw"] if raw else [])])
        if "Traceback (most recent call last)" in done.stdout + done.stderr:
            raise BenchError(f"vastai {' '.join(args)} crashed: {done.stderr[-800:]}")
        if not raw:
            return done.stdout
        try:
            return json.loads(done.stdout) if done.stdout.strip() else None
        except ValueError:
            raise BenchError(f"vastai {' '.join(args)} --raw printed no JSON: {done.stdout[:300]!r}") from None

    def remote_sh(self, command: str, *, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.sh([*self.ssh, command], check=check, timeout=timeout)

    def step(self, name: str, work: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            return work()
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.monotonic() - started

    # ------------------------------------------------------------------------------------- steps

    def register_key(self) -> None:
        public = self.key.with_suffix(".pub").read_text().strip()
        listed = self.vastai("show", "ssh-keys") or []
        if not any(str(k.get("public_key") or k.get("ssh_key") or "").split()[:2] == public.split()[:2]
                   for k in listed):
            self.vastai("create", "ssh-key", public, raw=False)

    def search(self) -> dict[str, Any]:
        offers = self.vastai("search", "offers", self.job["query"], "-o", self.job["order"],
                             "--storage", str(self.job["disk_gb"]))
        usable = [o for o in offers or [] if int(o["machine_id"]) not in self.exclude]
        if not usable:
            raise BenchError(f"no offer for {self.job['query']!r} (excluded machines {sorted(self.exclude)})")
        return usable[0]

    def create(self, offer: dict[str, Any]) -> int:
        body = self.vastai("create", "instance", str(offer["id"]), "--image", self.job["image"], "--disk",
                           str(self.job["disk_gb"]), "--ssh", "--direct", "--label", self.label)
        if not body or not body.get("success"):
            raise BenchError(f"create instance {offer['id']}: {body}")
        self.instance_id = int(body["new_contract"])
        return self.instance_id

    def wait_running(self) -> None:
        end = time.monotonic() + self.deadline.cap(180)
        while time.monotonic() < end:
            row = (self.vastai("show", "instance", str(self.instance_id)) or {})
            row = row.get("instances", row) if isinstance(row, dict) else {}
            if (row or {}).get("actual_status") == "running":
                return
            time.sleep(self.wait_poll_s)
        raise BenchError(f"instance {self.instance_id} not running within 180 s")

    def wait_ssh(self) -> None:
        url = self.vastai("ssh-url", str(self.instance_id), raw=False).strip().splitlines()[-1]
        user_host, port = url.removeprefix("ssh://").rsplit(":", 1)
        user, host = user_host.split("@", 1)
        self.ssh = ["ssh", *SSH_OPTIONS, "-i", str(self.key), "-p", port, f"{user}@{host}"]
        self.remote = f"{user}@{host}"
        self.rsync_e = " ".join(shlex.quote(a) for a in ["ssh", *SSH_OPTIONS, "-i", str(self.key), "-p", port])
        end = time.monotonic() + self.deadline.cap(120)
        while time.monotonic() < end:
            if self.remote_sh("true", check=False, timeout=15).returncode == 0:
                return
            time.sleep(0.2)
        raise BenchError(f"ssh to instance {self.instance_id} did not answer within 120 s")

    def rsync_code(self) -> None:
        self.sh(["rsync", "-az", "--delete", "--exclude=__pycache__", "-e", self.rsync_e,
                 f"--rsync-path=mkdir -p {REMOTE}/code && rsync",
                 f"{REPO / 'examples' / 'tiny_trainer'}/", f"{self.remote}:{REMOTE}/code/"])

    def start(self) -> None:
        inner = (f"cd {REMOTE}/code && {self.job['command']} > {REMOTE}/run.log 2>&1; "
                 f"echo $? > {REMOTE}/EXIT_CODE")
        self.remote_sh(f"rm -f {REMOTE}/EXIT_CODE && tmux new-session -d -s train {shlex.quote(inner)}")

    def poll(self) -> int:
        end = time.monotonic() + self.deadline.cap(1800)
        while time.monotonic() < end:
            time.sleep(self.poll_s)
            done = self.remote_sh(f"cat {REMOTE}/EXIT_CODE 2>/dev/null; tail -n 2 {REMOTE}/run.log", check=False)
            first = (done.stdout.splitlines() or [""])[0].strip()
            if first.isdigit():
                return int(first)
        raise BenchError("the training did not end within 1800 s")

    def rsync_back(self, results: Path) -> None:
        results.mkdir(parents=True, exist_ok=True)
        self.sh(["rsync", "-az", "-e", self.rsync_e, f"{self.remote}:{REMOTE}/output/", f"{results}/checkpoints/"])
        self.sh(["rsync", "-az", "-e", self.rsync_e, f"{self.remote}:{REMOTE}/run.log",
                 f"{self.remote}:{REMOTE}/EXIT_CODE", f"{results}/"])

    def destroy(self) -> None:
        self.vastai("destroy", "instance", str(self.instance_id), "-y", raw=False)

    def verify_gone(self) -> None:
        end = time.monotonic() + self.deadline.cap(60)
        while time.monotonic() < end:
            body = self.vastai("show", "instance", str(self.instance_id))
            if not body or not (body.get("instances") if isinstance(body, dict) and "instances" in body else body):
                return
            time.sleep(0.5)
        raise BenchError(f"instance {self.instance_id} still listed after destroy")

    # --------------------------------------------------------------------------------------- run

    def run(self, results: Path) -> dict[str, Any]:
        started = time.monotonic()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            self.step("ssh key", self.register_key)
            offer = self.step("search", self.search)
            self.step("create", lambda: self.create(offer))
            self.step("wait running", self.wait_running)
            self.step("wait ssh", self.wait_ssh)
            self.step("rsync code", self.rsync_code)
            self.step("start tmux", self.start)
            code = self.step("poll", self.poll)
            self.step("rsync back", lambda: self.rsync_back(results))
        finally:
            if self.instance_id is not None:
                self.step("destroy", self.destroy)
                self.step("verify gone", self.verify_gone)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - cpu_before.ru_utime) + (after.ru_stime - cpu_before.ru_stime)
        if code != 0:
            raise BenchError(f"the training exited {code}: {(results / 'run.log').read_text()[-800:]}")
        checkpoints = sorted(p.name for p in (results / "checkpoints").glob("checkpoint-*"))
        return {"wall_s": wall, "controller_cpu_s": cpu, "steps": dict(self.steps), "commands": self.commands,
                "instance_id": self.instance_id, "offer_machine": offer["machine_id"], "checkpoints": checkpoints}


def run_manual(sim: Sim, root: Path, key: Path, index: int, *, exclude_machines: set[int], deadline: Deadline,
               poll_s: float | None = None) -> dict[str, Any]:
    """One manual run on ``sim`` (its instance watched for create -> running, as train_overhead does); the figures."""
    from train_overhead import InstanceWatcher, summary_line  # the same measures as train.yml's

    label = f"bench-manual-{index}"
    run_dir = root / "manual" / str(index)
    run_dir.mkdir(parents=True)
    manual = Manual(sim, run_dir, key, label, exclude_machines=exclude_machines, poll_s=poll_s, deadline=deadline)
    with InstanceWatcher(sim) as watcher:
        out = manual.run(run_dir / "results")
    seen = [i for i in watcher.seen.values() if i["label"] == label]
    if len(seen) != 1:
        raise BenchError(f"{label}: saw {len(seen)} instances running (the watcher polls every 0.1 s)")
    row = summary_line(run_dir / "results" / "run.log")
    if row is None:
        raise BenchError(f"{label}: no train_runtime summary line in run.log")
    out["create_to_running_s"] = seen[0]["create_to_running_s"]
    out["train_runtime_s"] = float(row["train_runtime"])
    out["overhead_s"] = out["wall_s"] - out["create_to_running_s"] - out["train_runtime_s"]
    out["label"] = label
    return out


def print_manual(runs: list[dict[str, Any]], say: Callable[[str], None]) -> dict[str, Any]:
    stats = {k: summary([r[k] for r in runs]) for k in
             ("wall_s", "create_to_running_s", "train_runtime_s", "overhead_s", "controller_cpu_s")}
    labels = {"wall_s": "wall (the whole script)", "create_to_running_s": "  create -> running (API)",
              "train_runtime_s": "  training (train_runtime)", "overhead_s": "overhead = wall - wait - train",
              "controller_cpu_s": "controller CPU (every command)"}
    say(f"  {'':44} {'min':>8} {'median':>8} {'max':>8}")
    for key, label in labels.items():
        s = stats[key]
        say(f"  {label:44} {s['min']:8.3f} {s['median']:8.3f} {s['max']:8.3f}  s")
    say("  by step (median s): " + ", ".join(
        f"{name} {statistics.median(r['steps'].get(name, 0.0) for r in runs):.2f}" for name in STEPS))
    say(f"  commands per run: {statistics.median(r['commands'] for r in runs):g} (vastai, ssh, rsync); checkpoints "
        f"brought back: {len(runs[0]['checkpoints'])}")
    return stats


def register_key_file(root: Path) -> Path:
    key = root / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vastsim-bench", "-f", str(key)],
                   check=True, timeout=30)
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=1000.0, help="vastsim --speed (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="manual runs (default 3)")
    parser.add_argument("--poll-seconds", type=float, default=None,
                        help="seconds between two polls of the run (default: examples/run.yml's run_poll_interval_s)")
    parser.add_argument("--exclude-machines", default="",
                        help="comma-separated machine ids never rented (what a probe rejected elsewhere)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=1200.0, help="overall time limit in seconds (default 1200)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    for tool in ("ssh", "ssh-keygen", "rsync", "tmux"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} not found on PATH")
    if not VASTAI.exists():
        parser.error(f"{VASTAI} not found (pip install vastai==1.9.1 into the venv)")
    exclude = {int(m) for m in args.exclude_machines.split(",") if m.strip()}
    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-manual-"))
    results: dict[str, Any] = {"params": {k: v for k, v in vars(args).items() if k != "json"},
                               "host": host_info(euid=os.geteuid()), "errors": []}
    sim: Sim | None = None
    outcome = Outcome(results, say)
    try:
        with outcome.guard():
            key = register_key_file(root)
            sim = start_sim(root, deadline, speed=args.speed, credit=1_000_000)
            info = sim.call("GET", "/_sim/info")
            say(f"vastsim pid {sim.pid} at {sim.url}: host mode {info['host_mode']}, speed {args.speed:g}; "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, kernel {platform.release()}")
            say(f"\nthe seeds' manual lifecycle with vastai {VASTAI.name}, ssh, rsync, tmux; {args.runs} runs")
            runs = []
            for index in range(1, args.runs + 1):
                run = run_manual(sim, root, key, index, exclude_machines=exclude, deadline=deadline,
                                 poll_s=args.poll_seconds)
                runs.append(run)
                say(f"  run {index}: wall {run['wall_s']:.2f}s on machine {run['offer_machine']}, train_runtime "
                    f"{run['train_runtime_s']:.2f}s, overhead {run['overhead_s']:.2f}s, controller CPU "
                    f"{run['controller_cpu_s']:.2f}s, {run['commands']} commands")
            results["runs"] = runs
            say("")
            results["summary"] = print_manual(runs, say)
    finally:
        if sim is not None:
            with contextlib.suppress(Exception):
                left = [int(i) for i in sim.call("GET", "/_sim/ledger")["totals"]["open_instance_ids"]]
                for instance_id in left:
                    sim.client.delete(f"/api/v0/instances/{instance_id}/")
                if left:
                    results["errors"].append(f"instances left open: {left}")
                    outcome.fail()
            if not stop_and_check(sim, results, say, links=True):
                outcome.fail()
        write_results(args.json, results, say)
        shutil.rmtree(root, ignore_errors=True)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
