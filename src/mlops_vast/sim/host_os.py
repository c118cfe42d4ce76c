"""What the simulated hosts need from the machine, whatever the backend: running commands, free ports,
waiting for sshd's banner, relaying bytes, and writes that never follow a symlink planted by an instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import socket
from pathlib import Path

PR_SET_PDEATHSIG = 1


class HostError(RuntimeError):
    """The simulator could not build or start an instance's host."""


def die_with_parent() -> None:
    # If the simulator is killed outright, its instances must not outlive it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def run_command(*argv: str, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if check and process.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed ({process.returncode}): {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


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


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def atomic_write(path: Path | str, text: str, mode: int = 0o600, *, dir_fd: int | None = None) -> None:
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


def open_log(path: Path) -> int:
    """An append-only descriptor for a log of the instance's etc/, not following a symlink."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def tail_text(path: Path, limit: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return ""
