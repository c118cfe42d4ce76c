# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller keeps between runs, in one state directory: the contract ledger (every
instance rented, until it is verified destroyed), the machines never to rent again, and the
collection's own SSH key (``id_ed25519``, next to the ledger) when no key is configured.

The directory is ``$XDG_STATE_HOME/mlops-vast`` (``~/.local/state/mlops-vast``); each file can be
moved on its own with ``MLOPS_VAST_LEDGER`` (the key moves with it) and ``MLOPS_VAST_EXCLUSIONS``, and
``MLOPS_VAST_SSH_KEY`` names a key of the user's own. Writes are locked, so parallel runs (sweeps) can
share the files.

Private to the collection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Mapping
from typing import Any


def state_dir(environ: Mapping[str, str] | None = None) -> str:
    """The controller's state directory (not created here)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "mlops-vast")


def default_ledger_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("MLOPS_VAST_LEDGER") or os.path.join(state_dir(environ), "contracts.jsonl")


def default_exclusions_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("MLOPS_VAST_EXCLUSIONS") or os.path.join(state_dir(environ), "excluded_machines.json")


OWN_KEY = "the collection's own key"


def own_ssh_key_path(environ: Mapping[str, str] | None = None) -> str:
    """The collection's own SSH key: ``id_ed25519`` in the directory of the contract ledger."""
    return os.path.join(os.path.dirname(os.path.expanduser(default_ledger_path(environ))), "id_ed25519")


def ssh_key_in_use(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(path, where it comes from)`` of the private key for rented hosts: ``MLOPS_VAST_SSH_KEY``, else
    the collection's own (which may not exist yet: ``mlops.vast.ssh_keypair`` creates it)."""
    environ = os.environ if environ is None else environ
    if environ.get("MLOPS_VAST_SSH_KEY"):
        return os.path.expanduser(environ["MLOPS_VAST_SSH_KEY"]), "MLOPS_VAST_SSH_KEY"
    return own_ssh_key_path(environ), OWN_KEY


class ContractLedger:
    """An append-only local record of every contract a run created and destroyed.

    Written the moment create returns, before anything else can fail, so an interrupted run
    can always be cleaned up (playbooks/teardown.yml reads it).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = os.path.expanduser(path or default_ledger_path())

    def _append(self, record: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        line = json.dumps({"ts": time.time(), **record}, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(self.path, 0o600)

    def check_writable(self) -> None:
        """Raise OSError now, before anything is rented, if the ledger cannot be appended to."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
        os.chmod(self.path, 0o600)

    def created(self, instance_id: int, *, label: str | None, offer_id: int | None, machine_id: int | None,
                api_url: str) -> None:
        self._append({"event": "created", "id": int(instance_id), "label": label, "offer_id": offer_id,
                      "machine_id": machine_id, "api_url": api_url})
        # Until the watch takes over renewing it, a lease long enough for setup and the smoke test.
        with contextlib.suppress(OSError):  # without a lease the ledger line's time stands in for it
            self.leases.renew(instance_id, api_url=api_url, interval_s=LONG_LEASE_S, label=label)

    def destroyed(self, instance_id: int, *, api_url: str) -> str | None:
        """Record a verified destroy; returns a warning when the lease could not be dropped (None otherwise)."""
        self._append({"event": "destroyed", "id": int(instance_id), "api_url": api_url})
        try:
            self.leases.drop(instance_id, api_url=api_url)
        except OSError as exc:
            # The instance is gone and the ledger says so; a stale lease file only costs the reaper a look.
            return f"instance {instance_id} is destroyed, but its lease file could not be removed: {exc}"
        return None

    def renew_leases(self, label: str, *, interval_s: float | None = None) -> list[int]:
        """Renew, with the long promise, the lease of every open contract labelled ``label`` (any API): what a
        teardown does first, so that no reaper takes the instance while it still pulls the newest checkpoint."""
        renewed = []
        for contract in self.open_contracts():
            if contract.get("label") == label:
                self.leases.renew(int(contract["id"]), api_url=str(contract.get("api_url")), label=label,
                                  interval_s=LONG_LEASE_S if interval_s is None else interval_s)
                renewed.append(int(contract["id"]))
        return renewed

    @property
    def leases(self) -> Leases:
        return Leases(self.path + ".leases")

    def controller_id(self, *, create: bool = True) -> str | None:
        """This controller's identity, the marker its instances carry on the account (MARKER_ENV); made once,
        beside the ledger, so a controller that loses its ledger also loses its identity. None when there is
        none yet and ``create`` is false."""
        path = self.path + ".controller"
        with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as handle:
            found = handle.read().strip()
            if found:
                return found
        if not create:
            return None
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with contextlib.suppress(FileExistsError):
            # O_EXCL: parallel trials starting together must all end up with the one id.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_hex(8) + "\n")
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()

    def open_contracts(self, api_url: str | None = None) -> list[dict[str, Any]]:
        """Contracts created and not yet recorded as destroyed (of ``api_url`` when given: with or without a
        trailing slash, the same API), oldest first."""
        live: dict[int, dict[str, Any]] = {}
        wanted = api_url.rstrip("/") if api_url else None
        try:
            with open(self.path, "rb") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)  # bytes: a line that is not UTF-8 is a ValueError too
                        if not isinstance(record, dict):
                            continue
                        if wanted and str(record.get("api_url")).rstrip("/") != wanted:
                            continue
                        if record.get("event") == "created":
                            live[int(record["id"])] = record
                        elif record.get("event") == "destroyed":
                            live.pop(int(record["id"]), None)
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line after a crash, or a damaged one: the others still count
        except FileNotFoundError:
            return []
        return list(live.values())


