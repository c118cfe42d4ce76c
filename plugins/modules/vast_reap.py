#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vast_reap
short_description: Find and destroy the collection's instances that no live controller watches
description:
  - Finds B(orphans), instances of the collection that nobody is watching, lists them with their spend,
    destroys them and proves them gone by asking the API again.
  - B(In the ledger, lease expired.) Every contract in the local ledger has a lease beside it, renewed every
    poll interval by M(mlops.vast.watch) while it runs, and taken with a long promise (30 minutes) at rent
    and when a watch returns (setup, smoke test, teardown, recovery). A contract whose lease was last renewed
    more than O(lease_grace_s) ago has no live controller (a controller killed with SIGKILL, a crashed
    machine) and is reaped. A fresh lease is never reaped.
  - B(On the account, in no ledger.) Every instance the collection rents carries C(MLOPS_VAST_CONTROLLER)
    (the renting controller's id) in its environment, which the account's instance list shows. One that is
    not an open contract of this ledger is an orphan when its lease cannot be seen (its ledger was lost with
    its machine) and it was created more than O(lease_grace_s) ago. One marked with this controller's own id
    is reaped by default; one marked by B(another) controller only with O(unledgered=true), because that
    controller's lease is on its own disk and a live one cannot be told from a dead one from here.
  - Instances without the marker (rented by hand, or by other tools) are never touched, nor instances stopped on
    purpose (the teardown stops, instead of destroying, a host whose newest checkpoint it could not verify);
    they are listed in RV(kept) with why.
  - Idempotent; a second run finds nothing and reports C(changed=false). Contracts already gone from the account
    are marked destroyed in the ledger.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.vast
  - mlops.vast.attributes
  - mlops.vast.attributes.api
  - mlops.vast.attributes.resource
options:
  lease_grace_s:
    description:
      - How long after its lease's last renewal (or, without a lease, its creation) an instance counts as
        orphaned, in seconds. C(0) reaps every instance in scope at once, watched or not.
      - Default three times the interval the lease promised (three poll intervals while a watch runs,
        90 minutes after rent and after a watch returns, and for an instance in no ledger).
      - The grace used is never below O(min_grace_s).
    type: float
  min_grace_s:
    description:
      - A floor under the grace, in seconds, whatever O(lease_grace_s) says. The reap that C(train.yml) and
        C(sweep.yml) run before they rent sets it to 300, so that a controller that is only slow (a loaded machine,
        a short poll interval) or between renewals never has its live instance reaped by another run; an explicit
        C(playbooks/reap.yml) leaves it at C(0) and keeps the user's grace.
    type: float
    default: 0
  unledgered:
    description:
      - Also reap instances marked by another controller (another machine, or a ledger that was lost) that are
        in no ledger here. With two live controllers on one account, give them distinct O(label_prefix) scopes
        or keep this off, as their leases are not visible to each other.
    type: bool
    default: false
  label_prefix:
    description: Only instances whose label starts with this (a run name, a sweep's name); empty for all.
    type: str
    default: ""
  spare_labels:
    description:
      - Instances with one of these labels are left alone whatever their lease, as if out of scope.
        C(playbooks/teardown.yml) spares the runs whose teardown kept their instance stopped (a checkpoint it could
        not verify).
    type: list
    elements: str
    default: []
  ledger_path:
    description:
      - The local contract ledger; its leases and the controller's id are beside it. Defaults to
        E(MLOPS_VAST_LEDGER), else C(~/.local/state/mlops-vast/contracts.jsonl).
    type: path
notes:
  - A lease lives on the controller's disk, beside the ledger; the account shows only the marker. So
    O(unledgered=true) must not be used while another controller on the account may be running.
seealso:
  - module: mlops.vast.vast_ledger
  - module: mlops.vast.watch
"""

EXAMPLES = r"""
- name: What would be reaped (check mode destroys nothing)
  mlops.vast.vast_reap:
  check_mode: true
  register: reap

- name: Reap this controller's orphans, and those of a controller that lost its ledger, created 10 min ago or more
  mlops.vast.vast_reap:
    unledgered: true
    lease_grace_s: 600
"""

RETURN = r"""
orphans:
  description: >-
    Instances found orphaned (destroyed unless in check mode), each with C(id), C(label), C(source) (C(ledger) or
    C(account)), C(why), C(lease_age_s), C(grace_s), C(controller) (its marker), C(actual_status), C(machine_id),
    C(dph_total) and C(spent_usd) (since creation, from the API's row).
  returned: always
  type: list
  elements: dict
kept:
  description: Instances in scope left alone because their lease is fresh, with the same keys and C(why).
  returned: always
  type: list
  elements: dict
foreign:
  description: Instances marked by another controller and in no ledger here, left alone without O(unledgered).
  returned: always
  type: list
  elements: dict
destroyed:
  description: Contract ids destroyed, each verified gone.
  returned: always
  type: list
  elements: int
gone_already:
  description: Open contracts of the ledger that the account no longer has (now marked destroyed).
  returned: always
  type: list
  elements: int
spent_usd:
  description: The orphans' spend, summed.
  returned: always
  type: float
proven_gone:
  description: The API, asked after the destroys, lists none of the orphans (true when there were none).
  returned: always
  type: bool
msg:
  description: What was found and done, in words.
  returned: always
  type: str
"""

import contextlib
import time
from typing import Any, ClassVar

from ..module_utils.errors import VastError, VastNotFound, WaitTimeout
from ..module_utils.local_state import LONG_LEASE_S, MARKER_ENV, ContractLedger
from ..module_utils.rows import extra_env, instance_spend_usd
from ..module_utils.vast_module import VastModule
from ..module_utils.waiting import Deadline, instance_gone

STOPPED_ON_PURPOSE = ("; but stopped on purpose (it may hold the only copy of a checkpoint; it bills storage only): "
                      "kept, playbooks/teardown.yml destroys it")
# A lease is stale after this many of the intervals it promised.
GRACE_INTERVALS = 3
DESTROY_TRIES = 3


def lease_times(lease: dict[str, Any], rented_at: float) -> tuple[float, float, str | None]:
    """``(renewed_at, interval_s, what was wrong)`` of a lease; a lease file with values that are not numbers (a
    torn or hand-edited file) counts as never renewed since the rent, with the long promise, and says why."""
    try:
        return float(lease.get("renewed_at", rented_at)), float(lease.get("interval_s", LONG_LEASE_S)), None
    except (TypeError, ValueError):
        return (rented_at, LONG_LEASE_S,
                f"renewed_at={lease.get('renewed_at')!r}, interval_s={lease.get('interval_s')!r} are not numbers")


class VastReap(VastModule):
    argument_spec: ClassVar[dict[str, Any]] = {
        "lease_grace_s": {"type": "float"},
        "min_grace_s": {"type": "float", "default": 0.0},
        "unledgered": {"type": "bool", "default": False},
        "label_prefix": {"type": "str", "default": ""},
        "spare_labels": {"type": "list", "elements": "str", "default": []},
        "ledger_path": {"type": "path"},
    }

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.ledger = ContractLedger(self.params["ledger_path"])
        self.result.update(orphans=[], kept=[], foreign=[], destroyed=[], gone_already=[], spent_usd=0.0,
                           proven_gone=True)

    def deadline_seconds(self) -> float:
        return 600.0

    def check_params(self) -> None:
        grace = self.params["lease_grace_s"]
        if grace is not None and not 0 <= grace <= 30 * 86400:
            self.fail(f"lease_grace_s must be between 0 and 2592000 seconds (30 days), got {grace:g}; "
                      "nothing was destroyed")
        floor = self.params["min_grace_s"]
        if not 0 <= floor <= 30 * 86400:
            self.fail(f"min_grace_s must be between 0 and 2592000 seconds (30 days), got {floor:g}; "
                      "nothing was destroyed")

    def grace(self, interval_s: float) -> float:
        given = self.params["lease_grace_s"]
        grace = float(given) if given is not None else GRACE_INTERVALS * interval_s
        return max(grace, float(self.params["min_grace_s"]))

    def in_scope(self, label: str | None) -> bool:
        return (label or "").startswith(self.params["label_prefix"]) and label not in self.params["spare_labels"]

    def entry(self, row: dict[str, Any], *, source: str, renewed_at: float, interval_s: float,
              now: float) -> dict[str, Any]:
        return {"id": int(row["id"]), "label": row.get("label"), "source": source,
                "lease_age_s": round(now - renewed_at, 1), "grace_s": round(self.grace(interval_s), 1),
                "controller": extra_env(row).get(MARKER_ENV), "actual_status": row.get("actual_status"),
                "machine_id": row.get("machine_id"), "dph_total": row.get("dph_total"),
                "spent_usd": instance_spend_usd(row, now)}

    def run(self) -> None:
        base = self.client.base_url
        now = time.time()
        try:
            contracts = {int(c["id"]): c for c in self.ledger.open_contracts(base)}
            me = self.ledger.controller_id(create=False)
        except OSError as exc:
            self.fail(f"cannot read the ledger {self.ledger.path}: {exc}; nothing was destroyed")
        rows = {int(row["id"]): row for row in self.client.list_instances()}
        orphans, kept = self.result["orphans"], self.result["kept"]
        for instance_id, contract in contracts.items():
            if not self.in_scope(contract.get("label")):
                continue
            row = rows.get(instance_id)
            if row is None:
                self.catch_up(instance_id)
                continue
            lease = self.ledger.leases.get(instance_id, base) or {}
            renewed_at, interval_s, bad = lease_times(lease, float(contract.get("ts") or now))
            item = self.entry(row, source="ledger", renewed_at=renewed_at, interval_s=interval_s, now=now)
            stale = now - renewed_at >= item["grace_s"]
            said = (f"its lease file is unreadable ({bad}), so counted from its rent: {item['lease_age_s']:g} s ago"
                    if bad else f"lease last renewed {item['lease_age_s']:g} s ago")
            item["why"] = f"{said}, {'past' if stale else 'within'} its grace of {item['grace_s']:g} s"
            if stale and row.get("intended_status") == "stopped":
                # Teardown stops, not destroys, a host whose newest checkpoint it could not verify: the only copy.
                item["why"] += STOPPED_ON_PURPOSE
                stale = False
            (orphans if stale else kept).append(item)
        for instance_id, row in rows.items():
            marker = extra_env(row).get(MARKER_ENV)
            if instance_id in contracts or not marker or not self.in_scope(row.get("label")):
                continue
            created = float(row.get("start_date") or now)
            item = self.entry(row, source="account", renewed_at=created, interval_s=LONG_LEASE_S, now=now)
            if marker != me and not self.params["unledgered"]:
                item["why"] = (f"marked by controller {marker}, in no ledger here; unledgered=true reaps it "
                               "(only when that controller is not running)")
                self.result["foreign"].append(item)
                continue
            stale = now - created >= item["grace_s"]
            item["why"] = (f"in no ledger here (controller {marker}), created {item['lease_age_s']:g} s ago, "
                           f"{'past' if stale else 'within'} the grace of {item['grace_s']:g} s")
            if stale and row.get("intended_status") == "stopped":
                item["why"] += STOPPED_ON_PURPOSE
                stale = False
            (orphans if stale else kept).append(item)
        self.result["spent_usd"] = round(sum(o["spent_usd"] or 0.0 for o in orphans), 6)
        self.set_diff({"orphans": [o["id"] for o in orphans]}, {"orphans": []})
        if orphans:
            self.changed()
            if not self.module.check_mode:
                self.reap(orphans)
        self.result["msg"] = self.message()

    def catch_up(self, instance_id: int) -> None:
        """An open contract the account's list lacks: asked once more by id, then marked destroyed."""
        if self.client.get_instance(instance_id) is not None:
            return
        self.result["gone_already"].append(instance_id)
        if not self.module.check_mode:
            self.warn(self.ledger.destroyed(instance_id, api_url=self.client.base_url))

    def reap(self, orphans: list[dict[str, Any]]) -> None:
        failures = []
        for orphan in orphans:
            try:
                self.destroy_verified(orphan["id"], in_ledger=orphan["source"] == "ledger")
            except VastError as exc:  # keep going: every other orphan must still be destroyed
                failures.append(f"{orphan['id']} ({exc})")
        listed = {int(row["id"]) for row in self.client.list_instances()}
        left = sorted(o["id"] for o in orphans if o["id"] in listed)
        self.result["proven_gone"] = not left and not failures
        if failures or left:
            self.fail(f"orphans that may still be billing: {', '.join(failures) or left}; run "
                      "playbooks/reap.yml again, or destroy them in the console", msg_detail=self.message())

    def destroy_verified(self, instance_id: int, *, in_ledger: bool) -> None:
        """Destroy, then make sure it stays gone; Vast has been seen to bring rows back."""
        for _attempt in range(DESTROY_TRIES):
            with contextlib.suppress(VastNotFound):
                self.client.destroy_instance(instance_id)
            try:
                instance_gone(instance_id).wait(lambda: self.client.get_instance(instance_id), Deadline(30.0))
            except WaitTimeout:
                continue
            time.sleep(0.5)
            if self.client.get_instance(instance_id) is None:
                if in_ledger:
                    self.warn(self.ledger.destroyed(instance_id, api_url=self.client.base_url))
                self.result["destroyed"].append(instance_id)
                return
        raise VastError(f"instance {instance_id} is still there after {DESTROY_TRIES} destroys")

    def message(self) -> str:
        r = self.result
        orphans = r["orphans"]
        ids = ", ".join(f"{o['id']} ({o['label']}, ${o['spent_usd'] or 0:.4f})" for o in orphans)
        if not orphans:
            said = "no orphans"
        elif self.module.check_mode:
            said = f"would destroy {len(orphans)} orphan(s): {ids}; ${r['spent_usd']:.4f} spent so far"
        else:
            said = (f"destroyed {len(r['destroyed'])} orphan(s), proven gone: {ids}; "
                    f"${r['spent_usd']:.4f} spent")
        if r["kept"]:
            said += f"; {len(r['kept'])} kept, watched (fresh lease): {[k['id'] for k in r['kept']]}"
        if r["foreign"]:
            said += (f"; {len(r['foreign'])} of other controllers left alone (unledgered=true reaps them): "
                     f"{[f['id'] for f in r['foreign']]}")
        return said


def main() -> None:
    VastReap.execute()


if __name__ == "__main__":
    main()
