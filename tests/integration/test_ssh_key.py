"""The collection brings its own SSH key: created once when none is configured, registered once, used for
every host; a configured key wins and nothing else is created."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, Sim, needs_root
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env, close_ssh_masters, failure_excerpt, run_task
from tests.integration.test_modules import good_query


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mine", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def test_the_collections_own_key_is_made_once_next_to_the_ledger(tmp_path: Path) -> None:
    env = ansible_env(None, tmp_path)  # MLOPS_VAST_LEDGER is tmp_path/contracts.jsonl
    first = run_task("mlops.vast.ssh_keypair", {}, env, tmp_path)
    assert not first.get("failed"), first
    key = tmp_path / "id_ed25519"
    assert first["changed"] and first["created"] and first["private_key_file"] == str(key)
    assert first["source"] == "the collection's own key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert first["public_key"].startswith("ssh-ed25519 ") and key.with_suffix(".pub").is_file()
    again = run_task("mlops.vast.ssh_keypair", {}, env, tmp_path)
    assert not again["changed"] and again["public_key"] == first["public_key"]
    key.with_suffix(".pub").unlink()  # a lost public half is derived again, the key stays the same
    derived = run_task("mlops.vast.ssh_keypair", {}, env, tmp_path)
    assert derived["changed"] and not derived["created"]
    assert derived["public_key"].split()[:2] == first["public_key"].split()[:2]


def test_a_configured_key_wins_and_a_missing_one_is_not_made(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    keygen(mine)
    env = ansible_env(None, tmp_path, MLOPS_VAST_SSH_KEY=str(mine))
    used = run_task("mlops.vast.ssh_keypair", {}, env, tmp_path)
    assert used["private_key_file"] == str(mine) and used["source"] == "MLOPS_VAST_SSH_KEY" and not used["changed"]
    assert not (tmp_path / "id_ed25519").exists()
    missing = ansible_env(None, tmp_path, MLOPS_VAST_SSH_KEY=str(tmp_path / "nope"))
    failed = run_task("mlops.vast.ssh_keypair", {}, missing, tmp_path)
    assert failed["failed"] and "does not exist" in failed["msg"] and "MLOPS_VAST_SSH_KEY" in failed["msg"]
    assert not (tmp_path / "nope").exists() and not (tmp_path / "id_ed25519").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    check = run_task("mlops.vast.ssh_keypair", {}, ansible_env(None, fresh), tmp_path, check=True)
    assert check["changed"] and check["created"] and not Path(check["private_key_file"]).exists()


def account_keys(sim: Sim) -> list[str]:
    with sim.client() as client:
        return [" ".join(k["key"].split()[:2]) for k in client.get("/api/v0/ssh/").json()]


@pytest.mark.slow
@needs_root
def test_a_machine_without_a_key_trains_twice_with_one_key_registered(sim: Sim, tmp_path: Path) -> None:
    home = tmp_path / "h"  # short: SSH control sockets live under it (a socket path has at most 107 bytes)
    home.mkdir()
    work = tmp_path / "work"  # the current directory: the results land under it
    work.mkdir()
    # What a new user has: the simulator's URL and key, a PATH, and the repository's ansible.cfg (as when
    # ansible-playbook runs from the repository root). No SSH key, no MLOPS_VAST_* variable.
    env = {"HOME": str(home), "PATH": f"{ANSIBLE_BIN}:/usr/bin:/bin:/usr/sbin:/sbin", "VAST_URL": sim.url,
           "VAST_API_KEY": sim.api_key, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "LANG": "C.UTF-8"}
    for run in (1, 2):
        short = {"run_query": good_query(sim, "reliability > 0.95 num_gpus=1"),
                 "run_command": "python3 train.py --output_dir /workspace/run/output --max_steps 60 --save_steps 30 "
                                "--logging_steps 10 --step_seconds 0.01",
                 "run_smoke_args": "--max_steps 20 --output_dir /workspace/run/smoke/output"}
        argv = [str(ANSIBLE_BIN / "ansible-playbook"), str(REPO / "playbooks" / "train.yml"),
                "-e", f"@{REPO / 'examples' / 'run.yml'}", "-e", json.dumps(short)]
        try:
            done = subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=600)
        finally:
            close_ssh_masters(env)
        assert done.returncode == 0, f"run {run}: " + failure_excerpt(done.stdout) + done.stderr[-2000:]
        assert "nothing is billing" in done.stdout
    key = home / ".local" / "state" / "mlops-vast" / "id_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert account_keys(sim) == [" ".join(key.with_suffix(".pub").read_text().split()[:2])]  # one key, not two
    assert not (home / ".ssh").exists() or not any((home / ".ssh").glob("id_*"))
    assert (work / "results" / "tiny-demo" / "teardown.json").is_file()
    with sim.client() as client:
        totals = client.get("/_sim/ledger").json()["totals"]
    assert totals["open_instances"] == 0 and totals["instances"] >= 2
    assert os.listdir(home / ".local" / "state" / "mlops-vast")  # the ledger and the key, together
