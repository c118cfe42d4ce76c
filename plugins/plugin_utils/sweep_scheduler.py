# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs a sweep's trials, each one a whole train.yml in its own process, at most ``max_parallel`` at once,
within a shared budget.

One process per trial (not one big play) is what isolates failures: a crash, a bad host, a divergence or a
preemption ends or recovers that trial's playbook and no other. The scheduler never rents anything itself; it
starts, watches and, when asked to stop, ends trial playbooks and has each stopped trial's label torn down.

The budget: every trial runs with a spending cap (``run_max_total_usd``), which its own watch enforces (the run
stops with its checkpoints home when the cap is reached). A trial starts only while the finished trials' cost plus
every running trial's cap plus its own cap fits in the budget, and only with a cap of at least :func:`trial_floor`
(what a trial burns at its price limit before its watch sees the spend, and the watch's reserve; never below
``MIN_TRIAL_USD``), so no trial passes its cap by more than a slower start than a minute costs; if the instances'
spend read live still reaches the budget, the running trials are stopped and torn down.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.mlops.vast.plugins.plugin_utils.runner_env import plain_environment
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_plan import SweepSpecError
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_rows import read_json

STATES = ("queued", "running", "done", "skipped", "cancelled")

# The least any trial can cost: one minute of the cheapest GPU plausibly on the market. Renting, booting, receiving
# the code and the smoke test take longer than a minute on any host, and Vast bills from the start, so a cap below
# this is spent before the trial can do anything: such a trial is not started. Without a projection of its own (no
# run_estimate, whose provision step refuses a cap below the run's optimistic cost before renting), this is the
# only lower bound the sweep has.
CHEAPEST_DPH_USD = 0.03
LEAST_RENTED_S = 60
MIN_TRIAL_USD = round(CHEAPEST_DPH_USD * LEAST_RENTED_S / 3600, 6)
_FLOOR_WHY = f"a minute at ${CHEAPEST_DPH_USD:g}/h, the cheapest GPU plausibly for rent"
# What train.yml says when it refuses a run for its cap: the provision step's optimistic estimate (before renting),
# or the smoke test's re-estimate from the measured step time.
_REFUSED_FOR_BUDGET_RE = re.compile(r"more than the budget run_max_total_usd|cost: the run re-estimated from the "
                                    r"measured step time: \$[0-9.e+-]+ against the budget")


@dataclass
class Trial:
    id: str
    label: str
    params: dict[str, Any]
    results_dir: str
    run_vars: dict[str, Any] = field(repr=False, default_factory=dict)
    state: str = "queued"
    outcome: str | None = None
    rc: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    cap_usd: float | None = None
    cost_usd: float = 0.0
    process: Any = field(default=None, repr=False, compare=False)
    orphaned: bool = False
    row: dict[str, Any] | None = None
    message: str = ""
    # Its variables for ansible-playbook -e @FILE (run_env may hold tokens): removed once its playbook has read them.
    vars_file: str | None = field(default=None, repr=False)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "params": self.params, "state": self.state,
                "outcome": self.outcome, "rc": self.rc, "started_at": self.started_at, "ended_at": self.ended_at,
                "cap_usd": self.cap_usd, "cost_usd": self.cost_usd, "orphaned": self.orphaned,
                "results_dir": self.results_dir, "message": self.message,
                "pid": self.process.pid if self.process is not None and self.state == "running" else None}


PROGRESS_CALLBACK = "mlops.vast.progress"
# In each trial's folder; the callback writes it when the first play starts, after the extra variables were read.
PROGRESS_FILE = "progress.json"
COLLECTION_STRATEGY = "mlops.vast.linear"


