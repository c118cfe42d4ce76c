"""The Vast API client's edge cases, with httpx's MockTransport (no network)."""

from __future__ import annotations

import json
import random
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from ansible_collections.mlops.vast.plugins.module_utils import api_client as api
from ansible_collections.mlops.vast.plugins.module_utils import errors
from ansible_collections.mlops.vast.plugins.module_utils.waiting import Deadline

SECRET = "sk-the-secret-key-0123456789"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def client_with(handler: Callable[[httpx.Request], httpx.Response], clock: FakeClock, deadline: float = 60,
                key: str | None = SECRET) -> api.VastClient:
    return api.VastClient(key, "http://vast.test", deadline=Deadline(deadline, clock.clock),
                          sleep=clock.sleep, transport=httpx.MockTransport(handler), rng=random.Random(7))


def scripted(responses: list[httpx.Response | Exception]) -> tuple[Callable, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses[min(len(seen) - 1, len(responses) - 1)]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def ok(body: object) -> httpx.Response:
    return httpx.Response(200, json=body)


def test_429_storm_honours_retry_after_then_succeeds() -> None:
    clock = FakeClock()
    handler, seen = scripted([httpx.Response(429, text="API requests too frequent", headers={"Retry-After": "2"}),
                              httpx.Response(429, json={"detail": "API requests too frequent"}),
                              ok({"offers": [{"id": 1}]})])
    with client_with(handler, clock) as client:
        assert client.search_offers({"limit": 1}) == [{"id": 1}]
    assert len(seen) == 3
    assert clock.sleeps[0] == 2.0  # Retry-After, not the backoff
    assert 0 <= clock.sleeps[1] <= 1.0  # full jitter on the second attempt's 1 s cap
    assert seen[0].headers["authorization"] == f"Bearer {SECRET}"
    assert seen[0].headers["content-type"] == "application/json"


def test_backoff_grows_jittered_and_stops_at_the_deadline() -> None:
    clock = FakeClock()
    handler, seen = scripted([httpx.Response(503, text="busy")])
    with client_with(handler, clock, deadline=20) as client, pytest.raises(errors.VastRetryExhausted) as caught:
        client.request("GET", "/api/v1/instances/")
    assert "within the deadline (20 s)" in str(caught.value) and "HTTP 503" in str(caught.value)
    assert clock.now <= 20
    caps = [min(20.0, 0.5 * 2 ** i) for i in range(len(clock.sleeps))]
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))
    assert len(seen) == len(clock.sleeps) + 1 >= 4


def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    clock = FakeClock()
    handler, seen = scripted([httpx.Response(429, headers={"Retry-After": "3600"}, text="slow down")])
    with client_with(handler, clock, deadline=30) as client, pytest.raises(errors.VastRetryExhausted):
        client.request("GET", "/api/v0/users/current")
    assert len(seen) == 1 and clock.sleeps == []


def test_search_quota_is_not_retried() -> None:
    clock = FakeClock()
    handler, seen = scripted([httpx.Response(429, json={"success": False, "error": "search_quota_exceeded",
                                                         "msg": "Daily search quota exceeded"})])
    with client_with(handler, clock) as client, pytest.raises(errors.VastAPIError, match="quota"):
        client.search_offers({})
    assert len(seen) == 1


def test_connection_errors_are_retried() -> None:
    clock = FakeClock()
    handler, seen = scripted([httpx.ConnectError("refused"), httpx.ConnectError("refused"), ok({"id": 5})])
    with client_with(handler, clock) as client:
        assert client.current_user() == {"id": 5}
    assert len(seen) == 3


@pytest.mark.parametrize("failure", [httpx.Response(503, text="oops"), httpx.ReadTimeout("slow")])
def test_create_is_never_blindly_retried_after_it_may_have_landed(failure: object) -> None:
    clock = FakeClock()
    handler, seen = scripted([failure, ok({"success": True, "new_contract": 9})])
    with client_with(handler, clock) as client, pytest.raises(errors.VastAmbiguousError):
        client.create_instance(42, {"image": "x"})
    assert len(seen) == 1


def test_create_is_retried_on_429_because_nothing_happened() -> None:
    clock = FakeClock()
    handler, seen = scripted([httpx.Response(429, text="x"), ok({"success": True, "new_contract": 9})])
    with client_with(handler, clock) as client:
        assert client.create_instance(42, {"image": "x"})["new_contract"] == 9
    assert len(seen) == 2 and json.loads(seen[1].content) == {"image": "x"}


def test_success_false_with_http_200_is_an_error() -> None:
    clock = FakeClock()
    handler, _ = scripted([ok({"success": False, "error": "invalid_args", "msg": "Bad thing."})])
    with client_with(handler, clock) as client, pytest.raises(errors.VastAPIError) as caught:
        client.request("PUT", "/api/v0/instances/1/", body={"state": "running"})
    assert caught.value.status == 200 and caught.value.msg == "Bad thing." and caught.value.error == "invalid_args"


def test_create_stopped_success_false_is_returned_not_raised() -> None:
    clock = FakeClock()
    handler, _ = scripted([ok({"success": False, "new_contract": 77})])
    with client_with(handler, clock) as client:
        assert client.create_instance(1, {})["new_contract"] == 77


