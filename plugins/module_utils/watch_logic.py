# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure half of the mlops.vast.watch action: what one poll asks the host, how its answer is
read, and which outcome a set of observations means. Standard library only; no I/O, no clock of
its own (every time is passed in), so it is unit-tested without a host.

Private to the collection.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shlex
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

OUTCOMES = ("completed", "crash", "stall", "max_runtime", "instance_gone", "timeout")
DEFAULT_SUMMARY_REGEX = r"""^\s*\{\s*['"]train_runtime['"]\s*:"""
DEFAULT_TRACEBACK_REGEX = r"^Traceback \(most recent call last\):"
# Exit codes of coreutils `timeout` (TERM, then KILL after -k): the host-side max runtime fired.
TIMEOUT_EXIT_CODES = frozenset({124, 137})
# Bytes of new log read per poll at most; more than this since the last poll is skipped (a gap).
LOG_CHUNK = 256 * 1024
LAST_LINES = 20
KEPT_LINES = 200
MAX_RECORD_CHARS = 20_000
MAX_EXCERPT_LINES = 40
LOSS_KEYS = ("loss", "train/loss")
REWARD_KEYS = ("reward", "rewards/mean", "train/reward", "train/rewards/mean")
STEP_KEYS = ("step", "global_step", "train/global_step")
EPOCH_KEYS = ("epoch", "train/epoch")


# ------------------------------------------------------------------------------------ log records

_NAMES = {"nan": math.nan, "NaN": math.nan, "inf": math.inf, "Infinity": math.inf, "true": True, "false": False,
          "null": None, "True": True, "False": False, "None": None}


