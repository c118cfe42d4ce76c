"""The marketplace: accounts, offers, instances, their lifecycle, billing and faults.

All state changes happen on the event loop thread, so handlers and the ticker need no
locks. The ticker advances phases by wall-clock deadlines (Vast's timings divided by
``speed``), bills per second, and reconciles each instance's real host with its phase:
a host is booted whenever the phase wants one up and stopped otherwise, which is also
how a restarted simulator brings its running instances back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_vast.sim import execute
from mlops_vast.sim import query as q
from mlops_vast.sim.catalog import Catalog, Machine, Offer, build_catalog, offer_row
from mlops_vast.sim.faults import Fault, FaultBook
from mlops_vast.sim.hosts import HostError, HostManager, HostSpec, free_port, free_port_block
from mlops_vast.sim.models import (
    GPU_BILLED,
    HOLDS_GPUS,
    HOST_UP,
    Account,
    Instance,
    SshKey,
    from_state,
    to_state,
)

log = logging.getLogger("vastsim.market")

# Real Vast timings in seconds; the simulator divides them by its speed factor.
REAL_TIMINGS = {
    "provisioning": 3.0,  # actual_status null
    "created": 4.0,
    "loading": 40.0,  # image pull and container start for a cached image
    "start_loading": 8.0,  # restart of a stopped instance
    "stopping": 3.0,
    "rebooting": 8.0,
    "recycling": 6.0,
    "logs_upload": 2.0,  # request_logs result appearing at its URL
}
VALID_RUNTYPES = frozenset({
    "ssh", "ssh_proxy", "ssh_direc", "ssh_direct", "ssh_direc ssh_proxy", "ssh_direct ssh_proxy",
    "jupyter", "jupyter_proxy ssh_proxy", "jupyter_direc ssh_direc ssh_proxy",
    "jupyter_direct ssh_direct ssh_proxy", "args",
})
V1_FILTER_COLUMNS = frozenset({
    "id", "actual_status", "intended_status", "cur_state", "next_state", "label", "gpu_name",
    "verification", "machine_id", "host_id", "image_uuid", "status_msg", "is_bid", "start_date",
    "geolocation", "template_hash_id", "image_runtype",
})
V1_MAX_LIMIT = 25
LOG_TAIL_BYTES = 256 * 1024
# request_logs and execute results kept for their URLs (see Market._add_result).
RESULTS_KEPT = 64
RESULT_TTL_S = 600.0
INSTANCE_ID_START = 20_000_001
DEFAULT_CREDIT = 100.0
MIN_DISK_GB = 8.0  # the server's minimum at create (§5)


class VastError(Exception):
    """An error answered with Vast's body shape: ``{"success": false, "error": ..., "msg": ...}``."""

    def __init__(self, status: int, error: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status, self.error, self.msg, self.extra = status, error, msg, extra

    def body(self) -> dict[str, Any]:
        return {"success": False, "error": self.error, "msg": self.msg, **self.extra}


@dataclass
class LogRequest:
    instance_id: int
    ready_at: float
    text: str | None  # None until there is something to upload (an execute still running)


class Market:
    def __init__(
        self,
        state_dir: Path,
        *,
        speed: float = 1.0,
        seed: int = 0,
        api_keys: list[str] | None = None,
        credit: float = DEFAULT_CREDIT,
        hosts: HostManager | None = None,
        public_host: str = "127.0.0.1",
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.state_dir = state_dir
        self.speed = speed
        self.seed = seed
        self.public_host = public_host
        self.hosts = hosts or HostManager(state_dir, bind_host=public_host)
        self.catalog: Catalog = build_catalog(seed)
        self.accounts: dict[str, Account] = {}
        self.ssh_keys: dict[int, SshKey] = {}
        self.instances: dict[int, Instance] = {}
        self.ledger: list[dict[str, Any]] = []
        self.faults = FaultBook()
        self.log_requests: dict[str, LogRequest] = {}
        self._next_instance_id = INSTANCE_ID_START
        self._next_key_id = 1
        self._host_ops: dict[int, asyncio.Task[None]] = {}
        self._destroy_tasks: set[asyncio.Task[None]] = set()
        self._last_tick = time.time()
        self._dirty = True
        self._last_save = 0.0
        self._load()
        for key in api_keys or []:
            self.ensure_account(key, credit)
        if not self.accounts:
            self.ensure_account(secrets.token_hex(32), credit)

    # ================================================================ persistence

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _load(self) -> None:
        if not self.state_file.exists():
            return
        data = json.loads(self.state_file.read_text())
        if data.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"state dir {self.state_dir} holds a marketplace built with --seed {data['seed']}; "
                f"use that seed or another --state-dir"
            )
        self.accounts = {row["api_key"]: from_state(Account, row) for row in data.get("accounts", [])}
        self.ssh_keys = {row["id"]: from_state(SshKey, row) for row in data.get("ssh_keys", [])}
        self.instances = {row["id"]: from_state(Instance, row) for row in data.get("instances", [])}
        self.ledger = data.get("ledger", [])
        self.faults = FaultBook.from_state(data.get("faults", []))
        self._next_instance_id = data.get("next_instance_id", INSTANCE_ID_START)
        self._next_key_id = data.get("next_key_id", 1)
        self._last_tick = time.time()
        for instance in self.instances.values():
            # The hosts died with the previous process: report loading until sshd is back.
            if instance.phase in ("running", "rebooting", "recycling"):
                instance.running_since = None
                instance.phase, instance.phase_until = "loading", self._last_tick
                instance.status_msg = "Resuming after a simulator restart."
        for instance in self.instances.values():
            if instance.ports is None:  # saved before ports were kept: allocate them once, for good
                with contextlib.suppress(HostError):
                    self._allocate_ports(instance)

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "seed": self.seed,
            "accounts": [to_state(a) for a in self.accounts.values()],
            "ssh_keys": [to_state(k) for k in self.ssh_keys.values()],
            "instances": [to_state(i) for i in self.instances.values()],
            "ledger": self.ledger,
            "faults": self.faults.to_state(),
            "next_instance_id": self._next_instance_id,
            "next_key_id": self._next_key_id,
        }
        tmp = self.state_file.with_suffix(".tmp")
        # Created 0600 from the start: it holds every account's API key.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data))
        os.replace(tmp, self.state_file)
        self._dirty = False
        self._last_save = time.time()

    def touch(self) -> None:
        self._dirty = True

    # ================================================================== accounts

    def ensure_account(self, api_key: str, credit: float = DEFAULT_CREDIT) -> Account:
        if api_key not in self.accounts:
            user_id = 100_000 + len(self.accounts) + 1
            self.accounts[api_key] = Account(
                id=user_id, api_key=api_key, email=f"user{user_id}@vastsim.invalid",
                username=f"user{user_id}", credit=credit,
            )
            self.touch()
        return self.accounts[api_key]

    def authenticate(self, api_key: str | None) -> Account:
        account = self.accounts.get(api_key or "")
        if account is None:
            raise VastError(401, "auth_error", "Invalid user key")
        return account

    # ==================================================================== offers

    def timing(self, name: str) -> float:
        return REAL_TIMINGS[name] / self.speed

    def _competing_bid(self, machine_id: int) -> float:
        return max((f.price or 0.0 for f in self.faults.of_kind("outbid") if f.machine_id == machine_id),
                   default=0.0)

    def free_gpus(self, machine: Machine, *, renting: bool = False) -> int:
        """GPUs of the machine nobody holds. ``renting``: as seen by a create, which loses races."""
        held = sum(i.num_gpus for i in self.instances.values()
                   if i.machine_id == machine.machine_id and i.phase in HOLDS_GPUS)
        taken = sum(self.catalog.offers[f.offer_id].num_gpus for f in self.faults.of_kind("take_offer")
                    if f.offer_id in self.catalog.offers and (renting or not f.at_rent)
                    and self.catalog.offers[f.offer_id].machine_id == machine.machine_id)
        return max(0, machine.gpus_total - held - taken)

    def min_bid(self, offer: Offer) -> float:
        machine = self.catalog.machines[offer.machine_id]
        floor = machine.min_bid_per_gpu * offer.num_gpus
        competing = self._competing_bid(machine.machine_id)
        return round(max(floor, competing + 0.001 if competing else 0.0), 6)

    def _bid_wins(self, instance: Instance) -> bool:
        """Whether a bid instance's bid reaches the machine's floor and tops every competing bid."""
        return instance.gpu_dph + 1e-9 >= self.min_bid(self.catalog.offers[instance.offer_id])

    def _outbid_msg(self, instance: Instance) -> str:
        minimum = self.min_bid(self.catalog.offers[instance.offer_id])
        return f"Instance outbid: your bid ${instance.gpu_dph:g}/h is below the current minimum bid ${minimum:g}/h."

    def offer_rows(self, account: Account | None, *, allocated_storage: float, bid: bool) -> list[dict[str, Any]]:
        now = time.time()
        mine = {i.machine_id for i in self.instances.values() if account and i.user_id == account.id}
        rows = []
        for offer in self.catalog.offers.values():
            machine = self.catalog.machines[offer.machine_id]
            if self.free_gpus(machine) < offer.num_gpus:
                continue  # rented GPUs are not on the market, whatever the filters say
            rows.append(offer_row(
                offer, machine, now=now, allocated_storage=allocated_storage, bid=bid,
                rentable=True, rented=machine.machine_id in mine,
                min_bid=self.min_bid(offer),
            ))
        return rows

    def _offer_columns(self) -> set[str]:
        offer = next(iter(self.catalog.offers.values()))
        return set(offer_row(offer, self.catalog.machines[offer.machine_id], now=time.time()))

    def search_offers(self, account: Account | None, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            raise VastError(400, "invalid_request", "Invalid query: must be dict of conditions")
        search_type = str(body.get("type") or "on-demand").lower()
        if search_type not in ("on-demand", "ondemand", "bid", "interruptible", "reserved"):
            raise VastError(400, "invalid_request", f"Invalid query: unknown type {search_type!r}")
        storage = body.get("allocated_storage", 8.0)
        try:
            storage = float(storage)
        except (TypeError, ValueError):
            raise VastError(400, "invalid_request", "Invalid query: allocated_storage must be a number") from None
        try:
            rows = self.offer_rows(account, allocated_storage=storage,
                                   bid=search_type in ("bid", "interruptible"))
            known = self._offer_columns()
            predicate = q.build_predicate(body, known, q.offer_virtual_columns())
            order = q.parse_order(body.get("order"), {"dph": "dph_total", "cuda_vers": "cuda_max_good"})
            limit = q.parse_limit(body.get("limit"), q.DEFAULT_OFFER_LIMIT, q.MAX_OFFER_LIMIT)
            hits = [row for row in rows if predicate(row)]
        except q.QueryError as exc:
            raise VastError(400, "invalid_request", str(exc)) from None
        if not order:
            order = [("score", True)]
        return q.sort_rows(hits, order)[:max(limit, 0)]

    # ================================================================= instances

    def own_instance(self, account: Account, instance_id: int) -> Instance:
        instance = self.instances.get(instance_id)
        if instance is None or instance.user_id != account.id:
            raise VastError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return instance

    def create_instance(self, account: Account, offer_id: int, body: Any) -> tuple[Instance, bool]:
        """Rent an offer. Returns the instance and whether it started (Vast's ``success``)."""
        if not isinstance(body, dict):
            raise VastError(400, "invalid_args", "Invalid json body")
        offer = self.catalog.offers.get(offer_id)
        if offer is None:
            raise VastError(404, "no_such_ask",
                            f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available.",
                            ask_id=offer_id)
        machine = self.catalog.machines[offer.machine_id]
        args = _validate_create(body, machine)
        if account.credit <= 0:
            raise VastError(400, "insufficient_credit", "You lack credit, see the billing page.")
        available = self.free_gpus(machine, renting=True) >= offer.num_gpus
        if not available and body.get("cancel_unavail"):
            raise VastError(410, "no_such_ask", f"Instance type {offer_id} is no longer available.",
                            ask_id=offer_id)
        now = time.time()
        instance_id = self._next_instance_id
        self._next_instance_id += 1
        price = args["price"]
        instance = Instance(
            id=instance_id, user_id=account.id, offer_id=offer_id, machine_id=machine.machine_id,
            num_gpus=offer.num_gpus, image=args["image"], disk=args["disk"], runtype=args["runtype"],
            created_at=now, gpu_dph=price if price is not None else machine.dph_per_gpu * offer.num_gpus,
            storage_dph=args["disk"] * machine.storage_cost / 720.0, label=args["label"], env=args["env"],
            onstart=args["onstart"], image_login=args["image_login"], is_bid=price is not None,
            direct_port=40_000 + (instance_id % 20_000), instance_api_key=secrets.token_hex(32),
            # Vast shows the proxy endpoint from creation on; the listener opens when the host boots.
            proxy_port=free_port(self.public_host),
        )
        try:
            self._allocate_ports(instance)
        except HostError as exc:
            raise VastError(503, "resources_unavailable", f"No public ports for the instance: {exc}") from None
        for kind, value in machine.defects.items():
            instance.faults[_defect_kind(kind)] = value
        for fault in self.faults.host_faults_for(instance_id=instance_id, machine_id=machine.machine_id,
                                                 offer_id=offer_id, label=instance.label, at_create=True):
            instance.faults[fault.kind] = _fault_parameter(fault)
        self.instances[instance_id] = instance
        started = available
        if not available:
            self._enter(instance, "scheduling", None,
                        "Waiting for the GPUs to become available (another contract holds them).")
        elif instance.is_bid and not self._bid_wins(instance):
            # Created, but stopped (§5: success false); it runs once its bid wins.
            started = False
            self._enter(instance, "outbid", None, self._outbid_msg(instance))
        else:
            self._enter(instance, "provisioning", now + self.timing("provisioning"))
        self.touch()
        return instance, started

    def _enter(self, instance: Instance, phase: str, until: float | None, msg: str | None = None) -> None:
        now = time.time()
        if instance.phase == "running" and phase != "running" and instance.running_since is not None:
            instance.running_since = None
        if phase == "running" and instance.running_since is None:
            instance.running_since = now
        instance.phase = phase
        instance.phase_until = until
        if msg is not None:
            instance.status_msg = msg
        self.touch()

    def set_state(self, account: Account, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        instance = self.own_instance(account, instance_id)
        if "label" in body:
            label = body.get("label")
            if label is not None and len(str(label)) > 256:
                raise VastError(400, "label_too_long", "Label must be 256 characters or fewer.")
            instance.label = None if label is None else str(label)
            self.touch()
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
            self._enter(instance, "stopped", None, msg)
            return
        self._enter(instance, "stopping", time.time() + self.timing("stopping"), msg)

    def start(self, instance: Instance) -> dict[str, Any]:
        instance.intended_status = "running"
        self.touch()
        if instance.phase not in ("stopped", "stopping", "scheduling", "queued", "outbid", "host_error"):
            return {"success": True}
        if instance.phase == "host_error" and "host_error" in instance.faults:
            return {"success": True}
        machine = self.catalog.machines[instance.machine_id]
        unavailable = {"success": False, "error": "resources_unavailable",
                       "msg": "Required resources are currently unavailable, state change queued."}
        if self.free_gpus(machine) < instance.num_gpus:
            # A container that never ran stays "created"; a stopped one stays "exited" until it starts.
            queued = "scheduling" if instance.phase == "scheduling" else "queued"
            self._enter(instance, queued, None, "Waiting for the GPUs to become available.")
            return unavailable
        if instance.is_bid and not self._bid_wins(instance):
            # Below the floor or a competing bid: it waits, stopped, until its bid wins (or is raised).
            self._enter(instance, "outbid", None, self._outbid_msg(instance))
            return unavailable
        self._enter(instance, "loading", time.time() + self.timing("start_loading"), "Starting container.")
        return {"success": True}

    def reboot(self, account: Account, instance_id: int) -> dict[str, Any]:
        try:
            instance = self.own_instance(account, instance_id)
        except VastError:
            raise VastError(400, "invalid_args", "invalid instance_id") from None
        if instance.phase != "running":
            return {"success": False, "error": "invalid_id", "msg": "Invalid instance id. Is the container started?"}
        self._restart_host(instance)
        self._enter(instance, "rebooting", time.time() + self.timing("rebooting"), "Rebooting.")
        return {"success": True}

    def recycle(self, account: Account, instance_id: int) -> dict[str, Any]:
        instance = self.own_instance(account, instance_id)
        if instance.phase not in ("running", "loading", "rebooting"):
            # Recycling re-pulls the image on GPUs the instance holds; a stopped one holds none.
            return {"success": False, "error": "invalid_id",
                    "msg": "Invalid instance id. Is the container started?"}
        self._restart_host(instance, wipe=True)
        self._enter(instance, "recycling", time.time() + self.timing("recycling"), "Recycling: pulling image.")
        return {"success": True}

    def change_bid(self, account: Account, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        instance = self.instances.get(instance_id)
        if instance is None or instance.user_id != account.id:
            raise VastError(404, "no_such_instance", "Instance with that ID does not exist.")
        if not instance.is_bid:
            raise VastError(400, "invalid_args", "Can't change price of on-demand contract.")
        price = body.get("price")
        if price is None:
            # The CLI sends price null without --price: "a winning bid price is used as the default".
            price = self.min_bid(self.catalog.offers[instance.offer_id])
        try:
            price = float(price)
        except (TypeError, ValueError):
            raise VastError(400, "invalid_price", "Please set a bid price >= 0.001.") from None
        if price < 0.001:
            raise VastError(400, "invalid_args", "Please set a bid price >= 0.001.")
        if price > 32 * instance.num_gpus:
            raise VastError(400, "invalid_price", f"Bid price must be <= {32 * instance.num_gpus}.")
        instance.gpu_dph = price
        self.touch()
        if instance.phase in HOLDS_GPUS and not self._bid_wins(instance):
            # Lowered below the floor or a competing bid: preempted like any losing bid.
            self._enter(instance, "outbid", None, self._outbid_msg(instance))
        elif instance.phase == "outbid":
            self._try_resume_bid(instance)
        return {"success": True}

    def destroy(self, account: Account, instance_id: int) -> None:
        instance = self.own_instance(account, instance_id)
        self._destroy(instance)

    def _destroy(self, instance: Instance) -> None:
        self._accrue(instance, time.time())
        instance.destroyed_at = time.time()
        instance.phase_until = None
        self.instances.pop(instance.id, None)
        self.ledger.append(instance.ledger_row())
        for key_id in [k.id for k in self.ssh_keys.values() if k.instance_id == instance.id]:
            self.ssh_keys.pop(key_id, None)
        self.touch()
        previous = self._host_ops.pop(instance.id, None)

        async def teardown() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await self.hosts.destroy(instance.id)

        task = asyncio.ensure_future(teardown())
        self._destroy_tasks.add(task)
        task.add_done_callback(self._destroy_tasks.discard)

    def _restart_host(self, instance: Instance, wipe: bool = False) -> None:
        previous = self._host_ops.pop(instance.id, None)

        async def restart() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await self.hosts.stop(instance.id)
            if wipe:
                await self.hosts.destroy(instance.id)
                await self._prepare_host(instance)

        self._host_ops[instance.id] = asyncio.ensure_future(restart())

    # ================================================================== ssh keys

    def add_account_key(self, account: Account, key: Any) -> SshKey:
        text = _validate_public_key(key)
        for existing in self.ssh_keys.values():
            if existing.user_id == account.id and existing.instance_id is None and existing.key == text:
                raise VastError(400, "duplicate_key", "This SSH key is already registered to your account.",
                                key=existing.public())
        record = SshKey(id=self._next_key_id, user_id=account.id, key=text, created_at=time.time())
        self._next_key_id += 1
        self.ssh_keys[record.id] = record
        self._push_keys(account.id)
        return record

    def delete_account_key(self, account: Account, key_id: int) -> None:
        record = self.ssh_keys.get(key_id)
        if record is None or record.user_id != account.id or record.instance_id is not None:
            raise VastError(404, "no_such_key", f"SSH key {key_id} not found.")
        del self.ssh_keys[key_id]
        self._push_keys(account.id)

    def update_account_key(self, account: Account, key_id: int, key: Any) -> SshKey:
        record = self.ssh_keys.get(key_id)
        if record is None or record.user_id != account.id or record.instance_id is not None:
            raise VastError(404, "no_such_key", f"SSH key {key_id} not found.")
        record.key = _validate_public_key(key)
        self._push_keys(account.id)
        return record

    def attach_instance_key(self, account: Account, instance_id: int, key: Any) -> dict[str, Any]:
        instance = self.own_instance(account, instance_id)
        text = _validate_public_key(key)
        for existing in self.ssh_keys.values():
            if existing.instance_id == instance.id and existing.key == text:
                return {"success": False, "error": "duplicate_key",
                        "msg": "SSH key already associated with this instance."}
        record = SshKey(id=self._next_key_id, user_id=account.id, key=text, created_at=time.time(),
                        instance_id=instance.id)
        self._next_key_id += 1
        self.ssh_keys[record.id] = record
        self._push_keys(account.id)
        return {"success": True, "msg": "SSH key added to instance.", "key": record.public()}

    def detach_instance_key(self, account: Account, instance_id: int, key_id: int) -> dict[str, Any]:
        instance = self.own_instance(account, instance_id)
        record = self.ssh_keys.get(key_id)
        if record is None or record.instance_id != instance.id:
            raise VastError(404, "no_such_key", f"SSH key {key_id} is not attached to instance {instance_id}.")
        del self.ssh_keys[key_id]
        self._push_keys(account.id)
        return {"success": True, "msg": "SSH key removed from instance."}

    def keys_for(self, instance: Instance) -> list[str]:
        return [k.key for k in self.ssh_keys.values()
                if k.user_id == instance.user_id and k.instance_id in (None, instance.id)]

    def _push_keys(self, user_id: int) -> None:
        # Vast pushes account keys to current instances too; sshd reads the file at each login.
        for instance in self.instances.values():
            if instance.user_id == user_id:
                self.hosts.write_authorized_keys(instance.id, self.keys_for(instance))
        self.touch()

    # ==================================================================== faults

    def arm_fault(self, spec: Any) -> Fault:
        fault = self.faults.arm(spec)
        if fault.kind in ("outbid",):
            self._apply_outbids()
        elif fault.kind != "http" and fault.kind != "take_offer":
            for instance in list(self.instances.values()):
                hits = self.faults.host_faults_for(
                    instance_id=instance.id, machine_id=instance.machine_id, offer_id=instance.offer_id,
                    label=instance.label, at_create=False)
                if fault in hits:
                    self._apply_live_fault(instance, fault)
        self.touch()
        return fault

    def clear_faults(self, fault_id: int | None = None) -> list[Fault]:
        removed = self.faults.clear(fault_id)
        for fault in removed:
            if fault.kind == "offline":
                for instance in self.instances.values():
                    if instance.phase == "offline" and instance.faults.pop("offline", None) is not None:
                        # Back online: running again once its sshd answers.
                        self._enter(instance, "loading", time.time(), "Host is back online.")
            if fault.kind == "slow_link":
                for instance in self.instances.values():
                    if "slow_link" in instance.faults and _targets(fault, instance):
                        instance.faults.pop("slow_link")
                        self._schedule_host_op(instance, self.hosts.set_link_rate(instance.id, None))
        self.touch()
        return removed

    def _apply_live_fault(self, instance: Instance, fault: Fault) -> None:
        instance.faults[fault.kind] = _fault_parameter(fault)
        if fault.kind == "offline" and instance.phase == "running":
            self._enter(instance, "offline", None, "Host is offline.")
        elif fault.kind == "slow_link":
            self._schedule_host_op(instance, self.hosts.set_link_rate(instance.id, fault.kbytes_per_s))
        elif fault.kind in ("wrong_gpu", "driver_error"):
            self.hosts.write_gpu_spec(instance.id, self._gpu_spec(instance))
        elif fault.kind == "host_error":
            self._enter(instance, "host_error", None, "Error: GPU error, unable to start instance")
        elif fault.kind == "stuck_loading" and instance.phase == "loading":
            instance.phase_until = None

    def _schedule_host_op(self, instance: Instance, coro: Any) -> None:
        previous = self._host_ops.get(instance.id)

        async def chained() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            with contextlib.suppress(HostError, KeyError):
                await coro

        self._host_ops[instance.id] = asyncio.ensure_future(chained())

    def _apply_outbids(self) -> None:
        for instance in self.instances.values():
            if not instance.is_bid:
                continue
            if instance.phase in HOLDS_GPUS and not self._bid_wins(instance):
                self._enter(instance, "outbid", None, "Instance outbid: a higher bid took the GPUs.")

    # ================================================================ the ticker

    async def run(self, interval: float = 0.05) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # keep the marketplace alive; the error is logged with its traceback
                log.exception("tick failed")
            await asyncio.sleep(interval)

    def tick(self) -> None:
        now = time.time()
        for instance in list(self.instances.values()):
            self._accrue(instance, now)
            self._advance(instance, now)
            self._reconcile_host(instance)
        self._last_tick = now
        self._enforce_credit()
        if self._dirty or now - self._last_save > 1.0:
            self.save()

    def _accrue(self, instance: Instance, now: float) -> None:
        elapsed = max(0.0, now - max(self._last_tick, instance.created_at))
        if instance.destroyed_at is not None or elapsed == 0:
            return
        account = self._account_of(instance.user_id)
        storage = instance.storage_dph * elapsed / 3600.0
        gpu = instance.gpu_dph * elapsed / 3600.0 if instance.phase in GPU_BILLED else 0.0
        if instance.phase in GPU_BILLED:
            instance.running_seconds += elapsed
        instance.storage_cost += storage
        instance.gpu_cost += gpu
        if account is not None:
            account.credit -= storage + gpu

    def _enforce_credit(self) -> None:
        for account in self.accounts.values():
            if account.credit > 0:
                continue
            for instance in self.instances.values():
                if instance.user_id == account.id and instance.intended_status == "running":
                    self.stop(instance, "Stopped: your account is out of credit.")

    def _advance(self, instance: Instance, now: float) -> None:
        if instance.phase_until is None or now < instance.phase_until:
            if instance.phase in ("scheduling", "queued"):
                self._try_schedule(instance)
            elif instance.phase == "outbid":
                self._try_resume_bid(instance)
            return
        phase = instance.phase
        if phase == "provisioning":
            self._enter(instance, "created", now + self.timing("created"))
        elif phase == "created":
            if "host_error" in instance.faults:
                self._enter(instance, "host_error", None, "Error: GPU error, unable to start instance")
            else:
                self._enter(instance, "loading", now + self.timing("loading"), f"Pulling image {instance.image}")
                if "stuck_loading" in instance.faults:
                    instance.phase_until = None
        elif phase == "recycling":
            # Recycling re-pulls the image: recycling -> loading -> running (§8).
            self._enter(instance, "loading", now + self.timing("loading"), f"Recycling: pulling image {instance.image}")
            if "stuck_loading" in instance.faults:
                instance.phase_until = None
        elif phase in ("loading", "rebooting"):
            # Running means reachable: wait for sshd even when the timer is up.
            if "offline" in instance.faults:
                self._enter(instance, "offline", None, "Host is offline.")
            elif self.hosts.is_running(instance.id) and instance.id not in self._host_ops:
                runtype = "ssh" if "ssh" in instance.runtype else instance.runtype
                self._enter(instance, "running", None, f"success, running {instance.image}/{runtype}")
        elif phase == "stopping":
            self._enter(instance, "stopped", None)

    def _try_schedule(self, instance: Instance) -> None:
        if instance.intended_status != "running":
            return
        machine = self.catalog.machines[instance.machine_id]
        # Our own GPUs are not held while scheduling, so the machine must have room for them.
        if self.free_gpus(machine) < instance.num_gpus:
            return
        if instance.is_bid and not self._bid_wins(instance):
            self._enter(instance, "outbid", None, self._outbid_msg(instance))
        elif instance.phase == "queued":
            # A queued start of a stopped instance: its container starts again, it is not created anew.
            self._enter(instance, "loading", time.time() + self.timing("start_loading"), "GPUs available; starting.")
        else:
            self._enter(instance, "provisioning", time.time() + self.timing("provisioning"),
                        "GPUs available; starting.")

    def _try_resume_bid(self, instance: Instance) -> None:
        if instance.intended_status != "running":
            return
        if self._bid_wins(instance) and self.free_gpus(
                self.catalog.machines[instance.machine_id]) >= instance.num_gpus:
            self._enter(instance, "loading", time.time() + self.timing("start_loading"),
                        "Bid is winning again; resuming.")

    def _reconcile_host(self, instance: Instance) -> None:
        if instance.id in self._host_ops:
            task = self._host_ops[instance.id]
            if not task.done():
                return
            del self._host_ops[instance.id]
            error = task.exception()
            if error is not None:
                # Any failure to boot is the host's error: retrying every tick would only spin.
                log.error("instance %s: host operation failed: %r", instance.id, error)
                self._enter(instance, "host_error", None, f"Error: {error}")
                return
        want_up = instance.phase in HOST_UP and not (
            instance.phase == "loading" and "stuck_loading" in instance.faults)
        running = self.hosts.is_running(instance.id)
        if want_up and not running:
            self._host_ops[instance.id] = asyncio.ensure_future(self._boot(instance))
        elif not want_up and (running or self.hosts.needs_stop(instance.id)):
            # Also when sshd died on its own: its port forwarder (and loopback leftovers) must end too.
            self._host_ops[instance.id] = asyncio.ensure_future(self.hosts.stop(instance.id))

    async def _boot(self, instance: Instance) -> None:
        await self._prepare_host(instance)
        # For jupyter runtypes Vast's proxy serves SSH one port above the reported ssh_port.
        bump = 1 if "jupyter" in instance.runtype else 0
        wanted = instance.proxy_port + bump if instance.proxy_port is not None else None
        port = await self.hosts.open_proxy(instance.id, wanted)
        if port != wanted:  # the promised port was taken meanwhile
            instance.proxy_port = port - bump
            self.touch()
        await self.hosts.start(instance.id)

    async def _prepare_host(self, instance: Instance) -> None:
        disk = instance.faults.get("small_disk") or instance.disk
        spec = HostSpec(
            instance_id=instance.id, hostname=f"C.{instance.id}", disk_gb=float(disk),
            authorized_keys=self.keys_for(instance), gpu_spec=self._gpu_spec(instance),
            onstart=instance.onstart, direct_port=instance.direct_port,
            address=instance.address, sshd_port=instance.sshd_port,
            link_kbytes_per_s=instance.faults.get("slow_link"),
        )
        await self.hosts.allocate(spec)
        if (spec.address, spec.sshd_port) != (instance.address, instance.sshd_port):
            instance.address, instance.sshd_port = spec.address, spec.sshd_port
            self.touch()
        spec.env = self._instance_env(instance)
        spec.forwards = [(key.split("/")[1], public, int(key.split("/")[0]))
                         for key, public in self.port_map(instance).items() if key != "22/tcp"]
        await self.hosts.prepare(spec)

    def _instance_env(self, instance: Instance) -> dict[str, str]:
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
        ``env`` on the ports ``_allocate_ports`` gave the instance at create (kept in the state).
        """
        if "direc" not in instance.runtype:
            return {}
        ports = dict(instance.ports or {})
        if self.hosts.mode == "loopback" and instance.sshd_port:
            ports["22/tcp"] = instance.sshd_port
        ports.setdefault("22/tcp", instance.direct_port)
        return ports

    def _allocate_ports(self, instance: Instance) -> None:
        """Give a direct instance its public ports for good: ``22/tcp``, then each distinct ``-p`` entry.

        Namespace mode: each instance listens on its own address, so its ports need only be distinct
        within it: sshd's direct port, then the ports after it, skipping the instance's container ports
        (they are bound on the same address). Loopback mode: every instance shares 127.0.0.1, so each
        gets a block of consecutive ports that are nobody else's and free when allocated, outside the
        kernel's ephemeral range (where free_port() picks sshd and proxy ports); sshd listens on the first.
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
        container = {int(key.split("/")[0]) for key in keys[1:]}
        if self.hosts.mode == "loopback":
            # Container ports too, this instance's and everyone's: on the shared 127.0.0.1 a public port
            # equal to one would relay to itself, or keep the app from binding its own port.
            taken: set[int] = set(container)
            for other in self.instances.values():
                if other.id != instance.id:
                    taken.update((other.ports or {}).values())
                    taken.update(int(key.split("/")[0]) for key in other.ports or {} if key != "22/tcp")
                    # The proxy serves SSH one port above ssh_port for jupyter runtypes.
                    taken.update(p + bump for p in (other.proxy_port, other.sshd_port) if p for bump in (0, 1))
            hint = int(self.hosts.tag, 16) * 7919 + instance.id * 16
            if instance.sshd_port:  # allocated before ports were kept: sshd keeps its port
                first = free_port_block(len(keys) - 1, avoid=taken, hint=hint) if len(keys) > 1 else 0
                instance.ports = {"22/tcp": instance.sshd_port,
                                  **{key: first + index for index, key in enumerate(keys[1:])}}
                return
            first = free_port_block(len(keys), avoid=taken, hint=hint)
            instance.sshd_port = instance.direct_port = first
            instance.ports = {key: first + index for index, key in enumerate(keys)}
            return
        port = instance.direct_port
        if port + len(keys) + len(container) > 65_535:
            port = 40_000  # room for every port, even with each container port in the way
        while port in container:
            port += 1
        instance.direct_port = port
        instance.ports = {"22/tcp": port}
        for key in keys[1:]:
            port += 1
            while port in container:
                port += 1
            instance.ports[key] = port

    def _gpu_spec(self, instance: Instance) -> dict[str, Any]:
        machine = self.catalog.machines[instance.machine_id]
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

    def _account_of(self, user_id: int) -> Account | None:
        return next((a for a in self.accounts.values() if a.id == user_id), None)

    # =================================================================== logs

    def request_logs(self, account: Account, instance_id: int, body: dict[str, Any]) -> str:
        instance = self.instances.get(instance_id)
        if instance is None or instance.user_id != account.id:
            raise VastError(404, "invalid_id", "Invalid instance id.")
        lines = [f"{time.strftime('%Y-%m-%dT%H:%M:%S')} vastsim: instance {instance.id} "
                 f"({instance.image}) is {instance.actual_status}; {instance.status_msg or ''}"]
        onstart_log = self.hosts.instance_dir(instance.id) / "etc" / "onstart.log"
        with contextlib.suppress(OSError), open(onstart_log, "rb") as handle:
            # Only the end: the log may be large and this runs on the event loop.
            handle.seek(max(0, onstart_log.stat().st_size - LOG_TAIL_BYTES))
            lines += handle.read().decode(errors="replace").splitlines()
        if body.get("filter"):
            lines = [line for line in lines if str(body["filter"]) in line]
        tail = body.get("tail")
        with contextlib.suppress(TypeError, ValueError):
            if tail is not None:
                lines = lines[-int(tail):]
        return self._add_result(LogRequest(instance.id, time.time() + self.timing("logs_upload"),
                                           "\n".join(lines) + "\n"))

    def execute(self, account: Account, instance_id: int, body: dict[str, Any]) -> tuple[str, str]:
        """``PUT instances/command``: one ls, rm or du on a stopped instance's files (execute.py).

        Returns the result token and ``writeable_path``; the output appears at the result URL once
        the command has run (404 until then, like Vast's upload).
        """
        instance = self.own_instance(account, instance_id)
        try:
            command = execute.parse(body.get("command"), self.hosts.mode)
        except execute.CommandError as exc:
            raise VastError(400, "invalid_args", str(exc)) from None
        if not _files_at_rest(instance):
            raise VastError(400, "invalid_args", "Execute command only avail on stopped instances. "
                            "Use ssh to run commands on running instances.")
        request = LogRequest(instance.id, time.time() + self.timing("logs_upload"), None)
        token = self._add_result(request)
        previous = self._host_ops.get(instance.id)

        def still_stopped() -> str | None:
            # Asked again right before the command runs: a queued, scheduling or outbid instance may have
            # started loading meanwhile, and its host must never come up on files the command changes.
            if self.instances.get(instance.id) is not instance:
                return "the instance was destroyed; the command did not run."
            if not _files_at_rest(instance):
                return "the instance is starting; the command did not run. Use ssh to run commands on it."
            return None

        async def run() -> None:
            # A host operation like the others, so the instance does not boot while the command runs.
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                refusal = still_stopped()
                if refusal is not None:
                    request.text = f"vastsim: {refusal}\n"
                    return
                if self.hosts.is_running(instance.id):
                    await self.hosts.stop(instance.id)  # stopped meanwhile; the ticker would stop it too
                request.text = await execute.run(command, self.hosts, instance.id, proceed=still_stopped)
            except Exception as exc:  # a failure to run is the command's output, never a host error
                log.exception("instance %s: execute failed", instance.id)
                request.text = f"vastsim: could not run the command: {exc}\n"

        self._host_ops[instance.id] = asyncio.ensure_future(run())
        return token, self.hosts.writeable_path(instance.id)

    def result_text(self, token: str) -> str | None:
        """A result's text once it is "uploaded" and until it expires (RESULT_TTL_S); None otherwise."""
        found = self.log_requests.get(token)
        now = time.time()
        if found is None or found.text is None or not found.ready_at <= now < found.ready_at + RESULT_TTL_S:
            return None
        return found.text

    def _add_result(self, request: LogRequest) -> str:
        """Keep a request_logs or execute result for its URL; returns its token.

        Each result holds up to 256 KiB (a log tail, a command's output), so only the newest
        RESULTS_KEPT are kept, whatever the rate of requests (at most ~16 MiB), and none longer than
        RESULT_TTL_S after it is ready: the CLI fetches a result within seconds (execute polls for about
        9 s), so an older one is garbage. An execute still running that is dropped just goes unfetched.
        """
        expired = time.time() - RESULT_TTL_S
        for token in [token for token, old in self.log_requests.items() if old.ready_at < expired]:
            del self.log_requests[token]
        while len(self.log_requests) >= RESULTS_KEPT:
            del self.log_requests[next(iter(self.log_requests))]  # dicts keep insertion order: the oldest
        token = secrets.token_urlsafe(16)
        self.log_requests[token] = request
        return token

    # ================================================================ shutdown

    async def shutdown(self) -> None:
        for task in list(self._host_ops.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        for task in list(self._destroy_tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        self.save()
        await self.hosts.shutdown()


def _files_at_rest(instance: Instance) -> bool:
    """Whether execute may touch the instance's files: stopped, and not on its way up or down.

    One test for the request and for the re-check right before running: a scheduling instance counts
    as stopped, but once it moves on (provisioning, created, loading) its cur_state says running.
    """
    return instance.cur_state == "stopped" and instance.phase not in HOST_UP and instance.phase != "stopping"


def _targets(fault: Fault, instance: Instance) -> bool:
    return (fault.instance_id == instance.id or fault.machine_id == instance.machine_id
            or fault.offer_id == instance.offer_id or (fault.label is not None and fault.label == instance.label))


def _defect_kind(kind: str) -> str:
    return {"slow_link_kbytes": "slow_link", "small_disk_gb": "small_disk"}.get(kind, kind)


def _fault_parameter(fault: Fault) -> Any:
    return {"slow_link": fault.kbytes_per_s, "wrong_gpu": fault.gpu_name, "small_disk": fault.disk_gb}.get(
        fault.kind, True)


def _gpu_uuid(machine_id: int, index: int) -> str:
    digest = f"{machine_id:08x}{index:04x}".rjust(32, "0")
    return f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _validate_public_key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise VastError(400, "invalid_args",
                        "ssh_key is required: an OpenSSH public key such as 'ssh-ed25519 AAAA...'.")
    text = " ".join(key.strip().split())
    parts = text.split(" ")
    if "PRIVATE KEY" in text or len(parts) < 2 or not (parts[0].startswith("ssh-") or parts[0].startswith("ecdsa-")):
        raise VastError(400, "invalid_args", "Invalid SSH public key: expected 'ssh-<type> <base64> [comment]'.")
    return text


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
