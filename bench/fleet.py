#!/usr/bin/env python3
"""Fleet scaling: N trials through playbooks/sweep.yml, all at once (sweep_max_parallel N), for N = 1, 4, 8, 16.

    .venv/bin/python bench/fleet.py --sizes 1,4,8,16 --speeds 20,1 --json /tmp/fleet.json

Run it as root (instances are real sshds in their own namespaces, as in sim_ready.py). The rounds run once for
each of --speeds, vastsim's --speed (default 20, the demo's, then 1): one simulator per speed (access log counted)
serves its rounds; each round has its own ledger, results and exclusions, a query without the catalogue's
deliberately bad hosts (so every trial rents once), and trials that differ only by --seed.

The two speeds answer different questions. At speed 20 an instance runs ~2.4 s after it is rented instead of
Vast's ~47 s, but the controller's work is not 20 times faster, and on this machine the controller shares its cores
with the simulator and with every simulated host's sshd and Python: the ratio measures the CPU a trial costs. At
speed 1 the instances take Vast's own time to start, as they do for a user of the real market, and the ratio says
how much the controller delays a fleet there. For each speed and N it prints:

- time until all N trials are training (the progress callback's first "training" of each trial, from the start
  of ansible-playbook) and the total wall time, each with its ratio to N = 1 (1.0 would be perfect parallelism;
  N would be fully serial);
- controller CPU-seconds (user + system of ansible-playbook and everything under it: the trials' playbooks,
  their workers, ssh and rsync; the simulator is not under it) per trial and per task (tasks counted by the
  progress callback in every trial, plus the sweep's own);
- API requests per poll interval while all N trials were training (every request the simulator logged in that
  window, divided by the window's length in poll intervals), and per trial.

It exits non-zero if a trial did not complete, an instance was left open or the simulator left anything behind.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _sim import (
    BIN,
    REPO,
    BenchError,
    Deadline,
    Outcome,
    Sim,
    ansible_env,
    host_info,
    say,
    start_sim,
    stop_and_check,
    write_results,
)

from mlops_vast.events import PHASES  # in the order a trial goes through them
from mlops_vast.sim.state import REAL_TIMINGS


class LogClock:
    """Maps wall-clock times to positions in the simulator's access log (sampled every ``every`` seconds)."""

    def __init__(self, sim: Sim, every: float = 0.25) -> None:
        self.sim, self.every = sim, every
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), len(self.sim.stdout)))
            self.stop.wait(self.every)

    def __enter__(self) -> LogClock:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def position(self, when: float) -> int:
        before = [index for t, index in self.samples if t <= when]
        return before[-1] if before else 0


def api_requests(sim: Sim, start: int, end: int) -> list[str]:
    return [r for r in sim.requests_between(start, end) if " /api/" in f" {r.split(' ', 1)[-1]}"]


def good_query(sim: Sim) -> str:
    bad = [m["machine_id"] for m in sim.call("GET", "/_sim/machines")["machines"] if m["defects"]]
    return f"reliability > 0.95 num_gpus=1 machine_id notin [{','.join(map(str, bad))}]"


