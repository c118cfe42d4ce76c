# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sealed checkpoints: the manifest a training host writes last into a finished checkpoint directory,
the checks that prove a copy of it whole, the object layout in the store, and which checkpoint to
restore from when attempts were fenced.

A checkpoint directory is *sealed* when ``.mlops-seal.json`` exists in it. The seal is written last (to a
temporary name, then renamed), so a directory without it is still being written, and one with it lists every
file the checkpoint has, with its size and sha256. Hosts upload a sealed directory file by file and the
manifest last, so in the store too a checkpoint without its manifest object is unfinished.

Manifest (JSON object, format 1)::

    {"format": 1, "run_id": "...", "attempt": 2, "step": 400, "name": "checkpoint-400",
     "files": [{"path": "model.safetensors", "size": 123, "sha256": "<64 hex>"}, ...],
     "sealed_at": 1767225600.0}

``files`` never lists the manifest itself; paths are relative, POSIX, without ``.``/``..`` parts.

Store layout (``prefix`` may be empty, then keys start at the run id)::

    <prefix>/<run_id>/fences/attempt-<A>.json   (outside every attempt prefix: no grant reaches it)
    <prefix>/<run_id>/attempt-<A>/checkpoint-<step>/<relative path>
    <prefix>/<run_id>/attempt-<A>/checkpoint-<step>/.mlops-seal.json

Standard library only, and nothing newer than Python 3.8 at run time: training hosts use it as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

FORMAT = 1
MANIFEST_NAME = ".mlops-seal.json"
CHUNK = 1 << 20

# Run ids become one key component: nothing that could add or climb a level, or confuse a listing.
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_KEYS = ("format", "run_id", "attempt", "step", "name", "files", "sealed_at")


# ---------------------------------------------------------------------------------------------- names and keys

def checkpoint_name(step: int) -> str:
    return f"checkpoint-{_whole(step, 'step')}"


def check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"run_id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                         f"got {run_id!r}")
    return run_id


def run_prefix(prefix: str, run_id: str) -> str:
    """``<prefix>/<run_id>/`` (``<run_id>/`` when ``prefix`` is empty): every key of the run starts so."""
    base = prefix.strip("/")
    return f"{base}/{check_run_id(run_id)}/" if base else f"{check_run_id(run_id)}/"


def attempt_prefix(prefix: str, run_id: str, attempt: int) -> str:
    """Where attempt ``attempt`` may write; ends with ``/`` so that attempt-1 never matches attempt-10."""
    return f"{run_prefix(prefix, run_id)}attempt-{_whole(attempt, 'attempt')}/"


def checkpoint_prefix(prefix: str, run_id: str, attempt: int, step: int) -> str:
    return f"{attempt_prefix(prefix, run_id, attempt)}{checkpoint_name(step)}/"


def fence_key(prefix: str, run_id: str, attempt: int) -> str:
    """Outside every attempt's prefix, so no host's upload grant can write or replace a fence."""
    return f"{run_prefix(prefix, run_id)}fences/attempt-{_whole(attempt, 'attempt')}.json"


# ---------------------------------------------------------------------------------------------- parsing

