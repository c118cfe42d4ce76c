# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Dense BF16 tensor throughput of the GPUs Vast rents, and how much of it fine-tuning gets.

Peaks are dense (no sparsity) with FP32 accumulate, from the datasheets (docs/estimator.md §4 names
the sources). Vast's own ``total_flops`` is not used as the peak: its precision is unstated.

Private to the collection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bf16_tflops: float
    memory_class: str  # "hbm-a100" (the MFU reference), "hbm-hopper" or "gddr"


# Longest pattern first where one name contains another (H100 NVL before H100).
SPECS: tuple[tuple[str, GpuSpec], ...] = (
    (r"H200", GpuSpec("H200", 989.0, "hbm-hopper")),
    (r"H100.*(NVL)", GpuSpec("H100 NVL", 835.0, "hbm-hopper")),
    (r"H100.*(PCIE|PCI-E)", GpuSpec("H100 PCIe", 756.0, "hbm-hopper")),
    (r"H100", GpuSpec("H100 SXM", 989.4, "hbm-hopper")),
    (r"GH200", GpuSpec("GH200", 989.0, "hbm-hopper")),
    (r"B200", GpuSpec("B200", 2250.0, "hbm-hopper")),
    (r"A100|A800", GpuSpec("A100", 312.0, "hbm-a100")),
    (r"L40S", GpuSpec("L40S", 362.05, "gddr")),
    (r"L40", GpuSpec("L40", 181.0, "gddr")),
    (r"RTX ?6000 ?ADA|RTX 6000ADA", GpuSpec("RTX 6000 Ada", 364.2, "gddr")),
    (r"PRO ?6000", GpuSpec("RTX Pro 6000", 503.8, "gddr")),
    (r"A6000", GpuSpec("RTX A6000", 154.8, "gddr")),
    (r"A5000", GpuSpec("RTX A5000", 111.1, "gddr")),
    (r"A4000", GpuSpec("RTX A4000", 76.7, "gddr")),
    (r"A40\b", GpuSpec("A40", 149.7, "gddr")),
    (r"A10\b", GpuSpec("A10", 125.0, "gddr")),
    (r"L4\b", GpuSpec("L4", 121.0, "gddr")),
    (r"5090", GpuSpec("RTX 5090", 209.5, "gddr")),
    (r"5080", GpuSpec("RTX 5080", 112.6, "gddr")),
    (r"4090", GpuSpec("RTX 4090", 165.2, "gddr")),
    (r"4080", GpuSpec("RTX 4080", 97.5, "gddr")),
    (r"4070", GpuSpec("RTX 4070 Ti", 80.2, "gddr")),
    (r"3090", GpuSpec("RTX 3090", 71.0, "gddr")),
    (r"3080", GpuSpec("RTX 3080", 59.5, "gddr")),
    (r"V100", GpuSpec("V100", 125.0, "gddr")),  # fp16 tensor cores only: bf16 runs far slower
    (r"T4\b", GpuSpec("T4", 65.0, "gddr")),
)

# Model FLOPs utilisation of HF-style single-GPU fine-tuning on A100s (measured runs, docs/estimator.md).
BASE_MFU = {"full": 0.40, "lora": 0.35, "qlora": 0.30}
CLASS_SCALE = {"hbm-a100": 1.0, "hbm-hopper": 0.65, "gddr": 0.6}


def gpu_spec(gpu_name: str, offer_tflops: float | None = None) -> tuple[GpuSpec, bool]:
    """The spec of ``gpu_name`` (Vast's spelling) and whether it is known; an unknown GPU is priced from
    the offer's total_flops (precision unstated, so a guess the estimate marks)."""
    upper = gpu_name.upper()
    for pattern, spec in SPECS:
        if re.search(pattern, upper):
            return spec, True
    return GpuSpec(gpu_name or "unknown", float(offer_tflops or 100.0), "gddr"), False


def mfu(method: str, spec: GpuSpec, tokens_per_micro_batch: int) -> float:
    """The base MFU of a job on this GPU: smaller for Hopper and GDDR cards and for short micro-batches."""
    short = min(1.0, (tokens_per_micro_batch / 2048) ** (1 / 3))
    return BASE_MFU[method] * CLASS_SCALE[spec.memory_class] * short
