"""The checkpoint store against a real S3 server (moto_server on loopback): hosts upload sealed checkpoints
with the controller's grant and the standard library only, the controller lists, plans, fences, retains and
downloads through boto3, and the module does the same through ansible-playbook."""

from __future__ import annotations

import base64
import calendar
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.mlops.vast.plugins.module_utils import checkpoint_manifest as cm
from ansible_collections.mlops.vast.plugins.module_utils.checkpoint_store import (
    GRANT_MAX_S,
    MAX_OBJECT_BYTES,
    CheckpointCorrupt,
    CheckpointStoreError,
    S3Store,
)
from botocore.stub import Stubber

from tests.integration.ansible_run import ansible_env, run_playbook, run_task

RUN = "run-1"
PREFIX = "team/ckpts"


# ---------------------------------------------------------------------------------------------- the host's side

def host_endpoint(s3: dict[str, Any]) -> str:
    """The same server under another name, as a rented host would reach it: URLs for it must name it."""
    return s3["endpoint_url"].replace("127.0.0.1", "localhost")


def make_store(s3: dict[str, Any], prefix: str = PREFIX, **extra: Any) -> S3Store:
    return S3Store(s3["bucket"], prefix, endpoint_url=s3["endpoint_url"], host_endpoint_url=host_endpoint(s3),
                   **extra)


def make_checkpoint(root: Path, attempt: int, step: int, run_id: str = RUN) -> Path:
    """A sealed checkpoint directory: weights over two hash chunks, a nested file, the trainer's state."""
    path = root / f"a{attempt}" / f"checkpoint-{step}"
    (path / "optimizer").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(cm.CHUNK * 2 + 777))
    (path / "optimizer" / "state.pt").write_bytes(os.urandom(5000))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    cm.seal(path, run_id, attempt, step)
    return path


def post_form(url: str, fields: dict[str, str], data: bytes) -> None:
    """One multipart/form-data POST, as a host without boto3 sends it: the fields, then the file, last."""
    boundary = f"mlops-{secrets.token_hex(12)}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status in (200, 201, 204), answer.status


def host_upload(grant: dict[str, Any], path: Path, *, manifest: bool = True, skip: tuple[str, ...] = ()) -> None:
    """Upload a sealed checkpoint with the grant: every file of its manifest, then the manifest itself."""
    sealed = cm.parse_manifest((path / cm.MANIFEST_NAME).read_bytes())
    base = f"{grant['key_prefix']}{sealed['name']}/"
    for entry in sealed["files"]:
        if entry["path"] not in skip:
            post_form(grant["url"], {**grant["fields"], "key": base + entry["path"]},
                      (path / entry["path"]).read_bytes())
    if manifest:
        post_form(grant["url"], {**grant["fields"], "key": base + cm.MANIFEST_NAME},
                  (path / cm.MANIFEST_NAME).read_bytes())


def publish(store: S3Store, root: Path, attempt: int, step: int, **options: Any) -> Path:
    path = make_checkpoint(root, attempt, step)
    host_upload(store.upload_grant(RUN, attempt, 3600), path, **options)
    return path


def host_get(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=30) as answer, open(target, "wb") as handle:
        shutil.copyfileobj(answer, handle)


def host_restore(plan: list[dict[str, Any]], output: Path) -> tuple[Path | None, list[tuple[str, list[str]]]]:
    """The plan's consumer on a host: the first candidate whose download matches its manifest, else the next."""
    rejected = []
    for candidate in plan:
        staging = output / f".restore-{candidate['name']}"
        host_get(candidate["manifest_url"], staging / cm.MANIFEST_NAME)
        manifest = cm.parse_manifest((staging / cm.MANIFEST_NAME).read_bytes())
        for entry in manifest["files"]:
            host_get(candidate["urls"][entry["path"]], staging / entry["path"])
        problems = cm.verify_dir(staging, manifest)
        if problems:
            rejected.append((candidate["name"], problems))
            shutil.rmtree(staging)
            continue
        final = output / candidate["name"]
        staging.rename(final)
        return final, rejected
    return None, rejected


def same_files(left: Path, right: Path) -> bool:
    names = sorted(p.relative_to(left).as_posix() for p in left.rglob("*") if p.is_file())
    return names == sorted(p.relative_to(right).as_posix() for p in right.rglob("*") if p.is_file()) and all(
        (left / name).read_bytes() == (right / name).read_bytes() for name in names)


