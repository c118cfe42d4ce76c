"""gpu_check over real SSH on simulated instances: the rented GPU, then hosts that lie.

Each test rents from vastsim, reaches the instance over its direct SSH endpoint with
`ansible -m mlops.vast.gpu_check`, and reads the one-line result. The instance's
nvidia-smi is the simulator's fake, which prints what the real tool prints for the
GPU the machine carries (or the fault armed through /_sim/faults).
"""

from __future__ import annotations

import getpass
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import IS_ROOT, REPO, Sim, needs_root, rent, wait_status
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env
from tests.integration.test_sim_lifecycle import direct_endpoint, register_key

pytestmark = pytest.mark.slow

RTX4090 = "NVIDIA GeForce RTX 4090"
ONE_4090 = {"gpu_name": {"eq": "RTX 4090"}, "num_gpus": {"eq": 1}}


def arm(client: httpx.Client, **spec: object) -> None:
    response = client.post("/_sim/faults", json=spec)
    assert response.status_code == 200, response.text


def rent_running(sim: Sim, ssh_key: Path, **body: Any) -> dict:
    register_key(sim, ssh_key)
    with sim.client() as client:
        return wait_status(client, rent(client, query=ONE_4090, **body), "running")


def gpu_check(sim: Sim, row: dict, ssh_key: Path, tmp_path: Path, args: dict[str, Any],
              *extra: str) -> tuple[str, dict[str, Any]]:
    """Run the module on the instance over SSH; return (SUCCESS | FAILED!, result)."""
    host, port = direct_endpoint(row)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"gpu": {
        "ansible_host": host,
        "ansible_port": port,
        # Namespace mode logs in as root, like Vast; loopback mode as the user running the tests.
        "ansible_user": "root" if IS_ROOT else getpass.getuser(),
        "ansible_ssh_private_key_file": str(ssh_key),
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_python_interpreter": "/usr/bin/python3",
    }}}}))
    # No ControlPersist master may outlive the test (the next simulator reuses ports).
    env = ansible_env(sim, tmp_path, ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPath=none")
    argv = [str(ANSIBLE_BIN / "ansible"), "-i", str(inventory), "gpu", "-m", "mlops.vast.gpu_check",
            "-a", json.dumps(args), "-o", *extra]
    completed = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
                               cwd=REPO)
    for line in completed.stdout.splitlines():
        if line.startswith("gpu | "):
            status, _, payload = line[len("gpu | "):].partition(" => ")
            return status, json.loads(payload)
    raise AssertionError(f"no result from ansible (rc {completed.returncode}): {completed.stdout[-3000:]} "
                         f"{completed.stderr[-3000:]}")


