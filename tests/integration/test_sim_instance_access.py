"""Reaching an instance the ways Vast offers: `-p` ports forwarded for real, `VAST_*_PORT_*` in its
environment, and `/root/.ssh/authorized_keys` (seeded with the account's keys, honoured by sshd)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mlops_vast.sim import host_loopback
from mlops_vast.sim import hosts as sim_hosts
from mlops_vast.sim.market import Market
from mlops_vast.sim.models import Instance
from tests.conftest import SSH_OPTIONS, Sim, _tag, needs_root, rent, running_sim, ssh_run, wait_status
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

        # The file survives a stop and start (/root is the home/ folder of the instance's state dir, kept
        # while the instance exists; it is not regenerated).
        assert ssh_run(host, port, ssh_key, "chmod 600 /root/.ssh/authorized_keys").returncode == 0
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
        wait_status(client, instance_id, "exited")
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"})
        wait_status(client, instance_id, "running")
        assert ssh_run(host, port, mine, "echo again").stdout.strip() == "again"



def free_ports(count: int) -> list[int]:
    """Distinct ports free for TCP and UDP on loopback now (container ports of loopback instances)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def serve_on(host: str, port: int, key: Path, user: str, tcp: list[int], udp: int, text: str) -> None:
    """An HTTP server on each TCP container port (serving hello.txt) and a UDP upper-casing echo."""
    servers = " ".join(f"nohup python3 -m http.server {p} >/dev/null 2>&1 &" for p in tcp)
    command = (f'cd "${{VASTSIM_WORKSPACE:-/workspace}}"; echo {text} > hello.txt; {servers} '
               f"nohup python3 -c '{UDP_ECHO.format(port=udp)}' >/dev/null 2>&1 &")
    done = ssh_run(host, port, key, command, user=user)
    assert done.returncode == 0, done.stderr


def wait_row(client: httpx.Client, instance_id: int, check: Callable[[dict], bool], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    row: dict = {}
    while time.monotonic() < deadline:
        row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"] or {}
        if check(row):
            return row
        time.sleep(0.05)
    raise AssertionError(f"instance {instance_id}: {row.get('actual_status')} {row.get('status_msg')}")


def test_loopback_instances_get_disjoint_working_forwards(tmp_path: Path, ssh_key: Path) -> None:
    # Loopback instances share 127.0.0.1: each one's public ports (sshd's and its -p ones) must be its own.
    with running_sim(tmp_path / "state", "--host-mode", "loopback") as simulator:
        register_key(simulator, ssh_key)
        with simulator.client() as client:
            user = client.get("/_sim/info").json()["ssh_user"]
            container = free_ports(6)
            wanted = {}
            for tcp, udp in ((container[0:2], container[2]), (container[3:5], container[5])):
                env = {f"-p {p}:{p}": "1" for p in tcp} | {f"-p {udp}:{udp}/udp": "1"}
                wanted[rent(client, env=env)] = (tcp, udp)
            rows = {instance_id: wait_status(client, instance_id, "running") for instance_id in wanted}
            public: dict[int, set[int]] = {}
            for instance_id, row in rows.items():
                tcp, udp = wanted[instance_id]
                assert set(row["ports"]) == {"22/tcp", *(f"{p}/tcp" for p in tcp), f"{udp}/udp"}, row["ports"]
                public[instance_id] = {host_port(row, key) for key in row["ports"]}
                assert len(public[instance_id]) == 4
            first, second = public.values()
            assert not first & second, (first, second)
            for instance_id, row in rows.items():
                # direct_port_start/end is exactly the instance's block, sshd's port first.
                assert set(range(row["direct_port_start"], row["direct_port_end"] + 1)) == public[instance_id]
                assert row["direct_port_start"] == host_port(row, "22/tcp")
            for instance_id, row in rows.items():
                host, port = direct_endpoint(row)
                tcp, udp = wanted[instance_id]
                serve_on(host, port, ssh_key, user, tcp, udp, f"from-{instance_id}")
            for instance_id, row in rows.items():
                host, _ = direct_endpoint(row)
                tcp, udp = wanted[instance_id]
                for p in tcp:
                    assert http_get(f"http://{host}:{host_port(row, f'{p}/tcp')}/hello.txt") == f"from-{instance_id}\n"
                assert udp_exchange(host, host_port(row, f"{udp}/udp"), b"ping") == b"PING"
            for instance_id in wanted:
                client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})


