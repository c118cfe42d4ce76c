"""train.yml surviving preemption on vastsim, end to end: an outbid mid-training re-bids and resumes in place, a
host that goes offline is replaced (never two instances at once, the old one destroyed and proven gone), a
preemption while a checkpoint is being written and a corrupted object in the S3 store never lead to a resume from
a broken checkpoint, and no storage credential or API key reaches a host. The tiny trainer is deterministic, so
every recovered run must end with the very model an uninterrupted run produces."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ansible_collections.mlops.vast.plugins.module_utils.rows import ssh_endpoint

from tests.conftest import REPO, Sim, needs_root, running_sim, selected_items
from tests.integration.ansible_run import ansible_env, failure_excerpt, ledger_open, local_inventory, run_playbook
from tests.integration.secret_scan import files_holding, forms, text_holding
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root]

MAX_STEPS, SAVE_STEPS = 600, 50
TRAIN = (f"python3 train.py --output_dir /workspace/run/output --max_steps {MAX_STEPS} --save_steps {SAVE_STEPS} "
         "--step_seconds 0.05")
RUN_LOG = "/workspace/run/run.log"


@pytest.fixture(scope="module")
def rsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("recovery-sim") / "state") as simulator:
        yield simulator


@pytest.fixture(scope="module")
def s3_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """The S3 test's own simulator: its outbid is a competing bid on a whole machine, which would also preempt the
    offline run's instance (training meanwhile on ``rsim``) had it landed there. Its state (API keys included)
    stays out of the test's folder, which is searched for secrets."""
    with running_sim(tmp_path_factory.mktemp("s3-sim") / "state") as simulator:
        yield simulator


