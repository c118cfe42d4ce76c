# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which outcome a set of observations of a run means (completed, crash, diverged, stall, max_runtime,
instance_gone, timeout), the stall clock, the run's start time and the instance's verdict from its
API row. Pure: every time is passed in, so it is unit-tested without a host or a clock.

Private to the collection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

OUTCOMES = ("completed", "crash", "diverged", "stall", "max_runtime", "preempted", "host_lost", "instance_gone",
            "timeout", "budget")
# The outcomes where the machine, not the run, ended it: what recovery acts on (instance_gone: destroyed or
# stopped by someone, which recovery leaves alone).
GONE_OUTCOMES = ("preempted", "host_lost", "instance_gone")
# Exit codes of coreutils `timeout` (TERM, then KILL after -k): the host-side max runtime fired.
TIMEOUT_EXIT_CODES = frozenset({124, 137})


# ------------------------------------------------------------------------------------ stall clock

class StallClock:
    """Seconds since the progress token last changed; times come from the caller's clock."""

    def __init__(self, timeout: float, now: float) -> None:
        self.timeout = timeout
        self.token: Any = None
        self.since = now
        self.observed = False

    def observe(self, token: Any, now: float) -> bool:
        """Record one poll's token; True when it moved (the first observation counts as a move)."""
        moved = not self.observed or token != self.token
        if moved:
            self.token, self.since, self.observed = token, now, True
        return moved

    def idle(self, now: float) -> float:
        return max(0.0, now - self.since)

    def stalled(self, now: float) -> bool:
        return self.observed and self.timeout > 0 and self.idle(now) >= self.timeout


# ------------------------------------------------------------------------------------- start time

_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?")
_EPOCH = re.compile(r"(?<![\d.])1\d{9}(?:\.\d+)?(?![\d])")


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO 8601 text (naive means UTC)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    match = _ISO.search(text)
    if not match:
        return None
    stamp = match.group(0).replace(" ", "T")
    if stamp.endswith("Z"):
        stamp = stamp[:-1] + "+00:00"
    stamp = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", stamp)
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def started_from_status(text: str) -> float | None:
    """The run's start time from STATUS.md: the first line that mentions a start and a time."""
    for line in text.splitlines():
        if "start" not in line.lower():
            continue
        match = _ISO.search(line)
        if match:
            stamp = parse_timestamp(match.group(0))
            if stamp is not None:
                return stamp
        match = _EPOCH.search(line)
        if match:
            return float(match.group(0))
    return None


# --------------------------------------------------------------------------------------- the API

def instance_verdict(row: dict[str, Any] | None) -> str | None:
    """Why the instance can no longer run the job, from its API row; None while it can."""
    if not row:
        return "destroyed (the API no longer lists it)"
    actual, intended, cur = row.get("actual_status"), row.get("intended_status"), row.get("cur_state")
    note = f": {row['status_msg']}" if row.get("status_msg") else ""
    if cur == "unloaded":
        return "destroyed (cur_state unloaded)"
    if intended == "running" and cur == "stopped":
        return f"outbid or interrupted: intended running but cur_state stopped{note}"
    if intended in ("stopped", "frozen"):
        return f"{intended} (intended_status {intended}){note}"
    if actual == "offline":
        return "offline (the host disconnected)"
    if actual in ("exited", "unknown"):
        return f"container {actual}{note}"
    return None


def gone_kind(row: dict[str, Any] | None) -> str:
    """Which outcome a gone instance is: ``preempted`` (an interruptible one outbid: stopped, disk kept, it may
    resume when its bid wins again), ``host_lost`` (the machine went offline or its container died under a
    running contract) or ``instance_gone`` (destroyed, or stopped on purpose by someone)."""
    if not row or row.get("cur_state") == "unloaded" or row.get("intended_status") in ("stopped", "frozen"):
        return "instance_gone"
    message = str(row.get("status_msg") or "").lower()
    if row.get("intended_status") == "running" and row.get("cur_state") == "stopped":
        return "preempted" if row.get("is_bid") or "outbid" in message else "host_lost"
    return "host_lost"


# ---------------------------------------------------------------------------------- the decision

@dataclass
class Observation:
    """What the watch knows after a poll (or a failed poll), for decide()."""

    exit_code: int | None = None
    exit_code_raw: str | None = None
    tmux: bool | None = True
    restarted: bool = False  # the host's container restarted since the launch (its processes are gone, its disk kept)
    run_dir_exists: bool = True
    traceback: bool = False
    summary: bool = False
    summary_required: bool = True
    host_fresh: bool = True  # this observation includes a successful host poll
    run_elapsed: float | None = None
    idle: float = 0.0
    stalled: bool = False
    progress: str = ""
    diverging_records: int = 0  # consecutive training records whose loss says the run diverged
    divergence: str = ""  # those records in words
    # The last training record's loss was NaN or infinite (or 0.0 beside a NaN grad_norm): the weights are.
    ends_nonfinite: bool = False
    instance_gone: str | None = None
    gone_kind: str = "instance_gone"
    stopped_by: str | None = None  # a teardown from outside the run stopped its trainer (host_poll.STOPPED_MARK)
    unreachable_for: float | None = None
    watch_elapsed: float = 0.0