@pytest.mark.parametrize(("response", "kind", "text"), [
    (httpx.Response(401, json={"success": False, "error": "auth_error", "msg": "Invalid user key"}),
     errors.VastAuthError, "Invalid user key"),
    (httpx.Response(404, json={"success": False, "error": "no_such_instance", "msg": "Instance 3 not found."}),
     errors.VastNotFound, "Instance 3 not found."),
    (httpx.Response(410, json={"success": False, "error": "no_such_ask", "msg": "no longer available"}),
     errors.VastUnavailable, "no longer available"),
    (httpx.Response(404, json={"success": False, "error": "no_such_ask", "msg": "not available"}),
     errors.VastUnavailable, "not available"),
    (httpx.Response(400, text="<html>Bad Request</html>"), errors.VastAPIError, "Bad Request"),
    (httpx.Response(200, text="{not json"), errors.VastAPIError, "not JSON"),
])
def test_errors_are_typed_and_carry_vasts_message(response: httpx.Response, kind: type, text: str) -> None:
    clock = FakeClock()
    handler, _ = scripted([response])
    with client_with(handler, clock) as client, pytest.raises(kind) as caught:
        client.request("GET", "/api/v0/instances/3/")
    assert text in str(caught.value)
    assert SECRET not in str(caught.value)


def test_list_pages_through_next_token() -> None:
    clock = FakeClock()
    pages = {None: {"instances": [{"id": 1}, {"id": 2}], "next_token": "a"},
             "a": {"instances": [{"id": 3}], "next_token": None}}
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok(pages[request.url.params.get("after_token")])

    with client_with(handler, clock) as client:
        assert [row["id"] for row in client.list_instances({"label": {"in": ["x"]}})] == [1, 2, 3]
    assert json.loads(seen[0].url.params["select_filters"]) == {"label": {"in": ["x"]}}
    assert seen[0].url.params["limit"] == "25"


def test_key_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "config"
    env = {"XDG_CONFIG_HOME": str(config)}
    with pytest.raises(errors.VastConfigError, match="VAST_API_KEY"):
        api.resolve_api_key(None, env)
    (tmp_path / ".vast_api_key").write_text("legacy\n")
    assert api.resolve_api_key(None, env) == ("legacy", str(tmp_path / ".vast_api_key"))
    (config / "vastai").mkdir(parents=True)
    (config / "vastai" / "vast_api_key").write_text("  xdg  \n")
    assert api.resolve_api_key(None, env)[0] == "xdg"
    assert api.resolve_api_key(None, {**env, "VAST_API_KEY": "envkey"}) == ("envkey", "VAST_API_KEY")
    assert api.resolve_api_key("opt", {**env, "VAST_API_KEY": "envkey"}) == ("opt", "the api_key option")


@pytest.mark.parametrize(("given", "expected"), [
    (None, "https://console.vast.ai"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ("https://console.vast.ai/api/v0", "https://console.vast.ai"),
])
def test_base_url_resolution(given: str | None, expected: str) -> None:
    assert api.resolve_base_url(given, {}) == expected


def test_base_url_from_env_and_bad_urls() -> None:
    assert api.resolve_base_url(None, {"VAST_URL": "http://sim:1"}) == "http://sim:1"
    with pytest.raises(errors.VastConfigError, match="http"):
        api.resolve_base_url("console.vast.ai", {})


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends: connections are refused


def test_an_api_that_never_answered_is_unreachable_after_the_first_contact_window() -> None:
    import time

    client = api.VastClient("k", f"http://127.0.0.1:{closed_port()}", deadline=Deadline(30), request_timeout=0.5,
                            base_backoff=0.05, max_backoff=0.1)
    started = time.monotonic()
    with pytest.raises(errors.VastUnreachable, match=r"cannot reach the Vast API at http://127\.0\.0\.1"):
        client.current_user()
    assert time.monotonic() - started < 10, "given up within the first-contact window, not at the deadline"


def test_a_destroy_waits_out_an_api_that_never_answered_to_its_deadline() -> None:
    import time

    client = api.VastClient("k", f"http://127.0.0.1:{closed_port()}", deadline=Deadline(3), request_timeout=0.5,
                            base_backoff=0.05, max_backoff=0.1)
    client.first_contact_s = None  # what vast_instance state=absent sets
    started = time.monotonic()
    with pytest.raises(errors.VastError) as raised:
        client.current_user()
    assert not isinstance(raised.value, errors.VastUnreachable)
    assert time.monotonic() - started >= 2.5, "retried until the deadline"


def test_only_an_https_api_loads_the_certificate_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain-http URL (vastsim) never makes a TLS connection, so its client skips the ~20 ms of loading the
    certificate store; an https URL (Vast itself) verifies as before."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):  # a proxy's transport has its own context
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    contexts: list[object] = []
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: contexts.append(1) or real(*a, **k))
    with api.VastClient("key", "http://127.0.0.1:9"):
        assert contexts == []
    with api.VastClient("key", "https://console.vast.ai"):
        assert contexts == [1]


def test_a_request_path_must_stay_under_the_api_url() -> None:
    """An absolute URL would leave the API's host (and, from a plain-http client, go unverified)."""
    client = api.VastClient("key", "http://127.0.0.1:9", deadline=Deadline(5))
    with client, pytest.raises(ValueError, match="relative to the API's URL"):
        client.request("GET", "https://elsewhere.example/api/v0/users/current")
    assert client.requests_sent == 0
