"""PID 1 of a simulated instance (root mode): builds the instance's view, runs sshd, relays the
``-p`` ports (Docker's port mapping), reaps orphans. In loopback mode the simulator runs it as
``instance_init.py --forward SPEC.json``: the port relay alone.

Started by the simulator as
``ip netns exec NS unshare --mount --uts --pid --fork --kill-child --mount-proc
--propagation private python3 instance_init.py SPEC.json``, so it already sits in the
instance's own network, mount, UTS and PID namespaces. Everything it mounts is private
to the instance and disappears with it. When it exits, the kernel kills every process
left in the PID namespace, which is what "stopping the container" means here. With ``exec``
in the spec it runs that one command in the view instead of sshd (``execute.py``), once
``confine`` has checked its paths in the view, where their symlinks point.

Standard library only, and everything is imported before /root is covered, because the
interpreter that runs it may live under /root (pyenv).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import BinaryIO

UDP_IDLE_S = 120.0  # a UDP peer's relay socket is dropped after this long without a datagram (Docker: 90 s)
# A TCP relay with one direction closed (half-open) is ended after this long without data either way.
TCP_HALF_OPEN_IDLE_S = 300.0


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def build_view(spec: dict) -> None:
    socket.sethostname(spec["hostname"])
    if spec.get("disk_image"):
        _mount("-o", "loop", spec["disk_image"], "/workspace")
    else:
        _mount("-t", "tmpfs", "-o", f"size={spec['disk_bytes']}", "tmpfs", "/workspace")
    # The sources may sit under /tmp or /root, which get covered below: stage them all first
    # under /run/vastsim (private to this instance), then bind the staged copies into place.
    _mount("-t", "tmpfs", "-o", "size=1m,mode=755", "tmpfs", "/run/vastsim")
    staged = {}
    for name in ("etc", "bin", "tmp", "home"):
        target = os.path.join("/run/vastsim", name)
        os.mkdir(target)
        _mount("--bind", spec[f"{name}_dir"], target)
        staged[name] = target
    for path in spec.get("hide", []):
        if os.path.isdir(path):
            _mount("-t", "tmpfs", "-o", "size=1m,mode=700", "tmpfs", path)
    hosts = os.path.join(staged["etc"], "hosts")
    if os.path.exists(hosts):
        # Well-known sources resolve to the simulated internet on this instance's own link.
        _mount("--bind", hosts, "/etc/hosts")
    passwd = os.path.join(staged["etc"], "passwd")
    if os.path.exists(passwd):
        # The machine's users plus vastai_kaalia, the account `vastai copy` logs in as (root's uid).
        _mount("--bind", passwd, "/etc/passwd")
    _mount("--bind", staged["bin"], "/usr/local/sbin")
    _mount("--bind", staged["tmp"], "/tmp")
    _mount("--bind", staged["home"], "/root")


def confine(argv: list[str], paths: list[int], roots: list[str], remove: bool) -> str | None:
    """Why ``argv`` must not run, or None: a path operand that is not the instance's own, symlinks resolved.

    Checked where the command runs, right before it runs, on a stopped instance (nothing changes the
    files meanwhile). ``paths``: the indices of the path operands, absolute and normalised; ``roots``:
    the instance's own directories. ``rm`` (``remove``) does not follow an operand's last component,
    so its parent is resolved and the operand must lie strictly inside a root; ``ls`` and ``du`` may
    follow it, so the whole path is resolved and may also be a root itself.
    """
    real_roots = [os.path.realpath(root) for root in roots]

    def inside(path: str, or_root: bool) -> bool:
        return any(path.startswith(root.rstrip("/") + "/") or (or_root and path == root) for root in real_roots)

    for index in paths:
        path = argv[index]
        head, name = os.path.split(path)
        if not path.startswith("/") or path.startswith("//") or os.path.normpath(path) != path \
                or name in ("", ".", ".."):
            return f"refused: {path!r} is not a plain path."
        real = os.path.join(os.path.realpath(head), name) if remove else os.path.realpath(path)
        if not inside(real, or_root=not remove):
            return (f"refused: {path} is {real}, not the instance's own "
                    f"(inside {' or '.join(roots)}{'' if remove else ', or one of them'}).")
    return None


def seal(path: str) -> None:
    """Make the bind mount at ``path`` read-only in this view (the files stay writable outside it)."""
    _mount("-o", "remount,bind,ro", path)


def _open_log(path: str) -> BinaryIO:
    """Append to a log of etc/, never through a symlink an older run may have left there."""
    if os.path.islink(path):
        os.unlink(path)
    return open(path, "ab", opener=lambda name, flags: os.open(name, flags | os.O_NOFOLLOW, 0o644))


# ------------------------------------------------------------------ port forwards (Docker's -p)


def serve_forwards(spec: dict) -> list[socket.socket]:
    """Relay each public port to the container port, like Docker's -p: TCP and UDP, in threads.

    ``spec``: ``{"listen": ADDR, "target": ADDR, "ports": [[proto, public, container], ...]}``.
    Every public port is bound before any is relayed: one that cannot be bound raises OSError
    naming it, and none is served, so the instance fails to boot instead of advertising a port
    nobody relays. Returns the listening sockets.
    """
    bound = []  # (relay loop, socket, target)
    try:
        for proto, public, container in spec.get("ports", []):
            if spec["listen"] == spec["target"] and int(public) == int(container):
                # Relaying a port to itself would accept connections to itself until fds run out.
                raise OSError(errno.EINVAL, f"cannot forward {proto} port {public} to itself")
            try:
                if proto == "udp":
                    # No SO_REUSEADDR: for UDP it would let a second socket bind the same port.
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    try:
                        sock.bind((spec["listen"], int(public)))
                    except OSError:
                        sock.close()
                        raise
                    loop = _udp_relay
                else:
                    sock = socket.create_server((spec["listen"], int(public)), backlog=128)
                    loop = _tcp_accept
            except OSError as exc:
                raise OSError(exc.errno, f"cannot forward {proto} port {public} to {container}: "
                                         f"{exc.strerror or exc}") from exc
            bound.append((loop, sock, (spec["target"], int(container))))
    except OSError:
        for _loop, sock, _target in bound:
            sock.close()
        raise
    for loop, sock, target in bound:
        threading.Thread(target=loop, args=(sock, target), daemon=True).start()
    return [sock for _loop, sock, _target in bound]


def _tcp_accept(server: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _peer = server.accept()
        except OSError:
            return
        threading.Thread(target=_tcp_connect, args=(client, target), daemon=True).start()


def _tcp_connect(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()  # nothing listens on the container port: the connection just closes
        return
    upstream.settimeout(None)
    activity = [time.monotonic()]  # when data last went either way
    ended = threading.Event()
    pumps = [threading.Thread(target=_pump, args=(source, sink, activity, ended), daemon=True)
             for source, sink in ((client, upstream), (upstream, client))]
    for pump in pumps:
        pump.start()
    ended.wait()
    # One direction has ended (half-open): the other may go on while data flows, but a peer that
    # neither sends nor closes for TCP_HALF_OPEN_IDLE_S must not keep the relay's threads forever.
    while any(pump.is_alive() for pump in pumps):
        idle = time.monotonic() - activity[0]
        if idle >= TCP_HALF_OPEN_IDLE_S:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            break
        for pump in pumps:
            pump.join(min(1.0, TCP_HALF_OPEN_IDLE_S - idle))
    for pump in pumps:
        pump.join()
    client.close()
    upstream.close()


def _pump(source: socket.socket, sink: socket.socket, activity: list[float], ended: threading.Event) -> None:
    try:
        while data := source.recv(65536):
            activity[0] = time.monotonic()
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):  # unblock the other direction too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    finally:
        ended.set()


def _udp_relay(server: socket.socket, target: tuple[str, int]) -> None:
    # peer -> [its relay socket, when a datagram last went either way]; the lock keeps a peer's
    # socket from being closed by its idle timeout between being looked up here and used.
    peers: dict[tuple[str, int], list] = {}
    lock = threading.Lock()
    while True:
        try:
            data, peer = server.recvfrom(65535)
        except OSError:
            return
        if peer is None:  # shut down
            return
        with lock:
            entry = peers.get(peer)
            if entry is None:
                upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    upstream.connect(target)
                except OSError:
                    upstream.close()
                    continue
                upstream.settimeout(UDP_IDLE_S)
                entry = peers[peer] = [upstream, 0.0]
                threading.Thread(target=_udp_back, args=(entry, server, peer, peers, lock), daemon=True).start()
            entry[1] = time.monotonic()
            with contextlib.suppress(OSError):
                entry[0].send(data)


def _udp_back(entry: list, server: socket.socket, peer: tuple[str, int],
              peers: dict[tuple[str, int], list], lock: threading.Lock) -> None:
    upstream = entry[0]
    while True:
        try:
            data = upstream.recv(65535)
        except ConnectionRefusedError:
            continue  # nothing listened on the container port for the last datagram
        except OSError as exc:  # no datagram either way for UDP_IDLE_S (or closed): forget this peer
            with lock:
                if isinstance(exc, TimeoutError) and time.monotonic() - entry[1] < UDP_IDLE_S:
                    continue  # the peer sent meanwhile: it is not idle
                if peers.get(peer) is entry:
                    del peers[peer]
                upstream.close()
            return
        entry[1] = time.monotonic()
        with contextlib.suppress(OSError):
            server.sendto(data, peer)


def forward_only(spec_path: str) -> int:
    """Loopback mode: the simulator runs this as the instance's port forwarder.

    It answers ``ready`` on stdout once every port is bound, or the reason it cannot and exits 1.
    """
    with open(spec_path) as handle:
        spec = json.load(handle)
    try:
        serve_forwards(spec)
    except OSError as exc:
        print(f"vastsim forward: {exc}", file=sys.stderr, flush=True)
        print(exc, flush=True)
        return 1
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def main() -> int:
    if sys.argv[1] == "--forward":
        return forward_only(sys.argv[2])
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    sshd_log = onstart_log = None
    if not spec.get("exec"):
        # The logs the instance writes in etc/, opened where the simulator keeps them before the view
        # covers that: a writer open on /run/vastsim/etc would keep it from being sealed read-only below.
        try:
            sshd_log = _open_log(os.path.join(spec["etc_dir"], "sshd.log"))
            if spec.get("onstart"):
                onstart_log = _open_log(os.path.join(spec["etc_dir"], "onstart.log"))
        except OSError as exc:
            print(f"vastsim init: cannot open the instance's logs: {exc}", file=sys.stderr)
            return 1
    try:
        build_view(spec)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"vastsim init: cannot build the instance view: {exc} {detail.decode(errors='replace')}",
              file=sys.stderr)
        return 1
    os.chdir("/root")
    if spec.get("forwards"):
        try:
            serve_forwards(spec["forwards"])
        except OSError as exc:
            print(f"vastsim init: {exc}", file=sys.stderr, flush=True)
            return 1
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    env.update(spec.get("env", {}))
    if spec.get("exec"):
        # vastsim's `execute` on a stopped instance (execute.py): one command in this view, no sshd.
        command = spec["exec"]
        refusal = confine(command["argv"], command["paths"], command["roots"], command["remove"])
        if refusal is not None:
            print(f"vastsim: {refusal}", flush=True)
            return 126
        return subprocess.run(command["argv"], cwd=command["cwd"], env=env, stdin=subprocess.DEVNULL,
                              check=False).returncode
    try:
        # The simulator writes the files of etc/ (keys, config): the instance only reads them.
        seal("/run/vastsim/etc")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"vastsim init: cannot make /run/vastsim/etc read-only: {exc} {detail.decode(errors='replace')}",
              file=sys.stderr)
        return 1
    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", "/run/vastsim/etc/sshd_config"],
        stdout=sshd_log, stderr=subprocess.STDOUT, env=env,
    )
    sshd_log.close()
    if onstart_log is not None:
        # Vast runs the onstart script once the container is up; its output is what `logs` shows.
        with onstart_log:
            subprocess.Popen(["/bin/bash", "-c", spec["onstart"]], stdout=onstart_log, stderr=subprocess.STDOUT,
                             env=env, cwd="/root", start_new_session=True)

    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while not stopping:
        # As PID 1 we inherit every orphan (tmux servers, nohup'd trainers) and must reap them.
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid == sshd.pid:
            print("vastsim init: sshd exited", file=sys.stderr)
            return 1
        if pid == 0:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
