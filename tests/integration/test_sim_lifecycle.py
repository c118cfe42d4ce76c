"""The simulator's lifecycle, billing, listing and persistence, over real HTTP and real SSH."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    API_KEY,
    IS_ROOT,
    Sim,
    cheapest_good_offer,
    leftovers,
    rent,
    running_sim,
    ssh_run,
    start_sim,
    stop_sim,
    wait_status,
)


def register_key(sim: Sim, key: Path) -> None:
    with sim.client() as client:
        response = client.post("/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text()})
        assert response.status_code == 200, response.text


def direct_endpoint(row: dict) -> tuple[str, int]:
    return row["public_ipaddr"].strip(), int(row["ports"]["22/tcp"][0]["HostPort"])


def test_rent_runs_through_vast_statuses_and_answers_ssh(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        instance_id = rent(client, label="life")
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
            if not seen or seen[-1] != row["actual_status"]:
                seen.append(row["actual_status"])
            if row["actual_status"] == "running":
                break
            time.sleep(0.005)
        order = [None, "created", "loading", "running"]
        assert seen[-1] == "running"
        assert set(seen) <= set(order)
        assert [order.index(status) for status in seen] == sorted(order.index(status) for status in seen)
        assert row["intended_status"] == row["cur_state"] == "running"
        assert row["status_msg"].startswith("success, running")
        assert isinstance(row["start_date"], float)
        host, port = direct_endpoint(row)
        result = ssh_run(host, port, ssh_key, "echo $VAST_CONTAINERLABEL; cat /proc/sys/kernel/hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [f"C.{instance_id}", f"C.{instance_id}"]
        proxy = ssh_run(row["ssh_host"], row["ssh_port"], ssh_key, "echo proxied")
        assert proxy.stdout.strip() == "proxied", proxy.stderr


def test_key_added_after_creation_reaches_running_instance(sim: Sim, tmp_path: Path, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    late_key = tmp_path / "late"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(late_key)], check=True)
    with sim.client() as client:
        instance_id = rent(client)
        row = wait_status(client, instance_id, "running")
        host, port = direct_endpoint(row)
        assert ssh_run(host, port, late_key, "true").returncode != 0
        response = client.post("/api/v0/ssh/", json={"ssh_key": late_key.with_suffix(".pub").read_text()})
        assert response.json()["success"] is True
        assert ssh_run(host, port, late_key, "echo late").stdout.strip() == "late"
        # Deleting the account key takes it away again.
        client.request("DELETE", f"/api/v0/ssh/{response.json()['id']}/", json={})
        assert ssh_run(host, port, late_key, "true").returncode != 0


def test_stop_keeps_workspace_and_start_brings_it_back(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        instance_id = rent(client)
        row = wait_status(client, instance_id, "running")
        host, port = direct_endpoint(row)
        detach = "echo kept > /workspace/marker; nohup sleep 300 >/dev/null 2>&1 &"
        assert ssh_run(host, port, ssh_key, detach).returncode == 0
        assert client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"}).json()["success"]
        stopped = wait_status(client, instance_id, "exited")
        assert stopped["cur_state"] == "stopped" and stopped["intended_status"] == "stopped"
        assert stopped["ports"] == {}
        assert ssh_run(host, port, ssh_key, "true", timeout=20).returncode != 0
        assert client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"}).json()["success"]
        row = wait_status(client, instance_id, "running")
        result = ssh_run(host, port, ssh_key, "cat /workspace/marker; pgrep -c sleep || true")
        assert result.stdout.split() == ["kept", "0"], "data survives a stop, processes do not"


def test_start_when_gpus_were_taken_is_queued(sim: Sim) -> None:
    with sim.client() as client:
        # A one-GPU machine, so another tenant taking its offer leaves nothing for us.
        instance_id = rent(client, query={"gpu_frac": {"eq": 1}, "num_gpus": {"eq": "1"}})
        wait_status(client, instance_id, "running")
        offer_id = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]["bundle_id"]
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
        wait_status(client, instance_id, "exited")
        fault = client.post("/_sim/faults", json={"kind": "take_offer", "offer_id": offer_id}).json()
        answer = client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"}).json()
        assert answer == {"success": False, "error": "resources_unavailable",
                          "msg": "Required resources are currently unavailable, state change queued."}
        row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
        assert (row["intended_status"], row["cur_state"]) == ("running", "stopped")
        # Queued, not started: the container stays exited while it waits (§4.2, §8), ticks later too.
        time.sleep(0.3)
        row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
        assert (row["actual_status"], row["cur_state"], row["intended_status"]) == ("exited", "stopped", "running")
        # Renting the same offer now fails with 410 under cancel_unavail.
        taken = client.put(f"/api/v0/asks/{offer_id}/", json={"client_id": "me", "image": "x", "disk": 10,
                                                              "cancel_unavail": True})
        assert taken.status_code == 410 and taken.json()["error"] == "no_such_ask"
        client.delete(f"/_sim/faults/{fault['faults'][0]['id']}")
        seen = statuses_until(client, instance_id, "running")
        # A restart, not a new container: exited -> loading -> running, never back to null/created.
        assert seen[-2:] == ["loading", "running"] and set(seen) <= {"exited", "loading", "running"}, seen


def statuses_until(client: httpx.Client, instance_id: int, final: str, timeout: float = 30.0) -> list:
    """The distinct actual_status values seen, in order, polling fast until `final`."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]["actual_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == final:
            return seen
        time.sleep(0.005)
    raise AssertionError(f"instance {instance_id} not {final} after {timeout}s: {seen}")


