"""An instance's life: create (with Vast's validation of the request), the phases the ticker moves it
through by wall-clock deadlines (``null -> created -> loading -> running``), stop and start (queued while
the GPUs are taken), reboot, recycle, destroy, and what a restarted simulator does with what it finds.
"""

from __future__ import annotations

import itertools
import secrets
import shlex
import time
from typing import Any

from mlops_vast.sim.accounts import Accounts
from mlops_vast.sim.billing import Billing
from mlops_vast.sim.catalog import Machine
from mlops_vast.sim.errors import VastError
from mlops_vast.sim.faults import Fault
from mlops_vast.sim.host_os import HostError, free_port
from mlops_vast.sim.host_sync import HostSync
from mlops_vast.sim.models import Account, Instance
from mlops_vast.sim.offers import Offers
from mlops_vast.sim.state import SimContext

VALID_RUNTYPES = frozenset({
    "ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "ssh_direc ssh_proxy", "ssh_direct ssh_proxy",
    "jupyter", "jupyter_proxy ssh_proxy", "jupyter_direc ssh_direc ssh_proxy",
    "jupyter_direct ssh_direct ssh_proxy", "args",
})
MIN_DISK_GB = 8.0  # the server's minimum at create (§5)
# Starting from these, a stop has nothing to wait for; a start can go ahead.
STARTABLE = ("stopped", "stopping", "scheduling", "queued", "outbid", "host_error")


