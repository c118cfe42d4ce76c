"""What a preemption costs a train.yml run on vastsim, over several injected preemptions.

For each scenario the tiny trainer runs ``playbooks/train.yml`` (600 steps of 0.05 s, a checkpoint every
50 steps) and a fault fires when step 290 is logged:

  outbid-rebid    a competing bid of twice ours; the recovery re-bids (run_max_bid 50) and resumes in place
  outbid-replace  a competing bid of 100 $/h that stays; strategy replace: a new instance, restored
  offline-replace the host goes offline and stays; after 5 s of waiting it is replaced

and prints, per run and as medians: the detection latency (the fault firing -> the watch returning), the
time from detection to training again (wait, re-bid or rent + boot + setup + restore + relaunch), the steps
lost (the step logged at the fault minus the step resumed from), and the extra cost (what the run's
instances cost, minus a run of the same job that nothing interrupted).

    .venv/bin/python bench/recovery.py [--repeat N] [--scenarios outbid-rebid,offline-replace] [--json F]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _sim import BIN, REPO, BenchError, Deadline, Sim, ansible_env, say, start_sim, stop_sim

MAX_STEPS, SAVE_STEPS, FAULT_STEP = 600, 50, 290
COMMAND = (f"python3 train.py --output_dir /workspace/run/output --max_steps {MAX_STEPS} --save_steps {SAVE_STEPS} "
           "--step_seconds 0.05")
RUN_LOG = "/workspace/run/run.log"
SCENARIOS: dict[str, dict[str, Any]] = {
    "outbid-rebid": {"fault": {"kind": "outbid", "price_factor": 2.0}, "target": "machine_id",
                     "vars": {"run_interruptible": True, "run_max_bid": 50,
                              "run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 90}}},
    "outbid-replace": {"fault": {"kind": "outbid", "price": 100.0}, "target": "machine_id",
                       "vars": {"run_interruptible": True, "run_recovery": {"strategy": "replace"}}},
    "offline-replace": {"fault": {"kind": "offline"}, "target": "instance_id",
                        "vars": {"run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 5}}},
}


class Armer(threading.Thread):
    """Arms the scenario's fault on the run's first running instance, triggered by step FAULT_STEP in its log."""

    def __init__(self, sim: Sim, label: str, scenario: dict[str, Any], deadline: Deadline) -> None:
        super().__init__(daemon=True)
        self.sim, self.label, self.scenario, self.deadline = sim, label, scenario, deadline
        self.fault_id: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.deadline.left() > 0:
            rows = [row for row in self.sim.call("GET", "/api/v0/instances/")["instances"]
                    if row.get("label") == self.label and row.get("actual_status") == "running"]
            if rows:
                row, spec = rows[0], dict(self.scenario["fault"])
                factor = spec.pop("price_factor", None)
                if factor:
                    spec["price"] = round(float(row["dph_base"]) * factor, 4)
                spec[self.scenario["target"]] = row["machine_id" if self.scenario["target"] == "machine_id" else "id"]
                spec["when_log"] = {"path": RUN_LOG, "pattern": rf"'step': {FAULT_STEP}\b"}
                self.fault_id = self.sim.call("POST", "/_sim/faults", json=spec)["faults"][-1]["id"]
                return
            self.stop.wait(0.5)


def train(sim: Sim, root: Path, name: str, run_vars: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    run_dir = root / name
    run_dir.mkdir()
    key = root / "key"
    env = ansible_env(sim, root, MLOPS_VAST_SSH_KEY=str(key), MLOPS_VAST_LEDGER=str(run_dir / "contracts.jsonl"),
                      MLOPS_VAST_EXCLUSIONS=str(run_dir / "excluded.json"))
    bad = [m["machine_id"] for m in sim.call("GET", "/_sim/machines")["machines"] if m["defects"]]
    extra = {"run_name": name, "run_results_dir": str(run_dir / "results"), "run_sources": [], "run_min_mbps": 0,
             "run_query": f"reliability > 0.95 num_gpus=1 machine_id notin [{','.join(map(str, bad))}]",
             "run_poll_interval_s": 2, "run_sync_interval_s": 2, "run_command": COMMAND, **run_vars}
    argv = [str(BIN / "ansible-playbook"), "playbooks/train.yml", "-e", "@examples/run.yml", "-e", json.dumps(extra)]
    started = time.monotonic()
    with open(run_dir / "ansible.log", "wb") as log:
        done = subprocess.run(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              timeout=deadline.cap(900))
    wall = time.monotonic() - started
    if done.returncode != 0:
        tail = (run_dir / "ansible.log").read_text(errors="replace")[-2000:]
        raise BenchError(f"{name}: ansible-playbook exited {done.returncode}:\n{tail}")
    rows = [row for row in sim.call("GET", "/_sim/ledger")["rows"] if row["label"] == name]
    return {"wall_s": wall, "cost": sum(row["cost"] for row in rows), "rows": rows, "results": run_dir / "results"}


def measure(sim: Sim, root: Path, name: str, scenario: dict[str, Any], baseline_cost: float,
            deadline: Deadline) -> dict[str, Any]:
    armer = Armer(sim, name, scenario, deadline)
    armer.start()
    try:
        run = train(sim, root, name, scenario["vars"], deadline)
    finally:
        armer.stop.set()
        armer.join(10)
    fault = next(f for f in sim.call("GET", "/_sim/faults")["faults"] if f["id"] == armer.fault_id)
    sim.call("DELETE", f"/_sim/faults/{armer.fault_id}")
    record = json.loads((run["results"] / "recovery.json").read_text())["recoveries"]
    if len(record) != 1 or not fault.get("triggered_at"):
        raise BenchError(f"{name}: expected one recovery after the fault fired, got {record} / {fault}")
    event = record[0]
    log = (run["results"] / "run.log").read_text()
    resumed = [int(s) for s in re.findall(r"resuming from \S+checkpoint-(\d+)", log)]
    return {"scenario": name, "mode": event["mode"], "outcome": event["outcome"],
            "detection_s": event["detected_at"] - fault["triggered_at"],
            "to_training_s": event["training_again_at"] - event["detected_at"],
            "steps_lost": FAULT_STEP - (resumed[-1] if resumed else 0),
            "extra_cost_usd": run["cost"] - baseline_cost, "cost_usd": run["cost"], "wall_s": run["wall_s"],
            "instances": len(run["rows"]), "rebids": len(event.get("rebids") or [])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--deadline", type=float, default=3600)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    names = [s for s in args.scenarios.split(",") if s]
    unknown = set(names) - set(SCENARIOS)
    if unknown or args.repeat < 1:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}" if unknown
                     else "--repeat must be at least 1")
    deadline = Deadline(args.deadline)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        root = Path(tmp)
        (root / "home").mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "key")], check=True)
        sim = start_sim(root / "sim", deadline)
        try:
            baseline = train(sim, root, "baseline", {}, deadline)
            say(f"baseline (nothing interrupted): {baseline['wall_s']:.1f} s wall, ${baseline['cost']:.5f}")
            say(f"{'scenario':16} {'mode':9} {'detect s':>9} {'to train s':>11} {'steps lost':>11} "
                f"{'extra $':>9} {'extra %':>8} {'rebids':>7} {'wall s':>7}")
            for index in range(args.repeat):
                for name in names:
                    row = measure(sim, root, f"{name}-{index}", SCENARIOS[name], baseline["cost"], deadline)
                    results.append(row)
                    say(f"{name:16} {row['mode']:9} {row['detection_s']:9.2f} {row['to_training_s']:11.2f} "
                        f"{row['steps_lost']:11d} {row['extra_cost_usd']:9.5f} "
                        f"{100 * row['extra_cost_usd'] / baseline['cost']:7.0f}% {row['rebids']:7d} "
                        f"{row['wall_s']:7.1f}")
        except BenchError as exc:
            say(f"FAILED: {exc}")
            return 1
        finally:
            stop_sim(sim)
    for key, label in (("detection_s", "detection latency, s"), ("to_training_s", "detection -> training again, s"),
                       ("steps_lost", f"steps lost (checkpoint interval {SAVE_STEPS})"),
                       ("extra_cost_usd", "extra cost, $")):
        values = [row[key] for row in results]
        say(f"median {label:42} {statistics.median(values):10.4g}  (min {min(values):.4g}, max {max(values):.4g})")
    if args.json:
        args.json.write_text(json.dumps({"baseline_cost": baseline["cost"], "runs": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
