"""The internet as a simulated instance sees it: every well-known host answers with bytes.

Instances live in network namespaces with no route out. So that a probe of "the run's
real sources" measures something, each instance's /etc/hosts maps the usual sources
(Hugging Face, GitHub, object storage, a speed test) to the controller side of its own
link, where this tiny HTTP server answers: ``GET`` streams zeros (``?bytes=N``, default
effectively endless, with ``Range`` support), ``PUT``/``POST`` swallow the body. Traffic
crosses the instance's veth, so a ``slow_link`` fault slows it exactly as it would a real
download. Plain HTTP only: an ``https://`` URL is refused (nothing listens on 443).

A *forward* (``POST /_sim/forwards``, ``vastsim serve --forward``) turns one of those names into a
reverse proxy to a server on the controller's loopback, e.g. an S3 server a test runs as
``s3.vastsim``: every request whose Host header is that name goes there as it came (method, target,
headers with Host unchanged, since presigned URLs sign it, body streamed), and the answer comes back
the same way. Only loopback targets are accepted: tests send traffic nowhere else.

``pypi.vastsim`` is a package index: index_relay.py answers it from the controller's own configured index.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from mlops_vast.sim.index_relay import IndexRelay

INTERNET_HOSTS = (
    "huggingface.co",
    "cdn-lfs.huggingface.co",
    "cdn-lfs-us-1.hf.co",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "raw.githubusercontent.com",
    "s3.amazonaws.com",
    "storage.googleapis.com",
    "speed.cloudflare.com",
    "internet.vastsim",
    "s3.vastsim",  # an S3 server of the tests' own, once a forward names it
    "pypi.vastsim",  # the package index (index_relay.py)
)
ENDLESS = 1 << 40
CHUNK = b"\0" * 65536
MAX_HEADER_BYTES = 16384
RELAY_CHUNK = 1 << 16
RELAY_IDLE_S = 120.0  # a forwarded exchange with no byte either way for this long is dropped
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own; Transfer-Encoding stays, the body is relayed as sent.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade"})
HOSTNAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")

Forwards = Mapping[str, tuple[str, int]]


def parse_forward(name: object, to: object) -> tuple[str, tuple[str, int]]:
    """A forward's host name (lower case) and its loopback ``(host, port)``; ValueError says what is wrong."""
    if not isinstance(name, str) or not HOSTNAME.match(name.strip().lower().rstrip(".")):
        raise ValueError(f"name must be a host name such as s3.vastsim, got {name!r}")
    if not isinstance(to, str) or ":" not in to:
        raise ValueError(f"to must be HOST:PORT on the loopback, e.g. 127.0.0.1:5077, got {to!r}")
    host, _, port_text = to.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host == "localhost":
        host = "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"to must be a loopback address (127.0.0.0/8 or ::1): forwards reach the controller's "
                         f"own servers only, got {to!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"to needs a port between 1 and 65535, got {to!r}")
    return name.strip().lower().rstrip("."), (host, int(port_text))


def host_name(value: str) -> str:
    """The name of a Host header, without its port: ``S3.vastsim:80`` -> ``s3.vastsim``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.partition(":")[0].rstrip(".")


def hosts_file(base: str, address: str) -> str:
    """The machine's /etc/hosts plus the simulated internet's names at ``address``."""
    lines = [line for line in base.splitlines() if not any(name in line.split()[1:] for name in INTERNET_HOSTS)]
    return "\n".join([*lines, f"{address} {' '.join(INTERNET_HOSTS)}", ""])


async def _respond(writer: asyncio.StreamWriter, status: str, headers: dict[str, str], body_size: int) -> None:
    head = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()),
            f"Content-Length: {body_size}", "Connection: close", "", ""]
    writer.write("\r\n".join(head).encode())
    left = body_size
    while left > 0:
        chunk = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        writer.write(chunk)
        await writer.drain()
        left -= len(chunk)


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, forwards: Forwards | None = None,
                 index: IndexRelay | None = None) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if len(head) > MAX_HEADER_BYTES:
            return
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        upstream = (forwards or {}).get(host_name(headers.get("host", "")))
        if upstream is not None:
            await forward(reader, writer, request_line, header_lines, headers, upstream)
            return
        if index is not None and host_name(headers.get("host", "")) == "pypi.vastsim":
            await index.handle(method, target, headers, writer)
            return
        if method in ("PUT", "POST"):
            left = int(headers.get("content-length") or 0)
            while left > 0:
                data = await reader.read(min(left, 1 << 20))
                if not data:
                    break
                left -= len(data)
            await _respond(writer, "200 OK", {"Content-Type": "text/plain"}, 0)
            return
        if method not in ("GET", "HEAD"):
            await _respond(writer, "405 Method Not Allowed", {}, 0)
            return
        query = parse_qs(urlsplit(target).query)
        try:
            size = int(query.get("bytes", [ENDLESS])[0])
        except ValueError:
            size = ENDLESS
        size = max(0, min(size, ENDLESS))
        status, extra = "200 OK", {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        byte_range = headers.get("range", "")
        if byte_range.startswith("bytes=") and "-" in byte_range and "," not in byte_range:
            first, _, last = byte_range[6:].partition("-")
            with contextlib.suppress(ValueError):
                start = int(first)
                end = int(last) if last else size - 1
                end = min(end, size - 1)
                if 0 <= start <= end:
                    status = "206 Partial Content"
                    extra["Content-Range"] = f"bytes {start}-{end}/{size}"
                    size = end - start + 1
        await _respond(writer, status, extra, 0 if method == "HEAD" else size)
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(address: str, port: int = 80, forwards: Forwards | None = None,
                index: IndexRelay | None = None) -> asyncio.base_events.Server:
    """The simulated internet on ``address``; ``forwards`` is read at each request, so changes apply at once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(reader, writer, forwards, index)

    return await asyncio.start_server(handler, address, port, reuse_address=True)