def test_destroy_removes_row_and_stops_billing(sim: Sim) -> None:
    with sim.client() as client:
        instance_id = rent(client, label="gone")
        wait_status(client, instance_id, "running")
        time.sleep(1.0)
        assert client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={}).json()["success"] is True
        assert client.get(f"/api/v0/instances/{instance_id}/").json() == {"instances": None}
        again = client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})
        assert again.status_code == 404 and again.json()["error"] == "no_such_instance"
        ledger = client.get("/_sim/ledger").json()
        row = next(r for r in ledger["rows"] if r["id"] == instance_id)
        assert row["destroyed_at"] is not None and row["label"] == "gone"
        assert row["running_seconds"] >= 0.9
        assert row["cost"] > 0
        assert ledger["totals"]["open_instances"] == 0
        time.sleep(0.5)
        later = client.get("/_sim/ledger").json()
        assert next(r for r in later["rows"] if r["id"] == instance_id)["cost"] == row["cost"]


def test_billing_matches_prices_and_credit_goes_down(sim: Sim) -> None:
    with sim.client() as client:
        credit_before = client.get("/api/v0/users/current").json()["credit"]
        instance_id = rent(client)
        running = wait_status(client, instance_id, "running")
        time.sleep(2.0)
        asked = time.time()  # before the ledger is read: a stall after it must not count as billed time
        ledger = client.get("/_sim/ledger").json()
        row = next(r for r in ledger["rows"] if r["id"] == instance_id)
        gpu_rate = running["dph_base"] / 3600
        storage_rate = running["storage_total_cost"] / 3600
        assert row["gpu_cost"] == pytest.approx(gpu_rate * row["running_seconds"], rel=0.05)
        assert row["storage_cost"] == pytest.approx(storage_rate * (asked - running["start_date"]), rel=0.1)
        # Destroyed, its cost stops growing: what the account was charged is then exactly what the ledger says.
        assert client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={}).json()["success"]
        final = next(r for r in client.get("/_sim/ledger").json()["rows"] if r["id"] == instance_id)
        assert final["cost"] >= row["cost"]
        credit_after = client.get("/api/v0/users/current").json()["credit"]
        assert credit_before - credit_after == pytest.approx(final["cost"], rel=0.01)


