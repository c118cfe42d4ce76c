"""Typed progress events of a run or sweep, and how they are read from the files a run keeps up to date.

Two files per run, each replaced whole (a temporary file and a rename) as the run goes:

- ``progress.json``, by the ``mlops.vast.progress`` callback: ``phase``, ``task``, ``play``, ``outcome``,
  ``started_at``, ``updated_at``;
- ``progress-watch.json``, by the watch on each poll: ``step``, ``total_steps``, ``loss``, ``spent_usd``,
  ``dph``, ``eta_s``, ``instance_id``, ``outcome``, ``updated_at``.

:func:`merge` folds both into one :class:`Snapshot`; :func:`diff` turns two snapshots into the events
between them. Every event names its ``run`` (the run's name, or a sweep trial's label).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PHASES = ("checking", "renting", "setup", "smoke", "launching", "training", "recovering", "teardown", "done")
PROGRESS_FILE = "progress.json"
# Said by every run on the implicit localhost: not worth a user's attention.
BENIGN_WARNINGS = ("No inventory was parsed", "provided hosts list is empty")
WATCH_FILE = "progress-watch.json"


@dataclass(frozen=True)
class Event:
    run: str
    at: float = field(default_factory=time.time, compare=False)


@dataclass(frozen=True)
class PhaseChanged(Event):
    phase: str = "checking"
    previous: str | None = None
    task: str | None = None


@dataclass(frozen=True)
class Progress(Event):
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    eta_s: float | None = None


@dataclass(frozen=True)
class Spend(Event):
    spent_usd: float | None = None
    dph: float | None = None


@dataclass(frozen=True)
class Warning(Event):  # the API's name for it; builtins.Warning is not used in this module
    message: str = ""
    task: str | None = None


@dataclass(frozen=True)
class TrialStateChanged(Event):
    trial: str = ""
    state: str = "queued"
    previous: str | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class Finished(Event):
    outcome: str = "failed"
    status: str | None = None
    results_dir: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """What is known about one run now (for a live display: one line)."""

    run: str
    phase: str = "checking"
    task: str | None = None
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    spent_usd: float | None = None
    dph: float | None = None
    eta_s: float | None = None
    instance_id: int | None = None
    outcome: str | None = None
    state: str | None = None  # a sweep trial's state (queued/running/done/skipped/cancelled)
    updated_at: float | None = None
    # The watch reports its own instance's spend: what the run's earlier instances (replaced after a preemption)
    # spent is carried here, so spent_usd is the run's, and never goes back.
    earlier_spent_usd: float = 0.0
    instance_spent_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def read_json(path: Path, *, not_before: float | None = None) -> dict[str, Any] | None:
    """A JSON object file, or None when missing, unreadable, not an object or older than ``not_before``
    (a file an earlier run of the same name left)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if not_before is not None:
        updated = _number(data.get("updated_at"))
        if updated is None or updated < not_before:
            return None
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def merge(run: str, progress: dict[str, Any] | None, watch: dict[str, Any] | None,
          base: Snapshot | None = None) -> Snapshot:
    """One snapshot from the callback's file and the watch's (either may be None); ``base`` keeps what
    neither says any more (a watch file not written yet in a recovery round keeps the last step)."""
    snap = base or Snapshot(run=run)
    changes: dict[str, Any] = {}
    stamps = []
    if progress:
        phase = progress.get("phase")
        if phase in PHASES:
            changes["phase"] = phase
        changes["task"] = progress.get("task") or snap.task
        if progress.get("outcome"):
            changes["outcome"] = progress["outcome"]
        stamps.append(_number(progress.get("updated_at")))
    if watch:
        for name, key, convert in (("step", "step", _int), ("total", "total_steps", _int), ("loss", "loss", _number),
                                   ("dph", "dph", _number), ("eta_s", "eta_s", _number),
                                   ("instance_id", "instance_id", _int)):
            value = convert(watch.get(key))
            if value is not None:
                changes[name] = value
        spent, instance = _number(watch.get("spent_usd")), changes.get("instance_id", snap.instance_id)
        earlier = snap.earlier_spent_usd
        if instance != snap.instance_id and snap.instance_id is not None and snap.instance_spent_usd is not None:
            earlier += snap.instance_spent_usd  # a new instance: the one before it is spent and done
        changes["earlier_spent_usd"] = earlier
        if spent is not None:
            changes["instance_spent_usd"] = spent
            changes["spent_usd"] = round(earlier + spent, 6)
        stamps.append(_number(watch.get("updated_at")))
    known = [stamp for stamp in stamps if stamp is not None]
    if known:
        changes["updated_at"] = max(known)
    return replace(snap, **changes)


def read_snapshot(run: str, results_dir: Path, base: Snapshot | None = None, *,
                  not_before: float | None = None) -> Snapshot:
    """The run's snapshot from the two files in its results directory."""
    progress = read_json(Path(results_dir) / PROGRESS_FILE, not_before=not_before)
    watch = read_json(Path(results_dir) / WATCH_FILE, not_before=not_before)
    return merge(run, progress, watch, base)


def diff(old: Snapshot | None, new: Snapshot) -> list[Event]:
    """The events that lead from ``old`` to ``new`` (all that ``new`` says when ``old`` is None)."""
    events: list[Event] = []
    run = new.run
    if new.state is not None and (old is None or old.state != new.state):
        events.append(TrialStateChanged(run=run, trial=run, state=new.state,
                                        previous=None if old is None else old.state, outcome=new.outcome))
    if old is None or old.phase != new.phase:
        events.append(PhaseChanged(run=run, phase=new.phase, previous=None if old is None else old.phase,
                                   task=new.task))
    # Spend first: a reader that prints a progress line with the spend shows the same snapshot's, not the last one's.
    if new.spent_usd is not None and (old is None or (old.spent_usd, old.dph) != (new.spent_usd, new.dph)):
        events.append(Spend(run=run, spent_usd=new.spent_usd, dph=new.dph))
    if new.step is not None and (old is None or (old.step, old.loss, old.total) != (new.step, new.loss, new.total)):
        events.append(Progress(run=run, step=new.step, total=new.total, loss=new.loss, eta_s=new.eta_s))
    return events


def warning_from_runner_event(event: dict[str, Any], run: str) -> Warning | None:
    """A :class:`Warning` from an ansible-runner event: a failed task (rescued or ignored too: the playbook
    records and goes on), an unreachable host, or an Ansible ``[WARNING]`` line; else None."""
    kind = event.get("event")
    data = event.get("event_data") or {}
    task = data.get("task")
    if kind in ("runner_on_failed", "runner_on_unreachable"):
        result = data.get("res") or {}
        message = str(result.get("msg") or result.get("reason") or kind.replace("runner_on_", ""))
        return Warning(run=run, message=_one_line(message), task=task)
    stdout = event.get("stdout") or ""
    for line in stdout.splitlines():
        text = _strip_ansi(line).strip()
        if text.startswith("[WARNING]:") and not text[10:].strip().startswith(BENIGN_WARNINGS):
            return Warning(run=run, message=_one_line(text[len("[WARNING]:"):].strip()), task=task)
    return None


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
