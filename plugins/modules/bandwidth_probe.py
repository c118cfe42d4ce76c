#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: bandwidth_probe
short_description: Measure a rented host's real download (and upload) throughput, in MB/s
description:
  - Runs B(on the rented instance) and measures, by downloading, how fast it reaches the sources a run
    really uses (Hugging Face, GitHub, object storage, a package mirror) plus one neutral endpoint.
    The offer's advertised C(inet_down) says little; some hosts manage 170 KB/s.
  - Every download is bounded by O(max_bytes) B(and) O(max_seconds), whichever comes first. The rate is
    the bytes actually read divided by the time spent reading them; connection set-up (DNS, TCP, TLS,
    redirects, waiting for the response headers) is excluded from it and reported separately as
    RV(results[].connect_seconds) and RV(results[].ttfb_seconds).
  - B(All rates are in MB/s, megaBYTES per second, 1 MB = 1,000,000 bytes.) 1 MB/s is 8 Mbit/s; the
    results also carry RV(results[].mbit_per_s) for those who think in link speeds.
  - Optionally opens several parallel connections per endpoint (O(streams)), using HTTP C(Range)
    requests when the server supports them, and optionally uploads to a sink (O(upload)).
  - Endpoints are probed one after another, never at the same time, so they do not share the link.
  - Fails, once, naming B(every) required endpoint that was below its threshold or in error, with
    what was measured. DNS failures, refused connections, timeouts and HTTP 4xx/5xx are reported per
    endpoint as readable messages (RV(results[].error), RV(results[].error_kind)), never as a traceback.
  - Uses only the Python standard library on the host (C(http.client), C(socket), C(ssl),
    C(threading)); nothing is installed there.
  - Never changes anything (C(changed=false)); an O(upload) writes throwaway bytes to the given sink.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.host
  - mlops.vast.attributes.read_only
attributes:
  check_mode:
    details:
      - In check mode no transfer is made; the module returns what it would probe (RV(probes)),
        an empty RV(results) and C(changed=false).
