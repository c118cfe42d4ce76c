# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one way the collection picks offers, for searching (``vast_offer``) and renting (``vast_instance``):
the query (or one offer id) sent as the CLI sends it, ``field ~ regex`` applied to the rows, machines
excluded, the price held against ``max_dph`` (at the bid for interruptible rentals, on-demand otherwise),
the order kept, and, when nothing is left, why, in words that say what to change.

Private to the collection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .rows import normalise_offer
from .vast_query import ParsedQuery, build_search_body, no_offer_reason, parse_query

# Ask the server for more than wanted so client-side exclusions still leave enough rows.
OVERFETCH = 64


@dataclass(frozen=True)
class OfferRequest:
    """What offers are wanted: a query (or one ``offer_id``) and the limits every pick honours."""

    query: str | None = None
    offer_id: int | None = None
    order: str | None = "dph+"
    offer_type: str = "on-demand"
    bid_price: float | None = None
    # Interruptible at this multiple of each offer's current minimum bid, capped at max_bid (when no bid_price).
    bid_margin: float | None = None
    max_bid: float | None = None
    storage_gb: float = 5.0
    max_dph: float | None = None
    exclude_machines: Sequence[int] = ()
    limit: int = 10
    default_filters: bool = True

    def parsed(self) -> ParsedQuery | None:
        """The query parsed (QueryError names a bad token before any request); None for an offer id."""
        if self.offer_id is not None:
            return None
        return parse_query(self.query or "", defaults=self.default_filters)

    def bid_for(self, offer: Mapping[str, Any]) -> float | None:
        """The bid ($/h) this request places on the offer; None for on-demand."""
        if self.bid_price is not None:
            return self.bid_price
        if self.bid_margin is None:
            return None
        bid = round(float(offer.get("min_bid") or 0) * self.bid_margin, 4)
        return max(0.001, bid if self.max_bid is None else min(bid, self.max_bid))

    def winnable(self, offer: Mapping[str, Any]) -> bool:
        """A bid below the offer's current minimum would be created stopped (outbid) and never run."""
        bid = self.bid_for(offer)
        return bid is None or bid + 1e-9 >= float(offer.get("min_bid") or 0)

    def price(self, offer: Mapping[str, Any]) -> float:
        """$/h the rental would bill, storage included: at the bid when there is one, not the listed minimum."""
        total = float(offer.get("dph_total") or 0)
        bid = self.bid_for(offer)
        if bid is not None:
            total += bid - float(offer.get("min_bid") or 0)
        return total


@dataclass
class OfferSelection:
    """The offers that may be rented, best first, and why there are none when there are none."""

    offers: list[dict[str, Any]]
    body: dict[str, Any]
    reason: str | None = None
    # Empty because a gpu_name in the query is no GPU on the market (a misspelt model, usually).
    unknown_gpu_name: bool = False


def select_offers(client: Any, request: OfferRequest) -> OfferSelection:
    """Search, filter and order offers for ``request``; the reason is set whenever none is left."""
    parsed = request.parsed()
    excluded = set(request.exclude_machines)
    if parsed is None:
        # The offer as the market lists it now, so the same limits apply as to a query.
        body: dict[str, Any] = {"id": {"eq": request.offer_id}, "type": request.offer_type,
                                "allocated_storage": float(request.storage_gb)}
        rows = client.search_offers(body)
        if not rows:
            return OfferSelection([], body, reason=f"offer {request.offer_id} is not on the market "
                                  "(taken, or a wrong id)")
        names: list[str] | None = None
        subject = f"offer {request.offer_id}"
    else:
        names = client.gpu_names() if parsed.regex.get("gpu_name") else None
        body = build_search_body(parsed, order=request.order, offer_type=request.offer_type,
                                 limit=max(request.limit, 0) + len(excluded) + OVERFETCH,
                                 storage_gb=request.storage_gb, gpu_names=names)
        rows = client.search_offers(body)
        subject = f"{{count}} offer(s) match {request.query!r}"

    matching = [row for row in rows if parsed is None or parsed.row_matches(row)]
    allowed = [row for row in matching if row.get("machine_id") not in excluded]
    winnable = [row for row in allowed if request.winnable(row)]
    fitting = [row for row in winnable if request.max_dph is None or request.price(row) <= request.max_dph]
    selection = OfferSelection([normalise_offer(row) for row in fitting[: request.limit]], body)
    if selection.offers:
        return selection
    if parsed is not None and not matching:
        if names is None and parsed.filters.get("gpu_name"):
            names = client.gpu_names()  # only needed to tell a misspelt gpu_name from an empty market
        selection.unknown_gpu_name = bool(names) and bool(parsed.unknown_gpu_names(names or []))
        selection.reason = no_offer_reason(parsed, names or [])
    elif not allowed:
        selection.reason = f"{subject.format(count=len(matching))}: on machines in exclude_machines only"
    elif not winnable:
        lowest = min(float(row.get("min_bid") or 0) for row in allowed)
        if request.bid_price is not None:
            limit = f"the bid ${request.bid_price:g}/h (bid_price); raise it"
        else:
            limit = f"max_bid ${request.max_bid:g}/h; raise max_bid"
        selection.reason = (f"{subject.format(count=len(matching))}: every minimum bid (lowest ${lowest:.4f}/h) is "
                            f"above {limit} or rent on-demand")
    else:
        cheapest = min(request.price(row) for row in winnable)
        selection.reason = (f"{subject.format(count=len(matching))}: the cheapest allowed costs ${cheapest:.4f}/h, "
                            f"over max_dph ${request.max_dph:g}/h; raise max_dph or loosen the query")
    return selection