def test_out_of_credit_stops_instances_but_storage_still_bills(sim: Sim) -> None:
    with sim.client() as client:
        instance_id = rent(client)
        wait_status(client, instance_id, "running")
        client.put("/_sim/account", json={"credit": 0.0000001})
        row = wait_status(client, instance_id, "exited", timeout=10)
        assert row["intended_status"] == "stopped"
        assert "credit" in row["status_msg"]
        first = client.get("/_sim/ledger").json()["totals"]["storage_cost"]
        time.sleep(0.5)
        assert client.get("/_sim/ledger").json()["totals"]["storage_cost"] > first
        refused = client.put(f"/api/v0/asks/{row['bundle_id']}/", json={"client_id": "me", "image": "x"})
        assert refused.status_code == 400 and refused.json()["error"] == "insufficient_credit"


def test_bid_instance_outbid_and_resumed_by_raising_the_bid(sim: Sim) -> None:
    with sim.client() as client:
        offer = cheapest_good_offer(client, {"type": "bid"})
        bid = round(offer["min_bid"] * 1.5, 4)
        created = client.put(f"/api/v0/asks/{offer['id']}/", json={"client_id": "me", "image": "x", "disk": 10,
                                                                   "price": bid}).json()
        instance_id = created["new_contract"]
        row = wait_status(client, instance_id, "running")
        assert row["is_bid"] is True and row["dph_base"] == pytest.approx(bid)
        client.post("/_sim/faults", json={"kind": "outbid", "machine_id": offer["machine_id"],
                                          "price": bid * 2})
        row = wait_status(client, instance_id, "exited")
        assert (row["intended_status"], row["cur_state"]) == ("running", "stopped")
        assert "outbid" in row["status_msg"].lower()
        on_demand = client.put(f"/api/v0/instances/bid_price/{instance_id}/", json={"client_id": "me",
                                                                                    "price": bid * 3})
        assert on_demand.status_code == 200
        wait_status(client, instance_id, "running")


def test_price_bounds_and_bad_create_bodies_are_400(sim: Sim) -> None:
    with sim.client() as client:
        offer = client.post("/api/v0/bundles/", json={"limit": 1}).json()["offers"][0]
        cases = [
            ({"image": "x", "price": 0.0001}, "invalid_price"),
            ({"image": "x", "price": 500}, "invalid_price"),
            ({"image": "x", "disk": -5}, "invalid_args"),
            ({"image": "x", "disk": 1}, "invalid_args"),  # the server's minimum is 8 GB (§5)
            ({"image": "x", "disk": 7.9}, "invalid_args"),
            ({"disk": 10}, "invalid_args"),
            ({"image": "x", "runtype": "telnet"}, "invalid_args"),
            ({"image": "x", "label": "x" * 300}, "label_too_long"),
        ]
        for body, code in cases:
            response = client.put(f"/api/v0/asks/{offer['id']}/", json={"client_id": "me", **body})
            assert response.status_code == 400, body
            assert response.json()["error"] == code, body
        missing = client.put("/api/v0/asks/1/", json={"client_id": "me", "image": "x"})
        assert missing.status_code == 404 and missing.json()["error"] == "no_such_ask"
        assert client.get("/_sim/ledger").json()["totals"]["instances"] == 0


def test_auth_is_bearer_or_query_and_bad_keys_get_401(sim: Sim) -> None:
    with sim.client(api_key="") as anonymous:
        assert anonymous.get("/api/v0/users/current").status_code == 401
        assert anonymous.get(f"/api/v0/users/current?api_key={API_KEY}").status_code == 200
        # Offer search works without a key, as on Vast.
        assert anonymous.post("/api/v0/bundles/", json={"limit": 1}).status_code == 200
    with sim.client(api_key="wrong") as wrong:
        response = wrong.get("/api/v1/instances/")
        assert response.status_code == 401
        assert response.json() == {"success": False, "error": "auth_error", "msg": "Invalid user key"}
        assert response.headers["content-type"] == "application/json"


