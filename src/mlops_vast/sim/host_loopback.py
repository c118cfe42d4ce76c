"""The loopback backend (no root needed): each instance's ``sshd`` runs as the current user on a loopback
port, with a workspace directory of its own. No private mounts, no link shaping, no PID namespace (its
processes are found by a marker in their environment), and the SSH user is the current user.

Every instance shares 127.0.0.1, so each gets a block of consecutive public ports that are nobody
else's, sshd's first, and a helper process relays its ``-p`` ports as Docker's ``-p`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from pathlib import Path
from typing import ClassVar

from mlops_vast.sim import instance_init
from mlops_vast.sim.host_backend import HostBackend, HostSpec, PortUse, Runtime, WorkspaceView, container_ports
from mlops_vast.sim.host_os import HostError, atomic_write, die_with_parent, free_port, free_port_block, open_log

SSHD = "/usr/sbin/sshd"


class LoopbackBackend(HostBackend):
    mode: ClassVar[str] = "loopback"
    own_dirs: ClassVar[tuple[str, ...]] = ("/workspace",)

    @property
    def ssh_user(self) -> str:
        return getpass.getuser()

    # ------------------------------------------------------------------ the network

    async def allocate(self, spec: HostSpec, taken: set[str]) -> None:
        spec.sshd_port = spec.sshd_port or free_port()

    def internal_endpoint(self, spec: HostSpec) -> tuple[str, int]:
        assert spec.sshd_port is not None
        return "127.0.0.1", spec.sshd_port

    direct_endpoint = internal_endpoint

    def public_address(self, address: str | None) -> str | None:
        return "127.0.0.1"

    def public_ssh_port(self, sshd_port: int | None) -> int | None:
        return sshd_port

    def allocate_ports(self, instance_id: int, keys: list[str], *, direct_port: int, sshd_port: int | None,
                       others: list[PortUse]) -> tuple[dict[str, int], int, int | None]:
        """A block of consecutive ports that are nobody else's and free now, outside the kernel's ephemeral
        range (where free_port() picks sshd and proxy ports); sshd listens on the first."""
        # Container ports too, this instance's and everyone's: on the shared 127.0.0.1 a public port equal to
        # one would relay to itself, or keep the app from binding its own port.
        taken: set[int] = set(container_ports(keys))
        for other in others:
            taken.update(other.ports.values())
            taken.update(container_ports(list(other.ports)))
            # The proxy serves SSH one port above ssh_port for jupyter runtypes.
            taken.update(p + bump for p in (other.proxy_port, other.sshd_port) if p for bump in (0, 1))
        hint = int(self.tag, 16) * 7919 + instance_id * 16
        if sshd_port:  # allocated before ports were kept: sshd keeps its port
            first = free_port_block(len(keys) - 1, avoid=taken, hint=hint) if len(keys) > 1 else 0
            return ({"22/tcp": sshd_port, **{key: first + index for index, key in enumerate(keys[1:])}},
                    direct_port, sshd_port)
        first = free_port_block(len(keys), avoid=taken, hint=hint)
        return {key: first + index for index, key in enumerate(keys)}, first, first

    # ------------------------------------------------------------------ files and sshd

    def sshd_etc(self, runtime: Runtime) -> str:
        return str(runtime.directory / "etc")

    def sshd_lines(self, runtime: Runtime) -> list[str]:
        return [f"Port {runtime.spec.sshd_port}", "ListenAddress 127.0.0.1"]

    def sshd_env(self, runtime: Runtime) -> dict[str, str]:
        # No private mounts here, so nvidia-smi comes first on PATH instead; the marker finds the processes.
        return {"PATH": f"{runtime.directory / 'bin'}:/usr/local/bin:/usr/bin:/bin",
                "VASTSIM_WORKSPACE": str(runtime.directory / "workspace")}

    # ------------------------------------------------------------------ processes

    async def launch_argv(self, runtime: Runtime) -> list[str]:
        return [SSHD, "-D", "-e", "-f", str(runtime.directory / "etc" / "sshd_config")]

    async def before_launch(self, runtime: Runtime) -> None:
        if runtime.spec.forwards:
            # Before sshd: a -p port that cannot be bound fails the boot (HostError) with nothing started.
            await self._start_forwarder(runtime)

    async def _start_forwarder(self, runtime: Runtime, timeout: float = 10.0) -> None:
        """Relay 127.0.0.1:<public port> to 127.0.0.1:<container port> (Docker's -p).

        Returns once every port is bound; HostError (and no forwarder) when one cannot be.
        """
        await self._stop_forwarder(runtime)
        spec_path = runtime.directory / "etc" / "forwards.json"
        atomic_write(spec_path, json.dumps({"listen": "127.0.0.1", "target": "127.0.0.1",
                                            "ports": runtime.spec.forwards}))
        # The marker lets kill_leftovers find it after a crash, like the instance's processes.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "VASTSIM_WORKSPACE": str(runtime.directory / "workspace")}
        log_fd = open_log(runtime.directory / "etc" / "host.log")
        try:
            runtime.forwarder = forwarder = await asyncio.create_subprocess_exec(
                sys.executable, "-I", instance_init.__file__, "--forward", str(spec_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_fd, env=env,
                preexec_fn=die_with_parent, start_new_session=True,
            )
        finally:
            os.close(log_fd)
        assert forwarder.stdout is not None
        try:
            answer = (await asyncio.wait_for(forwarder.stdout.readline(), timeout)).decode(errors="replace").strip()
        except TimeoutError:
            answer = f"no answer within {timeout:g} s"
        if answer != "ready":
            await self._stop_forwarder(runtime)
            raise HostError(f"instance {runtime.spec.instance_id}: {answer or 'the port forwarder exited'}")

    async def _stop_forwarder(self, runtime: Runtime) -> None:
        forwarder, runtime.forwarder = runtime.forwarder, None
        if forwarder is not None and forwarder.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                forwarder.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(forwarder.wait(), 10)

    async def before_stop(self, runtime: Runtime) -> None:
        await self._stop_forwarder(runtime)

    def after_stop(self, runtime: Runtime) -> None:
        kill_leftovers(runtime.directory)

    def workspace_view(self, runtime: Runtime) -> WorkspaceView | None:
        return WorkspaceView(str(runtime.directory / "workspace"))

    async def remove_stale(self, live: set[int]) -> None:
        # No PID namespace: an instance's processes may have outlived a crash of the simulator.
        for directory in (self.state_dir / "instances").glob("*"):
            if directory.name.isdigit() and int(directory.name) not in live:
                kill_leftovers(directory)

    # ------------------------------------------------------------------ a stopped instance's files

    def writeable_path(self, instance_id: int) -> str:
        return str(self.instance_dir(instance_id).resolve())

    async def view_command(self, instance_id: int, directory: Path, argv: list[str], *, paths: list[int],
                           remove: bool, env: dict[str, str]) -> tuple[list[str], str]:
        """On the machine, /workspace being the instance's workspace directory."""
        workspace, run = str(directory / "workspace"), list(argv)
        for index in paths:
            if run[index] != "/workspace" and not run[index].startswith("/workspace/"):
                raise HostError(f"refused: {run[index]} is not the instance's own (inside /workspace).")
            run[index] = workspace + run[index][len("/workspace"):]
        refusal = instance_init.confine(run, paths, [workspace], remove)
        if refusal is not None:
            raise HostError(refusal)
        return run, workspace


def kill_leftovers(directory: Path) -> None:
    """No PID namespace here: find the instance's leftover processes by the marker in their environment."""
    marker = f"VASTSIM_WORKSPACE={directory / 'workspace'}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