@dataclass
class Limits:
    max_runtime: float = 0.0
    stall_timeout: float = 900.0
    reconnect_timeout: float = 600.0
    timeout: float = 0.0
    diverge_records: int = 3  # 0: a diverged loss never ends the watch (nor fails a run that ended)


def decide(obs: Observation, limits: Limits) -> tuple[str, str] | None:
    """The outcome and its message, or None to keep watching.

    Precedence: completed > preempted/host_lost/instance_gone > crash > diverged > max_runtime > stall > timeout,
    except that a run which exited 0 with its loss diverged (the streak, or a last record that is NaN or infinite
    however short its streak) is diverged, not completed. A
    host-side `timeout` kill at the max runtime (exit 124/137) is max_runtime, not a crash; a host that stays
    unreachable while the API still calls it running is host_lost.
    """
    ended = obs.exit_code is not None or obs.exit_code_raw is not None
    diverged = limits.diverge_records > 0 and obs.diverging_records >= limits.diverge_records
    if obs.host_fresh and obs.exit_code == 0 and (obs.summary or not obs.summary_required):
        if diverged:  # it ran to its end before a poll saw the streak: what it trained is not a result
            return "diverged", f"{obs.divergence}; the run then exited 0"
        if limits.diverge_records > 0 and obs.ends_nonfinite:
            # Fewer records than the streak needs, but they were its last: the final weights are NaN too.
            return "diverged", (f"{obs.divergence}; the run then exited 0 with that loss (its final weights are "
                                "not a result)")
        return "completed", "the run exited 0" + (" and printed its summary" if obs.summary else "")
    if obs.instance_gone:
        return obs.gone_kind, f"the instance is gone: {obs.instance_gone}"
    if obs.host_fresh and obs.stopped_by and ended:  # a completed run (exit 0, its summary) was decided above
        # Not the run's crash: its trainer was stopped on purpose, and that teardown brings its newest checkpoint
        # home and destroys the instance (recovery leaves it alone, as it leaves a destroyed instance).
        code = obs.exit_code if obs.exit_code is not None else obs.exit_code_raw
        return "instance_gone", (f"the run was stopped from outside it by {obs.stopped_by} (exit code {code}), "
                                 "which brings its newest checkpoint home and destroys the instance")
    if obs.unreachable_for is not None and obs.unreachable_for >= limits.reconnect_timeout:
        return "host_lost", (f"the host has been unreachable for {obs.unreachable_for:.0f} s "
                             f"(reconnect_timeout {limits.reconnect_timeout:g} s)")
    if obs.host_fresh and obs.restarted and not ended and not obs.tmux:
        # Not a crash of the run: the host went away and came back (a reboot, an offline spell shorter than a poll,
        # the provider restarting the container) and took the run's processes with it. Recovery resumes it.
        return "host_lost", ("the host restarted since the run was launched (its container's first process is new): "
                             "the run's processes are gone, its disk is kept")
    if obs.host_fresh:
        at_limit = (limits.max_runtime > 0 and obs.run_elapsed is not None
                    and obs.run_elapsed >= limits.max_runtime - 5)
        if obs.exit_code in TIMEOUT_EXIT_CODES and at_limit and not obs.traceback:
            return "max_runtime", (f"the host's timeout stopped the run at its max runtime "
                                   f"({limits.max_runtime:g} s; exit code {obs.exit_code})")
        if obs.exit_code_raw is not None:
            return "crash", f"the exit-code file holds {obs.exit_code_raw!r}, not a number"
        if obs.exit_code is not None and obs.exit_code != 0:
            return "crash", f"the run exited with code {obs.exit_code}" + (
                " after a traceback" if obs.traceback else "")
        if obs.traceback:
            return "crash", "a traceback is in the log" + ("" if ended else " (the process has not exited yet)")
        if obs.exit_code == 0:
            return "crash", "the run exited 0 without the summary marker"
        if obs.tmux is None:
            return "crash", "tmux is not installed on the host, so the run's session cannot exist"
        if obs.tmux is False:
            where = "" if obs.run_dir_exists else "; the run directory does not exist"
            return "crash", f"the tmux session is gone and no exit code was written{where}"
        if diverged:
            # Training on from a NaN or exploding loss only spends money: every later step and checkpoint is lost.
            return "diverged", obs.divergence
        if limits.max_runtime > 0 and obs.run_elapsed is not None and obs.run_elapsed >= limits.max_runtime:
            return "max_runtime", (f"the run has been going {obs.run_elapsed:.0f} s, beyond max_runtime "
                                   f"{limits.max_runtime:g} s")
        if obs.stalled:
            return "stall", (f"no progress for {obs.idle:.0f} s ({obs.progress}; "
                             f"stall_timeout {limits.stall_timeout:g} s)")
    if limits.timeout > 0 and obs.watch_elapsed >= limits.timeout:
        return "timeout", f"the watch's own limit of {limits.timeout:g} s was reached; the run goes on"
    return None


def describe_progress(token: tuple[Any, ...]) -> str:
    kind = token[0] if token else None
    if kind == "step":
        return f"last step {token[1]}"
    if kind == "records":
        return f"{token[1]} training records" + (f", epoch {token[2]}" if token[2] is not None else "")
    if kind == "bytes":
        return "no training record yet; the log has not grown" if token[1] is not None else "no log yet"
    return "no progress seen"
