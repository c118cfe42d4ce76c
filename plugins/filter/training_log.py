# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read a training log (Hugging Face Trainer lines or JSON lines) into step, loss, reward, markers."""

from __future__ import annotations

import math
import re
from typing import Any

from ..plugin_utils.training_log import (
    DEFAULT_SUMMARY_REGEX,
    DEFAULT_TRACEBACK_REGEX,
    hides_a_nan,
    parse_record,
    training_metrics,
)

DOCUMENTATION = r"""
name: training_log
short_description: Read a training log into its steps, losses, rewards and markers
version_added: 0.1.0
author: mlops.vast developers (@mlops-vast)
description:
  - Parses the text of a training log in the training contract's formats (Hugging Face Trainer's dict
    lines, or JSON lines) and returns what a smoke test judges by.
options:
  _input:
    description: The log text.
    type: str
    required: true
  log_format:
    description: C(hf) (Python dict reprs, the default) or C(jsonl).
    type: str
    default: hf
  summary_regex:
    description: A line matching this marks a completed run (Hugging Face's C(train_runtime) line by default).
    type: str
  traceback_regex:
    description: A line matching this is a crash.
    type: str
"""

EXAMPLES = r"""
- name: Judge a smoke test
  ansible.builtin.assert:
    that:
      - report.records | length >= 2
      - report.last_loss < report.first_loss
      - not report.traceback
  vars:
    report: "{{ smoke_log | mlops.vast.training_log }}"
"""

RETURN = r"""
_value:
  description: C(records) (each C(step), C(loss), C(reward), C(epoch), C(grad_norm)), C(first_loss), C(last_loss),
    C(rewards), C(last_step), C(finite) (no NaN or infinite loss, nor a 0.0 loss next to a grad_norm that is not
    finite, as the Hugging Face Trainer logs a NaN loss), C(traceback), C(traceback_excerpt), C(summary) (the
    summary line's metrics, or null).
  type: dict
"""


def training_log(text: str, log_format: str = "hf", summary_regex: str | None = None,
                 traceback_regex: str | None = None) -> dict[str, Any]:
    summary_re = re.compile(summary_regex or DEFAULT_SUMMARY_REGEX)
    traceback_re = re.compile(traceback_regex or DEFAULT_TRACEBACK_REGEX)
    records: list[dict[str, Any]] = []
    summary = None
    excerpt: list[str] = []
    lines = str(text or "").splitlines()
    for index, line in enumerate(lines):
        if traceback_re.search(line) and not excerpt:
            excerpt = lines[index:index + 30]
        record = parse_record(line, log_format)
        if record is None:
            continue
        if summary_re.search(line):
            summary = {k: v for k, v in record.items() if isinstance(v, int | float | str)}
            continue
        metrics = training_metrics(record)
        if metrics is not None:
            records.append({"step": metrics.step, "loss": metrics.loss, "reward": metrics.reward,
                            "epoch": metrics.epoch, "grad_norm": metrics.grad_norm})
    losses = [r["loss"] for r in records if r["loss"] is not None]
    rewards = [r["reward"] for r in records if r["reward"] is not None]
    steps = [r["step"] for r in records if r["step"] is not None]
    return {
        "records": records,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        # A NaN logged as 0.0 (next to a NaN grad_norm, by the Hugging Face Trainer's filter) is not finite either.
        "finite": all(math.isfinite(x) for x in losses)
        and not any(hides_a_nan(r["loss"], r["grad_norm"]) for r in records),
        "rewards": rewards,
        "last_step": steps[-1] if steps else None,
        "traceback": bool(excerpt),
        "traceback_excerpt": "\n".join(excerpt),
        "summary": summary,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"training_log": training_log}
