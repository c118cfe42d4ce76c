"""What arming and clearing a fault does to the market: faults are kept in the FaultBook (faults.py);
here they reach the instances they target, at once where it makes sense (a live host goes offline,
its link slows down, its nvidia-smi lies), and go away again when cleared."""

from __future__ import annotations

import time
from typing import Any

from mlops_vast.sim.billing import Billing
from mlops_vast.sim.faults import Fault
from mlops_vast.sim.host_sync import HostSync
from mlops_vast.sim.lifecycle import fault_parameter
from mlops_vast.sim.models import Instance
from mlops_vast.sim.state import SimContext


class FaultEffects:
    def __init__(self, ctx: SimContext, billing: Billing, host_sync: HostSync) -> None:
        self.ctx = ctx
        self.billing = billing
        self.host_sync = host_sync

    def arm(self, spec: Any) -> Fault:
        book = self.ctx.state.faults
        fault = book.arm(spec)
        if fault.kind == "outbid":
            self.billing.apply_outbids()
        elif fault.kind not in ("http", "take_offer"):
            for instance in list(self.ctx.state.instances.values()):
                hits = book.host_faults_for(instance_id=instance.id, machine_id=instance.machine_id,
                                            offer_id=instance.offer_id, label=instance.label, at_create=False)
                if fault in hits:
                    self._apply_live(instance, fault)
        self.ctx.touch()
        return fault

    def clear(self, fault_id: int | None = None) -> list[Fault]:
        removed = self.ctx.state.faults.clear(fault_id)
        instances = self.ctx.state.instances.values()
        for fault in removed:
            if fault.kind == "offline":
                for instance in instances:
                    if instance.phase == "offline" and instance.faults.pop("offline", None) is not None:
                        # Back online: running again once its sshd answers.
                        self.ctx.enter(instance, "loading", time.time(), "Host is back online.")
            if fault.kind == "slow_link":
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
        elif fault.kind == "slow_link":
            self.host_sync.after_previous(instance.id, self.ctx.hosts.set_link_rate(instance.id, fault.kbytes_per_s))
        elif fault.kind in ("wrong_gpu", "driver_error"):
            self.ctx.hosts.write_gpu_spec(instance.id, self.host_sync.gpu_spec(instance))
        elif fault.kind == "host_error":
            self.ctx.enter(instance, "host_error", None, "Error: GPU error, unable to start instance")
        elif fault.kind == "stuck_loading" and instance.phase == "loading":
            instance.phase_until = None


def _targets(fault: Fault, instance: Instance) -> bool:
    return (fault.instance_id == instance.id or fault.machine_id == instance.machine_id
            or fault.offer_id == instance.offer_id or (fault.label is not None and fault.label == instance.label))
