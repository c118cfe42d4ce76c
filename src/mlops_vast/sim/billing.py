"""Billing and bids: the per-second meter (GPU while running, storage until destroyed), credit, and
interruptible instances, which run while their bid reaches the machine's floor and tops every
competing bid, and are preempted (``outbid``) when it does not."""

from __future__ import annotations

import time
from typing import Any

from mlops_vast.sim.errors import VastError
from mlops_vast.sim.models import GPU_BILLED, HOLDS_GPUS, Account, Instance
from mlops_vast.sim.offers import Offers
from mlops_vast.sim.state import SimContext


class Billing:
    def __init__(self, ctx: SimContext, offers: Offers) -> None:
        self.ctx = ctx
        self.offers = offers
        self.last_tick = time.time()

    # ------------------------------------------------------------------ the meter

    def accrue(self, instance: Instance, now: float) -> None:
        """Bill the instance from the last tick (or its creation) to ``now``."""
        elapsed = max(0.0, now - max(self.last_tick, instance.created_at))
        if instance.destroyed_at is not None or elapsed == 0:
            return
        storage = instance.storage_dph * elapsed / 3600.0
        gpu = instance.gpu_dph * elapsed / 3600.0 if instance.phase in GPU_BILLED else 0.0
        if instance.phase in GPU_BILLED:
            instance.running_seconds += elapsed
        instance.storage_cost += storage
        instance.gpu_cost += gpu
        account = self.ctx.account_of(instance.user_id)
        if account is not None:
            account.credit -= storage + gpu

    def out_of_credit(self) -> list[Account]:
        return [account for account in self.ctx.state.accounts.values() if account.credit <= 0]

    def close(self, instance: Instance) -> None:
        """The last bill of a destroyed instance, into the ledger."""
        self.accrue(instance, time.time())
        instance.destroyed_at = time.time()
        instance.phase_until = None
        self.ctx.state.ledger.append(instance.ledger_row())

    # ------------------------------------------------------------------ bids

    def bid_wins(self, instance: Instance) -> bool:
        """Whether a bid instance's bid reaches the machine's floor and tops every competing bid."""
        return instance.gpu_dph + 1e-9 >= self.offers.min_bid(self.ctx.catalog.offers[instance.offer_id])

    def outbid_msg(self, instance: Instance) -> str:
        minimum = self.offers.min_bid(self.ctx.catalog.offers[instance.offer_id])
        return f"Instance outbid: your bid ${instance.gpu_dph:g}/h is below the current minimum bid ${minimum:g}/h."

    def change_bid(self, instance: Instance, body: dict[str, Any]) -> dict[str, Any]:
        if not instance.is_bid:
            raise VastError(400, "invalid_args", "Can't change price of on-demand contract.")
        price = body.get("price")
        if price is None:
            # The CLI sends price null without --price: "a winning bid price is used as the default".
            price = self.offers.min_bid(self.ctx.catalog.offers[instance.offer_id])
        try:
            price = float(price)
        except (TypeError, ValueError):
            raise VastError(400, "invalid_price", "Please set a bid price >= 0.001.") from None
        if price < 0.001:
            raise VastError(400, "invalid_args", "Please set a bid price >= 0.001.")
        if price > 32 * instance.num_gpus:
            raise VastError(400, "invalid_price", f"Bid price must be <= {32 * instance.num_gpus}.")
        instance.gpu_dph = price
        self.ctx.touch()
        if instance.phase in HOLDS_GPUS and not self.bid_wins(instance):
            # Lowered below the floor or a competing bid: preempted like any losing bid.
            self.ctx.enter(instance, "outbid", None, self.outbid_msg(instance))
        elif instance.phase == "outbid":
            self.try_resume(instance)
        return {"success": True}

    def apply_outbids(self) -> None:
        for instance in self.ctx.state.instances.values():
            if instance.is_bid and instance.phase in HOLDS_GPUS and not self.bid_wins(instance):
                self.ctx.enter(instance, "outbid", None, "Instance outbid: a higher bid took the GPUs.")

    def try_resume(self, instance: Instance) -> None:
        """An outbid instance resumes once its bid wins again and the GPUs are free."""
        if instance.intended_status != "running":
            return
        machine = self.ctx.catalog.machines[instance.machine_id]
        if self.bid_wins(instance) and self.offers.free_gpus(machine) >= instance.num_gpus:
            self.ctx.enter(instance, "loading", time.time() + self.ctx.timing("start_loading"),
                           "Bid is winning again; resuming.")
