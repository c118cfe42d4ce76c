# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The private key the collection reaches its rented hosts with, for inventories and playbooks."""

from __future__ import annotations

DOCUMENTATION = r"""
name: ssh_key
short_description: The private key the collection reaches its rented hosts with
version_added: 0.1.0
author: mlops.vast developers (@mlops-vast)
description:
  - Returns the path of the SSH private key for the hosts this controller rents - E(MLOPS_VAST_SSH_KEY), else
    the collection's own key, C(id_ed25519) next to the contract ledger (C(~/.local/state/mlops-vast/), or the
    directory of E(MLOPS_VAST_LEDGER)).
  - It does not create the key; M(mlops.vast.ssh_keypair) does, the first time the collection rents.
options: {}
"""

EXAMPLES = r"""
- name: Reach the inventory's rented hosts with the collection's key
  ansible.builtin.set_fact:
    ansible_ssh_private_key_file: "{{ lookup('mlops.vast.ssh_key') }}"
"""

RETURN = r"""
_raw:
  description: The private key's path (one element).
  type: list
  elements: str
"""

from typing import Any

from ansible.plugins.lookup import LookupBase

from ..module_utils.local_state import ssh_key_in_use


class LookupModule(LookupBase):
    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[str]:
        return [ssh_key_in_use()[0]]
