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
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.vast
  - mlops.vast.attributes
  - mlops.vast.attributes.api
  - mlops.vast.attributes.resource
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

from typing import Any, ClassVar

from ..module_utils.vast_module import VastModule


def key_material(text: str) -> str:
    """Type and base64 only: the comment is not part of a key's identity."""
    return " ".join(text.split()[:2])


class VastSshKey(VastModule):
    argument_spec: ClassVar[dict[str, Any]] = {
        "public_key": {"type": "str", "no_log": False},
        "public_key_file": {"type": "path"},
        "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    }
    module_rules: ClassVar[dict[str, Any]] = {
        "mutually_exclusive": [("public_key", "public_key_file")],
        "required_one_of": [("public_key", "public_key_file")],
    }

    def check_params(self) -> None:
        text = self.params["public_key"]
        if self.params["public_key_file"]:
            try:
                with open(self.params["public_key_file"]) as handle:
                    text = handle.read()
            except OSError as exc:
                self.fail(f"cannot read public_key_file: {exc}")
        self.text = (text or "").strip()
        if "PRIVATE KEY" in self.text:
            self.fail("that is a private key; give the public one (the .pub file)")
        if len(self.text.split()) < 2 or not self.text.startswith(("ssh-", "ecdsa-", "sk-")):
            self.fail("public_key must be an OpenSSH public key such as 'ssh-ed25519 AAAA... comment'")

    def run(self) -> None:
        want = self.params["state"] == "present"
        mine = key_material(self.text)
        existing = [k for k in self.client.ssh_keys() if key_material(str(k.get("key") or "")) == mine]
        self.result["key"] = None
        if want and existing:
            self.result["key"] = {"id": existing[0].get("id"), "key": existing[0].get("key")}
        elif want:
            self.changed()
            if not self.module.check_mode:
                added = self.client.add_ssh_key(self.text)
                self.result["key"] = {"id": added.get("id") or (added.get("key") or {}).get("id"), "key": self.text}
        elif existing:
            self.changed()
            if not self.module.check_mode:
                for key in existing:
                    self.client.delete_ssh_key(int(key["id"]))
        self.set_diff({"registered": bool(existing)}, {"registered": want})


def main() -> None:
    VastSshKey.execute()


if __name__ == "__main__":
    main()
