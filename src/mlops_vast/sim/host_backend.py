"""What differs between the two ways vastsim builds an instance's host: the backend interface.

``HostManager`` (hosts.py) does what every host needs (its files, sshd's config, the SSH proxy,
start, stop, destroy) and asks the backend for the rest: where the host lives on the network, which
directories are its own, how its sshd is launched, how a stopped instance's files are reached, and
what must be cleaned up. ``NamespaceBackend`` (host_namespace.py, as root) and ``LoopbackBackend``
(host_loopback.py) are the two implementations.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from mlops_vast.sim.index_relay import IndexRelay


@dataclass
class HostSpec:
    """What an instance's host must look like; the market owns and persists it."""

    instance_id: int
    hostname: str
    disk_gb: float
    authorized_keys: list[str]
    gpu_spec: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    onstart: str | None = None
    direct_port: int = 22
    address: str | None = None  # namespace backend: the instance's own address
    sshd_port: int | None = None  # loopback backend: sshd's port on 127.0.0.1
    link_kbytes_per_s: float | None = None
    # Docker's -p beyond 22: (protocol, public port, container port), relayed while the instance runs.
    forwards: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class PortUse:
    """The ports another instance holds: its public ports, its SSH proxy port, its sshd port."""

    ports: dict[str, int]
    proxy_port: int | None
    sshd_port: int | None


@dataclass(frozen=True)
class WorkspaceView:
    """Where the simulator reads a running instance's /workspace (fault triggers); ``mount``: the path must
    be a mount point (namespace backend: until the instance mounted its disk there, the path is the
    machine's own /workspace)."""

    path: str
    mount: bool = False


@dataclass
class Runtime:
    """A host while the simulator runs: its spec, its directory, and the processes and servers it has."""

    spec: HostSpec
    directory: Path
    process: asyncio.subprocess.Process | None = None
    proxy: asyncio.base_events.Server | None = None
    proxy_port: int | None = None
    internet: asyncio.base_events.Server | None = None
    netns: str | None = None
    veth_host: str | None = None
    forwarder: asyncio.subprocess.Process | None = None  # loopback backend: relays the -p ports


def container_ports(keys: list[str]) -> set[int]:
    """The container side of the ``-p`` keys (``"8080/tcp"``), ``22/tcp`` aside."""
    return {int(key.split("/")[0]) for key in keys if key != "22/tcp"}


class HostBackend:
    """The hooks HostManager calls; the defaults are what a backend without the feature does."""

    mode: ClassVar[str]
    # What is the instance's own, as it sees its files; everything else is the machine's file system.
    own_dirs: ClassVar[tuple[str, ...]]

    def __init__(self, state_dir: Path, tag: str, bind_host: str = "127.0.0.1") -> None:
        self.state_dir = state_dir
        self.tag = tag
        self.bind_host = bind_host
        # Host names the simulated internet relays to a loopback server (internet.py), where there is one.
        self.forwards: dict[str, tuple[str, int]] = {}
        # The package index the simulated internet serves as pypi.vastsim (index_relay.py), where there is one.
        self.index_relay: IndexRelay | None = None

    @property
    def ssh_user(self) -> str:
        raise NotImplementedError

    def instance_dir(self, instance_id: int) -> Path:
        return self.state_dir / "instances" / str(instance_id)

    # ------------------------------------------------------------------ the network

    async def allocate(self, spec: HostSpec, taken: set[str]) -> None:
        """Give a new host its place on the network (``spec.address`` or ``spec.sshd_port``)."""
        raise NotImplementedError

    def internal_endpoint(self, spec: HostSpec) -> tuple[str, int]:
        """Where the host's sshd listens for the proxy and the boot check."""
        raise NotImplementedError

    def direct_endpoint(self, spec: HostSpec) -> tuple[str, int]:
        """Where a client reaches sshd directly (the API's ``ports["22/tcp"]``)."""
        raise NotImplementedError

    def public_address(self, address: str | None) -> str | None:
        """The API's ``public_ipaddr`` for an instance with this address (None: the simulator's own)."""
        return address

    def public_ssh_port(self, sshd_port: int | None) -> int | None:
        """The public port of ``22/tcp`` when it is sshd's own port (None: the allocated direct port)."""
        return None

    def allocate_ports(self, instance_id: int, keys: list[str], *, direct_port: int, sshd_port: int | None,
                       others: list[PortUse]) -> tuple[dict[str, int], int, int | None]:
        """Public ports for ``22/tcp`` and each ``-p`` key (``"8080/tcp"``), once for good, given the ports
        the other instances use: ``(ports, direct_port, sshd_port)``."""
        raise NotImplementedError

    async def set_link_rate(self, runtime: Runtime, kbytes_per_s: float | None) -> None:
        """Shape the host's link (only where the backend can)."""

    # ------------------------------------------------------------------ files and sshd

    async def prepare(self, runtime: Runtime) -> None:
        """The backend's own files of a host (its disk, its view of /etc), once."""

    def keys_written(self, runtime: Runtime, keys: list[str]) -> None:
        """The account's keys changed; the backend may put them where else sshd reads keys."""

    def sshd_etc(self, runtime: Runtime) -> str:
        """The host's etc/ directory as sshd sees it."""
        raise NotImplementedError

    def sshd_lines(self, runtime: Runtime) -> list[str]:
        """Where sshd listens and whom it lets in, first in its config."""
        raise NotImplementedError

    def authorized_keys_files(self, etc: str) -> str:
        return f"{etc}/authorized_keys"

    def strict_modes(self) -> bool:
        return False

    def sshd_env(self, runtime: Runtime) -> dict[str, str]:
        """Variables every login gets beyond the instance's own."""
        return {}

    def sshd_trailer(self) -> list[str]:
        """Lines last in sshd's config (a Match block runs to the end of the file)."""
        return []

    # ------------------------------------------------------------------ processes

    async def launch_argv(self, runtime: Runtime) -> list[str]:
        """Get the host ready to boot and return the command that boots it (its process group is the host)."""
        raise NotImplementedError

    async def before_launch(self, runtime: Runtime) -> None:
        """What must be up before sshd (loopback: the -p relays); HostError fails the boot."""

    async def before_stop(self, runtime: Runtime) -> None:
        """What ends before the host's process group is killed."""

    def after_stop(self, runtime: Runtime) -> None:
        """What a host leaves behind its process group (loopback: its logins' processes)."""

    async def destroy(self, runtime: Runtime) -> None:
        """Remove what the backend made for the host (its namespace, link, disk attachment)."""

    async def remove_stale(self, live: set[int]) -> None:
        """Remove this simulator's leftovers of hosts not in ``live``, e.g. after it was killed outright."""

    def workspace_view(self, runtime: Runtime) -> WorkspaceView | None:
        """Where a running host's /workspace is read from the simulator (None: nowhere now)."""
        return None

    # ------------------------------------------------------------------ a stopped instance's files

    def writeable_path(self, instance_id: int) -> str:
        """What ``view_command`` puts before the instance's paths in what it runs (and so in its output)."""
        return ""

    def has_files(self, directory: Path) -> bool:
        """Whether a stopped instance has files to show (it booted once)."""
        return directory.is_dir()

    async def view_command(self, instance_id: int, directory: Path, argv: list[str], *, paths: list[int],
                           remove: bool, env: dict[str, str]) -> tuple[list[str], str]:
        """``(argv, cwd)`` that run ``argv`` on the instance's files as it sees them; HostError refuses."""
        raise NotImplementedError
