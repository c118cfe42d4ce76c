# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one Vast.ai REST client of this collection (controller side, httpx).

Private to the collection: modules, plugins and the mlops_vast package use it; its API
may change between releases.

- Base URL from the option, ``VAST_URL``, or ``https://console.vast.ai``.
- Key from the option, ``VAST_API_KEY``, the file ``VAST_API_KEY_FILE`` names, or the official CLI's key files.
- Retries 429/502/503/504 and connection errors with jittered exponential backoff,
  honouring ``Retry-After``, all inside one deadline per module run.
- ``success: false`` with HTTP 200 is raised as the failure it is.
- Errors are typed (``errors.py``) and carry Vast's ``msg``; the key never appears in them.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .errors import (
    VastAmbiguousError,
    VastAPIError,
    VastAuthError,
    VastConfigError,
    VastNotFound,
    VastRetryExhausted,
    VastUnavailable,
    VastUnreachable,
)
from .waiting import Deadline

try:
    # httpx imports httpcore only when a client is made. Ansible imports this module in the controller process (to
    # read the action plugins' attributes) before it forks the worker that runs an API action, so importing it here
    # is inherited; otherwise every API action's worker pays ~15 ms for it.
    import httpcore  # noqa: F401  # pylint: disable=unused-import
    import httpx

    HAS_HTTPX = True
    HTTPX_IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # reported by the caller with missing_required_lib
    HAS_HTTPX = False
    HTTPX_IMPORT_ERROR = exc

