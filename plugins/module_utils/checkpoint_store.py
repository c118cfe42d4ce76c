# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's side of the checkpoint store: an S3-compatible bucket the rented hosts upload sealed
checkpoints to, without holding any storage credential.

The controller holds the credentials (boto3's usual chain: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ...). A host gets a presigned POST policy that lets it write below its own attempt's prefix
only (``upload_grant``), and presigned GET URLs to restore from (``restore_plan``). Everything else (listing,
fences, retention, aborting uploads, bringing checkpoints home) is done here with the credentials. The layout,
the manifest and the lineage rule are ``checkpoint_manifest``'s.

Two endpoints: ``endpoint_url`` is how the controller reaches the storage, ``host_endpoint_url`` how the
rented host does (in the simulator they differ). Every URL handed to a host is signed for the host's; signing
sends no request. No message or result here ever holds a credential.

Private to the collection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .checkpoint_manifest import (
    CHUNK,
    MANIFEST_NAME,
    checkpoint_name,
    excluded_by,
    fence_key,
    parse_fence,
    parse_manifest,
    parse_resumed_from,
    restore_order,
    run_prefix,
    verify_dir,
)

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError
except ImportError as _exc:  # the module says how to install it; nothing here may fail to import without it
    BOTO3_IMPORT_ERROR: str | None = str(_exc)
else:
    BOTO3_IMPORT_ERROR = None

GRANT_MAX_S = 7 * 24 * 3600      # SigV4's limit for anything presigned
MAX_OBJECT_BYTES = 5 * 1024 ** 3  # a single POST (or PUT) object can be no larger on S3
PLAN_URL_S = 3600
# A manifest lists file names and hashes; anything this large is not one, and is never read into memory.
MAX_MANIFEST_BYTES = 64 * 1024 ** 2
STALE_S = 3600.0
_DELETE_BATCH = 1000              # DeleteObjects' limit per request

_NUMBER = r"(0|[1-9][0-9]*)"      # no leading zeros: a parsed number maps back to exactly one key
_CHECKPOINT_KEY = re.compile(rf"^attempt-{_NUMBER}/checkpoint-{_NUMBER}/(.+)$")
_FENCE_KEY = re.compile(rf"^fences/attempt-{_NUMBER}\.json$")
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "InvalidClientTokenId", "AllAccessDisabled", "403"}
_MISSING_BUCKET_CODES = {"NoSuchBucket", "404", "NotFound"}
_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301"}


class CheckpointStoreError(Exception):
    """The store could not do what was asked; the message names the bucket and endpoint and says what to do."""


class CheckpointCorrupt(CheckpointStoreError):
    """A downloaded checkpoint does not match its manifest; ``problems`` lists how."""

    def __init__(self, msg: str, problems: list[str]) -> None:
        super().__init__(msg)
        self.problems = problems


def addressing_style(endpoint_url: str | None, addressing: str = "auto") -> str:
    """botocore's ``addressing_style`` for an endpoint: path style for anything but AWS itself.

    Virtual-host style puts the bucket into the host name (``bucket.127.0.0.1`` cannot exist,
    ``bucket.localhost`` and ``bucket.s3.vastsim`` do not resolve), and S3 look-alikes all serve path style.
    """
    if addressing not in ("auto", "path", "virtual"):
        raise CheckpointStoreError(f"addressing must be auto, path or virtual, got {addressing!r}")
    if addressing != "auto":
        return addressing
    if not endpoint_url:
        return "auto"
    host = (urlsplit(endpoint_url).hostname or "").lower()
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return "path"
    if host == "amazonaws.com" or host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return "auto"
    return "path"


def _client_config(endpoint_url: str | None, addressing: str, connect_timeout: float, read_timeout: float,
                   max_attempts: int) -> Config:
    options: dict[str, Any] = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": addressing_style(endpoint_url, addressing)},
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
        # botocore >= 1.36 adds CRC checksums (and aws-chunked bodies) that S3 look-alikes store or reject.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    try:
        return Config(**options)
    except TypeError:
        # Older botocore knows neither option, and sends no such checksums either.
        options.pop("request_checksum_calculation")
        options.pop("response_checksum_validation")
        return Config(**options)


