"""The fault matrix: train.yml end to end against vastsim under the failures real users meet.

Every case asserts the same four things: **nothing left open** (vastsim's ledger, the account's instance list
and the local contract ledger), **no sealed checkpoint lost** (the newest one the trainer sealed before the
end is home and verified), **a clear message** naming what happened, and **the right exit status**.

Cases run concurrently (a train.yml costs ~25 CPU-seconds of controller and mostly waits): the ones whose
faults aim at one label share a simulator; the ones that need the whole API (HTTP storms), the whole account
(credit) or a whole machine (a competing bid) get their own. Each case has its own label, ledger, key and results
folder.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from ansible_collections.mlops.vast.plugins.module_utils import checkpoint_manifest as cm

from mlops_vast.sim import harness
from tests.conftest import REPO, Sim, needs_root, ssh_run, start_sim
from tests.integration.ansible_run import (
    ANSIBLE_BIN,
    ansible_env,
    close_ssh_masters,
    failure_excerpt,
    ledger_open,
    local_inventory,
    run_playbook,
)
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root, pytest.mark.timeout(1500)]

RUN_LOG = "/workspace/run/run.log"
SAVE_STEPS = 50
# Cases at once: each train.yml is a controller process tree of its own.
PARALLEL = 4


@dataclass
class Case:
    """One fault, the run it hits and what the product must do."""

    name: str
    max_steps: int = 200
    trainer: str = "--step_seconds 0.02"
    run_vars: dict = field(default_factory=dict)
    # Armed before the run (label-targeted, so concurrent cases never meet each other's faults).
    faults: list[dict] = field(default_factory=list)
    # The run's query, after the catalogue's bad hosts are left out.
    query: str = "num_gpus=1"
    # Armed before the run from what the market shows then: sim -> fault specs (armed as they are).
    faults_from_market: Callable[[Sim], list[dict]] | None = None
    # How many instances the run may create in all (a lost answer must not rent twice); None: not checked.
    rentals: int | None = None
    # Done by a thread while the run goes: (sim, label, ssh key) -> None.
    during: Callable[[Sim, str, Path], None] | None = None
    completes: bool = True
    message: str = ""  # a regex the playbook's output must match
    newest: int | None = None  # the newest sealed checkpoint that must be home (default: max_steps if completes)
    or_newer: bool = False  # a newer one home is fine too (sealed and pulled before the fault took effect)
    own_sim: bool = False
    # The simulator (the API and every host with it) is restarted once the run's log matches this.
    restart_sim_at: str = ""
    # The controller (a plain ansible-playbook) gets this signal once the progress callback says this phase.
    signal: int = 0
    signal_phase: str = ""
    # What else this fault must leave behind, beyond the four checks: Outcome -> None (asserts).
    check: Callable[[Outcome], None] | None = None

    @property
    def label(self) -> str:
        return f"fm-{self.name}"


@dataclass
class Outcome:
    case: Case
    done: subprocess.CompletedProcess
    results: Path
    sim_rows: list[dict]
    account_rows: list[dict]
    local_open: list[int]
    seconds: float
    error: str = ""
    # Interruption cases: when the signal was sent, and the newest checkpoint the host had sealed by then.
    signalled_at: float | None = None
    sealed_at_signal: int = 0


def when_log(pattern: str) -> dict:
    return {"when_log": {"path": RUN_LOG, "pattern": pattern}}


def cheapest_offers(sim: Sim, count: int, query: str) -> list[dict]:
    """The first ``count`` offers an on-demand run of examples/run.yml would try, picked by the collection's own
    selection (its query, disk, max $/h and order)."""
    from ansible_collections.mlops.vast.plugins.module_utils.api_client import VastClient
    from ansible_collections.mlops.vast.plugins.module_utils.offer_selection import OfferRequest, select_offers

    with VastClient(sim.api_key, sim.url) as client:
        request = OfferRequest(query=good_query(sim, query), order="dph+", storage_gb=20.0, max_dph=1.0)
        return select_offers(client, request).offers[:count]


def when_home(checkpoint: str, then: Callable[[httpx.Client], object]) -> Callable[[Sim, str, Path], None]:
    """Once ``checkpoint`` is home (sealed, in the case's results), ``then`` with a client of the simulator."""
    def during(sim: Sim, label: str, key: Path) -> None:
        home = key.parent / "results" / "checkpoints" / checkpoint / "trainer_state.json"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not home.exists() and label not in FINISHED:
            time.sleep(0.2)
        if not home.exists():
            return
        with sim.client() as client:
            then(client)
    return during


def arm_on_running(sim: Sim, label: str, spec: dict, *, target: str = "instance_id", deadline_s: float = 600) -> None:
    """Arm ``spec`` on the label's first running instance (or its machine) as soon as there is one."""
    deadline = time.monotonic() + deadline_s
    with sim.client() as client:
        while time.monotonic() < deadline and label not in FINISHED:
            rows = [row for row in client.get("/api/v0/instances/").json()["instances"]
                    if row.get("label") == label and row.get("actual_status") == "running"]
            if rows:
                body = dict(spec)
                if body.pop("price_factor", None):
                    body["price"] = round(float(rows[0]["dph_base"]) * 2.0, 4)
                body[target] = rows[0]["machine_id"] if target == "machine_id" else rows[0]["id"]
                if target == "machine_id":
                    # Other cases' instances share the machines: only this run's log may pull the trigger.
                    body["label"] = label
                answer = client.post("/_sim/faults", json=body)
                assert answer.status_code == 200, answer.text
                return
            time.sleep(0.5)


# Labels of the cases whose run has ended: their helpers stop waiting.
FINISHED: set[str] = set()


def lose_the_replacement_in_its_smoke_test(sim: Sim, label: str, _key: Path, deadline_s: float = 600) -> None:
    """Once the label's first instance is lost (offline), take its replacement offline as soon as its smoke test
    writes: a host lost while a recovery sets it up."""
    deadline = time.monotonic() + deadline_s
    lost: set[int] = set()  # remembered: the lost instance is destroyed before its replacement is rented
    with sim.client() as client:
        while time.monotonic() < deadline and label not in FINISHED:
            rows = [row for row in client.get("/api/v0/instances/").json()["instances"] if row.get("label") == label]
            lost |= {row["id"] for row in rows if row.get("actual_status") == "offline"}
            replacement = [row["id"] for row in rows if lost and row["id"] > max(lost)
                           and row.get("actual_status") == "running"]
            if replacement:
                answer = client.post("/_sim/faults", json={
                    "kind": "offline", "count": 1, "instance_id": replacement[0],
                    "when_partial": {"glob": "/workspace/run/smoke", "missing": ".never-there"}})
                assert answer.status_code == 200, answer.text
                return
            time.sleep(0.5)


def on_host_when(pattern: str, action: str, then: Callable[[httpx.Client], object] | None = None
                 ) -> Callable[[Sim, str, Path], None]:
    """Once the run's log on its host matches ``pattern``, run ``action`` there (as root, over SSH), then ``then``
    with a client of the simulator."""
    def during(sim: Sim, label: str, key: Path) -> None:
        deadline = time.monotonic() + 600
        with sim.client() as client:
            while time.monotonic() < deadline and label not in FINISHED:
                try:
                    listed = client.get("/api/v0/instances/").json()["instances"]
                except httpx.TransportError:  # the simulator restarting (a case may do that): ask again
                    time.sleep(0.5)
                    continue
                rows = [row for row in listed
                        if row.get("label") == label and row.get("actual_status") == "running" and row.get("ports")]
                if rows:
                    host, port = rows[0]["public_ipaddr"], int(rows[0]["ports"]["22/tcp"][0]["HostPort"])
                    with contextlib.suppress(subprocess.SubprocessError):
                        probe = ssh_run(host, port, key, f"grep -qE {shlex.quote(pattern)} {RUN_LOG} && {action}",
                                        timeout=20)
                        if probe.returncode == 0:
                            if then is not None:
                                then(client)
                            return
                time.sleep(0.5)
    return during


def watch_record(outcome: Outcome) -> dict:
    return json.loads((outcome.results / "watch.json").read_text())


def crashed_with_its_traceback(outcome: Outcome) -> None:
    watch = watch_record(outcome)
    assert watch["outcome"] == "crash" and watch["triage"]["traceback"] is True, watch
    # A poll between the traceback and the exit reports the crash from the traceback alone, and says so.
    assert watch["triage"]["exit_code"] == 1 or (watch["triage"]["exit_code"] is None
                                                 and "has not exited yet" in watch["msg"]), watch["msg"]
    home = sorted(path.name for path in (outcome.results / "checkpoints").glob("checkpoint-*"))
    assert home == ["checkpoint-100", "checkpoint-150", "checkpoint-50"], home


def stalled_where_it_hung(outcome: Outcome) -> None:
    watch = watch_record(outcome)
    assert watch["outcome"] == "stall" and watch["triage"]["step"] in (100, 110), watch


def stopped_when_the_loss_went_nan(outcome: Outcome) -> None:
    """As the Hugging Face Trainer logs it by default: step 120's window a finite average beside a NaN grad_norm,
    then 0.0 beside NaN. Diverged from step 130; the last clean record is step 110's."""
    watch = watch_record(outcome)
    assert watch["outcome"] == "diverged", watch["msg"]
    assert re.search(r"the loss was 0\.0 with a grad_norm that is not finite .* for \d+ training record\(s\) in a "
                     r"row, from step 130", watch["msg"]), watch["msg"]
    assert watch["triage"]["divergence"]["last_clean_step"] == 110, watch["triage"]
    log = (outcome.results / "run.log").read_text()
    assert "train_runtime" not in log, "stopped on the host, not trained to the end"
    steps = [int(step) for step in re.findall(r"'step': (\d+)", log)]
    assert 150 <= max(steps) < outcome.case.max_steps, max(steps)
    # What was saved after step 110 holds NaN weights: home, set aside, never the newest.
    teardown = json.loads((outcome.results / "teardown.json").read_text())
    aside = sorted(path.name for path in (outcome.results / "checkpoints" / "diverged").glob("checkpoint-*"))
    assert "checkpoint-150" in aside and aside == sorted(teardown["diverged_checkpoints"]), (aside, teardown)
    assert teardown["newest_checkpoint"] == "checkpoint-100", teardown
    home = sorted(path.name for path in (outcome.results / "checkpoints").glob("checkpoint-*"))
    assert home == ["checkpoint-100", "checkpoint-50"], "the sound ones, none pruned for the diverged ones"
    model = json.loads((outcome.results / "checkpoints" / "diverged" / "checkpoint-150" / "model.json").read_text())
    assert any(value != value for value in model["params"]), "checkpoint-150 was saved after the NaN"


def never_started_the_long_run(outcome: Outcome) -> None:
    assert not (outcome.results / "run.log").exists(), "the long run must never start after a failed smoke test"


OFFLINE_IN_SETUP = {"kind": "offline", "count": 1,
                    "when_partial": {"glob": "/workspace/run/code", "missing": ".never-there"}}


def recovered_from_a_host_lost_in_setup(outcome: Outcome) -> None:
    [recovery] = json.loads((outcome.results / "recovery.json").read_text())["recoveries"]
    assert recovery["outcome"] == "host_lost" and recovery["before_launch"] is True, recovery
    assert recovery["mode"] == "replace" and "stopped answering over SSH" in recovery["why"], recovery
    assert not recovery["resumed_from"], "nothing had trained: the replacement starts afresh"
    smoke = outcome.results / "smoke.json"
    assert smoke.stat().st_mtime > recovery["detected_at"], "smoke-tested on the replacement before it trained"
    assert json.loads(smoke.read_text())["verdict"] in ("pass", "warn")


def lost_in_setup_then_its_replacement_too(outcome: Outcome) -> None:
    first, second = json.loads((outcome.results / "recovery.json").read_text())["recoveries"]
    assert first["before_launch"] and first["mode"] == "replace" and first["relaunch_lost"], first
    assert "stopped answering over SSH" in first["relaunch_lost"], first
    assert second["lost_instance"] == first["new_instance"] and second["mode"] == "replace", second
    assert second["before_launch"] and not second["relaunch_lost"] and not second["resumed_from"], second
    assert len({first["lost_instance"], first["new_instance"], second["new_instance"]}) == 3
    smoke = outcome.results / "smoke.json"
    assert smoke.stat().st_mtime > second["detected_at"], "smoke-tested on the last host before it trained"


def recovered_in_place_from_a_host_lost_in_setup(outcome: Outcome) -> None:
    [recovery] = json.loads((outcome.results / "recovery.json").read_text())["recoveries"]
    assert recovery["before_launch"] is True and recovery["mode"] == "in_place", recovery
    # Written after the loss was seen: the smoke test made in place (the first attempt never got that far).
    smoke = outcome.results / "smoke.json"
    assert smoke.stat().st_mtime > recovery["detected_at"], "smoke-tested in place before it trained"
    assert json.loads(smoke.read_text())["verdict"] in ("pass", "warn")


def reference_model(max_steps: int) -> bytes:
    """The final model of the same training run locally without interruption."""
    out = Path(tempfile.mkdtemp(prefix="fm-reference-"))
    try:
        subprocess.run([sys.executable, str(REPO / "examples" / "tiny_trainer" / "train.py"), "--output_dir", str(out),
                        "--max_steps", str(max_steps), "--save_steps", str(SAVE_STEPS)],
                       check=True, capture_output=True, timeout=300)
        return (out / f"checkpoint-{max_steps}" / "model.json").read_bytes()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def rebid_and_resumed_in_place(outcome: Outcome) -> None:
    """Outbid at step 180 (checkpoint-150 sealed on its disk 2.4 s before): the run raised its bid, resumed on the
    same instance (the case rents once) from checkpoint-150 (less than one checkpoint interval lost) and ended with
    the uninterrupted run's model."""
    recovery = json.loads((outcome.results / "recovery.json").read_text())["recoveries"][0]
    assert recovery["outcome"] == "preempted" and recovery["mode"] == "in_place", recovery
    assert recovery["rebids"] and recovery["rebids"][-1]["price"] >= recovery["rebids"][-1]["min_bid"], recovery
    resumed = re.findall(r"mlops\.vast: attempt \d+ resuming from \S+checkpoint-(\d+)",
                         (outcome.results / "run.log").read_text())
    assert resumed == ["150"], resumed
    # recovery.json names it too: in place the run picked it itself, and said which (run.sh's agent).
    assert recovery["resumed_from"] == {"name": "checkpoint-150", "step": 150, "attempt": 1}, recovery
    final = outcome.results / "checkpoints" / f"checkpoint-{outcome.case.max_steps}" / "model.json"
    assert final.read_bytes() == reference_model(outcome.case.max_steps), "it must end as the uninterrupted run"


# The run completes, and its last word names the host it rejected first and why.
REJECTED = r"(?i)completed;.*nothing is billing\. 1 host\(s\) rejected first: machine \d+ \("

# Completed, and a warning says the create's answer was lost and its instance found by label and kept.
ADOPTED = r"(?s)completed;.*renting took 1 attempt\(s\): offer \d+ adopted"

CASES = [
    # Before anything trains: the host is bad, rent until good replaces it.
    Case("wrong-gpu", faults=[{"kind": "wrong_gpu", "gpu_name": "NVIDIA T4", "count": 1}],
         message=REJECTED + r"gpu check.*measured NVIDIA T4"),
    Case("small-disk", faults=[{"kind": "small_disk", "disk_gb": 1, "count": 1}],
         message=REJECTED + r"gpu check.*min_disk_gb"),
    Case("broken-driver", faults=[{"kind": "driver_error", "count": 1}], message=REJECTED + r"gpu check.*driver error"),
    Case("host-error", faults=[{"kind": "host_error", "count": 1}], message=REJECTED + r".*will not start: host error"),
    Case("stuck-loading", faults=[{"kind": "stuck_loading", "count": 1}], run_vars={"run_boot_timeout_s": 20},
         message=REJECTED + r".*within 20 s \(last status 'loading'"),
    Case("slow-link", faults=[{"kind": "slow_link", "kbytes_per_s": 150, "count": 1}],
         run_vars={"run_sources": [{"name": "weights",
                                    "url": "http://huggingface.co/org/m/resolve/main/w.bin?bytes=40000000"}],
                   "run_min_mbps": 1},
         message=REJECTED + r".*too slow.*weights"),
    # The trainer misbehaves.
    Case("trainer-crash", max_steps=400, trainer="--step_seconds 0.02 --crash_at_step 170", completes=False,
         newest=150, message=r"(?i)crash", check=crashed_with_its_traceback),
    Case("smoke-divergence", trainer="--diverge", completes=False, newest=0, message=r"Smoke test failed",
         check=never_started_the_long_run),
    # Keeping 1 checkpoint would leave only the NaN one: a diverged run's teardown prunes none.
    Case("nan-mid-run", max_steps=1000, trainer="--step_seconds 0.05 --nan_at_step 120", completes=False,
         run_vars={"run_keep_checkpoints": 1}, newest=100, message=r"(?i)diverged",
         check=stopped_when_the_loss_went_nan),
    Case("hang", max_steps=400, trainer="--step_seconds 0.02 --hang_at_step 120", completes=False, newest=100,
         message=r"(?i)stall", check=stalled_where_it_hung),
    # The host or the market misbehaves mid-run.
    Case("disk-full-mid-save", max_steps=400, trainer="--step_seconds 0.02 --save_mode inplace --save_file_seconds 1",
         run_vars={"run_disk_gb": 8, "run_gpu_requirements": {"min_disk_gb": 1}},
         # The disk fills the moment checkpoint-200's directory appears (its files then come one a second): a
         # process on the host waits for it, since this controller, busy with other cases, may look seconds late.
         during=on_host_when(r"'step': 150\b", "{ nohup sh -c 'for i in $(seq 2400); do "
                             "test -d /workspace/run/output/checkpoint-200 && exec fallocate -l "
                             "$(df --output=avail -B1 /workspace | tail -1) /workspace/.filler; sleep 0.05; done' "
                             ">/dev/null 2>&1 & }"),
         completes=False, newest=150, message=r"(?i)no space left on device"),
    Case("ssh-cut", max_steps=300, during=on_host_when(r"'step': 120\b", "pkill -f 'sshd: root@' || true"),
         message=r"completed"),
    Case("offline-and-back", max_steps=300, trainer="--step_seconds 0.03",
         during=lambda sim, label, _key: arm_on_running(sim, label, {"kind": "offline", "for_s": 10,
                                                               **when_log(r"'step': 160\b")}),
         run_vars={"run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 120}},
         message=r"completed after 1 recovery"),
    # The host disconnects while it is being set up (its code folder has just appeared), before anything trained:
    # the recovery rounds take it over as a host lost mid-run (waited for, then replaced, set up and smoke-tested
    # there); without recovery the run fails and says so, not as a later task's error on a result never sent.
    Case("offline-in-setup", faults=[OFFLINE_IN_SETUP],
         run_vars={"run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 5}},
         message=r"completed after 1 recovery", check=recovered_from_a_host_lost_in_setup),
    # Away for 30 s: long enough that a task of the set-up fails on it, and the host is waited for in place.
    Case("offline-in-setup-and-back", faults=[{**OFFLINE_IN_SETUP, "for_s": 30}], rentals=1,
         run_vars={"run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 120}},
         message=r"completed after 1 recovery", check=recovered_in_place_from_a_host_lost_in_setup),
    # A blip of 3 s may fall between tasks whose answers are never read: the set-up goes on on the new container, and
    # the launch, which checks that the container it set up is the one it launches in, refuses; set up again in place.
    Case("offline-blip-in-setup", faults=[{**OFFLINE_IN_SETUP, "for_s": 3}], rentals=1,
         run_vars={"run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 120}},
         message=r"completed after 1 recovery", check=recovered_in_place_from_a_host_lost_in_setup),
    # The replacement is lost during its own set-up too: the next round takes over from the relaunch's loss.
    Case("offline-in-setup-twice", faults=[OFFLINE_IN_SETUP], during=lose_the_replacement_in_its_smoke_test, rentals=3,
         run_vars={"run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 5}},
         message=r"completed after 2 recoveries;", check=lost_in_setup_then_its_replacement_too),
    Case("offline-in-setup-no-recovery", completes=False, newest=0, faults=[OFFLINE_IN_SETUP],
         # Handed to the recovery rounds, none of which may act: the run must not read as completed.
         run_vars={"run_recovery": {"strategy": "wait_then_replace", "max_preemptions": 0}},
         message=r"The run did not complete: .*the host stopped answering over SSH .*the instance is offline",
         check=never_started_the_long_run),
    # Outbid 1.6 s before checkpoint-200 is saved: time for the simulator to stop it. A simulator of its own: the
    # competing bid takes its machine's GPUs from every lower bid there, another case's instance included.
    Case("outbid", own_sim=True, max_steps=300, trainer="--step_seconds 0.08",
         during=lambda sim, label, _key: arm_on_running(sim, label, {"kind": "outbid", "price_factor": 2.0,
                                                               **when_log(r"'step': 180\b")}, target="machine_id"),
         run_vars={"run_interruptible": True, "run_max_bid": 50,
                   "run_recovery": {"strategy": "wait_then_replace", "wait_in_place_s": 90}},
         rentals=1, message=r"completed after 1 recovery", check=rebid_and_resumed_in_place),
    # The API misbehaves: every case has the simulator to itself.
    Case("429-storm", own_sim=True, faults=[{"kind": "http", "endpoint": "* /api/*", "status": 429,
                                             "retry_after": 1, "count": 30}], message=r"completed"),
    Case("5xx", own_sim=True, faults=[{"kind": "http", "endpoint": "* /api/*", "status": 503, "body": "json",
                                       "count": 12}], message=r"completed"),
    # Credit runs out once checkpoint-150 is home (the next is sealed 5 s later): the run stops, says why, and
    # nothing bills; what a stopped host sealed after the last pull would be lost with it (teardown says so).
    Case("credit-exhausted", own_sim=True, max_steps=300, trainer="--step_seconds 0.1",
         during=when_home("checkpoint-150", lambda client: client.put("/_sim/account", json={"credit": 0})),
         completes=False, newest=150, or_newer=True, message=r"The run did not complete: .*out of credit"),
    Case("api-restarted", own_sim=True, max_steps=300, trainer="--step_seconds 0.03",
         restart_sim_at=r"'step': 160\b", message=r"completed after 1 recovery"),
    # The controller is interrupted (the guard callback tears down, the newest sealed checkpoint home first).
    *[Case(f"{signal.Signals(number).name.lower()}-in-{phase}", max_steps=300 if phase == "teardown" else 4000,
           trainer="--step_seconds 0.05",
           signal=number, signal_phase=phase, completes=False,
           message=rf"(?s)\[mlops\.vast\.guard\] {signal.Signals(number).name}: stopping"
                   r".*destroyed \[\d*\], verified gone")
      for number, phase in ((signal.SIGINT, "renting"), (signal.SIGINT, "smoke"), (signal.SIGTERM, "training"),
                            (signal.SIGTERM, "teardown"))],
    Case("create-answer-lost", own_sim=True, faults=[{"kind": "http", "endpoint": "PUT /api/v0/asks/*",
                                                      "status": 502, "after": True, "count": 1}],
         rentals=1, message=ADOPTED),
    Case("create-connection-reset", own_sim=True, faults=[{"kind": "http", "endpoint": "PUT /api/v0/asks/*",
                                                           "status": 500, "body": "reset", "after": True,
                                                           "count": 1}],
         rentals=1, message=ADOPTED),
    # Other tenants take the two cheapest offers between the search and the rent (on-demand: ranked by price;
    # whole machines, so that a taken offer is gone rather than a GPU fewer).
    Case("offer-taken", own_sim=True, run_vars={"run_interruptible": False}, query="num_gpus=1 gpu_frac=1",
         faults_from_market=lambda sim: [{"kind": "take_offer", "offer_id": offer["id"], "at_rent": True}
                                         for offer in cheapest_offers(sim, 2, "num_gpus=1 gpu_frac=1")],
         rentals=1, message=r"(?s)completed;.*renting took 3 attempt\(s\): offer \d+ taken .*; offer \d+ taken "),
    # The controller is killed outright while the instance boots; the next reap.yml destroys what it left.
    Case("sigkill-in-renting", own_sim=True, max_steps=4000, trainer="--step_seconds 0.05", signal=signal.SIGKILL,
         signal_phase="renting", completes=False, newest=0,
         message=r"Orphans: destroyed 1 orphan\(s\), proven gone"),
]


class SimSlot:
    """A simulator that a case may restart (same state dir, same port, same key): ``sim`` is the live one."""

    def __init__(self, state_dir: Path, *, fixed_port: bool = False) -> None:
        self.state_dir = state_dir
        self.extra = ("--port", str(free_port())) if fixed_port else ()
        self.sim = start_sim(state_dir, *self.extra)

    def restart(self) -> None:
        harness.stop_checked(self.sim)
        self.sim = start_sim(self.state_dir, *self.extra)

    def close(self) -> None:
        harness.stop_checked(self.sim)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_case(case: Case, slot: SimSlot, base: Path) -> Outcome:
    sim = slot.sim
    tmp = base / f"c{CASES.index(case):02d}"  # short: ssh's ControlPath under $HOME must fit a socket's 108 bytes
    tmp.mkdir(parents=True)
    key = tmp / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(sim, tmp, MLOPS_VAST_SSH_KEY=str(key),
                      MLOPS_VAST_EXCLUSIONS=str(tmp / "excl.json"))
    with sim.client() as client:
        for spec in case.faults_from_market(sim) if case.faults_from_market else []:
            answer = client.post("/_sim/faults", json=spec)
            assert answer.status_code == 200, answer.text
        for spec in case.faults:
            body = spec if spec["kind"] == "http" else {**spec, "label": case.label}
            answer = client.post("/_sim/faults", json=body)
            assert answer.status_code == 200, answer.text
    command = (f"python3 train.py --output_dir /workspace/run/output --logging_steps 10 --save_steps {SAVE_STEPS} "
               f"--max_steps {case.max_steps} {case.trainer}")
    run_vars = {"run_name": case.label, "run_command": command, "run_query": good_query(sim, case.query),
                "run_results_dir": str(tmp / "results"), "run_sources": [], "run_min_mbps": 0,
                "run_poll_interval_s": 1, "run_sync_interval_s": 2, "run_stall_timeout_s": 8, **case.run_vars}
    during = case.during
    if case.restart_sim_at:
        during = on_host_when(case.restart_sim_at, "true", then=lambda _client: slot.restart())
    helper = threading.Thread(target=during, args=(sim, case.label, key), daemon=True) if during else None
    started = time.monotonic()
    if helper:
        helper.start()
    argv = ["playbooks/train.yml", "-i", str(local_inventory(tmp)), "-e", "@examples/run.yml",
            "-e", json.dumps(run_vars)]
    signalled: tuple[float, int] | None = None
    if case.signal:
        done, signalled = interrupted(case, sim, tmp, env, argv)
    else:
        done = run_playbook(argv[0], env, *argv[1:], timeout=900)
        (tmp / "out.log").write_text(done.stdout + done.stderr)  # kept with the case's files, for a failure's story
    seconds = time.monotonic() - started
    if helper:
        FINISHED.add(case.label)  # a helper whose moment never came stops looking, before its simulator is stopped
        helper.join(5)
    with slot.sim.client() as client:
        sim_rows = [row for row in client.get("/_sim/ledger").json()["rows"] if row["label"] == case.label]
        account_rows = [row for row in client.get("/api/v1/instances/").json()["instances"]
                        if row.get("label") == case.label]
    outcome = Outcome(case, done, tmp / "results", sim_rows, account_rows, ledger_open(tmp), seconds)
    if signalled:
        outcome.signalled_at, outcome.sealed_at_signal = signalled
    return outcome


def interrupted(case: Case, sim: Sim, tmp: Path, env: dict[str, str], argv: list[str]
                ) -> tuple[subprocess.CompletedProcess, tuple[float, int]]:
    """A plain ansible-playbook, signalled in ``case.signal_phase``; its output, and (when, newest sealed then)."""
    progress = tmp / "progress.json"
    env = {**env, "ANSIBLE_CALLBACKS_ENABLED": "mlops.vast.guard,mlops.vast.progress",
           "MLOPS_VAST_PROGRESS_FILE": str(progress)}
    log = tmp / "out.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(ANSIBLE_BIN / "ansible-playbook"), *argv], env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                phase = json.loads(progress.read_text()).get("phase")
                home = list((tmp / "results" / "checkpoints").glob(f"checkpoint-*/{cm.MANIFEST_NAME}"))
                # Training: once a sealed checkpoint is home; renting: once the contract exists (mid-rent).
                if phase == case.signal_phase and (home or phase != "training") and (
                        ledger_open(tmp) or phase != "renting"):
                    break
            time.sleep(0.2)
        assert process.poll() is None, f"the run ended before {case.signal_phase}: " + log.read_text()[-3000:]
        sealed = host_sealed(sim, tmp / "key", case.label) if case.signal_phase in ("training", "teardown") else []
        sent = time.time()
        process.send_signal(case.signal)
        process.wait(240)
        if case.signal == signal.SIGKILL:
            # The whole controller dies, not only ansible-playbook: its workers (sessions of their own) and modules.
            kill_everything_of(tmp)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        close_ssh_masters(env)
    output = log.read_text()
    if case.signal == signal.SIGKILL:
        reaped = run_playbook("playbooks/reap.yml", env, "-e", json.dumps({"reap_lease_grace_s": 0}), timeout=300)
        output += "\n--- reap.yml ---\n" + reaped.stdout + reaped.stderr
        assert reaped.returncode == 0, output[-4000:]
    return subprocess.CompletedProcess(process.args, process.returncode, output, ""), (sent, max(sealed, default=0))


def kill_everything_of(tmp: Path) -> None:
    """SIGKILL every process whose command line names the case's directory (bounded: a few rounds)."""
    for _round in range(5):
        listing = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
        pids = [int(line.split(None, 1)[0]) for line in listing.splitlines()
                if str(tmp) in line and "ps -ww" not in line]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def host_sealed(sim: Sim, key: Path, label: str) -> list[int]:
    """The steps of the checkpoints the host's agent has sealed now (its index)."""
    with sim.client() as client:
        rows = [r for r in client.get("/api/v1/instances/").json()["instances"] if r["label"] == label and r["ports"]]
    if not rows:
        return []
    port = int(rows[0]["ports"]["22/tcp"][0]["HostPort"])
    listing = ssh_run(rows[0]["public_ipaddr"], port, key, "cat /workspace/run/output/.mlops-sealed 2>/dev/null",
                      timeout=30)
    return [int(line.split("checkpoint-")[1]) for line in listing.stdout.split() if "checkpoint-" in line]


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, Outcome]]:
    base = tmp_path_factory.mktemp("fault-matrix")
    # Only the cases this session collected (``-k outbid`` runs one).
    wanted = {item.callspec.params["case"].name for item in request.session.items
              if getattr(item, "originalname", "") == "test_fault"}
    cases = [case for case in CASES if case.name in wanted]
    own_cases = [case for case in cases if case.own_sim]
    results: dict[str, Outcome] = {}
    with contextlib.ExitStack() as stack:
        shared = SimSlot(base / "shared-state")
        stack.callback(shared.close)
        sims: dict[str, SimSlot] = {}
        for case in own_cases:
            sims[case.name] = SimSlot(base / f"{case.name}-state", fixed_port=bool(case.restart_sim_at))
            stack.callback(sims[case.name].close)
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            futures = {pool.submit(run_case, case, sims.get(case.name, shared), base): case for case in cases}
            for future in concurrent.futures.as_completed(futures):
                case = futures[future]
                try:
                    results[case.name] = future.result()
                except Exception as error:  # reported by the case's own test
                    results[case.name] = Outcome(case, subprocess.CompletedProcess([], -1, "", ""), base, [], [], [],
                                                 0.0, error=repr(error))
        timings = sorted((round(o.seconds), name) for name, o in results.items())
        print(f"fault matrix: {len(results)} cases, seconds each: {timings}")
        yield results


def assert_matches_its_manifest(checkpoint: Path) -> None:
    """Every file the host's checkpoint agent sealed is home with its size and sha256."""
    manifest = cm.parse_manifest((checkpoint / cm.MANIFEST_NAME).read_text())
    for entry in manifest["files"]:
        data = (checkpoint / entry["path"]).read_bytes()
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"], \
            f"{checkpoint.name}/{entry['path']} differs from its manifest"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_fault(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.name]
    assert not outcome.error, outcome.error
    output = outcome.done.stdout + outcome.done.stderr
    excerpt = failure_excerpt(outcome.done.stdout) + outcome.done.stderr[-2000:]
    # 1. Nothing left open: the simulator's books, the account's list and the local ledger.
    assert outcome.sim_rows, f"{case.name}: nothing was rented at all\n{excerpt}"
    assert [(row["id"], row["status"]) for row in outcome.sim_rows if row["status"] != "destroyed"] == [], excerpt
    assert outcome.account_rows == [], outcome.account_rows
    assert outcome.local_open == []
    # 2. The right exit status: 0 when it completed; an interrupted one ends as Ansible ends on that signal.
    assert (outcome.done.returncode == 0) is case.completes, f"rc {outcome.done.returncode}\n{excerpt}"
    if case.signal:
        assert outcome.done.returncode == (99 if case.signal == signal.SIGINT else -case.signal), excerpt
        assert outcome.signalled_at is not None
        destroyed = max(row["destroyed_at"] for row in outcome.sim_rows)
        limit = 180 if case.signal == signal.SIGKILL else 60  # SIGKILL: until the next reap.yml has run
        assert destroyed - outcome.signalled_at < limit, f"destroyed {destroyed - outcome.signalled_at:.0f} s after"
    if case.rentals is not None:
        assert len(outcome.sim_rows) == case.rentals, [row["id"] for row in outcome.sim_rows]
    # 3. A clear message.
    assert re.search(case.message, output), f"no {case.message!r} in the output\n{excerpt}"
    assert "Traceback (most recent call last)" not in outcome.done.stdout.split("PLAY RECAP")[-1]
    # 4. No sealed checkpoint lost: the newest one sealed before the end is home, sealed, and was verified.
    newest = case.max_steps if case.newest is None else case.newest
    if case.signal:  # what the host had sealed when the signal came, or newer
        home = [int(path.name.split("-")[1]) for path in (outcome.results / "checkpoints").glob("checkpoint-*")]
        newest = max(home, default=0) if max(home, default=0) >= outcome.sealed_at_signal else outcome.sealed_at_signal
    checkpoints = outcome.results / "checkpoints"
    if newest:
        home = sorted((int(path.name.split("-")[1]) for path in checkpoints.glob("checkpoint-*")), reverse=True)
        assert home and (home[0] >= newest if case.or_newer else home[0] == newest), \
            f"checkpoints home: {home}, newest sealed: {newest}"
        for checkpoint in checkpoints.glob("checkpoint-*"):
            assert_matches_its_manifest(checkpoint)
        teardown = json.loads((outcome.results / "teardown.json").read_text())
        # Verified by the teardown against the host's manifest; a host that could not be reached (stopped for want
        # of credit) leaves the manifests pulled with each checkpoint as the proof, checked above.
        assert teardown["checkpoints_verified"] is True or teardown["host_reachable"] is False, teardown
    else:
        assert not list(checkpoints.glob("checkpoint-*")), "nothing sealed, nothing claimed"
    if case.check:
        case.check(outcome)