# The environment variable every instance the collection rents carries (the API returns it in extra_env): the
# controller's id. It is how the reaper knows an instance on the account is one of ours.
MARKER_ENV = "MLOPS_VAST_CONTROLLER"
# What a lease promises when the next renewal may be far off (after rent, during setup and the smoke test,
# after the watch: teardown and recovery), in seconds.
LONG_LEASE_S = 1800.0


class Leases:
    """A lease per open contract: when the controller that watches it last said so, and how soon it promised
    to say so again (``interval_s``). The watch renews it every few seconds from a thread; an instance whose
    lease is older than a grace (by default three promised intervals) has no live controller.

    Files, one per contract, in a directory beside the ledger: renewals are rewrites of a few bytes, never
    appends to the ledger.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def _file(self, instance_id: int, api_url: str) -> str:
        return os.path.join(self.path, f"{_url_tag(api_url)}-{int(instance_id)}.json")

    def renew(self, instance_id: int, *, api_url: str, interval_s: float, label: str | None = None,
              now: float | None = None) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        record = {"id": int(instance_id), "api_url": api_url, "label": label, "interval_s": float(interval_s),
                  "renewed_at": time.time() if now is None else now, "pid": os.getpid()}
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".lease-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(tmp, self._file(instance_id, api_url))

    def get(self, instance_id: int, api_url: str) -> dict[str, Any] | None:
        try:
            with open(self._file(instance_id, api_url), encoding="utf-8") as handle:
                record = json.load(handle)
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def drop(self, instance_id: int, *, api_url: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._file(instance_id, api_url))


def _url_tag(api_url: str) -> str:
    return hashlib.sha256(api_url.encode()).hexdigest()[:12]


class MachineExclusions:
    """The machines never to rent again, with why and when: ``{"machines": {"<id>": {reason, excluded_at}}}``."""

    def __init__(self, path: str | None = None) -> None:
        self.path = os.path.expanduser(path or default_exclusions_path())

    def read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        machines = data.get("machines") if isinstance(data, dict) else None
        if not isinstance(machines, dict):
            raise ValueError(f"{self.path} is not an exclusion list (expected {{\"machines\": {{...}}}})")
        return machines

    def update(self, machine_id: int | None, *, present: bool, reason: str = "",
               write: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Add (``present``) or remove ``machine_id`` under the lock; ``(before, after)``.

        With ``machine_id`` None it only reads; with ``write`` False (check mode) nothing is written.
        """
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            before = self.read()
            after = dict(before)
            key = None if machine_id is None else str(machine_id)
            if key is not None and present and key not in after:
                after[key] = {"reason": reason, "excluded_at": time.time()}
            elif key is not None and not present:
                after.pop(key, None)
            if after != before and write:
                self._write(after)
        return before, after

    def _write(self, machines: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path) or ".", prefix=".excluded-")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"machines": machines}, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, self.path)
