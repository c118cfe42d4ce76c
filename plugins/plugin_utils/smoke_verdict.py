# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The smoke test against the estimate: what was measured (step time from the log lines' arrival times,
the job's own allocated peak when it logs one, nvidia-smi's peak, host RAM, disk per checkpoint), each
compared with the estimate by the thresholds of docs/estimator.md (pass / warn / abort), and the whole
run re-estimated from the measured step time. Controller side; standard library only.

Private to the collection.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .training_log import parse_record, training_metrics

GIB = float(2**30)
ALLOCATED_KEYS = ("max_memory_allocated", "gpu_mem_allocated", "train/max_memory_allocated")
RANK = {"pass": 0, "warn": 1, "abort": 2}


def timed_steps(log_text: str, stamps_text: str, log_format: str = "hf") -> list[tuple[float, int]]:
    """(seconds since start, step) of each log line that carries a step, from the probe's stamps."""
    stamps = [float(value) for value in stamps_text.split()] if stamps_text else []
    found = []
    # Both are read from their ends (a long log's tail), so they are paired from the end.
    # One stamp per "\n" (the probe reads the output line by line); a progress bar's "\r" segments stay in
    # their line, of which the last segment is what the terminal would show.
    lines = [line.rsplit("\r", 1)[-1] for line in log_text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    count = min(len(lines), len(stamps))
    for line, stamp in zip(lines[len(lines) - count:], stamps[len(stamps) - count:], strict=True):
        record = parse_record(line, log_format)
        metrics = training_metrics(record) if record else None
        if metrics is not None and metrics.step is not None:
            found.append((stamp, int(metrics.step)))
    return found


def step_seconds(timed: Sequence[tuple[float, int]]) -> float | None:
    """The median seconds per optimizer step between logged steps, after dropping the warm-up (the first
    max(5, 10%) steps: kernel autotuning, lazy optimizer state, data loader start)."""
    if len(timed) < 2:
        return None
    last_step = timed[-1][1]
    warmup = max(5, int(0.1 * last_step))
    kept = [pair for pair in timed if pair[1] >= warmup] if last_step > warmup + 1 else list(timed)
    rates = [(t2 - t1) / (s2 - s1) for (t1, s1), (t2, s2) in itertools.pairwise(kept) if s2 > s1]
    return statistics.median(rates) if rates else None


def allocated_peak_gib(log_text: str, log_format: str = "hf") -> float | None:
    """The job's own allocated peak, when it logs one: max_memory_allocated (bytes), or Hugging Face's
    skip_memory_metrics=False pair before_init_mem_gpu + train_mem_gpu_peaked_delta."""
    peak = None
    for line in log_text.splitlines():
        record = parse_record(line, log_format)
        if not record:
            continue
        values = [record.get(key) for key in ALLOCATED_KEYS]
        if isinstance(record.get("train_mem_gpu_peaked_delta"), int | float):
            values.append(record["train_mem_gpu_peaked_delta"] + (record.get("before_init_mem_gpu") or 0)
                          + (record.get("train_mem_gpu_alloc_delta") or 0))
        for value in values:
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
                peak = max(peak or 0.0, float(value) / GIB)
    return peak


def summary_spend(instance: Mapping[str, Any], now: float) -> float | None:
    """What a rented instance has cost by ``now``, from its summary (mlops.vast.vast_instance's): the GPU part
    since it started running, storage since it was created, as Vast bills them."""
    started, running = instance.get("start_date"), instance.get("running_since") or instance.get("start_date")
    if not started or not now or instance.get("dph_total") is None:
        return None
    gpu_rate = instance.get("dph_base")
    storage_rate = instance.get("storage_dph") or 0.0
    if gpu_rate is None:
        gpu_rate, storage_rate = instance["dph_total"], 0.0
    gpu = max(0.0, now - float(running)) * float(gpu_rate)
    return (gpu + max(0.0, now - float(started)) * float(storage_rate)) / 3600


def _band(value: float, passes: tuple[float, float], warns: tuple[float, float]) -> str:
    if passes[0] <= value <= passes[1]:
        return "pass"
    if warns[0] <= value <= warns[1]:
        return "warn"
    return "abort"


def judge(measured: Mapping[str, Any], estimate: Mapping[str, Any] | None, *, vram_gib: float | None,
          rented_disk_gb: float | None, total_steps: int | None, elapsed_s: float, tail_s: float,
          dph_total: float | None, max_total_usd: float | None, transfer_usd: float = 0.0,
          base_cost_usd: float | None = None, spent_usd: float | None = None) -> dict[str, Any]:
    """Checks, the verdict (the worst check) and the re-estimate of the whole run."""
    checks: list[dict[str, Any]] = []

    def check(name: str, verdict: str, value: Any, expected: Any, why: str) -> None:
        checks.append({"name": name, "verdict": verdict, "measured": value, "expected": expected, "why": why})

    alloc = measured.get("allocated_gib")
    smi = measured.get("nvidia_smi_gib")
    if estimate:
        span = estimate["gpu_mem_gib"]
        if alloc is not None:
            ratio = alloc / span["base"]
            verdict = _band(ratio, (0.85, 1.15), (0.60, 1.30))
            if alloc > span["pess"] and verdict != "abort":
                verdict = "abort"
            why = {"pass": "as estimated",
                   "warn": "off the estimate; the run's estimate is re-based on the measurement",
                   "abort": ("more than the estimate allows: later, longer batches and evals will run out of memory"
                             if ratio > 1 else "far below the estimate: the job that runs is not the one declared "
                                               "(a truncated sequence, LoRA missing?)")}[verdict]
            check("gpu_memory_allocated", verdict, round(alloc, 3), span, f"{ratio:.2f}x the base estimate: {why}")
        elif smi is not None:
            low = span["opt"] * 1.05 + 0.3
            high = span["pess"] * 1.4 + 1.0
            if low <= smi <= high:
                verdict = "pass"
            elif smi < low:
                verdict = "warn"
            else:
                verdict = "abort" if vram_gib and smi > 0.85 * vram_gib else "warn"
            check("gpu_memory_nvidia_smi", verdict, round(smi, 3), {"low": round(low, 2), "high": round(high, 2)},
                  "nvidia-smi's peak against the estimate's range (the job logs no allocated peak)")
    if smi is not None and vram_gib:
        share = smi / vram_gib
        check("gpu_memory_of_card", _band(share, (0, 0.85), (0, 0.92)), round(smi, 3), round(vram_gib, 2),
              f"{share:.0%} of the card's memory (the allocator's cache grows; later batches are longer)")
    ram_used, ram_total = measured.get("ram_used_gib"), measured.get("ram_total_gib")
    if ram_used is not None and ram_total:
        share = ram_used / ram_total
        check("host_ram", _band(share, (0, 0.75), (0, 0.90)), round(ram_used, 3), round(ram_total, 2),
              f"{share:.0%} of the host's RAM")
    if measured.get("swap_grew_gib", 0) > 0.1:
        check("swap", "warn", measured["swap_grew_gib"], 0, "the host swapped while the job ran")
    if measured.get("checkpoint_gb") is not None and rented_disk_gb and estimate:
        parts = estimate.get("breakdown", {}).get("disk_gb", {})
        others = sum(part["base"] for name, part in parts.items() if name not in ("checkpoints",))
        kept = (estimate.get("job") or {}).get("checkpoints_kept") or estimate.get("saves") or 3
        projected = others + (kept + 1) * measured["checkpoint_gb"]
        share = projected / rented_disk_gb
        check("disk", _band(share, (0, 0.75), (0, 0.90)), round(projected, 3), rented_disk_gb,
              f"{share:.0%} of the rented disk with {kept + 1} checkpoints of {measured['checkpoint_gb']:.3g} GB")

    reestimate: dict[str, Any] = {}
    step_s = measured.get("step_seconds")
    if step_s and total_steps:
        train_s = step_s * total_steps
        total_h = (elapsed_s + train_s + tail_s) / 3600
        reestimate = {"step_seconds": round(step_s, 4), "steps": total_steps, "train_hours": round(train_s / 3600, 4),
                      "elapsed_hours": round(elapsed_s / 3600, 4), "total_hours": round(total_h, 4)}
        if dph_total is not None:
            # What was spent (as billed: GPU while running, storage since creation) plus the rest at the full rate.
            spent = spent_usd if spent_usd is not None else elapsed_s / 3600 * dph_total
            compute = spent + (train_s + tail_s) / 3600 * dph_total
            cost = compute + transfer_usd
            reestimate.update(spent_usd=round(spent, 6), compute_usd=round(compute, 6),
                              transfer_usd=round(transfer_usd, 6), cost_usd=round(cost, 6))
            if max_total_usd:
                within_base = not base_cost_usd or cost <= base_cost_usd * 1.1
                verdict = "abort" if cost > max_total_usd else "pass" if within_base else "warn"
                check("cost", verdict, round(cost, 4), max_total_usd,
                      f"the run re-estimated from the measured step time: ${cost:.4f} against the budget "
                      f"${max_total_usd:g}")
    if estimate and step_s and estimate.get("tokens_per_step") and measured.get("estimated_step_seconds"):
        ratio = measured["estimated_step_seconds"] / step_s  # measured throughput / estimated
        cost_ok = not any(c["name"] == "cost" and c["verdict"] == "abort" for c in checks)
        verdict = "pass" if 0.65 <= ratio <= 1.35 else "warn" if ratio > 1.35 or cost_ok else "abort"
        check("throughput", verdict, round(step_s, 4), measured["estimated_step_seconds"],
              f"{ratio:.2f}x the estimated tokens/s" + (" (fewer tokens than declared?)" if ratio > 1.35 else ""))
    worst = max((c["verdict"] for c in checks), key=RANK.__getitem__, default="pass")
    return {"verdict": worst, "checks": checks, "reestimate": reestimate,
            "aborts": [f"{c['name']}: {c['why']}" for c in checks if c["verdict"] == "abort"],
            "warnings": [f"{c['name']}: {c['why']}" for c in checks if c["verdict"] == "warn"]}
