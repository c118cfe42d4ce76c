"""mlops.vast.provision on vastsim: one good instance is rented and answers SSH; every host rejected on the
way is destroyed and excluded. Checked on the controller (vastsim's API, the exclusions file) and on the
instance over SSH (molecule's inventory does not know it: the role rented it in converge)."""

import json
import os
from pathlib import Path

import httpx
import pytest
import testinfra

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SIM = EPHEMERAL / "vastsim"
LABEL = "molecule-provision"


def sim_get(path):
    headers = {"Authorization": f"Bearer {(SIM / 'api_key').read_text().strip()}"}
    return httpx.get((SIM / "url").read_text().strip() + path, headers=headers, timeout=30).json()


@pytest.fixture(scope="module")
def ledger():
    return sim_get("/_sim/ledger")


@pytest.fixture(scope="module")
def defects():
    return {m["machine_id"]: m["defects"] for m in sim_get("/_sim/machines")["machines"] if m["defects"]}


@pytest.fixture(scope="module")
def instance():
    rows = [r for r in sim_get("/api/v1/instances/")["instances"] if r["label"] == LABEL]
    assert len(rows) == 1, rows
    return rows[0]


def test_exactly_one_instance_is_open_and_it_is_running(ledger, instance):
    assert ledger["totals"]["open_instance_ids"] == [instance["id"]]
    assert instance["actual_status"] == "running"


def test_the_accepted_host_has_no_defect(instance, defects):
    assert instance["machine_id"] not in defects


def test_every_rejected_host_was_bad_destroyed_and_excluded(ledger, instance, defects):
    rejected = [row for row in ledger["rows"] if row["id"] != instance["id"]]
    excluded = json.loads((SIM / "excluded_machines.json").read_text())["machines"] if rejected else {}
    for row in rejected:
        assert row["destroyed_at"] is not None, row
        assert row["machine_id"] in defects, row
        assert str(row["machine_id"]) in excluded, excluded


def test_the_instance_answers_ssh_with_the_registered_key(instance):
    port = int(instance["ports"]["22/tcp"][0]["HostPort"])
    host = testinfra.get_host(f"ssh://root@{instance['public_ipaddr']}:{port}",
                              ssh_identity_file=str(SIM / "id_ed25519"), controlpersist=0,
                              ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
    assert host.check_output("echo $SSH_CONNECTION").split()[-1] == str(port)
    assert host.check_output("hostname") == f"C.{instance['id']}"
