# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Judge a smoke test's measurements against the pre-rental estimate."""

from __future__ import annotations

from typing import Any

from ..plugin_utils.smoke_verdict import allocated_peak_gib, judge, step_seconds, summary_spend, timed_steps

DOCUMENTATION = r"""
name: smoke_verdict
short_description: Judge a smoke test's measurements against the pre-rental estimate
version_added: 0.2.0
author: mlops.vast developers (@mlops-vast)
description:
  - Reads what the smoke test measured - the log with the arrival time of each line (step time, the median
    after warm-up), the job's own allocated peak when it logs C(max_memory_allocated) (or Hugging Face's
    C(train_mem_gpu_peaked_delta)), nvidia-smi's sampled peak, host RAM and the disk a checkpoint takes -
    and compares each with the estimate of M(mlops.vast.estimate) by the thresholds in C(docs/estimator.md)
    - C(pass), C(warn) (the run's estimate is re-based on the measurement) or C(abort) (tear down cheaply).
  - Re-estimates the whole run's hours and cost from the measured step time, the time already rented and
    the time the end of the run takes.
options:
  _input:
    description: The smoke log's text.
    type: str
    required: true
  stamps:
    description: The probe's C(smoke.stamps) text (seconds since the start, one line per log line).
    type: str
    required: true
  probe:
    description: The probe's C(smoke.probe.json) (GPU, RAM and disk measurements).
    type: dict
    required: true
  context:
    description:
      - C(estimate) (the estimate's result, or empty), C(offer) (its row for the rented offer), C(instance)
        (the rented instance as M(mlops.vast.vast_instance) returns it - start_date, running_since, dph_total,
        dph_base, storage_dph, gpu_ram), C(now) (epoch seconds), C(disk_gb) (rented), C(total_steps), C(tail_s)
        (the end of the run), C(max_total_usd), C(checkpoints) (how many the smoke test wrote), C(log_format).
    type: dict
    required: true
"""

EXAMPLES = r"""
- name: Judge the smoke test
  ansible.builtin.set_fact:
    verdict: "{{ log_text | mlops.vast.smoke_verdict(stamps_text, probe, {'estimate': estimate, 'total_steps': 400}) }}"
"""

RETURN = r"""
_value:
  description: C(verdict) (pass, warn or abort), C(checks) (each C(name), C(verdict), C(measured), C(expected),
    C(why)), C(aborts), C(warnings), C(measured) and C(reestimate) (C(step_seconds), C(total_hours), C(cost_usd)).
  type: dict
"""


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def smoke_verdict(log_text: str, stamps: str, probe: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    log_format = context.get("log_format") or "hf"
    estimate = context.get("estimate") or None
    offer = context.get("offer") or {}
    step_s = step_seconds(timed_steps(log_text or "", stamps or "", log_format))
    gpu_peaks = probe.get("gpu_mem_used_mib_peak") or []
    checkpoints = int(context.get("checkpoints") or 0)
    disk = sum((probe.get("disk_used_gb") or {}).values())
    measured: dict[str, Any] = {
        "step_seconds": round(step_s, 5) if step_s else None,
        "allocated_gib": _rounded(allocated_peak_gib(log_text or "", log_format)),
        "nvidia_smi_gib": round(max(gpu_peaks) / 1024, 3) if gpu_peaks and max(gpu_peaks) > 1 else None,
        "ram_used_gib": probe.get("ram_used_gib_peak"), "ram_total_gib": probe.get("ram_total_gib"),
        "swap_grew_gib": probe.get("swap_used_gib_peak", 0) - (probe.get("swap_used_gib_start") or 0),
        "checkpoint_gb": round(disk / checkpoints, 6) if checkpoints else None,
        "samples": probe.get("samples"),
    }
    step_estimate = (offer.get("step_seconds") or {}).get("base")
    if step_estimate:
        measured["estimated_step_seconds"] = step_estimate
    instance = context.get("instance") or {}
    now = float(context.get("now") or 0)
    started = instance.get("start_date")
    elapsed = max(0.0, now - float(started)) if started and now else 0.0
    verdict = judge(measured, estimate, vram_gib=(float(instance.get("gpu_ram") or 0) / 1024) or None,
                    rented_disk_gb=float(context.get("disk_gb") or 0) or None,
                    total_steps=int(context.get("total_steps") or 0) or (estimate or {}).get("steps"),
                    elapsed_s=elapsed, tail_s=float(context.get("tail_s") or 0), dph_total=instance.get("dph_total"),
                    max_total_usd=float(context.get("max_total_usd") or 0) or None,
                    transfer_usd=float(offer.get("transfer_usd") or 0),
                    base_cost_usd=(offer.get("cost_usd") or {}).get("base"),
                    spent_usd=summary_spend(instance, now))
    return {"measured": measured, **verdict}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"smoke_verdict": smoke_verdict}