# ---------------------------------------------------------------------- forwards


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request_line: str,
                  header_lines: list[str], headers: dict[str, str], upstream: tuple[str, int]) -> None:
    """Relay one request to ``upstream`` and its answer back; the client's connection closes after it."""
    try:
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*upstream), 10)
    except (OSError, TimeoutError):
        await _respond(writer, "502 Bad Gateway", {"Content-Type": "text/plain"}, 0)
        return
    try:
        listed = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        kept = [line for line in header_lines
                if ":" in line and line.split(":", 1)[0].strip().lower() not in HOP_BY_HOP | listed]
        # One request per upstream connection: its end is the end of the answer, whatever its framing.
        up_writer.write("\r\n".join([request_line, *kept, "Connection: close", "", ""]).encode("latin-1"))
        await up_writer.drain()
        # Both ways at once: a client sending `Expect: 100-continue` waits for the upstream's 100 first.
        answered: list[bool] = []
        body = asyncio.ensure_future(_relay_body(reader, up_writer, headers))
        answer = asyncio.ensure_future(_relay_answer(up_reader, writer, answered))
        try:
            await asyncio.wait({body, answer}, return_when=asyncio.FIRST_COMPLETED)
            if body.done() and body.exception() is not None:
                return  # the client went away mid-body: nobody waits for the answer
            await answer
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            if not answered:
                await _respond(writer, "502 Bad Gateway", {"Content-Type": "text/plain"}, 0)
        finally:
            for task in (body, answer):
                task.cancel()  # an answer before the whole body (an error): the rest is not wanted
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    finally:
        up_writer.close()
        with contextlib.suppress(Exception):
            await up_writer.wait_closed()


async def _read(reader: asyncio.StreamReader, size: int) -> bytes:
    return await asyncio.wait_for(reader.read(size), RELAY_IDLE_S)


async def _relay_body(reader: asyncio.StreamReader, up: asyncio.StreamWriter, headers: dict[str, str]) -> None:
    """The request's body, as framed by the client: chunked (relayed with its framing) or Content-Length."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), RELAY_IDLE_S)
            up.write(line)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await asyncio.wait_for(reader.readuntil(b"\r\n"), RELAY_IDLE_S)
                    up.write(trailer)
                    if trailer == b"\r\n":
                        await up.drain()
                        return
            await _copy(reader, up, size + 2)  # the chunk and its CRLF
        return
    await _copy(reader, up, int(headers.get("content-length") or 0))


async def _copy(reader: asyncio.StreamReader, up: asyncio.StreamWriter, left: int) -> None:
    while left > 0:
        data = await _read(reader, min(left, RELAY_CHUNK))
        if not data:
            raise ConnectionError("the client closed the connection mid-body")
        up.write(data)
        await up.drain()
        left -= len(data)


async def _relay_answer(up: asyncio.StreamReader, writer: asyncio.StreamWriter, answered: list[bool]) -> None:
    """Interim answers (100 Continue) as they come, then the final one with Connection: close, then its body
    until the upstream closes. ``answered`` gets an entry once the client heard something."""
    while True:
        head = await asyncio.wait_for(up.readuntil(b"\r\n\r\n"), RELAY_IDLE_S)
        answered.append(True)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        interim = len(parts) > 1 and parts[1].startswith("1") and parts[1] != "101"
        if interim:
            writer.write(head)
            await writer.drain()
            continue
        kept = [line for line in lines if ":" in line and line.split(":", 1)[0].strip().lower() not in HOP_BY_HOP]
        writer.write("\r\n".join([status_line, *kept, "Connection: close", "", ""]).encode("latin-1"))
        await writer.drain()
        break
    while data := await _read(up, RELAY_CHUNK):
        writer.write(data)
        await writer.drain()
