"""bandwidth_probe's main() against local HTTP servers on 127.0.0.1 that these tests start and stop.

One threaded stdlib server answers every route (bytes served fast or paced in Python to a set rate per
connection, with or without Range support; 404; 500; redirects; a body cut short; an upload sink), plus
a socket that accepts connections and never answers, a port nobody listens on, and a name under
``.invalid`` that never resolves. No traffic leaves the machine: the default neutral endpoint is turned
off in every test that transfers anything.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.mlops.vast.plugins.modules import bandwidth_probe

BLOCK = bytes(range(256)) * 1024  # 256 KiB


class Handler(BaseHTTPRequestHandler):
    server: Server
    timeout = 30  # a handler whose client vanished gives up instead of blocking the server's shutdown

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.seen.append({"method": "GET", "path": self.path, "range": self.headers.get("Range"),
                                 "authorization": self.headers.get("Authorization"),
                                 "x_other": self.headers.get("X-Other")})
        route = parts.path
        if route.startswith("/status/"):
            code = int(route.rsplit("/", 1)[1])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(BLOCK[:100000])
        elif route in ("/bytes", "/norange"):
            self.serve_bytes(int(query.get("size", 10**9)), float(query.get("rate", 0)), route == "/bytes")
        else:
            self.send_error(404)

    def serve_bytes(self, size: int, rate: float, ranges: bool) -> None:
        start, end = 0, size - 1
        wanted = self.headers.get("Range", "")
        if ranges and wanted.startswith("bytes="):
            first, _, last = wanted[len("bytes="):].partition("-")
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        if ranges:
            self.send_header("Accept-Ranges", "bytes")
        length = end - start + 1
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.send_paced(length, rate)

    def send_paced(self, length: int, rate: float) -> None:
        """Send `length` bytes, at most `rate` bytes/s when rate > 0 (a token bucket in Python)."""
        chunk = len(BLOCK) if rate <= 0 else max(1000, int(rate / 100))
        began = time.monotonic()
        sent = 0
        try:
            for _ in range(length // chunk + 2):
                if sent >= length:
                    break
                if rate > 0:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(min(ahead, 0.1))
                piece = min(chunk, length - sent)
                self.wfile.write(BLOCK[:piece])
                sent += piece
        except OSError:
            pass  # the probe stopped reading (max_bytes/max_seconds) and closed the connection

    def do_PUT(self) -> None:
        self.sink()

    def do_POST(self) -> None:
        self.sink()

    def sink(self) -> None:
        """Read and discard the body (paced when ?rate= is given), then answer with the count."""
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        rate = float(query.get("rate", 0))
        length = int(self.headers.get("Content-Length", "0"))
        record = {"method": self.command, "path": self.path, "length": length, "received": 0}
        self.server.seen.append(record)
        if parts.path.startswith("/status/"):
            code = int(parts.path.rsplit("/", 1)[1])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        began = time.monotonic()
        chunk = 65536 if rate <= 0 else max(1000, int(rate / 100))
        try:
            for _ in range(length // chunk + 2):
                if record["received"] >= length:
                    break
                if rate > 0:
                    ahead = record["received"] / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(min(ahead, 0.1))
                data = self.rfile.read(min(chunk, length - record["received"]))
                if not data:
                    return  # cut short by the probe's max_seconds
                record["received"] += len(data)
            body = json.dumps({"received": record["received"]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), Handler)
        self.seen: list[dict] = []


@dataclass
class Servers:
    http: Server
    blackhole: socket.socket
    refused_port: int
    https: Server | None = None
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    @property
    def blackhole_url(self) -> str:
        return f"http://127.0.0.1:{self.blackhole.getsockname()[1]}/never"

    @property
    def refused_url(self) -> str:
        return f"http://127.0.0.1:{self.refused_port}/nobody"


def _serve(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


def _self_signed(directory: Path) -> Path | None:
    pem = directory / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pem), "-out", str(pem),
               "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return pem


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    http_server = Server()
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)  # the kernel completes handshakes; nobody ever accepts or answers
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    refused_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused
    found = Servers(http=http_server, blackhole=blackhole, refused_port=refused_port)
    found.threads.append(_serve(http_server))
    pem = _self_signed(tmp_path_factory.mktemp("tls"))
    if pem is not None:
        https_server = Server()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem)
        https_server.socket = context.wrap_socket(https_server.socket, server_side=True)
        found.https = https_server
        found.threads.append(_serve(https_server))
    try:
        yield found
    finally:
        for server in (found.http, found.https):
            if server is not None:
                server.shutdown()
                server.server_close()
        blackhole.close()
        for thread in found.threads:
            thread.join(10)
        assert not any(t.is_alive() for t in found.threads), "a test server did not stop"
        assert not [t for t in threading.enumerate() if t.name.startswith("bandwidth-probe-")], \
            "the module left a stream thread running"


def run(capsys: pytest.CaptureFixture[str], args: dict[str, Any], *, check: bool = False) -> dict[str, Any]:
    """main() with these arguments; returns the module's JSON result (``failed`` set when it failed)."""
    module_args = {"neutral_endpoint": False, **args}
    if check:
        module_args["_ansible_check_mode"] = True
    capsys.readouterr()
    with patch_module_args(module_args), pytest.raises(SystemExit):
        bandwidth_probe.main()
    out = capsys.readouterr().out
    assert "Traceback" not in out
    return json.loads(out)


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in result["results"]}


