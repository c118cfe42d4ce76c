#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vast_instance
short_description: Rent, start, stop and destroy Vast.ai instances, idempotently by label
description:
  - Manages one Vast.ai instance identified by its O(label). More than one live instance with the
    label is an error; the module never rents a silent duplicate.
  - Rents from an O(offer_id), or from a O(query) by trying up to O(max_offers) offers in order
    with C(cancel_unavail), skipping offers taken in the meantime.
  - Waits for C(running) B(and) SSH answering (TCP connect and an SSH banner) within
    O(wait_timeout); fails fast on states that waiting cannot fix (exited, offline, host errors,
    image-pull failures) and destroys what this call rented before failing.
  - Records every contract in a local ledger file the moment create returns, so an interrupted
    run cannot lose an instance (C(playbooks/teardown.yml) destroys what the ledger holds).
  - C(state=absent) destroys, then verifies the instance is gone, destroying again if it reappears.
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.vast
  - mlops.vast.attributes
  - mlops.vast.attributes.api
  - mlops.vast.attributes.resource
options:
  label:
    description:
      - The instance's identity. Required unless O(instance_id) is given with O(state=absent).
    type: str
  instance_id:
    description:
      - Act on this contract id instead of looking the label up (O(state=absent), O(state=stopped),
        O(state=running) only).
    type: int
  state:
    description:
      - C(present) - an instance with the label exists (rented if missing).
      - C(running) - it exists, is running and answers SSH (started if stopped, rented if missing).
      - C(stopped) - it is stopped (storage still bills until it is destroyed).
      - C(absent) - it is destroyed and verified gone.
    type: str
    choices: [present, running, stopped, absent]
    default: present
  offer_id:
    description: Rent this offer. Mutually exclusive with O(query).
    type: int
  query:
    description:
      - Rent the best offer matching this query (the C(vastai search offers) language, plus
        C(gpu_name ~ regex)). Mutually exclusive with O(offer_id).
    type: str
  order:
    description: Order in which offers of O(query) are tried, as the CLI's C(-o).
    type: str
    default: dph+
  max_offers:
    description: How many offers of O(query) to try before giving up.
    type: int
    default: 5
  exclude_machines:
    description: Machine ids never to rent (hosts that failed checks before).
    type: list
    elements: int
    default: []
  max_dph:
    description: Never rent an offer whose total $/h (GPU plus storage) is above this.
    type: float
  image:
    description: Docker image to run. Required when renting.
    type: str
  disk:
    description: Disk to allocate, in GB (at least 8, the service's minimum).
    type: float
    default: 10
  env:
    description:
      - Environment variables for the container, as a dict. Keys of the form C(-p 8080:8080) open ports
        as with the CLI's C(--env).
      - C(MLOPS_VAST_CONTROLLER) is added, the controller's id (kept beside O(ledger_path)). The account's
        instance list shows it, and that is how C(mlops.vast.vast_reap) knows an instance as the collection's.
    type: dict
  onstart:
    description: Shell commands to run when the instance starts.
    type: str
  ssh:
    description:
      - C(direct) asks for a direct SSH port on the host (runtype C(ssh_direc ssh_proxy)) and connects
        there; C(proxy) uses Vast's SSH proxy only.
    type: str
    choices: [direct, proxy]
    default: direct
  ssh_user:
    description: User to report for SSH (C(root) on Vast).
    type: str
    default: root
  bid_price:
    description:
      - Rent as interruptible at this bid ($/h for the whole offer). Without it the instance is on-demand.
    type: float
  bid_margin:
    description:
      - Rent as interruptible, bidding this multiple of each offer's current minimum bid (for instance C(1.25)),
        capped at O(max_bid). Ignored when O(bid_price) is set. Offers whose minimum bid is above O(max_bid)
        are skipped (such a bid would be created stopped, outbid, and never run).
    type: float
  max_bid:
    description: The highest bid ($/h for the whole offer) O(bid_margin) may place.
    type: float
  wait:
    description: Wait for C(running) and SSH (for C(present) and C(running)) or for the stop to finish.
    type: bool
    default: true
  wait_timeout:
    description: Seconds for the whole call, API retries and waits included.
    type: int
    default: 900
  ledger_path:
    description:
      - The local contract ledger (JSON lines). Each contract created also gets a lease beside it (renewed by
        M(mlops.vast.watch) while it watches; C(mlops.vast.vast_reap) reaps instances whose lease expired).
      - Defaults to E(MLOPS_VAST_LEDGER), else C(~/.local/state/mlops-vast/contracts.jsonl).
    type: path
notes:
  - C(stopped) is not free, storage bills until the instance is destroyed.
  - In check mode nothing is rented, started, stopped or destroyed; the result and diff say what would be.
seealso:
  - module: mlops.vast.vast_offer
  - plugin: mlops.vast.vast
    plugin_type: inventory
"""

EXAMPLES = r"""
- name: Rent the cheapest reliable 24 GB GPU and wait until SSH answers
  mlops.vast.vast_instance:
    label: exp-42
    query: reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 24 num_gpus=1
    image: pytorch/pytorch:2.4.0-cuda12.4-cudnn9-devel
    disk: 50
    state: running
  register: rented

- name: Interruptible, from a known offer
  mlops.vast.vast_instance:
    label: exp-43
    offer_id: 21469085
    bid_price: 0.25
    image: pytorch/pytorch:latest

- name: Destroy, and prove it is gone
  mlops.vast.vast_instance:
    label: exp-42
    state: absent
"""

RETURN = r"""
instance:
  description: The instance after the call (null after C(absent) or when none exists in check mode).
  returned: always
  type: dict
  contains:
    id: {description: Contract id, type: int}
    label: {description: Label, type: str}
    machine_id: {description: Physical machine, type: int}
    offer_id: {description: Offer it was rented from, type: int}
    status: {description: "C(actual_status): running, loading, exited, ...", type: str}
    ssh_host: {description: Host to SSH to (the direct endpoint when there is one), type: str}
    ssh_port: {description: Port to SSH to, type: int}
    ssh_user: {description: SSH user, type: str}
    ssh_kind: {description: "C(direct) or C(proxy)", type: str}
    dph_total: {description: "$/h while running, storage included", type: float}
    spent_usd: {description: "What it has cost since it was created, from its row (GPU while it ran, storage since
        creation); null without the fields to tell", type: float}
    gpu_name: {description: GPU model, type: str}
    num_gpus: {description: Number of GPUs, type: int}
    gpu_ram: {description: VRAM per GPU in MB as Vast reports it, type: int}
    compute_cap: {description: CUDA compute capability x100 as Vast reports it, type: int}
attempts:
  description: Offers tried when renting, with what happened to each.
  returned: when renting
  type: list
  elements: dict
  sample:
    - {offer_id: 123, machine_id: 4567, result: taken}
    - {offer_id: 456, machine_id: 8901, result: rented, instance_id: 789}
destroyed:
  description: Contract ids destroyed by this call.
  returned: always
  type: list
  elements: int
"""

import contextlib
import signal
import time
from typing import Any, ClassVar

from ..module_utils.api_client import VastClient
from ..module_utils.errors import (
    VastAmbiguousError,
    VastError,
    VastNotFound,
    VastUnavailable,
    WaitFailed,
    WaitTimeout,
)
from ..module_utils.local_state import MARKER_ENV, ContractLedger
from ..module_utils.offer_selection import OfferRequest, select_offers
from ..module_utils.rows import STOPPED_STATUSES, diff_view, instance_summary
from ..module_utils.vast_module import VastModule
from ..module_utils.vast_query import QueryError
from ..module_utils.waiting import Deadline, instance_gone, instance_stopped, instance_usable, wait_until

RUNTYPES = {"direct": "ssh_direc ssh_proxy", "proxy": "ssh_proxy"}
# How long to look for an instance a create may have rented despite an error, before moving on.
AMBIGUOUS_LOOK_S = 30.0
# Cleanup after a failure gets its own deadline: the run's own may be what ran out.
CLEANUP_S = 180.0
# The service refuses smaller disks; saying so here names the option instead of relaying a 400.
MIN_DISK_GB = 8
NOTHING_RENTED = "; nothing was rented"


class RentFailed(VastError):
    """Renting failed; the caller destroys whatever this call rented."""


class Interrupted(BaseException):
    """SIGTERM while renting: unwind through the cleanup like Ctrl-C does."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f"interrupted by signal {signum}")


class VastInstance(VastModule):
    argument_spec: ClassVar[dict[str, Any]] = {
        "label": {"type": "str"},
        "instance_id": {"type": "int"},
        "state": {"type": "str", "choices": ["present", "running", "stopped", "absent"], "default": "present"},
        "offer_id": {"type": "int"},
        "query": {"type": "str"},
        "order": {"type": "str", "default": "dph+"},
        "max_offers": {"type": "int", "default": 5},
        "exclude_machines": {"type": "list", "elements": "int", "default": []},
        "max_dph": {"type": "float"},
        "image": {"type": "str"},
        "disk": {"type": "float", "default": 10.0},
        "env": {"type": "dict"},
        "onstart": {"type": "str"},
        "ssh": {"type": "str", "choices": ["direct", "proxy"], "default": "direct"},
        "ssh_user": {"type": "str", "default": "root"},
        "bid_price": {"type": "float"},
        "bid_margin": {"type": "float"},
        "max_bid": {"type": "float"},
        "wait": {"type": "bool", "default": True},
        "wait_timeout": {"type": "int", "default": 900},
        "ledger_path": {"type": "path"},
    }
    module_rules: ClassVar[dict[str, Any]] = {"mutually_exclusive": [("offer_id", "query")],
                                              "required_one_of": [("label", "instance_id")]}

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self.ledger = ContractLedger(self.params["ledger_path"])
        self.result.update(instance=None, destroyed=[])
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}

    def deadline_seconds(self) -> float:
        return float(self.params["wait_timeout"])

    def check_params(self) -> None:
        params = self.params
        if params["max_offers"] < 1:
            self.fail("max_offers must be at least 1")
        if params["wait_timeout"] < 1:
            self.fail("wait_timeout must be at least 1 second")
        if params["bid_price"] is not None and not 0.001 <= params["bid_price"] <= 128:
            self.fail(f"bid_price must be between 0.001 and 128 $/h, got {params['bid_price']}")
        if params["bid_margin"] is not None and not 1.0 <= params["bid_margin"] <= 10:
            self.fail(f"bid_margin must be between 1 and 10 (a multiple of the minimum bid), "
                      f"got {params['bid_margin']}")
        if params["max_bid"] is not None and not 0.001 <= params["max_bid"] <= 128:
            self.fail(f"max_bid must be between 0.001 and 128 $/h, got {params['max_bid']}")
        if params["state"] in ("present", "running") and params["query"] is not None:
            try:
                self.offer_request().parsed()
            except QueryError as exc:
                self.fail(f"Invalid query: {exc}{NOTHING_RENTED}")

    def offer_request(self) -> OfferRequest:
        p = self.params
        return OfferRequest(query=p["query"], offer_id=p["offer_id"], order=p["order"],
                            offer_type="bid" if self.interruptible else "on-demand", bid_price=p["bid_price"],
                            bid_margin=p["bid_margin"], max_bid=p["max_bid"],
                            storage_gb=float(p["disk"]), max_dph=p["max_dph"], exclude_machines=p["exclude_machines"],
                            limit=p["max_offers"])

    # ------------------------------------------------------------ lookups

    def find_all(self) -> list[dict[str, Any]]:
        if self.params["instance_id"] is not None:
            row = self.client.get_instance(self.params["instance_id"])
            return [row] if row else []
        return [row for row in self.client.list_instances({"label": {"in": [self.params["label"]]}})
                if row.get("label") == self.params["label"]]

    def find(self) -> dict[str, Any] | None:
        matches = self.find_all()
        if len(matches) > 1:
            ids = ", ".join(str(row["id"]) for row in matches)
            self.fail(f"{len(matches)} live instances carry the label {self.params['label']!r} (ids {ids}); "
                      "a label must identify one instance. state=absent destroys them all.",
                      instance_ids=[row["id"] for row in matches])
        return matches[0] if matches else None

    # ------------------------------------------------------------ states

    def run(self) -> None:
        state = self.params["state"]
        if state == "absent":
            matches = self.find_all()
            self.before = diff_view(matches[0]) if len(matches) == 1 else {
                "instances": [diff_view(row) for row in matches]} if matches else {}
            self.absent(matches)
        else:
            current = self.find()
            self.before = diff_view(current)
            if state == "stopped":
                self.stopped(current)
            else:
                self.present(current, want_running=state == "running")
        self.set_diff(self.before, self.after)

    def summary(self, row: dict[str, Any]) -> dict[str, Any]:
        return instance_summary(row, self.params["ssh_user"])

    def present(self, current: dict[str, Any] | None, want_running: bool) -> None:
        if current is None:
            if self.params["instance_id"] is not None:
                self.fail(f"instance {self.params['instance_id']} does not exist; "
                          "give a label (and an offer or query) to rent one")
            self.rent()
            return
        if want_running and current.get("cur_state") == "stopped":
            self.changed()
            self.after = {**diff_view(current), "status": "running"}
            if self.module.check_mode:
                self.result["instance"] = self.summary(current)
                return
            answer = self.client.set_instance_state(current["id"], "running")
            if answer.get("success") is False:
                self.fail(f"cannot start instance {current['id']}: {answer.get('msg')}",
                          error=answer.get("error"), instance=instance_summary(current))
        else:
            self.after = self.before
        if self.params["wait"] and not self.module.check_mode and (
                want_running or current.get("intended_status") == "running"):
            current = self.wait_usable(current["id"])
        self.result["instance"] = self.summary(current)

    def stopped(self, current: dict[str, Any] | None) -> None:
        if current is None:
            self.fail(f"no instance labelled {self.params['label']!r} to stop (state=stopped never rents)")
        already = current.get("cur_state") == "stopped" and current.get("actual_status") in STOPPED_STATUSES
        if current.get("intended_status") == "stopped" or already:
            self.after = self.before
            self.result["instance"] = self.summary(current)
            return
        self.changed()
        self.after = {**self.before, "status": "exited"}
        if self.module.check_mode:
            self.result["instance"] = self.summary(current)
            return
        self.client.set_instance_state(current["id"], "stopped")
        if self.params["wait"]:
            try:
                current = instance_stopped(current["id"]).wait(lambda: self.client.get_instance(current["id"]),
                                                               self.deadline)
            except (WaitFailed, WaitTimeout) as exc:
                self.fail(str(exc), instance=instance_summary(current))
        self.result["instance"] = self.summary(current)

    def absent(self, matches: list[dict[str, Any]]) -> None:
        """Destroy every instance with the label: duplicates are exactly what cleanup must catch."""
        self.after = {}
        if not matches:
            instance_id = self.params["instance_id"]
            if instance_id is not None and not self.module.check_mode and any(
                    c["id"] == instance_id for c in self.ledger.open_contracts(self.client.base_url)):
                # Gone already (destroyed elsewhere, or expired): the ledger catches up.
                self.warn(self.ledger.destroyed(instance_id, api_url=self.client.base_url))
            return
        self.changed()
        if self.module.check_mode:
            self.result["destroyed"] = [row["id"] for row in matches]
            return
        for row in matches:
            self.destroy_verified(int(row["id"]), self.client)

    # ------------------------------------------------------------ renting

    def candidates(self) -> list[dict[str, Any]]:
        try:
            selection = select_offers(self.client, self.offer_request())
        except QueryError as exc:  # an order or type the CLI would refuse
            raise RentFailed(f"Invalid query: {exc}{NOTHING_RENTED}") from None
        if not selection.offers:
            raise RentFailed(f"{selection.reason}{NOTHING_RENTED}")
        return selection.offers

    @property
    def interruptible(self) -> bool:
        return self.params["bid_price"] is not None or self.params["bid_margin"] is not None

    def payload(self, offer: dict[str, Any]) -> dict[str, Any]:
        return {
            "client_id": "me",
            "image": self.params["image"],
            "disk": float(self.params["disk"]),
            "label": self.params["label"],
            # The marker says "ours" on the account, where a reaper on any controller can see it.
            "env": {**{str(k): str(v) for k, v in (self.params["env"] or {}).items()},
                    MARKER_ENV: str(self.ledger.controller_id())},
            "onstart": self.params["onstart"],
            "runtype": RUNTYPES[self.params["ssh"]],
            "price": self.offer_request().bid_for(offer),
            "cancel_unavail": True,
            "image_login": None,
            "python_utf8": False,
            "lang_utf8": False,
            "use_jupyter_lab": False,
            "jupyter_dir": None,
            "force": False,
            "extra": None,
            "template_hash_id": None,
            "user": None,
        }

    def rent(self) -> None:
        if not self.params["label"]:
            self.fail("label is required to rent: it is the instance's identity")
        if not self.params["image"]:
            self.fail("image is required to rent an instance")
        if self.params["offer_id"] is None and self.params["query"] is None:
            self.fail(f"renting needs offer_id or query (no instance with this label exists){NOTHING_RENTED}")
        if self.params["disk"] < MIN_DISK_GB:
            self.fail(f"disk must be at least {MIN_DISK_GB} GB (Vast's minimum), got "
                      f"{self.params['disk']:g}{NOTHING_RENTED}")
        try:
            if not self.module.check_mode:
                self.ledger.check_writable()
        except OSError as exc:
            self.fail(f"the contract ledger {self.ledger.path} is not writable ({exc}){NOTHING_RENTED}")
        try:
            offers = self.candidates()
        except RentFailed as exc:
            self.fail(str(exc))
        self.changed()
        self.after = {"label": self.params["label"], "status": "running", "offer_id": offers[0]["id"],
                      "machine_id": offers[0].get("machine_id"), "image": self.params["image"],
                      "disk_gb": self.params["disk"], "gpu_name": offers[0].get("gpu_name"),
                      "dph_total": offers[0].get("dph_total"), "is_bid": self.interruptible,
                      "bid_price": self.offer_request().bid_for(offers[0])}
        if self.module.check_mode:
            self.result["would_rent"] = {k: v for k, v in self.after.items() if k != "status"}
            return
        attempts: list[dict[str, Any]] = []
        self.result["attempts"] = attempts
        rented: list[int] = []  # every contract this call created, kept or not
        previous = signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            chosen = None
            for offer in offers:
                chosen = self.create_on(offer, attempts, rented)
                if chosen is not None:
                    break
            if chosen is None:
                raise RentFailed(f"none of the {len(offers)} offers tried could be rented")
            eventful = [a for a in attempts if a["result"] != "rented"]
            if eventful:
                # Said, not only returned: a run that rented anyway should still show what the market and the API
                # did (offers taken meanwhile, a create whose answer was lost and whose instance was adopted).
                self.module.warn(f"renting took {len(attempts)} attempt(s): "
                                 + "; ".join(f"offer {a['offer_id']} {a['result']} ({a.get('msg') or 'no GPU free'})"
                                             for a in eventful))
            if self.params["wait"]:
                row = self.wait_usable(chosen)
            else:
                row = self.client.get_instance(chosen) or {"id": chosen, "label": self.params["label"]}
            self.destroy_strays(chosen, rented)
        except BaseException as exc:
            cleanup = self.cleanup([i for i in rented if i not in self.result["destroyed"]])
            if isinstance(exc, VastError | OSError):
                self.fail(f"{exc}; {cleanup}")
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.result["instance"] = self.summary(row)
        self.after = diff_view(row)

    def create_on(self, offer: dict[str, Any], attempts: list[dict[str, Any]], rented: list[int]) -> int | None:
        try:
            answer = self.client.create_instance(offer["id"], self.payload(offer))
        except VastUnavailable as exc:
            attempts.append({**_tried(offer), "result": "taken", "msg": exc.msg})
            return None
        except VastAmbiguousError as exc:
            # The request may have rented: the label says whether it did, once the row shows up.
            found = wait_until(self.find_all, Deadline(min(AMBIGUOUS_LOOK_S, self.deadline.remaining + 1)),
                               interval=1.0, max_interval=3.0)
            attempts.append({**_tried(offer), "result": "adopted" if found else "lost", "msg": str(exc)})
            if not found:
                return None
            for row in found:
                self._record(int(row["id"]), offer)
                rented.append(int(row["id"]))
            return int(found[0]["id"])
        instance_id = answer.get("new_contract")
        if not instance_id:
            attempts.append({**_tried(offer), "result": "refused", "msg": str(answer.get("msg"))})
            return None
        rented.append(int(instance_id))
        self._record(int(instance_id), offer)
        if answer.get("success") is False:
            # Created but stopped (GPUs busy): it would bill storage while never running.
            attempts.append({**_tried(offer), "result": "unavailable", "instance_id": instance_id})
            self.destroy_verified(int(instance_id), self.client)
            return None
        attempts.append({**_tried(offer), "result": "rented", "instance_id": instance_id})
        return int(instance_id)

    def _record(self, instance_id: int, offer: dict[str, Any]) -> None:
        self.ledger.created(instance_id, label=self.params["label"], offer_id=offer.get("id"),
                            machine_id=offer.get("machine_id"), api_url=self.client.base_url)

    def destroy_strays(self, chosen: int, rented: list[int]) -> None:
        """A create reported lost may still have landed: nothing but the chosen one may carry the label."""
        for row in self.find_all():
            if int(row["id"]) != chosen:
                if int(row["id"]) not in rented:
                    rented.append(int(row["id"]))
                    self._record(int(row["id"]), {"machine_id": row.get("machine_id")})
                self.destroy_verified(int(row["id"]), self.client)

    def cleanup(self, instance_ids: list[int]) -> str:
        """Destroy what this call rented, with a client and deadline of its own: the run's may be spent."""
        if not instance_ids:
            return "nothing is billing"
        failures = []
        try:
            with VastClient.from_options(self.params, Deadline(CLEANUP_S)) as client:
                for instance_id in instance_ids:
                    try:
                        self.destroy_verified(instance_id, client)
                    except Exception as exc:  # keep going: every other instance must still be destroyed
                        failures.append(f"{instance_id} ({exc})")
        except Exception as exc:
            failures.append(f"{instance_ids} ({exc})")
        if failures:
            return (f"instances that may still be billing: {', '.join(failures)}; they are in the ledger "
                    f"{self.ledger.path} (playbooks/teardown.yml destroys them)")
        return f"instance(s) {', '.join(map(str, instance_ids))} destroyed, nothing is billing"

    # ------------------------------------------------------------ waiting

    def wait_usable(self, instance_id: int) -> dict[str, Any]:
        """Running and answering SSH; WaitFailed on hopeless states, WaitTimeout at the deadline."""
        waiter = instance_usable(instance_id, self.deadline)
        return waiter.wait(lambda: self.client.get_instance(instance_id), self.deadline)

    # ------------------------------------------------------------ destroying

    def destroy_verified(self, instance_id: int, client: Any) -> None:
        """Destroy, then make sure it stays gone; Vast has been seen to bring rows back."""
        for _attempt in range(3):
            with contextlib.suppress(VastNotFound):  # already gone is what we want
                client.destroy_instance(instance_id)
            try:
                instance_gone(instance_id).wait(lambda: client.get_instance(instance_id), Deadline(30.0))
            except WaitTimeout:
                continue
            time.sleep(0.5)
            if client.get_instance(instance_id) is None:
                self.warn(self.ledger.destroyed(instance_id, api_url=client.base_url))
                self.result["destroyed"].append(instance_id)
                return
        raise VastError(f"instance {instance_id} is still there after 3 destroys; it may be billing")


def _tried(offer: dict[str, Any]) -> dict[str, Any]:
    return {"offer_id": offer["id"], "machine_id": offer.get("machine_id")}


def main() -> None:
    VastInstance.execute()


if __name__ == "__main__":
    main()
