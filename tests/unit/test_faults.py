"""Fault specs: validation, HTTP matching and counting, host-fault targeting."""

from __future__ import annotations

import pytest

from mlops_vast.sim.faults import FaultBook, FaultError


def test_http_fault_matches_method_and_pattern_and_runs_out() -> None:
    book = FaultBook()
    book.arm({"kind": "http", "endpoint": "PUT /api/v0/asks/*", "status": 429, "count": 2})
    assert book.take_http("GET", "/api/v0/asks/12/") is None
    assert book.take_http("PUT", "/api/v0/instances/12/") is None
    assert book.take_http("PUT", "/api/v0/asks/12/").status == 429
    assert book.take_http("PUT", "/api/v0/asks/13") is not None  # with or without the slash
    assert book.take_http("PUT", "/api/v0/asks/14/") is None


def test_http_fault_defaults_to_one_shot_and_exact_paths() -> None:
    book = FaultBook()
    book.arm({"kind": "http", "endpoint": "GET /api/v1/instances", "status": 503})
    assert book.take_http("GET", "/api/v1/instances/") is not None
    assert book.take_http("GET", "/api/v1/instances/") is None


def test_next_fault_applies_to_one_created_instance_only() -> None:
    book = FaultBook()
    book.arm({"kind": "stuck_loading", "next": True})
    first = book.host_faults_for(instance_id=1, machine_id=5, offer_id=9, label=None, at_create=True)
    second = book.host_faults_for(instance_id=2, machine_id=5, offer_id=9, label=None, at_create=True)
    assert [f.kind for f in first] == ["stuck_loading"] and second == []


def test_machine_fault_applies_to_every_instance_on_it() -> None:
    book = FaultBook()
    book.arm({"kind": "slow_link", "machine_id": 5, "kbytes_per_s": 170})
    for instance_id in (1, 2):
        hits = book.host_faults_for(instance_id=instance_id, machine_id=5, offer_id=9, label="x", at_create=True)
        assert [(f.kind, f.kbytes_per_s) for f in hits] == [("slow_link", 170.0)]
    assert book.host_faults_for(instance_id=3, machine_id=6, offer_id=9, label="x", at_create=True) == []


@pytest.mark.parametrize(("spec", "words"), [
    ([], "JSON object"),
    ({"kind": "fire"}, "unknown fault kind"),
    ({"kind": "http", "endpoint": "/api", "status": 429}, "METHOD /path"),
    ({"kind": "http", "endpoint": "GET /api", "status": 200}, "between 400 and 599"),
    ({"kind": "http", "endpoint": "GET /api", "status": 429, "body": "xml"}, "body must be"),
    ({"kind": "offline"}, "needs a target"),
    ({"kind": "slow_link", "instance_id": 1}, "kbytes_per_s"),
    ({"kind": "slow_link", "instance_id": 1, "kbytes_per_s": -3}, ">= 1"),
    ({"kind": "outbid", "machine_id": 1}, "price"),
    ({"kind": "take_offer", "machine_id": 1}, "offer_id"),
    ({"kind": "offline", "instance_id": "abc"}, "must be a number"),
])
def test_invalid_specs_say_what_is_wrong(spec: object, words: str) -> None:
    with pytest.raises(FaultError, match=words):
        FaultBook().arm(spec)


def test_state_round_trip_keeps_ids_and_counts() -> None:
    book = FaultBook()
    book.arm({"kind": "http", "endpoint": "GET /x", "status": 500, "count": 3})
    book.take_http("GET", "/x")
    restored = FaultBook.from_state(book.to_state())
    assert restored.faults[0].fired == 1
    assert restored.arm({"kind": "offline", "instance_id": 1}).id == 2
