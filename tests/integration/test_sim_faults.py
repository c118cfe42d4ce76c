"""Faults armed through /_sim/faults and the catalogue's bad hosts, seen from outside."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Sim, needs_root, rent, ssh_run, wait_status
from tests.integration.test_sim_lifecycle import direct_endpoint, register_key


def arm(client: httpx.Client, **spec: object) -> dict:
    response = client.post("/_sim/faults", json=spec)
    assert response.status_code == 200, response.text
    return response.json()["faults"][0]


def test_429_burst_with_retry_after_then_success(sim: Sim) -> None:
    with sim.client() as client:
        arm(client, kind="http", endpoint="PUT /api/v0/asks/*", status=429, count=2, retry_after=1)
        offer = client.post("/api/v0/bundles/", json={"limit": 1}).json()["offers"][0]
        body = {"client_id": "me", "image": "x", "disk": 10}
        answers = [client.put(f"/api/v0/asks/{offer['id']}/", json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [429, 429, 200]
        assert answers[0].headers["retry-after"] == "1"
        assert answers[0].json()["error"] == "rate_limit_exceeded"
        assert client.get("/_sim/ledger").json()["totals"]["instances"] == 1


@pytest.mark.parametrize(("style", "status", "expect"), [
    ("text", 429, "API requests too frequent"),
    ("detail", 429, '{"detail": "API requests too frequent endpoint threshold=1.0"}'),
    ("json", 503, '"error": "server_error"'),
])
def test_http_fault_body_styles(sim: Sim, style: str, status: int, expect: str) -> None:
    with sim.client() as client:
        arm(client, kind="http", endpoint="GET /api/v1/instances", status=status, body=style)
        response = client.get("/api/v1/instances/")
        assert response.status_code == status and expect in response.text
        assert "retry-after" not in response.headers
        assert client.get("/api/v1/instances/").status_code == 200


def test_bad_fault_specs_are_rejected_with_the_reason(sim: Sim) -> None:
    with sim.client() as client:
        for spec, words in [({"kind": "meteor"}, "unknown fault kind"),
                            ({"kind": "slow_link", "next": True}, "kbytes_per_s"),
                            ({"kind": "offline"}, "needs a target"),
                            ({"kind": "http", "endpoint": "GET", "status": 429}, "METHOD /path")]:
            response = client.post("/_sim/faults", json=spec)
            assert response.status_code == 400 and words in response.json()["msg"], spec


def test_stuck_loading_never_runs(sim: Sim) -> None:
    with sim.client() as client:
        arm(client, kind="stuck_loading", next=True)
        instance_id = rent(client)
        wait_status(client, instance_id, "loading")
        time.sleep(1.5)  # ~150 s of Vast time at speed 100
        row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
        assert row["actual_status"] == "loading" and row["ports"] == {}
        # The fault was for one instance only.
        wait_status(client, rent(client), "running")


def test_host_error_at_create(sim: Sim) -> None:
    with sim.client() as client:
        arm(client, kind="host_error", next=True)
        instance_id = rent(client)
        deadline = time.monotonic() + 10
        row: dict = {}
        while time.monotonic() < deadline:
            row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
            if row["cur_state"] == "stopped":
                break
            time.sleep(0.05)
        assert row["cur_state"] == "stopped" and row["intended_status"] == "running"
        assert row["status_msg"].startswith("Error: ")


def test_offline_host_is_unreachable_until_it_returns(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        instance_id = rent(client)
        host, port = direct_endpoint(wait_status(client, instance_id, "running"))
        fault = arm(client, kind="offline", instance_id=instance_id)
        wait_status(client, instance_id, "offline")
        time.sleep(0.3)
        assert ssh_run(host, port, ssh_key, "true", timeout=20).returncode != 0
        client.delete(f"/_sim/faults/{fault['id']}")
        wait_status(client, instance_id, "running")
        deadline = time.monotonic() + 10
        while ssh_run(host, port, ssh_key, "true").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ssh_run(host, port, ssh_key, "true").returncode == 0


def test_wrong_gpu_shows_in_nvidia_smi_but_not_in_the_api(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        arm(client, kind="wrong_gpu", next=True, gpu_name="NVIDIA GeForce RTX 3060")
        row = wait_status(client, rent(client, query={"gpu_name": {"eq": "RTX 4090"}}), "running")
        assert row["gpu_name"] == "RTX 4090"
        result = ssh_run(*direct_endpoint(row), ssh_key, "nvidia-smi --query-gpu=name --format=csv,noheader")
        assert result.stdout.strip() == "NVIDIA GeForce RTX 3060"


def test_rented_gpu_shows_in_nvidia_smi(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        row = wait_status(client, rent(client, query={"gpu_name": {"eq": "RTX 4090"}}), "running")
        result = ssh_run(*direct_endpoint(row), ssh_key,
                         "nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits")
        assert result.stdout.strip() == "NVIDIA GeForce RTX 4090, 24564, 8.9"


def test_catalogue_bad_hosts_look_fine_until_rented(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        machines = client.get("/_sim/machines").json()["machines"]
        driver_bad = next(m for m in machines if m["defects"].get("driver_error"))
        offers = client.post("/api/v0/bundles/", json={"machine_id": {"eq": driver_bad["machine_id"]}}).json()
        offer = offers["offers"][0]
        assert offer["reliability"] > 0.95 and offer["verification"] == "verified"
        created = client.put(f"/api/v0/asks/{offer['id']}/", json={"client_id": "me", "image": "x", "disk": 10,
                                                                   "runtype": "ssh_direc ssh_proxy"}).json()
        row = wait_status(client, created["new_contract"], "running")
        result = ssh_run(*direct_endpoint(row), ssh_key, "nvidia-smi")
        assert result.returncode == 9
        assert "couldn't communicate with the NVIDIA driver" in result.stdout + result.stderr


def test_offline_armed_before_running_takes_effect_and_gpu_faults_on_unbooted_instances_are_accepted(
        sim: Sim) -> None:
    with sim.client() as client:
        arm(client, kind="offline", next=True)
        instance_id = rent(client)
        assert client.post("/_sim/faults", json={"kind": "wrong_gpu", "instance_id": instance_id}).status_code == 200
        wait_status(client, instance_id, "offline")


@needs_root
def test_slow_link_is_measurably_slow_over_ssh(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    payload = 600_000
    command = f"head -c {payload} /dev/zero"
    with sim.client() as client:
        fast = wait_status(client, rent(client), "running")
        arm(client, kind="slow_link", next=True, kbytes_per_s=170)
        slow = wait_status(client, rent(client), "running")
        timings = {}
        for name, row in (("fast", fast), ("slow", slow)):
            started = time.monotonic()
            result = ssh_run(*direct_endpoint(row), ssh_key, command)
            timings[name] = time.monotonic() - started
            assert result.returncode == 0 and len(result.stdout) == payload
        # 600 kB at 170 kB/s is ~3.5 s; the unshaped link moves it in well under a second plus the
        # SSH handshake, which a loaded machine can stretch, hence the margins.
        assert timings["slow"] > 0.8 * payload / 170_000, timings
        assert timings["slow"] > 2 * timings["fast"], timings


@needs_root
def test_small_disk_shows_only_from_inside(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        arm(client, kind="small_disk", next=True, disk_gb=1)
        row = wait_status(client, rent(client, disk=40), "running")
        assert row["disk_space"] == 40
        result = ssh_run(*direct_endpoint(row), ssh_key, "df -B1 --output=size /workspace | tail -1")
        assert int(result.stdout.strip()) < 1.1e9


@needs_root
def test_simulated_internet_answers_well_known_sources_through_the_link(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    fetch = ("python3 -c \"import time, urllib.request as u; t = time.time(); "
             "url = 'http://huggingface.co/org/model/resolve/main/x.bin?bytes=400000'; "
             "n = len(u.urlopen(url, timeout=30).read()); "
             "print(n, round(time.time() - t, 2))\"")
    with sim.client() as client:
        fast = wait_status(client, rent(client), "running")
        arm(client, kind="slow_link", next=True, kbytes_per_s=170)
        slow = wait_status(client, rent(client), "running")
        size_fast, seconds_fast = ssh_run(*direct_endpoint(fast), ssh_key, fetch).stdout.split()
        size_slow, seconds_slow = ssh_run(*direct_endpoint(slow), ssh_key, fetch).stdout.split()
    assert size_fast == size_slow == "400000"
    assert float(seconds_slow) > 0.8 * 400_000 / 170_000 > 4 * float(seconds_fast)
