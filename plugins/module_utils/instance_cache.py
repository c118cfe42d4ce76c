# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One instance list, shared by every watcher on the controller.

N trials of a sweep are N ansible-playbook processes, each with a ``mlops.vast.watch`` task asking the API
about its own instance. Asked one by one, that is N requests per poll interval against an API with a rate
limit. Instead each watcher reads the account's whole instance list, and the list is kept for a moment in a
small file next to the contract ledger (``instances-cache.json``): a watcher that finds a list younger than
its ``max_age`` (about half its poll interval) uses it, so N watchers make about one list request per poll
interval between them.

- The file is read and written under an exclusive ``fcntl`` lock on ``instances-cache.json.lock``, held
  while the list is fetched, so watchers that find it stale at the same moment make one request, not N.
- Entries are keyed by the API's URL and a fingerprint of the key (a SHA-256 prefix: two accounts on one API
  never share a list). The key itself is never written; neither is anything of a row but the fields the
  watch decides and counts spend from (no ``extra_env``, ``onstart`` or tokens). The file is mode 0600.
- An instance missing from a cached list may simply be newer than the list: the caller asks again with
  ``refresh=True`` before calling it gone.
- The list is the legacy one-request ``GET /api/v0/instances/?owner=me``; where the account is too new for
  it (410), the v1 list's pages (25 rows each), and the cache remembers that.

Private to the collection.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ansible_collections.mlops.vast.plugins.module_utils.errors import VastUnavailable
from ansible_collections.mlops.vast.plugins.module_utils.local_state import default_ledger_path

CACHE_NAME = "instances-cache.json"
# What of a row is kept: what the watch decides on (watch_decisions.instance_verdict / gone_kind), what it
# reports, and what the spend is computed from (action/watch.py instance_spend).
KEPT_FIELDS = (
    "id", "label", "machine_id", "actual_status", "intended_status", "cur_state", "next_state", "status_msg",
    "is_bid", "start_date", "duration", "uptime_mins", "dph_total", "dph_base", "storage_total_cost",
    "num_gpus", "gpu_name",
)
# Entries older than this are dropped when the file is written (an API URL no longer watched).
FORGET_AFTER_S = 3600.0


def default_cache_path(environ: dict[str, str] | None = None) -> str:
    """``instances-cache.json`` in the directory of the contract ledger."""
    ledger = os.path.expanduser(default_ledger_path(environ))
    return os.path.join(os.path.dirname(ledger) or ".", CACHE_NAME)


def cache_key(api_url: str, api_key: str | None) -> str:
    """The entry's key: the API's URL and a short fingerprint of the key (never the key)."""
    fingerprint = hashlib.sha256((api_key or "").encode()).hexdigest()[:16] if api_key else "anonymous"
    return f"{api_url.rstrip('/')}#{fingerprint}"


def slim(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in KEPT_FIELDS if k in row}


def fetch_list(client: Any, *, v1_only: bool = False) -> tuple[list[dict[str, Any]], bool]:
    """Every instance of the account in as few requests as the API allows: ``(rows, v1_only)``."""
    if not v1_only:
        try:
            body = client.request("GET", "/api/v0/instances/", params={"owner": "me"})
            return list((body or {}).get("instances") or []), False
        except VastUnavailable:  # 410: deprecated for this account; the v1 pages instead
            pass
    return list(client.iter_instances()), True


class InstanceListCache:
    """The shared list (see the module's docstring). ``clock`` is wall time (the file is shared)."""

    def __init__(self, path: str | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.path = os.path.expanduser(path or default_cache_path())
        self.clock = clock
        self.fetches = 0  # list requests this object made (pages of the v1 list count once)
        self.hits = 0

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".lock", "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {"entries": {}}
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            return {"entries": {}}
        return data

    def _write(self, data: dict[str, Any]) -> None:
        directory = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".instances-cache.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def instances(self, client: Any, api_key: str | None, max_age: float, *,
                  refresh: bool = False) -> tuple[list[dict[str, Any]], float, bool]:
        """``(rows, fetched_at, from_cache)``: the account's instances, from the file when its entry for this
        API and key is younger than ``max_age`` seconds (and not ``refresh``), else from the API (then saved).

        API errors propagate (nothing is saved then). A file that cannot be read or written is not an error:
        the list is then fetched every time, as without a cache.
        """
        key = cache_key(str(client.base_url), api_key)
        try:
            with self._locked():
                data = self._read()
                entry = data["entries"].get(key)
                now = self.clock()
                if (not refresh and isinstance(entry, dict) and isinstance(entry.get("instances"), list)
                        and 0 <= now - float(entry.get("at", 0)) < max_age):
                    self.hits += 1
                    return entry["instances"], float(entry["at"]), True
                v1_only = bool(entry.get("v1_only")) if isinstance(entry, dict) else False
                rows, v1_only = fetch_list(client, v1_only=v1_only)
                self.fetches += 1
                at = self.clock()
                kept = [slim(r) for r in rows if isinstance(r, dict)]
                entries = {k: v for k, v in data["entries"].items()
                           if isinstance(v, dict) and at - float(v.get("at", 0)) < FORGET_AFTER_S}
                entries[key] = {"at": at, "v1_only": v1_only, "instances": kept}
                with contextlib.suppress(OSError):  # unsaved, the next watcher fetches again
                    self._write({"entries": entries})
                return kept, at, False
        except OSError:
            rows = fetch_list(client)[0]
            self.fetches += 1
            return [slim(r) for r in rows if isinstance(r, dict)], self.clock(), False

    def instance(self, client: Any, api_key: str | None, instance_id: int, max_age: float, *,
                 confirm: Callable[[dict[str, Any] | None], bool] | None = None
                 ) -> tuple[dict[str, Any] | None, float, bool]:
        """``(row or None, fetched_at, from_cache)`` of one instance. Missing from a cached list, or with a
        cached row for which ``confirm(row)`` is true (the caller would act on it: the instance looks gone), the
        list is fetched again first: a cached list may be older than the instance, or than its resuming."""
        rows, at, cached = self.instances(client, api_key, max_age)
        row = next((r for r in rows if r.get("id") == int(instance_id)), None)
        if cached and (row is None or (confirm is not None and confirm(row))):
            rows, at, cached = self.instances(client, api_key, max_age, refresh=True)
            row = next((r for r in rows if r.get("id") == int(instance_id)), None)
        return row, at, cached
