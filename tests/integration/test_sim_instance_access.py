"""Reaching an instance the ways Vast offers: `-p` ports forwarded for real, `VAST_*_PORT_*` in its
environment, and `/root/.ssh/authorized_keys` (seeded with the account's keys, honoured by sshd)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SSH_OPTIONS, Sim, needs_root, rent, running_sim, ssh_run, wait_status
from tests.integration.test_sim_lifecycle import direct_endpoint, register_key

MODES = [pytest.param("namespace", marks=needs_root), "loopback"]

UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {port}))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(data.upper(), peer)
"""


@pytest.fixture(params=MODES)
def mode_sim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sim]:
    with running_sim(tmp_path / "state", "--host-mode", request.param) as simulator:
        yield simulator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def host_port(row: dict, key: str) -> int:
    return int(row["ports"][key][0]["HostPort"])


def instance_env(host: str, port: int, key: Path, user: str) -> dict[str, str]:
    done = ssh_run(host, port, key, "env", user=user)
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def http_get(url: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response.text
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing answered {url} within {timeout}s")
        time.sleep(0.2)


def udp_exchange(host: str, port: int, payload: bytes, timeout: float = 20.0) -> bytes:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        while time.monotonic() < deadline:
            sock.sendto(payload, (host, port))
            try:
                return sock.recvfrom(65535)[0]
            except TimeoutError:
                continue
    raise AssertionError(f"no UDP answer from {host}:{port} within {timeout}s")


def test_extra_ports_are_forwarded_and_in_the_env(mode_sim: Sim, ssh_key: Path) -> None:
    register_key(mode_sim, ssh_key)
    with mode_sim.client() as client:
        info = client.get("/_sim/info").json()
        user = info["ssh_user"]
        # Loopback instances share the machine's ports: there, pick container ports nobody else uses.
        tcp_port, udp_port = (8080, 7000) if info["host_mode"] == "namespace" else (free_port(), free_port())
        instance_id = rent(client, env={"FOO": "bar", f"-p {tcp_port}:{tcp_port}": "1",
                                        f"-p {udp_port}:{udp_port}/udp": "1"})
        row = wait_status(client, instance_id, "running")
        host, port = direct_endpoint(row)
        assert set(row["ports"]) == {"22/tcp", f"{tcp_port}/tcp", f"{udp_port}/udp"}, row["ports"]
        tcp_public, udp_public = host_port(row, f"{tcp_port}/tcp"), host_port(row, f"{udp_port}/udp")
        assert tcp_public != tcp_port and udp_public != udp_port

        # VAST_TCP_PORT_<n> / VAST_UDP_PORT_<n>: the public ports, from the same mapping as `ports`.
        env = instance_env(host, port, ssh_key, user)
        assert env["VAST_TCP_PORT_22"] == str(port)
        assert env[f"VAST_TCP_PORT_{tcp_port}"] == str(tcp_public)
        assert env[f"VAST_UDP_PORT_{udp_port}"] == str(udp_public)
        assert env["FOO"] == "bar"

        serve = ('cd "${VASTSIM_WORKSPACE:-/workspace}"; echo forwarded > hello.txt; '
                 f"nohup python3 -m http.server {tcp_port} >/dev/null 2>&1 & "
                 f"nohup python3 -c '{UDP_ECHO.format(port=udp_port)}' >/dev/null 2>&1 &")
        started = ssh_run(host, port, ssh_key, serve, user=user)
        assert started.returncode == 0, started.stderr
        # A server on the container port answers on public_ipaddr:HostPort, as behind Docker's -p.
        assert http_get(f"http://{host}:{tcp_public}/hello.txt") == "forwarded\n"
        assert udp_exchange(host, udp_public, b"ping") == b"PING"

        # After a stop and a start the forwarding is back.
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
        wait_status(client, instance_id, "exited")
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"})
        row = wait_status(client, instance_id, "running")
        assert host_port(row, f"{tcp_port}/tcp") == tcp_public
        assert ssh_run(host, port, ssh_key, serve, user=user).returncode == 0
        assert http_get(f"http://{host}:{tcp_public}/hello.txt") == "forwarded\n"
        client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})


