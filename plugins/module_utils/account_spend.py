# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the account (the API, not the local ledger) says about a run: its instances still on the account, which
bill (a stopped one bills storage), and what the run cost, from the charges endpoint (``GET /api/v0/charges/``,
one charge per instance, broken down into GPU, storage and bandwidth items)."""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

MAX_CHARGE_PAGES = 50
DAY_S = 86400.0
CLOCK_SLACK_S = 300.0  # the API's clock may differ from the controller's, which stamps the run's start
KINDS = ("gpu", "storage", "bandwidth")


def ledger_history(path: str, label: str | None, api_url: str, since: float = 0.0) -> tuple[set[int], float | None]:
    """Every contract the local ledger saw created with ``label`` (None: any) on this API, and when the first was.

    With ``since`` (when the run started, by the controller's clock, as the ledger's ``ts``) a contract created
    before it is an earlier run's that used the same label, not this run's."""
    ids: set[int] = set()
    first: float | None = None
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line after a crash
                if record.get("event") != "created" or record.get("api_url") != api_url or (
                        label is not None and record.get("label") != label):
                    continue
                ts = float(record.get("ts") or 0) or None
                if since > 0 and (ts is None or ts < since):
                    continue
                ids.add(int(record["id"]))
                if ts is not None and (first is None or ts < first):
                    first = ts
    except FileNotFoundError:
        pass
    return ids, first


def destroyed_before(path: str, label: str, api_url: str, since: float) -> set[int]:
    """The contracts of ``label`` the local ledger saw destroyed before ``since``: an earlier run's, whatever the
    clocks (an instance adopted by this run was still open when it started, and is not among them)."""
    created: set[int] = set()
    gone: set[int] = set()
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    instance_id = int(record["id"])
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash
                if record.get("api_url") != api_url:
                    continue
                if record.get("event") == "created" and record.get("label") == label:
                    created.add(instance_id)
                elif record.get("event") == "destroyed" and float(record.get("ts") or 0) < since:
                    gone.add(instance_id)
    except FileNotFoundError:
        pass
    return created & gone


def charges(client: Any, since: float, until: float) -> list[dict[str, Any]]:
    """Every charge of the account whose time overlaps [since, until], following the pages."""
    rows: list[dict[str, Any]] = []
    token: str | None = None
    for _page in range(MAX_CHARGE_PAGES):
        params: dict[str, Any] = {"select_filters": {"day": {"gte": int(since), "lte": int(until) + 1}},
                                  "limit": 100, "latest_first": False}
        if token:
            params["after_token"] = token
        page = client.request("GET", "/api/v0/charges/", params=params)
        rows.extend(page.get("results") or [])
        token = page.get("next_token")
        if not token:
            return rows
    raise ValueError(f"more than {MAX_CHARGE_PAGES} pages of charges since {int(since)}: give since (when the run "
                     f"started, epoch seconds) so that only the run's own window is read")


def _amount(value: Any) -> float:
    # The API's amounts are numbers; a "$1.23" string is read too, as a table would show it.
    if isinstance(value, str):
        value = value.replace("$", "").replace(",", "").strip() or 0
    return float(value or 0)


def _charge_id(charge: Mapping[str, Any]) -> int | None:
    meta = charge.get("metadata") or {}
    for value in (meta.get("instance_id"), charge.get("source")):
        try:
            return int(value)
        except (TypeError, ValueError):
            continue
    return None


def _ended_at(charge: Mapping[str, Any]) -> float | None:
    """When the charge's instance was destroyed (epoch seconds); None while it lives or when the API does not say."""
    meta = charge.get("metadata") or {}
    if "destroyed_at" in meta and meta["destroyed_at"] is None:
        return None
    for value in (meta.get("destroyed_at"), charge.get("end")):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip():
            try:
                when = datetime.fromisoformat(value.strip())
            except ValueError:
                continue
            # a time without a zone is the API's UTC (as vastsim and the CLI's tables print it)
            return when.timestamp() if when.tzinfo else calendar.timegm(when.timetuple()) + when.microsecond / 1e6
    return None


def run_spend(all_charges: Iterable[Mapping[str, Any]], ids: set[int], label: str,
              since: float = 0.0, earlier: Collection[int] = ()) -> dict[str, Any]:
    """The run's spend: the charges of its instances (by id, or by the label the charge names), per kind.

    With ``since``, a charge matched only by the label whose instance was gone before the run started is an
    earlier run's (the API's day filter may be coarser than the run), and so is one of ``earlier``, the instances
    the ledger saw an earlier run of the label rent, however recently it ended."""
    per_instance = []
    totals = dict.fromkeys(KINDS, 0.0)
    for charge in all_charges:
        if charge.get("type", "instance") != "instance":
            continue
        instance_id = _charge_id(charge)
        if instance_id not in ids:
            # Without a label (mlops-vast status: the ledger's contracts), only the ids count.
            if not label or (charge.get("metadata") or {}).get("label") != label or instance_id in earlier:
                continue
            ended = _ended_at(charge)
            if since > 0 and ended is not None and ended < since - CLOCK_SLACK_S:
                continue
        kinds = dict.fromkeys(KINDS, 0.0)
        for item in charge.get("items") or []:
            kind = str(item.get("type", "")).lower()
            if kind in kinds:
                kinds[kind] += _amount(item.get("amount"))
        if not any(kinds.values()):
            kinds["gpu"] = _amount(charge.get("amount"))  # no breakdown given: all of it as the instance's
        for kind, value in kinds.items():
            totals[kind] += value
        per_instance.append({"id": instance_id, **{f"{k}_usd": round(v, 6) for k, v in kinds.items()},
                             "total_usd": round(sum(kinds.values()), 6),
                             "start": charge.get("start"), "end": charge.get("end")})
    return {**{f"{k}_usd": round(v, 6) for k, v in totals.items()},
            "total_usd": round(sum(totals.values()), 6), "instances": per_instance,
            "source": "GET /api/v0/charges/", "at": time.time()}


def billing_rows(instances: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The instances still on the account, short: every one of them bills (a stopped one, its storage)."""
    return [{"id": i.get("id"), "label": i.get("label"), "actual_status": i.get("actual_status"),
             "intended_status": i.get("intended_status"), "cur_state": i.get("cur_state"),
             "dph_total": i.get("dph_total")} for i in instances]


def charge_window(first_seen: float | None, since: float, now: float) -> float:
    """Where the charges are read from: ``since`` (the run's start) when given, less the clocks' slack, else a day
    before the ledger's first contract of the label (clocks differ), else the last 30 days."""
    if since > 0:
        return since - CLOCK_SLACK_S
    if first_seen is not None:
        return first_seen - DAY_S
    return now - 30 * DAY_S
