"""Faults armed through /_sim/faults and the catalogue's bad hosts, seen from outside."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from tests.conftest import Sim, cheapest_good_offer, needs_root, rent, running_sim, ssh_run, wait_status
from tests.integration.test_sim_lifecycle import direct_endpoint, register_key


def arm(client: httpx.Client, **spec: object) -> dict:
    response = client.post("/_sim/faults", json=spec)
    assert response.status_code == 200, response.text
    return response.json()["faults"][0]


def refused(ssh: Callable[[], subprocess.CompletedProcess[str]], seconds: float = 10) -> bool:
    """Whether SSH fails within ``seconds`` (a host is stopped a moment after its phase changes)."""
    deadline = time.monotonic() + seconds
    while ssh().returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


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


@pytest.mark.parametrize("after", [False, True])
def test_reset_drops_the_connection_mid_answer_before_or_after_the_request_took_effect(sim: Sim, after: bool) -> None:
    with sim.client() as client:
        arm(client, kind="http", endpoint="PUT /api/v0/asks/*", status=500, body="reset", after=after)
        offer = client.post("/api/v0/bundles/", json={"limit": 1}).json()["offers"][0]
        with pytest.raises(httpx.TransportError):  # the peer closed mid-response: no status, no body
            client.put(f"/api/v0/asks/{offer['id']}/", json={"client_id": "me", "image": "x", "disk": 10})
        assert client.get("/_sim/ledger").json()["totals"]["instances"] == (1 if after else 0)
        assert client.get("/api/v1/instances/").status_code == 200, "the server goes on answering"


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
        assert refused(lambda: ssh_run(host, port, ssh_key, "true", timeout=10))
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


# ---------------------------------------------------------------------- timed and triggered faults, forwards
# One simulator per host backend for the tests below: each rents its own instance and gives it back.

MODES = [pytest.param("namespace", marks=needs_root), "loopback"]
# Where the instance's /workspace is from a login: its own disk (namespace), or its directory (loopback).
WS = "${VASTSIM_WORKSPACE:-/workspace}"


@pytest.fixture(scope="module", params=MODES)
def mode_sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ssh_key: Path
             ) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp(request.param) / "state", "--host-mode", request.param) as simulator:
        register_key(simulator, ssh_key)
        yield simulator


@dataclass
class Rented:
    client: httpx.Client
    id: int
    row: dict
    user: str
    key: Path

    def ssh(self, command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return ssh_run(*direct_endpoint(self.row), self.key, command, user=self.user, timeout=timeout)

    def wait_ssh(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ssh("true", timeout=15).returncode != 0:
            assert time.monotonic() < deadline, f"instance {self.id}: no SSH after {timeout} s"
            time.sleep(0.2)


@contextlib.contextmanager
def rented(sim: Sim, key: Path, **body: object) -> Iterator[Rented]:
    """A running instance on the shared simulator; its faults cleared and it destroyed afterwards."""
    with sim.client() as client:
        user = client.get("/_sim/info").json()["ssh_user"]
        instance_id = rent_offer(client, cheapest_good_offer(client), **body)
        try:
            yield Rented(client, instance_id, wait_status(client, instance_id, "running"), user, key)
        finally:
            client.delete("/_sim/faults")
            client.delete(f"/api/v0/instances/{instance_id}/")


def rent_offer(client: httpx.Client, offer: dict, **body: object) -> int:
    payload = {"client_id": "me", "image": "pytorch/pytorch", "disk": 10, "runtype": "ssh_direc ssh_proxy", **body}
    response = client.put(f"/api/v0/asks/{offer['id']}/", json=payload)
    assert response.status_code == 200 and response.json()["success"], response.text
    return int(response.json()["new_contract"])


def listed(client: httpx.Client, fault_id: int) -> dict | None:
    return next((f for f in client.get("/_sim/faults").json()["faults"] if f["id"] == fault_id), None)


def stays_pending(client: httpx.Client, instance_id: int, fault_id: int, seconds: float = 1.0) -> None:
    """Several trigger checks long (every ~0.2 s): nothing happens to the instance."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]["actual_status"] == "running"
        assert listed(client, fault_id)["pending"] is True
        time.sleep(0.1)


