"""The orphan reaper (playbooks/reap.yml, mlops.vast.vast_reap) against vastsim: a controller killed with SIGKILL
mid-watch has its instance reaped by the next reap.yml; a fresh lease is never reaped; an instance whose ledger
was lost is found by its marker; check mode destroys nothing; a rerun changes nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ansible_collections.mlops.vast.plugins.module_utils.local_state import ContractLedger

from tests.conftest import REPO, Sim, needs_root, running_sim
from tests.integration.ansible_run import (
    ANSIBLE_BIN,
    ansible_env,
    close_ssh_masters,
    failure_excerpt,
    ledger_open,
    local_inventory,
    run_playbook,
    run_task,
)
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root]

CLI = str(ANSIBLE_BIN / "mlops-vast")


@pytest.fixture(scope="module")
def reap_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("reap-sim") / "state") as simulator:
        yield simulator


def open_on_sim(sim: Sim) -> list[int]:
    """The instances vastsim's billing ledger has open (rented, not destroyed)."""
    with sim.client() as client:
        return client.get("/_sim/ledger").json()["totals"]["open_instance_ids"]


def rent(sim: Sim, tmp_path: Path, label: str, env: dict[str, str]) -> int:
    result = run_task("mlops.vast.vast_instance", {
        "label": label, "query": good_query(sim, "reliability > 0.95 num_gpus=1"), "image": "pytorch/pytorch",
        "disk": 10, "wait": False}, env, tmp_path)
    assert not result.get("failed"), result.get("msg")
    return int(result["instance"]["id"])


