"""A package index for instances, which have no internet: ``pypi.vastsim`` relays to the controller's own index.

An instance's ``uv`` (or pip) asks ``http://pypi.vastsim/simple/<project>/``; the simulated internet (internet.py)
hands the request here, on the controller side of the instance's link. The page is fetched from the index the
controller itself is configured with (UV_DEFAULT_INDEX, UV_INDEX_URL, PIP_INDEX_URL, pip.conf's index-url,
else https://pypi.org/simple): the controller may reach package registries, instances may not. Every file link
on the page (PEP 503 HTML or PEP 691 JSON) is rewritten to ``http://pypi.vastsim/files/<hash>/<filename>``, and
such a file is downloaded once into the cache and then sent to the instance across its veth, so a
``slow_link`` fault slows an install exactly as a slow host's link would.

Plain HTTP only (nothing listens on 443 in the simulated internet): the setup role points uv at
``http://pypi.vastsim/simple`` when the host resolves that name. Only links seen on a page can be fetched
(their upstream URL is kept under the hash), so an instance cannot make the controller fetch anything else;
credentials in the upstream URL are used for the index's own host and never appear in a rewritten page, nor
follow a redirect to another host (a private index sending downloads to a CDN).
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import contextlib
import hashlib
import html
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.client import HTTPMessage
from pathlib import Path
from typing import IO
from urllib.parse import urljoin, urlsplit, urlunsplit

log = logging.getLogger(__name__)

INDEX_HOST = "pypi.vastsim"
DEFAULT_INDEX = "https://pypi.org/simple"
PAGE_TTL_S = 600.0  # a page younger than this is served from the cache; an older one when the index is down
FETCH_TIMEOUT_S = 60.0
SEND_CHUNK = 1 << 16
JSON_TYPE = "application/vnd.pypi.simple.v1+json"
HREF = re.compile(r'href="([^"]*)"', re.IGNORECASE)
PROJECT = re.compile(r"^/simple/([A-Za-z0-9._-]+)/?$")
FILE = re.compile(r"^/files/([0-9a-f]{32})/([^/?#]+)$")


def configured_index_url(env: Mapping[str, str] | None = None, home: Path | None = None) -> str:
    """The index this controller's pip/uv would use: the environment first, then pip.conf (pip's order)."""
    env = os.environ if env is None else env
    for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL"):
        if env.get(name, "").strip():
            return env[name].strip().split()[0]
    home = Path(env.get("HOME", "~")).expanduser() if home is None else home
    files = [Path("/etc/pip.conf"), home / ".pip/pip.conf", home / ".config/pip/pip.conf"]
    if env.get("PIP_CONFIG_FILE"):
        files.append(Path(env["PIP_CONFIG_FILE"]))
    found = DEFAULT_INDEX
    for path in files:  # later files override earlier ones, as in pip
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
            for section in ("global", "install", "download"):
                value = parser.get(section, "index-url", fallback="").strip()
                if value:
                    found = value.split()[0]
                    break
    return found


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vastsim" / "index"


def url_key(url: str) -> str:
    return hashlib.sha256(url.partition("#")[0].encode()).hexdigest()[:32]


def _without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``https://u:p@host/x`` -> ``("https://host/x", {"Authorization": "Basic ..."})``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, host = parts.netloc.rpartition("@")
    token = base64.b64encode(urllib.request.unquote(userinfo).encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


class _AuthStaysHome(urllib.request.HTTPRedirectHandler):
    """Drops Authorization on a redirect to another origin (a private index handing downloads to a CDN or S3).

    urllib copies every header to the redirect target; the index's credentials are for the index alone.
    """

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


class IndexRelay:
    """``handle()`` answers one request for ``pypi.vastsim``; pages and files are cached under ``cache_dir``."""

    def __init__(self, upstream: str, cache_dir: Path, page_ttl_s: float = PAGE_TTL_S) -> None:
        self.upstream, self._auth = _without_credentials(upstream.rstrip("/"))
        self.upstream_host = urlsplit(self.upstream).hostname or ""
        self.cache_dir = cache_dir
        self.page_ttl_s = page_ttl_s
        self._locks: dict[str, asyncio.Lock] = {}
        self._opener = urllib.request.build_opener(_AuthStaysHome)

    # ------------------------------------------------------------------ requests

    async def handle(self, method: str, target: str, headers: Mapping[str, str],
                     writer: asyncio.StreamWriter) -> None:
        path = urlsplit(target).path
        if method not in ("GET", "HEAD"):
            await _send(writer, "405 Method Not Allowed", "text/plain", b"the package index is read-only\n")
            return
        try:
            if project := PROJECT.match(path):
                body, content_type = await self.page(project.group(1), headers.get("accept", ""))
                await _send(writer, "200 OK", content_type, b"" if method == "HEAD" else body, len(body))
            elif file := FILE.match(path):
                cached = await self.file(file.group(1), file.group(2))
                await _send_file(writer, cached, head=method == "HEAD")
            else:
                await _send(writer, "404 Not Found", "text/plain",
                            f"{INDEX_HOST} serves /simple/<project>/ and the files it links to\n".encode())
        except FileNotFoundError as exc:
            await _send(writer, "404 Not Found", "text/plain", f"{exc}\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            log.debug("package index relay: %s went away mid-answer", path)  # uv drops a download it no longer needs
        except (OSError, ValueError) as exc:
            log.warning("package index relay: %s", exc)
            await _send(writer, "502 Bad Gateway", "text/plain",
                        f"vastsim could not get this from {self.upstream_host}: {exc}\n".encode())

    # ------------------------------------------------------------------ pages

    async def page(self, project: str, accept: str) -> tuple[bytes, str]:
        """The project's page with its links rewritten (cached for ``page_ttl_s``; stale when the index fails)."""
        name = re.sub(r"[-_.]+", "-", project).lower()  # PEP 503 normalisation
        wants_json = JSON_TYPE in accept
        page_url = f"{self.upstream}/{name}/"
        cached = self.cache_dir / "pages" / f"{name}.{'json' if wants_json else 'html'}"
        async with self._lock(str(cached)):
            with contextlib.suppress(OSError):
                if time.time() - cached.stat().st_mtime < self.page_ttl_s:
                    return _read_page(cached)
            try:
                body, content_type, final_url = await asyncio.to_thread(
                    self._fetch, page_url, JSON_TYPE if wants_json else "text/html")
            except OSError as exc:  # HTTPError too
                if isinstance(exc, urllib.error.HTTPError) and exc.code == 404:
                    raise FileNotFoundError(f"no project {name!r} on {self.upstream_host}") from None
                if cached.exists():
                    log.warning("package index relay: %s unreachable (%s), serving the cached page of %s",
                                self.upstream_host, exc, name)
                    return _read_page(cached)
                if isinstance(exc, urllib.error.HTTPError):
                    raise OSError(f"{self.upstream_host} answered {exc.code} for {name!r}") from None
                raise
            rewritten = self._rewrite(body, content_type, final_url)
            _write_atomic(cached, json.dumps({"content_type": content_type}).encode() + b"\n" + rewritten)
            return rewritten, content_type

    def _rewrite(self, body: bytes, content_type: str, page_url: str) -> bytes:
        if "json" in content_type:
            data = json.loads(body)
            for entry in data.get("files", []):
                entry["url"] = self._local_link(urljoin(page_url, entry["url"]))
            return json.dumps(data).encode()
        text = body.decode("utf-8", errors="replace")
        return HREF.sub(lambda m: 'href="' + html.escape(
            self._local_link(urljoin(page_url, html.unescape(m.group(1))))) + '"', text).encode()

    def _local_link(self, url: str) -> str:
        """``http://pypi.vastsim/files/<hash>/<filename>#<fragment>``; the upstream URL is kept under the hash."""
        bare, _, fragment = url.partition("#")
        key = url_key(bare)
        record = self.cache_dir / "urls" / key
        if not record.exists():
            _write_atomic(record, bare.encode())
        filename = urlsplit(bare).path.rsplit("/", 1)[-1] or "file"
        return f"http://{INDEX_HOST}/files/{key}/{filename}" + (f"#{fragment}" if fragment else "")

    # ------------------------------------------------------------------ files

    async def file(self, key: str, filename: str) -> Path:
        """The file (or its PEP 658 ``.metadata``) from the cache, downloaded first when missing."""
        try:
            url = (self.cache_dir / "urls" / key).read_text()
        except OSError:
            raise FileNotFoundError(f"no link {key} was served on a page of {INDEX_HOST}") from None
        linked = urlsplit(url).path.rsplit("/", 1)[-1]
        if filename == f"{linked}.metadata":
            url += ".metadata"
        elif filename != linked:
            raise FileNotFoundError(f"link {key} is {linked}, not {filename}")
        cached = self.cache_dir / "files" / key / filename
        async with self._lock(str(cached)):
            if not cached.exists():
                started = time.monotonic()
                try:
                    body, _type, _url = await asyncio.to_thread(self._fetch, url, "*/*")
                except urllib.error.HTTPError as exc:
                    if exc.code == 404:
                        raise FileNotFoundError(f"{filename} is not on {urlsplit(url).hostname}") from None
                    raise OSError(f"{urlsplit(url).hostname} answered {exc.code} for {filename}") from None
                _write_atomic(cached, body)
                log.info("package index relay: fetched %s (%d bytes) in %.1fs", filename, len(body),
                         time.monotonic() - started)
        return cached

    def _fetch(self, url: str, accept: str) -> tuple[bytes, str, str]:
        """One GET (in a thread): body, content type and the URL it came from after redirects."""
        headers = {"Accept": accept, "User-Agent": "vastsim-index-relay"}
        if urlsplit(url).hostname == self.upstream_host:
            headers.update(self._auth)
        request = urllib.request.Request(url, headers=headers)
        with self._opener.open(request, timeout=FETCH_TIMEOUT_S) as answer:
            return answer.read(), answer.headers.get("Content-Type") or "text/html", answer.geturl()

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())


def _read_page(path: Path) -> tuple[bytes, str]:
    meta, _, body = path.read_bytes().partition(b"\n")
    return body, json.loads(meta)["content_type"]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(path)


async def _send(writer: asyncio.StreamWriter, status: str, content_type: str, body: bytes,
                length: int | None = None) -> None:
    head = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body) if length is None else length}", "Connection: close", "", ""]
    writer.write("\r\n".join(head).encode() + body)
    await writer.drain()


async def _send_file(writer: asyncio.StreamWriter, path: Path, head: bool = False) -> None:
    size = path.stat().st_size
    await _send(writer, "200 OK", "application/octet-stream", b"", size)
    if head:
        return
    with path.open("rb") as handle:
        while chunk := handle.read(SEND_CHUNK):
            writer.write(chunk)
            await writer.drain()  # at the pace of the instance's link (tc), as a real download