@pytest.fixture(scope="module")
def reference_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The final model of the same run, uninterrupted, trained here."""
    out = tmp_path_factory.mktemp("reference")
    subprocess.run([sys.executable, str(REPO / "examples" / "tiny_trainer" / "train.py"), "--output_dir", str(out),
                    "--max_steps", str(MAX_STEPS), "--save_steps", str(SAVE_STEPS)], check=True, capture_output=True)
    return (out / f"checkpoint-{MAX_STEPS}" / "model.json").read_bytes()


def train(sim: Sim, tmp_path: Path, name: str, *args: str, **run_vars: object) -> subprocess.CompletedProcess:
    key = tmp_path / "key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(key), MLOPS_VAST_EXCLUSIONS=str(tmp_path / "excl.json"))
    extra = {"run_name": name, "run_results_dir": str(tmp_path / "results"), "run_query": good_query(sim),
             "run_sources": [], "run_min_mbps": 0, "run_poll_interval_s": 2, "run_sync_interval_s": 2,
             "run_command": TRAIN, **run_vars}
    return run_playbook("playbooks/train.yml", env, "-i", str(local_inventory(tmp_path)), "-e", "@examples/run.yml",
                        "-e", json.dumps(extra), *args, timeout=900)


class Armer(threading.Thread):
    """Arms a fault on the run's instance as soon as the run's (first, or next) instance is running."""

    def __init__(self, sim: Sim, label: str, spec: dict, *, skip: int = 0, target: str = "instance_id") -> None:
        super().__init__(daemon=True)
        self.sim, self.label, self.spec, self.skip, self.target = sim, label, spec, skip, target
        self.armed: dict | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 600
        with self.sim.client() as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                rows = [row for row in client.get("/api/v0/instances/").json()["instances"]
                        if row.get("label") == self.label and row.get("actual_status") == "running"]
                if rows:
                    row = rows[0]
                    spec = dict(self.spec)
                    spec[self.target] = row["machine_id"] if self.target == "machine_id" else row["id"]
                    answer = client.post("/_sim/faults", json=spec)
                    assert answer.status_code == 200, answer.text
                    self.armed = {"instance": row, "fault": answer.json()["faults"][-1]}
                    return
                self.stop.wait(0.5)


def sim_rows(sim: Sim, label: str) -> list[dict]:
    with sim.client() as client:
        return [row for row in client.get("/_sim/ledger").json()["rows"] if row["label"] == label]


def assert_never_two_at_once(rows: list[dict]) -> None:
    spans = sorted((row["created_at"], row["destroyed_at"] or float("inf"), row["id"]) for row in rows)
    for (_start, end, first), (start, _end, second) in itertools.pairwise(spans):
        assert end <= start, f"instances {first} and {second} existed at the same time"


def resumed_steps(results: Path) -> list[int]:
    text = (results / "run.log").read_text()
    return [int(step) for step in re.findall(r"mlops\.vast: attempt \d+ resuming from \S+checkpoint-(\d+)", text)]


def recovery_record(results: Path) -> dict:
    return json.loads((results / "recovery.json").read_text())


def assert_completed_with_the_reference_model(done: subprocess.CompletedProcess, results: Path,
                                              reference: bytes) -> None:
    assert done.returncode == 0, failure_excerpt(done.stdout)
    assert "completed after 1 recovery" in done.stdout, failure_excerpt(done.stdout)
    final = results / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "model.json"
    assert final.read_bytes() == reference, "the recovered run must end with the uninterrupted run's model"


def scan_host_for(sim: Sim, key: Path, label: str, secrets: list[str], found: dict, stop: threading.Event) -> None:
    """Once each of the run's instances trains, look for the secrets in its files, environments and process
    arguments (``found["scanned"]``: the instance ids scanned, ``found["hits"]``: where a secret was)."""
    found.update(scanned=[], hits=[])
    deadline = time.monotonic() + 600
    with sim.client() as client:
        while not stop.is_set() and time.monotonic() < deadline:
            rows = [row for row in client.get("/api/v0/instances/").json()["instances"]
                    if row.get("label") == label and row.get("actual_status") == "running"
                    and row["id"] not in found["scanned"]]
            for row in rows:
                host, port, _kind = ssh_endpoint(row)
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    look = subprocess.run(
                        ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o",
                         "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{host}",
                         "grep -q \"'step': \" /workspace/run/run.log 2>/dev/null || exit 7; "
                         "cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n' > /tmp/.scan; "
                         # The instance's own mounts and the places a host-side step could write to; the rest of
                         # / is this machine's own file system (a whole scan takes minutes here).
                         "grep -rl -F -f /dev/stdin /workspace /root /tmp /etc /var/tmp /home /run/vastsim "
                         "2>/dev/null; echo scanned"],
                        input="\n".join(form for secret in secrets for form in forms(secret)) + "\n",
                        capture_output=True, text=True, timeout=60)
                    if look.returncode != 7 and "scanned" in look.stdout:
                        found["scanned"].append(row["id"])
                        found["hits"] += [f"{row['id']}: {line}" for line in look.stdout.splitlines()
                                          if line and line != "scanned"]
            stop.wait(1)


def test_s3_store_a_preemption_mid_save_and_a_corrupt_object_never_resume_from_a_broken_checkpoint(
        s3_sim: Sim, tmp_path: Path, reference_model: bytes, s3_bucket: dict) -> None:
    label = "rec-s3"
    with s3_sim.client() as client:
        mode = client.get("/_sim/info").json()["host_mode"]
        answer = client.post("/_sim/forwards", json={"name": "s3.vastsim",
                                                     "to": s3_bucket["endpoint_url"].split("://", 1)[1]})
        assert answer.status_code == 200, answer.text
    host_endpoint = "http://s3.vastsim" if mode == "namespace" else s3_bucket["endpoint_url"]
    bucket, s3 = s3_bucket["bucket"], s3_bucket["client"]
    # Outbid while checkpoint-300 is half written (its files go in one by one, trainer_state.json last).
    armer = Armer(s3_sim, label, {"kind": "outbid", "price": 100.0, "when_partial": {
        "glob": "/workspace/run/output/checkpoint-300", "missing": "trainer_state.json"}}, target="machine_id")
    corrupted: dict = {}

    def corrupt_checkpoint_250() -> None:
        # As soon as checkpoint-250 is published, one of its objects is replaced by same-size garbage.
        key = f"runs/{label}/attempt-1/checkpoint-250/model.json"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not corrupted:
            with contextlib.suppress(Exception):
                s3.head_object(Bucket=bucket, Key=f"runs/{label}/attempt-1/checkpoint-250/.mlops-seal.json")
                size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
                s3.put_object(Bucket=bucket, Key=key, Body=b"x" * size)
                corrupted["key"] = key
            time.sleep(0.2)

    scan: dict = {}
    stop = threading.Event()
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    threads = [armer, threading.Thread(target=corrupt_checkpoint_250, daemon=True),
               threading.Thread(target=scan_host_for, daemon=True,
                                args=(s3_sim, key, label, [s3_bucket["secret_key"], s3_sim.api_key], scan, stop))]
    for thread in threads:
        thread.start()
    try:
        done = train(s3_sim, tmp_path, label, "-vvv", run_interruptible=True, run_recovery={"strategy": "replace"},
                     run_command=TRAIN + " --save_mode inplace --save_file_seconds 0.5",
                     run_checkpoint_store={"type": "s3", "bucket": bucket, "prefix": "runs",
                                           "endpoint_url": s3_bucket["endpoint_url"],
                                           "host_endpoint_url": host_endpoint, "region": "us-east-1"})
    finally:
        stop.set()
        armer.stop.set()
        for thread in threads:
            thread.join(10)
    assert armer.armed and corrupted, (armer.armed, corrupted)
    results = tmp_path / "results"
    assert_completed_with_the_reference_model(done, results, reference_model)
    recovery = recovery_record(results)["recoveries"][0]
    assert recovery["outcome"] == "preempted" and recovery["mode"] == "replace", recovery
    # Not the half-written checkpoint-300, not the corrupted checkpoint-250: the one before, from the store.
    assert recovery["resumed_from"] == {"name": "checkpoint-200", "step": 200, "attempt": 1,
                                        "path": "/workspace/run/output/checkpoint-200"}, recovery
    assert "Restored checkpoint-200 (attempt 1); passed over: checkpoint-250" in done.stdout, \
        failure_excerpt(done.stdout)
    assert resumed_steps(results) == [200]
    # The store keeps the newest sealed checkpoints of the lineage (at least two) and no unfinished upload.
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{label}/").get("Contents", [])]
    sealed = sorted({k.rsplit("/", 2)[-2] for k in keys if k.endswith(".mlops-seal.json")})
    assert f"checkpoint-{MAX_STEPS}" in sealed and len(sealed) >= 2, keys
    assert f"runs/{label}/fences/attempt-2.json" in keys
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # No storage credential and no API key on the replacement host while it trained (files, environments,
    # process arguments), and none in what came home.
    # Both the preempted instance (while it trained) and its replacement were scanned.
    assert len(scan["scanned"]) >= 2 and scan["hits"] == [], scan
    # Nor, as is, URL-encoded or in base64, in the -vvv output, the results, the ledger, the leases and the
    # rest of the controller's state for the run (everything under tmp_path).
    secrets = [s3_bucket["secret_key"], s3_sim.api_key]
    assert text_holding(done.stdout + done.stderr, secrets) == []
    assert "ESTABLISH SSH CONNECTION FOR USER" in done.stdout, "the run was not at -vvv"
    assert files_holding(tmp_path, secrets) == []
    assert ledger_open(tmp_path) == [] and all(row["status"] == "destroyed" for row in sim_rows(s3_sim, label))


OFFLINE_LABEL = "rec-offline"
OFFLINE_TEST = "test_a_host_that_goes_offline_is_replaced_never_two_at_once_and_the_old_one_proven_gone"


@dataclass
class OfflineRun:
    tmp_path: Path
    armer: Armer
    future: concurrent.futures.Future


@pytest.fixture(scope="module", autouse=True)
def offline_run(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineRun | None]:
    """The host-offline run starts as the module starts and trains while the S3 test runs its own: both mostly
    wait on the tiny trainer's steps and on vastsim, and their faults aim at their own labels."""
    if not selected_items(request, OFFLINE_TEST):
        yield None
        return
    rsim: Sim = request.getfixturevalue("rsim")
    tmp_path = tmp_path_factory.mktemp(OFFLINE_LABEL)
    armer = Armer(rsim, OFFLINE_LABEL, {"kind": "offline", "when_log": {"path": RUN_LOG, "pattern": r"'step': 340\b"}})

    def run() -> subprocess.CompletedProcess:
        armer.start()
        try:
            return train(rsim, tmp_path, OFFLINE_LABEL,
                         run_recovery={"strategy": "wait_then_replace", "wait_in_place_s": 5})
        finally:
            armer.stop.set()
            armer.join(10)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield OfflineRun(tmp_path, armer, pool.submit(run))


