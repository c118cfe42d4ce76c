"""Bids: what an interruptible rental bids on an offer (OfferRequest.bid_for), whether that can win
(winnable), what it bills (price), how offer selection treats unwinnable offers, and how wait_in_place
re-bids an outbid instance (next_bid)."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.mlops.vast.plugins.module_utils.offer_selection import OfferRequest, select_offers
from ansible_collections.mlops.vast.plugins.modules.wait_in_place import next_bid


def offer(offer_id: int, machine_id: int, dph: float, min_bid: float | None) -> dict[str, Any]:
    return {"id": offer_id, "machine_id": machine_id, "dph_total": dph, "gpu_name": "RTX 4090", "num_gpus": 1,
            "gpu_ram": 24564, "min_bid": min_bid}


class CannedMarket:
    """The two calls select_offers makes of a client, answering canned search rows."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.bodies: list[dict[str, Any]] = []

    def search_offers(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.bodies.append(body)
        return [dict(row) for row in self.rows]

    def gpu_names(self) -> list[str]:
        return ["RTX 4090"]


def bidding(**changes: Any) -> OfferRequest:
    return OfferRequest(query="", offer_type="bid", **changes)


# ---------------------------------------------------------------------------------------------- bid_for

@pytest.mark.parametrize(("min_bid", "margin", "max_bid", "bid"), [
    (0.20, 1.25, None, 0.25),     # margin x the offer's minimum
    (0.20, 1.25, 0.40, 0.25),     # under the cap: the cap changes nothing
    (0.20, 1.25, 0.22, 0.22),     # capped at max_bid
    (0.40, 1.25, 0.30, 0.30),     # capped even below the minimum (then not winnable, below)
    (0.1234, 1.1, None, 0.1357),  # rounded to 4 places: 0.13574
    (0.20, 1.0, None, 0.20),      # margin 1: exactly the minimum
])
def test_a_margin_bid_is_a_multiple_of_the_minimum_capped_at_max_bid(min_bid: float, margin: float,
                                                                     max_bid: float | None, bid: float) -> None:
    request = bidding(bid_margin=margin, max_bid=max_bid)
    assert request.bid_for({"min_bid": min_bid}) == pytest.approx(bid, abs=1e-12)


def test_a_bid_is_never_zero_when_the_minimum_is_unknown_or_zero() -> None:
    request = bidding(bid_margin=1.5, max_bid=0.5)
    assert request.bid_for({"min_bid": 0}) == 0.001
    assert request.bid_for({"min_bid": None}) == 0.001
    assert request.bid_for({}) == 0.001


def test_a_fixed_bid_price_wins_over_the_margin_and_the_cap() -> None:
    request = bidding(bid_price=0.33, bid_margin=2.0, max_bid=0.25)
    for min_bid in (0.05, 0.2, 0.3):
        assert request.bid_for({"min_bid": min_bid}) == 0.33


def test_on_demand_places_no_bid() -> None:
    request = OfferRequest(query="", max_bid=0.5)  # a cap alone is no bid
    assert request.bid_for({"min_bid": 0.2}) is None
    assert request.winnable({"min_bid": 99.0})  # on-demand is never outbid
    assert request.price({"dph_total": 0.42, "min_bid": 0.2}) == 0.42  # the listed price, bid or not


# ---------------------------------------------------------------------------------------------- winnable and price

def test_a_bid_under_the_offers_minimum_is_not_winnable() -> None:
    capped = bidding(bid_margin=1.25, max_bid=0.30)
    assert capped.winnable({"min_bid": 0.24})  # 0.30 >= 0.24
    assert capped.winnable({"min_bid": 0.30})  # equal wins
    assert not capped.winnable({"min_bid": 0.3001})
    fixed = bidding(bid_price=0.2)
    assert fixed.winnable({"min_bid": 0.2}) and not fixed.winnable({"min_bid": 0.25})


def test_a_bid_rental_bills_at_the_bid_not_at_the_listed_minimum() -> None:
    row = {"dph_total": 0.30, "min_bid": 0.10}  # dph_total includes storage and the minimum bid
    assert bidding(bid_margin=1.5).price(row) == pytest.approx(0.30 - 0.10 + 0.15)
    assert bidding(bid_margin=1.5, max_bid=0.12).price(row) == pytest.approx(0.32)
    assert bidding(bid_price=0.5, bid_margin=1.5).price(row) == pytest.approx(0.70)


# ---------------------------------------------------------------------------------------------- select_offers

def test_offers_whose_minimum_is_above_max_bid_are_left_out() -> None:
    market = CannedMarket([offer(1, 10, 0.50, min_bid=0.40), offer(2, 11, 0.60, min_bid=0.20),
                           offer(3, 12, 0.70, min_bid=0.24)])
    chosen = select_offers(market, bidding(bid_margin=1.25, max_bid=0.25))
    # Offer 1 would be created outbid (0.25 < 0.40); 2 bids 0.25, 3 bids min(0.30, 0.25) = 0.25.
    assert [row["id"] for row in chosen.offers] == [2, 3]
    assert chosen.reason is None
    assert market.bodies[0]["type"] == "bid"


def test_when_every_minimum_is_above_max_bid_the_reason_says_raise_max_bid() -> None:
    market = CannedMarket([offer(1, 10, 0.50, min_bid=0.45), offer(2, 11, 0.60, min_bid=0.41)])
    chosen = select_offers(market, bidding(bid_margin=1.25, max_bid=0.4))
    assert chosen.offers == []
    assert chosen.reason == ("2 offer(s) match '': every minimum bid (lowest $0.4100/h) is above max_bid $0.4/h; "
                             "raise max_bid or rent on-demand")
    one = select_offers(CannedMarket([offer(7, 10, 0.5, min_bid=0.45)]),
                        OfferRequest(offer_id=7, offer_type="bid", bid_margin=1.25, max_bid=0.4))
    assert one.reason is not None and one.reason.startswith("offer 7: every minimum bid")
    assert "raise max_bid" in one.reason


def test_max_dph_is_held_against_the_price_at_the_bid() -> None:
    market = CannedMarket([offer(1, 10, 0.30, min_bid=0.10), offer(2, 11, 0.35, min_bid=0.20)])
    # At margin 2: offer 1 costs 0.30 - 0.10 + 0.20 = 0.40, offer 2 costs 0.35 - 0.20 + 0.40 = 0.55.
    chosen = select_offers(market, bidding(bid_margin=2.0, max_dph=0.45))
    assert [row["id"] for row in chosen.offers] == [1]
    none = select_offers(market, bidding(bid_margin=2.0, max_dph=0.35))
    assert none.offers == [] and "the cheapest allowed costs $0.4000/h, over max_dph $0.35/h" in (none.reason or "")


def test_a_fixed_bid_price_chooses_the_same_offers_whatever_the_margin() -> None:
    market = CannedMarket([offer(1, 10, 0.30, min_bid=0.10), offer(2, 11, 0.35, min_bid=0.30)])
    with_margin = select_offers(market, bidding(bid_price=0.2, bid_margin=5.0, max_bid=0.15))
    plain = select_offers(market, bidding(bid_price=0.2))
    assert [row["id"] for row in with_margin.offers] == [row["id"] for row in plain.offers] == [1]


def test_a_fixed_bid_under_every_minimum_says_why_without_max_bid() -> None:
    chosen = select_offers(CannedMarket([offer(1, 10, 0.5, min_bid=0.3)]), bidding(bid_price=0.1))
    assert chosen.offers == []
    assert chosen.reason is not None and "bid" in chosen.reason


# ---------------------------------------------------------------------------------------------- next_bid

def outbid(min_bid: float | None, current: float, **changes: Any) -> dict[str, Any]:
    return {"is_bid": True, "min_bid": min_bid, "dph_base": current, "actual_status": "stopped", **changes}


def test_an_outbid_instance_is_re_bid_at_the_margin_over_the_new_minimum() -> None:
    assert next_bid(outbid(0.30, 0.25), max_bid=1.0, margin=1.25) == 0.375
    assert next_bid(outbid(0.3333, 0.25), max_bid=1.0, margin=1.1) == 0.3666  # rounded to 4 places


def test_a_re_bid_never_goes_above_max_bid() -> None:
    assert next_bid(outbid(0.30, 0.25), max_bid=0.35, margin=1.25) == 0.35  # capped, still wins (>= 0.30)
    assert next_bid(outbid(0.30, 0.25), max_bid=0.30, margin=2.0) == 0.30  # exactly the minimum wins
    for minimum in (0.05, 0.2, 0.3, 0.5, 1.0, 3.0):
        for margin in (1.0, 1.25, 2.0, 10.0):
            bid = next_bid(outbid(minimum, 0.01), max_bid=0.6, margin=margin)
            assert bid is None or minimum <= bid <= 0.6, (minimum, margin, bid)


def test_no_re_bid_when_even_max_bid_is_under_the_minimum() -> None:
    assert next_bid(outbid(0.50, 0.25), max_bid=0.40, margin=1.25) is None  # 0.40 would still be outbid


def test_no_re_bid_when_it_would_not_raise_the_bid() -> None:
    assert next_bid(outbid(0.20, 0.25), max_bid=1.0, margin=1.25) is None  # 0.25 is what it bids already
    assert next_bid(outbid(0.20, 0.30), max_bid=1.0, margin=1.25) is None  # lower than now: never lowered
    assert next_bid(outbid(0.20, 0.2499), max_bid=1.0, margin=1.25) == 0.25  # a raise, however small
    assert next_bid(outbid(None, 0.25), max_bid=1.0, margin=1.25) is None  # no minimum known: nothing to beat


def test_a_margin_under_one_still_bids_the_minimum() -> None:
    assert next_bid(outbid(0.30, 0.10), max_bid=1.0, margin=0.5) == 0.30


def test_no_re_bid_for_on_demand_or_without_a_cap() -> None:
    assert next_bid(outbid(0.30, 0.25, is_bid=False), max_bid=1.0, margin=1.25) is None
    assert next_bid({"min_bid": 0.30, "dph_base": 0.25}, max_bid=1.0, margin=1.25) is None  # no is_bid: on-demand
    assert next_bid(outbid(0.30, 0.25), max_bid=0, margin=1.25) is None  # max_bid 0: never re-bid
    assert next_bid(outbid(0.30, 0.25), max_bid=-1, margin=1.25) is None
