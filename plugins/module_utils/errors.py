# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The errors of the collection's controller side: what went wrong, Vast's own words, what to do.

Every error carries ``hint``, the next step for the person reading it, so a module fails with a
message, a status and what to do in one shape (``VastModule.fail_on``). The API key never appears
in any of them.

Private to the collection.
"""

from __future__ import annotations

from typing import Any


class VastError(Exception):
    """Base of every error of the collection's Vast code; ``hint`` says what to do about it."""

    default_hint: str | None = None

    def __init__(self, msg: str, *, hint: str | None = None) -> None:
        super().__init__(msg)
        self.hint = hint if hint is not None else self.default_hint


class VastConfigError(VastError):
    """Bad or missing configuration (no key, bad URL): nothing was sent."""


class VastUnreachable(VastConfigError):
    """The API refused every connection from the first one on: a wrong URL or a service that is down."""

    default_hint = "check VAST_URL or the api_url option, and that the service is up"


class VastAPIError(VastError):
    """Vast answered with an error. ``status`` is the HTTP status (200 for ``success: false``, 0 for none)."""

    def __init__(self, status: int, msg: str, *, error: str | None = None, method: str = "",
                 path: str = "", body: Any = None, hint: str | None = None) -> None:
        self.status, self.msg, self.error = status, msg, error
        self.method, self.path, self.body = method, path, body
        where = f"{method} {path}: " if method else ""
        code = f" ({error})" if error else ""
        super().__init__(f"{where}HTTP {status}{code}: {msg}", hint=hint)


class VastAuthError(VastAPIError):
    """401/403: the key is missing, wrong or lacks a permission."""

    default_hint = ("check the key: VAST_API_KEY, the api_key option, or ~/.config/vastai/vast_api_key "
                    "(and VAST_URL or api_url for the service it belongs to)")


class VastNotFound(VastAPIError):
    """404: no such instance, offer or key."""


class VastUnavailable(VastAPIError):
    """The offer is gone or taken (410 with ``cancel_unavail``, or 404 ``no_such_ask``)."""

    default_hint = "the offer was rented by someone else; search again"


class VastRetryExhausted(VastAPIError):
    """Transient errors (429/5xx/connection) did not stop before the deadline."""

    default_hint = ("the API kept refusing or did not answer; try again later, or give the call more time "
                    "(api_timeout, wait_timeout)")


class VastAmbiguousError(VastError):
    """A non-idempotent request may or may not have taken effect (timeout or 5xx after sending).

    Callers must look before they retry (e.g. find the instance by label).
    """


class WaitFailed(VastError):
    """A wait ended early: what was waited for can no longer happen (a failure acceptor matched)."""


class WaitTimeout(VastError):
    """A wait ran out of time before its success check passed."""


def error_details(exc: VastError) -> dict[str, Any]:
    """The fields a failed task reports for ``exc``: the message, Vast's status and words, what to do."""
    details: dict[str, Any] = {"msg": f"{exc}; {exc.hint}" if exc.hint else str(exc)}
    if isinstance(exc, VastAPIError):
        details.update(status=exc.status, error=exc.error, vast_msg=exc.msg)
    if exc.hint:
        details["hint"] = exc.hint
    return details
