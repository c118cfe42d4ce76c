"""The reaper's local state: leases beside the ledger, the controller's id, and what it reads of instance rows."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from ansible_collections.mlops.vast.plugins.module_utils.local_state import LONG_LEASE_S, ContractLedger, Leases
from ansible_collections.mlops.vast.plugins.module_utils.rows import extra_env, instance_spend_usd
from ansible_collections.mlops.vast.plugins.modules.vast_reap import VastReap, lease_times
from ansible_collections.mlops.vast.plugins.plugin_utils.lease_keeper import LeaseKeeper

API = "http://127.0.0.1:1"


def test_a_contract_gets_a_long_lease_that_goes_with_its_destroy(tmp_path: Path) -> None:
    ledger = ContractLedger(str(tmp_path / "contracts.jsonl"))
    ledger.created(7, label="exp", offer_id=1, machine_id=2, api_url=API)
    lease = ledger.leases.get(7, API)
    assert lease is not None and lease["interval_s"] == LONG_LEASE_S and lease["label"] == "exp"
    assert abs(lease["renewed_at"] - time.time()) < 5
    assert ledger.leases.get(7, "http://elsewhere") is None, "leases are per API, as the ledger's contracts"
    ledger.destroyed(7, api_url=API)
    assert ledger.leases.get(7, API) is None and ledger.open_contracts(API) == []


def test_the_controller_id_is_made_once_and_stays(tmp_path: Path) -> None:
    ledger = ContractLedger(str(tmp_path / "state" / "contracts.jsonl"))
    assert ledger.controller_id(create=False) is None
    first = ledger.controller_id()
    assert first and len(first) == 16 and ledger.controller_id() == first
    assert ContractLedger(str(tmp_path / "state" / "contracts.jsonl")).controller_id(create=False) == first
    assert ContractLedger(str(tmp_path / "other.jsonl")).controller_id() != first, "a lost ledger is a new controller"
    assert oct(os.stat(ledger.path + ".controller").st_mode & 0o777) == "0o600"


def test_the_keeper_renews_only_its_own_contracts_and_hands_over_long(tmp_path: Path) -> None:
    ledger = ContractLedger(str(tmp_path / "contracts.jsonl"))
    ledger.created(8, label="exp", offer_id=1, machine_id=2, api_url=API)
    with LeaseKeeper(8, API, 0.1, ledger=ledger) as keeper:
        assert keeper.every_s == 2.0, "renewals are bounded below"
        assert ledger.leases.get(8, API)["interval_s"] == 2.0
    assert keeper.renewals >= 2 and ledger.leases.get(8, API)["interval_s"] == LONG_LEASE_S
    with LeaseKeeper(9, API, 5, ledger=ledger) as stranger:
        pass
    assert not stranger.owned and ledger.leases.get(9, API) is None, "no lease for a contract not in the ledger"


def test_extra_env_and_spend_from_an_instance_row() -> None:
    row = {"extra_env": [["MLOPS_VAST_CONTROLLER", "abc"], ["-p 8080:8080", "1"], ["bad"]], "start_date": 1000.0,
           "dph_total": 0.5, "dph_base": 0.4, "uptime_mins": 30.0, "storage_total_cost": 0.1}
    assert extra_env(row) == {"MLOPS_VAST_CONTROLLER": "abc", "-p 8080:8080": "1"}
    assert extra_env({"extra_env": None}) == {}
    assert instance_spend_usd(row, 1000.0 + 3600) == 0.3  # half an hour of GPU at 0.4, an hour of storage at 0.1
    assert instance_spend_usd({**row, "uptime_mins": None}, 1000.0 + 1800) == 0.25  # dph_total over its age
    assert instance_spend_usd({"dph_total": 0.5}, 10.0) is None


def test_a_lease_that_cannot_be_dropped_never_fails_the_destroy(tmp_path: Path, monkeypatch) -> None:
    ledger = ContractLedger(str(tmp_path / "contracts.jsonl"))
    ledger.created(10, label="exp", offer_id=1, machine_id=2, api_url=API)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Leases, "drop", refuse)
    warning = ledger.destroyed(10, api_url=API)
    assert warning and "10 is destroyed" in warning and "Permission denied" in warning
    assert ledger.open_contracts(API) == [], "the destroy is recorded all the same"
    monkeypatch.undo()
    ledger.created(11, label="exp", offer_id=1, machine_id=2, api_url=API)
    assert ledger.destroyed(11, api_url=API) is None


def test_a_teardown_renews_its_labels_leases_with_the_long_promise(tmp_path: Path) -> None:
    ledger = ContractLedger(str(tmp_path / "contracts.jsonl"))
    ledger.created(12, label="exp", offer_id=1, machine_id=2, api_url=API)
    ledger.created(13, label="other", offer_id=1, machine_id=2, api_url=API)
    ledger.leases.renew(12, api_url=API, interval_s=2.0, now=time.time() - 3600)
    ledger.leases.renew(13, api_url=API, interval_s=2.0, now=time.time() - 3600)
    assert ledger.renew_leases("exp") == [12]
    lease = ledger.leases.get(12, API)
    assert lease["interval_s"] == LONG_LEASE_S and abs(lease["renewed_at"] - time.time()) < 5
    assert time.time() - ledger.leases.get(13, API)["renewed_at"] > 3000, "another label's lease is left alone"
    assert ledger.renew_leases("nobody") == []


def test_a_lease_with_values_that_are_not_numbers_counts_from_the_rent() -> None:
    assert lease_times({"renewed_at": 100.0, "interval_s": 2}, 50.0) == (100.0, 2.0, None)
    assert lease_times({}, 50.0) == (50.0, LONG_LEASE_S, None)
    renewed_at, interval_s, bad = lease_times({"renewed_at": "yesterday", "interval_s": 2}, 50.0)
    assert (renewed_at, interval_s) == (50.0, LONG_LEASE_S) and bad and "'yesterday'" in bad
    assert lease_times({"renewed_at": [1]}, 50.0)[2], "a list is not a time either"


def test_the_automatic_reap_never_goes_below_its_floor() -> None:
    def grace(given: float | None, floor: float, interval_s: float) -> float:
        return VastReap.grace(SimpleNamespace(params={"lease_grace_s": given, "min_grace_s": floor}), interval_s)

    assert grace(None, 0, 2.0) == 6.0, "reap.yml: three promised intervals"
    assert grace(0, 0, 2.0) == 0.0, "reap.yml: 0 reaps at once"
    assert grace(None, 300, 2.0) == 300.0, "train.yml's reap: a 2 s poll interval is no 6 s grace"
    assert grace(0, 300, 2.0) == 300.0, "train.yml's reap: whatever reap_lease_grace_s says"
    assert grace(None, 300, LONG_LEASE_S) == 3 * LONG_LEASE_S
