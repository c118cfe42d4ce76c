"""playbooks/train.yml end to end against vastsim: completion, the failure paths, nothing left billing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Sim, needs_root, ssh_run
from tests.integration.ansible_run import ansible_env, failure_excerpt, ledger_open, local_inventory, run_playbook
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root]

BASE = "python3 train.py --output_dir /workspace/run/output --logging_steps 10 --save_steps 50"


def run_train(sim: Sim, tmp_path: Path, name: str, command: str, *extra: str, **env_extra: str
              ) -> subprocess.CompletedProcess:
    key = tmp_path / "key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(key), MLOPS_VAST_EXCLUSIONS=str(tmp_path / "excl.json"),
                      **env_extra)
    return run_playbook("playbooks/train.yml", env, "-i", str(local_inventory(tmp_path)),
                        "-e", "@examples/run.yml",
                        "-e", json.dumps({"run_name": name, "run_command": command,
                                          "run_query": good_query(sim, "reliability > 0.95 num_gpus=1"),
                                          "run_results_dir": str(tmp_path / "results"),
                                          "run_poll_interval_s": 1, "run_sync_interval_s": 2,
                                          "run_stall_timeout_s": 6}),
                        *extra, timeout=900)


def nothing_billing(sim: Sim, tmp_path: Path) -> dict:
    with sim.client() as client:
        ledger = client.get("/_sim/ledger").json()
    assert ledger["totals"]["open_instances"] == 0, ledger["totals"]
    assert ledger_open(tmp_path) == []
    return ledger


class HostWatcher(threading.Thread):
    """Looks at the rented host over SSH while the playbook runs (what a person would check)."""

    def __init__(self, sim: Sim, key: Path, label: str, deadline: float = 300) -> None:
        super().__init__(daemon=True)
        self.sim, self.key, self.label, self.deadline = sim, key, label, time.monotonic() + deadline
        self.seen: dict[str, bool] = {}
        self.stop = threading.Event()
        self.kill_ssh_at_step: int | None = None
        self.killed = False

    def run(self) -> None:
        with self.sim.client() as client:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                rows = client.get("/api/v1/instances/").json()["instances"]
                row = next((r for r in rows if r["label"] == self.label and r["actual_status"] == "running"), None)
                if row and row.get("ports"):
                    host, port = row["public_ipaddr"], int(row["ports"]["22/tcp"][0]["HostPort"])
                    try:
                        probe = ssh_run(host, port, self.key,
                                        f"tmux has-session -t run_{self.label} 2>/dev/null && echo tmux; "
                                        "test -f /workspace/run/STATUS.md && echo status; "
                                        "test -f /workspace/run/run.log && echo log; "
                                        "grep -c \"'step'\" /workspace/run/run.log 2>/dev/null || true", timeout=20)
                    except subprocess.TimeoutExpired:
                        continue  # a loaded machine, or the host going away at teardown: look again
                    lines = probe.stdout.split()
                    if {"tmux", "status", "log"} <= set(lines):
                        self.seen["live"] = True
                        steps = int(lines[-1]) if lines and lines[-1].isdigit() else 0
                        if self.kill_ssh_at_step is not None and not self.killed and steps >= self.kill_ssh_at_step:
                            # Every SSH session on the host dies: the watcher's and this one.
                            with contextlib.suppress(subprocess.TimeoutExpired):
                                ssh_run(host, port, self.key, "pkill -f 'sshd: root@' || true", timeout=20)
                            self.killed = True
                time.sleep(0.5)


def test_run_completes_with_verified_checkpoints_and_nothing_billing(sim: Sim, tmp_path: Path) -> None:
    (tmp_path / "key").parent.mkdir(exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    watcher = HostWatcher(sim, tmp_path / "key", "e2e-ok")
    watcher.kill_ssh_at_step = 15  # a dropped connection mid-run must change nothing for the training
    watcher.start()
    try:
        # run_results_dir as a user may write it, with an environment variable: every part of the run (the modules
        # that expand paths and those that do not) must put the results in the same, expanded, folder.
        done = run_train(sim, tmp_path, "e2e-ok", f"{BASE} --max_steps 400 --step_seconds 0.02",
                         "-e", json.dumps({"run_results_dir": "$E2E_OK_DIR/results"}), E2E_OK_DIR=str(tmp_path))
    finally:
        watcher.stop.set()
        watcher.join(30)
    assert done.returncode == 0, failure_excerpt(done.stdout) + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "DEPRECATION WARNING" not in output, [line for line in output.splitlines() if "DEPRECAT" in line]
    assert watcher.seen.get("live"), "STATUS.md, run.log and the tmux session were never seen on the host"
    assert watcher.killed
    results = tmp_path / "results"
    # Every part put its files in the expanded folder (run.json by local_file, which expands $VAR itself; the pulled
    # checkpoints below by rsync, which does not): none under a folder named after the variable, or elsewhere.
    assert not list(tmp_path.glob("*E2E_OK_DIR*")) and not (REPO / "tmp").exists(), "results outside the folder"
    assert json.loads((results / "run.json").read_text())["results_dir"] == str(results)
    watch = json.loads((results / "watch.json").read_text())
    assert watch["outcome"] == "completed" and watch["triage"]["summary"] is True
    # Whether the watch saw the cut depends on when it polled (ControlPersist reconnects quietly); what
    # matters is that it completed and that the training never stopped (below).
    teardown = json.loads((results / "teardown.json").read_text())
    assert teardown["checkpoints_verified"] is True and teardown["newest_checkpoint"] == "checkpoint-400"
    assert (results / "checkpoints" / "checkpoint-400" / "model.json").exists()
    assert sorted(p.name for p in (results / "checkpoints").iterdir()) == [
        "checkpoint-300", "checkpoint-350", "checkpoint-400"]  # the last three kept
    log = (results / "run.log").read_text()
    steps = [int(line.split("'step': ")[1].rstrip("}")) for line in log.splitlines() if "'step': " in line]
    assert steps == list(range(10, 401, 10)), "the training went on without a gap while SSH was cut"
    ledger = nothing_billing(sim, tmp_path)
    # MLOPS_VAST_SSH_KEY was set: that key reached the host, and the collection made no key of its own.
    mine = " ".join((tmp_path / "key.pub").read_text().split()[:2])
    with sim.client() as client:
        assert [" ".join(k["key"].split()[:2]) for k in client.get("/api/v0/ssh/").json()] == [mine]
    assert not (tmp_path / "id_ed25519").exists()
    row = next(r for r in ledger["rows"] if r["label"] == "e2e-ok")
    # The account's word at the end: nothing of the label billing, and its spend as vastsim's ledger charged it.
    spend = json.loads((results / "spend.json").read_text())
    charged = sum(r["cost"] for r in ledger["rows"] if r["label"] == "e2e-ok")  # a host rejected first counts too
    assert spend["billing"] == [] and abs(spend["total_usd"] - charged) < 0.01, (spend, ledger["rows"])
    assert "the account confirms nothing of e2e-ok is billing" in done.stdout.lower()
    ended = os.stat(results / "EXIT_CODE").st_mtime  # rsync kept the host's time of the run's end
    assert row["destroyed_at"] - ended < 60