def test_outbid_when_a_log_line_appears_ends_after_for_s(mode_sim: Sim, ssh_key: Path) -> None:
    with mode_sim.client() as client:
        offer = cheapest_good_offer(client)
    bid = round(offer["min_bid"] * 1.2, 4)
    with rented(mode_sim, ssh_key, price=bid) as box:
        client = box.client
        assert box.ssh(f"mkdir -p {WS}/run && echo 'step 1 loss 2.5' >> {WS}/run/run.log").returncode == 0
        fault = arm(client, kind="outbid", machine_id=offer["machine_id"], price=bid + 1, for_s=2,
                    when_log={"path": "/workspace/run/run.log", "pattern": r"^step 3 "})
        assert fault["pending"] is True and "clears_at" not in fault
        # Armed but pending: no competing bid yet, whatever the log says that does not match.
        assert box.ssh(f"echo 'step 2 loss 2.1' >> {WS}/run/run.log; echo 'no step 3 here' >> {WS}/run/run.log"
                       ).returncode == 0
        stays_pending(client, box.id, fault["id"])
        assert client.get(f"/api/v0/instances/{box.id}/").json()["instances"]["min_bid"] < bid
        assert box.ssh(f"echo 'step 3 loss 1.9' >> {WS}/run/run.log").returncode == 0
        row = wait_status(client, box.id, "exited", timeout=10)
        assert row["status_msg"].startswith("Instance outbid"), row["status_msg"]
        assert row["min_bid"] > bid + 1
        fired = listed(client, fault["id"])
        assert fired["pending"] is False and fired["triggered_on"] == box.id
        assert fired["clears_at"] == pytest.approx(fired["effective_at"] + 2)
        # for_s later the competing bid is gone and the instance resumes on its own (try_resume).
        wait_status(client, box.id, "running", timeout=20)
        assert time.time() >= fired["triggered_at"] + 2
        assert listed(client, fault["id"]) is None
        box.wait_ssh()
        assert "step 3 loss 1.9" in box.ssh(f"cat {WS}/run/run.log").stdout


def test_offline_for_s_comes_back_with_its_files_and_without_its_processes(mode_sim: Sim, ssh_key: Path) -> None:
    token = f"{secrets.randbelow(10**6)}.5"
    with rented(mode_sim, ssh_key) as box:
        client = box.client
        started = box.ssh(f"echo kept > {WS}/kept.txt; nohup setsid sleep {token} >/dev/null 2>&1 & echo ok")
        assert started.returncode == 0 and box.ssh(f"pgrep -f 'slee[p] {token}'").returncode == 0
        fault = arm(client, kind="offline", instance_id=box.id, for_s=3)
        wait_status(client, box.id, "offline", timeout=10)
        clears_at = listed(client, fault["id"])["clears_at"]
        assert clears_at > time.time() + 1
        assert refused(lambda: box.ssh("true", timeout=10))  # the host is stopped right after the phase changes
        wait_status(client, box.id, "running", timeout=20)
        assert time.time() >= clears_at
        assert listed(client, fault["id"]) is None
        box.wait_ssh()
        assert box.ssh(f"cat {WS}/kept.txt").stdout == "kept\n"
        assert box.ssh(f"pgrep -f 'slee[p] {token}'").returncode == 1, "a process outlived the outage"


def test_offline_while_a_checkpoint_is_being_written(mode_sim: Sim, ssh_key: Path) -> None:
    out = f"{WS}/run/output"
    with rented(mode_sim, ssh_key) as box:
        client = box.client
        fault = arm(client, kind="offline", instance_id=box.id, for_s=3,
                    when_partial={"glob": "/workspace/run/output/checkpoint-*", "missing": "trainer_state.json"})
        # A finished checkpoint (moved into place whole), a file and an unrelated directory: not yet.
        done = box.ssh(f"mkdir -p {out}/tmp-1 {out}/logs && touch {out}/tmp-1/trainer_state.json "
                       f"&& mv {out}/tmp-1 {out}/checkpoint-1 && touch {out}/checkpoint-notes")
        assert done.returncode == 0, done.stderr
        stays_pending(client, box.id, fault["id"])
        # Written by a process of the host's own, after this session has ended: the partial checkpoint stops the
        # host at once, and a session still open then would be cut.
        started = box.ssh(f"nohup sh -c 'sleep 0.5; mkdir {out}/checkpoint-2 && "
                          f"head -c 1000 /dev/zero > {out}/checkpoint-2/model.bin' >/dev/null 2>&1 &")
        assert started.returncode == 0, started.stderr
        wait_status(client, box.id, "offline", timeout=10)
        assert listed(client, fault["id"])["triggered_on"] == box.id
        wait_status(client, box.id, "running", timeout=20)
        box.wait_ssh()
        listing = box.ssh(f"LC_ALL=C ls {out}").stdout.split()
        assert listing == ["checkpoint-1", "checkpoint-2", "checkpoint-notes", "logs"], "the files outlive the outage"


