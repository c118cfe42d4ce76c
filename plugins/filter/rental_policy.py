# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""On-demand or interruptible: the seeds' decision matrix, with its reason."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

DOCUMENTATION = r"""
name: rental_policy
short_description: Decide on-demand or interruptible for a run, and say why
version_added: 0.2.0
author: mlops.vast developers (@mlops-vast)
description:
  - Applies the decision matrix of the collection's best practices when the run leaves it to the collection
    (C(auto)); an explicit C(true)/C(false) or a fixed bid wins.
  - "C(auto): a run that checkpoints (it has a resume argument) goes interruptible whatever its length: a
    preemption costs at most one checkpoint interval, and interruptible costs 50-70% less. A run that does not
    checkpoint goes interruptible only when short (under 2 hours: a restart is cheap), on-demand otherwise
    (a preemption would lose everything)."
options:
  _input:
    description: The run's C(interruptible) setting, C(auto), C(true) or C(false).
    type: raw
    required: true
  hours:
    description: The run's expected length in hours (the estimate's, or its max runtime as an upper bound).
    type: float
    required: true
  checkpoints:
    description: Whether the run resumes from checkpoints (a resume argument is set).
    type: bool
    required: true
  bid_price:
    description: A fixed bid the run asked for (C(0) for none); it means interruptible.
    type: float
    default: 0
"""

EXAMPLES = r"""
- name: Decide
  ansible.builtin.set_fact:
    policy: "{{ 'auto' | mlops.vast.rental_policy(hours=0.5, checkpoints=true) }}"
"""

RETURN = r"""
_value:
  description: C(interruptible) (bool) and C(why) (the rule that decided, in words).
  type: dict
"""

SHORT_HOURS = 2.0


def rental_policy(setting: Any, hours: float, checkpoints: bool, bid_price: float = 0) -> dict[str, Any]:
    text = str(setting).strip().lower()
    if text not in ("true", "yes", "1", "false", "no", "0", "auto"):
        raise AnsibleFilterError(f"run_interruptible must be auto, true or false, got {setting!r}")
    if float(bid_price or 0) > 0:
        if text in ("false", "no", "0"):
            raise AnsibleFilterError(f"run_interruptible is false but run_bid_price is {float(bid_price):g}: a bid "
                                     "rents interruptible; set run_bid_price to 0 for on-demand, or drop the false")
        return {"interruptible": True, "why": f"a fixed bid of ${float(bid_price):g}/h was given (run_bid_price)"}
    if text in ("true", "yes", "1"):
        return {"interruptible": True, "why": "asked for (run_interruptible: true)"}
    if text in ("false", "no", "0"):
        return {"interruptible": False, "why": "asked for (run_interruptible: false)"}
    hours = float(hours)
    if checkpoints:
        return {"interruptible": True, "why": (
            f"auto: the run checkpoints and resumes, so a preemption costs at most one checkpoint interval "
            f"(expected {hours:.2g} h); interruptible costs 50-70% less")}
    if hours < SHORT_HOURS:
        return {"interruptible": True, "why": (
            f"auto: a short run ({hours:.2g} h < {SHORT_HOURS:g} h) without checkpoints restarts cheaply")}
    return {"interruptible": False, "why": (
        f"auto: a long run ({hours:.2g} h) without checkpoints would lose everything to a preemption; "
        "set run_resume_arg to make it interruptible")}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"rental_policy": rental_policy}
