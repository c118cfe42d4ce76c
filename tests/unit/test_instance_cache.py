"""The instance list shared by every watch on the controller (module_utils/instance_cache.py): one list request
per interval for N watchers, entries keyed by API and key (never the key), fields trimmed, a file lock, the v1
fallback, and the watch loop reading its instance from it."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from ansible_collections.mlops.vast.plugins.module_utils import instance_cache as ic
from ansible_collections.mlops.vast.plugins.module_utils.api_client import VastClient

SECRET = "cache-test-key-0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def row(instance_id: int, **extra: Any) -> dict[str, Any]:
    return {"id": instance_id, "actual_status": "running", "intended_status": "running", "cur_state": "running",
            "status_msg": "success", "start_date": 1_799_999_000.0, "dph_total": 0.5, "dph_base": 0.4,
            "uptime_mins": 10.0, "storage_total_cost": 0.1, "extra_env": [["HF_TOKEN", "hf_secret"]],
            "onstart": "echo token", **extra}


class Api:
    """A fake Vast API: the legacy list (or 410), the v1 pages, the single GET; counts every request."""

    def __init__(self, rows: list[dict[str, Any]], *, legacy: bool = True) -> None:
        self.rows, self.legacy = rows, legacy
        self.requests: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if request.url.path == "/api/v0/instances/":
            if not self.legacy:
                return httpx.Response(410, json={"success": False, "error": "deprecated", "msg": "Use /api/v1/"})
            return httpx.Response(200, json={"instances_found": len(self.rows), "instances": self.rows})
        if request.url.path == "/api/v1/instances/":
            token = request.url.params.get("after_token")
            offset = int(token) if token else 0
            page = self.rows[offset:offset + 25]
            more = offset + 25 < len(self.rows)
            return httpx.Response(200, json={"success": True, "instances": page,
                                             "next_token": str(offset + 25) if more else None})
        raise AssertionError(f"unexpected request {request.url}")

    def client(self, key: str = SECRET) -> VastClient:
        return VastClient(key, "http://vast.test", transport=httpx.MockTransport(self.handler))


def test_n_watchers_share_one_list_request_per_interval(tmp_path: Path) -> None:
    api, clock = Api([row(i) for i in range(1, 9)]), Clock()
    path = str(tmp_path / "instances-cache.json")
    watchers = [ic.InstanceListCache(path, clock=clock) for _ in range(8)]
    for poll in range(3):  # three poll intervals of 30 s; each list is reused for 15 s
        for index, cache in enumerate(watchers, start=1):
            found, at, _cached = cache.instance(api.client(), SECRET, index, max_age=15)
            assert found is not None and found["id"] == index and at <= clock.now
        clock.now += 30
        assert len(api.requests) == poll + 1, "one list request per interval for 8 watchers"
    assert sum(c.fetches for c in watchers) == 3 and sum(c.hits for c in watchers) == 21


def test_an_entry_older_than_max_age_is_fetched_again(tmp_path: Path) -> None:
    api, clock = Api([row(1)]), Clock()
    cache = ic.InstanceListCache(str(tmp_path / "c.json"), clock=clock)
    cache.instance(api.client(), SECRET, 1, max_age=10)
    clock.now += 9.9
    cache.instance(api.client(), SECRET, 1, max_age=10)
    assert len(api.requests) == 1
    clock.now += 0.2
    cache.instance(api.client(), SECRET, 1, max_age=10)
    assert len(api.requests) == 2


def test_an_instance_newer_than_the_cached_list_is_not_called_gone(tmp_path: Path) -> None:
    api, clock = Api([row(1)]), Clock()
    cache = ic.InstanceListCache(str(tmp_path / "c.json"), clock=clock)
    cache.instance(api.client(), SECRET, 1, max_age=60)
    api.rows.append(row(2))  # rented after that list was read
    found, _, cached = cache.instance(api.client(), SECRET, 2, max_age=60)
    assert found is not None and found["id"] == 2 and cached is False
    assert len(api.requests) == 2
    api.rows = [row(1)]  # destroyed: missing from a fresh list too
    clock.now += 61
    gone, _, _ = cache.instance(api.client(), SECRET, 2, max_age=60)
    assert gone is None


def test_a_cached_row_the_caller_would_act_on_is_read_again(tmp_path: Path) -> None:
    """A list cached while the instance was outbid must not end the watch of its resumed run."""
    api, clock = Api([row(1, cur_state="stopped", status_msg="Instance outbid")]), Clock()
    cache = ic.InstanceListCache(str(tmp_path / "c.json"), clock=clock)
    cache.instance(api.client(), SECRET, 1, max_age=60)
    api.rows = [row(1)]  # it won its bid again and runs
    clock.now += 5

    def gone(found: dict[str, Any] | None) -> bool:
        return found is None or found.get("cur_state") != "running"

    found, _, cached = cache.instance(api.client(), SECRET, 1, max_age=60, confirm=gone)
    assert found is not None and found["cur_state"] == "running" and cached is False
    found, _, cached = cache.instance(api.client(), SECRET, 1, max_age=60, confirm=gone)
    assert cached is True and len(api.requests) == 2, "a healthy cached row is used as it is"


def test_the_file_holds_no_key_and_only_the_fields_the_watch_needs(tmp_path: Path) -> None:
    api = Api([row(1, ssh_host="ssh1.vast.ai", jupyter_token="jt-secret")])
    path = tmp_path / "c.json"
    ic.InstanceListCache(str(path), clock=Clock()).instance(api.client(), SECRET, 1, max_age=60)
    text = path.read_text()
    assert SECRET not in text and "hf_secret" not in text and "jt-secret" not in text and "onstart" not in text
    data = json.loads(text)
    (key, entry), = data["entries"].items()
    assert key.startswith("http://vast.test#") and len(key.split("#")[1]) == 16
    assert set(entry["instances"][0]) <= set(ic.KEPT_FIELDS)
    assert entry["instances"][0]["dph_total"] == 0.5 and entry["instances"][0]["cur_state"] == "running"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_two_accounts_on_one_api_never_share_a_list(tmp_path: Path) -> None:
    api, clock = Api([row(1)]), Clock()
    path = str(tmp_path / "c.json")
    ic.InstanceListCache(path, clock=clock).instance(api.client(SECRET), SECRET, 1, max_age=60)
    ic.InstanceListCache(path, clock=clock).instance(api.client("other-key"), "other-key", 1, max_age=60)
    assert len(api.requests) == 2
    assert len(json.loads(Path(path).read_text())["entries"]) == 2


def test_an_account_without_the_legacy_list_uses_the_v1_pages_and_remembers(tmp_path: Path) -> None:
    api, clock = Api([row(i) for i in range(1, 31)], legacy=False), Clock()
    cache = ic.InstanceListCache(str(tmp_path / "c.json"), clock=clock)
    found, _, _ = cache.instance(api.client(), SECRET, 30, max_age=10)
    assert found is not None and found["id"] == 30
    assert api.requests == ["/api/v0/instances/", "/api/v1/instances/", "/api/v1/instances/"]
    clock.now += 11
    cache.instance(api.client(), SECRET, 30, max_age=10)
    assert api.requests[3:] == ["/api/v1/instances/", "/api/v1/instances/"], "no second try of the legacy list"


def test_an_unreadable_or_broken_file_is_not_an_error(tmp_path: Path) -> None:
    api = Api([row(1)])
    path = tmp_path / "c.json"
    path.write_text("{not json")
    found, _, cached = ic.InstanceListCache(str(path), clock=Clock()).instance(api.client(), SECRET, 1, max_age=60)
    assert found is not None and cached is False
    assert json.loads(path.read_text())["entries"], "rewritten whole"


def test_the_default_file_is_next_to_the_ledger() -> None:
    assert ic.default_cache_path({"MLOPS_VAST_LEDGER": "/x/y/contracts.jsonl"}) == "/x/y/instances-cache.json"
    assert ic.default_cache_path({"XDG_STATE_HOME": "/s"}) == "/s/mlops-vast/instances-cache.json"


def _watcher_process(path: str, instance_id: int, port_file: str, rounds: int, out: Any) -> None:
    """One watcher in its own process (as each sweep trial's ansible-playbook is), against a counting server."""
    base = Path(port_file).read_text().strip()
    client = VastClient(SECRET, base)
    cache = ic.InstanceListCache(path)
    seen = 0
    for _ in range(rounds):
        found, _, _ = cache.instance(client, SECRET, instance_id, max_age=30)
        seen += found is not None
    client.close()
    out.put((instance_id, seen, cache.fetches))


def test_parallel_processes_make_one_request_under_the_lock(tmp_path: Path) -> None:
    """Eight processes find no list at the same moment: the lock makes one of them fetch, the others read it."""
    import http.server
    import threading

    count = {"n": 0}
    rows = [row(i) for i in range(1, 9)]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            count["n"] += 1
            body = json.dumps({"instances_found": len(rows), "instances": rows}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port_file = tmp_path / "url"
    port_file.write_text(f"http://127.0.0.1:{server.server_address[1]}")
    path = str(tmp_path / "instances-cache.json")
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [context.Process(target=_watcher_process, args=(path, i, str(port_file), 3, out)) for i in range(1, 9)]
    try:
        for proc in procs:
            proc.start()
        results = [out.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(30)
    finally:
        server.shutdown()
        server.server_close()
    assert all(seen == 3 for _, seen, _ in results)
    assert count["n"] == 1 and sum(fetches for _, _, fetches in results) == 1


# ------------------------------------------------------------------ the watch loop with the shared list

from tests.unit.test_watch_utils import (  # noqa: E402  (the watch tests' fake host, reused)
    HF,
    SUMMARY,
    FakeClock,
    append,
    both,
    end_run,
    fake_host,  # noqa: F401  (a fixture)
    run_watch,
    start_run,
)


def test_the_watch_reads_its_instance_from_the_shared_list_and_writes_progress(
        fake_host: dict[str, Any],  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_VAST_LEDGER", str(tmp_path / "state" / "contracts.jsonl"))
    clock = FakeClock()
    api = Api([row(7, start_date=clock.wall() - 600, uptime_mins=9.0), row(8)])
    progress = tmp_path / "results" / "progress-watch.json"
    snapshots: list[dict[str, Any]] = []

    def snap(run: Path) -> None:
        if progress.exists():
            snapshots.append(json.loads(progress.read_text()))

    result, _ = run_watch(fake_host, {
        1: start_run, 2: both(snap, append(HF[0])), 3: both(snap, append(HF[1])),
        4: both(snap, append(SUMMARY), end_run(0)),
    }, clock=clock, client=api.client(), instance_id=7, poll_interval=30, api_poll_interval=60, total_steps=40,
        shared_list=True, progress_file=str(progress))
    assert result["outcome"] == "completed"
    assert set(api.requests) == {"/api/v0/instances/"}, "the list, never GET /api/v0/instances/7/"
    assert result["instance"]["actual_status"] == "running"
    cache = json.loads((tmp_path / "state" / "instances-cache.json").read_text())
    assert [r["id"] for r in next(iter(cache["entries"].values()))["instances"]] == [7, 8]
    assert snapshots[0]["step"] is None and snapshots[0]["outcome"] is None
    assert snapshots[-1]["step"] == 20 and snapshots[-1]["loss"] == pytest.approx(0.5123)
    final = json.loads(progress.read_text())
    assert set(final) == {"step", "total_steps", "loss", "spent_usd", "dph", "eta_s", "instance_id", "outcome",
                          "updated_at"}
    assert final["outcome"] is None, "run_watch does not write the final record; the action does"
    assert final["instance_id"] == 7 and final["total_steps"] == 40 and final["dph"] == 0.5
    assert isinstance(final["spent_usd"], float) and isinstance(final["updated_at"], float)
    assert final["eta_s"] is not None
    assert not list(progress.parent.glob(".*.tmp")), "no temporary file left"
