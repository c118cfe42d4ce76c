"""The marketplace: one façade over its parts, each a module of its own.

- state.py: the state and its store (``state.json``), and the context the parts share;
- accounts.py: accounts, API keys and SSH keys;
- offers.py: offer search, free GPUs, minimum bids;
- lifecycle.py: create, the phases, stop/start, reboot, recycle, destroy;
- billing.py: the meter, credit, and bids (outbid, resume);
- host_sync.py: each instance's real host following its phase (hosts.py builds them);
- fault_effects.py: armed faults reaching the instances they target;
- instance_io.py: request_logs and execute, and their result URLs.

All state changes happen on the event loop thread, so handlers and the ticker need no locks. The
ticker advances phases by wall-clock deadlines (Vast's timings divided by ``speed``), bills per
second, and reconciles each instance's real host with its phase.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from mlops_vast.sim import internet
from mlops_vast.sim.accounts import DEFAULT_CREDIT, Accounts
from mlops_vast.sim.billing import Billing
from mlops_vast.sim.catalog import Catalog, Machine, Offer, build_catalog
from mlops_vast.sim.errors import VastError
from mlops_vast.sim.fault_effects import FaultEffects
from mlops_vast.sim.faults import Fault
from mlops_vast.sim.host_sync import HostSync
from mlops_vast.sim.hosts import HostManager
from mlops_vast.sim.instance_io import InstanceIO
from mlops_vast.sim.lifecycle import Lifecycle
from mlops_vast.sim.models import Account, Instance, SshKey
from mlops_vast.sim.offers import Offers
from mlops_vast.sim.state import SimContext, SimState, StateStore

__all__ = ["DEFAULT_CREDIT", "Market", "VastError"]

log = logging.getLogger("vastsim.market")


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
        self.seed = seed
        store = StateStore(state_dir, seed)
        self.ctx = SimContext(state=store.load(), store=store, catalog=build_catalog(seed),
                              hosts=hosts or HostManager(state_dir, bind_host=public_host), speed=speed,
                              public_host=public_host)
        self.accounts = Accounts(self.ctx)
        self.offers = Offers(self.ctx)
        self.billing = Billing(self.ctx, self.offers)
        self.host_sync = HostSync(self.ctx, self.accounts)
        self.lifecycle = Lifecycle(self.ctx, self.accounts, self.offers, self.billing, self.host_sync)
        self.fault_effects = FaultEffects(self.ctx, self.billing, self.host_sync)
        self.instance_io = InstanceIO(self.ctx, self.host_sync)
        self.lifecycle.resume_after_restart()
        for key in api_keys or []:
            self.accounts.ensure(key, credit)
        self.accounts.ensure_one(credit)

    # ------------------------------------------------------------------ what the API reads

    @property
    def state(self) -> SimState:
        return self.ctx.state

    @property
    def catalog(self) -> Catalog:
        return self.ctx.catalog

    @property
    def hosts(self) -> HostManager:
        return self.ctx.hosts

    @property
    def speed(self) -> float:
        return self.ctx.speed

    @property
    def public_host(self) -> str:
        return self.ctx.public_host

    def timing(self, name: str) -> float:
        return self.ctx.timing(name)

    def touch(self) -> None:
        self.ctx.touch()

    def save(self) -> None:
        self.ctx.store.save(self.ctx.state)

    def mine(self, account: Account) -> list[Instance]:
        return [i for i in self.state.instances.values() if i.user_id == account.id]

    def free_gpus(self, machine: Machine) -> int:
        return self.offers.free_gpus(machine)

    def min_bid(self, offer: Offer) -> float:
        return self.offers.min_bid(offer)

    def port_map(self, instance: Instance) -> dict[str, int]:
        return self.host_sync.port_map(instance)

    # ------------------------------------------------------------------ what the API asks

    def authenticate(self, api_key: str | None) -> Account:
        return self.accounts.authenticate(api_key)

    def own_instance(self, account: Account, instance_id: int) -> Instance:
        return self.accounts.own_instance(account, instance_id)

    def search_offers(self, account: Account | None, body: Any) -> list[dict[str, Any]]:
        return self.offers.search(account, body)

    def create_instance(self, account: Account, offer_id: int, body: Any) -> tuple[Instance, bool]:
        return self.lifecycle.create(account, offer_id, body)

    def set_state(self, account: Account, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return self.lifecycle.set_state(self.own_instance(account, instance_id), body)

    def reboot(self, account: Account, instance_id: int) -> dict[str, Any]:
        try:
            instance = self.own_instance(account, instance_id)
        except VastError:
            raise VastError(400, "invalid_args", "invalid instance_id") from None
        return self.lifecycle.reboot(instance)

    def recycle(self, account: Account, instance_id: int) -> dict[str, Any]:
        return self.lifecycle.recycle(self.own_instance(account, instance_id))

    def destroy(self, account: Account, instance_id: int) -> None:
        self.lifecycle.destroy(self.own_instance(account, instance_id))

    def change_bid(self, account: Account, instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        instance = self.state.instances.get(instance_id)
        if instance is None or instance.user_id != account.id:
            raise VastError(404, "no_such_instance", "Instance with that ID does not exist.")
        return self.billing.change_bid(instance, body)

    def request_logs(self, account: Account, instance_id: int, body: dict[str, Any]) -> str:
        return self.instance_io.request_logs(account, instance_id, body)

    def execute(self, account: Account, instance_id: int, body: dict[str, Any]) -> tuple[str, str]:
        return self.instance_io.execute(self.own_instance(account, instance_id), body)

    def result_text(self, token: str) -> str | None:
        return self.instance_io.result_text(token)

    def add_account_key(self, account: Account, key: Any) -> SshKey:
        return self.accounts.add_key(account, key)

    def delete_account_key(self, account: Account, key_id: int) -> None:
        self.accounts.delete_key(account, key_id)

    def update_account_key(self, account: Account, key_id: int, key: Any) -> SshKey:
        return self.accounts.update_key(account, key_id, key)

    def attach_instance_key(self, account: Account, instance_id: int, key: Any) -> dict[str, Any]:
        return self.accounts.attach_instance_key(account, instance_id, key)

    def detach_instance_key(self, account: Account, instance_id: int, key_id: int) -> dict[str, Any]:
        return self.accounts.detach_instance_key(account, instance_id, key_id)

    def arm_fault(self, spec: Any) -> Fault:
        return self.fault_effects.arm(spec)

    def clear_faults(self, fault_id: int | None = None) -> list[Fault]:
        return self.fault_effects.clear(fault_id)

    # ------------------------------------------------------------------ forwards (the simulated internet)

    def forwards(self) -> list[dict[str, str]]:
        return [{"name": name, "to": _endpoint(*to)} for name, to in sorted(self.hosts.forwards.items())]

    def set_forward(self, name: object, to: object) -> dict[str, str]:
        """Relay the simulated internet's requests for ``name`` to a loopback ``HOST:PORT`` (ValueError if not)."""
        key, upstream = internet.parse_forward(name, to)
        self.hosts.forwards[key] = upstream
        log.info("forward %s -> %s", key, _endpoint(*upstream))
        return {"name": key, "to": _endpoint(*upstream)}

    def clear_forwards(self, name: str | None = None) -> int:
        forwards = self.hosts.forwards
        names = list(forwards) if name is None else [n for n in forwards if n == internet.host_name(name)]
        for key in names:
            del forwards[key]
        return len(names)

    # ------------------------------------------------------------------ the ticker

    async def run(self, interval: float = 0.05) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # keep the marketplace alive; the error is logged with its traceback
                log.exception("tick failed")
            await asyncio.sleep(interval)

    def tick(self) -> None:
        now = time.time()
        try:
            self.fault_effects.tick(now)
        except Exception:  # a broken timer or trigger must not stop billing and the phases
            log.exception("fault timers failed")
        for instance in list(self.state.instances.values()):
            self.billing.accrue(instance, now)
            self.lifecycle.advance(instance, now)
            error = self.host_sync.reconcile(instance)
            if error is not None:
                self.lifecycle.host_failed(instance, error)
        self.billing.last_tick = now
        for account in self.billing.out_of_credit():
            self.lifecycle.stop_all(account, "Stopped: your account is out of credit.")
        self.ctx.store.save_if_due(self.state, now)

    async def shutdown(self) -> None:
        await self.fault_effects.shutdown()
        await self.host_sync.shutdown()
        self.save()
        await self.hosts.shutdown()


def _endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
