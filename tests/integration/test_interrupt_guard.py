"""Interruptions and the account proof, end to end against vastsim: a plain ``ansible-playbook playbooks/train.yml``
(a real process, real sshd hosts) signalled mid-run leaves nothing billing within 60 s with its newest sealed
checkpoint home (the guard callback, mlops.vast.guard); the proof every playbook ends with asks the account and
fails when an instance of the label still bills; spend.json is what vastsim's own ledger charged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from ansible_collections.mlops.vast.plugins.module_utils import checkpoint_manifest as cm

from tests.conftest import REPO, Sim, needs_root, rent, running_sim, ssh_run
from tests.integration.ansible_run import (
    ANSIBLE_BIN,
    ansible_env,
    close_ssh_masters,
    ledger_open,
    local_inventory,
    run_playbook,
    run_task,
)
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root]

# ~0.05 s a step: a checkpoint every 2.5 s, and far more steps than the test waits for.
LONG = ("python3 train.py --output_dir /workspace/run/output --logging_steps 10 --save_steps 50 "
        "--max_steps 6000 --step_seconds 0.05")


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("guard-sim") / "state") as simulator:
        yield simulator


def start_train(sim: Sim, tmp_path: Path, name: str, hangup: signal.Handlers = signal.SIG_DFL, *,
                guard: bool = True, results: Path | None = None
                ) -> tuple[subprocess.Popen[str], dict[str, str], Path]:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(key), MLOPS_VAST_EXCLUSIONS=str(tmp_path / "excl.json"),
                      # Set here, this list replaces ansible.cfg's: the guard is named as a user would name it.
                      ANSIBLE_CALLBACKS_ENABLED="mlops.vast.guard,mlops.vast.progress" if guard
                      else "mlops.vast.progress",
                      MLOPS_VAST_PROGRESS_FILE=str(tmp_path / "progress.json"))
    argv = [str(ANSIBLE_BIN / "ansible-playbook"), "playbooks/train.yml", "-i", str(local_inventory(tmp_path)),
            "-e", "@examples/run.yml",
            "-e", json.dumps({"run_name": name, "run_command": LONG,
                              "run_query": good_query(sim, "reliability > 0.95 num_gpus=1"),
                              "run_results_dir": str(results or tmp_path / "results"), "run_poll_interval_s": 1,
                              "run_sync_interval_s": 2, "run_stall_timeout_s": 30})]
    out = (tmp_path / "out.log").open("w")
    # As from a terminal: SIGHUP at its default even when the suite runs under nohup (which the guard respects).
    # Without the guard, in a session of its own: the test kills the whole playbook, workers too, as a crash would.
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                               text=True, cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup),
                               start_new_session=not guard)
    return process, env, tmp_path / "out.log"


def wait_phase(process: subprocess.Popen[str], tmp_path: Path, phase: str, *, sealed_home: bool = False,
               timeout: float = 300, results: Path | None = None) -> None:
    """Until the progress file says ``phase`` (and a sealed checkpoint is home, when asked)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert process.poll() is None, (tmp_path / "out.log").read_text()[-4000:]
        try:
            now = json.loads((tmp_path / "progress.json").read_text())["phase"]
        except (OSError, ValueError, KeyError):
            now = None
        home = list((results or tmp_path / "results").joinpath("checkpoints").glob(f"checkpoint-*/{cm.MANIFEST_NAME}"))
        if now == phase and (home or not sealed_home):
            return
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"phase {phase} never came: " + (tmp_path / "out.log").read_text()[-4000:])


def host_sealed(sim: Sim, key: Path, label: str) -> list[int]:
    """The steps of the checkpoints sealed on the rented host now."""
    with sim.client() as client:
        row = next(r for r in client.get("/api/v1/instances/").json()["instances"] if r["label"] == label)
    port = int(row["ports"]["22/tcp"][0]["HostPort"])
    # The checkpoint agent's index of what it sealed: what the product itself counts as sealed.
    listing = ssh_run(row["public_ipaddr"], port, key, "cat /workspace/run/output/.mlops-sealed 2>/dev/null || true",
                      timeout=30)
    return sorted(int(line.split("checkpoint-")[1]) for line in listing.stdout.split() if "checkpoint-" in line)