def keys(s3: dict[str, Any], prefix: str = "") -> list[str]:
    pages = s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def names(entries: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(entry["attempt"], entry["step"]) for entry in entries]


# ---------------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("prefix", ["", PREFIX])
def test_a_host_uploads_with_the_grant_alone_and_restores_through_the_plans_urls(
        s3_bucket: dict[str, Any], tmp_path: Path, prefix: str) -> None:
    store = make_store(s3_bucket, prefix)
    store.check()
    source = make_checkpoint(tmp_path / "host", 1, 100)
    grant = store.upload_grant(RUN, 1, 3600)
    assert grant["url"].startswith(host_endpoint(s3_bucket) + "/"), grant["url"]
    assert grant["key_prefix"] == (f"{prefix}/" if prefix else "") + f"{RUN}/attempt-1/"
    assert s3_bucket["secret_key"] not in json.dumps(grant)
    host_upload(grant, source)

    stored = keys(s3_bucket)
    base = f"{grant['key_prefix']}checkpoint-100/"
    assert stored == sorted(base + name for name in (cm.MANIFEST_NAME, "model.safetensors", "optimizer/state.pt",
                                                     "trainer_state.json"))
    assert not any(key.startswith("/") for key in stored)

    [published] = store.published(RUN)
    sealed = cm.parse_manifest((source / cm.MANIFEST_NAME).read_bytes())
    assert published["complete"] and published["manifest"] == sealed and published["excluded"] is None
    assert published["missing"] == [] and published["error"] is None
    assert {item["path"]: item["size"] for item in published["objects"]} == {
        **{entry["path"]: entry["size"] for entry in sealed["files"]},
        cm.MANIFEST_NAME: (source / cm.MANIFEST_NAME).stat().st_size}

    [candidate] = store.restore_plan(RUN)
    urls = [candidate["manifest_url"], *candidate["urls"].values()]
    assert all(url.startswith(host_endpoint(s3_bucket) + "/") for url in urls), urls
    assert set(candidate["urls"]) == {entry["path"] for entry in sealed["files"]}
    restored, rejected = host_restore([candidate], tmp_path / "new-host")
    assert rejected == [] and restored is not None
    assert cm.verify_dir(restored, sealed) == []
    assert same_files(source, restored)

    home = store.download(candidate, tmp_path / "home")
    assert home["changed"] and home["path"] == str(tmp_path / "home" / "checkpoint-100")
    assert same_files(source, Path(home["path"]))
    assert store.download(candidate, tmp_path / "home")["changed"] is False
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["checkpoint-100"], "no staging left"


def test_the_grant_limits_keys_to_the_attempt_objects_to_5_gib_and_lives_at_most_7_days(
        s3_bucket: dict[str, Any]) -> None:
    store = make_store(s3_bucket)
    before = time.time()
    grant = store.upload_grant(RUN, 3, 30 * 24 * 3600)
    assert grant["expires_s"] == GRANT_MAX_S
    assert before + GRANT_MAX_S <= grant["expires_at"] <= time.time() + GRANT_MAX_S
    assert "key" not in grant["fields"] and grant["fields"]["x-amz-signature"]
    policy = json.loads(base64.b64decode(grant["fields"]["policy"]))
    assert ["starts-with", "$key", f"{PREFIX}/{RUN}/attempt-3/"] in policy["conditions"]
    assert ["content-length-range", 0, MAX_OBJECT_BYTES] in policy["conditions"] and MAX_OBJECT_BYTES == 5 * 1024 ** 3
    assert {"bucket": s3_bucket["bucket"]} in policy["conditions"]
    expiration = calendar.timegm(time.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expiration - (before + GRANT_MAX_S)) < 120
    assert s3_bucket["secret_key"] not in json.dumps(grant)
    for bad in (0, -5, True):
        with pytest.raises(CheckpointStoreError, match="expires_s"):
            store.upload_grant(RUN, 3, bad)
    with pytest.raises(CheckpointStoreError, match="run_id"):
        store.upload_grant("../other", 3, 60)


# ---------------------------------------------------------------------------------------------- what is offered

