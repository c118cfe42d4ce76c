"""The published fine-tuning measurements (tests/data/published_memory_cases.yml) as estimator jobs: shared by
the estimator's tests and bench/estimate.py, so both judge the same cases the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ansible_collections.mlops.vast.plugins.module_utils.estimate_job import Job, job_from_params

CASES_FILE = Path(__file__).resolve().parent / "data" / "published_memory_cases.yml"
JOB_KEYS = ("method", "lora_r", "precision", "optimizer", "micro_batch_size", "seq_len", "grad_accum",
            "gradient_checkpointing", "num_gpus", "zero_stage", "attention", "fused_cross_entropy")


def load_cases() -> list[dict[str, Any]]:
    return yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))


def case_job(case: dict[str, Any]) -> Job:
    """The case's configuration as the estimator's options. Qwen-1's blocks (a fused c_attn, w1 and w2 of
    half the listed intermediate size) are counted as the Llama-style block with the same matrices."""
    config = dict(case["model_config"])
    targets = case.get("lora_targets")
    if case.get("architecture") == "qwen1":
        config["intermediate_size"] = config["intermediate_size"] // 2
        targets = "all-linear" if targets else None
    options = {key: case[key] for key in JOB_KEYS if case.get(key) is not None}
    return job_from_params({**options, "model_config": config, "lora_targets": targets,
                            "lora_dropout": case.get("lora_dropout", 0.05)})


def compared_span(result: dict[str, Any], meter: str) -> dict[str, float]:
    """The estimate a measurement is compared with: the allocator's peak, or nvidia-smi's view of it."""
    return result["gpu_mem_device_gib"] if meter in ("nvidia-smi", "reserved") else result["gpu_mem_gib"]
