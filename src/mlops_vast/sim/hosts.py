"""Real SSH hosts behind simulated instances.

``HostManager`` builds, starts, stops and removes them; what differs by privilege is its backend
(host_backend.py): ``namespace`` as root (host_namespace.py: network, mount, UTS and PID namespaces, an
ext4 ``/workspace``, ``tc``), ``loopback`` otherwise (host_loopback.py: sshd on a loopback port).

Either way the simulator also listens on a loopback "proxy" port per instance and forwards it to the
instance's sshd, like Vast's ``sshN.vast.ai`` proxies, and a host's ``-p`` ports are relayed from their
public port to the container port, like Docker's ``-p``; a port that cannot be bound fails the boot.

Instances can write some of the directories the simulator writes (``bin/`` is their
``/usr/local/sbin``, ``home/`` their ``/root``): writes there never follow a symlink
(``host_os.atomic_write``), and ``etc/`` is read-only inside the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlops_vast.sim import host_namespace, nvidia_smi
from mlops_vast.sim.host_backend import HostBackend, HostSpec, PortUse, Runtime, WorkspaceView
from mlops_vast.sim.host_loopback import LoopbackBackend
from mlops_vast.sim.host_namespace import NamespaceBackend
from mlops_vast.sim.host_os import (
    HostError,
    atomic_write,
    die_with_parent,
    open_log,
    pipe,
    run_command,
    tail_text,
    wait_for_ssh_banner,
)

log = logging.getLogger("vastsim.hosts")

__all__ = ["BACKENDS", "HostError", "HostManager", "HostSpec", "PortUse", "Runtime", "state_tag"]

BACKENDS: dict[str, type[HostBackend]] = {"namespace": NamespaceBackend, "loopback": LoopbackBackend}


def default_mode() -> str:
    return "namespace" if host_namespace.available() else "loopback"


def state_tag(state_dir: Path) -> str:
    """A short tag from the state directory: it keeps two simulators' interfaces and namespaces apart."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:4]


