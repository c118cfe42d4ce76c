"""The smoke test's measurements against the estimate: step time from line arrival times, the job's own
allocated peak, nvidia-smi's peak, and the verdicts (docs/estimator.md §3.2); the host-side probe for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.mlops.vast.plugins.filter.smoke_verdict import smoke_verdict
from ansible_collections.mlops.vast.plugins.plugin_utils.smoke_verdict import (
    allocated_peak_gib,
    judge,
    step_seconds,
    timed_steps,
)

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "roles" / "smoke_test" / "files" / "smoke_probe.py"
FAKE_SMI = REPO / "src" / "mlops_vast" / "sim" / "nvidia_smi.py"
ESTIMATE = {"gpu_mem_gib": {"opt": 10.0, "base": 12.0, "pess": 15.0}, "tokens_per_step": 4096, "steps": 1000,
            "breakdown": {"disk_gb": {"weights": {"base": 2.0}, "checkpoints": {"base": 1.0}}},
            "job": {"checkpoints_kept": 2}}


def hf_log(steps: list[int], peak_bytes: int | None = None) -> str:
    lines = ["loading weights"]
    for step in steps:
        record = {"loss": round(2.0 / step, 4), "step": step}
        if peak_bytes:
            record["max_memory_allocated"] = peak_bytes
        lines.append(repr(record))
    return "\n".join(lines) + "\n"


def test_step_time_is_the_median_after_warm_up() -> None:
    steps = list(range(10, 210, 10))
    # Warm-up steps are slow; afterwards 0.5 s a step, one outlier.
    times = [3.0 + 0.5 * step for step in steps]
    times[12] += 4.0
    log = hf_log(steps)
    stamps = "\n".join(["0.1"] + [f"{t:.3f}" for t in times])
    timed = timed_steps(log, stamps)
    assert [step for _, step in timed] == steps
    assert step_seconds(timed) == pytest.approx(0.5)
    assert step_seconds(timed[:1]) is None


def test_allocated_peak_from_the_jobs_own_log() -> None:
    assert allocated_peak_gib(hf_log([10, 20], peak_bytes=3 * 2**30)) == pytest.approx(3.0)
    hf_memory = repr({"train_runtime": 10.0, "before_init_mem_gpu": 2**30, "train_mem_gpu_peaked_delta": 2 * 2**30,
                      "train_mem_gpu_alloc_delta": 2**29})
    assert allocated_peak_gib(hf_memory) == pytest.approx(3.5)
    assert allocated_peak_gib(hf_log([10, 20])) is None


@pytest.mark.parametrize(("measured_gib", "verdict"), [(12.0 * 1.5, "abort"), (12.0 * 1.1, "pass"),
                                                       (12.0 * 0.9, "pass"), (12.0 * 1.2, "warn"),
                                                       (12.0 * 0.5, "abort")])
def test_allocated_peak_against_the_estimate(measured_gib: float, verdict: str) -> None:
    result = judge({"allocated_gib": measured_gib}, ESTIMATE, vram_gib=80, rented_disk_gb=None, total_steps=None,
                   elapsed_s=0, tail_s=0, dph_total=None, max_total_usd=None)
    memory = next(check for check in result["checks"] if check["name"] == "gpu_memory_allocated")
    assert memory["verdict"] == verdict and result["verdict"] == verdict
    assert (result["aborts"] != []) == (verdict == "abort")


def test_nvidia_smi_only_mode_and_the_cards_share() -> None:
    inside = judge({"nvidia_smi_gib": 14.0}, ESTIMATE, vram_gib=80, rented_disk_gb=None, total_steps=None,
                   elapsed_s=0, tail_s=0, dph_total=None, max_total_usd=None)
    assert inside["verdict"] == "pass"
    above = judge({"nvidia_smi_gib": 23.0}, ESTIMATE, vram_gib=24, rented_disk_gb=None, total_steps=None,
                  elapsed_s=0, tail_s=0, dph_total=None, max_total_usd=None)
    assert above["verdict"] == "abort"
    assert {check["name"] for check in above["checks"]} == {"gpu_memory_nvidia_smi", "gpu_memory_of_card"}


def test_reestimate_and_the_budget() -> None:
    measured = {"allocated_gib": 12.0, "step_seconds": 2.0}
    within = judge(measured, ESTIMATE, vram_gib=80, rented_disk_gb=None, total_steps=1000, elapsed_s=600,
                   tail_s=120, dph_total=1.8, max_total_usd=5.0, spent_usd=0.25, transfer_usd=0.1)
    re = within["reestimate"]
    assert re["compute_usd"] == pytest.approx(0.25 + (2000 + 120) / 3600 * 1.8)
    assert re["cost_usd"] == pytest.approx(re["compute_usd"] + 0.1)
    assert within["verdict"] == "pass"
    over = judge(measured, ESTIMATE, vram_gib=80, rented_disk_gb=None, total_steps=1000, elapsed_s=600,
                 tail_s=120, dph_total=1.8, max_total_usd=1.0)
    assert over["verdict"] == "abort" and over["aborts"][0].startswith("cost:")


def test_disk_projection_from_the_measured_checkpoint() -> None:
    result = judge({"checkpoint_gb": 5.0}, ESTIMATE, vram_gib=None, rented_disk_gb=18, total_steps=None,
                   elapsed_s=0, tail_s=0, dph_total=None, max_total_usd=None)
    disk = next(check for check in result["checks"] if check["name"] == "disk")
    assert disk["measured"] == pytest.approx(2.0 + 3 * 5.0) and disk["verdict"] == "abort"


def fake_gpu_host(tmp_path: Path) -> dict[str, str]:
    """vastsim's nvidia-smi on PATH, for a 24 GiB card, with its gpu-processes directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!{sys.executable}\n" + FAKE_SMI.read_text())
    smi.chmod(0o755)
    (bin_dir / "nvidia-smi.json").write_text(json.dumps({"gpus": [{"name": "NVIDIA GeForce RTX 4090",
                                                                   "memory_total_mib": 24564}]}))
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