def finish(process: subprocess.Popen[str], env: dict[str, str], log: Path, timeout: float = 180) -> str:
    try:
        process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        close_ssh_masters(env)
    return log.read_text()


def account_and_ledger(sim: Sim, tmp_path: Path, label: str) -> dict:
    """Nothing open; the label's last instance, with ``cost`` the whole label's (a host rejected first too)."""
    with sim.client() as client:
        ledger = client.get("/_sim/ledger").json()
    assert ledger["totals"]["open_instances"] == 0, ledger["totals"]
    assert ledger_open(tmp_path) == []
    rows = [r for r in ledger["rows"] if r["label"] == label]
    return {**rows[-1], "cost": sum(r["cost"] for r in rows)}


def verify_home(checkpoint: Path) -> None:
    manifest = cm.parse_manifest((checkpoint / cm.MANIFEST_NAME).read_text())
    for entry in manifest["files"]:
        data = (checkpoint / entry["path"]).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"], entry["path"]


def test_sigint_during_the_watch_leaves_nothing_billing_and_brings_the_newest_checkpoint_home(
        shared_sim: Sim, tmp_path: Path) -> None:
    label = "guard-int"
    process, env, log = start_train(shared_sim, tmp_path, label)
    wait_phase(process, tmp_path, "training", sealed_home=True)
    # A second run of the name while this one trains is refused before it moves, rents or writes anything: it would
    # take over this run's instance (renting adopts the label's instance, as a re-run after a killed controller should).
    home = sorted(path.name for path in (tmp_path / "results" / "checkpoints").iterdir())
    contracts = (tmp_path / "contracts.jsonl").read_text()
    second = run_playbook("playbooks/train.yml", {**env, "MLOPS_VAST_PROGRESS_FILE": str(tmp_path / "second.json")},
                          "-i", str(local_inventory(tmp_path)), "-e", "@examples/run.yml",
                          "-e", json.dumps({"run_name": label, "run_command": LONG,
                                            "run_results_dir": str(tmp_path / "results")}), timeout=300)
    assert second.returncode == 2, second.stdout[-3000:]
    assert f"A run named {label} is already going on this controller (ansible-playbook pid {process.pid}," \
        in second.stdout, second.stdout[-3000:]
    assert process.poll() is None and not list((tmp_path / "results").glob("checkpoints.before-*"))
    assert set(home) <= {path.name for path in (tmp_path / "results" / "checkpoints").iterdir()}
    assert (tmp_path / "contracts.jsonl").read_text() == contracts, "the second run rented nothing"
    before = host_sealed(shared_sim, tmp_path / "key", label)
    assert before, "no sealed checkpoint on the host although one is home"
    sent = time.time()
    process.send_signal(signal.SIGINT)
    output = finish(process, env, log)

    assert process.returncode == 99, output[-4000:]  # Ansible's own "User interrupted execution"
    assert "[mlops.vast.guard] SIGINT" in output and "verified gone" in output, output[-4000:]
    row = account_and_ledger(shared_sim, tmp_path, label)
    print(f"SIGINT in the watch: destroyed {row['destroyed_at'] - sent:.1f} s after the signal")
    assert row["destroyed_at"] - sent < 60, row
    results = tmp_path / "results"
    teardown = json.loads((results / "teardown.json").read_text())
    assert teardown["checkpoints_verified"] is True, teardown
    newest = teardown["newest_checkpoint"]
    # What the host had sealed when the signal came is home, or a newer one it sealed before it was destroyed.
    assert int(newest.split("-")[1]) >= before[-1], (newest, before)
    for checkpoint in (results / "checkpoints").glob("checkpoint-*"):
        verify_home(checkpoint)  # every sealed checkpoint home (the newest included) matches its manifest
    assert (results / "checkpoints" / newest / cm.MANIFEST_NAME).exists()
    assert f"newest sealed checkpoint {newest} verified and home" in output
    spend = json.loads((results / "spend.json").read_text())
    assert spend["billing"] == [] and abs(spend["total_usd"] - row["cost"]) < 0.01, (spend, row)


