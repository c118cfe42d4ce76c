"""PID 1 of a simulated instance (root mode): builds the instance's view, runs sshd, relays the
``-p`` ports (Docker's port mapping), reaps orphans. In loopback mode the simulator runs it as
``instance_init.py --forward SPEC.json``: the port relay alone.

Started by the simulator as
``ip netns exec NS unshare --mount --uts --pid --fork --kill-child --mount-proc
--propagation private python3 instance_init.py SPEC.json``, so it already sits in the
instance's own network, mount, UTS and PID namespaces. Everything it mounts is private
to the instance and disappears with it. When it exits, the kernel kills every process
left in the PID namespace, which is what "stopping the container" means here. With ``exec``
in the spec it runs that one command in the view instead of sshd (``execute.py``).

Standard library only, and everything is imported before /root is covered, because the
interpreter that runs it may live under /root (pyenv).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

UDP_IDLE_S = 120.0  # a UDP peer's relay socket is dropped after this long without a reply (Docker: 90 s)


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


# ------------------------------------------------------------------ port forwards (Docker's -p)


def serve_forwards(spec: dict) -> None:
    """Relay each public port to the container port, like Docker's -p: TCP and UDP, in threads.

    ``spec``: ``{"listen": ADDR, "target": ADDR, "ports": [[proto, public, container], ...]}``.
    """
    for proto, public, container in spec.get("ports", []):
        target = (spec["target"], int(container))
        try:
            if proto == "udp":
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((spec["listen"], int(public)))
                loop = _udp_relay
            else:
                sock = socket.create_server((spec["listen"], int(public)), backlog=128)
                loop = _tcp_accept
        except OSError as exc:
            print(f"vastsim init: cannot forward {proto} port {public} to {container}: {exc}", file=sys.stderr)
            continue
        threading.Thread(target=loop, args=(sock, target), daemon=True).start()


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
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for sock in (source, sink):  # unblock the other direction too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _udp_relay(server: socket.socket, target: tuple[str, int]) -> None:
    peers: dict[tuple[str, int], socket.socket] = {}
    while True:
        try:
            data, peer = server.recvfrom(65535)
        except OSError:
            return
        upstream = peers.get(peer)
        if upstream is None:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                upstream.connect(target)
            except OSError:
                upstream.close()
                continue
            upstream.settimeout(UDP_IDLE_S)
            peers[peer] = upstream
            threading.Thread(target=_udp_back, args=(upstream, server, peer, peers), daemon=True).start()
        with contextlib.suppress(OSError):
            upstream.send(data)


def _udp_back(upstream: socket.socket, server: socket.socket, peer: tuple[str, int],
              peers: dict[tuple[str, int], socket.socket]) -> None:
    while True:
        try:
            data = upstream.recv(65535)
        except ConnectionRefusedError:
            continue  # nothing listened on the container port for the last datagram
        except OSError:  # idle for UDP_IDLE_S (or closed): forget this peer
            peers.pop(peer, None)
            upstream.close()
            return
        with contextlib.suppress(OSError):
            server.sendto(data, peer)


def forward_only(spec_path: str) -> int:
    """Loopback mode: the simulator runs this as the instance's port forwarder."""
    with open(spec_path) as handle:
        serve_forwards(json.load(handle))
    while True:
        time.sleep(3600)


def main() -> int:
    if sys.argv[1] == "--forward":
        return forward_only(sys.argv[2])
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    try:
        build_view(spec)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"vastsim init: cannot build the instance view: {exc} {detail.decode(errors='replace')}",
              file=sys.stderr)
        return 1
    os.chdir("/root")
    if spec.get("forwards"):
        serve_forwards(spec["forwards"])
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    env.update(spec.get("env", {}))
    if spec.get("exec"):
        # vastsim's `execute` on a stopped instance (execute.py): one command in this view, no sshd.
        return subprocess.run(spec["exec"], cwd="/", env=env, stdin=subprocess.DEVNULL, check=False).returncode
    sshd = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", "/run/vastsim/etc/sshd_config"],
        stdout=open("/run/vastsim/etc/sshd.log", "ab"),  # noqa: SIM115 - lives as long as sshd
        stderr=subprocess.STDOUT,
        env=env,
    )
    if spec.get("onstart"):
        # Vast runs the onstart script once the container is up; its output is what `logs` shows.
        with open("/run/vastsim/etc/onstart.log", "ab") as log:
            subprocess.Popen(["/bin/bash", "-c", spec["onstart"]], stdout=log, stderr=subprocess.STDOUT,
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
