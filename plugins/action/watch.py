# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.watch: one blocking task on the controller that watches a training run in tmux on
the rented host until it completes, crashes, stalls, outlives its max runtime or loses its
instance. Documentation: plugins/modules/watch.py. What a poll asks and reads: plugin_utils/host_poll.py;
the log: plugin_utils/training_log.py; the decisions: plugin_utils/watch_decisions.py.

The task targets the rented host; every poll is one short shell command over that host's own
connection (``_low_level_execute_command``), so SSH options, ControlPersist, keys and become come
from the inventory as for any other task. Nothing on the host is changed. The Vast API is asked
through the collection's VastClient, from the controller, with the key of the controller.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible_collections.mlops.vast.plugins.module_utils.api_client import VastClient, resolve_api_key
from ansible_collections.mlops.vast.plugins.module_utils.errors import (
    VastAuthError,
    VastConfigError,
    VastError,
    VastNotFound,
)
from ansible_collections.mlops.vast.plugins.module_utils.instance_cache import InstanceListCache
from ansible_collections.mlops.vast.plugins.module_utils.vast_module import auth_argument_spec
from ansible_collections.mlops.vast.plugins.module_utils.waiting import Deadline
from ansible_collections.mlops.vast.plugins.plugin_utils.file_content import write_atomic
from ansible_collections.mlops.vast.plugins.plugin_utils.host_poll import PollRequest, parse_poll, poll_script
from ansible_collections.mlops.vast.plugins.plugin_utils.lease_keeper import LeaseKeeper
from ansible_collections.mlops.vast.plugins.plugin_utils.redaction import redact_text, redacted
from ansible_collections.mlops.vast.plugins.plugin_utils.training_log import (
    DEFAULT_SUMMARY_REGEX,
    DEFAULT_TRACEBACK_REGEX,
    LAST_LINES,
    DivergenceStreak,
    LogFollower,
    Metrics,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.watch_decisions import (
    GONE_OUTCOMES,
    OUTCOMES,
    Limits,
    Observation,
    StallClock,
    decide,
    describe_progress,
    gone_kind,
    instance_verdict,
    parse_timestamp,
    started_from_status,
)

display = Display()


def instance_spend(row: dict[str, Any] | None, now: float) -> tuple[float, float] | None:
    """($ spent, $ per second) from an instance row: the GPU part (dph_base) while it has been running
    (uptime_mins), storage (storage_total_cost) since it was created (start_date), as Vast bills them;
    without those fields, dph_total over its whole age (an upper bound)."""
    if not row or row.get("start_date") is None or row.get("dph_total") is None:
        return None
    age_h = max(0.0, now - float(row["start_date"])) / 3600
    rate = float(row["dph_total"]) / 3600
    if row.get("uptime_mins") is None or row.get("dph_base") is None or row.get("storage_total_cost") is None:
        return age_h * 3600 * rate, rate
    spent = float(row["uptime_mins"]) / 60 * float(row["dph_base"]) + age_h * float(row["storage_total_cost"])
    return spent, rate


ARGUMENT_SPEC: dict[str, Any] = {
    "run_dir": {"type": "str", "required": True},
    "log_file": {"type": "str", "default": "run.log"},
    "exit_code_file": {"type": "str", "default": "EXIT_CODE"},
    "status_file": {"type": "str", "default": "STATUS.md"},
    "started_file": {"type": "str", "default": "STARTED_AT"},
    "tmux_session": {"type": "str", "required": True},
    "log_format": {"type": "str", "choices": ["hf", "jsonl"], "default": "hf"},
    "metrics_file": {"type": "str"},
    "logging_steps": {"type": "int"},
    "summary_regex": {"type": "str", "default": DEFAULT_SUMMARY_REGEX},
    "traceback_regex": {"type": "str", "default": DEFAULT_TRACEBACK_REGEX},
    "poll_interval": {"type": "float", "default": 30.0},
    "end_wait": {"type": "float", "default": 8.0},
    "stall_timeout": {"type": "float", "default": 900.0},
    "diverge_records": {"type": "int", "default": 3},
    "diverge_factor": {"type": "float"},
    "max_runtime": {"type": "float", "default": 0.0},
    "started_at": {"type": "raw"},
    "instance_id": {"type": "int"},
    "api_poll_interval": {"type": "float", "default": 120.0},
    "reconnect_timeout": {"type": "float", "default": 600.0},
    "sync_command": {"type": "str"},
    "sync_interval": {"type": "float", "default": 600.0},
    "sync_timeout": {"type": "float", "default": 1800.0},
    "gpu_util": {"type": "bool", "default": True},
    "fail_on": {"type": "list", "elements": "str", "choices": list(OUTCOMES),
                "default": [o for o in OUTCOMES if o != "completed"]},
    "timeout": {"type": "float", "default": 0.0},
    "max_total_usd": {"type": "float", "default": 0.0},
    "stop_margin_s": {"type": "float", "default": 60.0},
    "total_steps": {"type": "int"},
    "shared_list": {"type": "bool", "default": False},
    "progress_file": {"type": "path"},
    **auth_argument_spec(),
}

# A poll command that has not answered after this long is treated as a dropped connection.
MIN_COMMAND_TIMEOUT = 60.0
# A poll still running after this long makes the API checks come faster (the host may be gone).
HANGING_POLL = 10.0
# While a poll runs, the API, the sync and the watch's timeout are looked at this often (seconds).
WAIT_SLICE = 1.0
MAX_BACKOFF = 30.0
MIN_ETA_ELAPSED_S = 3.0
KEPT_SYNCS = 100


class _PollTimeout(Exception):
    pass


class _PollAbandoned(Exception):
    """A long poll given up while it was still waiting on the host as asked (the API says the instance is gone, the
    watch's time is up): the connection did nothing wrong, so it is not a failure."""


class _HostFailure(Exception):
    """A poll that did not answer: the connection, or the command itself (``connection=False``)."""

    def __init__(self, msg: str, *, connection: bool = True) -> None:
        super().__init__(msg)
        self.connection = connection


class SyncRunner:
    """The optional controller-side sync command, started every ``interval`` seconds in the
    background (polls go on meanwhile), killed with its process group after ``timeout``."""

    def __init__(self, command: str, interval: float, timeout: float, now: float, origin: float) -> None:
        self.command, self.interval, self.timeout = command, interval, timeout
        self.origin = origin
        self.next_due = now + interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: Any = None
        self.started = 0.0
        self.records: list[dict[str, Any]] = []
        self.count = 0
        self.failures = 0

    @property
    def running(self) -> bool:
        return self.proc is not None

    def tick(self, now: float) -> None:
        if self.proc is not None:
            if self.proc.poll() is not None:
                self._record(now, self.proc.returncode, timed_out=False)
            elif now - self.started >= self.timeout:
                self._kill()
                self._record(now, self.proc.returncode, timed_out=True)
        if self.proc is None and now >= self.next_due:
            self._start(now)

    def _start(self, now: float) -> None:
        self.output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _record
        self.started = now
        self.next_due = now + self.interval
        self.proc = subprocess.Popen(self.command, shell=True, stdin=subprocess.DEVNULL, stdout=self.output,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def _kill(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _record(self, now: float, rc: int | None, *, timed_out: bool) -> None:
        text = ""
        if self.output is not None:
            with contextlib.suppress(OSError):
                self.output.seek(0, os.SEEK_END)
                size = self.output.tell()
                self.output.seek(max(0, size - 2000))
                text = self.output.read().decode("utf-8", "replace")
            self.output.close()
        self.count += 1
        ok = rc == 0 and not timed_out
        self.failures += 0 if ok else 1
        self.records.append({"n": self.count, "rc": rc, "ok": ok, "timed_out": timed_out,
                             "at_s": round(self.started - self.origin, 2),
                             "duration_s": round(now - self.started, 2), "output": text[-1000:]})
        del self.records[:-KEPT_SYNCS]
        if not ok:
            display.warning(f"mlops.vast.watch: sync_command failed (rc {rc}{', timed out' if timed_out else ''}); "
                            "the watch goes on")
        self.proc, self.output = None, None

    def finish(self, now: Callable[[], float], *, wait: bool) -> None:
        """At the end of the watch: let a running sync end within its timeout, or stop it."""
        if self.proc is None:
            return
        if wait:
            remaining = max(0.0, self.timeout - (now() - self.started))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(remaining)
        if self.proc.poll() is None:
            self._kill()
            self._record(now(), self.proc.returncode, timed_out=True)
        else:
            self._record(now(), self.proc.returncode, timed_out=False)


class Watcher:
    def __init__(self, action: ActionModule, params: dict[str, Any], *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, wall: Callable[[], float] = time.time) -> None:
        self.action = action
        self.p = params
        self.clock, self.sleep, self.wall = clock, sleep, wall
        self.marker = "@@mlops-watch-" + secrets.token_hex(6)
        self.follower = LogFollower(log_format=params["log_format"], traceback_regex=params["traceback_regex"] or None,
                                    summary_regex=params["summary_regex"] or None,
                                    logging_steps=params["logging_steps"], diverge_factor=params["diverge_factor"])
        # The metrics file, followed as the log is: its records, once they come, outrank the log's.
        self.metrics_follower = (LogFollower(log_format=params["log_format"], traceback_regex=None, summary_regex=None,
                                             logging_steps=params["logging_steps"],
                                             diverge_factor=params["diverge_factor"])
                                 if params["metrics_file"] else None)
        self.limits = Limits(max_runtime=params["max_runtime"], stall_timeout=params["stall_timeout"],
                             reconnect_timeout=params["reconnect_timeout"], timeout=params["timeout"],
                             diverge_records=params["diverge_records"])
        self.command_timeout = max(MIN_COMMAND_TIMEOUT, 2 * params["poll_interval"])
        self.start = clock()
        self.stall = StallClock(params["stall_timeout"], self.start)
        self.polls = 0
        self.host_wait = 0.0  # how long the poll in flight may wait on the host for the run's end
        self.reconnects = 0
        self.connection_failures = 0
        self.last_failure: str | None = None
        self.unreachable_since: float | None = None
        self.exit_code: int | None = None
        self.exit_code_raw: str | None = None
        self.tmux: bool | None = None
        self.restarted = False
        self.stopped_by: str | None = None
        self.run_dir_exists = True
        self.gpu_util: list[int] | None = None
        self.host_offset: float | None = None  # host clock minus controller clock
        self.run_started: float | None = parse_timestamp(params["started_at"])
        self.run_started_source = "started_at" if self.run_started is not None else None
        self.status_read = False
        # API
        self.client = None
        self.api_key: str | None = None
        self.api_polls = 0
        self.api_error: str | None = None
        self.instance_row: dict[str, Any] | None = None
        self.instance_row_at: float | None = None
        self.instance_gone: str | None = None
        self.gone_kind = "instance_gone"
        self.last_api: float | None = None
        self.api_now = False
        self.api_cache = InstanceListCache(clock=self.wall) if params["shared_list"] else None
        self.poll_hanging = False
        self.sync = (SyncRunner(params["sync_command"], params["sync_interval"], params["sync_timeout"], self.start,
                                self.start) if params["sync_command"] else None)

    # --------------------------------------------------------------------------------- API

    def open_api(self) -> None:
        if self.p["instance_id"] is None:
            return
        with contextlib.suppress(VastConfigError):
            self.api_key = resolve_api_key(self.p["api_key"])[0]
        self.client = VastClient.from_options(self.p, Deadline(self._api_budget()))

    def lease(self) -> contextlib.AbstractContextManager[Any]:
        """The instance's lease kept fresh while this watch lives (mlops.vast.vast_reap reaps expired ones)."""
        if self.client is None:
            return contextlib.nullcontext()
        return LeaseKeeper(self.p["instance_id"], self.client.base_url, self.p["poll_interval"])

    def _api_budget(self) -> float:
        return max(2 * (self.p["api_timeout"] or 30.0), 30.0)

    def api_poll(self, *, urgent: bool = False) -> None:
        """Read the instance's row: from the account's instance list shared by every watcher on this controller
        (module_utils/instance_cache.py; a list younger than half the API interval is reused, at most 2 s when
        ``urgent``), or with its own request when ``shared_list`` is off."""
        if self.client is None:
            return
        self.last_api = self.clock()
        self.client.deadline = Deadline(self._api_budget())
        self.api_polls += 1
        row_at = None
        try:
            if self.api_cache is not None:
                max_age = min(self._api_interval() / 2, 2.0) if urgent else self._api_interval() / 2
                # A row that says the instance is gone is never taken from the cache: it is read again first.
                row, row_at, _cached = self.api_cache.instance(
                    self.client, self.api_key, self.p["instance_id"], max_age,
                    confirm=lambda found: instance_verdict(found) is not None)
            else:
                row = self.client.get_instance(self.p["instance_id"])
        except VastNotFound:
            row = None
        except VastAuthError:
            raise
        except VastError as exc:
            self.api_error = str(exc)
            display.vv(f"mlops.vast.watch: API poll failed, will retry: {exc}")
            return
        self.api_error = None
        self.instance_row = row
        self.instance_row_at = min(row_at, self.wall()) if row_at is not None else self.wall()
        self.instance_gone = instance_verdict(row)
        self.gone_kind = gone_kind(row)

    # -------------------------------------------------------------------------------- host

    def _execute(self, command: str) -> dict[str, Any]:
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                # Not sudoable: Ansible's ssh would then ask for a tty (-tt), which turns "\n" into "\r\n"
                # and mixes stderr into stdout; the log's bytes must arrive as they are.
                box["result"] = self.action._low_level_execute_command(command, sudoable=False)
            except BaseException as exc:  # handed to the watching thread
                box["error"] = exc

        worker = threading.Thread(target=target, name="mlops-vast-watch-poll", daemon=True)
        started = time.monotonic()
        worker.start()
        while True:
            worker.join(WAIT_SLICE)
            if not worker.is_alive():
                break
            waited = time.monotonic() - started
            if waited >= self.command_timeout:
                raise _PollTimeout(f"the poll command did not answer within {self.command_timeout:g} s")
            reason = self._while_waiting(waited - self.host_wait)  # the time it was asked to wait does not count
            if reason:
                raise (_PollAbandoned if waited < self.host_wait else _PollTimeout)(reason)
        if "error" in box:
            raise box["error"]
        return box["result"]

    def host_poll(self) -> None:
        want_status = not self.status_read or (self.run_started is None and self.limits.max_runtime > 0)
        request = PollRequest(
            run_dir=self.p["run_dir"], log_file=self.p["log_file"], exit_code_file=self.p["exit_code_file"],
            tmux_session=self.p["tmux_session"], marker=self.marker, log_offset=self.follower.next_offset(),
            gpu_util=self.p["gpu_util"], metrics_file=self.p["metrics_file"],
            metrics_offset=self.metrics_follower.next_offset() if self.metrics_follower else 0,
            status_file=self.p["status_file"] if want_status and self.p["status_file"] else None,
            # Until it has been read (it outranks STATUS.md): the wrapper may not have written it yet.
            started_file=self.p["started_file"] if self.p["started_file"] and self.run_started_source not in (
                "started_at", self.p["started_file"]) else None,
            wait_exit_s=self.long_poll_s(),
        )
        self.host_wait = request.wait_exit_s
        try:
            answer = self._execute(poll_script(request))
        except AnsibleConnectionFailure as exc:
            raise _HostFailure(f"connection failure: {exc}") from None
        except _PollTimeout as exc:
            raise _HostFailure(str(exc)) from None
        except AnsibleError as exc:
            raise _HostFailure(f"{type(exc).__name__}: {exc}") from None
        stdout = answer.get("stdout") or ""
        snap = parse_poll(stdout, self.marker)
        if not snap.ok:
            rc = answer.get("rc")
            detail = (answer.get("stderr") or stdout or "").strip()[-500:]
            raise _HostFailure(f"the poll command failed (rc {rc}): {detail}", connection=rc == 255)
        controller_now = self.wall()
        if snap.host_now is not None:
            self.host_offset = snap.host_now - controller_now
        self.exit_code, self.exit_code_raw = snap.exit_code, snap.exit_code_raw
        self.tmux, self.run_dir_exists, self.restarted = snap.tmux, snap.run_dir_exists, snap.restarted
        self.stopped_by = snap.stopped_by
        if snap.gpu_util is not None or not self.p["gpu_util"]:
            self.gpu_util = snap.gpu_util
        if request.started_file and snap.started_text:
            started = parse_timestamp(snap.started_text)
            if started is not None:
                self.run_started, self.run_started_source = started, self.p["started_file"]
        if request.status_file:
            self.status_read = True
            if snap.status_text and self.run_started is None:
                started = started_from_status(snap.status_text)
                if started is not None:
                    self.run_started, self.run_started_source = started, self.p["status_file"]
        self.follower.feed(snap.log_size, snap.log_start, snap.log_data)
        if self.metrics_follower is not None:
            self.metrics_follower.feed(snap.metrics_size, snap.metrics_start, snap.metrics_data)

    def long_poll_s(self) -> float:
        """How long this poll may wait on the host for the exit code: not on the first poll (it reads the state as it
        is), not once the run has ended or while the host was just lost, and never with sub-second polling."""
        interval = self.p["poll_interval"]
        if self.polls == 0 or interval < 1 or self.exit_code is not None or self.unreachable_since is not None:
            return 0.0
        return min(interval, self.p["end_wait"])

    def reset_connection(self) -> None:
        connection = self.action._connection
        for step in (getattr(connection, "reset", None), getattr(connection, "close", None)):
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # a reset that fails is retried with the next poll
                display.vvv(f"mlops.vast.watch: connection {step.__name__} failed: {exc}")

    # ----------------------------------------------------------------------------- state

    def training_records(self) -> LogFollower:
        """Where step, loss and divergence are read: the metrics file once it holds a training record, else the log."""
        metrics_file = self.metrics_follower
        return metrics_file if metrics_file is not None and metrics_file.metric_lines else self.follower

    def metrics(self) -> Metrics:
        return self.training_records().metrics

    def divergence(self) -> DivergenceStreak:
        return self.training_records().divergence

    def progress_token(self) -> tuple[Any, ...]:
        return self.training_records().progress_token()

    def run_elapsed(self) -> tuple[float | None, str]:
        if self.run_started is not None:
            now = self.wall() + (self.host_offset or 0.0)
            return max(0.0, now - self.run_started), self.run_started_source or ""
        return self.clock() - self.start, "watch"

    def observation(self, *, host_fresh: bool) -> Observation:
        now = self.clock()
        elapsed = self.run_elapsed()[0]
        token = self.progress_token()
        return Observation(
            exit_code=self.exit_code, exit_code_raw=self.exit_code_raw, tmux=self.tmux, restarted=self.restarted,
            run_dir_exists=self.run_dir_exists, traceback=self.follower.traceback, summary=self.follower.summary,
            summary_required=bool(self.p["summary_regex"]), host_fresh=host_fresh, run_elapsed=elapsed,
            idle=self.stall.idle(now), stalled=self.stall.stalled(now), progress=describe_progress(token),
            diverging_records=self.divergence().count, divergence=self.divergence().describe(),
            ends_nonfinite=self.divergence().ends_nonfinite,
            instance_gone=self.instance_gone,
            gone_kind=self.gone_kind,
            stopped_by=self.stopped_by,
            unreachable_for=None if self.unreachable_since is None else now - self.unreachable_since,
            watch_elapsed=now - self.start,
        )

    # ------------------------------------------------------------------------------ loop

    def spend(self) -> tuple[float, float] | None:
        """($ spent so far, $ per second now) of the instance: its API row's figures, plus the full rate for
        the time since that row was read (so a failing or slow API never freezes the spend)."""
        spend = instance_spend(self.instance_row, self.instance_row_at or self.wall())
        if spend is None:
            return None
        spent, rate = spend
        return spent + max(0.0, self.wall() - (self.instance_row_at or self.wall())) * rate, rate

    def over_budget(self) -> str | None:
        """Why the run must stop now: spent plus the burn until the next look and the stop would pass the budget."""
        budget = self.p["max_total_usd"]
        spend = self.spend() if budget > 0 else None
        if spend is None:
            return None
        spent, rate = spend
        ahead = rate * (self.p["poll_interval"] + self.p["stop_margin_s"])
        if spent + ahead >= budget:
            return (f"${spent:.4f} spent and ${ahead:.4f} more until the next look and the teardown would pass the "
                    f"budget of ${budget:g}; stopping with the newest checkpoint")
        return None

    def eta_s(self) -> float | None:
        step = self.metrics().step
        elapsed = self.run_elapsed()[0]
        total = self.p["total_steps"]
        # The run's start and the host's clock are whole seconds (date +%s): within the first seconds the rate is
        # noise (70 steps in "0.001 s" said the run was done).
        if not total or not step or elapsed is None or elapsed < MIN_ETA_ELAPSED_S or step <= 0:
            return None
        return max(0.0, (total - step) * elapsed / step)

    def progress(self, outcome: str | None) -> dict[str, Any]:
        """The progress file's record (a fixed contract: the mlops-vast CLI reads it)."""
        metrics = self.metrics()
        spend = self.spend()
        eta = self.eta_s()
        row = self.instance_row or {}

        def number(value: Any) -> float | None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None

        step = metrics.step
        return {
            "step": int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None,
            "total_steps": self.p["total_steps"],
            "loss": number(metrics.loss),
            "spent_usd": None if spend is None else round(spend[0], 6),
            "dph": number(row.get("dph_total")),
            "eta_s": None if eta is None else round(eta, 1),
            "instance_id": self.p["instance_id"],
            "outcome": outcome,
            "updated_at": round(self.wall(), 3),
        }

    def write_progress(self, outcome: str | None = None) -> None:
        """Replace ``progress_file`` atomically (a temporary file in its directory, then ``os.replace``); a
        failure to write it is reported at -vv and never stops the watch."""
        path = self.p["progress_file"]
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            write_atomic(path, json.dumps(self.progress(outcome)).encode("utf-8"), 0o644)
        except (OSError, TypeError, ValueError) as exc:
            display.vv(f"mlops.vast.watch: could not write the progress file {path}: {exc}")

    def _api_interval(self) -> float:
        interval = self.p["api_poll_interval"]
        if self.p["max_total_usd"] > 0:
            interval = min(interval, self.p["poll_interval"])  # the budget holds to one poll of burn
        if self.unreachable_since is not None or self.poll_hanging:
            # The host is not answering: ask the API often enough to tell a lost instance quickly.
            interval = min(interval, max(5.0, self.p["poll_interval"]))
        return interval

    def _api_due(self) -> bool:
        return self.client is not None and (self.api_now or self.last_api is None
                                            or self.clock() - self.last_api >= self._api_interval())

    def _api_if_due(self) -> None:
        if self._api_due():
            urgent, self.api_now = self.api_now, False
            self.api_poll(urgent=urgent)

    def _while_waiting(self, waited: float) -> str | None:
        """Called about every second while a poll command runs; a reason stops waiting for it."""
        self.poll_hanging = waited >= HANGING_POLL
        if self.sync is not None:
            self.sync.tick(self.clock())
        self._api_if_due()
        if self.instance_gone:
            return f"the API says the instance is gone ({self.instance_gone}) while a poll was waiting"
        if self.limits.timeout > 0 and self.clock() - self.start >= self.limits.timeout:
            return "the watch's timeout passed while a poll was waiting"
        return None

    def run(self) -> tuple[str, str]:
        p = self.p
        poll_interval = p["poll_interval"]
        backoff_cap = max(1.0, min(MAX_BACKOFF, poll_interval))
        backoff = min(1.0, backoff_cap)
        next_poll = self.start
        first_poll = True
        # The worker's parent is the controller (ansible-playbook's main process). Workers run in sessions of their
        # own, so a controller killed outright (or stopped by ansible-runner's cancel) leaves this one polling on
        # for nobody: once the parent changes, the watch ends (the run goes on in tmux; the teardown or the reaper
        # owns the instance).
        controller = os.getppid()
        while True:
            if os.getppid() != controller:
                raise AnsibleActionFail("mlops.vast.watch: the controller that started this watch is gone; "
                                        "the run goes on in tmux")
            now = self.clock()
            self._api_if_due()
            host_fresh = False
            if now >= next_poll:
                try:
                    self.host_poll()
                except _PollAbandoned as exc:
                    display.vvv(f"mlops.vast.watch: gave up a long poll: {exc}")
                    next_poll = self.clock()  # what ended it decides below; if nothing does, poll again
                except _HostFailure as exc:
                    if first_poll and not exc.connection:
                        raise AnsibleActionFail(f"mlops.vast.watch cannot poll the host: {exc}") from None
                    self.connection_failures += 1
                    self.last_failure = str(exc)
                    if self.unreachable_since is None:
                        self.unreachable_since = self.clock()
                        self.api_now = True  # ask the API at once whether the instance is gone
                        display.v(f"mlops.vast.watch: lost the host ({exc}); reconnecting")
                    self.reset_connection()
                    next_poll = self.clock() + backoff
                    backoff = min(backoff * 2, backoff_cap)
                    self._api_if_due()
                else:
                    first_poll = False
                    self.polls += 1
                    host_fresh = True
                    if self.unreachable_since is not None:
                        self.reconnects += 1
                        display.v(f"mlops.vast.watch: reconnected after {self.clock() - self.unreachable_since:.1f} s")
                        self.unreachable_since = None
                    backoff = min(1.0, backoff_cap)
                    self.stall.observe(self.progress_token(), self.clock())
                    # One interval from this answer to the next: the next poll starts early by as long as it may
                    # wait on the host, so the interval's last seconds are spent watching for the run's end.
                    next_poll = self.clock() + max(0.05, poll_interval - self.long_poll_s())
                    display.vvv(f"mlops.vast.watch: poll {self.polls}: exit={self.exit_code} tmux={self.tmux} "
                                f"{describe_progress(self.progress_token())}")
                finally:
                    self.poll_hanging = False
                self.write_progress()
            if self.sync is not None:
                self.sync.tick(self.clock())
            verdict = decide(self.observation(host_fresh=host_fresh), self.limits)
            budget_reason = None if verdict and verdict[0] in ("completed", *GONE_OUTCOMES) else self.over_budget()
            if budget_reason:
                return "budget", budget_reason
            if (verdict is not None and verdict[0] not in ("completed", *GONE_OUTCOMES) and self.client is not None
                    and (self.last_api is None or self.clock() - self.last_api > 2.0)):
                # Before blaming the run, make sure the instance itself is still there.
                self.api_poll(urgent=True)
                verdict = decide(self.observation(host_fresh=host_fresh), self.limits)
            if verdict is not None:
                return verdict
            wake = [next_poll]
            if self.client is not None and self.last_api is not None:
                wake.append(self.last_api + self._api_interval())
            if self.sync is not None:
                wake.append(self.clock() + min(1.0, poll_interval) if self.sync.running else self.sync.next_due)
            if self.limits.timeout > 0:
                wake.append(self.start + self.limits.timeout)
            if self.unreachable_since is not None:
                wake.append(self.unreachable_since + self.limits.reconnect_timeout)
            self.sleep(min(max(0.05, min(wake) - self.clock()), 60.0))

    def close(self, outcome: str | None) -> None:
        if self.sync is not None:
            self.sync.finish(self.clock, wait=outcome not in (None, *GONE_OUTCOMES))
        if self.client is not None:
            self.client.close()

    # ---------------------------------------------------------------------------- result

    def result(self, outcome: str, msg: str) -> dict[str, Any]:
        metrics = self.metrics()
        elapsed, source = self.run_elapsed()
        token = self.progress_token()
        row = self.instance_row
        spend, eta = self.spend(), self.eta_s()
        triage = {
            "step": metrics.step, "epoch": metrics.epoch, "loss": metrics.loss, "reward": metrics.reward,
            "last_lines": self.follower.last_lines(LAST_LINES),
            "traceback": self.follower.traceback,
            "traceback_excerpt": "\n".join(self.follower.traceback_excerpt),
            "summary": self.follower.summary, "summary_metrics": self.follower.summary_metrics,
            "gpu_util": self.gpu_util, "completed": outcome == "completed",
            "exit_code": self.exit_code if self.exit_code_raw is None else self.exit_code_raw,
            "tmux_alive": self.tmux,
            "divergence": self.divergence().record(),
            "spent_usd": None if spend is None else round(spend[0], 4),
            "eta_s": None if eta is None else round(eta, 1),
        }
        where = describe_progress(token)
        if metrics.loss is not None:
            where += f", loss {metrics.loss:.4g}" if isinstance(metrics.loss, float) else f", loss {metrics.loss}"
        return {
            "changed": False,
            "outcome": outcome,
            "msg": f"{outcome}: {msg} ({where})",
            "triage": triage,
            "polls": self.polls,
            "reconnects": self.reconnects,
            "connection_failures": self.connection_failures,
            "last_connection_failure": self.last_failure,
            "syncs": self.sync.records if self.sync else [],
            "sync_count": self.sync.count if self.sync else 0,
            "sync_failures": self.sync.failures if self.sync else 0,
            "elapsed_s": round(self.clock() - self.start, 2),
            "run_elapsed_s": None if elapsed is None else round(elapsed, 1),
            "run_elapsed_from": source,
            "idle_s": round(self.stall.idle(self.clock()), 1),
            "log": {"size": self.follower.size, "read": self.follower.offset, "gaps": self.follower.gaps,
                    "truncations": self.follower.truncations, "traceback_count": self.follower.traceback_count},
            "instance": None if self.p["instance_id"] is None else {
                "id": self.p["instance_id"],
                "gone": self.instance_gone,
                "actual_status": row.get("actual_status") if row else None,
                "intended_status": row.get("intended_status") if row else None,
                "cur_state": row.get("cur_state") if row else None,
                "status_msg": row.get("status_msg") if row else None,
                "api_polls": self.api_polls,
                "api_error": self.api_error,
            },
        }


def param_problems(params: dict[str, Any]) -> list[str]:
    """What is wrong with validated options, in words; empty when nothing is."""
    positive = ("poll_interval", "api_poll_interval", "sync_interval", "sync_timeout", "reconnect_timeout")
    problems = [f"{name} must be > 0" for name in positive if params[name] <= 0]
    not_negative = ("stall_timeout", "diverge_records", "max_runtime", "timeout", "max_total_usd", "stop_margin_s",
                    "end_wait")
    problems += [f"{name} must be >= 0" for name in not_negative if params[name] < 0]
    factor = params["diverge_factor"]
    if factor is not None and factor != 0 and not factor > 1:
        problems.append(f"diverge_factor must be above 1 (0 or unset: only NaN and inf count), got {factor:g}: at or "
                        "below 1 a loss that merely stops falling would count as diverging")
    if params["end_wait"] >= HANGING_POLL:
        problems.append(f"end_wait must be below {HANGING_POLL:g} s (a poll waiting longer would look hung)")
    if params["max_total_usd"] > 0 and params["instance_id"] is None:
        problems.append("max_total_usd needs instance_id (the spend is read from the instance's API row)")
    if params["started_at"] not in (None, "") and parse_timestamp(params["started_at"]) is None:
        problems.append("started_at must be epoch seconds or an ISO 8601 time")
    for name in ("summary_regex", "traceback_regex"):
        try:
            re.compile(params[name] or "")
        except re.error as exc:
            problems.append(f"{name} is not a valid regular expression ({exc}): {params[name]!r}")
    return problems


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        del tmp
        params = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        problems = param_problems(params)
        if problems:
            raise AnsibleActionFail("mlops.vast.watch: " + "; ".join(problems))

        if self._task.check_mode:
            result.update(changed=False, skipped=True, outcome=None,
                          msg="check mode: the watch does not block and does not contact the host or the API")
            return result

        watcher = Watcher(self, params)
        outcome: str | None = None
        try:
            try:
                watcher.open_api()
                if watcher.client is not None:
                    watcher.api_poll()  # a bad key or URL fails now, before any waiting
                with watcher.lease():
                    outcome, msg = watcher.run()
            except (VastConfigError, VastAuthError) as exc:
                raise AnsibleActionFail(f"mlops.vast.watch: the Vast API refused: {exc}") from None
            finally:
                watcher.close(outcome)
            out = watcher.result(outcome, msg)
            watcher.write_progress(outcome)
        except AnsibleActionFail as exc:
            raise AnsibleActionFail(redact_text(str(exc), self._secrets(params, watcher))) from None
        out["failed"] = outcome in params["fail_on"]
        result.update(redacted(out, self._secrets(params, watcher), min_length=1))
        return result

    @staticmethod
    def _secrets(params: dict[str, Any], watcher: Watcher) -> tuple[str, ...]:
        """Strings masked wherever they appear in the result: the key, as given and as resolved."""
        return tuple(dict.fromkeys(key for key in (params.get("api_key"), watcher.api_key) if key))
