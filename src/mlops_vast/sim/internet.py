"""The internet as a simulated instance sees it: every well-known host answers with bytes.

Instances live in network namespaces with no route out. So that a probe of "the run's
real sources" measures something, each instance's /etc/hosts maps the usual sources
(Hugging Face, GitHub, object storage, a speed test) to the controller side of its own
link, where this tiny HTTP server answers: ``GET`` streams zeros (``?bytes=N``, default
effectively endless, with ``Range`` support), ``PUT``/``POST`` swallow the body. Traffic
crosses the instance's veth, so a ``slow_link`` fault slows it exactly as it would a real
download. Plain HTTP only: an ``https://`` URL is refused (nothing listens on 443).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit

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
)
ENDLESS = 1 << 40
CHUNK = b"\0" * 65536
MAX_HEADER_BYTES = 16384


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


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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


async def serve(address: str, port: int = 80) -> asyncio.base_events.Server:
    return await asyncio.start_server(handle, address, port, reuse_address=True)
