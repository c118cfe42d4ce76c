#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: vast_spend
short_description: Prove from the account what of a label is billing, and what the run cost
description:
  - Asks the account (the API, not the local ledger) which instances with O(label) are still on it, and fails,
    naming them and how to destroy them, unless they are exactly O(expect_billing) (by default, none). A stopped
    instance counts as billing (its storage bills until it is destroyed).
  - Reads the run's spend from the account's charges (C(GET /api/v0/charges/)), GPU, storage and bandwidth, for
    every instance of the run (those the local ledger recorded with the label, those on the account with it, and
    charges that name the label).
  - The four playbooks (C(train.yml), C(sweep.yml), C(rent.yml), C(teardown.yml)) end with it, through
    C(playbooks/tasks/account_proof.yml), which also writes the spend to C(spend.json).
  - Read-only; it runs in check mode too.
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.vast
  - mlops.vast.attributes
  - mlops.vast.attributes.api
  - mlops.vast.attributes.read_only
attributes:
  platform:
    platforms: posix
    details: Runs on the controller; it sends only GET requests.
options:
  label:
    description:
      - The run's label (its instances' identity).
    type: str
    required: true
  expect_billing:
    description:
      - Instance ids that are meant to be on the account with O(label) now (C(rent.yml) checks its rental
        before destroying it). Any other instance with the label, or one of these missing, fails.
      - Empty (the default) means nothing with the label may be billing.
    type: list
    elements: int
    default: []
  since:
    description:
      - When the run started (epoch seconds, the controller's clock). Contracts the local ledger recorded with
        O(label) before it, and charges of instances gone before it, belong to an earlier run that used the same
        label and are not counted; charges are read from it (less 300 s for the API's clock). C(train.yml) passes
        its start.
      - 0 (the default) counts every contract of the label in the local ledger, and reads charges from a day before
        the first of them, else the last 30 days.
    type: float
    default: 0
  settle_s:
    description:
      - Seconds to keep asking, every 2 s, while the account still lists an instance it should not (an
        instance destroyed a moment ago may take that long to leave the list). 0 asks once.
    type: float
    default: 10
  ledger_path:
    description:
      - The local contract ledger, where the run's instance ids are found. Defaults to E(MLOPS_VAST_LEDGER),
        else C(~/.local/state/mlops-vast/contracts.jsonl).
    type: path
"""

EXAMPLES = r"""
- name: Nothing of the run is billing; what it cost
  mlops.vast.vast_spend:
    label: exp-42
  register: proof

- name: Show it
  ansible.builtin.debug:
    msg: "exp-42 cost {{ proof.spend.total_usd }} USD (GPU {{ proof.spend.gpu_usd }})"
"""

RETURN = r"""
billing:
  description: The instances with the label still on the account (C(id), C(label), C(actual_status),
    C(intended_status), C(cur_state), C(dph_total)).
  returned: always
  type: list
  elements: dict
instance_ids:
  description: Every instance id counted as the run's.
  returned: always
  type: list
  elements: int
spend:
  description: The run's spend from the API's charges, in USD (C(gpu_usd), C(storage_usd), C(bandwidth_usd),
    C(total_usd)), per instance (C(instances)), where it comes from (C(source)) and when it was read (C(at)).
  returned: always
  type: dict
"""

import time
from typing import Any, ClassVar

from ..module_utils.account_spend import (
    billing_rows,
    charge_window,
    charges,
    destroyed_before,
    ledger_history,
    run_spend,
)
from ..module_utils.api_client import resolve_base_url
from ..module_utils.local_state import default_ledger_path
from ..module_utils.vast_module import VastModule

SETTLE_POLL_S = 2.0


class VastSpend(VastModule):
    argument_spec: ClassVar[dict[str, Any]] = {
        "label": {"type": "str", "required": True},
        "expect_billing": {"type": "list", "elements": "int", "default": []},
        "since": {"type": "float", "default": 0},
        "settle_s": {"type": "float", "default": 10},
        "ledger_path": {"type": "path"},
    }

    def check_params(self) -> None:
        if not self.params["label"].strip():
            self.fail("label is empty: give the run's label (its instances' name on the account).")
        if self.params["settle_s"] < 0 or self.params["settle_s"] > 600:
            self.fail(f"settle_s must be between 0 and 600 seconds, not {self.params['settle_s']}.")
        if self.params["since"] < 0 or self.params["since"] > time.time() + 86400:
            self.fail(f"since must be epoch seconds (>= 0, not in the future): when the run started, as "
                      f"now().timestamp() gives it; not {self.params['since']}.")

    def run(self) -> None:
        label = self.params["label"]
        expected = {int(i) for i in self.params["expect_billing"]}
        api_url = resolve_base_url(self.params["api_url"])
        ledger = self.params["ledger_path"] or default_ledger_path()
        since = self.params["since"]
        ids, first_seen = ledger_history(ledger, label, api_url, since)

        end = time.monotonic() + self.params["settle_s"]
        while True:
            listed = self.client.list_instances({"label": {"eq": label}})
            listed = [i for i in listed if i.get("label") == label]
            present = {int(i["id"]) for i in listed}
            if present == expected or time.monotonic() >= end or not present - expected:
                break
            time.sleep(SETTLE_POLL_S)
        ids |= present

        now = time.time()
        try:
            rows = charges(self.client, charge_window(first_seen, since, now), now)
        except ValueError as exc:
            self.fail(f"cannot read the account's charges: {exc}")
        # The label's contracts the ledger saw destroyed before this run began: an earlier run's, even if that was a
        # moment ago (an instance this run adopted was still open then).
        earlier = destroyed_before(ledger, label, api_url, since) - ids if since > 0 else set()
        spend = run_spend(rows, ids, label, since, earlier)
        ids |= {i["id"] for i in spend["instances"] if i["id"] is not None}
        self.result.update(billing=billing_rows(listed), instance_ids=sorted(ids), spend=spend)

        extra, missing = present - expected, expected - present
        if extra:
            self.fail(extra_message(label, [i for i in listed if int(i["id"]) in extra]))
        if missing:
            self.fail(f"Instance(s) {sorted(missing)} with label {label!r} are not on the account: the rental is "
                      f"gone (destroyed or never created). Look at the account's instances and rent again.")


def extra_message(label: str, rows: list[dict[str, Any]]) -> str:
    """What to do about instances still on the account. One the teardown stopped on purpose (it may hold the only
    copy of a checkpoint that could not be verified) is not destroyed on the first advice: recovering it comes first."""
    ids = sorted(int(i["id"]) for i in rows)
    stopped = sorted(int(i["id"]) for i in rows if i.get("intended_status") == "stopped")
    said = (f"The account still bills {len(ids)} instance(s) with label {label!r}: {ids} "
            f"({', '.join(str(i.get('actual_status')) for i in rows)}). ")
    destroy = (f"ansible-playbook playbooks/teardown.yml -e teardown_label={label} (or mlops.vast.vast_instance "
               f"label={label} state=absent)")
    if stopped:
        return said + (
            f"{stopped} stopped on purpose by the teardown: its newest checkpoint could not be verified, and the host "
            f"may hold its only copy (storage still bills). To recover it, start it (mlops.vast.vast_instance "
            f"label={label} state=running) and run the teardown role again; to give the data up, {destroy}.")
    return said + f"Destroy them: {destroy}, then check again."


def main() -> None:
    VastSpend.execute()


if __name__ == "__main__":
    main()