JOB = """
import json, os, sys, time
os.makedirs(os.path.join(sys.argv[1], "gpu-processes"), exist_ok=True)
with open(os.path.join(sys.argv[1], "gpu-processes", str(os.getpid())), "w") as f:
    json.dump({"used_mib": 10240}, f)
for step in range(1, 13):
    time.sleep(0.1)
    print(repr({"loss": 1.0 / step, "step": step}))
os.makedirs(os.path.join(sys.argv[2], "checkpoint-10"))
with open(os.path.join(sys.argv[2], "checkpoint-10", "model.bin"), "wb") as f:
    f.write(b"x" * 100000)
"""


def test_the_probe_stamps_lines_and_samples_the_gpu(tmp_path: Path) -> None:
    env = fake_gpu_host(tmp_path)
    smoke, output = tmp_path / "smoke", tmp_path / "smoke" / "output"
    done = subprocess.run([sys.executable, str(PROBE), "--dir", str(smoke), "--timeout", "60", "--interval", "0.1",
                           "--du", str(output), "--", sys.executable, "-c", JOB, str(tmp_path / "bin"), str(output)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = (smoke / "smoke.log").read_text()
    stamps = (smoke / "smoke.stamps").read_text().split()
    assert len(stamps) == len(log.splitlines()) == 12
    report = json.loads((smoke / "smoke.probe.json").read_text())
    assert report["exit_code"] == 0 and report["samples"] >= 3
    assert report["gpu_mem_used_mib_peak"] == [10241] and report["gpu_mem_total_mib"] == [24564]
    assert report["disk_used_gb"][str(output)] == pytest.approx(1e-4)
    verdict = smoke_verdict(log, "\n".join(stamps), report, {"checkpoints": 1})
    assert verdict["measured"]["nvidia_smi_gib"] == pytest.approx(10.001, abs=0.01)
    assert verdict["measured"]["step_seconds"] == pytest.approx(0.1, rel=0.5)
    assert verdict["measured"]["checkpoint_gb"] == pytest.approx(1e-4)


def test_the_probe_stops_a_job_at_its_time_limit(tmp_path: Path) -> None:
    smoke = tmp_path / "smoke"
    done = subprocess.run([sys.executable, str(PROBE), "--dir", str(smoke), "--timeout", "1", "--",
                           "bash", "-c", "echo started; sleep 60"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 124
    assert json.loads((smoke / "smoke.probe.json").read_text())["exit_code"] == 124
    assert (smoke / "smoke.log").read_text() == "started\n"


def test_progress_bar_carriage_returns_keep_lines_and_stamps_aligned() -> None:
    log = "loading\n 10%|#  | 1/10\r 50%|#####  | 5/10\r" + repr({"loss": 1.0, "step": 10}) + "\n" + \
        repr({"loss": 0.5, "step": 20}) + "\n"
    assert timed_steps(log, "0.5 2.0 4.0") == [(2.0, 10), (4.0, 20)]


def test_the_probe_reports_a_killed_job_as_a_shell_does(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(PROBE), "--dir", str(tmp_path), "--timeout", "30", "--",
                           "bash", "-c", "kill -9 $$"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 137
    assert json.loads((tmp_path / "smoke.probe.json").read_text())["exit_code"] == 137
