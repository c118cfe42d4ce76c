#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vast_lease
short_description: Renew the reaper's lease of a run's instances, with the long promise
description:
  - Every contract in the local ledger has a lease beside it that tells M(mlops.vast.vast_reap) a live controller
    still looks after the instance. M(mlops.vast.watch) renews it while it watches; this module renews it for the
    work that follows without a watch, promising the next word within 30 minutes, so that no reaper (another run's
    C(train.yml), C(reap.yml)) destroys the instance while the newest checkpoint is still being pulled from it.
  - The teardown role runs it first; so does the guard (C(mlops.vast.guard)) as it starts its teardown. Renew it
    the same way in your own playbooks before long work on an instance you rented without the watch.
  - With O(claim), it first claims the label for the C(ansible-playbook) it runs in, and fails when another live
    C(ansible-playbook) on this controller has claimed it, since two runs of one name at once would share one instance
    (renting takes over the label's instance, as a re-run after a killed controller should). C(train.yml) does
    this before it reaps or rents. A claim lapses when its C(ansible-playbook) ends, killed or not.
  - Local bookkeeping only; it sends no request and reports C(changed=false). In check mode it writes nothing (a
    claim is still refused when another run holds the label).
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Runs on the controller, where the ledger and its leases are.
options:
  label:
    description: The label of the instances whose leases to renew (every open contract of the ledger with it).
    type: str
    required: true
  ledger_path:
    description:
      - The local contract ledger. Defaults to E(MLOPS_VAST_LEDGER), else C(~/.local/state/mlops-vast/contracts.jsonl).
        The claims are kept beside it (C(contracts.jsonl.runs/)).
    type: path
  claim:
    description:
      - Claim O(label) for this C(ansible-playbook) run first; fail, renewing nothing, when another live one holds it.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Keep the reaper off the run's instance while its checkpoints come home
  mlops.vast.vast_lease:
    label: exp-42

- name: Make sure no other run of this name is going on here before renting
  mlops.vast.vast_lease:
    label: exp-42
    claim: true
"""

RETURN = r"""
renewed:
  description: The contract ids whose leases were renewed (in check mode, would be).
  returned: always
  type: list
  elements: int
claimed_by:
  description: With O(claim), the process id of the C(ansible-playbook) that now holds the label (this run's).
  returned: when claim is true and the label was free
  type: int
msg:
  description: What was renewed, in words.
  returned: always
  type: str
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.local_state import LONG_LEASE_S, ContractLedger
from ..module_utils.run_claims import RunClaims, playbook_process


def main() -> None:
    module = AnsibleModule(argument_spec={"label": {"type": "str", "required": True},
                                          "ledger_path": {"type": "path"},
                                          "claim": {"type": "bool", "default": False}},
                           supports_check_mode=True)
    label = module.params["label"]
    if not label:
        module.fail_json(msg="label must not be empty: give the run's label (run_name, teardown_label)")
    ledger = ContractLedger(module.params["ledger_path"])
    claimed: dict = {}
    if module.params["claim"]:
        claimed = {"claimed_by": playbook_process()}
        try:
            held = RunClaims(ledger.path + ".runs").claim(label, claimed["claimed_by"], write=not module.check_mode)
        except OSError as exc:
            module.fail_json(msg=f"could not claim the run name {label} in {ledger.path}.runs: {exc}")
        if held is not None:
            since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(held.get("claimed_at") or 0)))
            module.fail_json(msg=(f"A run named {label} is already going on this controller (ansible-playbook pid "
                                  f"{held['pid']}, since {since}); two runs of one name would share its instance. "
                                  f"Wait for it, tear it down (mlops-vast teardown --label {label}, or "
                                  f"ansible-playbook playbooks/teardown.yml -e teardown_label={label}), or give this "
                                  "run another run_name. Nothing was rented."), holder=held)
    try:
        if module.check_mode:
            renewed = [int(c["id"]) for c in ledger.open_contracts() if c.get("label") == label]
        else:
            renewed = ledger.renew_leases(label)
    except OSError as exc:
        # A lease that cannot be written must not stop a teardown; the reaper then falls back to the rent's time.
        module.warn(f"could not renew the lease of {label} in {ledger.path}: {exc}")
        renewed = []
    module.exit_json(changed=False, renewed=renewed, **claimed,
                     msg=(f"renewed the lease of {renewed} for {LONG_LEASE_S:g} s" if renewed
                          else f"no open contract labelled {label} in the ledger"))


if __name__ == "__main__":
    main()