def test_sigterm_during_setup_leaves_nothing_billing(shared_sim: Sim, tmp_path: Path) -> None:
    label = "guard-term"
    process, env, log = start_train(shared_sim, tmp_path, label)
    wait_phase(process, tmp_path, "setup")
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    output = finish(process, env, log)

    assert process.returncode == -signal.SIGTERM, output[-4000:]  # ended as SIGTERM ends it, once the guard is done
    assert "[mlops.vast.guard] SIGTERM" in output and "verified gone" in output, output[-4000:]
    row = account_and_ledger(shared_sim, tmp_path, label)
    print(f"SIGTERM in setup: destroyed {row['destroyed_at'] - sent:.1f} s after the signal")
    assert row["destroyed_at"] - sent < 60, row


def test_sighup_while_renting_then_a_second_one_ends_ansible_and_the_teardown_goes_on(
        shared_sim: Sim, tmp_path: Path) -> None:
    label = "guard-hup"
    process, env, log = start_train(shared_sim, tmp_path, label)
    end = time.monotonic() + 300
    while not ledger_open(tmp_path) and time.monotonic() < end and process.poll() is None:
        time.sleep(0.2)  # until the contract exists: the rental is under way
    assert ledger_open(tmp_path), log.read_text()[-4000:]
    sent = time.time()
    process.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    process.send_signal(signal.SIGHUP)
    output = finish(process, env, log, timeout=60)

    assert process.returncode == -signal.SIGHUP, output[-4000:]
    assert "[mlops.vast.guard] SIGHUP again: Ansible stops now" in output, output[-4000:]
    assert "still running in the background" in output
    guard_log = tmp_path / "results" / "guard.log"
    # The detached teardown finishes on its own; its recap's counts are the last thing it writes.
    while not re.search(r"PLAY RECAP.*failed=\d+\s", guard_log.read_text(), re.S) and time.monotonic() < end:
        time.sleep(0.5)
    assert re.search(r"PLAY RECAP.*failed=0\s", guard_log.read_text(), re.S), guard_log.read_text()[-3000:]
    row = account_and_ledger(shared_sim, tmp_path, label)
    print(f"SIGHUP twice while renting: destroyed {row['destroyed_at'] - sent:.1f} s after the first signal")
    assert row["destroyed_at"] - sent < 60, row


def test_a_hangup_ignored_on_entry_stays_ignored_under_the_guard(shared_sim: Sim, tmp_path: Path) -> None:
    """nohup ansible-playbook ...: the guard takes no SIGHUP the user asked to ignore; the training goes on."""
    label = "guard-nohup"
    process, env, log = start_train(shared_sim, tmp_path, label, hangup=signal.SIG_IGN)
    wait_phase(process, tmp_path, "training")
    process.send_signal(signal.SIGHUP)
    time.sleep(5)
    assert process.poll() is None, log.read_text()[-4000:]
    assert "[mlops.vast.guard]" not in log.read_text() and not (tmp_path / "results" / "guard.log").exists()
    process.send_signal(signal.SIGINT)  # the end of the test: the guard tears down as usual
    output = finish(process, env, log)
    assert "[mlops.vast.guard] SIGINT" in output and "verified gone" in output, output[-4000:]
    account_and_ledger(shared_sim, tmp_path, label)


