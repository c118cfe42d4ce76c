"""Offer search: what the market lists (rented GPUs are not on it), at which price and minimum bid,
filtered and ordered by the query as Vast does (query.py holds the semantics)."""

from __future__ import annotations

import time
from typing import Any

from mlops_vast.sim import query as q
from mlops_vast.sim.catalog import Machine, Offer, offer_row
from mlops_vast.sim.errors import VastError
from mlops_vast.sim.models import HOLDS_GPUS, Account
from mlops_vast.sim.state import SimContext

SEARCH_TYPES = ("on-demand", "ondemand", "bid", "interruptible", "reserved")


class Offers:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def free_gpus(self, machine: Machine, *, renting: bool = False) -> int:
        """GPUs of the machine nobody holds. ``renting``: as seen by a create, which loses races."""
        state, offers = self.ctx.state, self.ctx.catalog.offers
        held = sum(i.num_gpus for i in state.instances.values()
                   if i.machine_id == machine.machine_id and i.phase in HOLDS_GPUS)
        taken = sum(offers[f.offer_id].num_gpus for f in state.faults.of_kind("take_offer")
                    if f.offer_id in offers and (renting or not f.at_rent)
                    and offers[f.offer_id].machine_id == machine.machine_id)
        return max(0, machine.gpus_total - held - taken)

    def competing_bid(self, machine_id: int) -> float:
        return max((f.price or 0.0 for f in self.ctx.state.faults.of_kind("outbid") if f.machine_id == machine_id),
                   default=0.0)

    def min_bid(self, offer: Offer) -> float:
        """The lowest bid that wins the offer's GPUs now: the machine's floor, or above a competing bid."""
        machine = self.ctx.catalog.machines[offer.machine_id]
        floor = machine.min_bid_per_gpu * offer.num_gpus
        competing = self.competing_bid(machine.machine_id)
        return round(max(floor, competing + 0.001 if competing else 0.0), 6)

    def rows(self, account: Account | None, *, allocated_storage: float, bid: bool) -> list[dict[str, Any]]:
        now = time.time()
        catalog, instances = self.ctx.catalog, self.ctx.state.instances.values()
        mine = {i.machine_id for i in instances if account and i.user_id == account.id}
        rows = []
        for offer in catalog.offers.values():
            machine = catalog.machines[offer.machine_id]
            if self.free_gpus(machine) < offer.num_gpus:
                continue  # rented GPUs are not on the market, whatever the filters say
            rows.append(offer_row(offer, machine, now=now, allocated_storage=allocated_storage, bid=bid,
                                  rentable=True, rented=machine.machine_id in mine, min_bid=self.min_bid(offer)))
        return rows

    def _columns(self) -> set[str]:
        offer = next(iter(self.ctx.catalog.offers.values()))
        return set(offer_row(offer, self.ctx.catalog.machines[offer.machine_id], now=time.time()))

    def search(self, account: Account | None, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict):
            raise VastError(400, "invalid_request", "Invalid query: must be dict of conditions")
        search_type = str(body.get("type") or "on-demand").lower()
        if search_type not in SEARCH_TYPES:
            raise VastError(400, "invalid_request", f"Invalid query: unknown type {search_type!r}")
        storage = body.get("allocated_storage", 8.0)
        try:
            storage = float(storage)
        except (TypeError, ValueError):
            raise VastError(400, "invalid_request", "Invalid query: allocated_storage must be a number") from None
        try:
            rows = self.rows(account, allocated_storage=storage, bid=search_type in ("bid", "interruptible"))
            predicate = q.build_predicate(body, self._columns(), q.offer_virtual_columns())
            order = q.parse_order(body.get("order"), {"dph": "dph_total", "cuda_vers": "cuda_max_good"})
            limit = q.parse_limit(body.get("limit"), q.DEFAULT_OFFER_LIMIT, q.MAX_OFFER_LIMIT)
            hits = [row for row in rows if predicate(row)]
        except q.QueryError as exc:
            raise VastError(400, "invalid_request", str(exc)) from None
        return q.sort_rows(hits, order or [("score", True)])[:max(limit, 0)]