def test_a_corrupt_object_fails_verification_and_the_consumer_falls_back(s3_bucket: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    store = make_store(s3_bucket)
    older = publish(store, tmp_path / "host", 1, 100)
    newer = publish(store, tmp_path / "host", 1, 200)
    key = f"{PREFIX}/{RUN}/attempt-1/checkpoint-200/model.safetensors"
    original = (newer / "model.safetensors").read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    s3_bucket["client"].put_object(Bucket=s3_bucket["bucket"], Key=key, Body=bytes(damaged))

    # Same size: the listing cannot tell, so both stay candidates, newest first.
    assert [entry["complete"] for entry in store.published(RUN)] == [True, True]
    plan = store.restore_plan(RUN)
    assert names(plan) == [(1, 200), (1, 100)]

    restored, rejected = host_restore(plan, tmp_path / "new-host")
    assert restored == tmp_path / "new-host" / "checkpoint-100" and same_files(older, restored)
    assert [name for name, _ in rejected] == ["checkpoint-200"]
    assert rejected[0][1][0].startswith("model.safetensors: sha256 ")

    with pytest.raises(CheckpointCorrupt) as caught:
        store.download(plan[0], tmp_path / "home")
    assert caught.value.problems[0].startswith("model.safetensors: sha256 ")
    assert not (tmp_path / "home" / "checkpoint-200").exists()
    assert list((tmp_path / "home").iterdir()) == [], "the staging copy is removed"

    done = store.download_latest(RUN, tmp_path / "home")
    assert done["path"] == str(tmp_path / "home" / "checkpoint-100") and done["checkpoint"]["step"] == 100
    assert [skipped["step"] for skipped in done["skipped"]] == [200]
    assert same_files(older, Path(done["path"]))


def test_an_upload_interrupted_before_the_manifest_or_missing_a_file_is_never_offered(
        s3_bucket: dict[str, Any], tmp_path: Path) -> None:
    store = make_store(s3_bucket)
    publish(store, tmp_path / "host", 1, 100)
    publish(store, tmp_path / "host", 1, 200, manifest=False)   # interrupted before the manifest
    publish(store, tmp_path / "host", 1, 300, skip=("optimizer/state.pt",))
    truncated = publish(store, tmp_path / "host", 1, 400)
    s3_bucket["client"].put_object(Bucket=s3_bucket["bucket"],
                                   Key=f"{PREFIX}/{RUN}/attempt-1/checkpoint-400/trainer_state.json",
                                   Body=(truncated / "trainer_state.json").read_bytes()[:5])

    published = {entry["step"]: entry for entry in store.published(RUN)}
    assert sorted(published) == [100, 300, 400], "checkpoint-200 has no manifest: not published"
    assert published[100]["complete"]
    assert not published[300]["complete"] and published[300]["missing"] == ["optimizer/state.pt: missing"]
    assert not published[400]["complete"] and "5 bytes stored" in published[400]["missing"][0]
    assert names(store.restore_plan(RUN)) == [(1, 100)]
    assert store.download_latest(RUN, tmp_path / "home")["checkpoint"]["step"] == 100


def test_an_unreadable_manifest_is_reported_not_raised(s3_bucket: dict[str, Any], tmp_path: Path) -> None:
    store = make_store(s3_bucket)
    publish(store, tmp_path / "host", 1, 100)
    client, bucket = s3_bucket["client"], s3_bucket["bucket"]
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{RUN}/attempt-1/checkpoint-200/{cm.MANIFEST_NAME}", Body=b"{oops")
    # A manifest sealed for another step, stored under this one: a mislabelled checkpoint.
    moved = json.loads(json.dumps(store.published(RUN)[-1]["manifest"]))
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{RUN}/attempt-1/checkpoint-300/{cm.MANIFEST_NAME}",
                      Body=json.dumps(moved).encode())
    published = {entry["step"]: entry for entry in store.published(RUN)}
    assert "not JSON" in published[200]["error"] and not published[200]["complete"]
    assert "lies under attempt-1/checkpoint-300" in published[300]["error"] and not published[300]["complete"]
    assert names(store.restore_plan(RUN)) == [(1, 100)]


def test_the_empty_store_plans_a_fresh_start(s3_bucket: dict[str, Any], tmp_path: Path) -> None:
    store = make_store(s3_bucket)
    assert store.published(RUN) == [] and store.restore_plan(RUN) == [] and store.fences(RUN) == []
    assert store.download_latest(RUN, tmp_path / "home") == {"path": None, "changed": False, "checkpoint": None,
                                                            "skipped": []}


# ---------------------------------------------------------------------------------------------- fences

def test_fences_keep_a_zombie_attempts_late_checkpoint_out_of_the_restore(s3_bucket: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    store = make_store(s3_bucket)
    host = tmp_path / "host"
    zombie_grant = store.upload_grant(RUN, 1, 3600)
    for step in (100, 200):
        host_upload(zombie_grant, make_checkpoint(host, 1, step))
    # Attempt 1's host is lost; attempt 2 resumes from its newest checkpoint.
    assert store.write_fence(RUN, 2, {"attempt": 1, "step": 200})["changed"] is True
    publish(store, host, 2, 250)
    # Attempt 1's host comes back and publishes, with the grant it still has.
    host_upload(zombie_grant, make_checkpoint(host, 1, 300))

    published = {(entry["attempt"], entry["step"]): entry for entry in store.published(RUN)}
    assert published[(1, 300)]["complete"] and "step 300 came later" in published[(1, 300)]["excluded"]
    plan = store.restore_plan(RUN, limit=5)
    assert names(plan) == [(2, 250), (1, 200), (1, 100)]

    # Attempt 2's newest is corrupt: the fallback is the lineage's 1@200, never the zombie's 1@300.
    key = f"{PREFIX}/{RUN}/attempt-2/checkpoint-250/trainer_state.json"
    body = s3_bucket["client"].get_object(Bucket=s3_bucket["bucket"], Key=key)["Body"].read()
    s3_bucket["client"].put_object(Bucket=s3_bucket["bucket"], Key=key, Body=body.replace(b"250", b"300"))
    restored, rejected = host_restore(plan, tmp_path / "new-host")
    assert [name for name, _ in rejected] == ["checkpoint-250"] and restored is not None
    assert json.loads((restored / "trainer_state.json").read_text()) == {"global_step": 200}
    assert cm.parse_manifest((restored / cm.MANIFEST_NAME).read_bytes())["attempt"] == 1

    # Retention never counts or deletes the zombie's checkpoint; it reports it.
    kept = store.retain(RUN, keep=2, dry_run=True)
    assert names(kept["kept"]) == [(2, 250), (1, 200)] and names(kept["deleted"]) == [(1, 100)]
    assert names(kept["fenced_out"]) == [(1, 300)]


def test_a_fence_is_written_once_and_a_stale_attempt_cannot_fence(s3_bucket: dict[str, Any]) -> None:
    store = make_store(s3_bucket, prefix="")
    assert store.write_fence(RUN, 2, None, dry_run=True)["changed"] is True
    assert keys(s3_bucket) == [], "a dry run writes nothing"
    first = store.write_fence(RUN, 2, {"attempt": 1, "step": 200})
    assert first["key"] == f"{RUN}/fences/attempt-2.json" and keys(s3_bucket) == [first["key"]]
    stored = json.loads(s3_bucket["client"].get_object(Bucket=s3_bucket["bucket"], Key=first["key"])["Body"].read())
    assert stored["attempt"] == 2 and stored["resumed_from"] == {"attempt": 1, "step": 200} and stored["at"] > 0
    again = store.write_fence(RUN, 2, {"attempt": 1, "step": 200})
    assert again["changed"] is False and again["fence"] == first["fence"]
    with pytest.raises(CheckpointStoreError, match="already says attempt 2 resumed from attempt 1 step 200"):
        store.write_fence(RUN, 2, None)
    with pytest.raises(CheckpointStoreError, match="attempt 2 has already started"):
        store.write_fence(RUN, 1, None)
    with pytest.raises(CheckpointStoreError, match="only from an earlier one"):
        store.write_fence(RUN, 3, {"attempt": 3, "step": 1})
    assert store.fences(RUN) == [first["fence"]]
    s3_bucket["client"].put_object(Bucket=s3_bucket["bucket"], Key=f"{RUN}/fences/attempt-4.json", Body=b"[]")
    with pytest.raises(CheckpointStoreError, match=r"fences/attempt-4\.json .* is not a fence"):
        store.restore_plan(RUN)


# ---------------------------------------------------------------------------------------------- clean-up

def test_retention_keeps_at_least_two_and_an_upload_in_progress(s3_bucket: dict[str, Any], tmp_path: Path) -> None:
    store = make_store(s3_bucket)
    for step in (100, 200, 300, 400):
        publish(store, tmp_path / "host", 1, step)
    publish(store, tmp_path / "host", 1, 500, manifest=False)   # still uploading
    checkpoint_keys = keys(s3_bucket)

    for too_few in (1, 0):
        with pytest.raises(CheckpointStoreError, match="keep must be at least 2"):
            store.retain(RUN, keep=too_few)
    planned = store.retain(RUN, keep=2, dry_run=True)
    assert names(planned["deleted"]) == [(1, 200), (1, 100)] and names(planned["kept"]) == [(1, 400), (1, 300)]
    assert names(planned["uploading"]) == [(1, 500)]
    assert keys(s3_bucket) == checkpoint_keys, "a dry run deletes nothing"

    done = store.retain(RUN, keep=2)
    assert done["deleted"] == planned["deleted"] and all(item["objects"] == 4 for item in done["deleted"])
    assert keys(s3_bucket) == [key for key in checkpoint_keys
                               if "/checkpoint-100/" not in key and "/checkpoint-200/" not in key]
    assert names(store.restore_plan(RUN)) == [(1, 400), (1, 300)]
    assert store.retain(RUN, keep=2)["deleted"] == []

    # An incomplete checkpoint nobody wrote to for longer than stale_s is an abandoned upload.
    stale = store.retain(RUN, keep=2, stale_s=0)
    assert names(stale["deleted"]) == [(1, 500)] and "no manifest" in stale["deleted"][0]["reason"]
    assert not any("/checkpoint-500/" in key for key in keys(s3_bucket))
    assert names(store.restore_plan(RUN)) == [(1, 400), (1, 300)]


def test_unfinished_multipart_uploads_under_the_run_are_aborted(s3_bucket: dict[str, Any]) -> None:
    store = make_store(s3_bucket)
    client, bucket = s3_bucket["client"], s3_bucket["bucket"]
    ours = f"{PREFIX}/{RUN}/attempt-1/checkpoint-100/model.safetensors"
    theirs = f"{PREFIX}/run-10/attempt-1/checkpoint-100/model.safetensors"
    upload_ids = {}
    for key in (ours, theirs):
        upload_ids[key] = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload_ids[key], PartNumber=1, Body=b"x" * 1024)

    def unfinished() -> list[str]:
        return sorted(item["Key"] for item in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    would = store.abort_incomplete_uploads(RUN, dry_run=True)
    assert [(item["key"], item["upload_id"]) for item in would] == [(ours, upload_ids[ours])]
    assert unfinished() == sorted([ours, theirs])
    aborted = store.abort_incomplete_uploads(RUN)
    assert [item["key"] for item in aborted] == [ours] and aborted[0]["initiated"] > 0
    assert unfinished() == [theirs], "another run's upload (run-10 starts like run-1) is left alone"
    assert store.abort_incomplete_uploads(RUN) == []


# ---------------------------------------------------------------------------------------------- errors

def test_check_names_a_missing_bucket_and_says_how_to_create_it(s3_bucket: dict[str, Any]) -> None:
    store = S3Store("no-such-bucket-here", endpoint_url=s3_bucket["endpoint_url"])
    with pytest.raises(CheckpointStoreError) as caught:
        store.check()
    message = str(caught.value)
    assert "'no-such-bucket-here'" in message and s3_bucket["endpoint_url"] in message
    assert "does not exist" in message and "aws s3 mb s3://no-such-bucket-here" in message


def test_check_names_an_unreachable_endpoint_quickly(s3_bucket: dict[str, Any]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    store = S3Store(s3_bucket["bucket"], endpoint_url=closed)
    started = time.monotonic()
    with pytest.raises(CheckpointStoreError) as caught:
        store.check()
    assert time.monotonic() - started < 30
    assert f"cannot reach {closed}" in str(caught.value) and "check endpoint_url" in str(caught.value)


def test_check_says_where_credentials_come_from_when_there_are_none(s3_bucket: dict[str, Any],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = make_store(s3_bucket)
    with pytest.raises(CheckpointStoreError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        store.check()
    with pytest.raises(CheckpointStoreError, match="no usable storage credentials"):
        store.upload_grant(RUN, 1, 60)


def test_a_missing_profile_and_a_malformed_endpoint_fail_before_any_request(s3_bucket: dict[str, Any],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointStoreError, match=r"must be URLs like http://127\.0\.0\.1:9000"):
        S3Store(s3_bucket["bucket"], endpoint_url="127.0.0.1 port 9000")
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(CheckpointStoreError, match=r"no-such-profile\) could not be found"):
        make_store(s3_bucket)


def test_refused_credentials_are_named_as_such(s3_bucket: dict[str, Any]) -> None:
    # moto accepts any key, so the server's refusal is stubbed at the client: the message is what is checked.
    store = make_store(s3_bucket)
    with Stubber(store._client) as stub:
        stub.add_client_error("head_bucket", service_error_code="InvalidAccessKeyId", http_status_code=403,
                              service_message="The AWS Access Key Id you provided does not exist in our records.")
        with pytest.raises(CheckpointStoreError) as caught:
            store.check()
    message = str(caught.value)
    assert "refused the credentials (InvalidAccessKeyId" in message and s3_bucket["bucket"] in message
    assert "AWS_SECRET_ACCESS_KEY" in message and s3_bucket["secret_key"] not in message


# ---------------------------------------------------------------------------------------------- the module

def module_args(s3: dict[str, Any], action: str, **extra: Any) -> dict[str, Any]:
    return {"action": action, "bucket": s3["bucket"], "prefix": PREFIX, "endpoint_url": s3["endpoint_url"],
            "host_endpoint_url": host_endpoint(s3), **extra}


@pytest.mark.slow
def test_the_module_checks_lists_and_plans(s3_bucket: dict[str, Any], tmp_path: Path) -> None:
    env = ansible_env(None, tmp_path)
    checked = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "check"), env, tmp_path)
    assert not checked.get("failed") and checked["changed"] is False, checked
    assert checked["store"] == {"bucket": s3_bucket["bucket"], "prefix": PREFIX,
                                "endpoint_url": s3_bucket["endpoint_url"],
                                "host_endpoint_url": host_endpoint(s3_bucket)}

    missing = run_task("mlops.vast.checkpoint_store", {**module_args(s3_bucket, "check"), "bucket": "absent-bucket"},
                       env, tmp_path)
    assert missing["failed"] and "'absent-bucket'" in missing["msg"] and "does not exist" in missing["msg"], missing
    assert "Traceback" not in json.dumps(missing)

    store = make_store(s3_bucket)
    publish(store, tmp_path / "host", 1, 100)
    publish(store, tmp_path / "host", 1, 200, manifest=False)
    listed = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "list", run_id=RUN), env, tmp_path)
    assert not listed.get("failed") and listed["changed"] is False, listed
    assert listed["count"] == 1 and listed["checkpoints"][0]["name"] == "checkpoint-100"
    assert listed["checkpoints"][0]["complete"] is True and listed["fences"] == []

    planned = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "plan", run_id=RUN), env, tmp_path)
    assert not planned.get("failed") and planned["count"] == 1, planned
    assert planned["plan"][0]["manifest_url"].startswith(host_endpoint(s3_bucket) + "/")

    no_run = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "list"), env, tmp_path)
    assert no_run["failed"] and "run_id" in no_run["msg"], no_run


