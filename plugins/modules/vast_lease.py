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
  - Local bookkeeping only; it sends no request and reports C(changed=false). In check mode it writes nothing.
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
    type: path
"""

EXAMPLES = r"""
- name: Keep the reaper off the run's instance while its checkpoints come home
  mlops.vast.vast_lease:
    label: exp-42
"""

RETURN = r"""
renewed:
  description: The contract ids whose leases were renewed (in check mode, would be).
  returned: always
  type: list
  elements: int
msg:
  description: What was renewed, in words.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.local_state import LONG_LEASE_S, ContractLedger


def main() -> None:
    module = AnsibleModule(argument_spec={"label": {"type": "str", "required": True},
                                          "ledger_path": {"type": "path"}},
                           supports_check_mode=True)
    label = module.params["label"]
    if not label:
        module.fail_json(msg="label must not be empty: give the run's label (run_name, teardown_label)")
    ledger = ContractLedger(module.params["ledger_path"])
    try:
        if module.check_mode:
            renewed = [int(c["id"]) for c in ledger.open_contracts() if c.get("label") == label]
        else:
            renewed = ledger.renew_leases(label)
    except OSError as exc:
        # A lease that cannot be written must not stop a teardown; the reaper then falls back to the rent's time.
        module.warn(f"could not renew the lease of {label} in {ledger.path}: {exc}")
        renewed = []
    module.exit_json(changed=False, renewed=renewed,
                     msg=(f"renewed the lease of {renewed} for {LONG_LEASE_S:g} s" if renewed
                          else f"no open contract labelled {label} in the ledger"))


if __name__ == "__main__":
    main()