def test_a_host_that_goes_offline_is_replaced_never_two_at_once_and_the_old_one_proven_gone(
        rsim: Sim, offline_run: OfflineRun | None, reference_model: bytes) -> None:
    assert offline_run is not None
    done = offline_run.future.result(timeout=900)
    armer, tmp_path = offline_run.armer, offline_run.tmp_path
    assert armer.armed, "the fault was never armed"
    results = tmp_path / "results"
    assert_completed_with_the_reference_model(done, results, reference_model)
    recovery = recovery_record(results)["recoveries"][0]
    lost = armer.armed["instance"]
    assert recovery["outcome"] == "host_lost" and recovery["mode"] == "replace", recovery
    assert recovery["lost_instance"] == lost["id"] and recovery["new_machine"] != lost["machine_id"], recovery
    # Restored from the controller's verified copy: a sealed checkpoint, not the one being written.
    assert recovery["resumed_from"]["step"] in (250, 300) and recovery["resumed_from"]["step"] % SAVE_STEPS == 0
    rows = sim_rows(rsim, OFFLINE_LABEL)
    assert_never_two_at_once(rows)
    old = next(row for row in rows if row["id"] == lost["id"])
    assert old["status"] == "destroyed" and old["destroyed_at"] < recovery["training_again_at"]
    with rsim.client() as client:
        assert client.get(f"/api/v0/instances/{lost['id']}/").json()["instances"] is None, "proven gone"
    assert all(row["status"] == "destroyed" for row in rows) and ledger_open(tmp_path) == []
