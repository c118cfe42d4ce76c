"""Each instance's real host follows its phase: booted whenever the phase wants one up, stopped
otherwise (which is also how a restarted simulator brings its running instances back), rebuilt on
recycle, removed on destroy. One host operation runs at a time per instance, each after the last.

Also what the host is made from: the instance's public ports, its environment and its GPUs as
``nvidia-smi`` reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from mlops_vast.sim.accounts import Accounts
from mlops_vast.sim.hosts import HostError, HostSpec, PortUse
from mlops_vast.sim.models import HOST_UP, Instance
from mlops_vast.sim.state import SimContext

log = logging.getLogger("vastsim.market")


class HostSync:
    def __init__(self, ctx: SimContext, accounts: Accounts) -> None:
        self.ctx = ctx
        self.accounts = accounts
        self.ops: dict[int, asyncio.Task[None]] = {}
        self._destroying: set[asyncio.Task[None]] = set()

    @property
    def hosts(self) -> Any:
        return self.ctx.hosts

    # ------------------------------------------------------------------ operations, one at a time

    def _after(self, instance_id: int, step: Awaitable[Any], *, quiet: bool = False) -> asyncio.Task[None]:
        """A task that awaits ``step`` once the instance's previous host operation is done (``quiet``: a host
        that is gone or failing meanwhile is not an error of the step)."""
        previous = self.ops.pop(instance_id, None)

        async def chained() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            if not quiet:
                await step
                return
            with contextlib.suppress(HostError, KeyError):
                await step

        return asyncio.ensure_future(chained())

    def after_previous(self, instance_id: int, step: Awaitable[Any]) -> None:
        """Run ``step`` once the instance's previous host operation is done (a fault's change to the host)."""
        self.ops[instance_id] = self._after(instance_id, step, quiet=True)

    def busy(self, instance_id: int) -> bool:
        return instance_id in self.ops

    def restart(self, instance: Instance, wipe: bool = False) -> None:
        """Stop the host (reboot), or rebuild it from nothing (recycle); the ticker boots it again."""
        self.ops[instance.id] = self._after(instance.id, self._restart(instance, wipe))

    async def _restart(self, instance: Instance, wipe: bool) -> None:
        await self.hosts.stop(instance.id)
        if wipe:
            await self.hosts.destroy(instance.id)
            await self.prepare(instance)

    def remove(self, instance: Instance) -> None:
        task = self._after(instance.id, self.hosts.destroy(instance.id))
        self._destroying.add(task)
        task.add_done_callback(self._destroying.discard)

    def reconcile(self, instance: Instance) -> str | None:
        """Start or stop the host to match the phase; the error of a host operation that failed, if any."""
        if instance.id in self.ops:
            task = self.ops[instance.id]
            if not task.done():
                return None
            del self.ops[instance.id]
            error = task.exception()
            if error is not None:
                # Any failure to boot is the host's error: retrying every tick would only spin.
                log.error("instance %s: host operation failed: %r", instance.id, error)
                return str(error)
        want_up = instance.phase in HOST_UP and not (
            instance.phase == "loading" and "stuck_loading" in instance.faults)
        running = self.hosts.is_running(instance.id)
        if want_up and not running:
            self.ops[instance.id] = asyncio.ensure_future(self._boot(instance))
        elif not want_up and (running or self.hosts.needs_stop(instance.id)):
            # Also when sshd died on its own: its port forwarder (and loopback leftovers) must end too.
            self.ops[instance.id] = asyncio.ensure_future(self.hosts.stop(instance.id))
        return None

    async def _boot(self, instance: Instance) -> None:
        await self.prepare(instance)
        # For jupyter runtypes Vast's proxy serves SSH one port above the reported ssh_port.
        bump = 1 if "jupyter" in instance.runtype else 0
        wanted = instance.proxy_port + bump if instance.proxy_port is not None else None
        port = await self.hosts.open_proxy(instance.id, wanted)
        if port != wanted:  # the promised port was taken meanwhile
            instance.proxy_port = port - bump
            self.ctx.touch()
        await self.hosts.start(instance.id)

    async def prepare(self, instance: Instance) -> None:
        disk = instance.faults.get("small_disk") or instance.disk
        spec = HostSpec(
            instance_id=instance.id, hostname=f"C.{instance.id}", disk_gb=float(disk),
            authorized_keys=self.accounts.keys_for(instance), gpu_spec=self.gpu_spec(instance),
            onstart=instance.onstart, direct_port=instance.direct_port,
            address=instance.address, sshd_port=instance.sshd_port,
            link_kbytes_per_s=instance.faults.get("slow_link"),
        )
        await self.hosts.allocate(spec)
        if (spec.address, spec.sshd_port) != (instance.address, instance.sshd_port):
            instance.address, instance.sshd_port = spec.address, spec.sshd_port
            self.ctx.touch()
        spec.env = self.instance_env(instance)
        spec.forwards = [(key.split("/")[1], public, int(key.split("/")[0]))
                         for key, public in self.port_map(instance).items() if key != "22/tcp"]
        await self.hosts.prepare(spec)

    async def shutdown(self) -> None:
        for task in [*self.ops.values(), *self._destroying]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)

    # ------------------------------------------------------------------ what a host is made from

    def instance_env(self, instance: Instance) -> dict[str, str]:
        env = {key: value for key, value in instance.env.items() if not key.startswith("-")}
        env.update({
            "VAST_CONTAINERLABEL": f"C.{instance.id}",
            "CONTAINER_ID": str(instance.id),
            "GPU_COUNT": str(instance.num_gpus),
            "PUBLIC_IPADDR": instance.address or "",
        })
        # VAST_TCP_PORT_<n> / VAST_UDP_PORT_<n>: the public port of each mapped one (none when proxy-only).
        for key, public in self.port_map(instance).items():
            number, proto = key.split("/")
            env[f"VAST_{proto.upper()}_PORT_{number}"] = str(public)
        return env

    def port_map(self, instance: Instance) -> dict[str, int]:
        """The instance's Docker-style port mapping, ``{"22/tcp": 40001, "8080/tcp": 40002}``.

        The one source of the API's ``ports``, the ``VAST_*_PORT_*`` variables and the host's
        forwards. Only direct runtypes have one: 22 on sshd's direct port, then each ``-p`` entry of
        ``env`` on the ports ``allocate_ports`` gave the instance at create (kept in the state).
        """
        if "direc" not in instance.runtype:
            return {}
        ports = dict(instance.ports or {})
        ssh_public = self.hosts.backend.public_ssh_port(instance.sshd_port)
        if ssh_public:
            ports["22/tcp"] = ssh_public
        ports.setdefault("22/tcp", instance.direct_port)
        return ports

    def allocate_ports(self, instance: Instance) -> None:
        """Give a direct instance its public ports for good: ``22/tcp``, then each distinct ``-p`` entry.

        Where they go is the host backend's to say: each instance on its own address (namespace), or
        blocks nobody else holds on the shared 127.0.0.1 (loopback). HostError when there is no room.
        """
        if "direc" not in instance.runtype:
            instance.ports = {}
            return
        keys = ["22/tcp"]
        for name in instance.env:
            if not name.startswith("-p "):
                continue
            number, _, proto = name.split(" ", 1)[1].split(":")[-1].partition("/")
            if number.isdigit() and 0 < int(number) < 65536:
                key = f"{int(number)}/{'udp' if proto == 'udp' else 'tcp'}"
                if key not in keys:
                    keys.append(key)
        others = [PortUse(other.ports or {}, other.proxy_port, other.sshd_port)
                  for other in self.ctx.state.instances.values() if other.id != instance.id]
        instance.ports, instance.direct_port, instance.sshd_port = self.hosts.backend.allocate_ports(
            instance.id, keys, direct_port=instance.direct_port, sshd_port=instance.sshd_port, others=others)

    def gpu_spec(self, instance: Instance) -> dict[str, Any]:
        machine = self.ctx.catalog.machines[instance.machine_id]
        name = instance.faults.get("wrong_gpu") or machine.gpu.smi_name
        gpus = []
        for index in range(instance.num_gpus):
            gpus.append({
                "name": name,
                "memory_total_mib": machine.gpu.vram_mb,
                "memory_used_mib": 1,
                "utilization_gpu": 0,
                "compute_cap": f"{machine.gpu.compute_cap // 100}.{machine.gpu.compute_cap % 100 // 10}",
                "uuid": _gpu_uuid(machine.machine_id, index),
                "pci_bus_id": f"00000000:{index + 1:02X}:00.0",
                "power_limit_w": machine.gpu.power_limit_w,
            })
        return {
            "driver_version": machine.driver_version,
            "cuda_version": f"{machine.cuda_max_good:.1f}",
            "error": "driver" if instance.faults.get("driver_error") else None,
            "gpus": gpus,
        }


def _gpu_uuid(machine_id: int, index: int) -> str:
    digest = f"{machine_id:08x}{index:04x}".rjust(32, "0")
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
