"""The repository works as the collection mlops.vast from a clone: docs render, playbooks run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, Sim
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env, ledger_open, run_playbook

CONTROLLER_MODULES = ["vast_offer", "vast_instance", "vast_ssh_key"]
HOST_MODULES = {"gpu_check": "min_vram_gb", "bandwidth_probe": "min_mbps"}
MODULES = [*CONTROLLER_MODULES, *HOST_MODULES]


@pytest.mark.parametrize(("kind", "name", "must_show"), [
    *[("module", f"mlops.vast.{m}", ["api_key", "EXAMPLES", "RETURN VALUES"]) for m in CONTROLLER_MODULES],
    *[("module", f"mlops.vast.{m}", [option, "EXAMPLES", "RETURN VALUES"]) for m, option in HOST_MODULES.items()],
    ("inventory", "mlops.vast.vast", ["statuses", "keyed_groups", "label_prefix"]),
])
def test_ansible_doc_renders(tmp_path: Path, kind: str, name: str, must_show: list[str]) -> None:
    env = ansible_env(None, tmp_path)
    done = subprocess.run([str(ANSIBLE_BIN / "ansible-doc"), "-t", kind, name], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr
    for text in must_show:
        assert text in done.stdout, f"{text} missing from ansible-doc {name}"


def test_ansible_doc_lists_every_module(tmp_path: Path) -> None:
    env = ansible_env(None, tmp_path)
    done = subprocess.run([str(ANSIBLE_BIN / "ansible-doc"), "-l", "mlops.vast"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert {f"mlops.vast.{m}" for m in MODULES} <= listed, done.stdout


@pytest.mark.slow
def test_rent_playbook_rents_pings_through_the_inventory_and_destroys(sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(sim, tmp_path)  # no MLOPS_VAST_SSH_KEY: the collection's own key, next to the ledger
    done = run_playbook("playbooks/rent.yml", env, "-i", "inventory/vast.yml", "-e", "rent_label=rent-e2e")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "ok: [localhost -> rent-e2e(" in done.stdout  # the ping went to the inventory host by its label
    # The account was asked: exactly the rental while it ran, nothing of the label after the destroy.
    assert "The account confirms only [" in done.stdout and "nothing of rent-e2e is billing" in done.stdout
    # ... over the key the inventory plugin gave the group: the one rent.yml made and registered.
    with sim.client() as client:
        keys = [" ".join(k["key"].split()[:2]) for k in client.get("/api/v0/ssh/").json()]
    assert keys == [" ".join((tmp_path / "id_ed25519.pub").read_text().split()[:2])]
    with sim.client() as client:
        ledger = client.get("/_sim/ledger").json()
    assert ledger["totals"]["open_instances"] == 0
    assert [row["label"] for row in ledger["rows"]] == ["rent-e2e"]
    assert ledger["rows"][0]["running_seconds"] > 0
    assert ledger_open(tmp_path) == []
