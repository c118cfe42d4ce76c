"""PID 1 of a simulated instance (root mode): builds the instance's view, runs sshd, reaps orphans.

Started by the simulator as
``ip netns exec NS unshare --mount --uts --pid --fork --kill-child --mount-proc
--propagation private python3 instance_init.py SPEC.json``, so it already sits in the
instance's own network, mount, UTS and PID namespaces. Everything it mounts is private
to the instance and disappears with it. When it exits, the kernel kills every process
left in the PID namespace, which is what "stopping the container" means here.

Standard library only, and everything is imported before /root is covered, because the
interpreter that runs it may live under /root (pyenv).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time


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
    _mount("--bind", staged["bin"], "/usr/local/sbin")
    _mount("--bind", staged["tmp"], "/tmp")
    _mount("--bind", staged["home"], "/root")


def main() -> int:
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
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    env.update(spec.get("env", {}))
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
