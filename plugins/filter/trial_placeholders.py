# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Placeholders for a sweep's trial parameters, so ``{{ trial.lr }}`` in a run variable survives templating."""

from __future__ import annotations

from typing import Any

from ..plugin_utils.sweep_plan import param_names, placeholders

DOCUMENTATION = r"""
name: trial_placeholders
short_description: Placeholders for a sweep's trial parameters
version_added: 0.2.0
author: mlops.vast developers (@mlops-vast)
description:
  - Maps every parameter a sweep sets (in O(_input), O(random) and O(trials)) to a placeholder text that
    M(mlops.vast.sweep) replaces with each trial's value.
  - playbooks/sweep.yml binds C(trial) to this, so a C(run_command) naming C({{ trial.lr }}) is templated once
    for the whole sweep and filled in per trial.
options:
  _input:
    description: C(sweep_grid).
    type: dict
    required: true
  random:
    description: C(sweep_random).
    type: dict
  trials:
    description: C(sweep_trials).
    type: list
    elements: dict
"""

EXAMPLES = r"""
- name: The command of trial lr=0.1 is "train.py --lr 0.1"
  ansible.builtin.debug:
    msg: "train.py --lr {{ trial.lr }}"
  vars:
    trial: "{{ {'lr': [0.1, 0.01]} | mlops.vast.trial_placeholders }}"
"""

RETURN = r"""
_value:
  description: Parameter name to placeholder text.
  type: dict
"""


def trial_placeholders(grid: Any, random: Any = None, trials: Any = None) -> dict[str, str]:
    return placeholders(param_names(grid if isinstance(grid, dict) else {}, random if isinstance(random, dict) else {},
                                    trials if isinstance(trials, list) else []))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"trial_placeholders": trial_placeholders}
