"""mlops.vast.teardown after a finished run: results and the verified newest checkpoint are on the controller,
the instance is destroyed and vastsim's ledger shows nothing open. The host is gone, so everything here is
checked on the controller (and through vastsim's API)."""

import json
import os
from pathlib import Path

import httpx

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
RESULTS = EPHEMERAL / "results"
SIM = EPHEMERAL / "vastsim"


def sim_get(path):
    headers = {"Authorization": f"Bearer {(SIM / 'api_key').read_text().strip()}"}
    return httpx.get((SIM / "url").read_text().strip() + path, headers=headers, timeout=30).json()


def test_the_runs_files_came_home():
    assert (RESULTS / "EXIT_CODE").read_text().strip() == "0"
    assert "'train_loss'" in (RESULTS / "run.log").read_text().splitlines()[-1]
    assert "molecule-teardown" in (RESULTS / "STATUS.md").read_text()
    assert (RESULTS / "output" / "metrics.jsonl").is_file()


def test_the_newest_checkpoints_came_home_verified():
    assert sorted(p.name for p in (RESULTS / "checkpoints").iterdir()) == [
        "checkpoint-100", "checkpoint-150", "checkpoint-200"]
    record = json.loads((RESULTS / "teardown.json").read_text())
    assert record["label"] == "molecule-teardown"
    assert record["host_reachable"] is True and record["checkpoints_verified"] is True
    assert record["newest_checkpoint"] == "checkpoint-200"
    assert len(record["destroyed"]) == 1


def test_the_instance_is_destroyed_and_nothing_is_open():
    ledger = sim_get("/_sim/ledger")
    assert ledger["totals"]["open_instances"] == 0, ledger["totals"]
    row = next(r for r in ledger["rows"] if r["label"] == "molecule-teardown")
    assert row["destroyed_at"] is not None
    assert json.loads((RESULTS / "teardown.json").read_text())["destroyed"] == [row["id"]]
    assert sim_get("/api/v0/instances/")["instances"] == []


def test_the_local_contract_ledger_holds_nothing_open():
    live = {}
    for line in (SIM / "contracts.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "created":
            live[record["id"]] = record
        else:
            live.pop(record["id"], None)
    assert live == {}