def parse_manifest(data: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The manifest in ``data`` (its JSON text or the decoded object), checked; ValueError says what is wrong.

    Returns a new dict with exactly the format's keys. Unknown keys are ignored, so a newer writer that
    only adds keys stays readable.
    """
    raw = _decode(data, "manifest")
    if raw.get("format") != FORMAT:
        raise ValueError(f"manifest format is {raw.get('format')!r}; this reader knows format {FORMAT} only")
    missing = [key for key in _MANIFEST_KEYS if key not in raw]
    if missing:
        raise ValueError(f"manifest lacks {', '.join(missing)}")
    run_id = check_run_id(raw["run_id"])
    attempt = _whole(raw["attempt"], "manifest attempt")
    step = _whole(raw["step"], "manifest step")
    if raw["name"] != checkpoint_name(step):
        raise ValueError(f"manifest name is {raw['name']!r}, but its step {step} makes it {checkpoint_name(step)!r}")
    sealed_at = raw["sealed_at"]
    if isinstance(sealed_at, bool) or not isinstance(sealed_at, (int, float)) or not math.isfinite(sealed_at):
        raise ValueError(f"manifest sealed_at must be a number (seconds since the epoch), got {sealed_at!r}")
    files = raw["files"]
    if not isinstance(files, list) or not files:
        raise ValueError("manifest files must be a non-empty list: a sealed checkpoint has at least one file")
    parsed = [_parse_file(entry, index) for index, entry in enumerate(files)]
    _check_paths([entry["path"] for entry in parsed])
    return {"format": FORMAT, "run_id": run_id, "attempt": attempt, "step": step, "name": checkpoint_name(step),
            "files": parsed, "sealed_at": float(sealed_at)}


def parse_fence(data: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """A fence object: ``{"attempt": A, "resumed_from": {"attempt": a, "step": s} | null, "at": float}``."""
    raw = _decode(data, "fence")
    attempt = _whole(raw.get("attempt"), "fence attempt")
    at = raw.get("at")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise ValueError(f"fence at must be a number (seconds since the epoch), got {at!r}")
    return {"attempt": attempt, "resumed_from": parse_resumed_from(raw.get("resumed_from"), attempt),
            "at": float(at)}


def parse_resumed_from(value: Any, attempt: int) -> dict[str, int] | None:
    """``{"attempt": a, "step": s}`` with a < ``attempt``, or None for a fresh start."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"resumed_from must be null or {{attempt, step}}, got {value!r}")
    source = _whole(value.get("attempt"), "resumed_from attempt")
    step = _whole(value.get("step"), "resumed_from step")
    if source >= attempt:
        # An attempt can only continue what an earlier one left; anything else is a loop in the lineage.
        raise ValueError(f"attempt {attempt} cannot resume from attempt {source}: only from an earlier one")
    return {"attempt": source, "step": step}


def _decode(data: str | bytes | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{what} is not UTF-8 text: {exc}") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def _whole(value: Any, what: str) -> int:
    # bool is an int to Python, never to a manifest.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def _parse_file(entry: Any, index: int) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"manifest files[{index}] must be an object with path, size and sha256, got {entry!r}")
    path = entry.get("path")
    _check_path(path, index)
    size = entry.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"manifest files[{index}] ({path}): size must be a whole number >= 0, got {size!r}")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ValueError(f"manifest files[{index}] ({path}): sha256 must be 64 lowercase hex digits, got {digest!r}")
    return {"path": path, "size": size, "sha256": digest}


def _check_path(path: Any, index: int) -> None:
    # The path becomes both an object key and a local path on restore: it must stay inside the checkpoint.
    if not isinstance(path, str) or not path:
        raise ValueError(f"manifest files[{index}]: path must be a non-empty string, got {path!r}")
    parts = path.split("/")
    if path.startswith("/") or "\\" in path or "\x00" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"manifest files[{index}]: path {path!r} must be relative and POSIX, without empty, "
                         "'.' or '..' parts")
    if path == MANIFEST_NAME:
        raise ValueError(f"manifest files[{index}]: the manifest must not list itself")


def _check_paths(paths: list[str]) -> None:
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"manifest lists {path!r} twice")
        seen.add(path)
    folders = {"/".join(path.split("/")[:depth]) for path in paths for depth in range(1, path.count("/") + 1)}
    clash = sorted(seen & folders)
    if clash:
        raise ValueError(f"manifest lists {clash[0]!r} both as a file and as a folder")


# ---------------------------------------------------------------------------------------------- files