options:
  endpoints:
    description:
      - The run's real sources, probed in order.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - A name for the endpoint in results and failure messages. Defaults to the URL's host name.
          - Names must be unique across O(endpoints), O(neutral_endpoint) and O(upload).
        type: str
      url:
        description:
          - An C(http://) or C(https://) URL of something big enough to keep the link busy for
            O(max_seconds) (a model shard, a release asset, an object).
        type: str
        required: true
      required:
        description:
          - Whether this endpoint being slow or unreachable fails the module.
          - An optional endpoint is measured and reported, and its own O(endpoints[].min_mbps), when
            set, decides its RV(results[].ok), but it never fails the module.
        type: bool
        default: true
      min_mbps:
        description:
          - Threshold for this endpoint in MB/s (megabytes per second), overriding O(min_mbps).
        type: float
      headers:
        description:
          - Extra request headers, e.g. C(Authorization) for a gated Hugging Face repository.
          - Their values are treated as secrets (C(no_log)) and never returned. C(Authorization) and
            C(Cookie) are dropped when a redirect leaves for another host.
        type: dict
      streams:
        description: Parallel connections for this endpoint, overriding O(streams).
        type: int
      max_bytes:
        description: Byte bound for this endpoint, overriding O(max_bytes).
        type: int
      max_seconds:
        description: Time bound for this endpoint, overriding O(max_seconds).
        type: float
  neutral_endpoint:
    description:
      - One more endpoint that is not one of the run's sources, to tell "this host is slow" from "that
        source is slow". Either a URL or a dict with the keys of an O(endpoints) item.
      - It is named C(neutral) and is B(not required) unless the dict says C(required=true).
      - The default is Cloudflare's public speed-test endpoint, which serves as many bytes as asked for
        (here 100 MB, more than the default O(max_bytes)) from a nearby edge.
      - Set it to C(false), C(null) or an empty string to probe only O(endpoints).
    type: raw
    default: https://speed.cloudflare.com/__down?bytes=100000000
  min_mbps:
    description:
      - The default threshold, in B(MB/s, megabytes per second), for every required endpoint without its
        own O(endpoints[].min_mbps). 170 KB/s is C(0.17); a 100 Mbit/s link is at most C(12.5).
      - C(0) checks only that each required endpoint answers and delivers.
    type: float
    default: 0
  max_bytes:
    description:
      - Stop reading an endpoint after this many bytes (64 MB by default, 1 MB = 1,000,000 bytes).
      - With several O(streams) this is the total over all of them.
    type: int
    default: 64000000
  max_seconds:
    description:
      - Stop reading an endpoint after this many seconds of reading (connection set-up not counted).
      - With several O(streams) they share one window of this length.
    type: float
    default: 10
  streams:
    description:
      - Parallel connections per endpoint; the reported rate is their aggregate.
      - With more than one, a one-byte C(Range) request first asks whether the server supports ranges;
        if it does, each stream downloads its own part of the file, else each downloads the whole body
        (up to its share of O(max_bytes)).
    type: int
    default: 1
  upload:
    description:
      - Also upload throwaway bytes to a sink (e.g. a presigned object-storage URL, or an HTTP server
        that discards what it receives) and measure that rate separately.
      - The upload is bounded by O(upload.bytes) and O(max_seconds); a time-bounded upload is cut short
        (the sink sees an incomplete body) and its rate counts only the bytes the peer acknowledged.
      - Uploads do not follow redirects.
    type: dict
    suboptions:
      url:
        description: The sink's C(http://) or C(https://) URL.
        type: str
        required: true
      bytes:
        description: How many bytes to send (sent with C(Content-Length)).
        type: int
        default: 16000000
      method:
        description: The HTTP method.
        type: str
        choices: [PUT, POST]
        default: PUT
      name:
        description: Its name in results.
        type: str
        default: upload
      required:
        description: Whether an error (or a rate below O(upload.min_mbps)) fails the module.
        type: bool
        default: true
      min_mbps:
        description:
          - Upload threshold in MB/s. Unset means no threshold (O(min_mbps) applies to downloads only).
        type: float
      headers:
        description: Extra request headers (secrets; never returned).
        type: dict
      max_seconds:
        description: Time bound for the upload, overriding O(max_seconds).
        type: float
  timeout:
    description:
      - Seconds allowed for each step of setting up a connection (DNS, TCP connect, TLS handshake) and
        for the response headers to arrive, and the longest a download may stall before it is an error.
      - Each step is bounded on its own, so an endpoint that never answers costs a few times O(timeout),
        and one that answers costs its set-up plus at most O(max_seconds) of reading.
    type: float
    default: 10
  validate_certs:
    description:
      - Verify HTTPS certificates against the host's trust store.
    type: bool
    default: true
notes:
  - Rates are megaBYTES per second (MB/s, 10^6 bytes/s), as C(min_mbps) is. They count HTTP body bytes,
    so they come out a few percent under the link's raw rate (TCP/IP headers).
  - Redirects (301, 302, 303, 307, 308) are followed up to 5 times, to C(http) and C(https) URLs only;
    a redirect to any other scheme is an error for that endpoint.
  - Proxy environment variables are not used; the probe measures the host's own link.
seealso:
  - module: mlops.vast.vast_instance
"""

EXAMPLES = r"""
- name: Is this host's internet good enough for the run? (runs on the instance)
  mlops.vast.bandwidth_probe:
    min_mbps: 20
    endpoints:
      - name: huggingface
        url: https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors
        headers:
          Authorization: "Bearer {{ hf_token }}"
      - name: github
        url: https://github.com/ollama/ollama/releases/download/v0.5.7/ollama-linux-amd64.tgz
        min_mbps: 5
      - name: pypi
        url: https://files.pythonhosted.org/packages/source/t/torch/torch-2.5.1.tar.gz
        required: false
  register: link

- name: Four parallel streams from object storage, an upload to a presigned URL, no neutral endpoint
  mlops.vast.bandwidth_probe:
    endpoints:
      - name: checkpoints
        url: "{{ presigned_get_url }}"
    streams: 4
    max_bytes: 200000000
    max_seconds: 8
    neutral_endpoint: false
    upload:
      url: "{{ presigned_put_url }}"
      bytes: 32000000
      min_mbps: 5
  register: link

- name: Show the rates
  ansible.builtin.debug:
    msg: "{{ link.rates }}"
"""

RETURN = r"""
results:
  description:
    - One entry per endpoint probed, in order (the upload last). Empty in check mode.
    - Also returned when the module fails.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The endpoint's name.
      type: str
    url:
      description: The URL asked for.
      type: str
    final_url:
      description: The URL the bytes came from, after redirects.
      type: str
    direction:
      description: C(download) or C(upload).
      type: str
    required:
      description: Whether this endpoint can fail the module.
      type: bool
    ok:
      description: No error, and the rate is at least RV(results[].min_mbps) when there is one.
      type: bool
    mbps:
      description: Measured throughput in MB/s (megabytes per second); null when nothing was read.
      type: float
    mbit_per_s:
      description: The same rate in megabits per second.
      type: float
    min_mbps:
      description: The threshold applied (MB/s), or null for an optional endpoint without one.
      type: float
    bytes:
      description: Body bytes transferred (for a cut-short upload, the bytes the peer acknowledged).
      type: int
    seconds:
      description: Time spent transferring those bytes (connection set-up excluded).
      type: float
    connect_seconds:
      description: DNS, TCP and TLS set-up time of the first request (all redirect hops).
      type: float
    ttfb_seconds:
      description: From the start of the first request until its response headers, set-up included.
      type: float
    status:
      description: The final HTTP status code, or null when there was no response.
      type: int
    stopped_by:
      description: What ended the transfer - C(max_bytes), C(max_seconds), C(end_of_body), C(complete)
        (an upload sent in full) or C(error).
      type: str
    error:
      description: A readable error, or null. E.g. C(DNS resolution failed for nonexistent.invalid ...),
        C(connection refused by 10.0.0.1:80), C(timed out after 10s waiting for the response of ...),
        C(HTTP 404 Not Found).
      type: str
    error_kind:
      description: C(dns), C(refused), C(timeout), C(http), C(tls), C(reset), C(redirect),
        C(incomplete), C(protocol), C(network) or null.
      type: str
    complete:
      description: For the upload, whether all O(upload.bytes) were sent (false when O(max_seconds) cut it short).
      type: bool
    streams:
      description: Parallel connections used.
      type: int
    ranged:
      description: Whether the streams used HTTP Range requests (null with one stream).
      type: bool
    stream_details:
      description: Per-stream bytes, seconds, MB/s, status and error, when O(streams) is above 1.
      type: list
      elements: dict
  sample:
    - name: huggingface
      url: https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors
      direction: download
      required: true
      ok: false
      mbps: 0.1631
      mbit_per_s: 1.3048
      min_mbps: 20.0
      bytes: 1631232
      seconds: 10.0
      connect_seconds: 0.412
      ttfb_seconds: 0.733
      status: 200
      stopped_by: max_seconds
      error: null
      error_kind: null
      streams: 1
probes:
  description: What is (or, in check mode, would be) probed, with the bounds and thresholds applied.
  returned: always
  type: list
  elements: dict
rates:
  description: Endpoint name to measured MB/s (null when nothing was measured).
  returned: always
  type: dict
  sample: {huggingface: 0.1631, neutral: 0.1702}
failed_endpoints:
  description: Names of the required endpoints that failed (the module failed if this is not empty).
  returned: always
  type: list
  elements: str
"""

import contextlib
import http.client
import os
import socket
import ssl
import threading
import time
from base64 import b64encode
from urllib.parse import unquote, urljoin, urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

MB = 1000000
USER_AGENT = "mlops.vast-bandwidth_probe/1.0 (Python http.client)"
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
CHUNK = 256 * 1024
MAX_STREAMS = 64
SECRET_HEADERS = ("authorization", "cookie", "proxy-authorization")
DEFAULT_NEUTRAL = "https://speed.cloudflare.com/__down?bytes=100000000"
OFF = ("", "false", "no", "none", "off", "null")

ENDPOINT_SPEC = {
    "name": {"type": "str"},
    "url": {"type": "str", "required": True},
    "required": {"type": "bool", "default": True},
    "min_mbps": {"type": "float"},
    "headers": {"type": "dict", "no_log": True},
    "streams": {"type": "int"},
    "max_bytes": {"type": "int"},
    "max_seconds": {"type": "float"},
}
UPLOAD_SPEC = {
    "url": {"type": "str", "required": True},
    "bytes": {"type": "int", "default": 16000000},
    "method": {"type": "str", "choices": ["PUT", "POST"], "default": "PUT"},
    "name": {"type": "str", "default": "upload"},
    "required": {"type": "bool", "default": True},
    "min_mbps": {"type": "float"},
    "headers": {"type": "dict", "no_log": True},
    "max_seconds": {"type": "float"},
}


class ProbeError(Exception):
    """A failure of one endpoint, with a kind and a message meant for people."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


def _now() -> float:
    return time.monotonic()


def _where(parts) -> str:
    host = parts.hostname or "?"
    return f"{host}:{_port(parts)}"


def _port(parts) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


def _target(parts) -> str:
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def network_error(exc: BaseException, where: str, doing: str, timeout: float) -> ProbeError:
    """Map a socket/ssl/http.client exception to a ProbeError with a distinct, readable message."""
    if isinstance(exc, ProbeError):
        return exc
    if isinstance(exc, socket.gaierror):
        return ProbeError("dns", f"DNS resolution failed for {where.rsplit(':', 1)[0]}: {exc.strerror or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError("refused", f"connection refused by {where}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ProbeError("timeout", f"timed out after {timeout:g}s {doing} {where}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = getattr(exc, "verify_message", None) or exc
        return ProbeError("tls", f"TLS certificate of {where} not trusted: {reason} (see validate_certs)")
    if isinstance(exc, ssl.SSLError):
        return ProbeError("tls", f"TLS error {doing} {where}: {exc.reason or exc}")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return ProbeError("reset", f"connection reset by {where} {doing} it")
    if isinstance(exc, http.client.IncompleteRead):
        return ProbeError("incomplete", f"{where} closed the connection mid-body ({exc.expected} more bytes "
                                        "expected)")
    if isinstance(exc, http.client.RemoteDisconnected):
        return ProbeError("reset", f"{where} closed the connection without answering")
    if isinstance(exc, http.client.HTTPException):
        return ProbeError("protocol", f"bad HTTP answer from {where}: {type(exc).__name__} {exc}".strip())
    if isinstance(exc, OSError):
        return ProbeError("network", f"network error {doing} {where}: {exc.strerror or exc}")
    return ProbeError("error", f"{type(exc).__name__} {doing} {where}: {exc}")


def resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo bounded in time (the system resolver has no timeout of its own)."""
    box: dict = {}

    def work() -> None:
        try:
            box["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # reported below, in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name="bandwidth-probe-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ProbeError("dns", f"DNS resolution of {host} timed out after {timeout:g}s")
    if "error" in box:
        exc = box["error"]
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ProbeError("dns", f"DNS resolution failed for {host}: {reason}")
    if not box.get("addrs"):
        raise ProbeError("dns", f"DNS resolution of {host} returned no address")
    return box["addrs"]


def tls_context(validate_certs: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def open_connection(parts, timeout: float, validate_certs: bool, timings: dict):
    """Resolve, connect and (for https) handshake, each step bounded; returns (connection, socket)."""
    host = parts.hostname
    port = _port(parts)
    where = f"{host}:{port}"
    https = parts.scheme.lower() == "https"
    started = _now()
    addresses = resolve(host, port, timeout)
    timings["dns_seconds"] += _now() - started
    sock = None
    last: BaseException | None = None
    for family, kind, proto, _canonname, address in addresses[:4]:
        candidate = socket.socket(family, kind, proto)
        candidate.settimeout(timeout)
        try:
            candidate.connect(address)
        except OSError as exc:
            candidate.close()
            last = exc
            continue
        sock = candidate
        break
    if sock is None:
        raise network_error(last or OSError("no address"), where, "connecting to", timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    context = tls_context(validate_certs) if https else None
    if context is not None:
        try:
            sock = context.wrap_socket(sock, server_hostname=host)
        except (OSError, ValueError) as exc:
            sock.close()
            raise network_error(exc, where, "in the TLS handshake with", timeout) from None
    timings["connect_seconds"] += _now() - started
    name = f"[{host}]" if ":" in host else host
    if https:
        connection = http.client.HTTPSConnection(name, port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(name, port, timeout=timeout)
    connection.sock = sock  # already connected: http.client will not connect again
    return connection, sock


def request(url: str, headers: dict, timeout: float, validate_certs: bool, method: str = "GET"):
    """Send a request and wait for the headers, following http(s) redirects.

    Returns (connection, socket, response, final_url, final_headers, timings); raises ProbeError, with the
    status for HTTP 4xx/5xx.
    """
    timings = {"dns_seconds": 0.0, "connect_seconds": 0.0, "ttfb_seconds": None}
    started = _now()
    current = url
    sent = dict(headers)
    for _hop in range(MAX_REDIRECTS + 1):
        parts = urlsplit(current)
        where = _where(parts)
        hop_headers = dict(sent)
        if parts.username and not any(k.lower() == "authorization" for k in hop_headers):
            secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            hop_headers["Authorization"] = "Basic " + b64encode(secret).decode()
        connection, sock = open_connection(parts, timeout, validate_certs, timings)
        try:
            connection.request(method, _target(parts), headers=hop_headers)
            response = connection.getresponse()
        except Exception as exc:
            connection.close()
            raise network_error(exc, where, "waiting for the response of", timeout) from None
        location = response.getheader("Location")
        if response.status in REDIRECTS and location:
            connection.close()
            target = urljoin(current, location.strip())
            scheme = urlsplit(target).scheme.lower()
            if scheme not in ("http", "https"):
                message = f"HTTP {response.status} redirect to a non-http(s) URL refused: {target}"
                raise ProbeError("redirect", message, response.status)
            if urlsplit(target).hostname != parts.hostname:
                sent = {k: v for k, v in sent.items() if k.lower() not in SECRET_HEADERS}
            current = target
            continue
        timings["ttfb_seconds"] = _now() - started
        if response.status >= 400:
            reason = (response.reason or http.client.responses.get(response.status, "")).strip()
            connection.close()
            raise ProbeError("http", f"HTTP {response.status} {reason}".strip(), response.status)
        return connection, sock, response, current, sent, timings
    raise ProbeError("redirect", f"more than {MAX_REDIRECTS} redirects (the last to {current})")


class Window:
    """The reading window the streams of one endpoint share: it opens when the first one starts reading."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline: float | None = None
        self._lock = threading.Lock()

    def open(self, at: float) -> float:
        with self._lock:
            if self.deadline is None:
                self.deadline = at + self.seconds
            return self.deadline


def read_body(response, sock, limit: int, window: Window, timeout: float, where: str) -> dict:
    """Read up to `limit` bytes until the window closes; the rate counts only this phase."""
    start = _now()
    deadline = window.open(start)
    got = 0
    stopped = "end_of_body"
    error = None
    # Each pass reads at least one byte or leaves, so `limit + 2` passes always suffice.
    for _pass in range(limit + 2):
        if got >= limit:
            stopped = "max_bytes"
            break
        left = deadline - _now()
        if left <= 0:
            stopped = "max_seconds"
            break
        sock.settimeout(max(0.001, min(timeout, left)))
        try:
            data = response.read1(min(CHUNK, limit - got))
        except (socket.timeout, TimeoutError):  # noqa: UP041 - distinct before Python 3.10
            if _now() >= deadline - 0.002:
                stopped = "max_seconds"
            else:
                error = ProbeError("timeout", f"download from {where} stalled: no data for {timeout:g}s "
                                              f"after {got} bytes")
            break
        except Exception as exc:
            error = network_error(exc, where, "reading the body from", timeout)
            break
        if not data:
            if response.length:  # Content-Length promised more
                error = ProbeError("incomplete", f"{where} closed the connection after {got} bytes, "
                                                 f"{response.length} bytes short of its Content-Length")
            break
        got += len(data)
    end = _now()
    return {"bytes": got, "start": start, "end": end, "stopped_by": "error" if error else stopped,
            "error": error.message if error else None, "error_kind": error.kind if error else None}


def fetch(url: str, headers: dict, limit: int, window: Window, timeout: float, validate_certs: bool,
          byte_range: tuple | None = None) -> dict:
    """One connection's download, never raising: errors come back in the dict."""
    result = {"bytes": 0, "start": None, "end": None, "status": None, "error": None, "error_kind": None,
              "connect_seconds": None, "ttfb_seconds": None, "stopped_by": "error", "final_url": None}
    wanted = dict(headers)
    if byte_range is not None:
        wanted["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
    try:
        connection, sock, response, final, _sent, timings = request(url, wanted, timeout, validate_certs)
    except ProbeError as exc:
        result.update(error=exc.message, error_kind=exc.kind, status=exc.status)
        return result
    except Exception as exc:
        error = network_error(exc, _where(urlsplit(url)), "requesting", timeout)
        result.update(error=error.message, error_kind=error.kind)
        return result
    try:
        result.update(status=response.status, final_url=final, connect_seconds=timings["connect_seconds"],
                      ttfb_seconds=timings["ttfb_seconds"])
        if response.status not in (200, 206):
            reason = (response.reason or "").strip()
            result.update(error=f"unexpected HTTP {response.status} {reason}".strip(), error_kind="http")
            return result
        result.update(read_body(response, sock, limit, window, timeout, _where(urlsplit(final))))
        return result
    finally:
        connection.close()


def range_support(url: str, headers: dict, timeout: float, validate_certs: bool):
    """Ask for the first byte: (final_url, final_headers, total size or None, ranges?, status, timings)."""
    wanted = dict(headers, Range="bytes=0-0")
    connection, sock, response, final, sent, timings = request(url, wanted, timeout, validate_certs)
    try:
        total = None
        ranged = False
        if response.status == 206:
            content_range = (response.getheader("Content-Range") or "").strip()
            ranged = content_range.lower().startswith("bytes 0-0/")
            size = content_range.rsplit("/", 1)[-1]
            total = int(size) if size.isdigit() else None
            if ranged:
                sock.settimeout(timeout)
                response.read(16)  # the one byte asked for (bounded even if the server sent more)
        elif response.status == 200 and response.length is not None:
            total = response.length  # no ranges; the body is not read
        sent = {k: v for k, v in sent.items() if k.lower() != "range"}
        return final, sent, total, ranged, response.status, timings
    finally:
        connection.close()


def _rate(byte_count: int, seconds: float | None) -> float | None:
    if seconds is None:
        return None
    if seconds <= 0:
        return None if byte_count else 0.0
    return round(byte_count / seconds / MB, 4)


def probe_download(plan: dict, headers: dict, timeout: float, validate_certs: bool) -> dict:
    streams = plan["streams"]
    window = Window(plan["max_seconds"])
    base = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    base.update(headers)
    result = {"ranged": None, "status": None, "final_url": None, "connect_seconds": None, "ttfb_seconds": None}
    if streams == 1:
        one = fetch(plan["url"], base, plan["max_bytes"], window, timeout, validate_certs)
        parts = [one]
    else:
        try:
            final, sent, total, ranged, status, timings = range_support(plan["url"], base, timeout, validate_certs)
        except ProbeError as exc:
            result.update(bytes=0, seconds=None, mbps=None, status=exc.status, error=exc.message,
                          error_kind=exc.kind, stopped_by="error")
            return result
        except Exception as exc:
            error = network_error(exc, _where(urlsplit(plan["url"])), "requesting", timeout)
            result.update(bytes=0, seconds=None, mbps=None, error=error.message, error_kind=error.kind,
                          stopped_by="error")
            return result
        result.update(ranged=ranged, final_url=final, connect_seconds=timings["connect_seconds"],
                      ttfb_seconds=timings["ttfb_seconds"], status=status)
        if ranged:
            budget = min(plan["max_bytes"], total) if total else plan["max_bytes"]
            part = -(-budget // streams)
            jobs = [(min(part, budget - i * part), (i * part, min(budget, (i + 1) * part) - 1))
                    for i in range(streams) if i * part < budget]
        else:
            share = -(-plan["max_bytes"] // streams)
            jobs = [(share, None)] * streams
        parts = run_streams(final, sent, jobs, window, timeout, validate_certs)
    return summarise(plan, parts, result)


def run_streams(url: str, headers: dict, jobs: list, window: Window, timeout: float, validate_certs: bool) -> list:
    results: list = [None] * len(jobs)

    def work(index: int, limit: int, byte_range: tuple | None) -> None:
        try:
            results[index] = fetch(url, headers, limit, window, timeout, validate_certs, byte_range)
        except Exception as exc:  # never let a thread die silently
            results[index] = {"bytes": 0, "start": None, "end": None, "status": None, "stopped_by": "error",
                              "error": f"{type(exc).__name__}: {exc}", "error_kind": "error"}

    threads = [threading.Thread(target=work, args=(i, limit, byte_range), name=f"bandwidth-probe-{i}", daemon=True)
               for i, (limit, byte_range) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    # Every step of a stream is bounded by `timeout`, its reading by the window; this bound is a backstop.
    deadline = _now() + 8 * timeout * (MAX_REDIRECTS + 1) + window.seconds + 5
    for thread in threads:
        thread.join(max(0.0, deadline - _now()))
    for index, value in enumerate(results):
        if value is None:
            results[index] = {"bytes": 0, "start": None, "end": None, "status": None, "stopped_by": "error",
                              "error": "stream did not finish in time", "error_kind": "timeout"}
    return results


def summarise(plan: dict, parts: list, result: dict) -> dict:
    total = sum(p["bytes"] for p in parts)
    starts = [p["start"] for p in parts if p.get("start") is not None]
    ends = [p["end"] for p in parts if p.get("end") is not None]
    seconds = (max(ends) - min(starts)) if starts and ends else None
    first = parts[0]
    if result.get("status") is None:
        result.update(status=first.get("status"), final_url=first.get("final_url"),
                      connect_seconds=first.get("connect_seconds"), ttfb_seconds=first.get("ttfb_seconds"))
    errors = [(i, p) for i, p in enumerate(parts) if p.get("error")]
    if len(parts) == 1:
        error = first.get("error")
        kind = first.get("error_kind")
        stopped = first.get("stopped_by")
    else:
        error = "; ".join(f"stream {i + 1}/{len(parts)}: {p['error']}" for i, p in errors) or None
        kind = errors[0][1].get("error_kind") if errors else None
        stoppers = {p.get("stopped_by") for p in parts}
        if error:
            stopped = "error"
        elif "max_seconds" in stoppers:
            stopped = "max_seconds"
        elif total >= plan["max_bytes"]:
            stopped = "max_bytes"
        else:
            stopped = "end_of_body"
        result["stream_details"] = [
            {"bytes": p["bytes"], "status": p.get("status"), "error": p.get("error"),
             "seconds": _round(p["end"] - p["start"]) if p.get("start") is not None else None,
             "mbps": _rate(p["bytes"], p["end"] - p["start"]) if p.get("start") is not None else None}
            for p in parts]
        if any(p.get("status") == 206 for p in parts):
            result["status"] = 206
    result.update(bytes=total, seconds=_round(seconds), mbps=_rate(total, seconds), error=error,
                  error_kind=kind, stopped_by=stopped)
    return result


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def unsent_bytes(sock) -> int:
    """Bytes still in the socket's send queue (not yet acknowledged by the peer); 0 where unknown."""
    try:
        import fcntl
        import struct
        import termios

        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))  # SIOCOUTQ on Linux
        return max(0, struct.unpack("i", raw)[0])
    except Exception:
        return 0


def probe_upload(plan: dict, headers: dict, timeout: float, validate_certs: bool) -> dict:
    result = {"bytes": 0, "seconds": None, "mbps": None, "status": None, "error": None, "error_kind": None,
              "connect_seconds": None, "ttfb_seconds": None, "stopped_by": "error", "final_url": plan["url"],
              "complete": False}
    parts = urlsplit(plan["url"])
    where = _where(parts)
    total = plan["bytes"]
    timings = {"dns_seconds": 0.0, "connect_seconds": 0.0}
    try:
        connection, sock = open_connection(parts, timeout, validate_certs, timings)
    except ProbeError as exc:
        result.update(error=exc.message, error_kind=exc.kind)
        return result
    except Exception as exc:
        error = network_error(exc, where, "connecting to", timeout)
        result.update(error=error.message, error_kind=error.kind)
        return result
    result["connect_seconds"] = _round(timings["connect_seconds"])
    try:
        return _upload(connection, sock, plan, headers, parts, where, total, timeout, result)
    finally:
        connection.close()


def _upload(connection, sock, plan, headers, parts, where, total, timeout, result) -> dict:
    wanted = {"User-Agent": USER_AGENT, "Content-Type": "application/octet-stream", "Content-Length": str(total)}
    wanted.update(headers)
    try:
        connection.putrequest(plan["method"], _target(parts), skip_accept_encoding=True)
        for key, value in wanted.items():
            connection.putheader(key, str(value))
        connection.endheaders()
    except Exception as exc:
        error = network_error(exc, where, "sending the request to", timeout)
        result.update(error=error.message, error_kind=error.kind)
        return result
    block = memoryview(os.urandom(max(1, min(total, 1 << 20))))
    start = _now()
    deadline = start + plan["max_seconds"]
    sent = 0
    stopped = None
    failure: ProbeError | None = None
    # Each pass sends at least one byte or leaves.
    for _pass in range(total + 2):
        if sent >= total:
            break
        left = deadline - _now()
        if left <= 0:
            stopped = "max_seconds"
            break
        sock.settimeout(max(0.001, min(timeout, left)))
        try:
            sent += sock.send(block[:min(len(block), total - sent)])
        except (socket.timeout, TimeoutError):  # noqa: UP041 - distinct before Python 3.10
            if _now() >= deadline - 0.002:
                stopped = "max_seconds"
            else:
                failure = ProbeError("timeout", f"upload to {where} stalled: nothing accepted for {timeout:g}s "
                                                f"after {sent} bytes")
            break
        except Exception as exc:
            failure = network_error(exc, where, "uploading to", timeout)
            break
    if stopped == "max_seconds" or failure is not None:
        end = _now()
        acknowledged = max(0, sent - unsent_bytes(sock))
        result.update(bytes=acknowledged, seconds=_round(end - start), mbps=_rate(acknowledged, end - start),
                      stopped_by="max_seconds" if failure is None else "error")
        if failure is not None:
            # The sink may have answered before reading everything (413, 403, ...): that is the better reason.
            try:
                sock.settimeout(min(timeout, 2.0))
                response = connection.getresponse()
                if response.status >= 400:
                    failure = ProbeError("http", f"HTTP {response.status} {response.reason}".strip(),
                                         response.status)
                result["status"] = response.status
            except Exception:
                pass
            result.update(error=failure.message, error_kind=failure.kind)
        return result
    try:
        sock.settimeout(timeout)
        response = connection.getresponse()
    except Exception as exc:
        error = network_error(exc, where, "waiting for the upload's response from", timeout)
        result.update(bytes=total, error=error.message, error_kind=error.kind)
        return result
    end = _now()
    result.update(bytes=total, seconds=_round(end - start), mbps=_rate(total, end - start), status=response.status,
                  stopped_by="complete", complete=True)
    with contextlib.suppress(Exception):
        response.read(65536)
    if response.status >= 300:
        result.update(error=f"HTTP {response.status} {response.reason}".strip(), error_kind="http", stopped_by="error")
    return result


def check_url(url: str, name: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"{name}: bad URL {url!r}: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{name}: only http:// and https:// URLs can be probed, got {url!r}"
    if not parts.hostname:
        return f"{name}: URL {url!r} has no host"
    return None


def _given(spec: dict, key: str, params: dict):
    """The endpoint's own value for `key`, else the module-level one."""
    return params[key] if spec.get(key) is None else spec[key]


def build_plans(module: AnsibleModule) -> tuple[list, list]:
    """The probes to run, as returned in `probes`, and their (secret) headers alongside."""
    params = module.params
    plans: list = []
    secrets: list = []
    problems: list = []

    def add(spec: dict, direction: str, default_name: str | None, default_required: bool) -> None:
        url = (spec.get("url") or "").strip()
        name = spec.get("name") or default_name or urlsplit(url).hostname or url
        problem = check_url(url, name)
        if problem:
            problems.append(problem)
        required = default_required if spec.get("required") is None else bool(spec["required"])
        if spec.get("min_mbps") is not None:
            threshold = float(spec["min_mbps"])
        elif direction == "download" and required:
            threshold = float(params["min_mbps"])
        else:
            threshold = None
        plan = {"name": name, "url": url, "direction": direction, "required": required, "min_mbps": threshold,
                "max_seconds": float(_given(spec, "max_seconds", params))}
        if direction == "download":
            plan["streams"] = int(_given(spec, "streams", params))
            plan["max_bytes"] = int(_given(spec, "max_bytes", params))
        else:
            plan["bytes"] = int(spec["bytes"])
            plan["method"] = spec["method"]
        for key in ("max_bytes", "bytes", "max_seconds", "streams"):
            if key in plan and plan[key] <= 0:
                problems.append(f"{name}: {key} must be above 0, got {plan[key]:g}")
        if plan.get("streams", 1) > MAX_STREAMS:
            problems.append(f"{name}: at most {MAX_STREAMS} streams, got {plan['streams']}")
        if threshold is not None and threshold < 0:
            problems.append(f"{name}: min_mbps must not be negative, got {threshold:g}")
        headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
        module.no_log_values.update(v for v in headers.values() if v)
        plans.append(plan)
        secrets.append(headers)

    for endpoint in params["endpoints"]:
        add(endpoint, "download", None, True)
    neutral = params["neutral_endpoint"]
    if isinstance(neutral, str) and neutral.strip().lower() not in OFF:
        add({"url": neutral, "required": False}, "download", "neutral", False)
    elif isinstance(neutral, dict):
        checked = ArgumentSpecValidator(ENDPOINT_SPEC).validate(dict(neutral, required=neutral.get("required", False)))
        if checked.error_messages:
            problems.extend(f"neutral_endpoint: {message}" for message in checked.error_messages)
        else:
            add(checked.validated_parameters, "download", "neutral", False)
    elif neutral not in (None, False) and not isinstance(neutral, str):
        problems.append(f"neutral_endpoint must be a URL, a dict or false, got {type(neutral).__name__}")
    if params["upload"]:
        add(params["upload"], "upload", "upload", True)
    names = [plan["name"] for plan in plans]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        problems.append(f"endpoint names must be unique; repeated: {', '.join(duplicates)}")
    if not plans and not problems:
        problems.append("nothing to probe: give endpoints, a neutral_endpoint or an upload")
    if problems:
        module.fail_json(msg="Invalid bandwidth_probe arguments: " + "; ".join(problems))
    return plans, secrets


def run_probe(plan: dict, headers: dict, timeout: float, validate_certs: bool) -> dict:
    try:
        if plan["direction"] == "upload":
            measured = probe_upload(plan, headers, timeout, validate_certs)
        else:
            measured = probe_download(plan, headers, timeout, validate_certs)
    except Exception as exc:  # a bug or an exotic failure: still one readable line per endpoint
        measured = {"bytes": 0, "seconds": None, "mbps": None, "status": None, "stopped_by": "error",
                    "error": f"{type(exc).__name__}: {exc}", "error_kind": "error"}
    result = {"name": plan["name"], "url": plan["url"], "direction": plan["direction"],
              "required": plan["required"], "min_mbps": plan["min_mbps"],
              "streams": plan.get("streams", 1)}
    result.update(measured)
    for key in ("connect_seconds", "ttfb_seconds"):
        result[key] = _round(result.get(key))
    mbps = result.get("mbps")
    result["mbit_per_s"] = None if mbps is None else round(mbps * 8, 4)
    threshold = plan["min_mbps"]
    fast_enough = threshold is None or (mbps is not None and mbps >= threshold)
    result["ok"] = result.get("error") is None and fast_enough
    return result


def describe(result: dict) -> str:
    measured = (f"{result['mbps']:.3f} MB/s, {result['bytes']} bytes in {result['seconds']:.2f}s"
                if result.get("mbps") is not None and result.get("seconds") is not None else None)
    if result.get("error"):
        text = f"{result['name']}: {result['error']}"
        if result.get("bytes"):
            text += f" (after {measured})"
    else:
        text = (f"{result['name']}: {result['mbps'] if result['mbps'] is not None else 0:.3f} MB/s "
                f"< {result['min_mbps']:g} MB/s ({result['bytes']} bytes in {result['seconds'] or 0:.2f}s)")
    return f"{text} [{result['url']}]"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "endpoints": {"type": "list", "elements": "dict", "default": [], "options": ENDPOINT_SPEC},
            "neutral_endpoint": {"type": "raw", "default": DEFAULT_NEUTRAL},
            "min_mbps": {"type": "float", "default": 0.0},
            "max_bytes": {"type": "int", "default": 64000000},
            "max_seconds": {"type": "float", "default": 10.0},
            "streams": {"type": "int", "default": 1},
            "upload": {"type": "dict", "options": UPLOAD_SPEC},
            "timeout": {"type": "float", "default": 10.0},
            "validate_certs": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    if module.params["timeout"] <= 0:
        module.fail_json(msg=f"timeout must be above 0, got {module.params['timeout']:g}")
    if module.params["min_mbps"] < 0:
        module.fail_json(msg=f"min_mbps must not be negative, got {module.params['min_mbps']:g}")
    plans, secrets = build_plans(module)
    if module.check_mode:
        module.exit_json(changed=False, probes=plans, results=[], rates={}, failed_endpoints=[],
                         msg=f"check mode: would probe {', '.join(p['name'] for p in plans)}; nothing transferred")
    results = [run_probe(plan, secrets[index], module.params["timeout"], module.params["validate_certs"])
               for index, plan in enumerate(plans)]
    rates = {r["name"]: r["mbps"] for r in results}
    bad = [r for r in results if r["required"] and not r["ok"]]
    outcome = {"changed": False, "probes": plans, "results": results, "rates": rates,
               "failed_endpoints": [r["name"] for r in bad]}
    if bad:
        module.fail_json(msg=f"{len(bad)} required endpoint(s) too slow or unreachable: "
                             + "; ".join(describe(r) for r in bad), **outcome)
    summary = ", ".join(f"{r['name']} {r['mbps'] if r['mbps'] is not None else 0:.3f} MB/s"
                        + ("" if r["ok"] else " (not ok, optional)") for r in results)
    module.exit_json(msg=f"bandwidth: {summary}", **outcome)


if __name__ == "__main__":
    main()
