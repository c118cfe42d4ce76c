# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sort strings by the numbers in them: checkpoint-9 before checkpoint-10."""

from __future__ import annotations

import re
from typing import Any

DOCUMENTATION = r"""
name: natural_sort
short_description: Sort strings by the numbers in them
version_added: 0.1.0
author: mlops.vast developers (@mlops-vast)
description:
  - Sorts a list of strings so that embedded numbers compare as numbers, so C(checkpoint-9) comes
    before C(checkpoint-10) (a plain sort puts it after).
options:
  _input:
    description: The strings.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Newest checkpoint
  ansible.builtin.debug:
    msg: "{{ ['out/checkpoint-100', 'out/checkpoint-50', 'out/checkpoint-1000'] | mlops.vast.natural_sort | last }}"
"""

RETURN = r"""
_value:
  description: The sorted list.
  type: list
  elements: str
"""


def _key(text: str) -> list[Any]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", str(text)) if part]


def natural_sort(values: list[str]) -> list[str]:
    return sorted(values, key=_key)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"natural_sort": natural_sort}
