#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: wait_in_place
short_description: Wait, bounded, for a preempted or lost Vast instance to come back, re-bidding up to a cap
description:
  - After a preemption (an interruptible instance outbid) or a lost host (offline), resuming on the same machine
    loses least, since its disk still holds every checkpoint. This module waits up to O(wait_s) for the instance
    to be running again with SSH answering.
  - While an interruptible instance is outbid it raises the bid to O(bid_margin) times the machine's current
    minimum bid, never above O(max_bid), once per change of that minimum.
  - It never starts training; the caller decides what to run once the host is back.
  - Returns C(resumed=false) (not a failure) when the wait ends without the instance back, or when the instance
    is gone for good (destroyed); the caller then replaces it.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.vast
  - mlops.vast.attributes
  - mlops.vast.attributes.api
attributes:
  check_mode:
    support: full
    details: In check mode nothing is re-bid; the instance is read once.
  diff_mode:
    support: none
options:
  instance_id:
    description: The instance to wait for.
    type: int
    required: true
  wait_s:
    description: Seconds to wait at most; C(0) reads the instance once.
    type: float
    default: 120
  poll_s:
    description: Seconds between two reads of the instance.
    type: float
    default: 5
  max_bid:
    description: The highest bid ($/h) to raise to while outbid; C(0) never re-bids.
    type: float
    default: 0
  bid_margin:
    description: The bid placed is this multiple of the machine's current minimum bid (capped at O(max_bid)).
    type: float
    default: 1.25
"""

EXAMPLES = r"""
- name: Give a preempted instance two minutes to come back, re-bidding up to $0.40/h
  mlops.vast.wait_in_place:
    instance_id: 123456
    wait_s: 120
    max_bid: 0.40
  register: back

- name: Replace it when it did not come back
  ansible.builtin.debug:
    msg: "{{ 'resume in place' if back.resumed else 'replace: ' ~ back.reason }}"
"""

RETURN = r"""
resumed:
  description: Whether the instance is running again with SSH answering.
  returned: always
  type: bool
reason:
  description: Why it is or is not back, in words.
  returned: always
  type: str
waited_s:
  description: Seconds spent waiting.
  returned: always
  type: float
rebids:
  description: The bids placed, each with C(price) and C(min_bid) at the time.
  returned: always
  type: list
  elements: dict
instance:
  description: The instance as last read (its SSH endpoint may have changed), or null when it is gone.
  returned: always
  type: dict
"""

import time
from typing import Any, ClassVar

from ansible_collections.mlops.vast.plugins.module_utils.errors import (
    VastAuthError,
    VastConfigError,
    VastError,
    VastNotFound,
    VastUnreachable,
)
from ansible_collections.mlops.vast.plugins.module_utils.rows import hopeless_reason, instance_summary, ssh_endpoint
from ansible_collections.mlops.vast.plugins.module_utils.vast_module import VastModule
from ansible_collections.mlops.vast.plugins.module_utils.waiting import ssh_banner


def next_bid(row: dict[str, Any], max_bid: float, margin: float) -> float | None:
    """The bid to place on an outbid instance, or None when raising it would not help or is not allowed."""
    if max_bid <= 0 or not row.get("is_bid"):
        return None
    minimum = float(row.get("min_bid") or 0)
    current = float(row.get("dph_base") or 0)
    wanted = round(min(max_bid, max(minimum * margin, minimum)), 4)
    return wanted if wanted > current + 1e-9 and wanted + 1e-9 >= minimum else None


class WaitInPlace(VastModule):
    argument_spec: ClassVar[dict[str, Any]] = {
        "instance_id": {"type": "int", "required": True},
        "wait_s": {"type": "float", "default": 120.0},
        "poll_s": {"type": "float", "default": 5.0},
        "max_bid": {"type": "float", "default": 0.0},
        "bid_margin": {"type": "float", "default": 1.25},
    }

    def deadline_seconds(self) -> float:
        return float(self.params["wait_s"]) + max(float(self.params["api_timeout"]) * 4, 60.0)

    def check_params(self) -> None:
        p = self.params
        if p["wait_s"] < 0 or p["poll_s"] <= 0 or p["max_bid"] < 0:
            self.fail("wait_s and max_bid must be >= 0 and poll_s > 0")
        if not 1.0 <= p["bid_margin"] <= 10.0:
            self.fail(f"bid_margin must be between 1 and 10, got {p['bid_margin']}")

    def read(self) -> dict[str, Any] | None:
        try:
            return self.client.get_instance(self.params["instance_id"])
        except VastNotFound:
            return None

    def run(self) -> None:
        p = self.params
        start = time.monotonic()
        rebids: list[dict[str, Any]] = []
        self.result.update(resumed=False, rebids=rebids, waited_s=0.0, instance=None)
        while True:
            try:
                row = self.read()
            except VastUnreachable as exc:  # the API this run used is down (restarting?): wait for it
                row, reason = {}, f"the API failed: {exc}"
            except (VastConfigError, VastAuthError):
                raise  # no key or a wrong key: waiting cannot change that
            except VastError as exc:  # a flaky API is no verdict: keep waiting while there is time
                row, reason = {}, f"the API failed: {exc}"
            else:
                reason = ""
            waited = time.monotonic() - start
            self.result.update(waited_s=round(waited, 1), instance=instance_summary(row) if row else None)
            if row is None:
                self.result["reason"] = "the instance is gone (destroyed)"
                return
            if row:
                host, port, _kind = ssh_endpoint(row)
                if row.get("actual_status") == "running" and host and ssh_banner(host, int(port or 0), timeout=3.0):
                    self.result.update(resumed=True, reason=f"running again after {waited:.0f} s")
                    return
                hopeless = hopeless_reason(row) if row.get("actual_status") != "offline" else None
                if hopeless and not row.get("is_bid"):
                    self.result["reason"] = f"it will not come back by waiting: {hopeless}"
                    return
                bid = next_bid(row, p["max_bid"], p["bid_margin"])
                if bid is not None and not self.module.check_mode:
                    self.client.request("PUT", f"/api/v0/instances/bid_price/{int(p['instance_id'])}/",
                                        body={"client_id": "me", "price": bid}, idempotent=False)
                    rebids.append({"price": bid, "min_bid": row.get("min_bid"), "after_s": round(waited, 1)})
                    self.changed()
                reason = f"still {row.get('actual_status')!r} ({row.get('status_msg') or 'no message'})"
            if waited >= p["wait_s"] or self.module.check_mode:
                self.result["reason"] = f"not back within {p['wait_s']:g} s: {reason}"
                return
            time.sleep(min(p["poll_s"], max(0.0, p["wait_s"] - waited)))


def main() -> None:
    WaitInPlace.execute()


if __name__ == "__main__":
    main()
