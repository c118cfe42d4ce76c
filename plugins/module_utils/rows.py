# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shapes of Vast's rows as the collection reads and returns them: offers with the units people
think in, instances summarised, their SSH endpoint (as ``vastai ssh-url`` picks it), and the states
that waiting cannot fix.

Private to the collection.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

# Statuses from which waiting never leads to `running` (vast-api.md §4.2).
HOPELESS_STATUSES = frozenset({"exited", "offline", "unknown"})
STOPPED_STATUSES = frozenset({"exited", "stopped"})
# Phrases in status_msg that mean the image will never start.
IMAGE_FAILURES = ("error response from daemon", "pull access denied", "manifest unknown", "no such image",
                  "oci runtime create failed", "unauthorized: ")
# What a diff of an instance shows (a stable subset of instance_summary).
DIFF_FIELDS = ("id", "label", "status", "offer_id", "machine_id", "image", "disk_gb", "gpu_name", "dph_total",
               "is_bid")


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


def hopeless_reason(instance: Mapping[str, Any]) -> str | None:
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


def instance_summary(instance: Mapping[str, Any], ssh_user: str = "root") -> dict[str, Any]:
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
        "start_date": instance.get("start_date"),
        # When the GPU started billing (now minus uptime), and the two prices spend is made of.
        "running_since": (round(time.time() - float(instance["uptime_mins"]) * 60, 3)
                          if instance.get("uptime_mins") is not None else None),
        "dph_base": instance.get("dph_base"),
        "storage_dph": instance.get("storage_total_cost"),
        # What it has cost since it was created (None without the fields to tell).
        "spent_usd": instance_spend_usd(instance, time.time()),
        "is_bid": instance.get("is_bid"),
        "public_ipaddr": (instance.get("public_ipaddr") or "").strip() or None,
        "ssh_host": host,
        "ssh_port": port,
        "ssh_user": ssh_user,
        "ssh_kind": kind,
        "proxy_ssh_host": instance.get("ssh_host"),
        "proxy_ssh_port": instance.get("ssh_port"),
    }


def diff_view(instance: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a diff shows of an instance ({} for none)."""
    if not instance:
        return {}
    summary = instance_summary(instance)
    return {key: summary[key] for key in DIFF_FIELDS}


def normalise_offer(offer: Mapping[str, Any]) -> dict[str, Any]:
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


def instance_spend_usd(row: Mapping[str, Any], now: float) -> float | None:
    """What an instance has cost since it was created, from its row as Vast bills it: the GPU part (dph_base)
    while it ran (uptime_mins), storage (storage_total_cost) since creation (start_date); without those
    fields, dph_total over its whole age (an upper bound). None when the row lacks even that."""
    if row.get("start_date") is None or row.get("dph_total") is None:
        return None
    age_h = max(0.0, now - float(row["start_date"])) / 3600
    if row.get("uptime_mins") is None or row.get("dph_base") is None or row.get("storage_total_cost") is None:
        return round(age_h * float(row["dph_total"]), 6)
    return round(float(row["uptime_mins"]) / 60 * float(row["dph_base"]) + age_h * float(row["storage_total_cost"]), 6)


def extra_env(row: Mapping[str, Any]) -> dict[str, str]:
    """An instance's create-time environment: the API's list of pairs (vast-api.md) as a dict."""
    pairs = row.get("extra_env") or []
    if isinstance(pairs, dict):
        return {str(k): str(v) for k, v in pairs.items()}
    return {str(pair[0]): str(pair[1]) for pair in pairs if isinstance(pair, list | tuple) and len(pair) == 2}
