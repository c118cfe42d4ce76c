"""The collection's shared controller code without a server: offer selection, waiters, errors, local
state, redaction, the run contract's checks and the rsync filters."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.mlops.vast.plugins.filter.rsync_remote import rsync_remote
from ansible_collections.mlops.vast.plugins.filter.rsync_ssh import rsync_ssh
from ansible_collections.mlops.vast.plugins.module_utils import errors
from ansible_collections.mlops.vast.plugins.module_utils.local_state import (
    ContractLedger,
    MachineExclusions,
    default_exclusions_path,
    default_ledger_path,
)
from ansible_collections.mlops.vast.plugins.module_utils.offer_selection import (
    OVERFETCH,
    OfferRequest,
    select_offers,
)
from ansible_collections.mlops.vast.plugins.module_utils.vast_query import QueryError
from ansible_collections.mlops.vast.plugins.module_utils.waiting import Deadline, Waiter
from ansible_collections.mlops.vast.plugins.plugin_utils.contract import plain_errors, problems, validated
from ansible_collections.mlops.vast.plugins.plugin_utils.redaction import REDACTED, redact_text, redacted

from tests.unit.test_vast_api import FakeClock

SECRET = "sk-a-long-secret-0123456789"


def offer(offer_id: int, machine_id: int, dph: float, gpu: str = "RTX 4090", min_bid: float = 0.1) -> dict[str, Any]:
    return {"id": offer_id, "machine_id": machine_id, "dph_total": dph, "gpu_name": gpu, "num_gpus": 1,
            "gpu_ram": 24564, "min_bid": min_bid}


class FakeClient:
    """The two calls offer selection makes, answering from a list, recording what was asked."""

    def __init__(self, rows: list[dict[str, Any]], names: tuple[str, ...] = ("RTX 4090", "RTX 3090", "A100 PCIE")):
        self.rows, self.names = rows, list(names)
        self.bodies: list[dict[str, Any]] = []
        self.name_calls = 0

    def search_offers(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.bodies.append(body)
        return list(self.rows)

    def gpu_names(self) -> list[str]:
        self.name_calls += 1
        return list(self.names)


ROWS = [offer(1, 10, 0.30), offer(2, 11, 0.35, "RTX 3090"), offer(3, 12, 0.40), offer(4, 13, 0.90, "A100 PCIE")]


def test_offers_come_in_order_limited_excluded_and_normalised() -> None:
    client = FakeClient(ROWS)
    chosen = select_offers(client, OfferRequest(query="num_gpus=1", exclude_machines=[10], limit=2))
    assert [o["id"] for o in chosen.offers] == [2, 3]
    assert chosen.offers[0]["gpu_ram_gb"] == 24.0 and chosen.reason is None
    assert client.bodies[0]["limit"] == 2 + 1 + OVERFETCH  # room left for the exclusions
    assert client.name_calls == 0  # no regex, no misspelt name: the GPU list is not asked for


def test_a_gpu_regex_is_resolved_against_the_market_and_applied_to_rows() -> None:
    client = FakeClient(ROWS)
    chosen = select_offers(client, OfferRequest(query="gpu_name ~ 4090|A100"))
    assert client.bodies[0]["gpu_name"] == {"in": ["RTX 4090", "A100 PCIE"]}
    assert [o["id"] for o in chosen.offers] == [1, 3, 4]  # the server's answer is filtered by the regex too


def test_max_dph_holds_on_demand_at_the_listed_price_and_bids_at_the_bid() -> None:
    on_demand = select_offers(FakeClient(ROWS), OfferRequest(query="", max_dph=0.36))
    assert [o["id"] for o in on_demand.offers] == [1, 2]
    # Billed at the bid, not the listed minimum: 0.30 - 0.10 + 0.35 = 0.55 > 0.5 for every offer.
    bid = select_offers(FakeClient(ROWS), OfferRequest(query="", offer_type="bid", bid_price=0.35, max_dph=0.5))
    assert bid.offers == []
    assert "the cheapest allowed costs $0.5500/h, over max_dph $0.5/h" in (bid.reason or "")


def test_why_nothing_can_be_rented_says_what_to_change() -> None:
    excluded = select_offers(FakeClient(ROWS), OfferRequest(query="num_gpus=1", exclude_machines=[10, 11, 12, 13]))
    assert excluded.reason == "4 offer(s) match 'num_gpus=1': on machines in exclude_machines only"
    misspelt = select_offers(FakeClient([]), OfferRequest(query="gpu_name=RTX_4099"))
    assert misspelt.unknown_gpu_name and "no GPU on the market is called 'RTX 4099'" in (misspelt.reason or "")
    empty = select_offers(FakeClient([]), OfferRequest(query="gpu_name=RTX_4090 reliability > 0.999"))
    assert not empty.unknown_gpu_name and "loosen the query" in (empty.reason or "")
    gone = select_offers(FakeClient([]), OfferRequest(offer_id=77))
    assert gone.reason == "offer 77 is not on the market (taken, or a wrong id)"


def test_an_offer_id_is_held_to_the_same_limits_as_a_query() -> None:
    client = FakeClient([offer(5, 20, 0.8)])
    chosen = select_offers(client, OfferRequest(offer_id=5, max_dph=0.5, storage_gb=30))
    assert client.bodies == [{"id": {"eq": 5}, "type": "on-demand", "allocated_storage": 30.0}]
    assert chosen.offers == [] and chosen.reason == ("offer 5: the cheapest allowed costs $0.8000/h, over max_dph "
                                                     "$0.5/h; raise max_dph or loosen the query")


def test_a_bad_query_fails_before_any_request() -> None:
    client = FakeClient(ROWS)
    with pytest.raises(QueryError):
        select_offers(client, OfferRequest(query="gpu_ram >>> 24"))
    assert client.bodies == []


def test_a_waiter_returns_on_success_and_polls_more_sparsely_as_it_waits() -> None:
    clock, values = FakeClock(), iter([1, 2, 3, 4, 5, 6])
    waiter = Waiter(success=lambda v: v >= 5, failure=lambda v: None, timeout_message=lambda v, s: "late",
                    interval=1.0, max_interval=2.0)
    assert waiter.wait(lambda: next(values), Deadline(60, clock.clock), sleep=clock.sleep) == 5
    assert clock.sleeps == [1.0, 1.5, 2.0, 2.0]


def test_a_waiter_stops_at_the_failure_acceptor_and_at_the_deadline() -> None:
    clock = FakeClock()
    fails = Waiter(success=lambda v: False, failure=lambda v: "it is gone" if v is None else None,
                   timeout_message=lambda v, s: "late")
    with pytest.raises(errors.WaitFailed, match="it is gone"):
        fails.wait(lambda: None, Deadline(60, clock.clock), sleep=clock.sleep)
    never = Waiter(success=lambda v: False, failure=lambda v: None,
                   timeout_message=lambda v, s: f"still {v} after {s:g} s")
    with pytest.raises(errors.WaitTimeout, match="still loading after 10 s"):
        never.wait(lambda: "loading", Deadline(10, clock.clock), sleep=clock.sleep)


def test_errors_say_what_to_do_and_the_status() -> None:
    details = errors.error_details(errors.VastAuthError(401, "Invalid user key", error="auth_error"))
    assert details["status"] == 401 and details["vast_msg"] == "Invalid user key"
    assert details["msg"].startswith("HTTP 401 (auth_error): Invalid user key; check the key: VAST_API_KEY")
    assert details["hint"] in details["msg"]
    plain = errors.error_details(errors.VastConfigError("No Vast API key"))
    assert plain == {"msg": "No Vast API key"}


def test_machine_exclusions_are_kept_with_their_reason_and_check_mode_writes_nothing(tmp_path: Path) -> None:
    book = MachineExclusions(str(tmp_path / "state" / "excluded.json"))
    before, after = book.update(64691, present=True, reason="0.16 MB/s", write=False)
    assert before == {} and "64691" in after and not Path(book.path).exists()
    book.update(64691, present=True, reason="0.16 MB/s")
    assert book.read()["64691"]["reason"] == "0.16 MB/s"
    assert book.update(64691, present=True, reason="again")[1]["64691"]["reason"] == "0.16 MB/s"  # kept, once
    assert book.update(64691, present=False)[1] == {}
    Path(book.path).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an exclusion list"):
        book.read()


def test_the_state_files_live_in_one_directory_unless_moved(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    assert default_ledger_path(env) == str(tmp_path / "mlops-vast" / "contracts.jsonl")
    assert default_exclusions_path(env) == str(tmp_path / "mlops-vast" / "excluded_machines.json")
    assert default_ledger_path({**env, "MLOPS_VAST_LEDGER": "/x/l.jsonl"}) == "/x/l.jsonl"
    ledger = ContractLedger(str(tmp_path / "l.jsonl"))
    ledger.created(7, label="a", offer_id=1, machine_id=2, api_url="http://sim")
    ledger.created(8, label="b", offer_id=1, machine_id=2, api_url="https://console.vast.ai")
    ledger.destroyed(7, api_url="http://sim")
    assert [c["id"] for c in ledger.open_contracts()] == [8]
    assert ledger.open_contracts("http://sim") == []


def test_redaction_masks_secrets_everywhere_and_keeps_json_safe() -> None:
    value = {"msg": f"key {SECRET} leaked", SECRET: [SECRET, math.nan, -math.inf, 1.5], 3: object.__name__}
    clean = redacted(value, (SECRET, None, "short"))
    assert SECRET not in json.dumps(clean, allow_nan=False)
    assert clean == {"msg": f"key {REDACTED} leaked", REDACTED: [REDACTED, "nan", "-inf", 1.5], 3: "object"}
    # In data a short "secret" would mask ordinary words; in a message any part of a key is too much.
    assert redacted({"word": "short"}, ("short",)) == {"word": "short"}
    assert redact_text("the key abc leaked", ("abc",)) == f"the key {REDACTED} leaked"


SPEC = {
    "run_name": {"type": "str", "required": True},
    "run_disk_gb": {"type": "float", "default": 20, "minimum": 8},
    "run_bid_price": {"type": "float", "default": 0, "minimum": 0, "maximum": 128},
    "run_poll_interval_s": {"type": "float", "default": 30, "exclusive_minimum": 0},
    "run_max_attempts": {"type": "int", "default": 5, "minimum": 1},
}


def test_the_contract_names_unknown_variables_and_values_out_of_range() -> None:
    given = {"run_name": "x", "run_disk_gb": "-5", "run_bid_price": 200, "run_poll_interval_s": 0, "run_dsik": 1}
    assert problems(given, SPEC, where="the run") == [
        "run_dsik is not a variable of the run; did you mean run_disk_gb?",
        "run_disk_gb must be at least 8, got -5",
        "run_bid_price must be at most 128, got 200",
        "run_poll_interval_s must be more than 0, got 0",
    ]
    assert problems({"run_name": "x"}, SPEC) == []  # defaults are in range by construction


def test_the_contract_fills_in_defaults_and_converts_types() -> None:
    values, found = validated({"run_name": "x", "run_disk_gb": "30", "run_other": 1}, SPEC)
    assert found == []
    assert values == {"run_name": "x", "run_disk_gb": 30.0, "run_bid_price": 0.0, "run_poll_interval_s": 30.0,
                      "run_max_attempts": 5}
    _values, found = validated({"run_max_attempts": "three"}, SPEC)
    assert plain_errors(found, {"run_max_attempts": "three"}) == [
        "missing required arguments: run_name", "run_max_attempts must be a whole number, got 'three'"]


def test_rsync_reaches_a_rented_host_with_its_own_port_and_key() -> None:
    host = {"ansible_host": "198.18.0.2", "ansible_port": 40022, "ansible_user": "root",
            "ansible_ssh_private_key_file": "/keys/id_ed25519"}
    assert rsync_ssh(host, reuse_connection=False) == (
        "ssh -p 40022 -i /keys/id_ed25519 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o BatchMode=yes -o ConnectTimeout=20")
    assert "-i /other/key" in rsync_ssh(host, "/other/key", connect_timeout=0)
    assert "ConnectTimeout" not in rsync_ssh(host, connect_timeout=0)
    assert rsync_remote(host, "/workspace/run/") == "root@198.18.0.2:/workspace/run/"
    assert rsync_remote({"ansible_host": "h"}, "/x") == "root@h:/x"


def test_rsync_goes_through_ansibles_persistent_connection_when_it_keeps_one(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ansible.plugins.connection.ssh import Connection

    host = {"ansible_host": "198.18.0.2", "ansible_port": 40022, "ansible_user": "root",
            "ansible_ssh_private_key_file": "/keys/id_ed25519"}
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(tmp_path / "cp"))
    monkeypatch.setenv("ANSIBLE_SSH_ARGS", "-C -o ControlMaster=auto -o ControlPersist=60s")
    # The socket Ansible's own SSH connection makes for this host, port and user.
    socket = Connection._create_control_path("198.18.0.2", 40022, "root") % {"directory": str(tmp_path / "cp")}
    words = shlex.split(rsync_ssh(host))
    assert words[-4:] == ["-o", "ControlMaster=no", "-o", f"ControlPath={socket}"]
    assert "ControlPath" not in rsync_ssh(host, reuse_connection=False)
    host_var = {**host, "ansible_control_path_dir": str(tmp_path / "mine")}
    assert f"ControlPath={tmp_path / 'mine'}/" in rsync_ssh(host_var), "the host's own variable wins"
    monkeypatch.setenv("ANSIBLE_SSH_ARGS", "-o ControlPersist=30s -o 'ControlPath=/run/cp/%C'")
    assert shlex.split(rsync_ssh(host))[-1] == "ControlPath=/run/cp/%C", "the user's ControlPath, as Ansible uses it"
    monkeypatch.setenv("ANSIBLE_SSH_ARGS", "-o StrictHostKeyChecking=no")
    assert "ControlPath" not in rsync_ssh(host), "no persistent connection: SSH connects as usual"