def trial_strategy(choice: str, configured_by: str, core_version: str) -> str:
    """The strategy a trial runs with ("" for whatever its environment and ansible.cfg say).

    ``auto`` is the collection's strategy, unless the user chose one (``configured_by``, the origin Ansible reports
    for its strategy setting, is not ``default``: ANSIBLE_STRATEGY or ansible.cfg) or this ansible-core is not the
    2.19 it is written for; any other choice is taken as given.
    """
    if choice != "auto":
        return choice
    return COLLECTION_STRATEGY if configured_by == "default" and core_version.startswith("2.19.") else ""


def trial_environment(base: Mapping[str, str], *, progress_file: str, strategy: str) -> dict[str, str]:
    """A trial playbook's environment: ``base`` with the progress callback writing ``progress_file``, no colour,
    no guard of its own, and ``strategy`` (when not empty) as its strategy plugin; under ansible-runner, its log is
    plain text, not the sweep's runner events."""
    env = plain_environment(base)
    enabled = [c for c in env.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if c.strip()]
    env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join(dict.fromkeys([*enabled, PROGRESS_CALLBACK]))
    env["MLOPS_VAST_PROGRESS_FILE"] = progress_file
    env["ANSIBLE_FORCE_COLOR"] = "0"
    # The sweep stops its trials itself (each with its teardown): a trial's own guard, enabled by ansible.cfg or the
    # user's ANSIBLE_CALLBACKS_ENABLED, would race it with a second teardown.
    env["MLOPS_VAST_GUARD"] = "off"
    if strategy:
        env["ANSIBLE_STRATEGY"] = strategy
    return env


def trial_floor(max_dph: float, poll_s: float, tail_s: float) -> tuple[float, str]:
    """The least cap a trial starts with, and why: at the highest price the trial may pay (``run_max_dph``), the
    minute that renting, booting, setup and the smoke test take at least (nobody watches the spend before the
    training starts), and what the watch then holds in reserve (the burn until its next look and the end of the
    run, ``run_tail_s``). A cap below it is spent, or passed, before the trial trains."""
    burn_s = LEAST_RENTED_S + poll_s + tail_s
    reserve = math.ceil(max_dph * burn_s / 3600 * 1e6) / 1e6 if max_dph > 0 else 0.0
    if reserve > MIN_TRIAL_USD:
        return reserve, (f"{burn_s:g} s at run_max_dph ${max_dph:g}/h: a minute to rent, set up and smoke-test before "
                         f"the watch sees the spend, then {poll_s:g} s until its next look and run_tail_s {tail_s:g} s "
                         "for the end of the run, which the watch holds in reserve")
    return MIN_TRIAL_USD, _FLOOR_WHY