class HostManager:
    """Creates, starts, stops and removes the real hosts of simulated instances."""

    def __init__(self, state_dir: Path, *, bind_host: str = "127.0.0.1", mode: str | None = None) -> None:
        self.state_dir = state_dir
        self.bind_host = bind_host
        self.tag = state_tag(state_dir)
        self.backend: HostBackend = BACKENDS[mode or default_mode()](state_dir, self.tag, bind_host)
        self._runtimes: dict[int, Runtime] = {}

    @property
    def mode(self) -> str:
        return self.backend.mode

    @property
    def ssh_user(self) -> str:
        return self.backend.ssh_user

    @property
    def own_dirs(self) -> tuple[str, ...]:
        """The directories whose files are the instance's own, as it sees them; the rest is the machine's."""
        return self.backend.own_dirs

    def instance_dir(self, instance_id: int) -> Path:
        return self.backend.instance_dir(instance_id)

    def writeable_path(self, instance_id: int) -> str:
        return self.backend.writeable_path(instance_id)

    def workspace_view(self, instance_id: int) -> WorkspaceView | None:
        """Where the simulator reads a running instance's /workspace (None when its host is not running)."""
        runtime = self._runtimes.get(instance_id)
        if runtime is None or not self.is_running(instance_id):
            return None
        return self.backend.workspace_view(runtime)

    @property
    def forwards(self) -> dict[str, tuple[str, int]]:
        """Host names the instances' simulated internet relays to a loopback server (namespace backend)."""
        return self.backend.forwards

    # ------------------------------------------------------------- allocation

    async def allocate(self, spec: HostSpec) -> None:
        """Give a new instance its place on the network (its address, or its sshd port)."""
        await self.backend.allocate(spec, {rt.spec.address for rt in self._runtimes.values() if rt.spec.address})

    # --------------------------------------------------------------- prepare

    async def prepare(self, spec: HostSpec) -> None:
        """Create the instance's files once: host key, disk, config. Idempotent."""
        directory = self.instance_dir(spec.instance_id)
        runtime = self._runtimes.get(spec.instance_id) or Runtime(spec=spec, directory=directory)
        runtime.spec = spec
        self._runtimes[spec.instance_id] = runtime
        for sub in ("etc", "bin", "home", "tmp", "workspace"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "tmp").chmod(0o1777)
        (directory / "home").chmod(0o700)
        # sshd's StrictModes checks every directory above an authorized_keys file (here /run/vastsim/etc).
        (directory / "etc").chmod(0o755)
        host_key = directory / "etc" / "ssh_host_ed25519_key"
        if not host_key.exists():
            await run_command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", spec.hostname, "-f", str(host_key))
        await self.backend.prepare(runtime)
        smi = directory / "bin" / "nvidia-smi"
        if not os.path.lexists(smi):  # bin/ is the instance's /usr/local/sbin: never write through its links
            # The interpreter must be visible inside the instance, where /root is private.
            python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "/usr/bin/env python3"
            source = Path(nvidia_smi.__file__).read_text()
            atomic_write(smi, f"#!{python}\n" + source, mode=0o755)
        self.write_gpu_spec(spec.instance_id, spec.gpu_spec)
        self.write_authorized_keys(spec.instance_id, spec.authorized_keys)
        self._write_sshd_config(runtime)

    def write_gpu_spec(self, instance_id: int, gpu_spec: dict[str, Any]) -> None:
        runtime = self._runtimes.get(instance_id)
        if runtime is None:
            return  # not booted yet: prepare() writes the spec the market computes then
        runtime.spec.gpu_spec = gpu_spec
        atomic_write(runtime.directory / "bin" / "nvidia-smi.json", json.dumps(gpu_spec, indent=1))

    def write_authorized_keys(self, instance_id: int, keys: list[str]) -> None:
        """Rewrite the keys sshd accepts; running sshds read the file at each login."""
        runtime = self._runtimes.get(instance_id)
        if runtime is None:
            return
        runtime.spec.authorized_keys = list(keys)
        path = runtime.directory / "etc" / "authorized_keys"
        atomic_write(path, "".join(key.strip() + "\n" for key in keys), mode=0o600)
        self.backend.keys_written(runtime, keys)

    def _write_sshd_config(self, runtime: Runtime) -> None:
        backend, spec = self.backend, runtime.spec
        etc = backend.sshd_etc(runtime)
        lines = [
            *backend.sshd_lines(runtime),
            f"HostKey {etc}/ssh_host_ed25519_key",
            f"AuthorizedKeysFile {backend.authorized_keys_files(etc)}",
            "PidFile none",
            f"StrictModes {'yes' if backend.strict_modes() else 'no'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PrintMotd no",
            "MaxStartups 200:30:400",
            "MaxSessions 64",
            "Subsystem sftp internal-sftp",
        ]
        pairs = []
        for key, value in {**spec.env, **backend.sshd_env(runtime)}.items():
            if '"' in value or "\n" in value or "\\" in value:
                log.warning("instance %s: env %s not passed to sshd (quotes/newlines)", spec.instance_id, key)
                continue
            pairs.append(f'"{key}={value}"')
        if pairs:
            # sshd keeps only the first SetEnv line, so every variable goes on one.
            lines.append("SetEnv " + " ".join(pairs))
        lines += backend.sshd_trailer()
        atomic_write(runtime.directory / "etc" / "sshd_config", "\n".join(x for x in lines if x) + "\n")

    # ---------------------------------------------------------------- network

    async def set_link_rate(self, instance_id: int, kbytes_per_s: float | None) -> None:
        """Shape the instance's link both ways (where the backend can)."""
        runtime = self._runtimes[instance_id]
        runtime.spec.link_kbytes_per_s = kbytes_per_s
        await self.backend.set_link_rate(runtime, kbytes_per_s)

    def internal_endpoint(self, instance_id: int) -> tuple[str, int]:
        return self.backend.internal_endpoint(self._runtimes[instance_id].spec)

    def direct_endpoint(self, instance_id: int) -> tuple[str, int]:
        return self.backend.direct_endpoint(self._runtimes[instance_id].spec)

    # ------------------------------------------------------------- processes

    def is_running(self, instance_id: int) -> bool:
        runtime = self._runtimes.get(instance_id)
        return bool(runtime and runtime.process and runtime.process.returncode is None)

    def needs_stop(self, instance_id: int) -> bool:
        """Whether ``stop`` has something to end: a live sshd, or what a sshd that died on its own left
        (its port forwarder, in loopback mode its logins' processes)."""
        runtime = self._runtimes.get(instance_id)
        return bool(runtime and (runtime.process is not None or runtime.forwarder is not None))

    async def start(self, instance_id: int, timeout: float = 20.0) -> None:
        """Boot the instance's sshd and return once it answers with an SSH banner."""
        runtime = self._runtimes[instance_id]
        if self.is_running(instance_id):
            return
        self._write_sshd_config(runtime)
        argv = await self.backend.launch_argv(runtime)
        try:
            await self.backend.before_launch(runtime)
            log_fd = open_log(runtime.directory / "etc" / "host.log")
            try:
                runtime.process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                    preexec_fn=die_with_parent, start_new_session=True,
                )
            finally:
                os.close(log_fd)
        except BaseException:
            await self.stop(instance_id)  # nothing started for the boot may outlive its failure
            raise
        host, port = self.internal_endpoint(instance_id)
        if not await wait_for_ssh_banner(host, port, timeout, runtime.process):
            tail = tail_text(runtime.directory / "etc" / "host.log")
            code = runtime.process.returncode
            await self.stop(instance_id)
            what = f"sshd did not answer on {host}:{port}" if code is None else f"the host exited ({code}) at boot"
            raise HostError(f"instance {instance_id}: {what}: {tail}")

    async def run_in_view(self, instance_id: int, argv: list[str], *, paths: list[int], remove: bool,
                          timeout: float, proceed: Callable[[], str | None] | None = None) -> bytes:
        """Run one command on a stopped instance's files, where it has them; returns its stdout and stderr.

        ``argv`` names the files as the instance sees them; ``paths`` are the indices of its path
        operands (absolute, normalised), which must be the instance's own once their symlinks are
        resolved (``instance_init.confine``, where the command runs, right before it runs): inside
        ``own_dirs``, whole for ``ls``/``du``, up to the last component for ``rm`` (``remove``). It runs
        without a shell in /workspace (the backend says how), once ``proceed``, asked right before, has no
        objection.

        Raises HostError when it does not run, TimeoutError (once it is killed) when it runs too long.
        """
        if self.is_running(instance_id):
            raise HostError("the instance is running")
        directory = self.instance_dir(instance_id).resolve()
        if not self.backend.has_files(directory):
            return b""  # never booted: nothing is on its disk yet
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        run, cwd = await self.backend.view_command(instance_id, directory, argv, paths=paths, remove=remove, env=env)
        refusal = proceed() if proceed is not None else None
        if refusal is not None:
            raise HostError(refusal)
        process = await asyncio.create_subprocess_exec(
            *run, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=die_with_parent, start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        return out

    async def stop(self, instance_id: int) -> None:
        """Kill the instance's processes (its whole process group: the host)."""
        runtime = self._runtimes.get(instance_id)
        if runtime is None:
            return
        await self.backend.before_stop(runtime)
        if runtime.process is None:
            return
        process = runtime.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
        self.backend.after_stop(runtime)
        runtime.process = None

    # ------------------------------------------------------------------ proxy

    async def open_proxy(self, instance_id: int, port: int | None = None) -> int:
        """Listen on a loopback port that forwards to the instance's sshd (Vast's SSH proxy)."""
        runtime = self._runtimes[instance_id]
        if runtime.proxy is not None:
            return runtime.proxy_port or 0

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            host, target_port = self.internal_endpoint(instance_id)
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, target_port), 5)
            except (OSError, TimeoutError):
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        try:
            server = await asyncio.start_server(forward, self.bind_host, port or 0, reuse_address=True)
        except OSError:
            server = await asyncio.start_server(forward, self.bind_host, 0, reuse_address=True)
        runtime.proxy = server
        runtime.proxy_port = int(server.sockets[0].getsockname()[1])
        return runtime.proxy_port

    # --------------------------------------------------------------- removal

    async def destroy(self, instance_id: int) -> None:
        """Stop the host and remove its namespace, link and files."""
        runtime = self._runtimes.get(instance_id)
        if runtime is None:
            shutil.rmtree(self.instance_dir(instance_id), ignore_errors=True)
            return
        await self.stop(instance_id)
        await self._close_servers(runtime)
        await self.backend.destroy(runtime)
        self._runtimes.pop(instance_id, None)
        shutil.rmtree(runtime.directory, ignore_errors=True)

    async def _close_servers(self, runtime: Runtime) -> None:
        for server in (runtime.proxy, runtime.internet):
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)
        runtime.proxy = runtime.internet = None

    async def shutdown(self) -> None:
        """Stop every host and remove every namespace and link; files stay for a restart."""
        for instance_id, runtime in list(self._runtimes.items()):
            await self.stop(instance_id)
            await self._close_servers(runtime)
        await self.remove_stale_namespaces()

    async def remove_stale_namespaces(self) -> None:
        """Remove this simulator's namespaces, links and processes, e.g. after it was killed outright."""
        await self.backend.remove_stale(set(self._runtimes))
