"""Fault specs: validation, HTTP matching and counting, host-fault targeting."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from mlops_vast.sim import fault_triggers, market
from mlops_vast.sim.faults import FaultBook, FaultError
from mlops_vast.sim.host_backend import WorkspaceView
from mlops_vast.sim.hosts import HostManager
from mlops_vast.sim.models import Instance


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


# ---------------------------------------------------------------------- for_s and triggers

LOG = {"path": "/workspace/run/run.log", "pattern": r"^step 3\b"}
PARTIAL = {"glob": "/workspace/run/output/checkpoint-*", "missing": "trainer_state.json"}


def test_timed_and_triggered_faults_parse_and_list_as_pending() -> None:
    book = FaultBook()
    offline = book.arm({"kind": "offline", "instance_id": 7, "for_s": 2.5, "when_log": LOG})
    outbid = book.arm({"kind": "outbid", "machine_id": 3, "price": 1, "for_s": 4, "when_partial": PARTIAL})
    plain = book.arm({"kind": "outbid", "machine_id": 3, "price": 1})
    assert offline.as_dict()["pending"] is True and offline.as_dict()["when_log"] == LOG
    assert outbid.as_dict()["when_partial"] == PARTIAL and outbid.as_dict()["for_s"] == 4.0
    assert "pending" not in plain.as_dict() and "clears_at" not in offline.as_dict()
    outbid.pending, outbid.triggered_at, outbid.effective_at = False, 100.0, 100.0
    row = outbid.as_dict()
    assert row["pending"] is False and row["triggered_at"] == 100.0 and row["clears_at"] == 104.0
    restored = FaultBook.from_state(book.to_state())
    assert [f.as_dict() for f in restored.faults] == [f.as_dict() for f in book.faults]


@pytest.mark.parametrize(("spec", "words"), [
    ({"kind": "offline", "instance_id": 1, "for_s": 0}, "for_s must be a number of seconds > 0"),
    ({"kind": "offline", "instance_id": 1, "for_s": -2}, "> 0"),
    ({"kind": "offline", "instance_id": 1, "for_s": "soon"}, "must be a number"),
    ({"kind": "slow_link", "instance_id": 1, "kbytes_per_s": 9, "for_s": 3}, "for_s applies to offline and outbid"),
    ({"kind": "http", "endpoint": "GET /x", "status": 500, "when_log": LOG}, "http faults take no trigger"),
    ({"kind": "take_offer", "offer_id": 1, "when_partial": PARTIAL}, "take_offer faults take no trigger"),
    ({"kind": "offline", "instance_id": 1, "when_log": LOG, "when_partial": PARTIAL}, "one trigger"),
    ({"kind": "offline", "instance_id": 1, "when_log": "step 3"}, "when_log must be an object"),
    ({"kind": "offline", "instance_id": 1, "when_log": {"path": LOG["path"]}}, "when_log needs 'pattern'"),
    ({"kind": "offline", "instance_id": 1, "when_log": {"path": LOG["path"], "pattern": "(unclosed"}},
     "not a valid Python regex"),
    ({"kind": "offline", "instance_id": 1, "when_log": {**LOG, "path": "/root/run.log"}}, "below /workspace/"),
    ({"kind": "offline", "instance_id": 1, "when_log": {**LOG, "path": "/workspace/../etc/shadow"}}, "normalised"),
    ({"kind": "offline", "instance_id": 1, "when_log": {**LOG, "path": "run/run.log"}}, "absolute"),
    ({"kind": "offline", "instance_id": 1, "when_log": {**LOG, "path": "/workspace/*.log"}}, "not a glob"),
    ({"kind": "offline", "instance_id": 1, "when_log": {**LOG, "every": 1}}, "takes only path and pattern"),
    ({"kind": "offline", "instance_id": 1, "when_partial": {"glob": PARTIAL["glob"]}}, "needs 'missing'"),
    ({"kind": "offline", "instance_id": 1, "when_partial": {**PARTIAL, "glob": "/tmp/checkpoint-*"}},
     "below /workspace/"),
    ({"kind": "offline", "instance_id": 1, "when_partial": {**PARTIAL, "glob": "/workspace"}}, "below /workspace/"),
    ({"kind": "offline", "instance_id": 1, "when_partial": {**PARTIAL, "missing": "a/trainer_state.json"}},
     "file name inside"),
    ({"kind": "offline", "instance_id": 1, "when_partial": {**PARTIAL, "missing": ""}}, "non-empty string"),
])
def test_invalid_timing_and_trigger_specs_say_what_is_wrong(spec: object, words: str) -> None:
    with pytest.raises(FaultError, match=re.escape(words)):
        FaultBook().arm(spec)


def test_pending_faults_have_no_effect_until_fired() -> None:
    book = FaultBook()
    offline = book.arm({"kind": "offline", "machine_id": 5, "when_log": LOG})
    outbid = book.arm({"kind": "outbid", "machine_id": 5, "price": 2, "when_partial": PARTIAL})
    assert book.host_faults_for(instance_id=1, machine_id=5, offer_id=9, label=None, at_create=True) == []
    assert book.of_kind("outbid") == []
    offline.pending = outbid.pending = False
    assert book.host_faults_for(instance_id=1, machine_id=5, offer_id=9, label=None, at_create=True) == [offline]
    assert book.of_kind("outbid") == [outbid]


def test_a_next_fault_that_must_wait_or_expire_is_bound_to_the_instance_created() -> None:
    book = FaultBook()
    triggered = book.arm({"kind": "offline", "next": True, "when_log": LOG})
    timed = book.arm({"kind": "offline", "next": True, "for_s": 3})
    hits = book.host_faults_for(instance_id=11, machine_id=5, offer_id=9, label=None, at_create=True)
    assert hits == [timed]  # in effect now; the triggered one waits
    assert [(f.next, f.instance_id) for f in (triggered, timed)] == [(False, 11), (False, 11)]
    assert book.faults == [triggered, timed], "both stay armed: one to fire, one to clear itself"
    assert book.host_faults_for(instance_id=12, machine_id=5, offer_id=9, label=None, at_create=True) == []


def test_outbid_watches_its_machine_narrowed_by_instance_and_label() -> None:
    book = FaultBook()
    machine = book.arm({"kind": "outbid", "machine_id": 5, "price": 2, "when_log": LOG})
    narrowed = book.arm({"kind": "outbid", "machine_id": 5, "price": 2, "label": "train", "when_log": LOG})
    on = {"instance_id": 1, "machine_id": 5, "offer_id": 9}
    assert machine.watches(**on, label=None) and not machine.watches(**{**on, "machine_id": 6}, label=None)
    assert narrowed.watches(**on, label="train") and not narrowed.watches(**on, label="eval")


# ---------------------------------------------------------------------- reading an instance's workspace


def workspace(tmp_path: Path) -> tuple[Path, WorkspaceView]:
    root = tmp_path / "workspace"
    root.mkdir()
    return root, WorkspaceView(str(root))


def test_when_log_matches_the_files_tail_line_by_line(tmp_path: Path) -> None:
    root, view = workspace(tmp_path)
    assert not fault_triggers.log_matches(view, LOG), "no file yet is simply not yet"
    log = root / "run" / "run.log"
    log.parent.mkdir()
    log.write_text("step 1 loss 2\nstep 30 loss 1\n")
    assert not fault_triggers.log_matches(view, LOG)
    with log.open("a") as handle:
        handle.write("step 3 loss 0.5\n")
    assert fault_triggers.log_matches(view, LOG)
    # Only the last 256 KiB are read: a match further back is history.
    log.write_text("step 3 early\n" + "x" * (fault_triggers.TAIL_BYTES + 10) + "\n")
    assert not fault_triggers.log_matches(view, LOG)


def test_when_log_skips_an_unchanged_file_and_reads_a_changed_one(tmp_path: Path) -> None:
    root, view = workspace(tmp_path)
    log = root / "run" / "run.log"
    log.parent.mkdir()
    log.write_text("step 1\n")
    seen: dict = {}
    assert not fault_triggers.log_matches(view, LOG, seen) and seen
    assert fault_triggers.read_tail(view, LOG["path"], seen=seen) is None, "unchanged: not read again"
    log.write_text("step 3 loss 1\n")
    assert fault_triggers.log_matches(view, LOG, seen)


def test_when_log_never_follows_a_link_out_of_the_workspace_nor_blocks_on_a_fifo(tmp_path: Path) -> None:
    root, view = workspace(tmp_path)
    outside = tmp_path / "secret.log"
    outside.write_text("step 3 of the machine's own files\n")
    (root / "run").mkdir()
    (root / "run" / "run.log").symlink_to(outside)
    assert not fault_triggers.log_matches(view, LOG)
    (root / "run" / "run.log").unlink()
    (root / "run").rmdir()
    (root / "run").symlink_to(tmp_path)  # a linked directory on the way
    (tmp_path / "run.log").write_text("step 3\n")
    assert not fault_triggers.log_matches(view, LOG)
    (root / "run").unlink()
    (root / "run").mkdir()
    os.mkfifo(root / "run" / "run.log")  # nobody writes it: a blocking open would hang the check
    assert not fault_triggers.log_matches(view, LOG)


def test_when_partial_fires_for_a_checkpoint_directory_without_its_last_file(tmp_path: Path) -> None:
    root, view = workspace(tmp_path)
    assert not fault_triggers.partial_exists(view, PARTIAL)
    output = root / "run" / "output"
    (output / "checkpoint-1").mkdir(parents=True)
    (output / "checkpoint-1" / "trainer_state.json").write_text("{}")
    (output / "checkpoint-notes.txt").write_text("a file, not a directory")
    (output / "other-2").mkdir()
    (output / ".checkpoint-tmp").mkdir()
    assert not fault_triggers.partial_exists(view, PARTIAL)
    (tmp_path / "elsewhere").mkdir()
    (output / "checkpoint-3").symlink_to(tmp_path / "elsewhere")
    assert not fault_triggers.partial_exists(view, PARTIAL), "a linked directory is not followed"
    (output / "checkpoint-2").mkdir()
    assert fault_triggers.partial_exists(view, PARTIAL)
    (output / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert not fault_triggers.partial_exists(view, PARTIAL)


def test_when_partial_globs_each_path_component(tmp_path: Path) -> None:
    root, view = workspace(tmp_path)
    spec = {"glob": "/workspace/runs/*/checkpoint-[0-9]*", "missing": "done"}
    (root / "runs" / "a" / "checkpoint-10").mkdir(parents=True)
    (root / "runs" / "a" / "checkpoint-10" / "done").touch()
    (root / "runs" / "b" / "checkpoint-x").mkdir(parents=True)
    assert not fault_triggers.partial_exists(view, spec)
    (root / "runs" / "b" / "checkpoint-20").mkdir()
    assert fault_triggers.partial_exists(view, spec)
    assert fault_triggers.first_hit("when_partial", spec, [(1, WorkspaceView(str(tmp_path / "none"))), (2, view)],
                                    {}) == 2


def test_a_namespace_view_is_read_only_once_the_disk_is_mounted_there(tmp_path: Path) -> None:
    root, _ = workspace(tmp_path)
    (root / "run" / "output" / "checkpoint-1").mkdir(parents=True)
    assert fault_triggers.partial_exists(WorkspaceView(str(root)), PARTIAL)
    # Not a mount point: the machine's own /workspace before the instance mounted its disk.
    assert not fault_triggers.partial_exists(WorkspaceView(str(root), mount=True), PARTIAL)


# ---------------------------------------------------------------------- firing and clearing in a market


@pytest.fixture
def bid_market(tmp_path: Path) -> tuple[market.Market, Instance]:
    state = tmp_path / "state"
    state.mkdir()
    sim = market.Market(state, speed=100.0, hosts=HostManager(state, mode="loopback"))
    account = next(iter(sim.state.accounts.values()))
    offer = next(iter(sim.catalog.offers.values()))
    price = sim.min_bid(offer) * 1.2
    instance, started = sim.create_instance(account, offer.id, {"image": "x", "disk": 10, "price": price})
    assert started
    instance.phase = "running"
    return sim, instance


def test_a_triggered_outbid_preempts_when_fired_and_ends_for_s_later(bid_market: tuple) -> None:
    sim, instance = bid_market
    fault = sim.arm_fault({"kind": "outbid", "machine_id": instance.machine_id, "price": instance.gpu_dph + 1,
                           "for_s": 30, "when_log": LOG})
    sim.fault_effects.tick(time.time())
    assert instance.phase == "running" and fault.pending, "pending: no competing bid yet"
    fired_at = time.time()
    sim.fault_effects.fire(fault, instance.id, fired_at)
    assert instance.phase == "outbid" and not fault.pending and fault.triggered_on == instance.id
    assert fault.clears_at == pytest.approx(fired_at + 30)
    sim.fault_effects.tick(fired_at + 29)
    assert sim.state.faults.faults == [fault]
    sim.lifecycle.advance(instance, fired_at + 29)
    assert instance.phase == "outbid"
    sim.fault_effects.tick(fired_at + 30)
    assert sim.state.faults.faults == [], "cleared itself"
    sim.lifecycle.advance(instance, fired_at + 30)
    assert instance.phase == "loading", "resumes once its bid wins again"


def test_a_timed_offline_fault_brings_back_only_what_no_other_fault_holds(bid_market: tuple) -> None:
    sim, instance = bid_market
    timed = sim.arm_fault({"kind": "offline", "instance_id": instance.id, "for_s": 5})
    assert instance.phase == "offline" and timed.effective_at is not None
    held = sim.arm_fault({"kind": "offline", "machine_id": instance.machine_id})
    sim.fault_effects.tick(timed.effective_at + 5)
    assert sim.state.faults.faults == [held] and instance.phase == "offline", "the machine fault still holds it"
    sim.clear_faults(held.id)
    assert instance.phase == "loading" and "offline" not in instance.faults