DEFAULT_URL = "https://console.vast.ai"
USER_AGENT = "mlops.vast/0.1"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A service that has not answered once in this run and refuses connections for this long (or for one request
# timeout, if shorter) is a wrong URL or a service that is down, not a blip: say so now instead of retrying
# until the run's whole deadline (up to wait_timeout). Once it has answered, a refusal is retried to the end.
FIRST_CONTACT_S = 20.0
# Keys the official CLI reads, first match wins after the option and the environment.
KEY_FILES = ("{xdg_config}/vastai/vast_api_key", "~/.vast_api_key")


def resolve_base_url(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    url = (explicit or environ.get("VAST_URL") or DEFAULT_URL).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise VastConfigError(f"api_url must start with http:// or https://, got {url!r}")
    # The CLI accepts a URL ending in /api/v0 too; paths here carry their own version prefix.
    for suffix in ("/api/v0", "/api/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def resolve_api_key(explicit: str | None = None, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The key and where it came from (never the key itself in messages)."""
    environ = os.environ if environ is None else environ
    if explicit:
        return _checked_key(explicit, "the api_key option"), "the api_key option"
    if environ.get("VAST_API_KEY"):
        return _checked_key(environ["VAST_API_KEY"], "VAST_API_KEY"), "VAST_API_KEY"
    if environ.get("VAST_API_KEY_FILE"):
        # A file named by the caller (the mlops_vast API passes the key so, never in the environment): it
        # must be there; falling through to another account's key file would be a surprise.
        path = os.path.expanduser(environ["VAST_API_KEY_FILE"])
        try:
            with open(path) as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise VastConfigError(f"VAST_API_KEY_FILE names {path}, which cannot be read ({exc.strerror})") from None
        if not key:
            raise VastConfigError(f"VAST_API_KEY_FILE names {path}, which is empty")
        return _checked_key(key, "VAST_API_KEY_FILE"), "VAST_API_KEY_FILE"
    xdg_config = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    for pattern in KEY_FILES:
        path = os.path.expanduser(pattern.format(xdg_config=xdg_config))
        try:
            with open(path) as handle:
                key = handle.read().strip()
        except OSError:
            continue
        if key:
            return _checked_key(key, path), path
    raise VastConfigError(
        "No Vast API key: set VAST_API_KEY (or VAST_API_KEY_FILE), pass api_key, or run `vastai set api-key KEY` "
        "(which writes ~/.config/vastai/vast_api_key)."
    )


def _checked_key(key: str, source: str) -> str:
    """The key, stripped; a key with inner whitespace or control characters is refused unechoed."""
    key = key.strip()
    if not key.isprintable() or any(ch.isspace() for ch in key):
        raise VastConfigError(f"the API key from {source} contains whitespace or control characters "
                              "(a key file with more than one line?); it must be one token")
    return key


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _message(body: Any, text: str) -> tuple[str, str | None]:
    if isinstance(body, dict):
        msg = body.get("msg") or body.get("message") or body.get("detail") or body.get("error")
        return str(msg or text[:300] or "no detail"), body.get("error")
    return (text.strip()[:300] or "no detail"), None


class VastClient:
    """A small synchronous client; one per module run, sharing that run's deadline."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any], deadline: Deadline, *, need_key: bool = True) -> VastClient:
        """A client from the auth options (``api_key``, ``api_url``, ``api_timeout``) of a module or action.

        VastConfigError says what is missing (nothing is sent); without ``need_key`` a missing key is
        allowed (the offer search answers anonymously).
        """
        base_url = resolve_base_url(options.get("api_url"))
        key: str | None
        try:
            key, _source = resolve_api_key(options.get("api_key"))
        except VastConfigError:
            if need_key:
                raise
            key = None
        return cls(key, base_url, deadline=deadline, request_timeout=options.get("api_timeout") or 30.0)

    def __init__(
        self,
        api_key: str | None,
        base_url: str,
        *,
        deadline: Deadline | None = None,
        request_timeout: float = 30.0,
        max_backoff: float = 20.0,
        base_backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        transport: Any = None,
        rng: random.Random | None = None,
    ) -> None:
        if not HAS_HTTPX:
            raise VastConfigError(f"the Python library httpx is required on the controller: {HTTPX_IMPORT_ERROR}")
        self.base_url = base_url
        self.deadline = deadline or Deadline(600)
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff
        self.base_backoff = base_backoff
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.requests_sent = 0
        self.retries = 0
        self.answered = False
        # None: retry a service that never answered to the deadline too (a destroy must outlast an outage).
        self.first_contact_s: float | None = FIRST_CONTACT_S
        self._first_attempt: float | None = None
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # Requests go only to paths under base_url (request() refuses any other) and redirects are not followed,
        # so a plain-http URL (vastsim on loopback) never makes a TLS connection: loading the certificate store
        # would cost ~20 ms a client, and every module run makes one. Any other URL verifies.
        self._http = httpx.Client(base_url=base_url, headers=headers, transport=transport,
                                  follow_redirects=False, verify=not base_url.startswith("http://"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VastClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ core

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
                idempotent: bool = True, allow_unsuccessful: bool = False) -> Any:
        """Send one logical request, retrying transient failures until the deadline.

        ``idempotent=False`` (renting): a 5xx or a timeout after the request left may have
        rented something, so it raises VastAmbiguousError instead of retrying blindly.
        """
        if not path.startswith("/"):
            raise ValueError(f"request paths are relative to the API's URL, got {path!r}")
        encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
        if body is None and method in ("POST", "PUT", "DELETE"):
            body = {}  # Vast expects a JSON body on every write, as the official CLI sends
        attempt = 0
        while True:
            attempt += 1
            # A create keeps its full timeout even late in the run: cutting it short would turn a
            # slow rent into an ambiguous one.
            timeout = (self.request_timeout if not idempotent
                       else min(self.request_timeout, max(self.deadline.remaining, 0.5)))
            if self._first_attempt is None:
                self._first_attempt = time.monotonic()
            try:
                self.requests_sent += 1
                response = self._http.request(
                    method, path, params=encoded or None,
                    content=None if body is None else json.dumps(body),
                    headers={"Content-Type": "application/json"} if body is not None else None,
                    timeout=timeout,
                )
            except httpx.ConnectError as exc:
                self._give_up_on_first_contact(method, path, attempt, exc)
                # Never reached the server: always safe to retry.
                self._backoff_or_raise(method, path, attempt, None, f"cannot connect to {self.base_url}: {exc}")
                continue
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if not idempotent:
                    raise VastAmbiguousError(f"{method} {path}: no answer ({type(exc).__name__}); "
                                             "it may have taken effect") from None
                self._backoff_or_raise(method, path, attempt, None,
                                       f"no answer from {self.base_url}: {type(exc).__name__}")
                continue
            except httpx.HTTPError as exc:
                # Anything else (a malformed header, a broken stream) is not retried; its text may
                # quote request headers, so only the kind of error is reported.
                raise VastAPIError(0, f"request failed before an answer: {type(exc).__name__}", method=method,
                                   path=path) from None
            self.answered = True
            if response.status_code in RETRY_STATUSES:
                body_json = _json_or_none(response)
                msg, error = _message(body_json, response.text)
                if error == "search_quota_exceeded":
                    raise VastAPIError(429, msg, error=error, method=method, path=path, body=body_json)
                if response.status_code != 429 and not idempotent:
                    raise VastAmbiguousError(f"{method} {path}: HTTP {response.status_code}; it may have taken effect")
                self._backoff_or_raise(method, path, attempt, response, f"HTTP {response.status_code}: {msg}")
                continue
            return self._decode(method, path, response, allow_unsuccessful)

    def _give_up_on_first_contact(self, method: str, path: str, attempt: int, exc: Exception) -> None:
        waited = time.monotonic() - (self._first_attempt or time.monotonic())
        if self.answered or self.first_contact_s is None or waited < min(self.first_contact_s, self.request_timeout):
            return
        # The URL only, never headers: httpx's text names the host and the reason.
        reason = str(exc).partition("\n")[0] or type(exc).__name__
        raise VastUnreachable(f"cannot reach the Vast API at {self.base_url} ({reason}; {method} {path}, "
                              f"{attempt} attempts in {waited:.0f} s)")

    def _backoff_or_raise(self, method: str, path: str, attempt: int, response: Any, reason: str) -> None:
        wait = None if response is None else _retry_after(response)
        if wait is None:
            # Full jitter: spread retries of parallel runs so they do not hit the limit together.
            wait = self.rng.uniform(0, min(self.max_backoff, self.base_backoff * 2 ** (attempt - 1)))
        if wait >= self.deadline.remaining:
            status = response.status_code if response is not None else 0
            raise VastRetryExhausted(
                status, f"gave up after {attempt} attempts within the deadline ({self.deadline.seconds:g} s); "
                f"last: {reason}", method=method, path=path)
        self.retries += 1
        self.sleep(wait)

    def _decode(self, method: str, path: str, response: Any, allow_unsuccessful: bool) -> Any:
        body = _json_or_none(response)
        status = response.status_code
        if status >= 400:
            msg, error = _message(body, response.text)
            kind: type[VastAPIError] = VastAPIError
            if status in (401, 403):
                kind = VastAuthError
            elif status == 410 or error == "no_such_ask":
                kind = VastUnavailable
            elif status == 404:
                kind = VastNotFound
            raise kind(status, msg, error=error, method=method, path=path, body=body)
        if body is None and response.content.strip():
            raise VastAPIError(status, f"the answer is not JSON: {response.text[:200]!r}", method=method,
                               path=path)
        if isinstance(body, dict) and body.get("success") is False and not allow_unsuccessful:
            msg, error = _message(body, response.text)
            raise VastAPIError(status, msg, error=error, method=method, path=path, body=body)
        return body

    # ----------------------------------------------------------- endpoints

    def search_offers(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self.request("POST", "/api/v0/bundles/", body=query).get("offers") or [])

    def gpu_names(self) -> list[str]:
        return list(self.request("GET", "/api/v0/gpu_names/unique/").get("gpu_names") or [])

    def current_user(self) -> dict[str, Any]:
        return self.request("GET", "/api/v0/users/current")

    def get_instance(self, instance_id: int) -> dict[str, Any] | None:
        return self.request("GET", f"/api/v0/instances/{int(instance_id)}/", params={"owner": "me"}).get(
            "instances")

    def iter_instances(self, select_filters: dict[str, Any] | None = None, page_size: int = 25,
                       max_pages: int = 1000) -> Iterator[dict[str, Any]]:
        """Every instance of the account, through the v1 list's pages."""
        token = None
        for _page in range(max_pages):
            params: dict[str, Any] = {"select_filters": select_filters or {},
                                      "order_by": [{"col": "id", "dir": "asc"}], "limit": page_size}
            if token:
                params["after_token"] = token
            page = self.request("GET", "/api/v1/instances/", params=params)
            yield from page.get("instances") or []
            token = page.get("next_token")
            if not token:
                return
        raise VastAPIError(200, f"more than {max_pages} pages of instances", method="GET", path="/api/v1/instances/")

    def list_instances(self, select_filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return list(self.iter_instances(select_filters))

    def create_instance(self, offer_id: int, payload: dict[str, Any]) -> dict[str, Any]:
        # success:false here means "created but stopped": the contract exists and bills storage.
        return self.request("PUT", f"/api/v0/asks/{int(offer_id)}/", body=payload, idempotent=False,
                            allow_unsuccessful=True)

    def destroy_instance(self, instance_id: int) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v0/instances/{int(instance_id)}/", body={})

    def set_instance_state(self, instance_id: int, state: str) -> dict[str, Any]:
        return self.request("PUT", f"/api/v0/instances/{int(instance_id)}/", body={"state": state},
                            allow_unsuccessful=True)

    def set_label(self, instance_id: int, label: str) -> dict[str, Any]:
        return self.request("PUT", f"/api/v0/instances/{int(instance_id)}/", body={"label": label})

    def ssh_keys(self) -> list[dict[str, Any]]:
        keys = self.request("GET", "/api/v0/ssh/")
        return list(keys if isinstance(keys, list) else keys.get("ssh_keys") or [])

    def add_ssh_key(self, public_key: str) -> dict[str, Any]:
        return self.request("POST", "/api/v0/ssh/", body={"ssh_key": public_key})

    def delete_ssh_key(self, key_id: int) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v0/ssh/{int(key_id)}/", body={})


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
