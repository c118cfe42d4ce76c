"""What arming and clearing a fault does to the market: faults are kept in the FaultBook (faults.py);
here they reach the instances they target, at once where it makes sense (a live host goes offline,
its link slows down, its nvidia-smi lies), and go away again when cleared.

The ticker also calls ``tick``: a fault with ``for_s`` is cleared once that long has passed since it took
effect, and a pending fault's trigger is checked against the running instances it watches, at most every
``TRIGGER_INTERVAL_S``, in a worker thread (fault_triggers.py reads their disks), and takes effect when it
fires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from mlops_vast.sim import fault_triggers
from mlops_vast.sim.billing import Billing
from mlops_vast.sim.faults import Fault
from mlops_vast.sim.host_sync import HostSync
from mlops_vast.sim.lifecycle import fault_parameter
from mlops_vast.sim.models import Instance
from mlops_vast.sim.state import SimContext

log = logging.getLogger("vastsim.faults")

TRIGGER_INTERVAL_S = 0.2


class FaultEffects:
    def __init__(self, ctx: SimContext, billing: Billing, host_sync: HostSync) -> None:
        self.ctx = ctx
        self.billing = billing
        self.host_sync = host_sync
        # Per pending fault: the check in flight, when the last one started, and what its log looked like.
        self._checks: dict[int, asyncio.Future[int | None]] = {}
        self._checked_at: dict[int, float] = {}
        self._seen: dict[int, dict[str, tuple[int, ...]]] = {}

    def arm(self, spec: Any) -> Fault:
        fault = self.ctx.state.faults.arm(spec)
        if not fault.pending:
            self._take_effect(fault, time.time())
        self.ctx.touch()
        return fault

    def _take_effect(self, fault: Fault, now: float) -> None:
        if fault.kind == "outbid":
            fault.effective_at = now
            self.billing.apply_outbids()
        elif fault.kind not in ("http", "take_offer"):
            for instance in list(self.ctx.state.instances.values()):
                if fault.exhausted:
                    break
                if fault.targets(instance_id=instance.id, machine_id=instance.machine_id,
                                 offer_id=instance.offer_id, label=instance.label):
                    fault.fired += 1
                    self._apply_live(instance, fault)

    def clear(self, fault_id: int | None = None) -> list[Fault]:
        book = self.ctx.state.faults
        removed = book.clear(fault_id)
        instances = self.ctx.state.instances.values()
        holding = [f for f in book.faults if f.kind == "offline" and not f.pending]
        for fault in removed:
            if fault.kind == "offline" and not fault.pending:
                for instance in instances:
                    if "offline" not in instance.faults:
                        continue
                    # One cleared fault brings back what it targets, unless another offline fault holds it;
                    # clearing them all brings back every offline instance (a `next` one's fault is gone).
                    if fault_id is not None and not _targets(fault, instance):
                        continue
                    if any(_targets(other, instance) for other in holding):
                        continue
                    instance.faults.pop("offline")
                    if instance.phase == "offline":
                        # Back online: running again once its sshd answers.
                        self.ctx.enter(instance, "loading", time.time(), "Host is back online.")
            if fault.kind == "slow_link" and not fault.pending:
                for instance in instances:
                    if "slow_link" in instance.faults and _targets(fault, instance):
                        instance.faults.pop("slow_link")
                        self.host_sync.after_previous(instance.id, self.ctx.hosts.set_link_rate(instance.id, None))
        self.ctx.touch()
        return removed

    def _apply_live(self, instance: Instance, fault: Fault) -> None:
        instance.faults[fault.kind] = fault_parameter(fault)
        if fault.kind == "offline" and instance.phase == "running":
            self.ctx.enter(instance, "offline", None, "Host is offline.")
            if fault.effective_at is None:
                fault.effective_at = time.time()
        elif fault.kind == "slow_link":
            self.host_sync.after_previous(instance.id, self.ctx.hosts.set_link_rate(instance.id, fault.kbytes_per_s))
        elif fault.kind in ("wrong_gpu", "driver_error"):
            self.ctx.hosts.write_gpu_spec(instance.id, self.host_sync.gpu_spec(instance))
        elif fault.kind == "host_error":
            self.ctx.enter(instance, "host_error", None, "Error: GPU error, unable to start instance")
        elif fault.kind == "stuck_loading" and instance.phase == "loading":
            instance.phase_until = None

    # ------------------------------------------------------------------ the ticker

    def tick(self, now: float) -> None:
        """Start the clocks of faults that took effect, clear the ones whose time is up, watch triggers."""
        book = self.ctx.state.faults
        for fault in list(book.faults):
            starts = fault.kind == "offline" and fault.for_s is not None and fault.effective_at is None
            if starts and not fault.pending and any(
                    i.phase == "offline" and _targets(fault, i) for i in self.ctx.state.instances.values()):
                fault.effective_at = now
                self.ctx.touch()
            clears_at = fault.clears_at
            if clears_at is not None and now >= clears_at:
                log.info("fault %s (%s) cleared itself after %g s", fault.id, fault.kind, fault.for_s)
                self.clear(fault.id)
        self._watch_triggers(now)

    def _watch_triggers(self, now: float) -> None:
        pending = {f.id: f for f in self.ctx.state.faults.faults if f.pending}
        for fault_id in [i for i in self._checks if i not in pending]:
            self._checks.pop(fault_id)  # cleared meanwhile; its thread ends on its own
        for fault_id in [i for i in self._checked_at if i not in pending]:
            self._checked_at.pop(fault_id, None)
            self._seen.pop(fault_id, None)
        for fault in pending.values():
            check = self._checks.get(fault.id)
            if check is not None:
                if not check.done():
                    continue
                del self._checks[fault.id]
                hit = None
                if check.exception() is not None:
                    log.warning("fault %s: trigger check failed: %r", fault.id, check.exception())
                else:
                    hit = check.result()
                if hit is not None:
                    self.fire(fault, hit, now)
                    continue
            if now - self._checked_at.get(fault.id, 0.0) < TRIGGER_INTERVAL_S:
                continue
            self._checked_at[fault.id] = now
            trigger = fault.trigger
            assert trigger is not None
            roots = []
            for instance in self.ctx.state.instances.values():
                if instance.phase != "running" or not fault.watches(
                        instance_id=instance.id, machine_id=instance.machine_id, offer_id=instance.offer_id,
                        label=instance.label):
                    continue
                view = self.ctx.hosts.workspace_view(instance.id)
                if view is not None:
                    roots.append((instance.id, view))
            if roots:
                kind, spec = trigger
                seen = self._seen.setdefault(fault.id, {})
                check = asyncio.ensure_future(
                    asyncio.to_thread(fault_triggers.first_hit, kind, dict(spec), roots, seen))
                # A check dropped with its fault must not log "exception never retrieved".
                check.add_done_callback(lambda done: done.cancelled() or done.exception())
                self._checks[fault.id] = check

    def fire(self, fault: Fault, instance_id: int, now: float) -> None:
        """A pending fault's trigger fired on ``instance_id``: it takes effect now, as if armed now."""
        fault.pending = False
        fault.triggered_at, fault.triggered_on = now, instance_id
        log.info("fault %s (%s) triggered on instance %s", fault.id, fault.kind, instance_id)
        self._take_effect(fault, now)
        self.ctx.touch()

    async def shutdown(self) -> None:
        for check in list(self._checks.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(check, 5)
        self._checks.clear()


def _targets(fault: Fault, instance: Instance) -> bool:
    return fault.targets(instance_id=instance.id, machine_id=instance.machine_id, offer_id=instance.offer_id,
                         label=instance.label)