def one_round(sim: Sim, n: int, root: Path, args: argparse.Namespace, deadline: Deadline,
              name: str = "") -> dict[str, Any]:
    work = root / (name or f"n{n}")
    work.mkdir(parents=True)
    template_cache = args.template_cache_dir or work / "template-cache"  # cold: this round's own, empty
    env = ansible_env(sim, work, MLOPS_VAST_LEDGER=str(work / "contracts.jsonl"),
                      MLOPS_VAST_EXCLUSIONS=str(work / "excluded.json"), MLOPS_VAST_TEMPLATE_CACHE=str(template_cache),
                      **({"ANSIBLE_STRATEGY": args.strategy} if args.strategy else {}))
    results_dir = work / "results"
    extra = {
        "sweep_name": f"fleet-{n}", "sweep_trials": [{"seed": i + 1} for i in range(n)], "sweep_grid": {},
        "sweep_max_parallel": n, "sweep_budget_usd": 0, "sweep_results_dir": str(results_dir),
        "sweep_trial_vars": {"provision_probe_max_seconds": 1},
        **({"sweep_trial_strategy": args.strategy} if args.strategy else {}),
        "run_query": good_query(sim), "run_max_dph": 5.0,
        "run_command": (f"python3 train.py --output_dir /workspace/run/output --max_steps {args.steps} "
                        f"--save_steps {max(1, args.steps // 4)} --step_seconds {args.step_seconds}"),
        "run_poll_interval_s": args.poll, "run_sync_interval_s": args.sync,
    }
    command = [str(BIN / "ansible-playbook"), "playbooks/sweep.yml", "-e", "@examples/sweep.yml",
               "-e", json.dumps(extra)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with LogClock(sim) as clock:
        started = time.time()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=deadline.cap(args.round_timeout))
        ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (work / "sweep.log").write_text(done.stdout + done.stderr)
    rows_path = results_dir / "trials.json"
    if not rows_path.exists():
        raise BenchError(f"N={n}: the sweep wrote no trials.json (rc {done.returncode}); see {work}/sweep.log:\n"
                         + done.stdout[-3000:])
    rows = json.loads(rows_path.read_text())
    if done.returncode != 0 or any(row["outcome"] != "completed" for row in rows):
        raise BenchError(f"N={n}: not every trial completed: {[(r['id'], r['outcome'], r['message']) for r in rows]}")
    progress = [json.loads((Path(row["results_dir"]) / "progress.json").read_text()) for row in rows]
    training = [p["phases"]["training"] for p in progress]
    phases = {phase: round(statistics.median(p["phases"][phase] - started for p in progress), 2)
              for phase in PHASES if all(phase in p["phases"] for p in progress)}
    teardown = [p["phases"].get("teardown", ended) for p in progress]
    window = (max(training), min(teardown))  # every trial training
    requests = api_requests(sim, clock.position(window[0]), clock.position(window[1])) \
        if window[1] > window[0] else []
    intervals = (window[1] - window[0]) / args.poll if window[1] > window[0] else 0
    tasks = sum(int(p.get("tasks") or 0) for p in progress) + done.stdout.count("\nTASK [")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    totals = sim.call("GET", "/_sim/ledger")["totals"]
    if totals["open_instances"]:
        raise BenchError(f"N={n}: instances left open: {totals['open_instance_ids']}")
    return {
        "n": n, "all_training_s": round(max(training) - started, 2),
        "median_training_s": round(statistics.median(t - started for t in training), 2),
        "wall_s": round(ended - started, 2), "cpu_s": round(cpu, 2), "cpu_per_trial_s": round(cpu / n, 2),
        "tasks": tasks, "tasks_per_trial": round(tasks / n, 1), "cpu_per_task_s": round(cpu / max(1, tasks), 3),
        "window_s": round(window[1] - window[0], 2), "requests_in_window": len(requests),
        "requests_per_interval": round(len(requests) / intervals, 2) if intervals >= 1 else None,
        "requests_per_trial_interval": round(len(requests) / intervals / n, 2) if intervals >= 1 else None,
        "request_paths": sorted({r.split("?")[0] for r in requests})[:10],
        "cost_usd": round(sum(float(row["cost_usd"] or 0) for row in rows), 5),
        "phase_median_s": phases,
    }


def add_ratios(rounds: list[dict[str, Any]]) -> None:
    """Each round's times as multiples of the first round's (N = 1 unless --sizes leaves it out)."""
    base = rounds[0]
    for r in rounds:
        r["all_training_ratio"] = round(r["all_training_s"] / base["all_training_s"], 2)
        r["wall_ratio"] = round(r["wall_s"] / base["wall_s"], 2)


def print_phases(rounds: list[dict[str, Any]]) -> None:
    """When a trial reached each phase (median, seconds from ansible-playbook's start): where the wait grows
    with N."""
    shown = [phase for phase in PHASES if any(phase in r["phase_median_s"] for r in rounds)]
    say(f"  {'N':>3} " + " ".join(f"{phase:>9}" for phase in shown))
    for r in rounds:
        cells = " ".join(f"{r['phase_median_s'][p]:8.1f}s" if p in r["phase_median_s"] else f"{'-':>9}" for p in shown)
        say(f"  {r['n']:3d} {cells}")


def print_table(rounds: list[dict[str, Any]]) -> None:
    say(f"  {'N':>3} {'all training':>13} {'ratio':>6} {'wall':>8} {'ratio':>6} {'CPU-s':>7} "
        f"{'CPU-s/trial':>11} {'tasks/trial':>11} {'CPU-s/task':>10} {'API req/poll':>12} {'per trial':>9}")
    for r in rounds:
        per_poll = "-" if r["requests_per_interval"] is None else f"{r['requests_per_interval']:.2f}"
        per_trial = "-" if r["requests_per_trial_interval"] is None else f"{r['requests_per_trial_interval']:.2f}"
        say(f"  {r['n']:3d} {r['all_training_s']:12.1f}s {r['all_training_ratio']:6.2f} {r['wall_s']:7.1f}s "
            f"{r['wall_ratio']:6.2f} {r['cpu_s']:7.1f} {r['cpu_per_trial_s']:11.2f} "
            f"{r['tasks_per_trial']:11.1f} {r['cpu_per_task_s']:10.3f} {per_poll:>12} {per_trial:>9}")


