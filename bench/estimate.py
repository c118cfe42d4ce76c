#!/usr/bin/env python3
"""The estimate against published measurements: its error on every case the tests use, and its time per call.

    .venv/bin/python bench/estimate.py [--calls 2000]

Cases are tests/data/published_memory_cases.yml (each names its source). For a case whose meter is the
allocator's peak (or unstated), the estimate compared is the allocated peak; for nvidia-smi or reserved
figures it is what nvidia-smi would show. Prints one row per case, then the spread and the ms per call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ansible_collections.mlops.vast.plugins.module_utils.estimate_cost import estimate  # noqa: E402

from tests.estimate_cases import case_job, compared_span, load_cases  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="estimate calls timed (default 2000)")
    args = parser.parse_args()
    cases = load_cases()
    print(f"{'case':44} {'meter':10} {'measured':>9} {'opt':>7} {'base':>7} {'pess':>7} {'base err':>9} inside")
    errors = []
    for case in cases:
        job = case_job(case)
        span = compared_span(estimate(job), case["meter"])
        error = span["base"] / case["measured_gib"] - 1
        errors.append(error)
        inside = span["opt"] <= case["measured_gib"] <= span["pess"]
        print(f"{case['id']:44} {case['meter']:10} {case['measured_gib']:9.2f} {span['opt']:7.2f} {span['base']:7.2f} "
              f"{span['pess']:7.2f} {error:+9.1%} {'yes' if inside else 'NO'}")
    within = sum(1 for e in errors if abs(e) <= 0.15)
    print(f"\ncases {len(errors)}; base within ±15%: {within}/{len(errors)}; "
          f"median |error| {statistics.median(abs(e) for e in errors):.1%}; worst {max(errors, key=abs):+.1%}")
    job = case_job(cases[0])
    started = time.perf_counter()
    for _ in range(args.calls):
        estimate(job)
    per_call = (time.perf_counter() - started) / args.calls
    offers = [{"id": n, "gpu_name": "RTX 4090", "gpu_ram": 24564, "cpu_ram": 64000, "disk_space": 200,
               "dph_total": 0.3 + n / 100, "num_gpus": 1} for n in range(64)]
    started = time.perf_counter()
    for _ in range(max(1, args.calls // 20)):
        estimate(job, offers)
    per_offers = (time.perf_counter() - started) / max(1, args.calls // 20)
    print(f"estimate: {per_call * 1000:.3f} ms per call; with 64 offers {per_offers * 1000:.2f} ms "
          f"({per_offers / per_call:.0f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
