"""``GET /api/v0/charges/``: what the account was charged, one row per instance, as the official CLI's
``vastai show invoices-v1 --charges`` reads it (``results`` with ``type``, ``source``, ``amount``, ``start``,
``end``, ``description``, ``metadata`` and the breakdown in ``items``; ``count``, ``total``, ``next_token``).

The amounts are the billing ledger's own (GPU while running, storage until destroyed); vastsim meters no
traffic, so the bandwidth item is always 0. ``select_filters`` takes ``day`` (``gte``/``lte`` epoch seconds:
rows whose life overlaps the window) and ``type`` (``in``: ``instance`` is the only type vastsim charges).
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

from mlops_vast.sim.errors import VastError

MAX_LIMIT = 100


def _day(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def charge_row(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A ledger row (live or destroyed) as a charge with its GPU, storage and bandwidth items."""
    end = row.get("destroyed_at") or now
    span = {"source": str(row["id"]), "start": _day(row["created_at"]), "end": _day(end)}
    items = [
        {"type": "gpu", "amount": round(row["gpu_cost"], 8),
         "description": f"GPU time, {row['running_seconds']:.0f} s", **span},
        {"type": "storage", "amount": round(row["storage_cost"], 8), "description": "Disk storage", **span},
        {"type": "bandwidth", "amount": 0.0, "description": "Internet traffic", **span},
    ]
    return {
        "type": "instance",
        "source": str(row["id"]),
        "amount": round(row["gpu_cost"] + row["storage_cost"], 8),
        "description": f"Instance {row['id']}" + (f" ({row['label']})" if row.get("label") else ""),
        "start": _day(row["created_at"]),
        "end": _day(end),
        "metadata": {"instance_id": row["id"], "label": row.get("label"), "created_at": row["created_at"],
                     "destroyed_at": row.get("destroyed_at")},
        "items": items,
    }


def _window(filters: dict[str, Any]) -> tuple[float, float]:
    day = filters.get("day", {})
    if not isinstance(day, dict):
        raise VastError(400, "invalid_request", "Error in query parameters: day must be an object of operators")
    try:
        return float(day.get("gte", 0)), float(day.get("lte", time.time() + 86400))
    except (TypeError, ValueError):
        raise VastError(400, "invalid_request", "Error in query parameters: day bounds must be numbers") from None


def charges(rows: list[dict[str, Any]], filters: Any, limit: Any, latest_first: Any,
            after_token: str | None) -> dict[str, Any]:
    """The page of charges the request asks for, from the account's ledger rows."""
    if not isinstance(filters, dict):
        raise VastError(400, "invalid_request", "Error in query parameters: select_filters must be an object")
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        raise VastError(400, "invalid_request", "Error in query parameters: limit must be an integer") from None
    limit = 20 if limit <= 0 else min(limit, MAX_LIMIT)
    start, end = _window(filters)
    types = filters.get("type", {}).get("in") if isinstance(filters.get("type"), dict) else None
    now = time.time()
    matching = [row for row in rows
                if row["created_at"] <= end and (row.get("destroyed_at") or now) >= start
                and (types is None or "instance" in types)]
    matching.sort(key=lambda row: (row["created_at"], row["id"]), reverse=str(latest_first).lower() == "true")
    offset = 0
    if after_token:
        try:
            offset = int(json.loads(base64.urlsafe_b64decode(after_token.encode()))["offset"])
        except (ValueError, KeyError, TypeError):
            raise VastError(400, "invalid_token", "Invalid pagination token") from None
    page = matching[offset:offset + limit]
    more = offset + limit < len(matching)
    token = base64.urlsafe_b64encode(json.dumps({"offset": offset + limit}).encode()).decode() if more else None
    return {"success": True, "results": [charge_row(row, now) for row in page], "count": len(page),
            "total": len(matching), "next_token": token}