def test_v1_list_pages_filters_orders_and_counts_labels(sim: Sim) -> None:
    with sim.client() as client:
        offers = client.post("/api/v0/bundles/", json={"order": [["dph_total", "asc"]], "limit": 100}).json()
        ids = []
        for index, offer in enumerate(offers["offers"][:7]):
            created = client.put(f"/api/v0/asks/{offer['id']}/", json={
                "client_id": "me", "image": "x", "disk": 10, "label": "even" if index % 2 == 0 else "odd"})
            ids.append(created.json()["new_contract"])
        seen, token, pages = [], None, 0
        while True:
            params = {"limit": 3, "order_by": '[{"col":"id","dir":"desc"}]'}
            if token:
                params["after_token"] = token
            page = client.get("/api/v1/instances/", params=params).json()
            pages += 1
            seen += [row["id"] for row in page["instances"]]
            assert page["total_instances"] == 7
            assert page["label_counts"] == {"even": 4, "odd": 3}
            token = page["next_token"]
            if not token:
                break
        assert pages == 3 and seen == sorted(ids, reverse=True)
        odd = client.get("/api/v1/instances/", params={"select_filters": '{"label":{"in":["odd"]}}'}).json()
        assert sorted(row["id"] for row in odd["instances"]) == ids[1::2]
        computed = client.get("/api/v1/instances/", params={"select_filters": '{"dph_total":{"lt":1}}'})
        assert computed.status_code == 400
        assert computed.json()["msg"] == "Error in query parameters: dph_total is not a valid search key"
        # Destroying a row already seen must not push an unseen one past the next page.
        first = client.get("/api/v1/instances/", params={"limit": 3}).json()
        client.request("DELETE", f"/api/v0/instances/{first['instances'][0]['id']}/", json={})
        second = client.get("/api/v1/instances/", params={"limit": 3, "after_token": first["next_token"]}).json()
        assert [row["id"] for row in second["instances"]] == sorted(ids)[3:6]
        ids.remove(first["instances"][0]["id"])
        bad_token = client.get("/api/v1/instances/", params={"after_token": "!!"})
        assert bad_token.status_code == 400 and bad_token.json()["error"] == "invalid_token"
        bulk = client.request("DELETE", "/api/v0/instances/", json={"instance_ids": ids})
        assert bulk.json()["success"] is True
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0


def test_search_hides_rented_gpus_and_prices_storage(sim: Sim) -> None:
    with sim.client() as client:
        body = {"num_gpus": {"eq": "1"}, "order": [["dph_total", "asc"]], "allocated_storage": 100.0,
                "limit": 200}
        offers = client.post("/api/v0/bundles/", json=body).json()["offers"]
        target = offers[0]
        assert target["dph_total"] == pytest.approx(
            target["dph_base"] + 100.0 * target["storage_cost"] / 720, rel=1e-6)
        client.put(f"/api/v0/asks/{target['id']}/", json={"client_id": "me", "image": "x", "disk": 10})
        after = client.post("/api/v0/bundles/", json=body).json()["offers"]
        assert target["id"] not in {o["id"] for o in after}


def test_restarted_simulator_still_knows_and_serves_its_instances(tmp_path: Path, ssh_key: Path) -> None:
    state = tmp_path / "state"
    first = start_sim(state)
    try:
        register_key(first, ssh_key)
        with first.client() as client:
            instance_id = rent(client, label="survivor")
            row = wait_status(client, instance_id, "running")
            host, port = direct_endpoint(row)
            assert ssh_run(host, port, ssh_key, "echo 1 > /workspace/f").returncode == 0
    finally:
        assert stop_sim(first) == 0
    assert not leftovers(state)
    second = start_sim(state)
    try:
        with second.client() as client:
            row = wait_status(client, instance_id, "running")
            assert row["label"] == "survivor"
            host, port = direct_endpoint(row)
            result = ssh_run(host, port, ssh_key, "cat /workspace/f")
            assert result.stdout.strip() == "1", result.stderr
            client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})
    finally:
        assert stop_sim(second) == 0
    assert not leftovers(state)