@dataclass
class Budget:
    """The shared budget (``total`` 0: none), the run's own per-trial cap (``run_cap`` 0: none) and the least cap a
    trial starts with (``floor``, for the reason ``floor_why``: :func:`trial_floor`)."""

    total: float
    run_cap: float = 0.0
    floor: float = MIN_TRIAL_USD
    floor_why: str = _FLOOR_WHY
    spent_before: float = 0.0  # by earlier runs of the sweep, on tries that no row of this run counts

    def committed(self, trials: Sequence[Trial]) -> float:
        """What earlier runs spent, finished trials' cost, plus each running trial's cap (what it may still reach)."""
        return self.spent_before + sum(t.cost_usd for t in trials if t.state in ("done", "cancelled")) + \
            sum(max(t.cap_usd or 0.0, t.cost_usd) for t in trials if t.state == "running")

    def cap_for_next(self, trials: Sequence[Trial]) -> float | None:
        """The cap the next trial starts with, or None when it cannot start within the budget."""
        return self.next_cap(trials)[0]

    def next_cap(self, trials: Sequence[Trial]) -> tuple[float | None, str]:
        """``(cap, "")`` for the next trial (0: no cap), or ``(None, why it cannot start)``.

        Without a cap of the run's own, what is left is shared equally among the trials still queued, so a
        trial that finishes under its share leaves more for the ones after it and all of them can start. When
        that share would be below the floor, it is shared among as many as can start with the floor each: those
        start, and the rest wait for what they leave (a budget that pays for some trials runs some, not none).
        """
        floor_why = f"${self.floor:g}, the least a trial can start with ({self.floor_why})"
        if 0 < self.run_cap < self.floor:
            return None, f"the trial's cap run_max_total_usd ${self.run_cap:g} is below {floor_why}"
        if self.total <= 0:
            return (self.run_cap if self.run_cap > 0 else 0.0), ""
        committed = self.committed(trials)
        left = max(0.0, self.total - committed)
        held = (f"the sweep's budget sweep_budget_usd ${self.total:g} has ${left:.6g} left"
                + (f" (${committed:.6g} spent or held by the running trials' caps)" if committed > 0 else ""))
        if self.run_cap > 0:
            if self.run_cap <= left + 1e-9:
                return self.run_cap, ""
            return None, f"{held}, less than the trial's cap run_max_total_usd ${self.run_cap:g}"
        queued = max(1, sum(1 for t in trials if t.state == "queued"))
        sharing = min(queued, int((left + 1e-9) / self.floor)) if self.floor > 0 else queued
        # Rounded down (past float noise), so the caps never add up past the budget.
        share = math.floor(left / max(1, sharing) * 1e6 + 1e-6) / 1e6
        if sharing < 1 or share <= 0 or share < self.floor - 1e-12:
            return None, (f"{held} for {queued} trial(s) not yet started, below {floor_why}; a budget of at least "
                          f"${committed + self.floor:.6g} would start one"
                          + (f", ${committed + self.floor * queued:.6g} all {queued} at once" if queued > 1 else ""))
        return share, ""

    def live_spent(self, trials: Sequence[Trial]) -> float:
        return self.spent_before + sum(t.cost_usd for t in trials if t.state in ("done", "running", "cancelled"))


def write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True, default=str)
        handle.write("\n")
    os.replace(tmp, path)