class Upstream(http.server.BaseHTTPRequestHandler):
    """An S3 stand-in on the controller's loopback: records each request, echoes the body's digest."""

    protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` with 100, as S3 servers do
    seen: ClassVar[list[dict]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append({"method": "GET", "path": self.path, "host": self.headers["Host"]})
        size = int(self.path.rpartition("size=")[2]) if "size=" in self.path else 0
        self._answer(b"hello from loopback" if not size else bytes(range(256)) * (size // 256))

    def do_PUT(self) -> None:
        body = self._body()
        self.seen.append({"method": "PUT", "path": self.path, "host": self.headers["Host"], "bytes": len(body),
                          "chunked": "chunked" in self.headers.get("Transfer-Encoding", "")})
        self._answer(hashlib.sha256(body).hexdigest().encode())


@pytest.fixture
def upstream() -> Iterator[tuple[int, list[dict]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    Upstream.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], Upstream.seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_forward_reaches_a_loopback_server_from_the_instance(mode_sim: Sim, ssh_key: Path,
                                                             upstream: tuple[int, list[dict]]) -> None:
    if mode_sim.host_mode != "namespace":
        pytest.skip("loopback hosts share the controller's network: they reach 127.0.0.1 directly, no forward")
    port, seen = upstream
    with rented(mode_sim, ssh_key) as box:
        client = box.client
        for bad in ("10.0.0.1:80", "example.com:80", "127.0.0.1", "127.0.0.1:0"):
            refused = client.post("/_sim/forwards", json={"name": "s3.vastsim", "to": bad})
            assert refused.status_code == 400 and "to " in refused.json()["msg"], (bad, refused.text)
        try:
            added = client.post("/_sim/forwards", json={"name": "s3.vastsim", "to": f"127.0.0.1:{port}"})
            assert added.status_code == 200, added.text
            listing = client.get("/_sim/forwards").json()
            assert listing["forwards"] == [{"name": "s3.vastsim", "to": f"127.0.0.1:{port}"}]
            assert listing["host_mode"] == "namespace"

            got = box.ssh("curl -sS -D - 'http://s3.vastsim/bucket/x?list-type=2&prefix=a%2Fb'")
            assert got.returncode == 0 and got.stdout.endswith("hello from loopback"), got.stdout + got.stderr
            assert "x-upstream: yes" in got.stdout.lower()
            assert seen[-1] == {"method": "GET", "path": "/bucket/x?list-type=2&prefix=a%2Fb", "host": "s3.vastsim"}
            # A Host header with a port (and another case) is that name too, and reaches the server as sent:
            # presigned URLs sign it.
            assert box.ssh("curl -sS -H 'Host: S3.vastsim:80' http://s3.vastsim/y").stdout == "hello from loopback"
            assert seen[-1]["host"] == "S3.vastsim:80"

            size = 3 * 1024 * 1024 + 17
            put = (f"head -c {size} /dev/urandom > /tmp/blob && sha256sum /tmp/blob | cut -d' ' -f1 && "
                   "curl -sS --fail -T /tmp/blob http://s3.vastsim/bucket/blob && echo && "
                   "curl -sS --fail -H 'Transfer-Encoding: chunked' -T /tmp/blob http://s3.vastsim/bucket/chunked")
            digest, by_length, by_chunks = box.ssh(put, timeout=60).stdout.split()
            assert digest == by_length == by_chunks
            assert [(s["bytes"], s["chunked"]) for s in seen[-2:]] == [(size, False), (size, True)]
            download = box.ssh(f"curl -sS --fail 'http://s3.vastsim/big?size={size - 17}' | wc -c", timeout=60)
            assert download.stdout.strip() == str(size - 17)

            assert client.delete("/_sim/forwards/s3.vastsim").json()["removed"] == 1
            hits = len(seen)
            # Without a forward the name is the simulated internet again: zeros, and the server hears nothing.
            assert box.ssh("curl -sS 'http://s3.vastsim/x?bytes=5' | wc -c").stdout.strip() == "5"
            assert len(seen) == hits
        finally:
            client.delete("/_sim/forwards")