def test_ports_are_kept_across_a_simulator_restart(tmp_path: Path, ssh_key: Path) -> None:
    container = free_ports(2)
    env = {f"-p {container[0]}:{container[0]}": "1", f"-p {container[1]}:{container[1]}/udp": "1"}
    with running_sim(tmp_path / "state", "--host-mode", "loopback") as simulator:
        register_key(simulator, ssh_key)
        with simulator.client() as client:
            instance_id = rent(client, env=env)
            before = wait_status(client, instance_id, "running")
    with running_sim(tmp_path / "state", "--host-mode", "loopback") as simulator, simulator.client() as client:
        after = wait_status(client, instance_id, "running")
        assert after["ports"] == before["ports"]
        assert (after["direct_port_start"], after["direct_port_end"]) == (
            before["direct_port_start"], before["direct_port_end"])
        client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})


def hold_port(port: int, netns: str | None) -> subprocess.Popen[str]:
    """A process listening on TCP ``port`` (on every address of ``netns``, or on 127.0.0.1)."""
    listen = "0.0.0.0" if netns else "127.0.0.1"
    code = (f"import socket, time; s = socket.create_server(({listen!r}, {port})); print('held', flush=True); "
            "time.sleep(600)")
    argv = [sys.executable, "-c", code]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_forward_that_cannot_bind_fails_the_boot(mode_sim: Sim, ssh_key: Path) -> None:
    register_key(mode_sim, ssh_key)
    with mode_sim.client() as client:
        info = client.get("/_sim/info").json()
        user, namespace = info["ssh_user"], info["host_mode"] == "namespace"
        tcp_port, udp_port = (8080, 7000) if namespace else free_ports(2)
        instance_id = rent(client, env={f"-p {tcp_port}:{tcp_port}": "1", f"-p {udp_port}:{udp_port}/udp": "1"})
        row = wait_status(client, instance_id, "running")
        public = host_port(row, f"{tcp_port}/tcp")
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
        wait_status(client, instance_id, "exited")

        # Someone else listens on its public port meanwhile: the start fails visibly, as a host error.
        holder = hold_port(public, f"vastsim-{_tag(mode_sim.state_dir)}-{instance_id}" if namespace else None)
        try:
            client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"})
            row = wait_row(client, instance_id, lambda r: "cannot forward" in (r.get("status_msg") or ""))
            assert row["status_msg"].startswith("Error: ") and f"tcp port {public}" in row["status_msg"], row
            assert row["actual_status"] != "running" and row["cur_state"] == "stopped"
        finally:
            holder.kill()
            holder.wait()

        # Once the port is free again, a start brings the instance and its forwards back.
        client.put(f"/api/v0/instances/{instance_id}/", json={"state": "running"})
        row = wait_status(client, instance_id, "running")
        host, port = direct_endpoint(row)
        serve_on(host, port, ssh_key, user, [tcp_port], udp_port, "back")
        assert http_get(f"http://{host}:{public}/hello.txt") == "back\n"
        assert udp_exchange(host, host_port(row, f"{udp_port}/udp"), b"ping") == b"PING"
        client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})


def forwarder_pids(state_dir: Path, instance_id: int) -> list[int]:
    spec = str(state_dir / "instances" / str(instance_id) / "etc" / "forwards.json").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--forward" in argv and spec in argv:
            pids.append(int(entry.name))
    return pids


