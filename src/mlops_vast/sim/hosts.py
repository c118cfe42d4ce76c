"""Real SSH hosts behind simulated instances.

Two modes, chosen by privilege:

* ``namespace`` (root): each instance is an OpenSSH ``sshd`` inside its own network
  namespace (a veth pair, its own address), mount namespace (private ``/workspace``
  backed by a size-limited ext4 image, private ``/root`` and ``/tmp``), UTS namespace
  (hostname) and PID namespace (stopping the instance kills everything in it).
  ``tc`` on the veth makes a slow host really slow.
* ``loopback`` (not root): ``sshd`` runs as the current user on a loopback port with
  a per-instance workspace directory. No private mounts, no link shaping, and the
  SSH user is the current user instead of ``root``.

In both modes the simulator also listens on a loopback "proxy" port per instance and
forwards it to the instance's sshd, like Vast's ``sshN.vast.ai`` proxies. The ``-p`` ports of a
direct instance are relayed from their public port to the container port, like Docker's ``-p``
(by the instance's init in namespace mode, by a helper process in loopback mode); a port that
cannot be bound fails the boot.

Instances can write some of the directories the simulator writes (``bin/`` is their
``/usr/local/sbin``, ``home/`` their ``/root``): writes there never follow a symlink
(``_atomic_write``), and ``etc/`` is read-only inside the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import getpass
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops_vast.sim import instance_init, internet, nvidia_smi

log = logging.getLogger("vastsim.hosts")

# RFC 2544 benchmarking range: never routed on the internet, unlikely to clash with a real LAN.
HOST_NETWORK = ipaddress.ip_network("198.18.0.0/15")
NETNS_PREFIX = "vastsim-"
SSHD = "/usr/sbin/sshd"
PR_SET_PDEATHSIG = 1
# What is the instance's own, as it sees its files; everything else is the machine's file system
# (loopback mode: its workspace only, /root and /tmp are the machine's).
OWN_DIRS = {"namespace": ("/workspace", "/root", "/tmp"), "loopback": ("/workspace",)}
# The account `vastai copy` logs in as for its rsync daemon (namespace mode: root's uid, in the instance only).
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
# The most bytes of an instance's /root/.ssh/authorized_keys the simulator reads (namespace mode).
MAX_AUTHORIZED_KEYS_BYTES = 1 << 20


class HostError(RuntimeError):
    """The simulator could not build or start an instance's host."""


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
    address: str | None = None  # namespace mode: the instance's own address
    sshd_port: int | None = None  # loopback mode: sshd's port on 127.0.0.1
    link_kbytes_per_s: float | None = None
    # Docker's -p beyond 22: (protocol, public port, container port), relayed while the instance runs.
    forwards: list[tuple[str, int, int]] = field(default_factory=list)


@dataclass
class _Runtime:
    spec: HostSpec
    directory: Path
    process: asyncio.subprocess.Process | None = None
    proxy: asyncio.base_events.Server | None = None
    proxy_port: int | None = None
    internet: asyncio.base_events.Server | None = None
    netns: str | None = None
    veth_host: str | None = None
    forwarder: asyncio.subprocess.Process | None = None  # loopback mode: relays the -p ports


def _die_with_parent() -> None:
    # If the simulator is killed outright, its instances must not outlive it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _init_argv(spec_path: Path) -> list[str]:
    """instance_init.py on ``spec_path`` in fresh private mount, UTS and PID namespaces (namespace mode)."""
    Path("/workspace").mkdir(exist_ok=True)  # the mount points it uses
    Path("/run/vastsim").mkdir(parents=True, exist_ok=True)
    # The interpreter must be visible inside the instance, where /root is private (pyenv lives there).
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
    return ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private", python, "-I", instance_init.__file__, str(spec_path)]


