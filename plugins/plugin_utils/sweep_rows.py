# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One row per sweep trial, read from what the trial's train.yml left in its results folder, and the
sweep's tables (trials.json, trials.csv)."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .sweep_plan import format_value
from .training_log import hides_a_nan, parse_record, training_metrics

ROW_FIELDS = ("id", "label", "outcome", "final_loss", "best_loss", "steps", "cost_usd", "attempts", "hosts",
              "duration_s", "message", "results_dir")
# train.yml's last words on a run that did not complete (the assert in its teardown play).
# Ends at train.yml's "(results in", or at the quote that closes a JSON-quoted msg (not at an escaped one in it).
_NOT_COMPLETED_RE = re.compile(r'The run did not complete: (.*?)(?: \(results in |(?<!\\)"|$)', re.MULTILINE)
_DOUBLED_PREFIX_RE = re.compile(r"^(\w+): (?:\1: )+")
_FATAL_MSG_RE = re.compile(r'"msg": "((?:[^"\\]|\\.)*)"')
MAX_LOG_BYTES = 4 * 1024 * 1024


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _tail(path: str, limit: int = MAX_LOG_BYTES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def watch_records(results_dir: str) -> list[dict[str, Any]]:
    """watch.json and every recovery round's record, in the order the attempts ran."""
    paths = [os.path.join(results_dir, "watch.json")]
    paths += sorted(glob.glob(os.path.join(results_dir, "watch-recovery-*.json")),
                    key=lambda path: int(re.sub(r"\D", "", os.path.basename(path)) or 0))
    return [record for record in (read_json(path) for path in paths) if isinstance(record, dict)]


def losses(results_dir: str) -> tuple[int | None, float | None, float | None]:
    """(last step, final loss, best loss) from the run's log as it came home; without it (the instance vanished
    before its files could be pulled), from the log lines the watches last saw (the best loss among those)."""
    found = _losses_of(_tail(os.path.join(results_dir, "run.log")).splitlines())
    if found[0] is None and found[1] is None:
        triages = [record.get("triage") for record in watch_records(results_dir)]
        seen = [str(line) for triage in triages if isinstance(triage, dict)
                for line in (triage.get("last_lines") if isinstance(triage.get("last_lines"), list) else [])]
        found = _losses_of(seen)
    return found


def _losses_of(lines: Iterable[str]) -> tuple[int | None, float | None, float | None]:
    step = final = best = None
    for line in lines:
        record = parse_record(line)
        metrics = training_metrics(record) if record else None
        if metrics is None:
            continue
        if metrics.step is not None:
            step = int(metrics.step)
        if metrics.loss is not None:
            # A NaN that the Hugging Face Trainer logged as 0.0 is a NaN, not the best loss of the sweep.
            final = math.nan if hides_a_nan(metrics.loss, metrics.grad_norm) else float(metrics.loss)
            if math.isfinite(final):
                best = final if best is None else min(best, final)
    return step, final, best


def not_finite(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def _one_prefix(message: str) -> str:
    """"crash: crash: the run exited ..." said once: the watch role puts the outcome before the watch's own message,
    which starts with it already."""
    return _DOUBLED_PREFIX_RE.sub(r"\1: ", message)


def failure_message(log_text: str) -> str:
    """Why a trial's playbook failed, as one line: train.yml's own verdict, else the last error Ansible printed."""
    found = _NOT_COMPLETED_RE.findall(log_text)
    if found:
        return _one_prefix(found[-1].strip().replace('\\"', '"'))
    errors = [line[len("[ERROR]:"):].strip() for line in log_text.splitlines() if line.startswith("[ERROR]:")]
    if errors:
        return errors[-1][:500]
    messages = [m.group(1) for line in log_text.splitlines() if line.startswith("fatal:")
                for m in [_FATAL_MSG_RE.search(line)] if m]
    return messages[-1].encode("utf-8").decode("unicode_escape", "replace")[:500] if messages else ""


def hosts_of(label: str, ledger_records: Iterable[Mapping[str, Any]], since: float | None = None) -> list[int]:
    """Machines the trial rented (rejected hosts of rent-until-good included), from the contract ledger; with
    ``since`` (when this run of the trial started), only this run's: a re-run keeps the label, and the ledger
    keeps the earlier runs' contracts under it."""
    machines: list[int] = []
    for record in ledger_records:
        if since is not None:
            stamp = record.get("ts")
            if not isinstance(stamp, int | float) or isinstance(stamp, bool) or stamp < since:
                continue
        if record.get("event") == "created" and record.get("label") == label:
            machine = record.get("machine_id")
            machines.append(int(machine) if isinstance(machine, int) else -1)
    return machines


def read_ledger(path: str) -> list[dict[str, Any]]:
    records = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    except OSError:
        pass
    return records


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def spent(results_dir: str) -> float:
    """What the trial's instances cost: each instance's spend as its watches last read it (an instance resumed in
    place is watched again, and its spend counts once), the one being watched now included
    (``progress-watch.json`` until it carries an outcome); once train.yml has asked the account (``spend.json``),
    the larger of the two. The watch has no last reading of an instance that vanished under it, and none at all of
    one the smoke test rejected; the account's charges may lag behind what was used."""
    watched = _watched_spend(results_dir)
    record = read_json(os.path.join(results_dir, "spend.json"))
    charged = _number_or_none(record.get("total_usd")) if isinstance(record, dict) else None
    return watched if charged is None else round(max(watched, charged), 6)


# A trial's folder from an earlier run of the sweep, set aside when the trial ran again (<id>.before-<time>).
_SET_ASIDE_RE = re.compile(r"^t[0-9a-f]{6}(?:-\d+)?\.before-\d{8}T\d{6}$")


def earlier_spend(results_dir: str, again: Iterable[str]) -> float:
    """What earlier runs of a sweep spent on tries that no row of this run will count: the folders set aside
    before (``<id>.before-<time>``), and the current folders of the trials ``again`` (ids), which run again now and
    will be set aside in turn. The budget is the whole sweep's, re-runs included."""
    try:
        names = os.listdir(results_dir)
    except OSError:
        return 0.0
    folders = [name for name in names if _SET_ASIDE_RE.match(name)] + [name for name in again if name in names]
    total = 0.0
    for name in folders:
        folder = os.path.join(results_dir, name)
        record = read_json(os.path.join(folder, "trial.json"))
        row = record.get("row") if isinstance(record, dict) else None
        cost = _number_or_none(row.get("cost_usd")) if isinstance(row, dict) else None
        # The larger: a run in which the trial never started rewrote its row with no cost.
        total += max(cost or 0.0, spent(folder))
    return round(total, 6)


def _watched_spend(results_dir: str) -> float:
    per_instance: dict[Any, float] = {}
    for index, record in enumerate(watch_records(results_dir)):
        triage = record.get("triage") if isinstance(record.get("triage"), dict) else {}
        value = _number_or_none(triage.get("spent_usd"))
        instance = record.get("instance") if isinstance(record.get("instance"), dict) else {}
        if value is not None:
            key = instance.get("id") or f"record-{index}"
            per_instance[key] = max(per_instance.get(key, 0.0), value)
    live = read_json(os.path.join(results_dir, "progress-watch.json"))
    if isinstance(live, dict) and live.get("outcome") is None:
        value = _number_or_none(live.get("spent_usd"))
        if value is not None:
            key = live.get("instance_id") or "live"
            per_instance[key] = max(per_instance.get(key, 0.0), value)
    return round(sum(per_instance.values()), 6)


def build_row(*, trial_id: str, label: str, params: Mapping[str, Any], results_dir: str, rc: int | None,
              outcome_override: str | None, duration_s: float | None,
              ledger_records: Sequence[Mapping[str, Any]], started_at: float | None = None) -> dict[str, Any]:
    watches = watch_records(results_dir)
    last_watch = watches[-1] if watches else {}
    recovery = read_json(os.path.join(results_dir, "recovery.json")) or {}
    step, final, best = losses(results_dir)
    message = ""
    if outcome_override:
        outcome = outcome_override
    elif rc == 0:
        outcome = "completed"
    else:
        watched = last_watch.get("outcome")
        outcome = watched if watched and watched != "completed" else "failed"
        message = failure_message(_tail(os.path.join(results_dir, "ansible.log"), 256 * 1024))
    if not message and outcome != "completed":
        message = _one_prefix(str(last_watch.get("msg") or ""))[:500]
    if not_finite(final):  # JSON has no NaN: the row says it in words, and the loss is null
        message = "; ".join(filter(None, [message, f"the last loss logged was {final} (step {step})"]))
        final = None
    hosts = hosts_of(label, ledger_records, since=started_at)
    attempts = recovery.get("attempts") if isinstance(recovery, dict) else None
    return {
        "id": trial_id,
        "label": label,
        "params": dict(params),
        "outcome": outcome,
        "final_loss": final,
        "best_loss": best,
        "steps": step,
        "cost_usd": spent(results_dir),
        "attempts": attempts if isinstance(attempts, int) else (1 if hosts else 0),
        "hosts": hosts,
        "duration_s": round(duration_s, 1) if duration_s is not None else None,
        "message": message,
        "results_dir": results_dir,
    }


def rows_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per trial: its parameters as columns (param_<name>), then the row's fields."""
    names = list(dict.fromkeys(name for row in rows for name in (row.get("params") or {})))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*ROW_FIELDS[:2], *(f"param_{name}" for name in names), *ROW_FIELDS[2:]])
    for row in rows:
        params = row.get("params") or {}
        values = []
        for field in ROW_FIELDS[2:]:
            value = row.get(field)
            if isinstance(value, list):
                value = " ".join(str(item) for item in value)
            values.append("" if value is None else value)
        # A parameter as its trial's command got it: JSON for lists and mappings, true/false (not Python's repr).
        writer.writerow([row.get("id"), row.get("label"), *(format_value(params.get(name)) for name in names),
                         *values])
    return buffer.getvalue()


def row_line(row: Mapping[str, Any]) -> str:
    params = " ".join(f"{name}={value}" for name, value in (row.get("params") or {}).items())
    loss = row.get("final_loss")
    text = (f"{row.get('id')} {row.get('outcome')}: {params}; loss {loss if loss is not None else '-'}"
            f" (best {row.get('best_loss') if row.get('best_loss') is not None else '-'}), step {row.get('steps')},"
            f" ${float(row.get('cost_usd') or 0):.4f}, {row.get('attempts')} attempt(s), hosts {row.get('hosts')}")
    return text + (f"; {row['message']}" if row.get("message") else "")
