"""The simulator's writes into directories an instance can write (bin/, /root/.ssh) never follow a
symlink the instance planted, and the instance's -p relays (instance_init.py) behave."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_vast.sim import instance_init
from mlops_vast.sim.host_namespace import MAX_AUTHORIZED_KEYS_BYTES, NamespaceBackend
from mlops_vast.sim.host_os import atomic_write
from mlops_vast.sim.hosts import HostManager, HostSpec, Runtime

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyOfTheAccount account"


# ------------------------------------------------------------------ atomic_write


def testatomic_write_does_not_follow_a_planted_tmp_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "nvidia-smi.json.tmp").symlink_to(victim)
    # A directory where a predictable temporary name would go must not make every later write fail.
    (directory / "nvidia-smi.json.tmp.d").mkdir()
    atomic_write(directory / "nvidia-smi.json", "{}", mode=0o644)
    assert victim.read_text() == "precious\n"
    written = directory / "nvidia-smi.json"
    assert not written.is_symlink() and written.read_text() == "{}"
    assert oct(written.stat().st_mode & 0o777) == oct(0o644)
    leftovers = sorted(p.name for p in directory.iterdir())
    assert leftovers == ["nvidia-smi.json", "nvidia-smi.json.tmp", "nvidia-smi.json.tmp.d"], "no temporary file left"


def testatomic_write_replaces_a_link_at_the_destination(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "hosts").symlink_to(victim)
    atomic_write(tmp_path / "hosts", "127.0.0.1 localhost\n")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "hosts").is_symlink()


def testatomic_write_with_a_directory_descriptor(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "keys.tmp").symlink_to(victim)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        atomic_write("keys", "k\n", mode=0o600, dir_fd=fd)
    finally:
        os.close(fd)
    assert (tmp_path / "keys").read_text() == "k\n" and victim.read_text() == "precious\n"


# --------------------------------------------------------------- seed_root_keys


@pytest.fixture
def seeding(tmp_path: Path) -> tuple[NamespaceBackend, Runtime]:
    backend = HostManager(tmp_path / "state", mode="namespace").backend
    assert isinstance(backend, NamespaceBackend)
    directory = backend.instance_dir(1)
    for sub in ("etc", "home"):
        (directory / sub).mkdir(parents=True)
    spec = HostSpec(instance_id=1, hostname="C.1", disk_gb=10, authorized_keys=[KEY], gpu_spec={})
    return backend, Runtime(spec=spec, directory=directory)


def test_seeding_goes_through_no_planted_link(seeding: tuple[NamespaceBackend, Runtime], tmp_path: Path) -> None:
    manager, runtime = seeding
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    ssh_dir = runtime.directory / "home" / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys.tmp").symlink_to(victim)
    manager.seed_root_keys(runtime, [KEY])
    assert victim.read_text() == "precious\n"
    assert not (ssh_dir / "authorized_keys").is_symlink()
    assert (ssh_dir / "authorized_keys").read_text() == KEY + "\n"


@pytest.mark.parametrize("link", [".ssh", ".ssh/authorized_keys"])
def test_seeding_leaves_a_linked_ssh_dir_or_file_alone(seeding: tuple[NamespaceBackend, Runtime], tmp_path: Path,
                                                       link: str) -> None:
    manager, runtime = seeding
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "authorized_keys").write_text("precious\n")
    home = runtime.directory / "home"
    if link == ".ssh":
        (home / ".ssh").symlink_to(elsewhere)
    else:
        (home / ".ssh").mkdir()
        (home / ".ssh" / "authorized_keys").symlink_to(elsewhere / "authorized_keys")
    manager.seed_root_keys(runtime, [KEY])
    assert sorted(p.name for p in elsewhere.iterdir()) == ["authorized_keys"]
    assert (elsewhere / "authorized_keys").read_text() == "precious\n"


def test_seeding_reads_a_bounded_regular_file_only(seeding: tuple[NamespaceBackend, Runtime]) -> None:
    manager, runtime = seeding
    ssh_dir = runtime.directory / "home" / ".ssh"
    ssh_dir.mkdir()
    # A FIFO would block a plain read forever; it is not a regular file, so it is left alone.
    os.mkfifo(ssh_dir / "authorized_keys")
    done = threading.Thread(target=manager.seed_root_keys, args=(runtime, [KEY]), daemon=True)
    done.start()
    done.join(5)
    assert not done.is_alive(), "seeding blocked on a FIFO"
    (ssh_dir / "authorized_keys").unlink()
    huge = "# padding\n" * (MAX_AUTHORIZED_KEYS_BYTES // 10 + 1)
    (ssh_dir / "authorized_keys").write_text(huge)
    manager.seed_root_keys(runtime, [KEY])
    assert (ssh_dir / "authorized_keys").read_text() == huge
    (ssh_dir / "authorized_keys").write_text("ssh-ed25519 AAAAmine mine\n")
    (ssh_dir / "authorized_keys").chmod(0o640)
    manager.seed_root_keys(runtime, [KEY])
    assert (ssh_dir / "authorized_keys").read_text() == f"ssh-ed25519 AAAAmine mine\n{KEY}\n"
    assert (ssh_dir / "authorized_keys").stat().st_mode & 0o777 == 0o640


# ------------------------------------------------------------ -p relays (instance_init)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def forwarding(ports: list[list]) -> Iterator[list[socket.socket]]:
    socks = instance_init.serve_forwards({"listen": "127.0.0.1", "target": "127.0.0.1", "ports": ports})
    try:
        yield socks
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the relay thread blocked on it
            sock.close()


def test_a_port_that_cannot_be_bound_fails_them_all() -> None:
    tcp_public, udp_public = free_port(), free_port(socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", udp_public))
        with pytest.raises(OSError, match=f"cannot forward udp port {udp_public} to 7000"):
            instance_init.serve_forwards({"listen": "127.0.0.1", "target": "127.0.0.1",
                                          "ports": [["tcp", tcp_public, 8080], ["udp", udp_public, 7000]]})
    with socket.socket() as again:  # the TCP port it had bound is released
        again.bind(("127.0.0.1", tcp_public))


def test_two_forwarders_cannot_share_a_udp_port() -> None:
    public = free_port(socket.SOCK_DGRAM)
    with forwarding([["udp", public, 7000]]), pytest.raises(OSError, match="cannot forward udp"):
        instance_init.serve_forwards({"listen": "127.0.0.1", "target": "127.0.0.1",
                                      "ports": [["udp", public, 7001]]})


def test_a_half_open_tcp_relay_ends_once_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance_init, "TCP_HALF_OPEN_IDLE_S", 0.5)
    held: list[socket.socket] = []

    def serve(server: socket.socket) -> None:
        # Answers each request, then neither sends nor closes: half-open once the client is done.
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                held.append(conn)
                conn.sendall(conn.recv(100).upper())

    with socket.create_server(("127.0.0.1", 0)) as server:
        threading.Thread(target=serve, args=(server,), daemon=True).start()
        public = free_port()
        with forwarding([["tcp", public, server.getsockname()[1]]]), \
                socket.create_connection(("127.0.0.1", public), timeout=10) as client:
            client.sendall(b"ping")
            assert client.recv(100) == b"PING"
            client.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            assert client.recv(100) == b"", "the relay should close an idle half-open connection"
            assert time.monotonic() - started < 8
        server.shutdown(socket.SHUT_RDWR)
    for conn in held:
        conn.close()


def test_udp_relay_forgets_an_idle_peer_and_serves_it_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance_init, "UDP_IDLE_S", 0.3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.settimeout(0.2)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    data, peer = echo.recvfrom(100)
                    echo.sendto(data.upper(), peer)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        public = free_port(socket.SOCK_DGRAM)
        with forwarding([["udp", public, echo.getsockname()[1]]]), \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for payload in (b"one", b"two"):
                client.sendto(payload, ("127.0.0.1", public))
                assert client.recvfrom(100)[0] == payload.upper()
                time.sleep(1.0)  # the peer's relay socket times out meanwhile
        stop.set()
        thread.join(5)


def test_a_port_is_never_relayed_to_itself() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match="to itself"):
        instance_init.serve_forwards({"listen": "127.0.0.1", "target": "127.0.0.1", "ports": [["tcp", port, port]]})


def test_loopback_public_ports_never_take_a_container_port(tmp_path: Path) -> None:
    from mlops_vast.sim import market

    def first_rent(state: Path, env: dict[str, str]) -> dict[str, int]:
        sim = market.Market(state, speed=100.0, hosts=HostManager(state, mode="loopback"))
        account = next(iter(sim.state.accounts.values()))
        offer = next(iter(sim.catalog.offers))
        body = {"image": "pytorch/pytorch", "disk": 10, "runtype": "ssh_direc ssh_proxy", "env": env}
        instance, _started = sim.create_instance(account, offer, body)
        return dict(instance.ports)

    state = tmp_path / "state"
    state.mkdir()
    # Where the allocator puts this instance's block when nothing is in the way ...
    probe = first_rent(state, {"-p 5000:5000": "1"})
    chosen = probe["22/tcp"]
    for path in list(state.iterdir()):
        if path.is_file():
            path.unlink()
    # ... is exactly where the same instance's app now wants to listen: the block must go elsewhere.
    ports = first_rent(state, {f"-p {chosen}:{chosen}": "1"})
    assert ports.keys() == {"22/tcp", f"{chosen}/tcp"}
    assert chosen not in ports.values(), ports
