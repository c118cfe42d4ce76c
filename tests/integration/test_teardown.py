"""The teardown role's guard rail: a checkpoint that cannot be verified keeps its instance (stopped, not destroyed)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import Sim, needs_root
from tests.integration.ansible_run import ansible_env, failure_excerpt, ledger_open, local_inventory, run_playbook
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root]

LABEL = "td-unverified"
OUTPUT = "/workspace/run/output"
# Two sealed checkpoints (as the run's checkpoint agent leaves them), and the newest is then rewritten every 20 ms,
# as by a run that goes on writing into a checkpoint it had finished: a local copy can never match its manifest,
# which is exactly what verification must catch.
SEAL = """import hashlib, json, os, sys
out = sys.argv[1]
for name in ("checkpoint-50", "checkpoint-100"):
    data = open(os.path.join(out, name, "model.json"), "rb").read()
    manifest = {"format": 1, "run_id": "td", "attempt": 1, "step": int(name.split("-")[1]), "name": name,
                "files": [{"path": "model.json", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
                "sealed_at": 0}
    json.dump(manifest, open(os.path.join(out, name, ".mlops-seal.json"), "w"))
open(os.path.join(out, ".mlops-sealed"), "w").write("checkpoint-50" + chr(10) + "checkpoint-100" + chr(10))
"""
REWRITER = (f"mkdir -p {OUTPUT}/checkpoint-50 {OUTPUT}/checkpoint-100 && echo old > {OUTPUT}/checkpoint-50/model.json"
            f" && echo new > {OUTPUT}/checkpoint-100/model.json && python3 -c '{SEAL}' {OUTPUT}"
            f" && (setsid nohup bash -c 'while :; do date +%s%N > {OUTPUT}/checkpoint-100/model.json; sleep 0.02; done'"
            " >/dev/null 2>&1 < /dev/null &)")


def rent_and_write(tmp_path: Path, sim: Sim, label: str, what: str, shell: str) -> list[dict]:
    """Plays that rent an instance labelled ``label`` (no probe, no check) and run ``shell`` on it."""
    return [
        {"hosts": "localhost", "gather_facts": False,
         "roles": [{"role": "mlops.vast.provision", "vars": {
             "provision_label": label, "provision_query": good_query(sim, "reliability > 0.95 num_gpus=1"),
             "provision_probe": False, "provision_check": False, "provision_disk_gb": 10,
             "provision_exclusions_path": str(tmp_path / "excluded.json"),
             "provision_ssh_private_key": str(tmp_path / "key")}}]},
        {"hosts": "provisioned", "gather_facts": False,
         "tasks": [{"name": what, "ansible.builtin.shell": shell, "changed_when": True}]},
    ]


def rent_write_and_tear_down(tmp_path: Path, sim: Sim, **teardown_vars: object) -> Path:
    playbook = tmp_path / "teardown-guard.yml"
    playbook.write_text(yaml.safe_dump([
        *rent_and_write(tmp_path, sim, LABEL, "A run that keeps rewriting its newest checkpoint", REWRITER),
        {"hosts": "localhost", "gather_facts": False,
         "roles": [{"role": "mlops.vast.teardown", "vars": {
             "teardown_label": LABEL, "teardown_results_dir": str(tmp_path / "results"), **teardown_vars}}]},
    ]))
    return playbook


def instance_rows(sim: Sim) -> list[dict]:
    with sim.client() as client:
        rows = client.get("/api/v1/instances/").json()["instances"]
    return [row for row in rows if row["label"] == LABEL]


def test_unverified_checkpoint_stops_the_instance_instead_of_destroying_it(sim: Sim, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(tmp_path / "key"))
    inventory = str(local_inventory(tmp_path))

    done = run_playbook(str(rent_write_and_tear_down(tmp_path, sim)), env, "-i", inventory)
    assert done.returncode != 0, "teardown must fail when the newest checkpoint cannot be verified"
    assert "checkpoint-100" in done.stdout and "stopped, not destroyed" in done.stdout, failure_excerpt(done.stdout)
    rows = instance_rows(sim)
    assert len(rows) == 1, "the instance holding the only copy must not be destroyed"
    assert rows[0]["intended_status"] == "stopped"
    assert len(ledger_open(tmp_path)) == 1
    assert not (tmp_path / "results" / "teardown.json").exists()
    # What was verified-or-not is all on the controller too: the older checkpoint came home intact.
    assert (tmp_path / "results" / "checkpoints" / "checkpoint-50" / "model.json").read_text() == "old\n"

    # Giving the data up is one command, the one the failure message names; it proves the ledger empty.
    gone = run_playbook("playbooks/teardown.yml", env, "-i", inventory, "-e", f"teardown_label={LABEL}")
    assert gone.returncode == 0, failure_excerpt(gone.stdout)
    assert instance_rows(sim) == [] and ledger_open(tmp_path) == []


def test_teardown_keep_unverified_false_destroys_anyway(sim: Sim, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(tmp_path / "key"))
    playbook = rent_write_and_tear_down(tmp_path, sim, teardown_keep_unverified=False)
    done = run_playbook(str(playbook), env, "-i", str(local_inventory(tmp_path)))
    assert done.returncode == 0, failure_excerpt(done.stdout)
    record = json.loads((tmp_path / "results" / "teardown.json").read_text())
    assert record["checkpoints_verified"] is False and record["destroyed"]
    assert instance_rows(sim) == [] and ledger_open(tmp_path) == []


# Two sealed checkpoints on the host; only the older one was brought home before the run was interrupted.
SEALED = (f"mkdir -p {OUTPUT}/checkpoint-50 {OUTPUT}/checkpoint-100 && echo old > {OUTPUT}/checkpoint-50/model.json"
          f" && echo new > {OUTPUT}/checkpoint-100/model.json && python3 -c '{SEAL}' {OUTPUT}")


def rent_with_checkpoints(tmp_path: Path, sim: Sim, env: dict[str, str], label: str) -> int:
    playbook = tmp_path / f"rent-{label}.yml"
    playbook.write_text(yaml.safe_dump(rent_and_write(tmp_path, sim, label, "Two sealed checkpoints", SEALED)))
    done = run_playbook(str(playbook), env, "-i", str(local_inventory(tmp_path)))
    assert done.returncode == 0, failure_excerpt(done.stdout)
    with sim.client() as client:
        rows = [row for row in client.get("/api/v1/instances/").json()["instances"] if row["label"] == label]
    assert len(rows) == 1
    return rows[0]["id"]


def results_of_an_interrupted_run(tmp_path: Path, label: str, instance_id: int) -> Path:
    """What train.yml leaves before its teardown: the older checkpoint home, the watch's last word naming the
    instance the run trains on."""
    results = tmp_path / f"results-{label}"
    (results / "checkpoints" / "checkpoint-50").mkdir(parents=True)
    (results / "checkpoints" / "checkpoint-50" / "model.json").write_text("old\n")
    (results / "progress-watch.json").write_text(json.dumps({"instance_id": instance_id, "step": 120,
                                                             "outcome": None}))
    return results


def wait_status(sim: Sim, instance_id: int, status: str) -> None:
    with sim.client() as client:
        for _ in range(100):
            if client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]["actual_status"] == status:
                return
            time.sleep(0.1)
    raise AssertionError(f"instance {instance_id} never {status}")


def offline_then_tear_down(sim: Sim, tmp_path: Path, env: dict[str, str], label: str, *, offline_s: float | None,
                           wait_s: float) -> tuple[dict, str, Path]:
    """An interrupted run's instance goes offline (for ``offline_s``, None: for good); then the teardown the guard,
    the API and mlops-vast run: (teardown.json, its output, the results folder)."""
    instance = rent_with_checkpoints(tmp_path, sim, env, label)
    results = results_of_an_interrupted_run(tmp_path, label, instance)
    fault = {"kind": "offline", "instance_id": instance, **({"for_s": offline_s} if offline_s else {})}
    with sim.client() as client:
        assert client.post("/_sim/faults", json=fault).status_code == 200
    wait_status(sim, instance, "offline")
    done = run_playbook("playbooks/teardown.yml", env, "-i", "inventory/vast.yml", "-e", f"teardown_label={label}",
                        "-e", f"teardown_results_dir={results}", "-e", f"teardown_unreachable_wait_s={wait_s:g}")
    assert done.returncode == 0, failure_excerpt(done.stdout)
    assert not any(row["label"] == label for row in instance_rows_all(sim))
    return json.loads((results / "teardown.json").read_text()), done.stdout, results


def test_an_interrupted_run_whose_host_is_offline_gets_its_wait_through_the_inventory(sim: Sim,
                                                                                      tmp_path: Path) -> None:
    # The guard's, the API's and mlops-vast's teardown go through inventory/vast.yml, which lists running instances
    # only: a host offline at that moment is not in it, and was destroyed at once with its newer checkpoints.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(tmp_path / "key"))
    record, _, results = offline_then_tear_down(sim, tmp_path, env, "td-offline-back", offline_s=4, wait_s=60)
    assert record["host_reachable"] is True and record["checkpoints_verified"] is True, record
    assert record["newest_checkpoint"] == "checkpoint-100" and record["may_lose"] == "", record
    assert (results / "checkpoints" / "checkpoint-100" / "model.json").read_text() == "new\n"

    # One that stays offline past the wait: destroyed, and the record names what is home and what may be lost.
    record, out, _ = offline_then_tear_down(sim, tmp_path, env, "td-offline-gone", offline_s=None, wait_s=3)
    assert record["host_reachable"] is False and record["newest_checkpoint"] == "checkpoint-50", record
    assert "did not come back within 3 s" in record["may_lose"] and "(checkpoint-50) is lost with it" in \
        record["may_lose"], record
    assert "td-offline-gone: the host did not come back within 3 s" in out
    assert ledger_open(tmp_path) == []


def instance_rows_all(sim: Sim) -> list[dict]:
    with sim.client() as client:
        return client.get("/api/v1/instances/").json()["instances"]