class Lifecycle:
    def __init__(self, ctx: SimContext, accounts: Accounts, offers: Offers, billing: Billing,
                 host_sync: HostSync) -> None:
        self.ctx = ctx
        self.accounts = accounts
        self.offers = offers
        self.billing = billing
        self.host_sync = host_sync

    # ------------------------------------------------------------------ create

    def create(self, account: Account, offer_id: int, body: Any) -> tuple[Instance, bool]:
        """Rent an offer. Returns the instance and whether it started (Vast's ``success``)."""
        if not isinstance(body, dict):
            raise VastError(400, "invalid_args", "Invalid json body")
        catalog, state = self.ctx.catalog, self.ctx.state
        offer = catalog.offers.get(offer_id)
        if offer is None:
            raise VastError(404, "no_such_ask",
                            f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                            ask_id=offer_id)
        machine = catalog.machines[offer.machine_id]
        args = _validate_create(body, machine)
        if account.credit <= 0:
            raise VastError(400, "insufficient_credit", "You lack credit, see the billing page.")
        available = self.offers.free_gpus(machine, renting=True) >= offer.num_gpus
        if not available and body.get("cancel_unavail"):
            raise VastError(410, "no_such_ask", f"Instance type {offer_id} is no longer available.",
                            ask_id=offer_id)
        now = time.time()
        instance_id = state.next_instance_id
        state.next_instance_id += 1
        price = args["price"]
        instance = Instance(
            id=instance_id, user_id=account.id, offer_id=offer_id, machine_id=machine.machine_id,
            num_gpus=offer.num_gpus, image=args["image"], disk=args["disk"], runtype=args["runtype"],
            created_at=now, gpu_dph=price if price is not None else machine.dph_per_gpu * offer.num_gpus,
            storage_dph=args["disk"] * machine.storage_cost / 720.0, label=args["label"], env=args["env"],
            onstart=args["onstart"], image_login=args["image_login"], is_bid=price is not None,
            direct_port=40_000 + (instance_id % 20_000), instance_api_key=secrets.token_hex(32),
            # Vast shows the proxy endpoint from creation on; the listener opens when the host boots.
            proxy_port=free_port(self.ctx.public_host),
        )
        try:
            self.host_sync.allocate_ports(instance)
        except HostError as exc:
            raise VastError(503, "resources_unavailable", f"No public ports for the instance: {exc}") from None
        for kind, value in machine.defects.items():
            instance.faults[_defect_kind(kind)] = value
        for fault in state.faults.host_faults_for(instance_id=instance_id, machine_id=machine.machine_id,
                                                  offer_id=offer_id, label=instance.label, at_create=True):
            instance.faults[fault.kind] = fault_parameter(fault)
        state.instances[instance_id] = instance
        started = available
        if not available:
            self.ctx.enter(instance, "scheduling", None,
                           "Waiting for the GPUs to become available (another contract holds them).")
        elif instance.is_bid and not self.billing.bid_wins(instance):
            # Created, but stopped (§5: success false); it runs once its bid wins.
            started = False
            self.ctx.enter(instance, "outbid", None, self.billing.outbid_msg(instance))
        else:
            self.ctx.enter(instance, "provisioning", now + self.ctx.timing("provisioning"))
        return instance, started

    def resume_after_restart(self) -> None:
        """The hosts died with the previous process: report loading until each sshd is back."""
        now = time.time()
        for instance in self.ctx.state.instances.values():
            if instance.phase in ("running", "rebooting", "recycling"):
                instance.running_since = None
                instance.phase, instance.phase_until = "loading", now
                instance.status_msg = "Resuming after a simulator restart."
            if instance.ports is None:  # saved before ports were kept: allocate them once, for good
                try:
                    self.host_sync.allocate_ports(instance)
                except HostError:
                    continue

    # ------------------------------------------------------------------ requests

    def set_state(self, instance: Instance, body: dict[str, Any]) -> dict[str, Any]:
        if "label" in body:
            label = body.get("label")
            if label is not None and len(str(label)) > 256:
                raise VastError(400, "label_too_long", "Label must be 256 characters or fewer.")
            instance.label = None if label is None else str(label)
            self.ctx.touch()
        state = body.get("state")
        if state is None:
            return {"success": True}
        if state == "stopped":
            self.stop(instance, "Stopped by user.")
            return {"success": True}
        if state == "running":
            return self.start(instance)
        raise VastError(400, "invalid_args", f"Unknown state {state!r}; use running or stopped.")

    def stop(self, instance: Instance, msg: str) -> None:
        instance.intended_status = "stopped"
        if instance.phase in ("stopped", "stopping"):
            return
        if instance.phase != "running":
            # Nothing is running to wind down (scheduled, outbid, failed, still starting).
            self.ctx.enter(instance, "stopped", None, msg)
            return
        self.ctx.enter(instance, "stopping", time.time() + self.ctx.timing("stopping"), msg)

    def start(self, instance: Instance) -> dict[str, Any]:
        instance.intended_status = "running"
        self.ctx.touch()
        if instance.phase not in STARTABLE:
            return {"success": True}
        if instance.phase == "host_error" and "host_error" in instance.faults:
            return {"success": True}
        machine = self.ctx.catalog.machines[instance.machine_id]
        unavailable = {"success": False, "error": "resources_unavailable",
                       "msg": "Required resources are currently unavailable, state change queued."}
        if self.offers.free_gpus(machine) < instance.num_gpus:
            # A container that never ran stays "created"; a stopped one stays "exited" until it starts.
            queued = "scheduling" if instance.phase == "scheduling" else "queued"
            self.ctx.enter(instance, queued, None, "Waiting for the GPUs to become available.")
            return unavailable
        if instance.is_bid and not self.billing.bid_wins(instance):
            # Below the floor or a competing bid: it waits, stopped, until its bid wins (or is raised).
            self.ctx.enter(instance, "outbid", None, self.billing.outbid_msg(instance))
            return unavailable
        self.ctx.enter(instance, "loading", time.time() + self.ctx.timing("start_loading"), "Starting container.")
        return {"success": True}

    def reboot(self, instance: Instance) -> dict[str, Any]:
        if instance.phase != "running":
            return {"success": False, "error": "invalid_id", "msg": "Invalid instance id. Is the container started?"}
        self.host_sync.restart(instance)
        self.ctx.enter(instance, "rebooting", time.time() + self.ctx.timing("rebooting"), "Rebooting.")
        return {"success": True}

    def recycle(self, instance: Instance) -> dict[str, Any]:
        if instance.phase not in ("running", "loading", "rebooting"):
            # Recycling re-pulls the image on GPUs the instance holds; a stopped one holds none.
            return {"success": False, "error": "invalid_id",
                    "msg": "Invalid instance id. Is the container started?"}
        self.host_sync.restart(instance, wipe=True)
        self.ctx.enter(instance, "recycling", time.time() + self.ctx.timing("recycling"), "Recycling: pulling image.")
        return {"success": True}

    def destroy(self, instance: Instance) -> None:
        self.billing.close(instance)
        self.ctx.state.instances.pop(instance.id, None)
        self.accounts.drop_instance_keys(instance.id)
        self.ctx.touch()
        self.host_sync.remove(instance)

    def stop_all(self, account: Account, msg: str) -> None:
        for instance in self.ctx.state.instances.values():
            if instance.user_id == account.id and instance.intended_status == "running":
                self.stop(instance, msg)

    # ------------------------------------------------------------------ the ticker's moves

    def advance(self, instance: Instance, now: float) -> None:
        """Move the instance on when its phase's deadline has passed (or what it waits for came)."""
        if instance.phase_until is None or now < instance.phase_until:
            if instance.phase in ("scheduling", "queued"):
                self._try_schedule(instance)
            elif instance.phase == "outbid":
                self.billing.try_resume(instance)
            return
        phase, timing = instance.phase, self.ctx.timing
        if phase == "provisioning":
            self.ctx.enter(instance, "created", now + timing("created"))
        elif phase == "created":
            if "host_error" in instance.faults:
                self.ctx.enter(instance, "host_error", None, "Error: GPU error, unable to start instance")
            else:
                self.ctx.enter(instance, "loading", now + timing("loading"), f"Pulling image {instance.image}")
                if "stuck_loading" in instance.faults:
                    instance.phase_until = None
        elif phase == "recycling":
            # Recycling re-pulls the image: recycling -> loading -> running (§8).
            self.ctx.enter(instance, "loading", now + timing("loading"), f"Recycling: pulling image {instance.image}")
            if "stuck_loading" in instance.faults:
                instance.phase_until = None
        elif phase in ("loading", "rebooting"):
            # Running means reachable: wait for sshd even when the timer is up.
            if "offline" in instance.faults:
                self.ctx.enter(instance, "offline", None, "Host is offline.")
            elif self.ctx.hosts.is_running(instance.id) and not self.host_sync.busy(instance.id):
                runtype = "ssh" if "ssh" in instance.runtype else instance.runtype
                self.ctx.enter(instance, "running", None, f"success, running {instance.image}/{runtype}")
        elif phase == "stopping":
            self.ctx.enter(instance, "stopped", None)

    def _try_schedule(self, instance: Instance) -> None:
        if instance.intended_status != "running":
            return
        machine = self.ctx.catalog.machines[instance.machine_id]
        # Our own GPUs are not held while scheduling, so the machine must have room for them.
        if self.offers.free_gpus(machine) < instance.num_gpus:
            return
        if instance.is_bid and not self.billing.bid_wins(instance):
            self.ctx.enter(instance, "outbid", None, self.billing.outbid_msg(instance))
        elif instance.phase == "queued":
            # A queued start of a stopped instance: its container starts again, it is not created anew.
            self.ctx.enter(instance, "loading", time.time() + self.ctx.timing("start_loading"),
                           "GPUs available; starting.")
        else:
            self.ctx.enter(instance, "provisioning", time.time() + self.ctx.timing("provisioning"),
                           "GPUs available; starting.")

    def host_failed(self, instance: Instance, error: str) -> None:
        self.ctx.enter(instance, "host_error", None, f"Error: {error}")


