# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared pieces of the controller-side modules: argument spec, client set-up, waits, the
local contract ledger, and the shapes modules return for offers and instances.

Private to the collection.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from .vast_api import Deadline, VastAPIError, VastClient, VastConfigError, VastError, resolve_api_key, resolve_base_url

# Statuses from which waiting never leads to `running` (vast-api.md §4.2).
HOPELESS_STATUSES = frozenset({"exited", "offline", "unknown"})
# Phrases in status_msg that mean the image will never start.
IMAGE_FAILURES = ("error response from daemon", "pull access denied", "manifest unknown", "no such image",
                  "oci runtime create failed", "unauthorized: ")


def vast_argument_spec() -> dict[str, Any]:
    return {
        "api_key": {"type": "str", "no_log": True},
        "api_url": {"type": "str"},
        "api_timeout": {"type": "float", "default": 30.0},
    }


def client_for(params: dict[str, Any], deadline: Deadline, *, need_key: bool = True) -> VastClient:
    """A client from module options; VastConfigError says what is missing, nothing is sent."""
    base_url = resolve_base_url(params.get("api_url"))
    key: str | None
    try:
        key, _source = resolve_api_key(params.get("api_key"))
    except VastConfigError:
        if need_key:
            raise
        key = None
    return VastClient(key, base_url, deadline=deadline, request_timeout=params.get("api_timeout") or 30.0)


def error_result(exc: Exception) -> dict[str, Any]:
    """What fail_json gets for an error from the client: Vast's words, never the key."""
    if isinstance(exc, VastAPIError):
        return {"msg": str(exc), "status": exc.status, "error": exc.error, "vast_msg": exc.msg}
    if isinstance(exc, VastError):
        return {"msg": str(exc)}
    return {"msg": f"{type(exc).__name__}: {exc}"}


def wait_until(
    check: Callable[[], Any],
    deadline: Deadline,
    *,
    interval: float = 2.0,
    max_interval: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Call ``check`` until it returns something truthy or the deadline passes (then None).

    The interval grows so long waits poll sparsely; the last poll lands on the deadline.
    """
    delay = interval
    while True:
        result = check()
        if result:
            return result
        if deadline.expired:
            return None
        sleep(min(delay, max(deadline.remaining, 0.0)))
        delay = min(delay * 1.5, max_interval)


def ssh_banner(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when host:port accepts TCP and greets with an SSH banner."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except (OSError, ValueError):
        return False


def ssh_endpoint(instance: Mapping[str, Any], prefer_direct: bool = True) -> tuple[str | None, int | None, str]:
    """``(host, port, kind)`` to SSH to, as ``vastai ssh-url`` picks it (vast-api.md §4.3).

    ``direct`` when ``prefer_direct`` and the instance maps ``22/tcp`` (public IP and host port), else
    ``proxy``: ``ssh_host:ssh_port``, plus one on the port for jupyter runtypes. ``(None, None, "none")``
    when the instance has neither (yet).
    """
    if prefer_direct:
        ports = instance.get("ports")
        mapping = ports.get("22/tcp") if isinstance(ports, Mapping) else None
        public_ip = str(instance.get("public_ipaddr") or "").strip()
        if mapping and public_ip:
            try:
                return public_ip, int(mapping[0]["HostPort"]), "direct"
            except (LookupError, TypeError, ValueError):
                pass
    host = str(instance.get("ssh_host") or "").strip()
    try:
        port = int(instance.get("ssh_port"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, None, "none"
    if not host:
        return None, None, "none"
    if "jupyter" in str(instance.get("image_runtype") or ""):
        port += 1
    return host, port, "proxy"


def hopeless_reason(instance: dict[str, Any]) -> str | None:
    """Why an instance will never become usable by waiting, or None while there is hope."""
    status = instance.get("actual_status")
    msg = str(instance.get("status_msg") or "")
    if status in HOPELESS_STATUSES and instance.get("intended_status") == "running":
        return f"actual_status is {status!r} ({msg or 'no status message'})"
    if msg.lower().startswith("error"):
        return f"host error: {msg}"
    lowered = msg.lower()
    for phrase in IMAGE_FAILURES:
        if phrase in lowered:
            return f"image failure: {msg}"
    return None


def instance_summary(instance: dict[str, Any], ssh_user: str = "root") -> dict[str, Any]:
    host, port, kind = ssh_endpoint(instance)
    return {
        "id": instance.get("id"),
        "label": instance.get("label"),
        "machine_id": instance.get("machine_id"),
        "offer_id": instance.get("bundle_id") or instance.get("ask_contract_id"),
        "status": instance.get("actual_status"),
        "intended_status": instance.get("intended_status"),
        "cur_state": instance.get("cur_state"),
        "status_msg": instance.get("status_msg"),
        "gpu_name": instance.get("gpu_name"),
        "num_gpus": instance.get("num_gpus"),
        "gpu_ram": instance.get("gpu_ram"),
        "compute_cap": instance.get("compute_cap"),
        "cuda_max_good": instance.get("cuda_max_good"),
        "image": instance.get("image_uuid"),
        "disk_gb": instance.get("disk_space"),
        "dph_total": instance.get("dph_total"),
        "is_bid": instance.get("is_bid"),
        "public_ipaddr": (instance.get("public_ipaddr") or "").strip() or None,
        "ssh_host": host,
        "ssh_port": port,
        "ssh_user": ssh_user,
        "ssh_kind": kind,
        "proxy_ssh_host": instance.get("ssh_host"),
        "proxy_ssh_port": instance.get("ssh_port"),
    }


def normalise_offer(offer: dict[str, Any]) -> dict[str, Any]:
    """An offer with the units people think in added next to Vast's (GB next to MB, $/h per GPU)."""
    row = dict(offer)
    num_gpus = max(int(offer.get("num_gpus") or 1), 1)
    for key in ("gpu_ram", "gpu_total_ram", "cpu_ram"):
        if isinstance(offer.get(key), int | float):
            row[f"{key}_gb"] = round(offer[key] / 1024, 1)
    if isinstance(offer.get("dph_total"), int | float):
        row["dph_total_per_gpu"] = round(offer["dph_total"] / num_gpus, 6)
    if isinstance(offer.get("compute_cap"), int | float):
        row["compute_capability"] = f"{int(offer['compute_cap']) // 100}.{int(offer['compute_cap']) % 100 // 10}"
    return row


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

    def destroyed(self, instance_id: int, *, api_url: str) -> None:
        self._append({"event": "destroyed", "id": int(instance_id), "api_url": api_url})

    def open_contracts(self, api_url: str | None = None) -> list[dict[str, Any]]:
        """Contracts created and not yet recorded as destroyed, oldest first."""
        live: dict[int, dict[str, Any]] = {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a torn last line after a crash
                    if api_url and record.get("api_url") != api_url:
                        continue
                    if record.get("event") == "created":
                        live[int(record["id"])] = record
                    elif record.get("event") == "destroyed":
                        live.pop(int(record["id"]), None)
        except FileNotFoundError:
            return []
        return list(live.values())


def default_ledger_path() -> str:
    if os.environ.get("MLOPS_VAST_LEDGER"):
        return os.environ["MLOPS_VAST_LEDGER"]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "mlops-vast", "contracts.jsonl")
