# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting, in one shape: a deadline shared by a whole module run, and waiters that poll one value
until a success check passes or a failure acceptor says it never will, as boto3's waiter tables do.

The instance waiters every module uses (usable, stopped, gone) are defined here once.

Private to the collection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import WaitFailed, WaitTimeout
from .rows import STOPPED_STATUSES, hopeless_reason, ssh_endpoint


class Deadline:
    """One monotonic deadline shared by every request and wait of a module run."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seconds = seconds
        self.expires = clock() + seconds

    @property
    def remaining(self) -> float:
        return max(0.0, self.expires - self.clock())

    @property
    def expired(self) -> bool:
        return self.remaining <= 0


def wait_until(
    check: Callable[[], Any],
    deadline: Deadline,
    *,
    interval: float = 2.0,
    max_interval: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Call ``check`` until it returns something truthy or the deadline passes (then None).

    The interval grows so long waits poll sparsely; the last poll lands on the deadline.
    """
    delay = interval
    while True:
        result = check()
        if result:
            return result
        if deadline.expired:
            return None
        sleep(min(delay, max(deadline.remaining, 0.0)))
        delay = min(delay * 1.5, max_interval)


@dataclass(frozen=True)
class Waiter:
    """What to wait for: ``success(value)`` ends the wait, ``failure(value)`` (a reason) ends it early.

    ``timeout_message(last value polled, seconds)`` says what did not happen in time.
    """

    success: Callable[[Any], bool]
    failure: Callable[[Any], str | None]
    timeout_message: Callable[[Any, float], str]
    interval: float = 1.0
    max_interval: float = 5.0

    def wait(self, fetch: Callable[[], Any], deadline: Deadline, *,
             sleep: Callable[[float], None] = time.sleep) -> Any:
        """Poll ``fetch`` until success; WaitFailed when the failure acceptor matches, WaitTimeout at the deadline."""
        last: list[Any] = [None]

        def check() -> tuple[Any] | None:
            value = fetch()
            last[0] = value
            reason = self.failure(value)
            if reason:
                raise WaitFailed(reason)
            return (value,) if self.success(value) else None

        done = wait_until(check, deadline, interval=self.interval, max_interval=self.max_interval, sleep=sleep)
        if done is None:
            raise WaitTimeout(self.timeout_message(last[0], deadline.seconds))
        return done[0]


def ssh_banner(host: str, port: int, timeout: float = 5.0) -> bool:
    """True when host:port accepts TCP and greets with an SSH banner."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except (OSError, ValueError):
        return False


def instance_usable(instance_id: int, deadline: Deadline) -> Waiter:
    """Running and answering SSH; fails on a row that vanished or a state waiting cannot fix."""

    def failure(row: dict[str, Any] | None) -> str | None:
        if row is None:
            return f"instance {instance_id} disappeared while starting"
        reason = hopeless_reason(row)
        return f"instance {instance_id} will not start: {reason}" if reason else None

    def success(row: dict[str, Any]) -> bool:
        if row.get("actual_status") != "running":
            return False
        host, port, _kind = ssh_endpoint(row)
        return bool(host) and ssh_banner(host, port, timeout=min(5.0, deadline.remaining + 0.1))  # type: ignore[arg-type]

    def timeout_message(row: dict[str, Any] | None, seconds: float) -> str:
        row = row or {}
        return (f"instance {instance_id} was not running with SSH answering within {seconds:g} s (last status "
                f"{row.get('actual_status')!r}: {row.get('status_msg')})")

    # Quick at first (a cached image can be up in seconds; the manual lifecycle checks every second), sparse after:
    # a minute's boot costs ~20 reads instead of ~15.
    return Waiter(success=success, failure=failure, timeout_message=timeout_message, interval=0.25,
                  max_interval=5.0)


def instance_stopped(instance_id: int) -> Waiter:
    return Waiter(
        success=lambda row: row.get("actual_status") in STOPPED_STATUSES,
        failure=lambda row: f"instance {instance_id} disappeared while stopping" if row is None else None,
        timeout_message=lambda row, seconds: f"instance {instance_id} did not stop within {seconds:g} s",
        interval=1.0, max_interval=5.0)


def instance_gone(instance_id: int) -> Waiter:
    return Waiter(success=lambda row: row is None, failure=lambda row: None,
                  timeout_message=lambda row, seconds: f"instance {instance_id} is still listed {seconds:g} s "
                  "after destroy",
                  interval=0.5, max_interval=2.0)
