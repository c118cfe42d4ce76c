"""The simulated internet's package index (pypi.vastsim) against a real index server on the loopback."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from mlops_vast.sim import internet
from mlops_vast.sim.index_relay import JSON_TYPE, IndexRelay, configured_index_url

WHEEL = b"PK\x03\x04 not really a wheel, but bytes that must arrive whole" * 100


def answer(handler: http.server.BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Upstream(http.server.BaseHTTPRequestHandler):
    """A PEP 503/691 index with one project, `tinydep`, counting what it is asked."""

    hits: ClassVar[list[str]] = []
    down = False

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.down:
            self.send_error(503)
            return
        if self.path == "/simple/tinydep/":
            if JSON_TYPE in self.headers.get("Accept", ""):
                body = json.dumps({"meta": {"api-version": "1.0"}, "name": "tinydep", "files": [
                    {"filename": "tinydep-1.0-py3-none-any.whl", "hashes": {"sha256": "ab"},
                     "url": "../../packages/tinydep-1.0-py3-none-any.whl#sha256=ab"}]}).encode()
                content_type = JSON_TYPE
            else:
                body = (b'<html><body><a href="/packages/tinydep-1.0-py3-none-any.whl#sha256=ab">'
                        b"tinydep-1.0-py3-none-any.whl</a></body></html>")
                content_type = "text/html"
        elif self.path == "/packages/tinydep-1.0-py3-none-any.whl":
            body, content_type = WHEEL, "application/octet-stream"
        else:
            self.send_error(404)
            return
        answer(self, body, content_type)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    Upstream.hits, Upstream.down = [], False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://user:secret@127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def exchange(relay: IndexRelay, *requests: tuple[str, str]) -> list[httpx.Response]:
    """Each (path, accept) asked of the simulated internet as an instance would, Host: pypi.vastsim."""

    async def run() -> list[httpx.Response]:
        server = await internet.serve("127.0.0.1", 0, index=relay)
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                return [await client.get(path, headers={"Host": "pypi.vastsim", "Accept": accept})
                        for path, accept in requests]
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def local_path(link: str) -> str:
    assert link.startswith("http://pypi.vastsim/files/"), link
    return link.removeprefix("http://pypi.vastsim").partition("#")[0]


def test_json_page_links_point_at_the_relay_and_files_are_fetched_once(upstream: str, tmp_path: Path) -> None:
    relay = IndexRelay(upstream, tmp_path / "cache")
    page, = exchange(relay, ("/simple/TinyDep", JSON_TYPE))
    assert page.status_code == 200 and page.headers["content-type"] == JSON_TYPE
    entry = page.json()["files"][0]
    assert entry["url"].endswith("/tinydep-1.0-py3-none-any.whl#sha256=ab")
    assert "secret" not in page.text and "127.0.0.1" not in page.text
    first, second = exchange(relay, *[(local_path(entry["url"]), "*/*")] * 2)
    assert first.content == WHEEL and second.content == WHEEL
    assert Upstream.hits.count("/packages/tinydep-1.0-py3-none-any.whl") == 1  # the second came from the cache


def test_html_page_is_rewritten_and_served_stale_when_the_index_is_down(upstream: str, tmp_path: Path) -> None:
    relay = IndexRelay(upstream, tmp_path / "cache", page_ttl_s=0)
    page, = exchange(relay, ("/simple/tinydep/", "text/html"))
    assert 'href="http://pypi.vastsim/files/' in page.text and "/packages/" not in page.text
    Upstream.down = True
    again, = exchange(relay, ("/simple/tinydep/", "text/html"))
    assert again.status_code == 200 and again.text == page.text
    assert Upstream.hits.count("/simple/tinydep/") == 2  # it did ask, and fell back on the cache


def test_unknown_projects_links_and_paths_are_refused(upstream: str, tmp_path: Path) -> None:
    relay = IndexRelay(upstream, tmp_path / "cache")
    missing, unseen, other = exchange(relay, ("/simple/nosuch/", "text/html"),
                                      ("/files/" + "0" * 32 + "/x.whl", "*/*"), ("/etc/passwd", "*/*"))
    assert missing.status_code == 404 and "nosuch" in missing.text
    assert unseen.status_code == 404 and "no link" in unseen.text
    assert other.status_code == 404 and "/simple/<project>/" in other.text
    assert not any(hit.startswith("/files") or hit == "/etc/passwd" for hit in Upstream.hits)


def test_an_index_that_cannot_be_reached_is_a_clear_502(tmp_path: Path) -> None:
    relay = IndexRelay("http://127.0.0.1:9/simple", tmp_path / "cache")
    answer, = exchange(relay, ("/simple/numpy/", JSON_TYPE))
    assert answer.status_code == 502 and "could not get this from 127.0.0.1" in answer.text


def test_the_controllers_configured_index_is_found_in_pips_order(tmp_path: Path) -> None:
    assert configured_index_url({"UV_INDEX_URL": "https://mirror.example/simple"}, tmp_path) == \
        "https://mirror.example/simple"
    assert configured_index_url({}, tmp_path).startswith("https://")  # pip's default or this machine's pip.conf
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://corp.example/pypi/simple\n")
    assert configured_index_url({"PIP_CONFIG_FILE": str(conf)}, tmp_path) == "https://corp.example/pypi/simple"
    assert configured_index_url({"PIP_CONFIG_FILE": str(conf), "PIP_INDEX_URL": "http://a/simple"}, tmp_path) == \
        "http://a/simple"


class Recorder(http.server.BaseHTTPRequestHandler):
    """Records the Authorization each request carried; `/go/<file>` redirects to `Recorder.redirect_to`."""

    seen: ClassVar[list[tuple[int, str, str | None]]] = []
    redirect_to = ""

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        type(self).seen.append((port, self.path, self.headers.get("Authorization")))
        if self.path == "/simple/tinydep/":
            body, content_type = (b'<a href="/go/tinydep-1.0-py3-none-any.whl">tinydep-1.0-py3-none-any.whl</a>',
                                  "text/html")
        elif self.path.startswith("/go/"):
            self.send_response(302)
            self.send_header("Location", self.redirect_to + self.path.removeprefix("/go/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        elif self.path.endswith(".whl"):
            body, content_type = WHEEL, "application/octet-stream"
        else:
            self.send_error(404)
            return
        answer(self, body, content_type)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("same_origin", [False, True])
def test_credentials_do_not_follow_a_redirect_to_another_host(tmp_path: Path, same_origin: bool) -> None:
    Recorder.seen = []
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder) for _ in range(2)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    index_port, cdn_port = (server.server_address[1] for server in servers)
    Recorder.redirect_to = f"http://127.0.0.1:{index_port if same_origin else cdn_port}/files/"
    try:
        relay = IndexRelay(f"http://user:secret@127.0.0.1:{index_port}/simple/", tmp_path / "cache")
        page, = exchange(relay, ("/simple/tinydep/", "text/html"))
        link = page.text.split('href="', 1)[1].split('"', 1)[0]
        wheel, = exchange(relay, (local_path(link), "*/*"))
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert wheel.status_code == 200 and wheel.content == WHEEL
    by_path = {(port, path): auth for port, path, auth in Recorder.seen}
    assert by_path[(index_port, "/simple/tinydep/")] and by_path[(index_port, "/go/tinydep-1.0-py3-none-any.whl")]
    landed = (index_port if same_origin else cdn_port, "/files/tinydep-1.0-py3-none-any.whl")
    assert landed in by_path, Recorder.seen
    # the index's own host keeps its credentials; another one (a CDN on another port) never sees them
    assert (by_path[landed] is not None) == same_origin