def _epoch(value: Any) -> float:
    return float(value.timestamp()) if hasattr(value, "timestamp") else float(value)


class S3Store:
    """Checkpoints of runs in one bucket (below ``prefix``), as ``checkpoint_manifest`` lays them out."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 host_endpoint_url: str | None = None, region: str | None = None, addressing: str = "auto", *,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0, max_attempts: int = 3) -> None:
        if BOTO3_IMPORT_ERROR is not None:
            raise CheckpointStoreError(f"the checkpoint store needs boto3 on the controller ({BOTO3_IMPORT_ERROR}); "
                                       "install it: pip install boto3")
        if not bucket or "/" in bucket:
            raise CheckpointStoreError(f"bucket must be a bucket name (no '/'), got {bucket!r}")
        self.bucket = bucket
        self.prefix = "/".join(part for part in (prefix or "").split("/") if part)
        if any(part in (".", "..") for part in self.prefix.split("/")):
            raise CheckpointStoreError(f"prefix must not have '.' or '..' parts, got {prefix!r}")
        self.endpoint_url = endpoint_url or None
        self.host_endpoint_url = host_endpoint_url or self.endpoint_url
        self.region = region or None
        # A missing AWS_PROFILE or a malformed endpoint fails here, before any request.
        with self._errors("setting up the S3 client"):
            try:
                session = boto3.session.Session()
                self._session = session
                self._client = session.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                              config=_client_config(self.endpoint_url, addressing, connect_timeout,
                                                                    read_timeout, max_attempts))
                if self.host_endpoint_url == self.endpoint_url:
                    self._signer = self._client
                else:
                    # Only signs: a presigned URL is computed locally, so the controller never reaches this one.
                    self._signer = session.client("s3", endpoint_url=self.host_endpoint_url, region_name=self.region,
                                                  config=_client_config(self.host_endpoint_url, addressing,
                                                                        connect_timeout, read_timeout, max_attempts))
            except ValueError as exc:
                raise CheckpointStoreError(f"setting up the S3 client for {self.where}: {exc}; endpoint_url and "
                                           "host_endpoint_url must be URLs like http://127.0.0.1:9000") from None

    # ------------------------------------------------------------------------------------------ errors

    @property
    def where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint_url or 'the default AWS S3 endpoint'}"

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Every boto3/botocore failure as one CheckpointStoreError that says what to do."""
        try:
            yield
        except CheckpointStoreError:
            raise
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise CheckpointStoreError(
                f"{doing}: no usable storage credentials for {self.where} ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the controller's environment") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            words = error.get("Message") or code or "no message"
            if code in _MISSING_BUCKET_CODES and (code == "NoSuchBucket" or "bucket" in doing):
                raise CheckpointStoreError(
                    f"{doing}: {self.where} does not exist; create it (aws s3 mb s3://{self.bucket}"
                    f"{' --endpoint-url ' + self.endpoint_url if self.endpoint_url else ''}) or correct bucket / "
                    "endpoint_url") from None
            if code in _AUTH_CODES or status == 403:
                raise CheckpointStoreError(
                    f"{doing}: {self.where} refused the credentials ({code}: {words}); check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY or AWS_PROFILE on the controller, and that they may list, read, write "
                    "and delete in this bucket") from None
            if code in _REGION_CODES or status == 301:
                raise CheckpointStoreError(
                    f"{doing}: {self.where} answered {code} ({words}): the bucket is in another region; "
                    "set region to the bucket's") from None
            raise CheckpointStoreError(f"{doing}: {self.where} answered HTTP {status} {code}: {words}") from None
        except BotoConnectionError as exc:
            raise CheckpointStoreError(
                f"{doing}: cannot reach {self.endpoint_url or 'AWS S3'} for bucket {self.bucket!r} ({exc}); check "
                "endpoint_url (scheme, host, port) and that the storage server is running and reachable from "
                "the controller") from None
        except BotoCoreError as exc:
            raise CheckpointStoreError(f"{doing}: {self.where}: {exc}") from None

    # ------------------------------------------------------------------------------------------ reachability

    def check(self) -> dict[str, Any]:
        """The bucket exists and these credentials reach it; CheckpointStoreError says why not."""
        with self._errors(f"checking bucket {self.bucket!r}"):
            self._client.head_bucket(Bucket=self.bucket)
        return {"bucket": self.bucket, "prefix": self.prefix, "endpoint_url": self.endpoint_url,
                "host_endpoint_url": self.host_endpoint_url}

    # ------------------------------------------------------------------------------------------ grants

    def upload_grant(self, run_id: str, attempt: int, expires_s: int = 86400) -> dict[str, Any]:
        """A presigned POST for attempt ``attempt`` of ``run_id``: ``{"url", "fields", "key_prefix", ...}``.

        The host posts multipart/form-data to ``url`` with every one of ``fields``, plus ``key`` (the
        ``key_prefix`` and the file's path in the checkpoint) and the file last. The policy allows keys that
        start with ``key_prefix`` only and objects up to 5 GiB, until ``expires_at`` (at most 7 days away).
        ``fields`` holds the policy's signature: whoever has it may write below the prefix until then.
        """
        self._check_attempt(attempt)
        if isinstance(expires_s, bool) or not isinstance(expires_s, int) or expires_s < 1:
            raise CheckpointStoreError(f"expires_s must be a whole number of seconds >= 1, got {expires_s!r}")
        expires = min(expires_s, GRANT_MAX_S)
        key_prefix = self._attempt_prefix(run_id, attempt)
        with self._errors(f"signing an upload grant for {key_prefix}"):
            self._require_credentials()
            # "${filename}" makes botocore write a starts-with condition on the key instead of an exact one.
            post = self._signer.generate_presigned_post(
                Bucket=self.bucket, Key=key_prefix + "${filename}",
                Conditions=[["content-length-range", 0, MAX_OBJECT_BYTES]], ExpiresIn=expires)
        fields = {name: value for name, value in post["fields"].items() if name != "key"}
        return {"url": post["url"], "fields": fields, "key_prefix": key_prefix, "expires_s": expires,
                "expires_at": time.time() + expires, "max_object_bytes": MAX_OBJECT_BYTES}

    # ------------------------------------------------------------------------------------------ fences

    def write_fence(self, run_id: str, attempt: int, resumed_from: Mapping[str, Any] | None, *,
                    dry_run: bool = False) -> dict[str, Any]:
        """Record that ``attempt`` started from ``resumed_from`` (``{"attempt", "step"}``, or None for fresh).

        Written once: the same fence again changes nothing, a different one for the same attempt is refused
        (start a new attempt instead), and so is a fence for an attempt older than one already fenced (a
        stale controller). Returns ``{"changed", "key", "fence"}``.
        """
        self._check_attempt(attempt)
        try:
            source = parse_resumed_from(dict(resumed_from) if resumed_from is not None else None, attempt)
        except ValueError as exc:
            raise CheckpointStoreError(f"cannot fence attempt {attempt} of run {run_id}: {exc}") from None
        key = fence_key(self.prefix, run_id, attempt)
        existing = {fence["attempt"]: fence for fence in self.fences(run_id)}
        newer = sorted(number for number in existing if number > attempt)
        if attempt in existing:
            return self._same_fence(existing[attempt], source, key)
        if newer:
            raise CheckpointStoreError(
                f"cannot fence attempt {attempt} of run {run_id} in {self.where}: attempt {newer[-1]} has already "
                "started, so this attempt is stale; start a new attempt instead")
        fence = {"attempt": attempt, "resumed_from": source, "at": time.time()}
        if dry_run:
            return {"changed": True, "key": key, "fence": fence}
        body = json.dumps(fence, sort_keys=True).encode()
        with self._errors(f"writing the fence {key}"):
            try:
                # Write-once where the server supports conditional writes: two controllers cannot both win.
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                                        **({"IfNoneMatch": "*"} if self._conditional_puts() else {}))
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                    return self._same_fence(self._read_fence(key), source, key)
                if code != "NotImplemented" and status != 501:
                    raise
                # A look-alike without conditional writes: the check above is all the protection there is.
                self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")
        return {"changed": True, "key": key, "fence": fence}

    def _same_fence(self, fence: dict[str, Any], source: dict[str, int] | None, key: str) -> dict[str, Any]:
        if fence["resumed_from"] != source:
            raise CheckpointStoreError(
                f"{key} in {self.where} already says attempt {fence['attempt']} resumed from "
                f"{_lineage_words(fence['resumed_from'])}, not {_lineage_words(source)}; an attempt's lineage is "
                "written once: start a new attempt instead")
        return {"changed": False, "key": key, "fence": fence}

    def fences(self, run_id: str) -> list[dict[str, Any]]:
        """Every fence of the run, oldest attempt first. An unreadable fence is an error: lineage unknown."""
        return self._fences(run_id, self._inventory(run_id))

    def _fences(self, run_id: str, inventory: list[dict[str, Any]]) -> list[dict[str, Any]]:
        base = run_prefix(self.prefix, run_id)
        found = []
        for item in inventory:
            match = _FENCE_KEY.match(item["key"][len(base):])
            if match:
                try:
                    fence = self._read_fence(item["key"])
                except _Gone:
                    continue
                if fence["attempt"] != int(match.group(1)):
                    raise CheckpointStoreError(f"{item['key']} in {self.where} is the fence of attempt "
                                               f"{fence['attempt']}; move or delete it")
                found.append(fence)
        return sorted(found, key=lambda fence: fence["attempt"])

    def _read_fence(self, key: str) -> dict[str, Any]:
        data = self._get_bytes(key)
        try:
            return parse_fence(data)
        except ValueError as exc:
            raise CheckpointStoreError(f"{key} in {self.where} is not a fence ({exc}); the run's lineage cannot be "
                                       "decided until it is fixed or deleted") from None

    # ------------------------------------------------------------------------------------------ listing

    def published(self, run_id: str) -> list[dict[str, Any]]:
        """Every checkpoint of the run whose manifest object exists, newest attempt and step first.

        Each has ``attempt``, ``step``, ``name``, ``key_prefix``, ``manifest_key``, ``manifest`` (parsed; None
        when it is unreadable, and then ``error`` says why), ``objects`` (key, path, size of each object
        under the checkpoint), ``missing`` (manifest files absent or of another size), ``complete``,
        ``bytes``, ``published_at`` (the manifest object's time) and ``excluded`` (why the fences leave it
        out of the lineage, or None).
        """
        inventory = self._inventory(run_id)
        return self._published(run_id, inventory, self._fences(run_id, inventory))

    def _published(self, run_id: str, inventory: list[dict[str, Any]],
                   fences: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = []
        for group in self._groups(run_id, inventory):
            entry = self._describe(run_id, group)
            if entry is not None:
                entry["excluded"] = excluded_by(entry["attempt"], entry["step"], fences)
                found.append(entry)
        return sorted(found, key=lambda entry: (-entry["attempt"], -entry["step"]))

    def _describe(self, run_id: str, group: dict[str, Any]) -> dict[str, Any] | None:
        objects = group["objects"]
        if MANIFEST_NAME not in objects:
            return None
        manifest_key = objects[MANIFEST_NAME]["key"]
        manifest: dict[str, Any] | None = None
        error = None
        try:
            data = self._get_bytes(manifest_key) if objects[MANIFEST_NAME]["size"] <= MAX_MANIFEST_BYTES else b""
        except _Gone:
            return None  # deleted between listing and reading (retention): not published any more
        try:
            if not data:
                raise ValueError(f"{objects[MANIFEST_NAME]['size']} bytes is no manifest")
            manifest = parse_manifest(data)
            where = (manifest["run_id"], manifest["attempt"], manifest["step"])
            if where != (run_id, group["attempt"], group["step"]):
                raise ValueError(f"it is the manifest of run {where[0]} attempt {where[1]} step {where[2]}, "
                                 f"but lies under attempt-{group['attempt']}/{checkpoint_name(group['step'])}")
        except ValueError as exc:
            manifest, error = None, f"unreadable manifest {manifest_key}: {exc}"
        missing = []
        for entry in manifest["files"] if manifest else []:
            stored = objects.get(entry["path"])
            if stored is None:
                missing.append(f"{entry['path']}: missing")
            elif stored["size"] != entry["size"]:
                missing.append(f"{entry['path']}: {stored['size']} bytes stored, the manifest says {entry['size']}")
        listed = [{"key": item["key"], "path": path, "size": item["size"]} for path, item in sorted(objects.items())]
        return {"run_id": run_id, "attempt": group["attempt"], "step": group["step"], "name": group["name"],
                "key_prefix": group["key_prefix"], "manifest_key": manifest_key, "manifest": manifest,
                "error": error, "objects": listed, "missing": missing,
                "complete": manifest is not None and not missing,
                "bytes": sum(item["size"] for item in objects.values()),
                "published_at": objects[MANIFEST_NAME]["modified"]}

    def _inventory(self, run_id: str) -> list[dict[str, Any]]:
        base = self._run_prefix(run_id)
        items = []
        with self._errors(f"listing {base} in bucket {self.bucket!r}"):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                items.extend({"key": item["Key"], "size": int(item["Size"]),
                              "modified": _epoch(item["LastModified"])} for item in page.get("Contents", []))
        return items

    def _groups(self, run_id: str, inventory: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The objects below each ``attempt-A/checkpoint-S/``, by path in the checkpoint."""
        base = run_prefix(self.prefix, run_id)
        groups: dict[tuple[int, int], dict[str, Any]] = {}
        for item in inventory:
            match = _CHECKPOINT_KEY.match(item["key"][len(base):])
            if not match:
                continue
            attempt, step = int(match.group(1)), int(match.group(2))
            group = groups.setdefault((attempt, step), {
                "attempt": attempt, "step": step, "name": checkpoint_name(step),
                "key_prefix": f"{base}attempt-{attempt}/{checkpoint_name(step)}/", "objects": {}})
            group["objects"][match.group(3)] = item
        return [groups[key] for key in sorted(groups, reverse=True)]

    # ------------------------------------------------------------------------------------------ restore

    def restore_plan(self, run_id: str, limit: int = 3) -> list[dict[str, Any]]:
        """Up to ``limit`` complete checkpoints of the lineage, best first, with presigned GET URLs (an hour,
        host endpoint) for every file (``urls``: path in the checkpoint -> URL) and the manifest (``manifest_url``).

        The consumer downloads the first, checks it against its manifest, and moves to the next on any
        problem: completeness here is by size, the sha256 is only known after the download.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise CheckpointStoreError(f"limit must be a whole number >= 1, got {limit!r}")
        inventory = self._inventory(run_id)
        fences = self._fences(run_id, inventory)
        complete = [entry for entry in self._published(run_id, inventory, fences) if entry["complete"]]
        plan = []
        for entry in restore_order(complete, fences)[:limit]:
            with self._errors(f"signing the restore URLs of {entry['key_prefix']}"):
                self._require_credentials()
                urls = {item["path"]: self._get_url(entry["key_prefix"] + item["path"])
                        for item in entry["manifest"]["files"]}
                manifest_url = self._get_url(entry["manifest_key"])
            plan.append({"run_id": run_id, "attempt": entry["attempt"], "step": entry["step"],
                         "name": entry["name"], "key_prefix": entry["key_prefix"],
                         "manifest_key": entry["manifest_key"], "manifest": entry["manifest"],
                         "manifest_url": manifest_url, "urls": urls,
                         "bytes": sum(item["size"] for item in entry["manifest"]["files"]),
                         "expires_at": time.time() + PLAN_URL_S})
        return plan

    def _conditional_puts(self) -> bool:
        # botocore learnt PutObject's If-None-Match in 2024; an older one refuses the parameter outright.
        return "IfNoneMatch" in self._client.meta.service_model.operation_model("PutObject").input_shape.members

    def _require_credentials(self) -> None:
        # Signing is local: without credentials botocore fails deep inside (POST) or returns an unsigned URL (GET).
        if self._session.get_credentials() is None:
            raise NoCredentialsError()

    def _get_url(self, key: str) -> str:
        return self._signer.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                   ExpiresIn=PLAN_URL_S)

    def download(self, candidate: Mapping[str, Any], dest_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Bring checkpoint ``candidate`` (a ``restore_plan`` or ``published`` entry) to ``dest_dir/<name>``.

        Two-phase: everything goes into a staging directory next to it, the manifest last; only when the
        staging copy matches the manifest (sizes and sha256) is it renamed into place. A directory already
        there that matches is kept (``changed`` False); one that does not is an error, never overwritten.
        CheckpointCorrupt when the stored copy does not match its manifest.
        """
        manifest = parse_manifest(candidate["manifest"])
        parent = Path(dest_dir)
        final = parent / manifest["name"]
        if final.exists():
            problems = verify_dir(final, manifest)
            if not problems:
                return {"path": str(final), "changed": False, "bytes": 0}
            raise CheckpointStoreError(f"{final} exists and does not match {candidate['key_prefix']} "
                                       f"({problems[0]}); move it away to download again")
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{manifest['name']}.partial-", dir=parent))
        try:
            received = 0
            for entry in manifest["files"]:
                received += self._fetch(candidate["key_prefix"] + entry["path"],
                                        staging.joinpath(*entry["path"].split("/")))
            stored = self._get_bytes(candidate["key_prefix"] + MANIFEST_NAME)
            try:
                same = parse_manifest(stored) == manifest
            except ValueError:
                same = False
            if not same:
                raise CheckpointCorrupt(f"{candidate['key_prefix']}{MANIFEST_NAME} in {self.where} no longer "
                                        "matches the plan's manifest", ["manifest changed"])
            (staging / MANIFEST_NAME).write_bytes(stored)
            problems = verify_dir(staging, manifest)
            if problems:
                raise CheckpointCorrupt(f"{candidate['key_prefix']} in {self.where} does not match its manifest: "
                                        + "; ".join(problems), problems)
            os.replace(staging, final)
        except _Gone as exc:
            raise CheckpointCorrupt(f"{exc.key} in {self.where} is gone", [f"{exc.key}: missing"]) from None
        except OSError as exc:
            raise CheckpointStoreError(f"cannot write {candidate['name']} into {parent}: {exc}") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return {"path": str(final), "changed": True, "bytes": received}

    def download_latest(self, run_id: str, dest_dir: str | os.PathLike[str], limit: int = 3) -> dict[str, Any]:
        """Download the best checkpoint of ``restore_plan`` that matches its manifest, falling back in order.

        Returns ``{"path", "changed", "checkpoint", "skipped"}``: ``checkpoint`` is None when no candidate
        is whole (or none exists: a fresh start), ``skipped`` lists the candidates passed over and why.
        """
        skipped = []
        for candidate in self.restore_plan(run_id, limit):
            try:
                done = self.download(candidate, dest_dir)
            except CheckpointCorrupt as exc:
                skipped.append({"name": candidate["name"], "attempt": candidate["attempt"],
                                "step": candidate["step"], "problems": exc.problems})
                continue
            return {**done, "checkpoint": _summary(candidate), "skipped": skipped}
        return {"path": None, "changed": False, "checkpoint": None, "skipped": skipped}

    def _fetch(self, key: str, target: Path) -> int:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(f"downloading {key}"):
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise _Gone(key) from None
                raise
            with body, open(target, "wb") as handle:
                shutil.copyfileobj(body, handle, CHUNK)
        return target.stat().st_size

    def _get_bytes(self, key: str) -> bytes:
        with self._errors(f"reading {key}"):
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise _Gone(key) from None
                raise
            with response["Body"] as body:
                return body.read()

    # ------------------------------------------------------------------------------------------ clean-up

    def retain(self, run_id: str, keep: int = 2, *, stale_s: float = STALE_S,
               dry_run: bool = False) -> dict[str, Any]:
        """Delete all but the newest ``keep`` (at least 2) complete checkpoints of the run's lineage.

        Also deleted: incomplete checkpoints (no manifest, an unreadable one, or files missing or short)
        whose newest object is older than ``stale_s``; younger ones may still be uploading and stay.
        Checkpoints the fences exclude are left alone (and reported): they are never restored, and may be
        evidence. A checkpoint's manifest is deleted before its files, so a half-deleted one is never
        published. Returns ``{"deleted", "kept", "uploading", "fenced_out"}``, each a list of summaries.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 2:
            raise CheckpointStoreError(f"keep must be at least 2, got {keep!r}: with one checkpoint kept, a corrupt "
                                       "newest one would leave nothing to fall back to")
        inventory = self._inventory(run_id)
        fences = self._fences(run_id, inventory)
        entries = {(entry["attempt"], entry["step"]): entry
                   for entry in self._published(run_id, inventory, fences)}
        complete = [entry for entry in entries.values() if entry["complete"]]
        lineage = restore_order(complete, fences)
        kept = [_summary(entry) for entry in lineage[:keep]]
        doomed = [(entry, f"older than the newest {keep} complete checkpoints") for entry in lineage[keep:]]
        fenced_out = [{**_summary(entry), "reason": entry["excluded"]} for entry in complete
                      if entry["excluded"] is not None]
        uploading = []
        now = time.time()
        for group in self._groups(run_id, inventory):
            entry = entries.get((group["attempt"], group["step"]))
            if entry is not None and entry["complete"]:
                continue
            age = now - max(item["modified"] for item in group["objects"].values())
            summary = {"name": group["name"], "attempt": group["attempt"], "step": group["step"],
                       "key_prefix": group["key_prefix"]}
            why = "no manifest" if entry is None else (entry["error"] or "files missing or short")
            if age > stale_s:
                doomed.append((group, f"incomplete ({why}), last written {age:.0f} s ago"))
            else:
                uploading.append({**summary, "reason": f"incomplete ({why}) but written {age:.0f} s ago: "
                                                       "may still be uploading"})
        deleted = []
        for item, reason in doomed:
            keys = [obj["key"] for obj in inventory if obj["key"].startswith(item["key_prefix"])]
            # The manifest first: from then on the checkpoint is unpublished, whatever happens to the rest.
            keys.sort(key=lambda key: not key.endswith("/" + MANIFEST_NAME))
            if not dry_run:
                self._delete(keys)
            deleted.append({"name": item["name"], "attempt": item["attempt"], "step": item["step"],
                            "key_prefix": item["key_prefix"], "reason": reason, "objects": len(keys)})
        return {"deleted": deleted, "kept": kept, "uploading": uploading, "fenced_out": fenced_out}

    def _delete(self, keys: list[str]) -> None:
        manifests = [key for key in keys if key.endswith("/" + MANIFEST_NAME)]
        rest = [key for key in keys if not key.endswith("/" + MANIFEST_NAME)]
        for batch in [manifests] + [rest[i:i + _DELETE_BATCH] for i in range(0, len(rest), _DELETE_BATCH)]:
            if not batch:
                continue
            with self._errors(f"deleting {len(batch)} objects below {batch[0].rsplit('/', 1)[0]}/"):
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise CheckpointStoreError(f"deleting from {self.where}: {len(errors)} objects refused, e.g. "
                                           f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def abort_incomplete_uploads(self, run_id: str, *, dry_run: bool = False) -> list[dict[str, Any]]:
        """Abort every unfinished multipart upload below the run's prefix (real S3 bills their parts)."""
        base = self._run_prefix(run_id)
        found = []
        with self._errors(f"listing unfinished uploads below {base}"):
            for page in self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                      Prefix=base):
                found.extend({"key": item["Key"], "upload_id": item["UploadId"],
                              "initiated": _epoch(item["Initiated"])} for item in page.get("Uploads", []))
        for upload in [] if dry_run else found:
            with self._errors(f"aborting the upload of {upload['key']}"):
                try:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload["key"],
                                                        UploadId=upload["upload_id"])
                except ClientError as exc:
                    # Finished or aborted since the listing: the goal holds.
                    if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
        return found

    # ------------------------------------------------------------------------------------------ helpers

    def _run_prefix(self, run_id: str) -> str:
        try:
            return run_prefix(self.prefix, run_id)
        except ValueError as exc:
            raise CheckpointStoreError(str(exc)) from None

    def _attempt_prefix(self, run_id: str, attempt: int) -> str:
        return f"{self._run_prefix(run_id)}attempt-{attempt}/"

    @staticmethod
    def _check_attempt(attempt: Any) -> None:
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise CheckpointStoreError(f"attempt must be a whole number >= 0, got {attempt!r}")


class _Gone(Exception):
    """An object listed a moment ago is not there any more."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": entry["name"], "attempt": entry["attempt"], "step": entry["step"],
            "key_prefix": entry["key_prefix"]}


def _lineage_words(source: Mapping[str, Any] | None) -> str:
    return "nothing (a fresh start)" if source is None else f"attempt {source['attempt']} step {source['step']}"
