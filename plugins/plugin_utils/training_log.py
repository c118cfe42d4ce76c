# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a training log: Hugging Face Trainer's dict lines or JSON lines into step, epoch, loss and
reward, and a follower that reads a growing log a chunk at a time and remembers the markers (a
traceback, the completion summary). Used by the watch action and the ``training_log`` filter, on the
controller. Standard library only; no I/O.

Private to the collection.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

DEFAULT_SUMMARY_REGEX = r"""^\s*\{\s*['"]train_runtime['"]\s*:"""
DEFAULT_TRACEBACK_REGEX = r"^Traceback \(most recent call last\):"
LAST_LINES = 20
KEPT_LINES = 200
MAX_RECORD_CHARS = 20_000
MAX_EXCERPT_LINES = 40
LOSS_KEYS = ("loss", "train/loss")
GRAD_NORM_KEYS = ("grad_norm", "train/grad_norm")
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
    grad_norm: float | None = None


def training_metrics(record: dict[str, Any]) -> Metrics | None:
    """Step, epoch, loss and reward of a training log record; None for other dicts (eval, summary)."""
    metrics = Metrics(step=_first(record, STEP_KEYS), epoch=_first(record, EPOCH_KEYS),
                      loss=_first(record, LOSS_KEYS), reward=_first(record, REWARD_KEYS),
                      grad_norm=_first(record, GRAD_NORM_KEYS))
    if metrics.loss is None and metrics.reward is None and metrics.step is None:
        return None
    if isinstance(metrics.step, float) and metrics.step.is_integer():
        metrics.step = int(metrics.step)
    return metrics


# -------------------------------------------------------------------------------------- divergence

def hides_a_nan(loss: float | None, grad_norm: float | None) -> bool:
    """A record whose loss says nothing is wrong though it is NaN: the Hugging Face Trainer's
    ``logging_nan_inf_filter`` (on by default) logs a window of NaN step losses as 0.0, next to a NaN grad_norm."""
    grad = _as_float(grad_norm)
    return _as_float(loss) == 0 and grad is not None and not math.isfinite(grad)


class DivergenceStreak:
    """Consecutive training records that say the run diverged, and the last record that was clean.

    A record diverges when its loss is NaN or infinite; when its loss is 0.0 and its grad_norm is not finite (the
    Hugging Face Trainer's ``logging_nan_inf_filter``, on by default, logs a window of NaN losses as 0.0); or, with
    a ``factor``, when its loss is above ``factor`` times the lowest positive loss so far. A record with a sane loss
    ends the streak; a record without a loss (reward only) leaves it as it is. A record is clean when it is sane
    and its grad_norm (if logged) is finite: checkpoints saved after the last clean record may hold the diverged
    weights.
    """

    def __init__(self, factor: float | None = None) -> None:
        self.factor = factor if factor and factor > 0 else None
        self.count = 0
        self.since_step: Any = None  # the step of the streak's first record
        self.last_clean_step: Any = None
        self.lowest: float | None = None  # the lowest positive loss of a sane record
        self.last_loss: float | None = None
        self.last_kind = ""
        self._last_step: Any = None

    def observe(self, loss: Any, step: Any = None, grad_norm: Any = None) -> None:
        if loss is None:
            return
        if _before(step, self._last_step) and _before(step, self.last_clean_step):
            # The steps went back: an attempt resumed from an earlier checkpoint (its log appended to the last
            # one's). Cleanness of the earlier attempt's later steps says nothing of this one's.
            self.last_clean_step = step - 1
        if step is not None:
            self._last_step = step
        loss, grad_norm = _as_float(loss), _as_float(grad_norm)
        kind = ""
        if not math.isfinite(loss):
            kind = "nonfinite"
        elif hides_a_nan(loss, grad_norm):
            kind = "filtered"
        elif self.factor is not None and self.lowest is not None and loss > self.factor * self.lowest:
            kind = "above"
        if kind:
            if self.count == 0:
                self.since_step = step
                if _before(step, self.last_clean_step + 1 if isinstance(self.last_clean_step, int | float) else None):
                    self.last_clean_step = step - 1
            self.count += 1
            self.last_loss, self.last_kind = loss, kind
            return
        self.count = 0
        self.since_step = None
        if loss > 0:
            self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        if grad_norm is None or math.isfinite(grad_norm):
            self.last_clean_step = step

    @property
    def ends_nonfinite(self) -> bool:
        """The last training record's loss was NaN or infinite (or 0.0 beside a NaN grad_norm): so are the weights."""
        return self.count > 0 and self.last_kind in ("nonfinite", "filtered")

    def break_streak(self) -> None:
        """Records were skipped unread (a poll that had to leave part of the log): they may have been sane."""
        self.count = 0
        self.since_step = None

    def reset(self) -> None:
        self.__init__(self.factor)

    def describe(self) -> str:
        """The streak in words, for the watch's message."""
        if not self.count:
            return ""
        if self.last_kind == "filtered":
            what = ("0.0 with a grad_norm that is not finite (a NaN loss, as the Hugging Face Trainer's "
                    "logging_nan_inf_filter logs it)")
        elif self.last_kind == "above":
            what = f"above {self.factor:g} x the lowest ({self.lowest:.4g}), last {self.last_loss:.4g},"
        else:
            what = f"{self.last_loss}"
        since = (f", from step {self.since_step}" if self.since_step is not None else
                 " (the log has no step numbers: give the trainer's --logging_steps in the command, or the checkpoints "
                 "saved after the divergence cannot be told from those before)")
        return f"the loss was {what} for {self.count} training record(s) in a row{since}"

    def record(self) -> dict[str, Any]:
        """The streak for the triage bundle."""
        return {"records": self.count, "since_step": self.since_step, "last_clean_step": self.last_clean_step,
                "lowest_loss": self.lowest}


def _before(step: Any, other: Any) -> bool:
    """``step`` is a number below ``other`` (both known)."""
    return isinstance(step, int | float) and isinstance(other, int | float) and step < other


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------- log follower

class LogFollower:
    """Reads run.log a chunk per poll, from where the previous poll stopped.

    Only complete lines are consumed (a line still being written is read again next time), so
    a record split across two polls is parsed once, whole. Remembers the last lines, the newest
    training metrics, whether a traceback or the summary marker was ever seen, and the
    traceback's text.
    """

    def __init__(self, *, log_format: str = "hf", traceback_regex: str | None = DEFAULT_TRACEBACK_REGEX,
                 summary_regex: str | None = DEFAULT_SUMMARY_REGEX, logging_steps: int | None = None,
                 diverge_factor: float | None = None) -> None:
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
        self.divergence = DivergenceStreak(diverge_factor)

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
            self.divergence.break_streak()
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
        self.divergence.reset()
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
        self.divergence.observe(metrics.loss, self.metrics.step, metrics.grad_norm)

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