def test_fast_download_stops_at_max_bytes(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, {"endpoints": [{"name": "fast", "url": f"{servers.url}/bytes?size=200000000"}],
                          "max_bytes": 5_000_000, "max_seconds": 10})
    assert not result.get("failed"), result["msg"]
    fast = by_name(result)["fast"]
    assert fast["bytes"] == 5_000_000 and fast["stopped_by"] == "max_bytes"
    assert fast["ok"] is True and fast["status"] == 200 and fast["error"] is None
    assert fast["mbps"] > 20 and fast["mbit_per_s"] == pytest.approx(fast["mbps"] * 8, rel=1e-3)
    assert fast["connect_seconds"] is not None and fast["ttfb_seconds"] >= fast["connect_seconds"]
    assert result["changed"] is False and result["rates"] == {"fast": fast["mbps"]}
    assert result["failed_endpoints"] == []


def test_rate_limited_download_is_measured_within_tolerance(servers: Servers,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rate = 300_000
    result = run(capsys, {"endpoints": [{"name": "slow", "url": f"{servers.url}/bytes?size=50000000&rate={rate}"}],
                          "max_seconds": 2})
    slow = by_name(result)["slow"]
    assert slow["stopped_by"] == "max_seconds"
    assert slow["seconds"] == pytest.approx(2.0, abs=0.25)
    assert slow["mbps"] == pytest.approx(rate / 1e6, rel=0.15)
    assert slow["bytes"] == pytest.approx(rate * 2, rel=0.15)


def test_max_seconds_bounds_an_unpaced_download(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    result = run(capsys, {"endpoints": [{"name": "huge", "url": f"{servers.url}/bytes?size=100000000000"}],
                          "max_bytes": 10**11, "max_seconds": 0.5})
    huge = by_name(result)["huge"]
    assert huge["stopped_by"] == "max_seconds" and huge["seconds"] == pytest.approx(0.5, abs=0.2)
    assert 0 < huge["bytes"] < 10**11
    assert time.monotonic() - started < 5


def test_every_error_kind_is_reported_per_endpoint(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    endpoints = [
        {"name": "missing", "url": f"{servers.url}/status/404"},
        {"name": "broken", "url": f"{servers.url}/status/500"},
        {"name": "silent", "url": servers.blackhole_url},
        {"name": "nowhere", "url": "http://nonexistent.invalid/file"},
        {"name": "closed", "url": servers.refused_url},
        {"name": "short", "url": f"{servers.url}/short"},
        {"name": "good", "url": f"{servers.url}/bytes?size=1000000"},
    ]
    started = time.monotonic()
    result = run(capsys, {"endpoints": endpoints, "timeout": 1})
    assert time.monotonic() - started < 15
    assert result["failed"] is True
    found = by_name(result)
    expected = {
        "missing": ("http", 404, "HTTP 404 Not Found"),
        "broken": ("http", 500, "HTTP 500 Internal Server Error"),
        "silent": ("timeout", None, "timed out after 1s waiting for the response of 127.0.0.1:"),
        "nowhere": ("dns", None, "DNS resolution failed for nonexistent.invalid"),
        "closed": ("refused", None, f"connection refused by 127.0.0.1:{servers.refused_port}"),
        "short": ("incomplete", 200, "closed the connection after 100000 bytes, 900000 bytes short"),
    }
    for name, (kind, status, text) in expected.items():
        row = found[name]
        assert row["ok"] is False and row["error_kind"] == kind, row
        assert row["status"] == status and text in row["error"], row
    assert found["good"]["ok"] is True and found["good"]["bytes"] == 1_000_000
    assert sorted(result["failed_endpoints"]) == sorted(expected)
    for name in expected:
        assert f"{name}: " in result["msg"]
    assert "good" not in result["failed_endpoints"] and "good:" not in result["msg"]
    assert result["msg"].startswith("6 required endpoint(s) too slow or unreachable")
    assert len({found[name]["error"] for name in expected}) == len(expected)


def test_optional_endpoints_never_fail_the_module(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, {
        "endpoints": [
            {"name": "source", "url": f"{servers.url}/bytes?size=2000000"},
            {"name": "mirror", "url": f"{servers.url}/status/404", "required": False},
            {"name": "slow-extra", "url": f"{servers.url}/bytes?size=5000000&rate=300000", "required": False,
             "min_mbps": 5, "max_seconds": 1},
        ],
        "min_mbps": 1,
    })
    assert not result.get("failed"), result["msg"]
    found = by_name(result)
    assert found["source"]["ok"] is True and found["source"]["min_mbps"] == 1
    assert found["mirror"]["ok"] is False and found["mirror"]["error_kind"] == "http"
    assert found["slow-extra"]["ok"] is False and found["slow-extra"]["error"] is None
    assert found["slow-extra"]["min_mbps"] == 5 and found["slow-extra"]["mbps"] < 1
    assert result["failed_endpoints"] == []


def test_one_failure_names_every_bad_required_endpoint(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, {
        "endpoints": [
            {"name": "fast", "url": f"{servers.url}/bytes?size=20000000"},
            {"name": "slow", "url": f"{servers.url}/bytes?size=5000000&rate=300000", "max_seconds": 1.5},
            {"name": "gone", "url": f"{servers.url}/status/404"},
            {"name": "unnamed", "url": "http://nonexistent.invalid/"},
            {"name": "pickier", "url": f"{servers.url}/bytes?size=20000000", "min_mbps": 1e9},
        ],
        "min_mbps": 1,
        "timeout": 2,
    })
    assert result["failed"] is True
    assert result["failed_endpoints"] == ["slow", "gone", "unnamed", "pickier"]
    slow = by_name(result)["slow"]
    assert slow["mbps"] == pytest.approx(0.3, rel=0.2)
    message = result["msg"]
    assert message.startswith("4 required endpoint(s) too slow or unreachable: ")
    assert f"slow: {slow['mbps']:.3f} MB/s < 1 MB/s ({slow['bytes']} bytes in" in message
    assert "gone: HTTP 404 Not Found" in message and "unnamed: DNS resolution failed" in message
    assert "pickier: " in message and "< 1e+09 MB/s" in message
    assert "fast:" not in message
    assert by_name(result)["fast"]["ok"] is True


def test_streams_split_the_file_with_ranges_and_aggregate(servers: Servers,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    before = len(servers.http.seen)
    rate = 300_000  # per connection
    url = f"{servers.url}/bytes?size=2000000&rate={rate}"
    result = run(capsys, {"endpoints": [{"name": "parts", "url": url}], "streams": 4, "max_seconds": 10})
    parts = by_name(result)["parts"]
    assert parts["ranged"] is True and parts["streams"] == 4 and parts["status"] == 206
    assert parts["bytes"] == 2_000_000 and parts["error"] is None
    # Four paced connections at once: about four times one connection's rate.
    assert parts["mbps"] == pytest.approx(4 * rate / 1e6, rel=0.25)
    assert len(parts["stream_details"]) == 4
    assert all(s["bytes"] == 500_000 for s in parts["stream_details"])
    ranges = sorted(r["range"] for r in servers.http.seen[before:])
    assert ranges == sorted(["bytes=0-0", "bytes=0-499999", "bytes=500000-999999", "bytes=1000000-1499999",
                             "bytes=1500000-1999999"])


def test_streams_share_max_bytes(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, {"endpoints": [{"name": "big", "url": f"{servers.url}/bytes?size=1000000000"}],
                          "streams": 4, "max_bytes": 20_000_000})
    big = by_name(result)["big"]
    assert big["ranged"] is True and big["bytes"] == 20_000_000 and big["stopped_by"] == "max_bytes"
    assert big["mbps"] > 20


def test_streams_without_range_support_read_whole_bodies(servers: Servers,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = len(servers.http.seen)
    url = f"{servers.url}/norange?size=1000000000&rate=300000"
    result = run(capsys, {"endpoints": [{"name": "plain", "url": url}], "streams": 3, "max_seconds": 1.5})
    plain = by_name(result)["plain"]
    assert plain["ranged"] is False and plain["status"] == 200 and plain["error"] is None
    assert plain["stopped_by"] == "max_seconds" and plain["seconds"] == pytest.approx(1.5, abs=0.3)
    assert plain["mbps"] == pytest.approx(3 * 0.3, rel=0.25)
    seen = servers.http.seen[before:]
    assert [r["range"] for r in seen] == ["bytes=0-0", None, None, None]


def test_upload_to_a_sink_has_its_own_rate(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(servers.http.seen)
    result = run(capsys, {"upload": {"url": f"{servers.url}/sink?rate=300000", "bytes": 600_000}})
    upload = by_name(result)["upload"]
    assert upload["direction"] == "upload" and upload["complete"] is True and upload["status"] == 200
    assert upload["bytes"] == 600_000 and upload["stopped_by"] == "complete"
    assert upload["mbps"] == pytest.approx(0.3, rel=0.2)
    assert servers.http.seen[before]["method"] == "PUT" and servers.http.seen[before]["received"] == 600_000

    fast = run(capsys, {"upload": {"url": f"{servers.url}/sink", "bytes": 20_000_000, "method": "POST",
                                   "min_mbps": 5}})
    assert not fast.get("failed"), fast["msg"]
    assert by_name(fast)["upload"]["mbps"] > 20 and servers.http.seen[-1]["method"] == "POST"


def test_upload_is_cut_short_at_max_seconds_and_errors_are_reported(servers: Servers,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    result = run(capsys, {"upload": {"url": f"{servers.url}/sink?rate=300000", "bytes": 500_000_000,
                                     "max_seconds": 1}})
    upload = by_name(result)["upload"]
    assert upload["complete"] is False and upload["stopped_by"] == "max_seconds"
    assert upload["seconds"] == pytest.approx(1.0, abs=0.3) and 0 < upload["bytes"] < 500_000_000
    assert not result.get("failed")

    refused = run(capsys, {"upload": {"url": f"{servers.url}/status/403", "bytes": 1000}})
    assert refused["failed"] is True and refused["failed_endpoints"] == ["upload"]
    assert by_name(refused)["upload"]["error"] == "HTTP 403 Forbidden"


def test_redirects_are_followed_for_http_only_and_drop_credentials_across_hosts(
        servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    port = servers.http.server_address[1]
    target = f"http://localhost:{port}/bytes?size=1000000"
    before = len(servers.http.seen)
    result = run(capsys, {"endpoints": [
        {"name": "moved", "url": f"{servers.url}/redirect?to={target}",
         "headers": {"Authorization": "Bearer sekrit-token-123", "X-Other": "kept"}},
        {"name": "ftp", "url": f"{servers.url}/redirect?to=ftp://127.0.0.1/file"},
        {"name": "file", "url": f"{servers.url}/redirect?to=file:///etc/passwd"},
    ]})
    found = by_name(result)
    assert found["moved"]["ok"] is True and found["moved"]["final_url"] == target
    first, second = servers.http.seen[before:before + 2]
    assert first["authorization"] == "Bearer sekrit-token-123" and second["authorization"] is None
    assert second["x_other"] == "kept"
    for name, scheme in (("ftp", "ftp://"), ("file", "file://")):
        assert found[name]["error_kind"] == "redirect" and found[name]["status"] == 302
        assert f"redirect to a non-http(s) URL refused: {scheme}" in found[name]["error"]
    assert result["failed_endpoints"] == ["ftp", "file"]
    assert "sekrit-token-123" not in json.dumps(result)


def test_https_honours_validate_certs(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    if servers.https is None:
        pytest.skip("openssl could not make a test certificate")
    url = f"https://127.0.0.1:{servers.https.server_address[1]}/bytes?size=3000000"
    strict = run(capsys, {"endpoints": [{"name": "tls", "url": url}]})
    row = by_name(strict)["tls"]
    assert strict["failed"] is True and row["error_kind"] == "tls" and "not trusted" in row["error"]
    relaxed = run(capsys, {"endpoints": [{"name": "tls", "url": url}], "validate_certs": False})
    assert not relaxed.get("failed"), relaxed["msg"]
    assert by_name(relaxed)["tls"]["bytes"] == 3_000_000


def test_check_mode_transfers_nothing(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(servers.http.seen)
    args = {"endpoints": [{"name": "src", "url": f"{servers.url}/bytes"}], "min_mbps": 2,
            "upload": {"url": f"{servers.url}/sink"}}
    args.pop("neutral_endpoint", None)
    module_args = {**args, "_ansible_check_mode": True}
    capsys.readouterr()
    with patch_module_args(module_args), pytest.raises(SystemExit):
        bandwidth_probe.main()
    result = json.loads(capsys.readouterr().out)
    assert result["changed"] is False and result["results"] == [] and not result.get("failed")
    probes = {p["name"]: p for p in result["probes"]}
    assert list(probes) == ["src", "neutral", "upload"]
    assert probes["src"]["min_mbps"] == 2 and probes["src"]["max_bytes"] == 64_000_000
    assert probes["neutral"]["required"] is False and probes["neutral"]["min_mbps"] is None
    assert probes["neutral"]["url"] == bandwidth_probe.DEFAULT_NEUTRAL
    assert probes["upload"]["method"] == "PUT" and probes["upload"]["bytes"] == 16_000_000
    assert len(servers.http.seen) == before


@pytest.mark.parametrize(("args", "words"), [
    ({"endpoints": [{"url": "ftp://example.com/x"}]}, "only http:// and https:// URLs"),
    ({"endpoints": [{"name": "a", "url": "http://127.0.0.1/"}, {"name": "a", "url": "http://127.0.0.1/"}]},
     "repeated: a"),
    ({"endpoints": [{"url": "http://127.0.0.1/", "streams": 0}]}, "streams must be above 0"),
    ({"neutral_endpoint": {"url": "http://127.0.0.1/", "bogus": 1}}, "bogus"),
    ({"neutral_endpoint": ""}, "nothing to probe"),
    ({"endpoints": [{"url": "http://127.0.0.1/"}], "min_mbps": -1}, "min_mbps must not be negative"),
])
def test_bad_arguments_fail_before_any_transfer(servers: Servers, capsys: pytest.CaptureFixture[str],
                                                args: dict, words: str) -> None:
    before = len(servers.http.seen)
    result = run(capsys, args)
    assert result["failed"] is True and words in result["msg"], result["msg"]
    assert len(servers.http.seen) == before


def test_neutral_endpoint_as_url_or_dict(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    as_url = run(capsys, {"neutral_endpoint": f"{servers.url}/status/404"})
    assert not as_url.get("failed"), "the neutral endpoint is optional by default"
    assert by_name(as_url)["neutral"]["error_kind"] == "http"
    as_dict = run(capsys, {"neutral_endpoint": {"url": f"{servers.url}/status/404", "required": True}})
    assert as_dict["failed"] is True and as_dict["failed_endpoints"] == ["neutral"]
