#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vast_ledger
short_description: Read the local ledger of contracts this controller rented
description:
  - M(mlops.vast.vast_instance) appends every contract it creates to a local ledger the moment
    create returns, and marks it destroyed once the instance is verified gone. This module lists the
    contracts still open (created and not verified destroyed), so an interrupted run can be cleaned up
    (C(playbooks/teardown.yml)).
  - Read-only.
version_added: 0.1.0
author:
  - mlops.vast developers (@mlops-vast)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  ledger_path:
    description:
      - The ledger file. Defaults to E(MLOPS_VAST_LEDGER), else C(~/.local/state/mlops-vast/contracts.jsonl).
    type: path
  api_url:
    description:
      - Only contracts of this API (contracts on vastsim and on Vast are kept apart). Defaults to
        E(VAST_URL), else C(https://console.vast.ai). C(all) lists every API's.
    type: str
"""

EXAMPLES = r"""
- name: What is still rented, according to this controller
  mlops.vast.vast_ledger:
  register: ledger

- name: Destroy it all
  mlops.vast.vast_instance:
    instance_id: "{{ item.id }}"
    state: absent
  loop: "{{ ledger.open }}"
"""

RETURN = r"""
open:
  description: Open contracts, oldest first, each with C(id), C(label), C(offer_id), C(machine_id), C(api_url), C(ts).
  returned: always
  type: list
  elements: dict
count:
  description: How many are open.
  returned: always
  type: int
path:
  description: The ledger file.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.vast_api import VastConfigError, resolve_base_url
from ..module_utils.vast_common import ContractLedger


def main() -> None:
    module = AnsibleModule(argument_spec={"ledger_path": {"type": "path"}, "api_url": {"type": "str"}},
                           supports_check_mode=True)
    ledger = ContractLedger(module.params["ledger_path"])
    api_url = module.params["api_url"]
    try:
        wanted = None if api_url == "all" else resolve_base_url(api_url)
    except VastConfigError as exc:
        module.fail_json(msg=str(exc))
    try:
        contracts = ledger.open_contracts(wanted)
    except OSError as exc:
        module.fail_json(msg=f"cannot read the ledger {ledger.path}: {exc}")
    module.exit_json(changed=False, open=contracts, count=len(contracts), path=ledger.path)


if __name__ == "__main__":
    main()