def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(path: str | os.PathLike[str], run_id: str, attempt: int, step: int,
                   sealed_at: float | None = None) -> dict[str, Any]:
    """The manifest of the directory ``path`` as it is now (every regular file below it but the manifest)."""
    root = os.fspath(path)
    files = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(folder, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if relative == MANIFEST_NAME or not os.path.isfile(full):
                continue
            files.append({"path": relative, "size": os.path.getsize(full), "sha256": sha256_file(full)})
    return parse_manifest({"format": FORMAT, "run_id": run_id, "attempt": attempt, "step": step,
                           "name": checkpoint_name(step), "files": files,
                           "sealed_at": time.time() if sealed_at is None else sealed_at})


def seal(path: str | os.PathLike[str], run_id: str, attempt: int, step: int) -> dict[str, Any]:
    """Hash the finished checkpoint directory ``path`` and write its manifest into it, last and atomically."""
    manifest = build_manifest(path, run_id, attempt, step)
    final = os.path.join(os.fspath(path), MANIFEST_NAME)
    temporary = f"{final}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return manifest


def verify_dir(path: str | os.PathLike[str], manifest: str | bytes | Mapping[str, Any]) -> list[str]:
    """What is wrong with the directory ``path`` against ``manifest``: one line per problem, [] when whole.

    A file the manifest lists must exist, be a regular file, and have its size and sha256. Files the
    manifest does not list are ignored (a restore may add its own), and so is the manifest file itself.
    """
    checked = parse_manifest(manifest)
    root = os.fspath(path)
    if not os.path.isdir(root):
        return [f"{root}: no such directory"]
    problems = []
    for entry in checked["files"]:
        full = os.path.join(root, *entry["path"].split("/"))
        if not os.path.lexists(full):
            problems.append(f"{entry['path']}: missing")
            continue
        if not os.path.isfile(full):
            problems.append(f"{entry['path']}: not a regular file")
            continue
        size = os.path.getsize(full)
        if size != entry["size"]:
            # Hashing a file of the wrong size proves nothing more.
            problems.append(f"{entry['path']}: size {size}, the manifest says {entry['size']}")
            continue
        digest = sha256_file(full)
        if digest != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 {digest}, the manifest says {entry['sha256']}")
    return problems


# ---------------------------------------------------------------------------------------------- lineage

def excluded_by(attempt: int, step: int, fences: Iterable[Mapping[str, Any]]) -> str | None:
    """Why checkpoint ``step`` of ``attempt`` is not part of the run's lineage, or None when it is.

    See ``restore_order`` for the rule.
    """
    for fence in sorted(fences, key=lambda f: f["attempt"]):
        later = fence["attempt"]
        if later <= attempt:
            continue
        source = fence.get("resumed_from")
        if source is None:
            return f"attempt {later} started fresh, so attempt {attempt} is not part of the lineage"
        if source["attempt"] < attempt:
            return (f"attempt {later} resumed from attempt {source['attempt']} step {source['step']}, "
                    f"passing over attempt {attempt}")
        if source["attempt"] == attempt and step > source["step"]:
            return (f"attempt {later} resumed from step {source['step']} of attempt {attempt}; "
                    f"step {step} came later and is not part of the lineage")
    return None


def restore_order(published: Iterable[Mapping[str, Any]],
                  fences: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The checkpoints to restore from, best first: attempt descending, then step descending.

    ``published`` holds one mapping per sealed checkpoint with at least ``attempt`` and ``step`` (the same
    objects come back, in order, none copied); ``fences`` the fence objects (``attempt``, ``resumed_from``).
    The caller filters what is incomplete; this decides only lineage and order.

    The rule. When attempt B starts, its fence records what B continued from: ``(a, s)`` or nothing. From
    then on B's lineage is ``a`` up to step ``s``, and whatever attempt ``a``'s host writes later (it was
    replaced but came back: a zombie) or had written past ``s`` (B passed it over: incomplete or corrupt
    then) is not. So checkpoint ``(x, step)`` is excluded when some fence of an attempt B > x says:

    * resumed from ``(x, s)`` and ``step > s``: the part of x after the point B continued from;
    * resumed from an attempt older than x, or from nothing: B passed over x entirely, so all of x is
      excluded (its cut lies before its first step);
    * resumed from an attempt between x and B: says nothing about x; that attempt's own fence does.

    Every fence counts, not only the newest: a checkpoint is offered only if no later attempt ruled it out,
    so two fences that disagree about x keep the lower cut. A missing fence constrains nothing (the order
    alone decides). Steps are compared, never clocks: a host's ``sealed_at`` comes from a clock nobody
    checked, and a checkpoint of x that existed when B started but was not chosen was rejected then anyway.

    Example: attempt 1 publishes 100 and 200 and is lost; attempt 2 resumes from (1, 200) and publishes
    250; attempt 1's host comes back and publishes 300. The order is 2@250, 1@200, 1@100; 1@300 is out.
    An empty store (or no checkpoint left in the lineage) gives [].
    """
    cut = list(fences)
    kept = [entry for entry in published if excluded_by(entry["attempt"], entry["step"], cut) is None]
    return sorted(kept, key=lambda entry: (-entry["attempt"], -entry["step"]))