def reap(env: dict[str, str], tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """reap.yml, and the report it writes (reap_report): the module's result."""
    out = tmp_path / "reap-result.json"
    out.unlink(missing_ok=True)
    done = run_playbook("playbooks/reap.yml", env, "-i", str(local_inventory(tmp_path)),
                        "-e", f"reap_report={out}", *extra, timeout=300)
    return done, json.loads(out.read_text()) if out.exists() else {}


def test_fresh_lease_kept_check_mode_destroys_nothing_then_reaped_and_idempotent(reap_sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(reap_sim, tmp_path)
    kept_id = rent(reap_sim, tmp_path, "reap-fresh", env)
    lease = next((tmp_path / "contracts.jsonl.leases").glob(f"*-{kept_id}.json"))
    assert json.loads(lease.read_text())["interval_s"] >= 600, "a rent's lease covers setup and the smoke test"

    done, result = reap(env, tmp_path)
    assert done.returncode == 0, failure_excerpt(done.stdout)
    assert [k["id"] for k in result["kept"]] == [kept_id] and result["orphans"] == [] and not result["changed"]
    assert kept_id in open_on_sim(reap_sim), "a fresh lease must never be reaped"

    # Stopped on purpose (as teardown leaves a host whose checkpoint it could not verify): kept, even at grace 0.
    with reap_sim.client() as client:
        assert client.put(f"/api/v0/instances/{kept_id}/", json={"state": "stopped"}).json()["success"]
        done, result = reap(env, tmp_path, "-e", "reap_lease_grace_s=0")
        assert done.returncode == 0 and result["orphans"] == [], failure_excerpt(done.stdout)
        assert "stopped on purpose" in result["kept"][0]["why"] and kept_id in open_on_sim(reap_sim)
        assert client.put(f"/api/v0/instances/{kept_id}/", json={"state": "running"}).json()["success"]

    # Check mode with grace 0, through the CLI: listed with its spend, nothing destroyed.
    done = subprocess.run([CLI, "reap", "--check", "--grace", "0", "--json"], env=env, cwd=tmp_path, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)["result"]
    assert [o["id"] for o in result["orphans"]] == [kept_id] and result["destroyed"] == [] and result["changed"]
    assert result["orphans"][0]["spent_usd"] is not None and "would destroy 1 orphan" in result["msg"]
    assert kept_id in open_on_sim(reap_sim) and ledger_open(tmp_path) == [kept_id]

    done, result = reap(env, tmp_path, "-e", "reap_lease_grace_s=0")
    assert done.returncode == 0, failure_excerpt(done.stdout)
    assert result["destroyed"] == [kept_id] and result["proven_gone"] and result["changed"]
    assert open_on_sim(reap_sim) == [] and ledger_open(tmp_path) == []
    assert not lease.exists(), "a destroyed contract's lease goes with it"

    done, result = reap(env, tmp_path, "-e", "reap_lease_grace_s=0")
    assert done.returncode == 0 and not result["changed"] and result["orphans"] == [], failure_excerpt(done.stdout)
    assert "changed=0" in done.stdout


def test_lost_ledger_found_by_marker_only_when_asked(reap_sim: Sim, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env_a = ansible_env(reap_sim, tmp_path / "a")
    lost_id = rent(reap_sim, tmp_path / "a", "reap-lost", env_a)
    # Another controller (its own ledger): the instance is not its own, so by default it is only reported.
    env_b = ansible_env(reap_sim, tmp_path / "b")
    done, result = reap(env_b, tmp_path / "b", "-e", "reap_lease_grace_s=0")
    assert done.returncode == 0, failure_excerpt(done.stdout)
    assert [f["id"] for f in result["foreign"]] == [lost_id] and result["orphans"] == []
    assert "unledgered=true reaps them" in result["msg"]
    assert lost_id in open_on_sim(reap_sim)
    # A scope that does not cover it, even with unledgered: left alone.
    done, result = reap(env_b, tmp_path / "b", "-e", "reap_lease_grace_s=0", "-e", "reap_unledgered=true",
                        "-e", "reap_label_prefix=other-")
    assert done.returncode == 0 and result["orphans"] == [] and result["foreign"] == [], failure_excerpt(done.stdout)
    # A label spared (teardown.yml spares a run whose teardown kept its instance stopped): left alone too.
    spared = run_task("mlops.vast.vast_reap", {"lease_grace_s": 0, "unledgered": True, "spare_labels": ["reap-lost"]},
                      env_b, tmp_path / "b")
    assert not spared.get("failed") and not spared["changed"], spared.get("msg")
    assert spared["orphans"] == [] and spared["foreign"] == [] and lost_id in open_on_sim(reap_sim)

    done, result = reap(env_b, tmp_path / "b", "-e", "reap_lease_grace_s=0", "-e", "reap_unledgered=true",
                        "-e", "reap_label_prefix=reap-")
    assert done.returncode == 0, failure_excerpt(done.stdout)
    assert result["destroyed"] == [lost_id] and result["orphans"][0]["source"] == "account" and result["proven_gone"]
    assert open_on_sim(reap_sim) == []
    # The controller that rented it catches up: its ledger marks it gone, nothing to reap.
    done, result = reap(env_a, tmp_path / "a")
    assert done.returncode == 0 and result["gone_already"] == [lost_id], failure_excerpt(done.stdout)
    assert ledger_open(tmp_path / "a") == []


def test_bad_reap_input_fails_before_anything(reap_sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(reap_sim, tmp_path)
    for bad, named in ((["-e", "reap_lease_grace_s=soon"], "reap_lease_grace_s"),
                       (["-e", "reap_grace_s=5"], "reap_grace_s")):
        done, result = reap(env, tmp_path, *bad)
        assert done.returncode != 0 and named in done.stdout and "Traceback" not in done.stdout, done.stdout[-2000:]
        assert result == {}
    done = subprocess.run([CLI, "reap", "--grace", "-1"], env=env, cwd=tmp_path, text=True, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2 and "--grace must be between 0 and" in done.stderr and "Traceback" not in done.stderr


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def test_controller_killed_mid_watch_is_reaped(reap_sim: Sim, tmp_path: Path) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(reap_sim, tmp_path, MLOPS_VAST_SSH_KEY=str(key), MLOPS_VAST_EXCLUSIONS=str(tmp_path / "x.json"))
    argv = [str(ANSIBLE_BIN / "ansible-playbook"), "playbooks/train.yml", "-i", str(local_inventory(tmp_path)),
            "-e", "@examples/run.yml", "-e", json.dumps({
                "run_name": "reap-killed", "run_query": good_query(reap_sim, "reliability > 0.95 num_gpus=1"),
                "run_command": "python3 train.py --output_dir /workspace/run/output --max_steps 100000 "
                               "--save_steps 50 --step_seconds 0.02",
                "run_results_dir": str(tmp_path / "results"), "run_max_runtime_s": 600,
                "run_poll_interval_s": 1, "run_sync_interval_s": 2, "run_stall_timeout_s": 60})]
    leases = tmp_path / "contracts.jsonl.leases"

    def watching() -> bool:  # the watch's thread has taken the lease over: a short promise
        return any(json.loads(p.read_text())["interval_s"] < 600 for p in leases.glob("*.json"))

    def descendants(pid: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = set(), [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
        return found

    log = (tmp_path / "train.log").open("w")
    left: set[int] = set()
    controller = subprocess.Popen(argv, env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: watching() or controller.poll() is not None, 400, "the watch")
        assert controller.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
        # Ansible's workers run in sessions of their own: the group's SIGKILL leaves the watching worker alive,
        # orphaned. It must stop renewing the lease (its controller is gone), so the instance becomes an orphan.
        left = descendants(controller.pid)
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(timeout=30)
        (orphan_id,) = ledger_open(tmp_path)
        assert open_on_sim(reap_sim) == [orphan_id], "the killed run leaves its instance billing"

        # A fresh ledger (the machine lost), check mode: found by its marker, listed, nothing destroyed.
        (tmp_path / "fresh").mkdir()
        fresh = ansible_env(reap_sim, tmp_path / "fresh")
        done, result = reap(fresh, tmp_path / "fresh", "--check", "-e", "reap_unledgered=true",
                            "-e", "reap_lease_grace_s=0")
        assert done.returncode == 0, failure_excerpt(done.stdout)
        found = [(o["id"], o["source"], o["label"]) for o in result["orphans"]]
        assert found == [(orphan_id, "account", "reap-killed")]
        assert result["destroyed"] == [] and open_on_sim(reap_sim) == [orphan_id]

        # The same ledger, the default grace (three of the watch's renewal periods): reaped, proven gone.
        wait_for(lambda: time.time() - json.loads(next(leases.glob("*.json")).read_text())["renewed_at"] > 3 * 2 + 1,
                 30, "the lease to expire")
        done, result = reap(env, tmp_path)
        assert done.returncode == 0, failure_excerpt(done.stdout)
        assert result["destroyed"] == [orphan_id] and result["proven_gone"], result
        assert "destroyed 1 orphan(s), proven gone" in done.stdout
        assert open_on_sim(reap_sim) == [] and ledger_open(tmp_path) == []
        with reap_sim.client() as client:
            assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
    finally:
        if controller.poll() is None:
            os.killpg(controller.pid, signal.SIGKILL)
            controller.wait(timeout=30)
        for pid in left:  # the orphaned worker and its ssh, by pid, if the destroy did not end them already
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        close_ssh_masters(env)



def test_train_yml_reaps_before_it_rents(reap_sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(reap_sim, tmp_path, MLOPS_VAST_EXCLUSIONS=str(tmp_path / "x.json"))
    orphan_id = rent(reap_sim, tmp_path, "reap-before-train", env)
    # train.yml's reap never goes below 5 minutes, whatever reap_lease_grace_s says: a lease renewed a minute ago is
    # kept, one renewed 10 minutes ago (a controller dead since) is reaped.
    ledger = ContractLedger(str(tmp_path / "contracts.jsonl"))
    (api_url,) = {c["api_url"] for c in ledger.open_contracts()}
    ledger.leases.renew(orphan_id, api_url=api_url, interval_s=2.0, now=time.time() - 60)
    done = run_playbook("playbooks/train.yml", env, "-i", str(local_inventory(tmp_path)), "-e", "@examples/run.yml",
                        "-e", json.dumps({"run_name": "reap-next-run", "run_query": "gpu_ram >= 100000",
                                          "run_results_dir": str(tmp_path / "results"), "reap_lease_grace_s": 0}),
                        timeout=300)
    assert done.returncode != 0 and "destroyed 1 orphan" not in done.stdout, failure_excerpt(done.stdout)
    assert "1 kept, watched (fresh lease)" in done.stdout and open_on_sim(reap_sim) == [orphan_id]
    ledger.leases.renew(orphan_id, api_url=api_url, interval_s=2.0, now=time.time() - 600)
    # A query no offer meets: the run fails at its rent, after the reap, and rents nothing.
    done = run_playbook("playbooks/train.yml", env, "-i", str(local_inventory(tmp_path)), "-e", "@examples/run.yml",
                        "-e", json.dumps({"run_name": "reap-next-run", "run_query": "gpu_ram >= 100000",
                                          "run_results_dir": str(tmp_path / "results"), "reap_lease_grace_s": 0}),
                        timeout=300)
    assert done.returncode != 0, failure_excerpt(done.stdout)
    assert f"destroyed 1 orphan(s), proven gone: {orphan_id} (reap-before-train" in done.stdout, done.stdout[-4000:]
    assert open_on_sim(reap_sim) == [] and ledger_open(tmp_path) == []