def loopback_spec(instance_id: int) -> sim_hosts.HostSpec:
    return sim_hosts.HostSpec(instance_id=instance_id, hostname=f"C.{instance_id}", disk_gb=10,
                              authorized_keys=[], gpu_spec={}, forwards=[("tcp", free_port(), 9)])


def test_a_failed_sshd_start_leaves_no_forwarder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_loopback, "SSHD", str(tmp_path / "no-such-sshd"))
    state_dir = tmp_path / "state"

    async def scenario() -> None:
        manager = sim_hosts.HostManager(state_dir, mode="loopback")
        spec = loopback_spec(7)
        await manager.allocate(spec)
        await manager.prepare(spec)
        try:
            with pytest.raises(FileNotFoundError):
                await manager.start(7)
            assert not forwarder_pids(state_dir, 7)
            assert not manager.needs_stop(7)
        finally:
            await manager.destroy(7)

    asyncio.run(scenario())


def test_stopping_an_instance_whose_sshd_died_ends_its_forwarder(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"

    async def scenario() -> None:
        manager = sim_hosts.HostManager(state_dir, mode="loopback")
        spec = loopback_spec(7)
        await manager.allocate(spec)
        await manager.prepare(spec)
        try:
            await manager.start(7)
            assert forwarder_pids(state_dir, 7)
            sshd = manager._runtimes[7].process
            assert sshd is not None
            os.kill(sshd.pid, signal.SIGKILL)  # sshd dies on its own
            await sshd.wait()
            assert not manager.is_running(7) and manager.needs_stop(7)
            # The instance is stopped meanwhile: reconciling it must end what is left of its host.
            market = Market(tmp_path / "market", hosts=manager)
            instance = Instance(id=7, user_id=1, offer_id=1, machine_id=1, num_gpus=1, image="x", disk=10,
                                runtype="ssh_direc ssh_proxy", created_at=time.time(), gpu_dph=0.1,
                                storage_dph=0.01, phase="stopped")
            assert market.host_sync.reconcile(instance) is None
            assert 7 in market.host_sync.ops, "reconcile did not stop the host"
            await market.host_sync.ops[7]
            assert not forwarder_pids(state_dir, 7) and not manager.needs_stop(7)
        finally:
            await manager.destroy(7)

    asyncio.run(scenario())


@needs_root
def test_etc_is_read_only_inside_and_planted_links_redirect_nothing(sim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    register_key(sim, ssh_key)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "other", "-f", str(other)], check=True)
    with sim.client() as client:
        instance_id = rent(client, onstart="echo onstart-ran")
        row = wait_status(client, instance_id, "running")
        host, port = direct_endpoint(row)
        # etc/ holds what the simulator writes (sshd's config, the keys it reads): the instance reads it only.
        done = ssh_run(host, port, ssh_key, "touch /run/vastsim/etc/probe")
        assert done.returncode != 0 and "Read-only" in done.stderr, done.stderr
        assert ssh_run(host, port, ssh_key, "test -s /run/vastsim/etc/authorized_keys").returncode == 0
        # A link where the simulator writes /root/.ssh/authorized_keys does not redirect that write.
        planted = ssh_run(host, port, ssh_key, f"ln -s {victim} /root/.ssh/authorized_keys.tmp")
        assert planted.returncode == 0, planted.stderr
        added = client.post("/api/v0/ssh/", json={"ssh_key": other.with_suffix(".pub").read_text()})
        assert added.status_code == 200, added.text
        assert victim.read_text() == "precious\n"
        assert ssh_run(host, port, other, "echo other").stdout.strip() == "other"
        assert ssh_run(host, port, ssh_key, "test -f /root/.ssh/authorized_keys -a ! -L "
                                            "/root/.ssh/authorized_keys").returncode == 0
        # The logs the instance writes there still work: onstart's output (what `logs` shows).
        deadline = time.monotonic() + 20
        while "onstart-ran" not in (log := (sim.state_dir / "instances" / str(instance_id) / "etc" / "onstart.log")
                                    .read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "onstart-ran" in log
        client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})