def fault_parameter(fault: Fault) -> Any:
    """What an instance keeps of a host fault (its ``faults`` entry)."""
    return {"slow_link": fault.kbytes_per_s, "wrong_gpu": fault.gpu_name, "small_disk": fault.disk_gb}.get(
        fault.kind, True)


def _defect_kind(kind: str) -> str:
    return {"slow_link_kbytes": "slow_link", "small_disk_gb": "small_disk"}.get(kind, kind)


def _validate_create(body: dict[str, Any], machine: Machine) -> dict[str, Any]:
    image = body.get("image")
    if not body.get("template_hash_id") and (not isinstance(image, str) or not image.strip()):
        raise VastError(400, "invalid_args", "'image' is required (a Docker image such as pytorch/pytorch).")
    if isinstance(image, str) and len(image) > 1024:
        raise VastError(400, "invalid_args", "image must be 1024 characters or fewer.")
    disk = body.get("disk", 10.0)
    try:
        disk = float(disk)
    except (TypeError, ValueError):
        raise VastError(400, "invalid_args", f"disk must be a number of GB, got {disk!r}") from None
    if disk < MIN_DISK_GB:
        raise VastError(400, "invalid_args", f"disk must be at least {MIN_DISK_GB:g} GB, got {disk:g}")
    share = machine.disk_space_gb
    if disk > share:
        raise VastError(400, "invalid_args",
                        f"Requested disk {disk:g} GB exceeds the {share:g} GB available on this machine.")
    label = body.get("label")
    if label is not None and len(str(label)) > 256:
        raise VastError(400, "label_too_long", "Label must be 256 characters or fewer.")
    env = body.get("env") or {}
    if isinstance(env, str):
        env = _parse_docker_flags(env)
    if not isinstance(env, dict):
        raise VastError(400, "invalid_args", "env must be an object of KEY: value strings.")
    env = {str(k): "" if v is None else str(v) for k, v in env.items()}
    if any(len(v) > 256 for v in env.values()) or sum(len(k) + len(v) for k, v in env.items()) > 32768:
        raise VastError(400, "invalid_args", "env values must be <= 256 characters and <= 32768 in total.")
    price = body.get("price")
    if price is not None:
        try:
            price = float(price)
        except (TypeError, ValueError):
            raise VastError(400, "invalid_price", f"price must be a number, got {price!r}") from None
        if not 0.001 <= price <= 128:
            raise VastError(400, "invalid_price", "Bid price must be between 0.001 and 128 $/h.")
    runtype = body.get("runtype") or "ssh"
    if runtype not in VALID_RUNTYPES:
        raise VastError(400, "invalid_args", f"Unknown runtype {runtype!r}.")
    onstart = body.get("onstart")
    args_len = len(onstart or "") + len(" ".join(body.get("args") or [])) + len(body.get("args_str") or "")
    if args_len > 4096:
        raise VastError(400, "invalid_args", "args + args_str + onstart must be 4096 characters or fewer.")
    return {
        "image": image or f"template:{body.get('template_hash_id')}",
        "disk": disk,
        "label": None if label is None else str(label),
        "env": env,
        "price": price,
        "runtype": runtype,
        "onstart": onstart,
        "image_login": body.get("image_login"),
    }


def _parse_docker_flags(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    tokens = shlex.split(text)
    for flag, value in itertools.pairwise(tokens):
        if flag == "-e" and "=" in value:
            key, _, val = value.partition("=")
            env[key] = val
        elif flag in ("-p", "-v", "-n"):
            env[f"{flag} {value}"] = "1"
        elif flag == "-h":
            env["-h"] = value
    return env