@pytest.mark.slow
def test_the_module_in_check_mode_deletes_aborts_and_fences_nothing(s3_bucket: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    env = ansible_env(None, tmp_path)
    store = make_store(s3_bucket)
    for step in (100, 200, 300):
        publish(store, tmp_path / "host", 1, step)
    client, bucket = s3_bucket["client"], s3_bucket["bucket"]
    upload = client.create_multipart_upload(Bucket=bucket, Key=f"{PREFIX}/{RUN}/attempt-1/big.bin")["UploadId"]
    before = keys(s3_bucket)

    retained = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "retain", run_id=RUN, keep=2), env,
                        tmp_path, check=True)
    assert not retained.get("failed") and retained["changed"] is True, retained
    assert [item["name"] for item in retained["deleted"]] == ["checkpoint-100"]
    aborted = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "abort_uploads", run_id=RUN), env,
                       tmp_path, check=True)
    assert aborted["changed"] is True and [item["upload_id"] for item in aborted["aborted"]] == [upload], aborted
    fenced = run_task("mlops.vast.checkpoint_store",
                      module_args(s3_bucket, "fence", run_id=RUN, attempt=2, resumed_from={"attempt": 1, "step": 300}),
                      env, tmp_path, check=True)
    assert fenced["changed"] is True and fenced["key"] == f"{PREFIX}/{RUN}/fences/attempt-2.json", fenced
    assert keys(s3_bucket) == before
    assert [item["UploadId"] for item in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [upload]

    retained = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "retain", run_id=RUN, keep=2), env,
                        tmp_path)
    assert retained["changed"] is True and not any("/checkpoint-100/" in key for key in keys(s3_bucket))
    again = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "retain", run_id=RUN, keep=2), env, tmp_path)
    assert again["changed"] is False and again["deleted"] == []
    refused = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "retain", run_id=RUN, keep=1), env,
                       tmp_path)
    assert refused["failed"] and "keep must be at least 2" in refused["msg"]