async def _run(*argv: str, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if check and process.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed ({process.returncode}): {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def namespace_mode_available() -> bool:
    tools = ("ip", "unshare", "mount", "mkfs.ext4", "tc")
    return os.geteuid() == 0 and os.path.exists(SSHD) and all(shutil.which(tool) for tool in tools)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound on ``host`` right now, for TCP and for UDP."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _block_region() -> tuple[int, int]:
    """Where blocks of public ports go (``[low, high)``): outside the kernel's ephemeral range.

    ``free_port()`` (sshd and proxy ports) and outgoing connections take their ports from that
    range, so a block below it (or above it, when there is more room there) never meets them.
    """
    try:
        first, last = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        first, last = 32768, 60999
    below, above = (10_000, first), (last + 1, 65_536)
    region = max(below, above, key=lambda span: span[1] - span[0])
    return region if region[1] - region[0] >= 1000 else (1024, 65_536)


def free_port_block(count: int, *, avoid: set[int], hint: int = 0, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive ports, none in ``avoid``, each free for TCP and UDP on ``host`` now.

    The search starts at ``hint`` (modulo the region, outside the kernel's ephemeral range) and
    wraps around; HostError when there is no such block.
    """
    low, high = _block_region()
    starts = high - low - count + 1
    if count < 1 or starts < 1:
        raise HostError(f"no room for {count} consecutive ports in {low}-{high - 1}")
    offset, tried = hint % starts, 0
    while tried < starts:
        first = low + offset
        bad = next((port for port in range(first, first + count)
                    if port in avoid or not _port_free(host, port)), None)
        if bad is None:
            return first
        # No block that holds the bad port can work: go on right after it.
        skip = bad - first + 1
        tried += skip
        offset = (offset + skip) % starts
    raise HostError(f"no {count} consecutive free ports left in {low}-{high - 1}")


async def wait_for_ssh_banner(
    host: str, port: int, timeout: float, process: asyncio.subprocess.Process | None = None
) -> bool:
    """True once something at host:port speaks SSH (the banner starts with ``SSH-``).

    Gives up early when ``process`` (the one that should be serving) has exited.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if process is not None and process.returncode is not None:
            return False
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            try:
                banner = await asyncio.wait_for(reader.readline(), 2.0)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if banner.startswith(b"SSH-"):
                return True
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(0.02)
    return False


class HostManager:
    """Creates, starts, stops and removes the real hosts of simulated instances."""

    def __init__(self, state_dir: Path, *, bind_host: str = "127.0.0.1", mode: str | None = None) -> None:
        self.state_dir = state_dir
        self.bind_host = bind_host
        self.mode = mode or ("namespace" if namespace_mode_available() else "loopback")
        # A short tag from the state directory keeps two simulators' interfaces apart.
        self.tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:4]
        self.ssh_user = "root" if self.mode == "namespace" else getpass.getuser()
        self._runtimes: dict[int, _Runtime] = {}

    # ----------------------------------------------------------------- naming

    def netns_name(self, instance_id: int) -> str:
        return f"{NETNS_PREFIX}{self.tag}-{instance_id}"

    def _veth_names(self, instance_id: int) -> tuple[str, str]:
        # Interface names are limited to 15 characters.
        suffix = str(instance_id)[-8:]
        return f"vs{self.tag}h{suffix}", f"vs{self.tag}c{suffix}"

    def instance_dir(self, instance_id: int) -> Path:
        return self.state_dir / "instances" / str(instance_id)

    # ------------------------------------------------------------- allocation

    async def allocate(self, spec: HostSpec) -> None:
        """Give a new instance its address (namespace mode) or sshd port (loopback mode)."""
        if self.mode == "loopback":
            spec.sshd_port = spec.sshd_port or free_port()
            return
        if spec.address:
            return
        used = await self._addresses_in_use()
        taken = {rt.spec.address for rt in self._runtimes.values()}
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
        out = await _run("ip", "-4", "-o", "addr", "show", check=False)
        return {part.split("/")[0] for line in out.splitlines() for part in line.split() if "/" in part}

    # --------------------------------------------------------------- prepare

    async def prepare(self, spec: HostSpec) -> None:
        """Create the instance's files once: host key, disk, config. Idempotent."""
        directory = self.instance_dir(spec.instance_id)
        runtime = self._runtimes.get(spec.instance_id) or _Runtime(spec=spec, directory=directory)
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
            await _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", spec.hostname, "-f", str(host_key))
        if self.mode == "namespace":
            image = directory / "disk.img"
            if not image.exists():
                with open(image, "wb") as handle:
                    handle.truncate(max(int(spec.disk_gb * 1e9), 64 * 1024 * 1024))
                await _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                           "-E", "lazy_itable_init=1", str(image))
        smi = directory / "bin" / "nvidia-smi"
        if not os.path.lexists(smi):  # bin/ is the instance's /usr/local/sbin: never write through its links
            # The interpreter must be visible inside the instance, where /root is private.
            python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "/usr/bin/env python3"
            source = Path(nvidia_smi.__file__).read_text()
            _atomic_write(smi, f"#!{python}\n" + source, mode=0o755)
        if self.mode == "namespace" and spec.address:
            gateway = str(ipaddress.ip_address(spec.address) - 1)
            _atomic_write(directory / "etc" / "hosts", internet.hosts_file(_read("/etc/hosts"), gateway), mode=0o644)
        if self.mode == "namespace":
            # `vastai copy` with a local side runs `rsync -e ssh vastai_kaalia@ADDR::C.<id>/<path>`: an rsync
            # daemon over SSH as Vast's copy user, whose modules are the instance's file system.
            passwd = Path("/etc/passwd").read_text()
            if not any(line.startswith(f"{COPY_USER}:") for line in passwd.splitlines()):
                passwd = passwd.rstrip("\n") + f"\n{COPY_USER}:x:0:0:vastai copy:/root:/bin/sh\n"
            _atomic_write(directory / "etc" / "passwd", passwd, mode=0o644)
            modules = "".join(f"[{name}]\n    path = /\n" for name in (f"C.{spec.instance_id}", spec.instance_id))
            _atomic_write(directory / "etc" / "rsyncd.conf", RSYNCD_CONF + modules, mode=0o644)
        self.write_gpu_spec(spec.instance_id, spec.gpu_spec)
        self.write_authorized_keys(spec.instance_id, spec.authorized_keys)
        self._write_sshd_config(runtime)

    def write_gpu_spec(self, instance_id: int, gpu_spec: dict[str, Any]) -> None:
        runtime = self._runtimes.get(instance_id)
        if runtime is None:
            return  # not booted yet: prepare() writes the spec the market computes then
        runtime.spec.gpu_spec = gpu_spec
        _atomic_write(runtime.directory / "bin" / "nvidia-smi.json", json.dumps(gpu_spec, indent=1))

    def write_authorized_keys(self, instance_id: int, keys: list[str]) -> None:
        """Rewrite the keys sshd accepts; running sshds read the file at each login."""
        runtime = self._runtimes.get(instance_id)
        if runtime is None:
            return
        runtime.spec.authorized_keys = list(keys)
        path = runtime.directory / "etc" / "authorized_keys"
        _atomic_write(path, "".join(key.strip() + "\n" for key in keys), mode=0o600)
        if self.mode == "namespace":
            try:
                self._seed_root_keys(runtime, keys)
            except OSError as exc:  # e.g. the instance is being destroyed; etc/authorized_keys still holds them
                log.warning("instance %s: cannot update /root/.ssh/authorized_keys: %s", instance_id, exc)

    def _seed_root_keys(self, runtime: _Runtime, keys: list[str]) -> None:
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
                _atomic_write("authorized_keys", "".join(line + "\n" for line in lines), mode=mode, dir_fd=ssh_fd)
        finally:
            os.close(ssh_fd)
        _atomic_write(record, json.dumps(wanted))

    def _strict_modes(self) -> bool:
        # Namespace mode: sshd checks modes like a stock one (~/.ssh and authorized_keys). That needs
        # /run/vastsim/etc's parents to be root's and not group/world writable; loopback mode's state
        # directory may sit under a world-writable /tmp.
        if self.mode != "namespace":
            return False
        for parent in ("/", "/run"):
            info = os.stat(parent)
            if info.st_uid != 0 or info.st_mode & 0o022:
                return False
        return True

    def _write_sshd_config(self, runtime: _Runtime) -> None:
        spec = runtime.spec
        etc = "/run/vastsim/etc" if self.mode == "namespace" else str(runtime.directory / "etc")
        keys = f"{etc}/authorized_keys"
        lines = []
        if self.mode == "namespace":
            lines += ["Port 22", f"Port {spec.direct_port}" if spec.direct_port != 22 else "",
                      "ListenAddress 0.0.0.0", "PermitRootLogin prohibit-password"]
            # The instance's /root is private: users add keys there (ssh-copy-id) as on Vast.
            keys += " .ssh/authorized_keys"
        else:
            lines += [f"Port {spec.sshd_port}", "ListenAddress 127.0.0.1"]
        lines += [
            f"HostKey {etc}/ssh_host_ed25519_key",
            f"AuthorizedKeysFile {keys}",
            "PidFile none",
            f"StrictModes {'yes' if self._strict_modes() else 'no'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PrintMotd no",
            "MaxStartups 200:30:400",
            "MaxSessions 64",
            "Subsystem sftp internal-sftp",
        ]
        env = dict(spec.env)
        if self.mode == "loopback":
            # No private mounts here, so nvidia-smi comes first on PATH instead.
            env["PATH"] = f"{runtime.directory / 'bin'}:/usr/local/bin:/usr/bin:/bin"
            env["VASTSIM_WORKSPACE"] = str(runtime.directory / "workspace")
        pairs = []
        for key, value in env.items():
            if '"' in value or "\n" in value or "\\" in value:
                log.warning("instance %s: env %s not passed to sshd (quotes/newlines)", spec.instance_id, key)
                continue
            pairs.append(f'"{key}={value}"')
        if pairs:
            # sshd keeps only the first SetEnv line, so every variable goes on one.
            lines.append("SetEnv " + " ".join(pairs))
        if self.mode == "namespace":
            # Last: a Match block runs to the end of the file.
            lines += [f"Match User {COPY_USER}",
                      "    ForceCommand rsync --server --daemon --config=/run/vastsim/etc/rsyncd.conf ."]
        _atomic_write(runtime.directory / "etc" / "sshd_config", "\n".join(x for x in lines if x) + "\n")

    # ---------------------------------------------------------------- network

    async def _ensure_netns(self, runtime: _Runtime) -> None:
        spec = runtime.spec
        name = self.netns_name(spec.instance_id)
        veth_host, veth_peer = self._veth_names(spec.instance_id)
        runtime.netns, runtime.veth_host = name, veth_host
        existing = (await _run("ip", "netns", "list", check=False)).split()
        if name in existing:
            await self._ensure_internet(runtime)
            return
        assert spec.address is not None
        instance_ip = ipaddress.ip_address(spec.address)
        host_ip = instance_ip - 1
        await _run("ip", "netns", "add", name)
        try:
            await _run("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_peer)
            await _run("ip", "link", "set", veth_peer, "netns", name)
            await _run("ip", "addr", "add", f"{host_ip}/30", "dev", veth_host)
            await _run("ip", "link", "set", veth_host, "up")
            await _run("ip", "-n", name, "addr", "add", f"{instance_ip}/30", "dev", veth_peer)
            await _run("ip", "-n", name, "link", "set", veth_peer, "up")
            await _run("ip", "-n", name, "link", "set", "lo", "up")
            # Instances reach the controller side of their link only: no default route, no internet.
        except HostError:
            await _run("ip", "netns", "delete", name, check=False)
            await _run("ip", "link", "delete", veth_host, check=False)
            raise
        await self.set_link_rate(spec.instance_id, spec.link_kbytes_per_s)
        await self._ensure_internet(runtime)

    async def _ensure_internet(self, runtime: _Runtime) -> None:
        """The simulated internet on the controller side of this instance's link (port 80)."""
        if runtime.internet is not None or not runtime.spec.address:
            return
        gateway = str(ipaddress.ip_address(runtime.spec.address) - 1)
        try:
            runtime.internet = await internet.serve(gateway)
        except OSError as exc:
            log.warning("instance %s: no simulated internet at %s: %s", runtime.spec.instance_id, gateway, exc)

    async def set_link_rate(self, instance_id: int, kbytes_per_s: float | None) -> None:
        """Shape the instance's link both ways with tbf (namespace mode only)."""
        runtime = self._runtimes[instance_id]
        runtime.spec.link_kbytes_per_s = kbytes_per_s
        if self.mode != "namespace" or runtime.netns is None:
            return
        _, veth_peer = self._veth_names(instance_id)
        targets = [("ip", "netns", "exec", runtime.netns, "tc", "qdisc", "{op}", "dev", veth_peer),
                   ("tc", "qdisc", "{op}", "dev", runtime.veth_host)]
        for target in targets:
            if kbytes_per_s is None:
                await _run(*[part.replace("{op}", "del") for part in target], "root", check=False)
                continue
            rate_bytes = kbytes_per_s * 1000
            burst = max(4096, int(rate_bytes / 100))
            await _run(*[part.replace("{op}", "replace") for part in target], "root", "tbf",
                       "rate", f"{int(rate_bytes * 8)}bit", "burst", str(burst), "latency", "100ms")

    # ------------------------------------------------------------- processes

    def internal_endpoint(self, instance_id: int) -> tuple[str, int]:
        spec = self._runtimes[instance_id].spec
        if self.mode == "namespace":
            assert spec.address is not None
            return spec.address, 22
        assert spec.sshd_port is not None
        return "127.0.0.1", spec.sshd_port

    def direct_endpoint(self, instance_id: int) -> tuple[str, int]:
        spec = self._runtimes[instance_id].spec
        if self.mode == "namespace":
            assert spec.address is not None
            return spec.address, spec.direct_port
        assert spec.sshd_port is not None
        return "127.0.0.1", spec.sshd_port

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
        if self.mode == "namespace":
            await self._ensure_netns(runtime)
            await self._wait_disk_released(runtime.directory)
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
            spec_path = runtime.directory / "etc" / "init.json"
            _atomic_write(spec_path, json.dumps({
                **self._view_spec(runtime.directory, runtime.spec.hostname),
                "env": runtime.spec.env,
                "onstart": runtime.spec.onstart,
                # Docker's -p: public ports on every address, relayed to the container port on its own.
                "forwards": {"listen": "0.0.0.0", "target": runtime.spec.address,
                             "ports": runtime.spec.forwards},
            }))
            argv = ["ip", "netns", "exec", runtime.netns or "", *_init_argv(spec_path)]
        else:
            argv = [SSHD, "-D", "-e", "-f", str(runtime.directory / "etc" / "sshd_config")]
        try:
            if self.mode == "loopback" and runtime.spec.forwards:
                # Before sshd: a -p port that cannot be bound fails the boot (HostError) with nothing started.
                await self._start_forwarder(runtime)
            log_fd = _open_log(runtime.directory / "etc" / "host.log")
            try:
                runtime.process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                    preexec_fn=_die_with_parent, start_new_session=True,
                )
            finally:
                os.close(log_fd)
        except BaseException:
            await self.stop(instance_id)  # the forwarder must not outlive a boot that failed
            raise
        host, port = self.internal_endpoint(instance_id)
        if not await wait_for_ssh_banner(host, port, timeout, runtime.process):
            tail = _tail(runtime.directory / "etc" / "host.log")
            code = runtime.process.returncode
            await self.stop(instance_id)
            what = f"sshd did not answer on {host}:{port}" if code is None else f"the host exited ({code}) at boot"
            raise HostError(f"instance {instance_id}: {what}: {tail}")

    async def _start_forwarder(self, runtime: _Runtime, timeout: float = 10.0) -> None:
        """Loopback mode: relay 127.0.0.1:<public port> to 127.0.0.1:<container port> (Docker's -p).

        Returns once every port is bound; HostError (and no forwarder) when one cannot be.
        """
        await self._stop_forwarder(runtime)
        spec_path = runtime.directory / "etc" / "forwards.json"
        _atomic_write(spec_path, json.dumps({"listen": "127.0.0.1", "target": "127.0.0.1",
                                             "ports": runtime.spec.forwards}))
        # The marker lets _kill_descendants_of_sshd find it after a crash, like the instance's processes.
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "VASTSIM_WORKSPACE": str(runtime.directory / "workspace")}
        log_fd = _open_log(runtime.directory / "etc" / "host.log")
        try:
            runtime.forwarder = forwarder = await asyncio.create_subprocess_exec(
                sys.executable, "-I", instance_init.__file__, "--forward", str(spec_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log_fd, env=env,
                preexec_fn=_die_with_parent, start_new_session=True,
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

    async def _stop_forwarder(self, runtime: _Runtime) -> None:
        forwarder, runtime.forwarder = runtime.forwarder, None
        if forwarder is not None and forwarder.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                forwarder.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(forwarder.wait(), 10)

    async def _wait_disk_released(self, directory: Path) -> None:
        # A stopped instance's mount namespace may still be unwinding; never mount one image twice.
        image = str(directory / "disk.img")
        for _ in range(100):
            if not (await _run("losetup", "-j", image, check=False)).strip():
                return
            await asyncio.sleep(0.05)
        raise HostError(f"disk image {image} is still attached after the previous run")

    def _view_spec(self, directory: Path, hostname: str) -> dict[str, Any]:
        """What instance_init.py needs to build an instance's view (namespace mode)."""
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

    @property
    def own_dirs(self) -> tuple[str, ...]:
        """The directories whose files are the instance's own, as it sees them; the rest is the machine's."""
        return OWN_DIRS[self.mode]

    def writeable_path(self, instance_id: int) -> str:
        """What ``run_in_view`` puts before the instance's paths in what it runs (and so in its output)."""
        return "" if self.mode == "namespace" else str(self.instance_dir(instance_id).resolve())

    async def run_in_view(self, instance_id: int, argv: list[str], *, paths: list[int], remove: bool,
                          timeout: float, proceed: Callable[[], str | None] | None = None) -> bytes:
        """Run one command on a stopped instance's files, where it has them; returns its stdout and stderr.

        ``argv`` names the files as the instance sees them; ``paths`` are the indices of its path
        operands (absolute, normalised), which must be the instance's own once their symlinks are
        resolved (``instance_init.confine``, where the command runs, right before it runs): inside
        ``own_dirs``, whole for ``ls``/``du``, up to the last component for ``rm`` (``remove``). It runs
        without a shell in /workspace, once ``proceed``, asked right before, has no objection:

        * namespace mode: in fresh private namespaces with the instance's view (instance_init.py, ``exec``);
        * loopback mode: on the machine, /workspace being the instance's workspace directory.

        Raises HostError when it does not run, TimeoutError (once it is killed) when it runs too long.
        """
        if self.is_running(instance_id):
            raise HostError("the instance is running")
        directory = self.instance_dir(instance_id).resolve()
        if not directory.is_dir() or (self.mode == "namespace" and not (directory / "disk.img").exists()):
            return b""  # never booted: nothing is on its disk yet
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        if self.mode == "namespace":
            await self._wait_disk_released(directory)
            spec_path = directory / "etc" / "execute.json"
            _atomic_write(spec_path, json.dumps({
                **self._view_spec(directory, f"C.{instance_id}"), "env": env,
                "exec": {"argv": argv, "paths": paths, "roots": list(self.own_dirs), "remove": remove,
                         "cwd": "/workspace"},
            }))
            run, cwd = ["unshare", "--net", *_init_argv(spec_path)], "/"
        else:
            workspace, run = str(directory / "workspace"), list(argv)
            for index in paths:
                if run[index] != "/workspace" and not run[index].startswith("/workspace/"):
                    raise HostError(f"refused: {run[index]} is not the instance's own (inside /workspace).")
                run[index] = workspace + run[index][len("/workspace"):]
            refusal = instance_init.confine(run, paths, [workspace], remove)
            if refusal is not None:
                raise HostError(refusal)
            cwd = workspace
        refusal = proceed() if proceed is not None else None
        if refusal is not None:
            raise HostError(refusal)
        process = await asyncio.create_subprocess_exec(
            *run, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True,
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
        """Kill the instance's processes (its PID namespace in namespace mode)."""
        runtime = self._runtimes.get(instance_id)
        if runtime is None:
            return
        await self._stop_forwarder(runtime)
        if runtime.process is None:
            return
        process = runtime.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                # The whole session: unshare (namespace mode) or sshd plus its logins (loopback mode).
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
        if self.mode == "loopback":
            _kill_descendants_of_sshd(runtime.directory)
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
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

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
        await self._close_proxy(runtime)
        if self.mode == "namespace":
            await _run("ip", "netns", "delete", self.netns_name(instance_id), check=False)
            await _run("ip", "link", "delete", self._veth_names(instance_id)[0], check=False)
            with contextlib.suppress(HostError):
                await self._wait_disk_released(runtime.directory)
        self._runtimes.pop(instance_id, None)
        shutil.rmtree(runtime.directory, ignore_errors=True)

    async def _close_proxy(self, runtime: _Runtime) -> None:
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
            await self._close_proxy(runtime)
        await self.remove_stale_namespaces()

    async def remove_stale_namespaces(self) -> None:
        """Remove this simulator's namespaces, links and processes, e.g. after it was killed outright."""
        if self.mode != "namespace":
            # Loopback instances have no PID namespace: their processes may have outlived a crash.
            for directory in (self.state_dir / "instances").glob("*"):
                if directory.name.isdigit() and int(directory.name) not in self._runtimes:
                    _kill_descendants_of_sshd(directory)
            return
        prefix = f"{NETNS_PREFIX}{self.tag}-"
        for name in (await _run("ip", "netns", "list", check=False)).split():
            if name.startswith(prefix):
                await _run("ip", "netns", "delete", name, check=False)
        links = await _run("ip", "-o", "link", "show", check=False)
        for line in links.splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                name = parts[1].strip().split("@")[0]
                if name.startswith(f"vs{self.tag}"):
                    await _run("ip", "link", "delete", name, check=False)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _atomic_write(path: Path | str, text: str, mode: int = 0o600, *, dir_fd: int | None = None) -> None:
    """Replace ``path`` with a file holding ``text``, never writing through a symlink.

    Instances can write some of the directories written here (bin/, /root/.ssh), so the temporary
    file gets a fresh random name, is created exclusively without following links (nothing planted
    can stand in for it, and nothing stale has to be removed first), and is renamed over ``path`` (a
    rename replaces a symlink, it does not follow it). With ``dir_fd``, ``path`` is a name in that
    directory (opened by the caller without following links).
    """
    name = str(path)
    # The mode is set at creation: these files may hold the user's env and keys.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _attempt in range(8):
        tmp = f"{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {name}")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            os.fchmod(handle.fileno(), mode)  # whatever the umask took away
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _open_log(path: Path) -> int:
    """An append-only descriptor for a log of the instance's etc/, not following a symlink."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return "127.0.0.1 localhost\n"


def _tail(path: Path, limit: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""


def _kill_descendants_of_sshd(directory: Path) -> None:
    """Loopback mode has no PID namespace: find the instance's leftover processes by their cwd/env."""
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
