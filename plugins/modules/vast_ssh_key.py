#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vast_ssh_key
short_description: Register an SSH public key with the Vast.ai account
description:
  - Makes sure a public key is (or is not) registered with the account. Vast authorises the
    account's keys on instances, including instances already running, so register the
    controller's key before renting.
  - Keys compare by type and key material; the comment does not matter.
version_added: 0.1.0
author:
  - mlops.vast developers (@mlops-vast)
extends_documentation_fragment:
  - mlops.vast.vast
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: all
options:
  public_key:
    description:
      - The OpenSSH public key text (C(ssh-ed25519 AAAA... comment)). Mutually exclusive with O(public_key_file).
    type: str
  public_key_file:
    description: A file holding the public key, e.g. C(~/.ssh/id_ed25519.pub).
    type: path
  state:
    description: Whether the key should be registered.
    type: str
    choices: [present, absent]
    default: present
"""

EXAMPLES = r"""
- name: Let instances accept this controller's key
  mlops.vast.vast_ssh_key:
    public_key_file: ~/.ssh/id_ed25519.pub

- name: Remove an old key
  mlops.vast.vast_ssh_key:
    public_key: "{{ old_key }}"
    state: absent
"""

RETURN = r"""
key:
  description: The registered key (C(id), C(key)), or null after removal.
  returned: always
  type: dict
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.vast_api import Deadline, VastError
from ..module_utils.vast_common import client_for, error_result, vast_argument_spec


def key_material(text: str) -> str:
    """Type and base64 only: the comment is not part of a key's identity."""
    return " ".join(text.split()[:2])


def main() -> None:
    argument_spec = vast_argument_spec()
    argument_spec.update(
        public_key={"type": "str", "no_log": False},
        public_key_file={"type": "path"},
        state={"type": "str", "choices": ["present", "absent"], "default": "present"},
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[("public_key", "public_key_file")],
                           required_one_of=[("public_key", "public_key_file")])
    text = module.params["public_key"]
    if module.params["public_key_file"]:
        try:
            with open(module.params["public_key_file"]) as handle:
                text = handle.read()
        except OSError as exc:
            module.fail_json(msg=f"cannot read public_key_file: {exc}")
    text = (text or "").strip()
    if "PRIVATE KEY" in text:
        module.fail_json(msg="that is a private key; give the public one (the .pub file)")
    if len(text.split()) < 2 or not text.startswith(("ssh-", "ecdsa-", "sk-")):
        module.fail_json(msg="public_key must be an OpenSSH public key such as 'ssh-ed25519 AAAA... comment'")
    result: dict[str, Any] = {"changed": False, "key": None}
    try:
        with client_for(module.params, Deadline(max(module.params["api_timeout"] * 4, 60))) as client:
            existing = [k for k in client.ssh_keys() if key_material(str(k.get("key") or "")) == key_material(text)]
            if module.params["state"] == "present":
                if existing:
                    result["key"] = {"id": existing[0].get("id"), "key": existing[0].get("key")}
                else:
                    result["changed"] = True
                    if not module.check_mode:
                        added = client.add_ssh_key(text)
                        result["key"] = {"id": added.get("id") or (added.get("key") or {}).get("id"), "key": text}
            elif existing:
                result["changed"] = True
                if not module.check_mode:
                    for key in existing:
                        client.delete_ssh_key(int(key["id"]))
    except VastError as exc:
        module.fail_json(**error_result(exc))
    present_before = bool(existing)
    present_after = module.params["state"] == "present"
    result["diff"] = {"before": {"registered": present_before}, "after": {"registered": present_after}}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
