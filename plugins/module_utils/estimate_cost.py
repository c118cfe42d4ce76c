# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The whole estimate of a job: memory, RAM and disk with their parts; per offer, whether it fits (and
what would make it fit when not), the hours and the cost (GPU time with storage, downloads, checkpoint
uploads, at the offer's prices); the floors to add to the offer query; offers ranked by cost.

Fit rules (docs/estimator.md §3): a GPU fits when the pessimistic nvidia-smi figure is at most 92% of
its memory, and is ``tight`` (rented, with a warning) when only the base figure is and the pessimistic
allocation plus context still fits the card; RAM at 85% and disk at 90% likewise.

Private to the collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .estimate_job import Job, Span
from .estimate_memory import CONTEXT, GB, GIB, checkpoint_bytes, disk, gpu_memory, host_ram, saves
from .gpu_specs import gpu_spec, mfu
from .offer_selection import OfferRequest
from .vast_query import parse_query

VRAM_SHARE, RAM_SHARE, DISK_SHARE = 0.92, 0.85, 0.90
MFU_SPREAD = Span(1.35, 1.0, 0.65)
MULTI_GPU = Span(0.95, 0.85, 0.6)
LINK_SLOWDOWN = Span(1.0, 2.0, 10.0)  # advertised link / real: probes find a tenth of it on some hosts
# Seconds of a rental that are not training (Vast's guide: boot 2-5 min; setup and the smoke test).
BOOT_S = Span(120, 300, 900)
SETUP_S = Span(60, 180, 600)
TEARDOWN_S = Span(30, 60, 120)
SMOKE_STEPS = 50
DEFAULT_DISK_MBPS = 500.0


def tokens_per_second(job: Job, offer: Mapping[str, Any]) -> tuple[Span, dict[str, Any]]:
    """Trained tokens per second on the whole offer (all its GPUs the job uses)."""
    spec, known = gpu_spec(str(offer.get("gpu_name") or ""),
                           (offer.get("total_flops") or 0) / max(1, int(offer.get("num_gpus") or 1)))
    shape = job.shape
    flops_params = job.exact_params - (0 if shape.tied else shape.embedding) if job.exact_params else shape.flops_params
    per_token = (6 if job.method == "full" else 4) * flops_params + 12 * shape.layers * shape.hidden * job.seq_len
    if job.checkpointing:
        per_token += 2 * flops_params  # the recomputed forward: hardware work MFU does not count
    base_mfu = mfu(job.method, spec, job.tokens_per_micro_batch)
    utilisation = MFU_SPREAD * base_mfu
    scaling = MULTI_GPU if job.num_gpus > 1 else Span.of(1.0)
    rate = utilisation * scaling * (spec.bf16_tflops * 1e12 * job.num_gpus / per_token)
    return rate, {"gpu": spec.name, "gpu_known": known, "bf16_tflops": spec.bf16_tflops,
                  "mfu_base": round(base_mfu, 3), "flops_per_token": per_token}


def offer_price(offer: Mapping[str, Any], bid_price: float | None = None) -> float:
    """$/h billed, storage included: at the bid for an interruptible rental (the offer pick's own rule)."""
    return OfferRequest(bid_price=bid_price or None).price(offer)


def time_and_cost(job: Job, offer: Mapping[str, Any], rate: Span, bid_price: float | None = None) -> dict[str, Any]:
    tokens = job.total_tokens
    train_s = Span(tokens / rate.opt, tokens / rate.base, tokens / rate.pess) if tokens else Span.of(0)
    step_s = Span(job.tokens_per_step / rate.opt, job.tokens_per_step / rate.base, job.tokens_per_step / rate.pess)
    down_mbps = max(0.1, float(offer.get("inet_down") or 100) / 8)  # Mbit/s advertised -> MB/s
    up_mbps = max(0.1, float(offer.get("inet_up") or 100) / 8)
    download_gb = (job.weights_gb if job.weights_gb is not None else 2 * job.params / GB) + job.dataset_gb
    checkpoint_gb = checkpoint_bytes(job) / GB
    upload_gb = saves(job) * checkpoint_gb
    disk_mbps = float(offer.get("disk_bw") or DEFAULT_DISK_MBPS)
    phases = {
        "boot": BOOT_S,
        "downloads": LINK_SLOWDOWN * (download_gb * 1000 / down_mbps),
        "setup": SETUP_S,
        "smoke_test": step_s * SMOKE_STEPS + 60,
        "training": train_s,
        "checkpoint_saves": Span.of(saves(job) * checkpoint_gb * 1000 / disk_mbps),
        "final_pull": LINK_SLOWDOWN * (checkpoint_gb * 1000 / up_mbps),
        "teardown": TEARDOWN_S,
    }
    seconds = sum(phases.values(), Span.of(0))
    if offer.get("is_bid") or bid_price:
        # One preemption in the pessimistic case: boot again, restore, redo up to one sync interval.
        seconds = seconds + Span(0, 0, BOOT_S.base + phases["downloads"].base + 600)
    hours = seconds * (1 / 3600)
    price = offer_price(offer, bid_price)
    transfer = (download_gb * float(offer.get("inet_down_cost") or 0)
                + upload_gb * float(offer.get("inet_up_cost") or 0))
    cost = hours * price + transfer
    return {"hours": hours, "cost": cost, "price_dph": price, "step_seconds": step_s,
            "phases_s": {name: span.rounded(1) for name, span in phases.items()},
            "transfer_usd": round(transfer, 4), "download_gb": round(download_gb, 3),
            "upload_gb": round(upload_gb, 3)}


def _verdict(need: Span, capacity: float, share: float) -> str:
    if need.pess <= share * capacity:
        return "fits"
    if need.base <= share * capacity:
        return "tight"
    return "no"


def gpu_verdict(job: Job, vram_gib: float) -> str:
    memory = gpu_memory(job)
    verdict = _verdict(memory.device * (1 / GIB), vram_gib, VRAM_SHARE)
    if verdict == "tight" and (memory.allocated.pess + CONTEXT.pess) / GIB > vram_gib:
        return "no"
    return verdict


def _fits_with(job: Job, changes: list[tuple[str, dict[str, Any]]], vram_gib: float) -> bool:
    merged: dict[str, Any] = {}
    for _text, change in changes:
        merged.update(change)
    return gpu_verdict(job.varied(**merged), vram_gib) != "no"


def suggestions(job: Job, vram_gib: float, offer_gpus: int) -> list[str]:
    """Changes to the job that would make its GPU memory fit ``vram_gib``, each alone, then together."""
    options: list[tuple[str, dict[str, Any]]] = []
    if not job.checkpointing:
        options.append(("gradient_checkpointing: true", {"checkpointing": True}))
    if job.micro_batch > 1:
        options.append((f"micro_batch_size: 1 with grad_accum: {job.grad_accum * job.micro_batch}",
                        {"micro_batch": 1, "grad_accum": job.grad_accum * job.micro_batch}))
    if not job.fused_ce:
        options.append(("fused_cross_entropy: true (Liger or Unsloth kernels)", {"fused_ce": True}))
    if job.optimizer in ("adamw", "adamw_fused"):
        options.append(("optimizer: adamw_8bit", {"optimizer": "adamw_8bit"}))
    if job.precision == "amp":
        options.append(("precision: bf16", {"precision": "bf16"}))
    if job.method == "full":
        options.append(("method: lora", {"method": "lora"}))
    if job.method != "qlora":
        options.append(("method: qlora", {"method": "qlora"}))
    if job.zero_stage < 3:
        options.append(("zero_stage: 3 with cpu_offload: true (DeepSpeed)", {"zero_stage": 3, "cpu_offload": True}))
    found = [text for text, change in options if gpu_verdict(job.varied(**change), vram_gib) != "no"]
    if not any("zero_stage" not in text for text in found):
        # Greedily together, then drop each change the fit does not need.
        chosen: list[tuple[str, dict[str, Any]]] = []
        for text, change in options:
            if "zero_stage" in change:
                continue  # DeepSpeed is offered on its own above
            chosen.append((text, change))
            if _fits_with(job, chosen, vram_gib):
                for item in list(chosen):
                    rest = [other for other in chosen if other is not item]
                    if _fits_with(job, rest, vram_gib):
                        chosen = rest
                found.append(" and ".join(text for text, _change in chosen))
                break
    more_gpus = job.num_gpus * 2
    if job.zero_stage < 3 or more_gpus <= 8:
        sharded = job.varied(zero_stage=3, num_gpus=min(8, more_gpus), cpu_offload=False)
        if gpu_verdict(sharded, vram_gib) != "no" and not found:
            found.append(f"zero_stage: 3 on {sharded.num_gpus} GPUs (an offer with num_gpus >= {sharded.num_gpus})")
    if offer_gpus < job.num_gpus:
        found.insert(0, f"an offer with {job.num_gpus} GPUs")
    return found


def judge_offer(job: Job, offer: Mapping[str, Any], ram: Span, disk_need: Span,
                bid_price: float | None = None) -> dict[str, Any]:
    memory = gpu_memory(job)
    vram_gib = float(offer.get("gpu_ram") or 0) / 1024  # MiB per GPU as Vast lists it
    ram_gib = float(offer.get("cpu_ram") or 0) / 1024
    rented_disk = job.disk_gb or float(offer.get("disk_space") or 0)
    offer_gpus = int(offer.get("num_gpus") or 1)
    rate, throughput = tokens_per_second(job, offer)
    priced = time_and_cost(job, offer, rate, bid_price)
    reasons: list[str] = []
    warnings: list[str] = []
    device_gib = memory.device * (1 / GIB)
    gpu = gpu_verdict(job, vram_gib)
    if offer_gpus < job.num_gpus:
        reasons.append(f"GPUs: the job needs {job.num_gpus}, the offer has {offer_gpus}")
    if gpu == "no":
        reasons.append(f"GPU memory: needs {device_gib.base:.1f} GiB per GPU (up to {device_gib.pess:.1f} GiB "
                       f"pessimistic, nvidia-smi), the offer's {offer.get('gpu_name')} has {vram_gib:.1f} GiB; "
                       f"short by {device_gib.base - VRAM_SHARE * vram_gib:.1f} GiB at {VRAM_SHARE:.0%}")
    elif gpu == "tight":
        warnings.append(f"GPU memory is tight: {device_gib.base:.1f} GiB base, {device_gib.pess:.1f} GiB "
                        f"pessimistic, on {vram_gib:.1f} GiB")
    for name, need, have, share, unit in (("RAM", ram * (1 / GIB), ram_gib, RAM_SHARE, "GiB"),
                                          ("disk", disk_need * (1 / GB), rented_disk, DISK_SHARE, "GB")):
        verdict = _verdict(need, have, share)
        if verdict == "no":
            reasons.append(f"{name}: needs {need.base:.1f} {unit} (up to {need.pess:.1f} pessimistic), "
                           f"{'the offer has' if name == 'RAM' else 'the rental has'} {have:.1f} {unit}; "
                           f"short by {need.base - share * have:.1f} {unit} at {share:.0%}")
        elif verdict == "tight":
            warnings.append(f"{name} is tight: {need.base:.1f} {unit} base, {need.pess:.1f} pessimistic, "
                            f"of {have:.1f} {unit}")
    result: dict[str, Any] = {
        "id": offer.get("id"), "machine_id": offer.get("machine_id"), "gpu_name": offer.get("gpu_name"),
        "num_gpus": offer_gpus, "gpu_ram_gib": round(vram_gib, 2), "cpu_ram_gib": round(ram_gib, 2),
        "disk_gb": rented_disk, "dph_total": priced["price_dph"], "fits": not reasons, "reasons": reasons,
        "warnings": warnings, "hours": priced["hours"].rounded(3), "cost_usd": priced["cost"].rounded(4),
        "tokens_per_s": rate.rounded(1), "step_seconds": priced["step_seconds"].rounded(4),
        "throughput": throughput, "phases_s": priced["phases_s"], "transfer_usd": priced["transfer_usd"],
    }
    if gpu == "no" or offer_gpus < job.num_gpus:
        result["would_fit_with"] = suggestions(job, vram_gib, offer_gpus)
    return result


def floors(device: Span, ram: Span, disk_need: Span) -> dict[str, float]:
    """The least an offer must have for the job to fit at the base estimate, in the query's units
    (gpu_ram and cpu_ram in GB of 1000 MB, as the search language counts; disk in GB)."""
    return {"gpu_ram": round(device.base / VRAM_SHARE * 1024 / 1000 / GIB, 1),
            "cpu_ram": round(ram.base / RAM_SHARE * 1024 / 1000 / GIB, 1),
            "disk_space": round(disk_need.base / DISK_SHARE / GB, 1)}


def query_with_floors(query: str, floor: Mapping[str, float]) -> str:
    """``query`` with each floor appended unless the query already asks for at least as much
    (a later term on the same field replaces an earlier one, so a lower floor must not be added)."""
    asked = parse_query(query, defaults=False).filters
    terms = [query.strip()] if query.strip() else []
    for name, value in floor.items():
        wanted = float(parse_query(f"{name} >= {value:g}", defaults=False).filters[name]["gte"])
        bound = asked.get(name, {})
        have = max((float(bound[op]) for op in ("gte", "gt", "eq") if op in bound), default=None)
        if have is None or have < wanted:
            terms.append(f"{name} >= {value:g}")
    return " ".join(terms)


def estimate(job: Job, offers: Sequence[Mapping[str, Any]] = (), bid_price: float | None = None,
             max_total_usd: float | None = None, query: str | None = None) -> dict[str, Any]:
    """The estimate the module returns."""
    memory = gpu_memory(job)
    ram, ram_parts = host_ram(job)
    disk_need, disk_parts = disk(job)
    judged = [judge_offer(job, offer, ram, disk_need, bid_price) for offer in offers]
    judged.sort(key=lambda row: (not row["fits"], row["cost_usd"]["base"], row["id"] or 0))
    floor = floors(memory.device, ram, disk_need)
    result: dict[str, Any] = {
        "model": {**job.shape.as_dict(), "params": int(job.params), "trainable_params": int(job.trainable),
                  "lora_params": int(job.lora_params)},
        "job": job.describe(),
        "steps": job.steps, "tokens": job.total_tokens, "tokens_per_step": job.tokens_per_step,
        "checkpoint_gb": round(checkpoint_bytes(job) / GB, 3), "saves": saves(job),
        "gpu_mem_gib": (memory.allocated * (1 / GIB)).rounded(2),
        "gpu_mem_device_gib": (memory.device * (1 / GIB)).rounded(2),
        "ram_gib": (ram * (1 / GIB)).rounded(2),
        "disk_gb": (disk_need * (1 / GB)).rounded(2),
        "breakdown": {"gpu_mem": memory.report(),
                      "ram_gib": {name: (span * (1 / GIB)).rounded(3) for name, span in ram_parts.items()},
                      "disk_gb": {name: (span * (1 / GB)).rounded(3) for name, span in disk_parts.items()}},
        "floors": floor,
        "query_floor": f"gpu_ram >= {floor['gpu_ram']:g} cpu_ram >= {floor['cpu_ram']:g} "
                       f"disk_space >= {floor['disk_space']:g}",
        "query": query_with_floors(query, floor) if query is not None else None,
        "offers": judged,
        "fitting": sum(1 for row in judged if row["fits"]),
        "caveats": (["the shape was guessed from params: give model_config for a closer estimate"]
                    if job.shape.guessed else []),
    }
    if max_total_usd is not None:
        for row in judged:
            row["within_budget"] = row["cost_usd"]["opt"] <= max_total_usd
            row["budget_at_risk"] = row["cost_usd"]["pess"] > max_total_usd
    return result