def test_mlops_vast_teardown_brings_a_dead_runs_newest_checkpoint_home_before_destroying(
        shared_sim: Sim, tmp_path: Path) -> None:
    """The controller died (SIGKILL, no guard) while the host trained on: `mlops-vast teardown --label` finds the
    run's folder under ./results (its run.json), pulls and verifies the newest sealed checkpoint, then destroys."""
    label = "cli-dead"
    results = tmp_path / "results" / label
    process, env, log = start_train(shared_sim, tmp_path, label, guard=False, results=results)
    try:
        wait_phase(process, tmp_path, "training", sealed_home=True, results=results)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        finish(process, env, log, timeout=30)
    at_death = {p.name for p in (results / "checkpoints").glob("checkpoint-*")}
    end = time.monotonic() + 60
    while time.monotonic() < end and not set(host_sealed(shared_sim, tmp_path / "key", label)) - {
            int(name.split("-")[1]) for name in at_death}:
        time.sleep(1)  # the host trains on and seals a checkpoint the dead controller never pulled
    newest_on_host = host_sealed(shared_sim, tmp_path / "key", label)[-1]
    assert f"checkpoint-{newest_on_host}" not in at_death, (newest_on_host, at_death)
    assert ledger_open(tmp_path), "the killed run's contract is still open: what the teardown must close"

    try:
        done = subprocess.run([str(ANSIBLE_BIN / "mlops-vast"), "teardown", "--label", label, "--json",
                               "--api-url", shared_sim.url], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    finally:
        close_ssh_masters(env)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    record = json.loads(done.stdout)
    home = record["brought_home"][label]
    assert home["ok"] and home["checkpoints_verified"] is True and Path(home["results_dir"]).resolve() == results
    newest = home["newest_checkpoint"]
    assert int(newest.split("-")[1]) >= newest_on_host, (newest, newest_on_host)
    verify_home(results / "checkpoints" / newest)
    assert (results / "run.log").exists() and (results / f"teardown-{label}.log").exists()
    # The run was stopped before the listing: it ended (its exit code came home) and sealed nothing after it, so
    # the newest checkpoint home is the one teardown.json names.
    assert (results / "EXIT_CODE").read_text().strip() not in ("", "0"), "the run was not stopped, it finished"
    home_steps = [int(p.name.split("-")[1]) for p in (results / "checkpoints").glob("checkpoint-*")]
    assert max(home_steps) == int(newest.split("-")[1]), (home_steps, newest)
    assert [row["label"] for row in record["destroyed"]] == [label] and record["still_open"] == []
    account_and_ledger(shared_sim, tmp_path, label)


def test_mlops_vast_teardown_all_keeps_an_unverified_run_and_destroys_the_rest(
        shared_sim: Sim, tmp_path: Path) -> None:
    """--all with two open runs: one whose folder says its checkpoints are somewhere they are not sealed (nothing to
    verify: fine) and one whose results folder cannot be written (the pull fails): that one is kept, stopped, and
    the command fails saying so; the other is destroyed."""
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(shared_sim, tmp_path, MLOPS_VAST_EXCLUSIONS=str(tmp_path / "excl.json"),
                      MLOPS_VAST_SSH_KEY=str(key))
    registered = run_task("mlops.vast.vast_ssh_key", {"public_key_file": f"{key}.pub"}, env, tmp_path)
    assert not registered.get("failed"), registered  # the account's key: what a new instance lets in
    for label in ("td-all-a", "td-all-b"):
        rented = run_task("mlops.vast.vast_instance", {"label": label, "query": good_query(shared_sim),
                                                        "image": "pytorch/pytorch:latest", "disk": 12,
                                                        "state": "present"}, env, tmp_path)
        assert rented["changed"] and not rented.get("failed"), rented
        folder = tmp_path / "results" / label
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"name": label, "remote_dir": "/workspace/run",
                                                     "checkpoint_glob": "checkpoint-*", "keep_checkpoints": 3,
                                                     "started_at": time.time()}))
    unwritable = tmp_path / "results" / "td-all-b"
    (unwritable / "checkpoints").write_text("a file where the checkpoints folder goes: the pull fails")
    # And one of ours that the ledger lost (its line gone): only the account knows it, by this controller's marker.
    lost = run_task("mlops.vast.vast_instance", {"label": "td-all-c", "query": good_query(shared_sim),
                                                 "image": "pytorch/pytorch:latest", "disk": 12, "wait": False},
                    env, tmp_path)
    assert lost["changed"] and not lost.get("failed"), lost
    ledger = tmp_path / "contracts.jsonl"
    ledger.write_text("".join(line for line in ledger.read_text().splitlines(keepends=True)
                              if json.loads(line)["id"] != lost["instance"]["id"]))
    try:
        done = subprocess.run([str(ANSIBLE_BIN / "mlops-vast"), "teardown", "--all", "--api-url", shared_sim.url],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    finally:
        close_ssh_masters(env)
    said = done.stdout + done.stderr
    assert done.returncode == 1, said[-3000:]
    assert "td-all-a" in done.stdout and "destroyed and closed in the ledger" in done.stdout, said[-3000:]
    assert "td-all-b: its data could not be brought home" in done.stderr, said[-3000:]
    # The kept run spared, the reap still ran: the instance the ledger lost is destroyed, and said.
    assert (f"destroyed too, in no ledger here but marked as this controller's: {lost['instance']['id']} (td-all-c)"
            in done.stdout), said[-3000:]
    assert "nothing this controller rented is billing, but for the instances kept stopped" in done.stdout
    assert "td-all-b" in done.stdout.rsplit("kept stopped", 1)[1] and "TASK [" not in said, said[-3000:]
    with shared_sim.client() as client:
        rows = [r for r in client.get("/api/v1/instances/").json()["instances"] if r["label"].startswith("td-all-")]
    # Kept, stopped (Vast says "exited"); the other one destroyed.
    assert [(r["label"], r["actual_status"]) for r in rows] == [("td-all-b", "exited")], rows
    gone = subprocess.run([str(ANSIBLE_BIN / "mlops-vast"), "teardown", "--label", "td-all-b", "--no-pull",
                           "--api-url", shared_sim.url], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert gone.returncode == 0, (gone.stdout + gone.stderr)[-3000:]
    assert ledger_open(tmp_path) == []


def proof_playbook(tmp_path: Path, label: str) -> Path:
    path = tmp_path / "proof.yml"
    path.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "proof", "ansible.builtin.include_tasks": str(REPO / "playbooks/tasks/account_proof.yml"),
                   "vars": {"proof_label": label, "proof_results_dir": str(tmp_path)}}]}]))
    return path


