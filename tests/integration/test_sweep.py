"""playbooks/sweep.yml end to end against vastsim: 7 trials, 3 at once, one made to crash, bad hosts in the
catalogue; every trial has a row, the failures stay in their trials, the budget holds, nothing is billing, and a
re-run skips what completed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Sim, needs_root
from tests.integration.ansible_run import (
    ANSIBLE_BIN,
    ansible_env,
    close_ssh_masters,
    failure_excerpt,
    ledger_open,
    run_playbook,
)

pytestmark = [pytest.mark.slow, needs_root, pytest.mark.timeout(1200)]

BUDGET = 0.30  # examples/sweep.yml's


def sweep_env(sim: Sim, tmp_path: Path) -> dict[str, str]:
    # No SSH key of the tests' own: the sweep makes the collection's key once, before its trials start.
    return ansible_env(sim, tmp_path, MLOPS_VAST_EXCLUSIONS=str(tmp_path / "excluded.json"))


@pytest.fixture
def trials_stopped(tmp_path: Path) -> Iterator[None]:
    """If the test fails while trials run, their playbooks (sessions of their own) are stopped too."""
    yield
    marker = str(tmp_path).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            if b"MLOPS_VAST_PROGRESS_FILE=" + marker in environ:
                os.kill(int(pid), signal.SIGKILL)


def run_sweep(sim: Sim, tmp_path: Path, **overrides: object):
    extra = {"sweep_results_dir": str(tmp_path / "results"), "run_poll_interval_s": 1, "run_sync_interval_s": 2,
             "sweep_trial_vars": {"provision_probe_max_seconds": 1}, **overrides}
    return run_playbook("playbooks/sweep.yml", sweep_env(sim, tmp_path), "-e", "@examples/sweep.yml",
                        "-e", json.dumps(extra), timeout=1200)


def max_overlap(trials: list[dict]) -> int:
    events = sorted([(t["started_at"], 1) for t in trials if t["started_at"]]
                    + [(t["ended_at"], -1) for t in trials if t["started_at"]])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def test_sweep_isolates_failures_holds_the_budget_and_leaves_nothing_billing(sim: Sim, tmp_path: Path,
                                                                             trials_stopped: None) -> None:
    crash = {"learning_rate": 0.05, "crash_at_step": 120}
    # Its loss turns NaN at step 60 and it would train on to step 200 (slowly enough for the watch to see it).
    nan = {"learning_rate": 0.05, "nan_at_step": 60, "step_seconds": 0.1}
    done = run_sweep(sim, tmp_path, sweep_trials=[crash, nan])
    out = done.stdout
    assert done.returncode != 0, failure_excerpt(out)  # one trial crashed, one diverged: the sweep says so
    assert "6 of 8 trial(s) completed" in out, failure_excerpt(out)
    assert "No instance of sweep lr-sweep is open." in out

    results = tmp_path / "results"
    rows = json.loads((results / "trials.json").read_text())
    assert len(rows) == 8 and len({row["id"] for row in rows}) == 8
    crashed, diverged, others = rows[0], rows[1], rows[2:]
    assert crashed["params"] == crash and crashed["outcome"] == "crash", crashed
    assert crashed["message"], crashed
    assert diverged["params"] == nan and diverged["outcome"] == "diverged", diverged
    # Logged as the Hugging Face Trainer does by default: 0.0 beside a NaN grad_norm from step 70 (never the "best").
    assert re.search(r"the loss was 0\.0 with a grad_norm that is not finite .* from step 70", diverged["message"]), \
        diverged
    assert diverged["steps"] < 200 and diverged["final_loss"] is None and diverged["best_loss"] > 0.05, diverged
    # Every other trial completed its 200 steps with its own parameters, a loss and a cost.
    grid = {(lr, seed) for lr in (0.1, 0.05, 0.02) for seed in (1, 2)}
    assert {(row["params"]["learning_rate"], row["params"]["seed"]) for row in others} == grid
    for row in others:
        assert row["outcome"] == "completed" and row["steps"] == 200, row
        assert row["final_loss"] is not None and row["best_loss"] <= row["final_loss"]
        assert row["cost_usd"] > 0 and row["attempts"] == 1
        # The trial's own parameter reached its trainer: the final checkpoint's optimizer holds its learning rate.
        optimizer = Path(row["results_dir"]) / "checkpoints" / "checkpoint-200" / "optimizer.json"
        assert json.loads(optimizer.read_text())["learning_rate"] == row["params"]["learning_rate"], row
    # The catalogue's bad hosts (a slow link, a wrong GPU, a broken driver) were rented by some trials, rejected
    # and excluded; those trials rented again and completed like the rest.
    excluded = json.loads((tmp_path / "excluded.json").read_text())["machines"]
    assert excluded, "no trial met a bad host"
    replaced = [row for row in rows if len(row["hosts"]) > 1]
    assert replaced and all(row["outcome"] == "completed" for row in replaced if row in others), rows
    assert not {int(m) for m in excluded} & {row["hosts"][-1] for row in others}

    # Each trial ran with the sweep's default strategy, the collection's mlops.vast.linear (ansible-core says so when
    # it loads a strategy from outside ansible.builtin): the crash and the rejected hosts were handled under it.
    for row in rows:
        log = " ".join((Path(row["results_dir"]) / "ansible.log").read_text().split())
        assert "Use of strategy plugins not included in ansible.builtin are deprecated" in log, row["id"]

    state = json.loads((results / "sweep-state.json").read_text())
    assert max_overlap(state["trials"]) <= 3
    assert max_overlap(state["trials"]) >= 2  # they did run side by side
    csv_lines = (results / "trials.csv").read_text().splitlines()
    assert len(csv_lines) == 9 and csv_lines[0].startswith("id,label,param_")

    with sim.client() as client:
        ledger = client.get("/_sim/ledger").json()
    assert ledger["totals"]["open_instances"] == 0, ledger["totals"]
    assert ledger_open(tmp_path) == []
    assert ledger["totals"]["cost"] <= BUDGET, ledger["totals"]
    instances_before = ledger["totals"]["instances"]

    # The same sweep again, without the failed trials: all six completed ones are reused, nothing is rented.
    again = run_sweep(sim, tmp_path, sweep_trials=[])
    assert again.returncode == 0, failure_excerpt(again.stdout)
    assert "6 of 6 trial(s) completed (6 from an earlier run)" in again.stdout
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["instances"] == instances_before
    rows_again = json.loads((results / "trials.json").read_text())
    assert [(row["id"], row["params"]) for row in rows_again] == [(row["id"], row["params"]) for row in others]


def test_ctrl_c_on_the_sweep_stops_every_trial_and_destroys_its_instance(sim: Sim, tmp_path: Path,
                                                                         trials_stopped: None) -> None:
    results = tmp_path / "results"
    extra = {"sweep_grid": {"seed": [1, 2]}, "sweep_max_parallel": 2, "sweep_results_dir": str(results),
             "sweep_trial_vars": {"provision_probe_max_seconds": 1}, "run_poll_interval_s": 1,
             "run_command": "python3 train.py --output_dir /workspace/run/output --max_steps 5000 --step_seconds 0.05 "
                            "--save_steps 20"}
    env = sweep_env(sim, tmp_path)
    proc = subprocess.Popen([str(ANSIBLE_BIN / "ansible-playbook"), "playbooks/sweep.yml", "-e", "@examples/sweep.yml",
                             "-e", json.dumps(extra)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        phases: list[str | None] = []
        steps: list[int] = []
        # Both training, each past a few sealed checkpoints (one every 20 steps).
        while time.monotonic() < deadline and (phases.count("training") < 2 or len(steps) < 2 or min(steps) < 70):
            time.sleep(1)
            phases = [progress_phase(path) for path in results.glob("t*/progress.json")]
            steps = [int(json.loads(path.read_text()).get("step") or 0) if path.exists() else 0
                     for path in (results.glob("t*/progress-watch.json"))]
        assert phases.count("training") == 2 and len(steps) == 2 and min(steps) >= 70, (phases, steps)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does: the whole foreground group
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        close_ssh_masters(env)  # the teardowns' connections (ControlPersist)
    assert proc.returncode != 0, out
    # The guard said what happened, as it does for train.yml: each stopped trial's checkpoint home, nothing open.
    said = " ".join(out.split())
    assert "[mlops.vast.guard] SIGINT: stopping sweep" in said, out[-3000:]
    assert said.count("verified and home in") == 2, out[-3000:]
    assert "2 running trial(s) stopped, 0 not started, 0 had ended" in said, out[-3000:]
    assert "nothing of it is open in the local ledger" in said, out[-3000:]
    state = json.loads((results / "sweep-state.json").read_text())
    # The worker was stopped by the guard (SIGTERM) or, where it shares the terminal's process group, by the Ctrl-C.
    assert state["cancelled"] in ("interrupted (SIGTERM)", "interrupted (SIGINT)"), state["cancelled"]
    assert [t["state"] for t in state["trials"]] == ["cancelled", "cancelled"]
    rows = json.loads((results / "trials.json").read_text())
    assert [row["outcome"] for row in rows] == ["cancelled", "cancelled"]
    # Each trial's data came home before its instance was destroyed: the newest sealed checkpoint, verified, and the
    # run's log (its row's step and loss).
    for row in rows:
        folder = Path(row["results_dir"])
        record = json.loads((folder / "teardown.json").read_text())
        assert record["newest_checkpoint"], record
        assert (folder / "checkpoints" / record["newest_checkpoint"]).is_dir(), record
        assert int(record["newest_checkpoint"].rsplit("-", 1)[1]) >= 60, record
        assert (folder / "run.log").exists() and row["steps"] >= 70 and row["final_loss"] is not None, row
        # Where train.yml put the run (the teardown's source), and the account's charges of this run only.
        assert json.loads((folder / "run.json").read_text())["remote_dir"] == "/workspace/run"
        assert json.loads((folder / "spend.json").read_text())["since"] > 0
    with sim.client() as client:
        totals = client.get("/_sim/ledger").json()["totals"]
    assert totals["open_instances"] == 0 and totals["instances"] >= 2, totals
    assert ledger_open(tmp_path) == []


ESCAPE = f"qa-esc-{os.getpid()}"  # where results/../<name> would land, under the repository
# Each is refused by the sweep's first checks (its variables, its plan), before the reaper, the SSH key or any
# trial: nothing happens on bad input.
REFUSED_BEFORE_ANYTHING = [
    ({"sweep_name": f"../{ESCAPE}"}, "sweep_name must not be empty, contain '/' or '$' or start with '.'"),
    ({"sweep_name": "lr sweep's $HOME"}, "sweep_name must not be empty, contain '/' or '$' or start with '.'"),
    ({"sweep_name": ""}, "sweep_name must not be empty"),
    ({"sweep_grid": {"items": [1, 2], "seed": [1]}, "run_command": "python3 train.py --items {{ trial.items }}"},
     "write {{ trial['items'] }}"),
    ({"sweep_grid": {"w": [1]}, "sweep_random": {"count": 2, "params": {"v": {"min": 0.5, "max": 0.7, "int": True}}}},
     "no whole number lies between min (0.5) and max (0.7)"),
    ({"sweep_grid": {"disk": [20, -5]}, "run_disk_gb": "{{ trial.disk }}"}, "(disk=-5): run_disk_gb must be at least"),
    ({"sweep_grid": {}, "sweep_trials": [{"lr": 0.1, "seed": 1}, {"lr": 0.2}], "run_env": {"SEED": "{{ trial.seed }}"}},
     "(lr=0.2): run_env.SEED names trial parameter(s) ['seed'] that this trial does not set"),
    # The placeholder would go through the condition as text: every trial would get --x.
    ({"run_command": "python3 train.py {% if trial.seed == 1 %}--x{% endif %}"},
     "{% if trial.seed == 1 %} decides on a trial parameter"),
    ({"sweep_trials": "lr=0.1"}, "sweep_trials must be a list of mappings"),  # Ansible would make [{lr: '0.1'}]
    # Said with the variable, not as Ansible's templating error ("object of type 'dict' has no attribute 'sed'").
    ({"run_env": {"X": "{{ trial.sed }}"}}, "run_env.X: {{ trial.sed }} names no parameter of the sweep (its "
                                            "parameters: learning_rate, seed); did you mean 'seed'?"),
    ({"sweep_grid": {"keys": [1]}, "run_env": {"K": "{{ trial.keys }}"}},
     "run_env.K: {{ trial.keys }} would give the method keys of the trial mapping"),
    ({"sweep_name": "K" * 260}, "and may be at most 200 characters"),  # each trial's label must fit Vast's 256
    # $1/h for a minute before training, 2 s to the next look and a 60 s tail: every trial would stop for it.
    ({"run_max_total_usd": 0.01}, "run_max_total_usd $0.01 is below $0.033889, the least a trial can start with"),
]


def test_bad_sweep_input_is_refused_before_the_reaper_the_key_or_any_trial(sim: Sim, tmp_path: Path,
                                                                           trials_stopped: None) -> None:
    try:
        for overrides, words in REFUSED_BEFORE_ANYTHING:
            done = run_playbook("playbooks/sweep.yml", sweep_env(sim, tmp_path), "-e", "@examples/sweep.yml",
                                "-e", json.dumps(overrides), timeout=600)
            out = done.stdout
            assert done.returncode != 0, failure_excerpt(out)
            failure = next(line for line in out.splitlines() if line.startswith("fatal:"))
            assert words in failure, failure
            failed_task = out.split("fatal:")[0].rsplit("TASK [", 1)[1]
            assert "plan the trials" in failed_task or "Check the sweep's variables" in failed_task, \
                failure_excerpt(out)
            assert "Find the instances no live controller watches" not in out, overrides
        # Nothing was written: no key, no results (results/../<name> is outside results/), nothing rented.
        assert not (tmp_path / "id_ed25519").exists()
        assert not (REPO / ESCAPE).exists() and not (REPO / "results" / "sweep-state.json").exists()
        with sim.client() as client:
            assert client.get("/_sim/ledger").json()["totals"]["instances"] == 0
    finally:
        shutil.rmtree(REPO / ESCAPE, ignore_errors=True)


def test_check_mode_shows_each_trial_and_its_command_and_writes_nothing(sim: Sim, tmp_path: Path) -> None:
    results = tmp_path / "results"
    # A numeric run variable and a trial variable may name a parameter: each trial's value, checked as a number.
    overrides = {"sweep_grid": {"disk": [20, 30]}, "sweep_results_dir": str(results),
                 "run_disk_gb": "{{ trial.disk }}",
                 "sweep_trial_vars": {"provision_probe_max_seconds": "{{ trial.disk }}"},
                 "run_command": "python3 train.py --max_steps 5 --tag d{{ trial.disk }}"}
    done = run_playbook("playbooks/sweep.yml", sweep_env(sim, tmp_path), "-e", "@examples/sweep.yml",
                        "-e", json.dumps(overrides), "--check", timeout=300)
    out = done.stdout
    assert done.returncode == 0, failure_excerpt(out)
    shown = out.split("TASK [Show each trial", 1)[1].split("TASK [", 1)[0]
    assert "lr-sweep-t" in shown and "disk=20" in shown and "disk=30" in shown, shown
    assert "python3 train.py --max_steps 5 --tag d20" in shown and "--tag d30" in shown, shown
    assert "@@mlops-trial" not in out
    # Check mode wrote nothing: the collection's SSH key (next to the ledger) is not made, no results folder.
    assert not (tmp_path / "id_ed25519").exists() and not (tmp_path / "id_ed25519.pub").exists()
    assert not results.exists()
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["instances"] == 0


def progress_phase(path: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text()).get("phase")
    return None
