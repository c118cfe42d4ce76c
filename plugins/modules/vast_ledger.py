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
  - Read-only. It sends no request; it is in the C(mlops.vast.vast) action group so that the
    O(api_url) set once with C(module_defaults) selects the same service's contracts as the other modules.
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
    details: Runs on the controller, where the ledger file is; it sends no request to the API.
options:
  ledger_path:
    description:
      - The ledger file. Defaults to E(MLOPS_VAST_LEDGER), else C(~/.local/state/mlops-vast/contracts.jsonl).
    type: path
  api_url:
    description:
      - Only contracts of this API (contracts on vastsim and on Vast are kept apart). Defaults to
        E(VAST_URL), else C(https://console.vast.ai). C(all) lists every API's.
      - O(api_key) and O(api_timeout) are accepted, for C(module_defaults), and not used.
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

from typing import Any, ClassVar

from ..module_utils.api_client import resolve_base_url
from ..module_utils.local_state import ContractLedger
from ..module_utils.vast_module import VastModule


class VastLedger(VastModule):
    argument_spec: ClassVar[dict[str, Any]] = {"ledger_path": {"type": "path"}}

    def run(self) -> None:
        ledger = ContractLedger(self.params["ledger_path"])
        api_url = self.params["api_url"]
        wanted = None if api_url == "all" else resolve_base_url(api_url)
        try:
            contracts = ledger.open_contracts(wanted)
        except OSError as exc:
            self.fail(f"cannot read the ledger {ledger.path}: {exc}")
        self.result.update(open=contracts, count=len(contracts), path=ledger.path)


def main() -> None:
    VastLedger.execute()


if __name__ == "__main__":
    main()