def test_the_account_proof_fails_while_an_instance_of_the_label_bills_and_reports_the_ledgers_spend(
        shared_sim: Sim, tmp_path: Path) -> None:
    label = "proof-left"
    env = ansible_env(shared_sim, tmp_path)
    with shared_sim.client() as client:
        instance_id = rent(client, label=label)
        try:
            left = run_playbook(str(proof_playbook(tmp_path, label)), env, "-i", str(local_inventory(tmp_path)))
            assert left.returncode == 2, left.stdout[-3000:]
            assert f"The account still bills 1 instance(s) with label '{label}': [{instance_id}]" in left.stdout
            assert f"teardown_label={label}" in left.stdout and "Traceback" not in left.stdout + left.stderr
        finally:
            assert client.delete(f"/api/v0/instances/{instance_id}/").status_code == 200
        done = run_playbook(str(proof_playbook(tmp_path, label)), env, "-i", str(local_inventory(tmp_path)))
        assert done.returncode == 0, done.stdout[-3000:]
        row = next(r for r in client.get("/_sim/ledger").json()["rows"] if r["id"] == instance_id)
    spend = json.loads((tmp_path / "spend.json").read_text())
    assert spend["instance_ids"] == [instance_id] and spend["billing"] == []
    assert abs(spend["total_usd"] - row["cost"]) < 0.01 and spend["total_usd"] > 0, (spend, row)
    assert abs(spend["gpu_usd"] - row["gpu_cost"]) < 0.01 and abs(spend["storage_usd"] - row["storage_cost"]) < 0.01
    assert f"nothing of {label} is billing" in done.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-v"]))
