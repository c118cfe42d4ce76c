# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checkpoints whose step is beyond a given one (e.g. those newer than the newest sealed one)."""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = r"""
name: newer_checkpoints
short_description: The checkpoint names whose step is beyond another's
version_added: 0.2.0
author: mlops.vast developers (@mlops-vast)
description:
  - Keeps the names whose step (the last number in the name, as in C(checkpoint-500)) is greater than the step
    of O(than). With an empty O(than), every name that carries a step.
  - Used to tell which checkpoints on a host are newer than the newest sealed one (being written, or left
    half-written by a kill), so they can be reported as not secured.
options:
  _input:
    description: Checkpoint names or paths.
    type: list
    elements: str
    required: true
  than:
    description: The reference checkpoint name; empty for none.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Checkpoints not yet sealed
  ansible.builtin.debug:
    msg: "{{ ['checkpoint-50', 'checkpoint-100', 'checkpoint-150'] | mlops.vast.newer_checkpoints('checkpoint-100') }}"
"""

RETURN = r"""
_value:
  description: The names beyond O(than), in their input order.
  type: list
  elements: str
"""


def _step(name: str) -> int | None:
    numbers = re.findall(r"\d+", str(name).rstrip("/").rsplit("/", 1)[-1])
    return int(numbers[-1]) if numbers else None


def newer_checkpoints(names: list[str], than: str) -> list[str]:
    floor = _step(than) if than else None
    return [name for name in names if (step := _step(name)) is not None and (floor is None or step > floor)]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"newer_checkpoints": newer_checkpoints}