@pytest.mark.slow
def test_the_module_hides_the_grant_and_downloads_the_newest_whole_checkpoint(s3_bucket: dict[str, Any],
                                                                              tmp_path: Path) -> None:
    env = ansible_env(None, tmp_path)
    kept = tmp_path / "grant.json"
    dest = tmp_path / "checkpoints"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Grant", "mlops.vast.checkpoint_store": module_args(s3_bucket, "grant", run_id=RUN, attempt=1),
         "register": "granted", "no_log": True},
        {"name": "Keep", "ansible.builtin.copy": {"content": "{{ granted.grant | to_json }}", "dest": str(kept)},
         "no_log": True},
        {"name": "Grant without no_log", "register": "loud",
         "mlops.vast.checkpoint_store": module_args(s3_bucket, "grant", run_id=RUN, attempt=9)},
    ]}]
    book = tmp_path / "grant.yml"
    book.write_text(yaml.safe_dump(play))
    done = run_playbook(str(book), env, "-i", "localhost,", "-c", "local", "-v",
                        "-e", f"ansible_python_interpreter={sys.executable}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    grant = json.loads(kept.read_text())
    assert grant["key_prefix"] == f"{PREFIX}/{RUN}/attempt-1/" and grant["url"].startswith(host_endpoint(s3_bucket))
    assert grant["fields"]["x-amz-signature"] not in output and grant["fields"]["policy"] not in output
    assert "censored" in output
    assert "set no_log: true on the task" in " ".join(output.split()), "the task without no_log is warned"
    assert output.count("set no_log: true") == 1, "the task with no_log is not"
    assert s3_bucket["secret_key"] not in output

    source = make_checkpoint(tmp_path / "host", 1, 100)
    host_upload(grant, source)
    damaged = publish(make_store(s3_bucket), tmp_path / "host", 1, 200)
    s3_bucket["client"].put_object(Bucket=s3_bucket["bucket"],
                                   Key=f"{PREFIX}/{RUN}/attempt-1/checkpoint-200/optimizer/state.pt",
                                   Body=bytes(b ^ 1 for b in (damaged / "optimizer" / "state.pt").read_bytes()))
    would = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "download", run_id=RUN, dest=str(dest)),
                     env, tmp_path, check=True)
    assert would["changed"] is True and would["checkpoint"]["step"] == 200 and not dest.exists(), would
    fetched = run_task("mlops.vast.checkpoint_store", module_args(s3_bucket, "download", run_id=RUN, dest=str(dest)),
                       env, tmp_path)
    assert not fetched.get("failed") and fetched["changed"] is True, fetched
    assert fetched["path"] == str(dest / "checkpoint-100") and [s["step"] for s in fetched["skipped"]] == [200]
    assert any("checkpoint-200" in warning for warning in fetched.get("warnings", [])), fetched
    assert same_files(source, dest / "checkpoint-100")


@pytest.mark.slow
def test_the_module_without_boto3_says_to_install_it(s3_bucket: dict[str, Any], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    python = bare / "bin" / "python"
    assert subprocess.run([str(python), "-c", "import boto3"], capture_output=True).returncode != 0
    result_file = tmp_path / "result.json"
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Check", "mlops.vast.checkpoint_store": module_args(s3_bucket, "check"), "register": "out",
         "ignore_errors": True},
        {"name": "Keep", "ansible.builtin.copy": {"content": "{{ out | to_json }}", "dest": str(result_file)},
         "vars": {"ansible_python_interpreter": sys.executable}},
    ]}]
    book = tmp_path / "bare.yml"
    book.write_text(yaml.safe_dump(play))
    done = run_playbook(str(book), ansible_env(None, tmp_path), "-i", "localhost,", "-c", "local",
                        "-e", f"ansible_python_interpreter={python}")
    assert result_file.exists(), done.stdout[-3000:] + done.stderr[-2000:]
    result = json.loads(result_file.read_text())
    assert result["failed"] and "boto3" in result["msg"] and "pip install boto3" in result["msg"], result
    assert "Traceback" not in json.dumps(result)
