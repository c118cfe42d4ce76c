"""The namespace backend (root): each instance's sshd runs in its own network namespace (a veth pair,
its own address), mount namespace (a private ``/workspace`` backed by a size-limited ext4 image,
private ``/root`` and ``/tmp``), UTS namespace (its hostname) and PID namespace (stopping the instance
kills everything in it). ``tc`` on the veth makes a slow host really slow, and a small HTTP server on
the controller side of the link is the instance's internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import stat
import sys
from pathlib import Path
from typing import Any, ClassVar

from mlops_vast.sim import instance_init, internet
from mlops_vast.sim.host_backend import HostBackend, HostSpec, PortUse, Runtime, WorkspaceView, container_ports
from mlops_vast.sim.host_os import HostError, atomic_write, run_command

log = logging.getLogger("vastsim.hosts")

# RFC 2544 benchmarking range: never routed on the internet, unlikely to clash with a real LAN.
HOST_NETWORK = ipaddress.ip_network("198.18.0.0/15")
NETNS_PREFIX = "vastsim-"
SSHD = "/usr/sbin/sshd"
# The account `vastai copy` logs in as for its rsync daemon (root's uid, in the instance only).
COPY_USER = "vastai_kaalia"
RSYNCD_CONF = """\
# vastsim: the rsync daemon `vastai copy` reaches over SSH as vastai_kaalia.
uid = root
gid = root
use chroot = no
munge symlinks = no
read only = no
list = no
log file = /run/vastsim/rsyncd.log
"""
# The most bytes of an instance's /root/.ssh/authorized_keys the simulator reads.
MAX_AUTHORIZED_KEYS_BYTES = 1 << 20


def available() -> bool:
    tools = ("ip", "unshare", "mount", "mkfs.ext4", "tc")
    return os.geteuid() == 0 and os.path.exists(SSHD) and all(shutil.which(tool) for tool in tools)


def init_argv(spec_path: Path) -> list[str]:
    """instance_init.py on ``spec_path`` in fresh private mount, UTS and PID namespaces."""
    Path("/workspace").mkdir(exist_ok=True)  # the mount points it uses
    Path("/run/vastsim").mkdir(parents=True, exist_ok=True)
    # The interpreter must be visible inside the instance, where /root is private (pyenv lives there).
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
    return ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private", python, "-I", instance_init.__file__, str(spec_path)]


class NamespaceBackend(HostBackend):
    mode: ClassVar[str] = "namespace"
    own_dirs: ClassVar[tuple[str, ...]] = ("/workspace", "/root", "/tmp")

    @property
    def ssh_user(self) -> str:
        return "root"

    def netns_name(self, instance_id: int) -> str:
        return f"{NETNS_PREFIX}{self.tag}-{instance_id}"

    def veth_names(self, instance_id: int) -> tuple[str, str]:
        # Interface names are limited to 15 characters.
        suffix = str(instance_id)[-8:]
        return f"vs{self.tag}h{suffix}", f"vs{self.tag}c{suffix}"

    # ------------------------------------------------------------------ the network

    async def allocate(self, spec: HostSpec, taken: set[str]) -> None:
        if spec.address:
            return
        used = await self._addresses_in_use()
        # The /30s of HOST_NETWORK by index, without materialising all 32768 of them (that took
        # ~0.1 s of event-loop time per new instance): subnet i is base + 4i, its hosts +1 and +2.
        base = int(HOST_NETWORK.network_address)
        count = HOST_NETWORK.num_addresses // 4
        start = (int(self.tag, 16) * 7 + spec.instance_id) % count
        for offset in range(count):
            network = base + 4 * ((start + offset) % count)
            host_ip = str(ipaddress.IPv4Address(network + 1))
            instance_ip = str(ipaddress.IPv4Address(network + 2))
            if host_ip not in used and instance_ip not in used and instance_ip not in taken:
                spec.address = instance_ip
                return
        raise HostError("no free /30 left in 198.18.0.0/15 for a new instance")

    async def _addresses_in_use(self) -> set[str]:
        out = await run_command("ip", "-4", "-o", "addr", "show", check=False)
        return {part.split("/")[0] for line in out.splitlines() for part in line.split() if "/" in part}

    def internal_endpoint(self, spec: HostSpec) -> tuple[str, int]:
        assert spec.address is not None
        return spec.address, 22

    def direct_endpoint(self, spec: HostSpec) -> tuple[str, int]:
        assert spec.address is not None
        return spec.address, spec.direct_port

    def allocate_ports(self, instance_id: int, keys: list[str], *, direct_port: int, sshd_port: int | None,
                       others: list[PortUse]) -> tuple[dict[str, int], int, int | None]:
        """Each instance listens on its own address, so its ports need only be distinct within it: sshd's
        direct port, then the ports after it, skipping the instance's container ports (bound on the same
        address)."""
        container = container_ports(keys)
        port = direct_port
        if port + len(keys) + len(container) > 65_535:
            port = 40_000  # room for every port, even with each container port in the way
        while port in container:
            port += 1
        ports = {"22/tcp": port}
        first = port
        for key in keys[1:]:
            port += 1
            while port in container:
                port += 1
            ports[key] = port
        return ports, first, sshd_port

    async def _ensure_netns(self, runtime: Runtime) -> None:
        spec = runtime.spec
        name = self.netns_name(spec.instance_id)
        veth_host, veth_peer = self.veth_names(spec.instance_id)
        runtime.netns, runtime.veth_host = name, veth_host
        existing = (await run_command("ip", "netns", "list", check=False)).split()
        if name in existing:
            await self._ensure_internet(runtime)
            return
        assert spec.address is not None
        instance_ip = ipaddress.ip_address(spec.address)
        host_ip = instance_ip - 1
        await run_command("ip", "netns", "add", name)
        try:
            await run_command("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_peer)
            await run_command("ip", "link", "set", veth_peer, "netns", name)
            await run_command("ip", "addr", "add", f"{host_ip}/30", "dev", veth_host)
            await run_command("ip", "link", "set", veth_host, "up")
            await run_command("ip", "-n", name, "addr", "add", f"{instance_ip}/30", "dev", veth_peer)
            await run_command("ip", "-n", name, "link", "set", veth_peer, "up")
            await run_command("ip", "-n", name, "link", "set", "lo", "up")
            # Instances reach the controller side of their link only: no default route, no internet.
        except HostError:
            await run_command("ip", "netns", "delete", name, check=False)
            await run_command("ip", "link", "delete", veth_host, check=False)
            raise
        await self.set_link_rate(runtime, spec.link_kbytes_per_s)
        await self._ensure_internet(runtime)

    async def _ensure_internet(self, runtime: Runtime) -> None:
        """The simulated internet on the controller side of this instance's link (port 80)."""
        if runtime.internet is not None or not runtime.spec.address:
            return
        gateway = str(ipaddress.ip_address(runtime.spec.address) - 1)
        try:
            runtime.internet = await internet.serve(gateway, forwards=self.forwards, index=self.index_relay)
        except OSError as exc:
            log.warning("instance %s: no simulated internet at %s: %s", runtime.spec.instance_id, gateway, exc)

    async def set_link_rate(self, runtime: Runtime, kbytes_per_s: float | None) -> None:
        """Shape the instance's link both ways with tbf."""
        if runtime.netns is None:
            return
        _, veth_peer = self.veth_names(runtime.spec.instance_id)
        targets = [("ip", "netns", "exec", runtime.netns, "tc", "qdisc", "{op}", "dev", veth_peer),
                   ("tc", "qdisc", "{op}", "dev", runtime.veth_host)]
        for target in targets:
            if kbytes_per_s is None:
                await run_command(*[part.replace("{op}", "del") for part in target], "root", check=False)
                continue
            rate_bytes = kbytes_per_s * 1000
            burst = max(4096, int(rate_bytes / 100))
            await run_command(*[part.replace("{op}", "replace") for part in target], "root", "tbf",
                              "rate", f"{int(rate_bytes * 8)}bit", "burst", str(burst), "latency", "100ms")

    # ------------------------------------------------------------------ files and sshd

    async def prepare(self, runtime: Runtime) -> None:
        spec, directory = runtime.spec, runtime.directory
        image = directory / "disk.img"
        if not image.exists():
            with open(image, "wb") as handle:
                handle.truncate(max(int(spec.disk_gb * 1e9), 64 * 1024 * 1024))
            await run_command("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                              "-E", "lazy_itable_init=1", str(image))
        if spec.address:
            gateway = str(ipaddress.ip_address(spec.address) - 1)
            atomic_write(directory / "etc" / "hosts", internet.hosts_file(_machine_hosts(), gateway), mode=0o644)
        # `vastai copy` with a local side runs `rsync -e ssh vastai_kaalia@ADDR::C.<id>/<path>`: an rsync
        # daemon over SSH as Vast's copy user, whose modules are the instance's file system.
        passwd = Path("/etc/passwd").read_text()
        if not any(line.startswith(f"{COPY_USER}:") for line in passwd.splitlines()):
            passwd = passwd.rstrip("\n") + f"\n{COPY_USER}:x:0:0:vastai copy:/root:/bin/sh\n"
        atomic_write(directory / "etc" / "passwd", passwd, mode=0o644)
        modules = "".join(f"[{name}]\n    path = /\n" for name in (f"C.{spec.instance_id}", spec.instance_id))
        atomic_write(directory / "etc" / "rsyncd.conf", RSYNCD_CONF + modules, mode=0o644)

    def keys_written(self, runtime: Runtime, keys: list[str]) -> None:
        try:
            self.seed_root_keys(runtime, keys)
        except OSError as exc:  # e.g. the instance is being destroyed; etc/authorized_keys still holds them
            log.warning("instance %s: cannot update /root/.ssh/authorized_keys: %s", runtime.spec.instance_id, exc)

    def seed_root_keys(self, runtime: Runtime, keys: list[str]) -> None:
        """Put the instance's keys in its ``/root/.ssh/authorized_keys`` too, as Vast does.

        The user's own lines there (``ssh-copy-id``) are kept; a key vastsim put there and the
        account no longer has is taken out again. ``etc/seeded_keys`` remembers which ones it put.

        The instance (root inside) owns ``/root``: every step goes through directory descriptors
        opened without following symlinks, so a link planted there cannot redirect the write.
        """
        instance_id = runtime.spec.instance_id
        record = runtime.directory / "etc" / "seeded_keys"
        try:
            seeded = set(json.loads(record.read_text()))
        except (OSError, ValueError):
            seeded = set()
        wanted = [" ".join(key.split()) for key in keys if key.strip()]
        no_follow = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        home_fd = os.open(runtime.directory / "home", no_follow)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(".ssh", 0o700, dir_fd=home_fd)
            try:
                ssh_fd = os.open(".ssh", no_follow, dir_fd=home_fd)
            except OSError as exc:  # ELOOP or ENOTDIR: a symlink or a file
                log.warning("instance %s: /root/.ssh is not a directory (%s); not seeding authorized_keys",
                            instance_id, exc.strerror)
                return
        finally:
            os.close(home_fd)
        try:
            try:
                fd = os.open("authorized_keys", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=ssh_fd)
            except FileNotFoundError:
                current, mode = None, 0o600
            except OSError as exc:  # a symlink
                log.warning("instance %s: /root/.ssh/authorized_keys is not a file (%s); not seeding it",
                            instance_id, exc.strerror)
                return
            else:
                with os.fdopen(fd, "rb") as handle:
                    info = os.fstat(handle.fileno())
                    data = handle.read(MAX_AUTHORIZED_KEYS_BYTES + 1) if stat.S_ISREG(info.st_mode) else None
                if data is None or len(data) > MAX_AUTHORIZED_KEYS_BYTES:
                    log.warning("instance %s: /root/.ssh/authorized_keys is not a regular file of at most %d "
                                "bytes; not seeding it", instance_id, MAX_AUTHORIZED_KEYS_BYTES)
                    return
                current = data.decode(errors="replace").splitlines()
                mode = stat.S_IMODE(info.st_mode)  # the user's chmod stays, as with `>>`
            revoked = seeded - set(wanted)
            kept = [line for line in current or [] if " ".join(line.split()) not in revoked]
            present = {" ".join(line.split()) for line in kept}
            lines = kept + [key for key in wanted if key not in present]
            if lines != current:
                atomic_write("authorized_keys", "".join(line + "\n" for line in lines), mode=mode, dir_fd=ssh_fd)
        finally:
            os.close(ssh_fd)
        atomic_write(record, json.dumps(wanted))

    def sshd_etc(self, runtime: Runtime) -> str:
        return "/run/vastsim/etc"

    def sshd_lines(self, runtime: Runtime) -> list[str]:
        spec = runtime.spec
        return ["Port 22", f"Port {spec.direct_port}" if spec.direct_port != 22 else "",
                "ListenAddress 0.0.0.0", "PermitRootLogin prohibit-password"]

    def authorized_keys_files(self, etc: str) -> str:
        # The instance's /root is private: users add keys there (ssh-copy-id) as on Vast.
        return f"{etc}/authorized_keys .ssh/authorized_keys"

    def strict_modes(self) -> bool:
        # sshd checks modes like a stock one (~/.ssh and authorized_keys). That needs /run/vastsim/etc's
        # parents to be root's and not group/world writable.
        for parent in ("/", "/run"):
            info = os.stat(parent)
            if info.st_uid != 0 or info.st_mode & 0o022:
                return False
        return True

    def sshd_trailer(self) -> list[str]:
        return [f"Match User {COPY_USER}",
                "    ForceCommand rsync --server --daemon --config=/run/vastsim/etc/rsyncd.conf ."]

    # ------------------------------------------------------------------ processes

    def view_spec(self, directory: Path, hostname: str) -> dict[str, Any]:
        """What instance_init.py needs to build an instance's view."""
        return {
            "hostname": hostname,
            "disk_image": str(directory / "disk.img"),
            "etc_dir": str(directory / "etc"),
            "bin_dir": str(directory / "bin"),
            "tmp_dir": str(directory / "tmp"),
            "home_dir": str(directory / "home"),
            # Instances share the machine's file system: they must not read the simulator's keys.
            "hide": [str(self.state_dir.resolve())],
        }

    async def wait_disk_released(self, directory: Path) -> None:
        # A stopped instance's mount namespace may still be unwinding; never mount one image twice.
        image = str(directory / "disk.img")
        for _ in range(100):
            if not (await run_command("losetup", "-j", image, check=False)).strip():
                return
            await asyncio.sleep(0.05)
        raise HostError(f"disk image {image} is still attached after the previous run")

    async def launch_argv(self, runtime: Runtime) -> list[str]:
        await self._ensure_netns(runtime)
        await self.wait_disk_released(runtime.directory)
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        spec_path = runtime.directory / "etc" / "init.json"
        atomic_write(spec_path, json.dumps({
            **self.view_spec(runtime.directory, runtime.spec.hostname),
            "env": runtime.spec.env,
            "onstart": runtime.spec.onstart,
            # Docker's -p: public ports on every address, relayed to the container port on its own.
            "forwards": {"listen": "0.0.0.0", "target": runtime.spec.address, "ports": runtime.spec.forwards},
        }))
        return ["ip", "netns", "exec", runtime.netns or "", *init_argv(spec_path)]

    def workspace_view(self, runtime: Runtime) -> WorkspaceView | None:
        # `ip netns exec` execs unshare, which moved itself into the instance's mount namespace before it
        # forked PID 1: its root is the instance's view of the machine, /workspace its own disk once mounted.
        if runtime.process is None or runtime.process.returncode is not None:
            return None
        return WorkspaceView(f"/proc/{runtime.process.pid}/root/workspace", mount=True)

    async def destroy(self, runtime: Runtime) -> None:
        instance_id = runtime.spec.instance_id
        await run_command("ip", "netns", "delete", self.netns_name(instance_id), check=False)
        await run_command("ip", "link", "delete", self.veth_names(instance_id)[0], check=False)
        with contextlib.suppress(HostError):
            await self.wait_disk_released(runtime.directory)

    async def remove_stale(self, live: set[int]) -> None:
        prefix = f"{NETNS_PREFIX}{self.tag}-"
        for name in (await run_command("ip", "netns", "list", check=False)).split():
            if name.startswith(prefix):
                # Deleting a namespace's name does not end what runs in it: an instance's sshd would go on serving.
                for pid in (await run_command("ip", "netns", "pids", name, check=False)).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                await run_command("ip", "netns", "delete", name, check=False)
        links = await run_command("ip", "-o", "link", "show", check=False)
        for line in links.splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                name = parts[1].strip().split("@")[0]
                if name.startswith(f"vs{self.tag}"):
                    await run_command("ip", "link", "delete", name, check=False)

    # ------------------------------------------------------------------ a stopped instance's files

    def has_files(self, directory: Path) -> bool:
        return directory.is_dir() and (directory / "disk.img").exists()

    async def view_command(self, instance_id: int, directory: Path, argv: list[str], *, paths: list[int],
                           remove: bool, env: dict[str, str]) -> tuple[list[str], str]:
        """In fresh private namespaces with the instance's view (instance_init.py, ``exec``)."""
        await self.wait_disk_released(directory)
        spec_path = directory / "etc" / "execute.json"
        atomic_write(spec_path, json.dumps({
            **self.view_spec(directory, f"C.{instance_id}"), "env": env,
            "exec": {"argv": argv, "paths": paths, "roots": list(self.own_dirs), "remove": remove,
                     "cwd": "/workspace"},
        }))
        return ["unshare", "--net", *init_argv(spec_path)], "/"


def _machine_hosts() -> str:
    try:
        return Path("/etc/hosts").read_text()
    except OSError:
        return "127.0.0.1 localhost\n"
