# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guard's work after an interruption: what the playbook rented (from its facts and the results it saw), the
collection's own teardown for each run (``playbooks/teardown.yml`` with the run's results folder, so the newest
sealed checkpoint is pulled and verified before the instance is destroyed and the account asked), started in a
new session so that the terminal's next Ctrl-C or a closed terminal cannot kill it, and waited for."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ansible_collections.mlops.vast.plugins.module_utils.local_state import ContractLedger
from ansible_collections.mlops.vast.plugins.module_utils.run_claims import process_start
from ansible_collections.mlops.vast.plugins.plugin_utils.runner_env import plain_environment
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_rows import read_json

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEARDOWN_PLAYBOOK = os.path.join(COLLECTION_ROOT, "playbooks", "teardown.yml")
INVENTORY = os.path.join(COLLECTION_ROOT, "inventory", "vast.yml")
# What train.yml writes into a run's results folder once it has resolved the run (name, results_dir, remote_dir,
# checkpoint_glob, keep_checkpoints, started_at): how a teardown from outside the run finds its checkpoints.
RUN_FILE = "run.json"
# Set in the teardown's own environment: its guard stands down (its Ctrl-C is not the user's).
DISABLE_ENV = "MLOPS_VAST_GUARD"


@dataclass
class Target:
    """One run to bring home and destroy."""

    label: str
    results_dir: str
    remote_dir: str = "/workspace/run"
    checkpoint_glob: str = "checkpoint-*"
    keep_checkpoints: int = 3
    since: float = 0.0  # when the run began: the account's charges before it are an earlier run's

    @classmethod
    def of_run(cls, label: str, results_dir: str, run_vars: Mapping[str, Any]) -> Target:
        """The target of a run given by its run_* variables (a sweep's trial): where its files and checkpoints are
        on the host, train.meta.yml's defaults where it says nothing (or leaves it to a template)."""
        resolved = read_json(os.path.join(results_dir, RUN_FILE))
        if isinstance(resolved, Mapping) and resolved.get("remote_dir"):
            # As train.yml resolved them (templates rendered, defaults filled in), once it got that far.
            return cls.of_facts(label, results_dir, resolved)

        def given(name: str, default: Any) -> Any:
            value = run_vars.get(name)
            return default if value in (None, "") or "{{" in str(value) else value

        return cls(label, results_dir, str(given("run_remote_dir", "/workspace/run")),
                   str(given("run_checkpoint_glob", "checkpoint-*")), _count(given("run_keep_checkpoints", 3), 3))

    @classmethod
    def of_facts(cls, label: str, results_dir: str, run: Mapping[str, Any]) -> Target:
        """The target of train.yml's ``run`` fact (or the run.json it writes from it)."""
        return cls(label, str(run.get("results_dir") or results_dir), str(run.get("remote_dir") or "/workspace/run"),
                   str(run.get("checkpoint_glob") or "checkpoint-*"), _count(run.get("keep_checkpoints"), 3),
                   float(run.get("started_at") or 0.0) if _is_number(run.get("started_at")) else 0.0)

    def extra_vars(self, unreachable_wait_s: float) -> dict[str, Any]:
        return {"teardown_label": self.label, "teardown_results_dir": self.results_dir,
                "teardown_remote_dir": self.remote_dir, "teardown_checkpoint_glob": self.checkpoint_glob,
                "teardown_keep_checkpoints": self.keep_checkpoints,
                "teardown_unreachable_wait_s": unreachable_wait_s, "teardown_since": self.since}


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _count(value: Any, default: int) -> int:
    """A whole number of at least 0 (0 is "keep all"), else ``default``: a bad value must not stop a teardown."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if number >= 0 else default


def targets_from(facts: Mapping[str, Any], labels: set[str], cwd: str) -> list[Target]:
    """The runs of this playbook: train.yml's ``run`` fact (label, results folder, remote paths), rent.yml's
    ``rent_label``, and every label an instance module reported renting (a user's own playbook)."""
    found: dict[str, Target] = {}
    run = facts.get("run")
    if isinstance(run, Mapping) and run.get("name"):
        name = str(run["name"])
        found[name] = Target.of_facts(name, os.path.join(cwd, "results", name),
                                      {**run, "started_at": facts.get("run_started_at")})
    rent_label = facts.get("rent_label")
    for label in ({str(rent_label)} if isinstance(rent_label, str) and rent_label else set()) | labels:
        found.setdefault(label, Target(label, os.path.join(cwd, "results", label)))
    return list(found.values())


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Ansible's workers)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as handle:
                pids.extend(int(p) for p in handle.read().split())
    return pids


def stop_workers(pid: int, wait_s: float = 3.0) -> list[int]:
    """SIGTERM the workers (each ends its own process group, as Ansible's handler would) and give them a moment, so
    that no task still in flight (a create) can rent after the teardown looked; those still alive after it."""
    workers = child_pids(pid)
    for worker in workers:
        with contextlib.suppress(OSError):
            os.kill(worker, signal.SIGTERM)
    end = time.monotonic() + wait_s
    while time.monotonic() < end and any(process_start(w) is not None for w in workers):
        time.sleep(0.1)
    return [w for w in workers if process_start(w) is not None]  # zombies count as gone


def ansible_playbook() -> list[str]:
    """The ansible-playbook that runs now (same Python, same ansible-core), else the one on PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "ansible-playbook" and os.path.isfile(argv0):
        return [sys.executable, argv0]
    found = shutil.which("ansible-playbook") or os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return [found]


def teardown_argv(target: Target, unreachable_wait_s: float, ansible: Sequence[str] | None = None) -> list[str]:
    """playbooks/teardown.yml for ``target`` through the inventory: the newest sealed checkpoint and the run's files
    come home (verified) before the instance is destroyed."""
    return [*(ansible or ansible_playbook()), "-i", INVENTORY, TEARDOWN_PLAYBOOK,
            "-e", json.dumps(target.extra_vars(unreachable_wait_s))]


def destroy_argv(label: str, ansible: Sequence[str] | None = None) -> list[str]:
    """playbooks/teardown.yml by label alone: destroy and prove gone, nothing pulled (for when pulling ran too long:
    an instance must not go on billing for a checkpoint that does not come)."""
    return [*(ansible or ansible_playbook()), TEARDOWN_PLAYBOOK, "-e", json.dumps({"teardown_label": label})]


def wait_or_destroy(running: Sequence[tuple[Target, subprocess.Popen[bytes], str]], deadline: float, *,
                    env: Mapping[str, str], ansible: Sequence[str] | None = None,
                    destroy_timeout_s: float = 300.0) -> list[str]:
    """Wait for teardowns started in sessions of their own until ``deadline`` (time.monotonic()), all together; one
    still pulling then is stopped (its whole session) and its instance destroyed by label. The labels that needed
    that."""
    forced = []
    for target, process, log_path in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
            continue
        except subprocess.TimeoutExpired:
            forced.append(target.label)
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        with open(log_path, "ab") as log:
            log.write(f"\n[mlops.vast] the teardown of {target.label} ran past its time: destroying it by label, "
                      "without waiting for its checkpoint\n".encode())
            log.flush()
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(destroy_argv(target.label, ansible), stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, env=dict(env), timeout=destroy_timeout_s,
                               start_new_session=True, check=False)
    return forced


def start(target: Target, unreachable_wait_s: float) -> tuple[subprocess.Popen[bytes], str]:
    """Start the teardown of ``target`` in a new session; its output goes to ``<results>/guard.log``."""
    os.makedirs(target.results_dir, exist_ok=True)
    log_path = os.path.join(target.results_dir, "guard.log")
    env = plain_environment(os.environ)
    env[DISABLE_ENV] = "off"
    with contextlib.suppress(OSError):  # without it the reaper counts from the last renewal; the teardown renews too
        # Before the teardown's own ansible-playbook starts (seconds): no reaper may take the host meanwhile.
        ContractLedger().renew_leases(target.label)
    argv = teardown_argv(target, unreachable_wait_s)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True, close_fds=True)
    return process, log_path


def outcome(target: Target, rc: int | None, log_path: str) -> str:
    """One line on what the teardown did, from its exit status and the record it wrote."""
    if rc is None:
        return (f"{target.label}: the teardown is still running in the background (its own session); see {log_path}, "
                f"and check with ansible-playbook playbooks/teardown.yml -e teardown_label={target.label}")
    if rc != 0:
        return (f"{target.label}: the teardown FAILED (exit {rc}); see {log_path}. The contract is in the local "
                f"ledger: run ansible-playbook playbooks/teardown.yml -e teardown_label={target.label}")
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError), \
            open(os.path.join(target.results_dir, "teardown.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    if not isinstance(record, dict):
        record = {}
    return (f"{target.label}: {home_line(target, record)}; destroyed {record.get('destroyed', [])}, verified gone, "
            f"and the account confirms nothing of {target.label} is billing (log: {log_path})")


def sweep_results_dir(sweep: Mapping[str, Any], cwd: str) -> str:
    """Where a sweep keeps its state (sweep.yml's ``sweep`` fact: sweep_results_dir, else results/<sweep_name>)."""
    given = str(sweep.get("results_dir") or "")
    return os.path.abspath(os.path.join(cwd, given or os.path.join("results", str(sweep.get("name")))))


def sweep_outcome(name: str, results_dir: str, since: float = 0.0) -> list[str]:
    """What stopping a sweep did, from its state (sweep-state.json, if written since ``since``: not an earlier run's),
    each stopped trial's teardown record and the local ledger: one line per trial that was running, then one for
    the sweep."""
    state = read_json(os.path.join(results_dir, "sweep-state.json"))
    if not isinstance(state, dict) or float(state.get("updated_at") or 0) < since:
        state = {}  # stopped before its scheduler began: no trial had started
    trials = [t for t in (state.get("trials") or []) if isinstance(t, dict)]
    lines = []
    for trial in trials:
        if trial.get("state") == "cancelled" and trial.get("results_dir"):
            target = Target(str(trial.get("label")), str(trial["results_dir"]))
            record = read_json(os.path.join(target.results_dir, "teardown.json"))
            lines.append(f"{target.label}: {home_line(target, record if isinstance(record, dict) else {})}")
    count = {key: sum(1 for t in trials if t.get("state") == key) for key in ("cancelled", "skipped", "done")}
    labels = {str(t.get("label")) for t in trials}  # this sweep's own: another one may be named "<name>-b"
    left = [c for c in ContractLedger().open_contracts() if str(c.get("label") or "") in labels]
    summary = (f"sweep {name}: {count['cancelled']} running trial(s) stopped, {count['skipped']} not started, "
               f"{count['done']} had ended (state: {results_dir}/sweep-state.json); ")
    if left:
        summary += (f"STILL OPEN in the local ledger: {', '.join(str(c.get('id')) for c in left)}; run "
                    "ansible-playbook playbooks/teardown.yml (or mlops-vast teardown --all)")
    else:
        summary += "nothing of it is open in the local ledger"
    return [*lines, summary]


def home_line(target: Target, record: Mapping[str, Any]) -> str:
    """What came home, from the teardown's record (``<results>/teardown.json``): a host never reached is not a host
    without checkpoints."""
    newest = record.get("newest_checkpoint")
    if newest:
        return f"newest sealed checkpoint {newest} verified and home in {target.results_dir}/checkpoints"
    if not record:
        return (f"the teardown left no record ({target.results_dir}/teardown.json); what came home is in "
                f"{target.results_dir}")
    if not record.get("host_reachable"):
        why = record.get("may_lose") or ("it was not running (not in the inventory: preempted, loading or offline), "
                                         "so nothing was pulled from it")
        return f"the host could not be reached: {why}; what was home already is in {target.results_dir}/checkpoints"
    return f"no sealed checkpoint on the host; results in {target.results_dir}"