def speed_title(speed: float) -> str:
    loading = sum(REAL_TIMINGS[phase] for phase in ("provisioning", "created", "loading"))
    if speed == 1:
        return f"vastsim --speed 1: Vast's own timings (an instance runs ~{loading:.0f} s after it is rented)"
    return (f"vastsim --speed {speed:g}: Vast's timings {speed:g}x faster (an instance runs ~{loading / speed:.1f} s "
            f"after it is rented, not ~{loading:.0f} s; the controller's CPU is not faster)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,4,8,16", help="comma-separated N (default 1,4,8,16)")
    parser.add_argument("--speeds", default="20,1",
                        help="vastsim's --speed for each set of rounds, comma-separated (default 20,1: the demo's, "
                        "then Vast's own timings)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per trial (default 300)")
    parser.add_argument("--step-seconds", type=float, default=0.1, help="seconds per step (default 0.1)")
    parser.add_argument("--poll", type=float, default=5.0, help="run_poll_interval_s (default 5, as examples)")
    parser.add_argument("--sync", type=float, default=30.0, help="run_sync_interval_s (default 30, as examples)")
    parser.add_argument("--round-timeout", type=float, default=1500.0, help="one sweep's limit (default 1500 s)")
    parser.add_argument("--strategy", default="",
                        help="the strategy of the sweep (ANSIBLE_STRATEGY) and of its trials (sweep_trial_strategy), "
                        "e.g. ansible.builtin.linear; default: ansible.cfg's for the sweep, sweep_trial_strategy's "
                        "default (auto: mlops.vast.linear) for the trials")
    parser.add_argument("--template-cache", choices=("warm", "cold"), default="warm",
                        help="the trials' compiled-template cache (mlops.vast.linear's, MLOPS_VAST_TEMPLATE_CACHE): "
                        "warm (default), one folder for every round, filled by an unmeasured one-trial round first, "
                        "as any earlier run on the controller leaves it; cold, an empty folder for each round, a "
                        "controller's very first sweep")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=5400.0, help="overall limit in seconds (default 5400)")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({int(n) for n in args.sizes.split(",") if n.strip()})
        speeds = list(dict.fromkeys(float(s) for s in args.speeds.split(",") if s.strip()))
    except ValueError:
        parser.error("--sizes and --speeds are comma-separated numbers, e.g. --sizes 1,16 --speeds 20,1")
    if not sizes or sizes[0] < 1 or not speeds or min(speeds) <= 0 or args.poll <= 0 or args.steps < 1:
        parser.error("--sizes must list N >= 1; --speeds numbers > 0; --poll > 0; --steps >= 1")
    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-fleet-"))
    args.template_cache_dir = root / "template-cache" if args.template_cache == "warm" else None
    results: dict[str, Any] = {"params": {k: v for k, v in vars(args).items()
                                          if k not in ("json", "template_cache_dir")},
                               "host": host_info(euid=os.geteuid()), "errors": [], "speeds": []}
    code = 0
    try:
        for speed in speeds:
            part: dict[str, Any] = {"speed": speed, "rounds": [], "errors": []}
            results["speeds"].append(part)
            outcome = Outcome(part, say)  # this speed's own errors (stop_and_check shows its simulator's log for them)
            sim: Sim | None = None
            try:
                with outcome.guard(subprocess.TimeoutExpired):
                    sim = start_sim(root / f"speed-{speed:g}", deadline, speed=speed, log_level="debug",
                                    credit=1_000_000)
                    say(f"{speed_title(speed)}\nvastsim at {sim.url}; {os.cpu_count()} CPUs, load "
                        f"{os.getloadavg()[0]:.2f}; {args.steps} steps x {args.step_seconds:g} s per trial, "
                        f"poll {args.poll:g} s; strategy "
                        f"{args.strategy or 'the defaults (the trials: mlops.vast.linear)'}; template cache "
                        f"{args.template_cache}")
                    if args.template_cache == "warm" and not results["speeds"][:-1]:
                        say("warm-up: one trial, unmeasured, leaves the template cache as any earlier run would ...")
                        one_round(sim, 1, root / f"speed-{speed:g}", args, deadline, name="warm-up")
                    for n in sizes:
                        say(f"N={n}: running sweep.yml with {n} trial(s), {n} at once ...")
                        part["rounds"].append(one_round(sim, n, root / f"speed-{speed:g}", args, deadline))
                        add_ratios(part["rounds"])
                    say("")
                    print_table(part["rounds"])
                    say("  when a trial began each phase (median, seconds from the start):")
                    print_phases(part["rounds"])
            finally:
                if outcome.code and part["rounds"]:
                    say("")
                    print_table(part["rounds"])  # the rounds that finished
                if sim is not None and not stop_and_check(sim, part, say):
                    outcome.fail()
                results["errors"] += [f"--speed {speed:g}: {error}" for error in part.pop("errors")]
                code = max(code, outcome.code)  # 130 (interrupted) over 1 (failed)
                say("")
            if outcome.code == 130:
                break
        say("All training: from ansible-playbook's start until the last trial's watch began; ratio: to N = 1; API "
            "req/poll: requests the simulator logged while all trials were training, per poll interval.")
        for part in results["speeds"]:
            last = part["rounds"][-1] if part["rounds"] else None
            if last and last["n"] > 1 and part["rounds"][0]["n"] == 1:
                say(f"  vastsim --speed {part['speed']:g}: {last['n']} trials all training within "
                    f"{last['all_training_ratio']:.2f}x the time of one (goal <= 2x)")
    finally:
        write_results(args.json, results, say)
        shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