class Scheduler:
    """Start queued trials while the cap and the budget allow, reap finished ones, stop on request."""

    def __init__(self, trials: Sequence[Trial], *, launch: Callable[[Trial], Any], max_parallel: int,
                 budget: Budget, state_file: str, cancel_file: str, sweep_name: str,
                 finish: Callable[[Trial], None], teardown: Callable[[Sequence[Trial]], None],
                 spend_of: Callable[[Trial], float], trial_timeout_s: float,
                 left_open: Callable[[Trial], list[Any]] | None = None, poll_s: float = 1.0,
                 stop_grace_s: float = 15.0, clock: Callable[[], float] = time.time) -> None:
        self.trials = list(trials)
        self.launch, self.finish, self.teardown, self.spend_of = launch, finish, teardown, spend_of
        self.max_parallel = max(1, int(max_parallel))
        self.budget = budget
        self.state_file, self.cancel_file, self.sweep_name = state_file, cancel_file, sweep_name
        self.trial_timeout_s, self.poll_s, self.stop_grace_s = trial_timeout_s, poll_s, stop_grace_s
        self.clock = clock
        self.left_open = left_open or (lambda trial: [])
        self.cancel_reason: str | None = None
        self.budget_stopped = False

    # ------------------------------------------------------------------ state shown to the CLI and the API
    def snapshot(self) -> dict[str, Any]:
        return {"sweep": self.sweep_name, "budget_usd": self.budget.total,
                "spent_usd": round(self.budget.live_spent(self.trials), 6),
                "committed_usd": round(self.budget.committed(self.trials), 6),
                "spent_before_usd": round(self.budget.spent_before, 6),
                "max_parallel": self.max_parallel, "cancelled": self.cancel_reason,
                "updated_at": self.clock(), "trials": [t.public() for t in self.trials]}

    def save(self) -> None:
        write_json_atomic(self.state_file, self.snapshot())

    # ------------------------------------------------------------------ the loop
    def request_cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def running(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "running"]

    def queued(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "queued"]

    def run(self, deadline_s: float) -> list[Trial]:
        deadline = self.clock() + deadline_s
        self.save()
        while self.queued() or self.running():
            if os.path.exists(self.cancel_file):
                self.request_cancel(f"asked to stop ({os.path.basename(self.cancel_file)} was created)")
            if self.clock() > deadline:
                self.request_cancel(f"the sweep ran past its limit of {deadline_s:.0f} s")
            if self.cancel_reason:
                self._cancel_all()
                break
            self._drop_read_variables()
            changed = self._reap() | self._refresh_spend()
            if self.budget.total > 0 and self.budget.live_spent(self.trials) >= self.budget.total - 1e-9 \
                    and self.running():
                self.budget_stopped = True
                self._stop(self.running(), "budget")
                changed = True
            changed |= self._start_what_fits()
            if changed:
                self.save()
            if self.queued() or self.running():
                time.sleep(self.poll_s)
        self.save()
        return self.trials

    def _drop_read_variables(self) -> None:
        """A trial's variables file stays on disk only until its playbook has read it: the first play's start says
        so. A controller killed with its trials (nothing left to clean up after them) then leaves no tokens
        behind, unless it dies in a trial's first second."""
        for trial in self.running():
            if trial.vars_file and os.path.exists(os.path.join(trial.results_dir, PROGRESS_FILE)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(trial.vars_file)
                trial.vars_file = None

    def _start_what_fits(self) -> bool:
        changed = False
        for trial in self.queued():
            if len(self.running()) >= self.max_parallel:
                break
            if self.budget_stopped:
                cap, why = None, f"the trials' spend reached the sweep's budget sweep_budget_usd ${self.budget.total:g}"
            else:
                cap, why = self.budget.next_cap(self.trials)
            if cap is None:
                if not self.running() or self.budget_stopped:
                    # Nothing running will free room: what is left cannot start within the budget.
                    for left in self.queued():
                        left.state, left.outcome = "skipped", "budget"
                        left.message = f"not started, nothing rented: {why}"
                        left.ended_at = self.clock()
                        self._finish(left)
                    changed = True
                break
            trial.cap_usd = cap or None
            trial.started_at = self.clock()
            trial.process = self.launch(trial)
            trial.state = "running"
            changed = True
        return changed

    def _finish(self, trial: Trial) -> None:
        """``finish`` (which makes the trial's row), then the scheduler's own word on the row (``finish`` may have
        said it already, before writing the row down)."""
        self.finish(trial)
        settle_row(trial)

    def _reap(self) -> bool:
        changed = False
        for trial in self.running():
            rc = trial.process.poll()
            if rc is None and self.clock() - (trial.started_at or 0) > self.trial_timeout_s:
                self._stop([trial], "timeout")
                changed = True
                continue
            if rc is None:
                continue
            trial.rc, trial.state, trial.ended_at = rc, "done", self.clock()
            if self.left_open(trial):
                # The trial's playbook ended without its teardown (killed, or stopped by an error Ansible does not
                # recover from): what it rented is destroyed here, by label.
                trial.orphaned = True
                self.teardown([trial])
            if rc < 0:  # its log says nothing of why: the row must
                trial.message = trial.message or (
                    f"its playbook was killed ({_signal_name(-rc)})"
                    + ("; the sweep tore its instance down, bringing its newest sealed checkpoint home first "
                       "(teardown.json in its folder says what came home)" if trial.orphaned else
                       "; nothing of it was left open"))
            trial.cost_usd = self.spend_of(trial)
            self._finish(trial)
            changed = True
        return changed

    def _refresh_spend(self) -> bool:
        changed = False
        for trial in self.running():
            spent = self.spend_of(trial)
            if spent != trial.cost_usd:
                trial.cost_usd, changed = spent, True
        return changed

    def _cancel_all(self) -> None:
        for trial in self.queued():
            trial.state, trial.outcome, trial.ended_at = "skipped", "cancelled", self.clock()
            trial.message = trial.message or f"not started, nothing rented: {self.cancel_reason}"
            self._finish(trial)
        self._stop(self.running(), "cancelled")

    def _why_stopped(self, outcome: str) -> str:
        done = "stopped, its newest sealed checkpoint brought home and its instance destroyed"
        if outcome == "timeout":
            return f"ran past the trial timeout of {self.trial_timeout_s:g} s (sweep_trial_timeout_s): {done}"
        if outcome == "budget":
            return f"the sweep's spend reached its budget sweep_budget_usd ${self.budget.total:g}: {done}"
        return f"{self.cancel_reason or 'the sweep was cancelled'}: {done}"

    def _stop(self, trials: Sequence[Trial], outcome: str) -> None:
        """End the trials' playbooks, then destroy what they rented (by label) and prove it gone."""
        if not trials:
            return
        for trial in trials:
            _signal_group(trial.process, signal.SIGTERM)
        end = time.monotonic() + self.stop_grace_s
        for trial in trials:
            with contextlib.suppress(subprocess.TimeoutExpired):
                trial.process.wait(timeout=max(0.1, end - time.monotonic()))
            if trial.process.poll() is None:
                _signal_group(trial.process, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    trial.process.wait(timeout=10)
        self.teardown(trials)
        for trial in trials:
            trial.rc = trial.process.poll()
            trial.state = "cancelled" if outcome == "cancelled" else "done"
            trial.outcome, trial.ended_at = outcome, self.clock()
            trial.message = trial.message or self._why_stopped(outcome)
            trial.cost_usd = self.spend_of(trial)
            self._finish(trial)
        self.save()


class SweepLock:
    """One run of a sweep at a time in its results folder, and only that sweep's results there. A second run of the
    same sweep would set the first one's live trial folders aside and write the same tables; another sweep's
    tables would be overwritten with its rows. Held with flock, so a killed run leaves nothing to clear."""

    FILE = ".sweep.lock"

    def __init__(self, results_dir: str, name: str) -> None:
        self.results_dir, self.name = results_dir, name
        self.fd: int | None = None

    def acquire(self) -> None:
        """Raises SweepSpecError, saying what to do, when the folder is not this sweep's to use now."""
        other = self._sweep_there()
        if other is not None and other != self.name:
            raise SweepSpecError(f"{self.results_dir} holds the results of sweep {other!r}, not {self.name!r}: give "
                                 "this sweep a sweep_results_dir of its own (or its old sweep_name), so that neither "
                                 "sweep's rows overwrite the other's")
        fd = os.open(os.path.join(self.results_dir, self.FILE), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SweepSpecError(f"sweep {self.name!r} is already running in {self.results_dir} (process {holder}): "
                                 "wait for it to end, or stop it first (Ctrl-C there, or create CANCEL in that "
                                 "folder); nothing was started") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _sweep_there(self) -> str | None:
        state = read_json(os.path.join(self.results_dir, "sweep-state.json"))
        name = state.get("sweep") if isinstance(state, dict) else None
        return name if isinstance(name, str) else None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def settle_row(trial: Trial) -> None:
    """The scheduler's word on a trial's row: why it did not start, and ``budget`` (not ``failed``) for a run
    train.yml refused for its cap (the estimate before renting, or the smoke test's re-estimate): the budget
    stopped it, not a fault of the trial."""
    row = trial.row
    if not isinstance(row, dict):
        return
    if not row.get("message") and trial.message:
        row["message"] = trial.message
    if row.get("outcome") == "failed" and _REFUSED_FOR_BUDGET_RE.search(str(row.get("message") or "")):
        row["outcome"] = trial.outcome = "budget"


def _signal_group(process: Any, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
        os.killpg(os.getpgid(process.pid), signum)


def trial_states(trials: Sequence[Trial]) -> Mapping[str, int]:
    counts = dict.fromkeys(STATES, 0)
    for trial in trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    return counts