def _literal(node: ast.AST) -> Any:
    """ast.literal_eval's subset plus the bare names HF and JSON print (nan, inf, true, null)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise ValueError("dict unpacking")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}  # type: ignore[arg-type]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item) for item in node.elts]
    raise ValueError(f"not a literal: {type(node).__name__}")


def parse_record(line: str, log_format: str = "hf") -> dict[str, Any] | None:
    """A log line as a dict: HF's Python dict repr or a JSON object, else None.

    Text before the first ``{`` (a progress bar's leftovers) is ignored; the line must end with ``}``.
    """
    text = line.strip()
    start = text.find("{")
    if start < 0 or not text.endswith("}") or len(text) - start > MAX_RECORD_CHARS:
        return None
    text = text[start:]
    parsers = (_json, _python) if log_format == "jsonl" else (_python, _json)
    for parse in parsers:
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _json(text: str) -> Any:
    return json.loads(text)


def _python(text: str) -> Any:
    return _literal(ast.parse(text, mode="eval").body)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in record:
            value = _number(record[key])
            if value is not None:
                return value
    return None


@dataclass
class Metrics:
    step: int | float | None = None
    epoch: float | None = None
    loss: float | None = None
    reward: float | None = None


def training_metrics(record: dict[str, Any]) -> Metrics | None:
    """Step, epoch, loss and reward of a training log record; None for other dicts (eval, summary)."""
    metrics = Metrics(step=_first(record, STEP_KEYS), epoch=_first(record, EPOCH_KEYS),
                      loss=_first(record, LOSS_KEYS), reward=_first(record, REWARD_KEYS))
    if metrics.loss is None and metrics.reward is None and metrics.step is None:
        return None
    if isinstance(metrics.step, float) and metrics.step.is_integer():
        metrics.step = int(metrics.step)
    return metrics


# ----------------------------------------------------------------------------------- log follower

class LogFollower:
    """Reads run.log a chunk per poll, from where the previous poll stopped.

    Only complete lines are consumed (a line still being written is read again next time), so
    a record split across two polls is parsed once, whole. Remembers the last lines, the newest
    training metrics, whether a traceback or the summary marker was ever seen, and the
    traceback's text.
    """

    def __init__(self, *, log_format: str = "hf", traceback_regex: str | None = DEFAULT_TRACEBACK_REGEX,
                 summary_regex: str | None = DEFAULT_SUMMARY_REGEX, logging_steps: int | None = None) -> None:
        self.log_format = log_format
        self.traceback_re = re.compile(traceback_regex) if traceback_regex else None
        self.summary_re = re.compile(summary_regex) if summary_regex else None
        self.logging_steps = logging_steps
        self.offset = 0  # bytes of complete lines consumed
        self.size: int | None = None  # the file's size at the last poll; None while it does not exist
        self.lines: deque[str] = deque(maxlen=KEPT_LINES)
        self.partial = ""
        self._ended_cr = False
        self.gaps = 0  # polls that had to skip part of the log (more than LOG_CHUNK new bytes)
        self.truncations = 0
        self.traceback = False
        self.traceback_count = 0
        self.traceback_excerpt: list[str] = []
        self._excerpt_open = False
        self.summary = False
        self.summary_line: str | None = None
        self.summary_metrics: dict[str, Any] = {}
        self.metric_lines = 0
        self.metrics = Metrics()

    # What the next poll should send: start reading at this byte offset.
    def next_offset(self) -> int:
        return self.offset

    def feed(self, size: int | None, start: int, data: str) -> None:
        """The log's size (None: no such file) and its bytes from ``start`` as text (surrogateescape)."""
        if size is None:
            self.size = None
            return
        if size < self.offset or start < self.offset:
            # Truncated or replaced: start over (a new run in the same directory).
            self.truncations += 1
            self._reset_reading()
        if start > self.offset:
            self.gaps += 1
            self._close_excerpt()
        self.size = size
        # A carriage return ends a line too: a progress bar redrawn in place never writes "\n".
        cut = max(data.rfind("\n"), data.rfind("\r"))
        complete, self.partial = (data[: cut + 1], data[cut + 1:]) if cut >= 0 else ("", data)
        self.offset = start + len(complete.encode("utf-8", "surrogateescape"))
        if self._ended_cr and complete.startswith("\n"):
            complete = complete[1:]  # the "\n" of a "\r\n" split between two polls
        if complete:
            self._ended_cr = complete.endswith("\r")
        for line in complete.splitlines():
            self._line(line)
        if self.partial:
            # Not consumed, but a marker in it counts now: the process may never end the line.
            self._markers(self.partial, consume=False)

    def _reset_reading(self) -> None:
        self.offset = 0
        self.partial = ""
        self._ended_cr = False
        self.lines.clear()
        self.metric_lines = 0
        self.metrics = Metrics()
        self.summary = False
        self.summary_line = None
        self.summary_metrics = {}
        self._close_excerpt()

    def _close_excerpt(self) -> None:
        self._excerpt_open = False

    def _line(self, raw: str) -> None:
        line = raw.rstrip("\r\n")
        self.lines.append(line)
        if self._excerpt_open:
            self.traceback_excerpt.append(line)
            # A traceback ends with the exception's own line, the first one not indented.
            if (line and not line[0].isspace() and not line.startswith("During handling")
                    and not line.startswith("The above exception")) or len(self.traceback_excerpt) >= MAX_EXCERPT_LINES:
                self._excerpt_open = False
        self._markers(line, consume=True)
        record = parse_record(line, self.log_format)
        if record is None:
            return
        metrics = training_metrics(record)
        if metrics is None:
            return
        self.metric_lines += 1
        for name in ("step", "epoch", "loss", "reward"):
            value = getattr(metrics, name)
            if value is not None:
                setattr(self.metrics, name, value)
        if metrics.step is None and self.logging_steps:
            self.metrics.step = self.metric_lines * self.logging_steps

    def _markers(self, line: str, *, consume: bool) -> None:
        if self.traceback_re and self.traceback_re.search(line):
            if consume:
                self.traceback_count += 1
                self.traceback_excerpt = [line]
                self._excerpt_open = True
            elif not self.traceback:
                self.traceback_excerpt = [line]
            self.traceback = True
        if self.summary_re and self.summary_re.search(line):
            self.summary = True
            self.summary_line = line.strip()
            self.summary_metrics = parse_record(line, self.log_format) or {}

    def last_lines(self, count: int = LAST_LINES) -> list[str]:
        lines = list(self.lines)
        if self.partial:
            lines.append(self.partial.rstrip("\r"))
        return lines[-count:]

    def progress_token(self) -> tuple[Any, ...]:
        """What must change for the run to count as progressing: the step, else the number of
        training records (and epoch), else, before any record, the log's size."""
        if self.metrics.step is not None:
            return ("step", self.metrics.step)
        if self.metric_lines:
            return ("records", self.metric_lines, self.metrics.epoch)
        return ("bytes", self.size, len(self.partial))


def metrics_from_tail(text: str, log_format: str = "jsonl") -> Metrics | None:
    """The newest training record among the last lines of a metrics file."""
    for line in reversed(text.splitlines()):
        record = parse_record(line, log_format)
        metrics = training_metrics(record) if record is not None else None
        if metrics is not None:
            return metrics
    return None


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


# --------------------------------------------------------------------------------- the poll script

@dataclass
class PollRequest:
    run_dir: str
    log_file: str
    exit_code_file: str
    tmux_session: str
    marker: str
    log_offset: int = 0
    chunk: int = LOG_CHUNK
    gpu_util: bool = True
    metrics_file: str | None = None
    status_file: str | None = None  # read STATUS.md this time


def shell_path(path: str) -> str:
    """A path quoted for sh, with a leading ``~/`` still meaning the remote user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def poll_script(req: PollRequest) -> str:
    """One POSIX sh command that gathers everything a poll needs; the log's bytes come last."""
    q = shell_path
    m = req.marker
    lines = [
        f"M={q(m)}; R={q(req.run_dir)}; L={q(req.log_file)}; E={q(req.exit_code_file)}; "
        f"S={shlex.quote(req.tmux_session)}",
        'cd "$R" 2>/dev/null || echo "$M nodir"',
        'echo "$M now $(date +%s)"',
        'if [ -f "$E" ]; then echo "$M exit $(head -c 64 "$E" | tr -d \' \\t\\r\\n\')"; fi',
        'if command -v tmux >/dev/null 2>&1; then if tmux has-session -t "=$S" 2>/dev/null; '
        'then echo "$M tmux 1"; else echo "$M tmux 0"; fi; else echo "$M tmux -"; fi',
    ]
    if req.gpu_util:
        lines.append(
            'if command -v nvidia-smi >/dev/null 2>&1; then T=; command -v timeout >/dev/null 2>&1 && T="timeout 10"; '
            'echo "$M gpu $($T nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null '
            '| tr \'\\n\' \' \')"; fi')
    if req.status_file:
        lines.append(f'if [ -f {q(req.status_file)} ]; then echo "$M begin status"; head -c 8192 {q(req.status_file)}; '
                     'echo; echo "$M end status"; fi')
    if req.metrics_file:
        lines.append(f'if [ -f {q(req.metrics_file)} ]; then echo "$M begin metrics"; tail -n 5 {q(req.metrics_file)} '
                     '| head -c 65536; echo; echo "$M end metrics"; fi')
    lines += [
        f'Z=$(stat -c %s "$L" 2>/dev/null || echo -1); O={int(req.log_offset)}',
        '[ "$Z" -ge 0 ] && [ "$Z" -lt "$O" ] && O=0',
        f'[ $((Z - O)) -gt {int(req.chunk)} ] && O=$((Z - {int(req.chunk)}))',
        'echo "$M log $Z $O"',
        'if [ "$Z" -gt "$O" ]; then tail -c +$((O + 1)) "$L" | head -c $((Z - O)); fi',
    ]
    # No newline at the end: Ansible appends " && sleep 0" to the last line.
    return "\n".join(lines)


@dataclass
class Snapshot:
    ok: bool = False  # the marker lines were there: the script ran
    run_dir_exists: bool = True
    host_now: float | None = None
    exit_code: int | None = None
    exit_code_raw: str | None = None  # EXIT_CODE's content when it is not a number
    tmux: bool | None = None  # None: tmux is not installed
    gpu_util: list[int] | None = None
    status_text: str | None = None
    metrics_text: str | None = None
    log_size: int | None = None
    log_start: int = 0
    log_data: str = ""
    extra: list[str] = field(default_factory=list)


def parse_poll(stdout: str, marker: str) -> Snapshot:
    snap = Snapshot()
    head, sep, data = _split_log(stdout, marker)
    if sep:
        snap.ok = True
        snap.log_data = data
    section: str | None = None
    body: list[str] = []
    for line in head.splitlines():
        if not line.startswith(marker + " "):
            if section is not None:
                body.append(line)
            else:
                snap.extra.append(line)
            continue
        words = line[len(marker) + 1:].split(" ", 1)
        key, value = words[0], (words[1] if len(words) > 1 else "").strip()
        if key == "begin":
            section, body = value, []
        elif key == "end":
            text = "\n".join(body).strip("\n")
            if section == "status":
                snap.status_text = text
            elif section == "metrics":
                snap.metrics_text = text
            section = None
        elif key == "nodir":
            snap.run_dir_exists = False
        elif key == "now":
            snap.host_now = _float(value)
        elif key == "exit":
            if value:
                try:
                    snap.exit_code = int(value)
                except ValueError:
                    snap.exit_code_raw = value[:64]
        elif key == "tmux":
            snap.tmux = {"1": True, "0": False}.get(value)
        elif key == "gpu":
            utils = [round(v) for v in (_float(w) for w in value.replace(",", " ").split()) if v is not None]
            snap.gpu_util = utils or None
        elif key == "log":
            parts = value.split()
            size = int(parts[0]) if parts and _is_int(parts[0]) else -1
            snap.log_size = size if size >= 0 else None
            snap.log_start = int(parts[1]) if len(parts) > 1 and _is_int(parts[1]) else 0
    return snap


def _split_log(stdout: str, marker: str) -> tuple[str, bool, str]:
    """Everything before the log line, whether it was there, and the log bytes after it."""
    match = re.search(rf"(?m)^{re.escape(marker)} log [^\n]*\n?", stdout)
    if not match:
        return stdout, False, ""
    return stdout[: match.end()], True, stdout[match.end():]


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", text))


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


# ---------------------------------------------------------------------------------- the decision

@dataclass
class Observation:
    """What the watch knows after a poll (or a failed poll), for decide()."""

    exit_code: int | None = None
    exit_code_raw: str | None = None
    tmux: bool | None = True
    run_dir_exists: bool = True
    traceback: bool = False
    summary: bool = False
    summary_required: bool = True
    host_fresh: bool = True  # this observation includes a successful host poll
    run_elapsed: float | None = None
    idle: float = 0.0
    stalled: bool = False
    progress: str = ""
    instance_gone: str | None = None
    unreachable_for: float | None = None
    watch_elapsed: float = 0.0


@dataclass
class Limits:
    max_runtime: float = 0.0
    stall_timeout: float = 900.0
    reconnect_timeout: float = 600.0
    timeout: float = 0.0


def decide(obs: Observation, limits: Limits) -> tuple[str, str] | None:
    """The outcome and its message, or None to keep watching.

    Precedence: completed > instance_gone > crash > max_runtime > stall > timeout. A host-side
    `timeout` kill at the max runtime (exit 124/137) is max_runtime, not a crash.
    """
    ended = obs.exit_code is not None or obs.exit_code_raw is not None
    if obs.host_fresh and obs.exit_code == 0 and (obs.summary or not obs.summary_required):
        return "completed", "the run exited 0" + (" and printed its summary" if obs.summary else "")
    if obs.instance_gone:
        return "instance_gone", f"the instance is gone: {obs.instance_gone}"
    if obs.unreachable_for is not None and obs.unreachable_for >= limits.reconnect_timeout:
        return "instance_gone", (f"the host has been unreachable for {obs.unreachable_for:.0f} s "
                                 f"(reconnect_timeout {limits.reconnect_timeout:g} s)")
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


# ------------------------------------------------------------------------------------ the result

def plain(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """JSON-safe copy: non-finite floats become strings, secrets are masked in every string."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, "********")
        return value
    if isinstance(value, dict):
        return {plain(k, secrets) if isinstance(k, str) else k: plain(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple | deque):
        return [plain(v, secrets) for v in value]
    return value