def test_reports_the_rented_gpu(sim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    row = rent_running(sim, ssh_key)
    assert row["gpu_name"] == "RTX 4090" and row["num_gpus"] == 1
    requirements = {"gpu_name": ["RTX_4090"], "gpu_count": 1, "min_vram_gb": 23.5, "flash_attention": True,
                    "min_compute_capability": "8.9", "min_driver": "535.104", "min_cuda": "12.0",
                    "min_disk_gb": 1, "min_ram_gb": 0.5}
    status, result = gpu_check(sim, row, ssh_key, tmp_path, requirements)
    assert status == "SUCCESS", result
    assert result["changed"] is False and result["failures"] == []
    assert len(result["checks"]) == 9 and all(c["ok"] for c in result["checks"])
    [gpu] = result["gpus"]
    assert (gpu["index"], gpu["name"], gpu["memory_total_mb"], gpu["compute_capability"]) == (
        0, RTX4090, 24564, "8.9")
    assert gpu["memory_total_gb"] == 24.0
    # What the host says agrees with what the API advertised for the machine.
    assert result["driver_version"] == gpu["driver_version"] == row["driver_version"]
    assert result["cuda_version"] == f"{row['cuda_max_good']:.1f}"
    if IS_ROOT:
        # Namespace mode: the rented disk is mounted at /workspace, which is the default disk_path.
        assert result["disk_path"] == "/workspace"
        assert 0 < result["disk_free_gb"] <= row["disk_space"] * 1e9 / 2**30
    assert result["cpu_count"] >= 1 and result["ram_total_gb"] > 0
    assert result["hostname"] == f"C.{row['id']}" or not IS_ROOT

    # Check mode is the same read-only check.
    status, checked = gpu_check(sim, row, ssh_key, tmp_path, {"gpu_name": "RTX_4090", "min_vram_gb": 80}, "--check")
    assert status == "FAILED!", checked
    assert checked["failures"] == [{"requirement": "min_vram_gb", "wanted": 80.0, "measured": 24.0, "gpus": [0]}]
    assert "min_vram_gb wanted >= 80 GiB, measured 24 GiB on GPU 0 (NVIDIA GeForce RTX 4090)" in checked["msg"]


def test_wrong_gpu_fails_with_the_gpu_found(sim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    with sim.client() as client:
        arm(client, kind="wrong_gpu", next=True, gpu_name="NVIDIA GeForce RTX 3060")
    row = rent_running(sim, ssh_key)
    assert row["gpu_name"] == "RTX 4090"  # the API still says what was rented
    status, result = gpu_check(sim, row, ssh_key, tmp_path, {"gpu_name": ["RTX_4090"], "min_vram_gb": 20})
    assert status == "FAILED!", result
    assert result["gpus"][0]["name"] == "NVIDIA GeForce RTX 3060"
    assert result["failures"] == [{"requirement": "gpu_name", "wanted": ["RTX_4090"],
                                   "measured": "NVIDIA GeForce RTX 3060", "gpus": [0]}]
    assert "1 of 2 requirements not met" in result["msg"]
    assert "gpu_name wanted one of ['RTX_4090'], measured NVIDIA GeForce RTX 3060 on GPU 0" in result["msg"]


@needs_root
def test_small_disk_fails_with_the_free_space_measured(sim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    with sim.client() as client:
        arm(client, kind="small_disk", next=True, disk_gb=1)
    row = rent_running(sim, ssh_key, disk=40)
    assert row["disk_space"] == 40
    status, result = gpu_check(sim, row, ssh_key, tmp_path, {"min_disk_gb": 5, "gpu_name": ["RTX_4090"]})
    assert status == "FAILED!", result
    assert result["disk_path"] == "/workspace"
    free = result["disk_free_gb"]
    assert 0 < free < 1  # a 1 GB image, in GiB
    assert result["failures"] == [{"requirement": "min_disk_gb", "wanted": 5.0, "measured": free}]
    assert f"min_disk_gb wanted >= 5 GiB, measured {free:g} GiB free at /workspace" in result["msg"]


def test_driver_error_fails_naming_the_cause(sim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    with sim.client() as client:
        arm(client, kind="driver_error", next=True)
    row = rent_running(sim, ssh_key)
    status, result = gpu_check(sim, row, ssh_key, tmp_path, {"min_vram_gb": 20, "min_ram_gb": 0.5})
    assert status == "FAILED!", result
    assert result["error_cause"] == "driver_error" and result["gpus"] == []
    assert "NVIDIA driver error: nvidia-smi exited 9" in result["msg"]
    assert "couldn't communicate with the NVIDIA driver" in result["msg"]
    assert "min_vram_gb wanted >= 20 GiB, measured unknown" in result["msg"]
    assert [(f["requirement"], f["measured"] is None) for f in result["failures"]] == [
        ("nvidia_smi", False), ("min_vram_gb", True)]
    assert "Traceback" not in json.dumps(result) and "MODULE FAILURE" not in json.dumps(result)


def test_ansible_doc_renders(tmp_path: Path) -> None:
    done = subprocess.run([str(ANSIBLE_BIN / "ansible-doc"), "-t", "module", "mlops.vast.gpu_check"],
                          env=ansible_env(None, tmp_path), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr and "WARNING" not in done.stderr
    for text in ("min_vram_gb", "flash_attention", "require_torch_cuda", "EXAMPLES", "RETURN VALUES", "failures"):
        assert text in done.stdout