@pytest.mark.skipif(not IS_ROOT, reason="instances in network namespaces need root")
def test_vastsim_stop_removes_what_a_simulator_killed_outright_left(tmp_path: Path, ssh_key: Path) -> None:
    state = tmp_path / "state"
    vastsim = [str(Path(sys.executable).parent / "vastsim")]
    first = start_sim(state)
    stray: subprocess.Popen[bytes] | None = None
    try:
        register_key(first, ssh_key)
        with first.client() as client:
            instance_id = rent(client, label="orphan")
            wait_status(client, instance_id, "running")
        netns = f"vastsim-{first.tag}-{instance_id}"
        # What a crash can leave running in an instance's namespace (its init normally takes the rest along).
        stray = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "300"], start_new_session=True)
        os.kill(first.pid, signal.SIGKILL)
        assert first.process is not None
        first.process.wait(timeout=30)
        assert any(netns in item for item in leftovers(state))
        assert subprocess.run([*vastsim, "check-clean", "--state-dir", str(state)], capture_output=True).returncode == 1

        done = subprocess.run([*vastsim, "stop", "--state-dir", str(state)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert "killed outright" in done.stderr
        assert not leftovers(state)
        assert stray.wait(timeout=30) == -signal.SIGKILL
        # Nothing stale left, nothing to say: a second stop is quiet.
        again = subprocess.run([*vastsim, "stop", "--state-dir", str(state)], capture_output=True, text=True,
                               timeout=120)
        assert (again.returncode, again.stderr) == (0, "")
    finally:
        if stray is not None and stray.poll() is None:
            stray.kill()
            stray.wait(timeout=10)
        if first.process is not None and first.process.poll() is None:
            stop_sim(first)
        if leftovers(state):  # the test failed before the reclaim: it must not leave the namespace to the suite
            subprocess.run([*vastsim, "stop", "--state-dir", str(state)], capture_output=True, timeout=120)
    assert not leftovers(state)


def test_second_simulator_on_same_state_dir_is_refused(sim: Sim) -> None:
    with pytest.raises(RuntimeError, match="in use"):
        start_sim(sim.state_dir, timeout=15)


@pytest.mark.skipif(not IS_ROOT, reason="workspace size limits need root (loop-mounted ext4)")
def test_workspace_is_private_and_limited_to_the_rented_disk(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        first = wait_status(client, rent(client, disk=12), "running")
        second = wait_status(client, rent(client, disk=20), "running")
        one, two = direct_endpoint(first), direct_endpoint(second)
        ssh_run(*one, ssh_key, "echo a > /workspace/only-here; echo t > /tmp/t")
        listing = ssh_run(*two, ssh_key, "ls /workspace /tmp; df -B1 --output=size /workspace | tail -1")
        assert "only-here" not in listing.stdout and "\nt\n" not in listing.stdout
        size = int(listing.stdout.split()[-1])
        assert 17e9 < size <= 20e9


def test_loopback_host_mode_serves_ssh_without_namespaces(tmp_path: Path, ssh_key: Path) -> None:
    simulator = start_sim(tmp_path / "state", "--host-mode", "loopback")
    try:
        register_key(simulator, ssh_key)
        with simulator.client() as client:
            assert client.get("/_sim/info").json()["host_mode"] == "loopback"
            row = wait_status(client, rent(client, query={"gpu_name": {"eq": "RTX 4090"}}), "running")
            host, port = direct_endpoint(row)
            assert host == "127.0.0.1"
            user = client.get("/_sim/info").json()["ssh_user"]
            result = ssh_run(host, port, ssh_key, "nvidia-smi -L; echo $VASTSIM_WORKSPACE", user=user)
            lines = result.stdout.splitlines()
            assert lines[0].startswith("GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-"), result.stderr
            assert lines[1].endswith(f"instances/{row['id']}/workspace")
            proxy = ssh_run(row["ssh_host"], row["ssh_port"], ssh_key, "echo via-proxy", user=user)
            assert proxy.stdout.strip() == "via-proxy"
            ssh_run(host, port, ssh_key, "nohup sleep 321 >/dev/null 2>&1 &", user=user)
            client.put(f"/api/v0/instances/{row['id']}/", json={"state": "stopped"})
            wait_status(client, row["id"], "exited")
            deadline = time.monotonic() + 10
            import subprocess

            while time.monotonic() < deadline and "sleep 321" in subprocess.run(
                    ["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout:
                time.sleep(0.1)
            listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
            assert "sleep 321" not in listing
    finally:
        assert stop_sim(simulator) == 0
    assert not leftovers(tmp_path / "state")


def test_jupyter_runtype_serves_proxy_ssh_one_port_up(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        row = wait_status(client, rent(client, runtype="jupyter_proxy ssh_proxy"), "running")
        assert row["ports"] == {}
        result = ssh_run(row["ssh_host"], row["ssh_port"] + 1, ssh_key, "echo jupyter-proxy")
        assert result.stdout.strip() == "jupyter-proxy", result.stderr


def test_recycle_needs_a_started_instance(sim: Sim) -> None:
    with sim.client() as client:
        instance_id = rent(client)
        wait_status(client, instance_id, "running")
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
        wait_status(client, instance_id, "exited")
        answer = client.put(f"/api/v0/instances/recycle/{instance_id}/", json={}).json()
        assert answer["success"] is False and answer["error"] == "invalid_id"
        assert client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]["actual_status"] == "exited"


def test_recycle_goes_through_loading(sim: Sim) -> None:
    with sim.client() as client:
        instance_id = rent(client)
        wait_status(client, instance_id, "running")
        assert client.put(f"/api/v0/instances/recycle/{instance_id}/", json={}).json() == {"success": True}
        seen = statuses_until(client, instance_id, "running")
        # recycling -> loading (the image is pulled again) -> running (§8); the first may pass unseen.
        order = ["recycling", "loading", "running"]
        assert "loading" in seen and set(seen) <= set(order), seen
        assert [order.index(status) for status in seen] == sorted(order.index(status) for status in seen), seen
        row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
        assert (row["cur_state"], row["intended_status"]) == ("running", "running")
        assert row["status_msg"].startswith("success, running")


@pytest.mark.skipif(not IS_ROOT, reason="private mounts need root")
def test_instances_cannot_read_the_simulators_state(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        row = wait_status(client, rent(client), "running")
        result = ssh_run(*direct_endpoint(row), ssh_key, f"ls -A {sim.state_dir} | wc -l; cat /root/.config/x 2>&1")
        assert result.stdout.splitlines()[0] == "0", result.stdout
        assert (sim.state_dir / "state.json").stat().st_mode & 0o077 == 0
        assert (sim.state_dir / "api_key").stat().st_mode & 0o077 == 0


def execute(client: httpx.Client, instance_id: int, command: str) -> str:
    """PUT instances/command, then poll the unauthenticated result URL like the CLI (§7, §9.13)."""
    answer = client.put(f"/api/v0/instances/command/{instance_id}/", json={"command": command})
    assert answer.status_code == 200 and answer.json()["success"] is True, answer.text
    body = answer.json()
    deadline = time.monotonic() + 9
    while time.monotonic() < deadline:
        result = httpx.get(body["result_url"], timeout=10)
        if result.status_code == 200:
            return result.text.replace(body["writeable_path"], "") if body["writeable_path"] else result.text
        time.sleep(0.1)
    raise AssertionError(f"no result for {command!r} at {body['result_url']}")


def names(listing: str) -> list[str]:
    return [name for name in listing.split() if name != "lost+found"]  # ext4's, in namespace mode


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory of this test's, none of an instance's own: not under /tmp, which namespace-mode
    instances have their own of, nor /root or the simulator's state. It holds a file that must survive."""
    path = Path(tempfile.mkdtemp(prefix="vastsim-execute-test-", dir="/var/tmp"))
    try:
        (path / "victim").write_text("must survive\n")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_execute_runs_ls_du_rm_on_the_stopped_instances_files(sim: Sim, ssh_key: Path, outside: Path) -> None:
    check_execute(sim, ssh_key, outside)


def test_execute_in_loopback_host_mode(tmp_path: Path, ssh_key: Path, outside: Path) -> None:
    with running_sim(tmp_path / "state", "--host-mode", "loopback") as simulator:
        check_execute(simulator, ssh_key, outside)


def check_execute(sim: Sim, ssh_key: Path, outside: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        instance_id = rent(client)
        row = wait_status(client, instance_id, "running")
        user = client.get("/_sim/info").json()["ssh_user"]
        # esc: a symlink out of the instance's own files, to a directory of the machine's.
        setup = ('cd "${VASTSIM_WORKSPACE:-/workspace}" && echo hi > keep.txt && echo x > drop-me.txt '
                 f"&& mkdir -p sub && head -c 300000 /dev/urandom > sub/blob && ln -s {outside} esc")
        assert ssh_run(*direct_endpoint(row), ssh_key, setup, user=user).returncode == 0
        running = client.put(f"/api/v0/instances/command/{instance_id}/", json={"command": "ls /workspace"})
        assert running.status_code == 400 and "only avail on stopped instances" in running.json()["msg"]
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
        wait_status(client, instance_id, "exited")

        assert names(execute(client, instance_id, "ls /workspace")) == ["drop-me.txt", "esc", "keep.txt", "sub"]
        assert names(execute(client, instance_id, "ls")) == ["drop-me.txt", "esc", "keep.txt", "sub"]
        assert execute(client, instance_id, "ls -1 workspace/sub").split() == ["blob"]  # relative to /
        size, path = execute(client, instance_id, "du -sk /workspace/sub").split()
        assert int(size) >= 290 and path == "/workspace/sub"
        assert "No such file" in execute(client, instance_id, "ls /workspace/missing")
        assert execute(client, instance_id, "rm /workspace/drop-me.txt") == ""
        assert names(execute(client, instance_id, "ls /workspace")) == ["esc", "keep.txt", "sub"]
        for bad in ("cat /workspace/keep.txt", "ls | sh", "rm -rf /", "rm /etc/hostname", "", "ls " + "a" * 520,
                    "ls /etc", "du -s /", "du --files0-from=/workspace/keep.txt",
                    "du -X /workspace/keep.txt /workspace", "ls -lL /workspace"):
            refused = client.put(f"/api/v0/instances/command/{instance_id}/", json={"command": bad})
            assert refused.status_code == 400 and refused.json()["error"] == "invalid_args", (bad, refused.text)
        # Inside the workspace as written, outside once the symlink is followed: refused where it runs.
        for escape in ("rm -rf /workspace/esc/victim", "rm -r workspace/esc/victim", "ls -l /workspace/esc",
                       "du -a /workspace/esc/"):
            out = execute(client, instance_id, escape)
            assert out.startswith("vastsim: refused:") and out.count("\n") == 1, (escape, out)  # no listing
            assert (outside / "victim").read_text() == "must survive\n", escape
        assert execute(client, instance_id, "rm /workspace/esc") == ""  # the link itself
        assert (outside / "victim").exists()

        # The instance starts again with the change made, its disk intact.
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"})
        row = wait_status(client, instance_id, "running")
        listing = ssh_run(*direct_endpoint(row), ssh_key, 'ls "${VASTSIM_WORKSPACE:-/workspace}"', user=user)
        assert names(listing.stdout) == ["keep.txt", "sub"], listing.stderr