def test_proxy_only_instance_has_no_direct_ports(sim: Sim, ssh_key: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        user = client.get("/_sim/info").json()["ssh_user"]
        instance_id = rent(client, runtype="ssh_proxy", env={"-p 8080:8080": "1"})
        row = wait_status(client, instance_id, "running")
        assert row["ports"] == {} and row["direct_port_start"] == -1
        env = instance_env(row["ssh_host"], row["ssh_port"], ssh_key, user)
        assert env["VAST_CONTAINERLABEL"] == f"C.{instance_id}"
        assert not [name for name in env if name.startswith(("VAST_TCP_PORT_", "VAST_UDP_PORT_"))], env


@needs_root
def test_root_authorized_keys_is_seeded_and_honoured(sim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    register_key(sim, ssh_key)
    account_key = ssh_key.with_suffix(".pub").read_text().strip()
    mine, late = tmp_path / "mine", tmp_path / "late"
    for path in (mine, late):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                       check=True)
    with sim.client() as client:
        instance_id = rent(client)
        row = wait_status(client, instance_id, "running")
        host, port = direct_endpoint(row)

        def keys_file() -> list[str]:
            done = ssh_run(host, port, ssh_key, "cat /root/.ssh/authorized_keys")
            assert done.returncode == 0, done.stderr
            return [line.strip() for line in done.stdout.splitlines() if line.strip()]

        # As on Vast: the account's keys are in root's authorized_keys, with modes sshd accepts.
        modes = ssh_run(host, port, ssh_key, "stat -c '%a %U' /root/.ssh /root/.ssh/authorized_keys")
        assert modes.stdout.split("\n")[:2] == ["700 root", "600 root"], modes.stdout + modes.stderr
        assert keys_file() == [account_key]

        # ssh-copy-id (which appends to ~/.ssh/authorized_keys over SSH) gives a new key access.
        assert ssh_run(host, port, mine, "true").returncode != 0
        copied = subprocess.run(
            ["ssh-copy-id", "-f", "-i", str(mine.with_suffix(".pub")), "-p", str(port),
             *SSH_OPTIONS, "-o", f"IdentityFile={ssh_key}", f"root@{host}"],
            capture_output=True, text=True, timeout=60)
        assert copied.returncode == 0, copied.stdout + copied.stderr
        assert ssh_run(host, port, mine, "echo mine").stdout.strip() == "mine"

        # A key added to the account later lands in the file too; deleting it takes it out again
        # and leaves the user's own lines alone.
        late_pub = late.with_suffix(".pub").read_text().strip()
        added = client.post("/api/v0/ssh/", json={"ssh_key": late_pub}).json()
        assert late_pub in keys_file()
        assert ssh_run(host, port, late, "echo late").stdout.strip() == "late"
        client.request("DELETE", f"/api/v0/ssh/{added['id']}/", json={})
        assert late_pub not in keys_file()
        assert ssh_run(host, port, late, "true").returncode != 0
        assert ssh_run(host, port, mine, "echo still").stdout.strip() == "still"

        # StrictModes: like a stock sshd, a world-writable authorized_keys is ignored (Debian's sshd lets
        # group-writable pass when the group is the user's own).
        assert ssh_run(host, port, ssh_key, "chmod 666 /root/.ssh/authorized_keys").returncode == 0
        assert ssh_run(host, port, mine, "true").returncode != 0
        assert ssh_run(host, port, ssh_key, "echo account").stdout.strip() == "account"

        # The file survives a stop and start (it is on the instance's disk, not regenerated).
        assert ssh_run(host, port, ssh_key, "chmod 600 /root/.ssh/authorized_keys").returncode == 0
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
        wait_status(client, instance_id, "exited")
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"})
        wait_status(client, instance_id, "running")
        assert ssh_run(host, port, mine, "echo again").stdout.strip() == "again"

