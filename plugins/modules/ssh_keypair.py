#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ssh_keypair
short_description: The SSH key the collection's rented hosts are reached with, created once when none is configured
description:
  - Says which private key reaches the hosts this controller rents, and makes sure it exists with its
    public half, so that M(mlops.vast.vast_ssh_key) can register it with the account.
  - A configured key wins - O(path) (the provisioning role passes its C(provision_ssh_private_key) or the
    play's C(ansible_ssh_private_key_file)), else E(MLOPS_VAST_SSH_KEY). It must exist; it is not created.
  - Without one, the collection uses a dedicated ed25519 key of its own, C(id_ed25519) in its state
    directory next to the contract ledger (C(~/.local/state/mlops-vast/), or the directory of
    E(MLOPS_VAST_LEDGER)), created the first time (mode 0600, the directory 0700) and reused after, so one
    key is registered with the account, not one per run. A person's own C(~/.ssh) key is never registered
    with the marketplace unless they say so.
  - A missing C(.pub) next to an existing private key is derived from it (C(ssh-keygen -y)).
  - Creation is locked, so parallel runs share one key.
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.attributes
  - mlops.vast.attributes.resource
attributes:
  platform:
    platforms: posix
    details: Runs on the controller, where the key is used (C(ssh-keygen) must be installed).
options:
  path:
    description:
      - The private key to use. Default E(MLOPS_VAST_SSH_KEY), else the collection's own key.
    type: path
  create:
    description:
      - Create the key pair when it does not exist. By default only the collection's own key is created; a
        configured key that is missing is an error that says so.
    type: bool
  comment:
    description: The comment of a key this module creates.
    type: str
    default: mlops.vast
notes:
  - The private key never leaves the controller; only the public key is registered with Vast.
seealso:
  - module: mlops.vast.vast_ssh_key
  - plugin: mlops.vast.ssh_key
    plugin_type: lookup
"""

EXAMPLES = r"""
- name: The key for the hosts (the configured one, or the collection's own, created once)
  mlops.vast.ssh_keypair:
  register: keypair

- name: Let instances accept it
  mlops.vast.vast_ssh_key:
    public_key: "{{ keypair.public_key }}"

- name: Reach a rented host with it
  ansible.builtin.add_host:
    name: exp-1
    ansible_host: 198.51.100.7
    ansible_ssh_private_key_file: "{{ keypair.private_key_file }}"
"""

RETURN = r"""
private_key_file:
  description: The private key (absolute path).
  returned: always
  type: str
public_key_file:
  description: Its public half (the same path with C(.pub)).
  returned: always
  type: str
public_key:
  description: The OpenSSH public key text; null in check mode when the key would be created.
  returned: always
  type: str
source:
  description: Where the key comes from - C(the path option), C(MLOPS_VAST_SSH_KEY), or C(the collection's own key).
  returned: always
  type: str
created:
  description: Whether this call created the key pair (or, in check mode, would have).
  returned: always
  type: bool
"""

import fcntl
import os

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.local_state import OWN_KEY, ssh_key_in_use


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path"},
            "create": {"type": "bool"},
            "comment": {"type": "str", "default": "mlops.vast"},
        },
        supports_check_mode=True,
    )
    if module.params["path"]:
        path, source = module.params["path"], "the path option"
    else:
        path, source = ssh_key_in_use()
    path = os.path.abspath(path)
    create = module.params["create"] if module.params["create"] is not None else source == OWN_KEY
    result = {"changed": False, "private_key_file": path, "public_key_file": path + ".pub", "public_key": None,
              "source": source, "created": False}

    if not os.path.exists(path):
        if not create:
            module.fail_json(msg=f"the SSH key {path} ({source}) does not exist: create it (ssh-keygen -t ed25519 "
                             f"-f {path}), or leave {source} unset and the collection uses a key of its own",
                             **result)
        result.update(changed=True, created=True)
        if module.check_mode:
            module.exit_json(**result)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with open(path + ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run may be creating it right now
                if os.path.exists(path):
                    result.update(changed=False, created=False)
                else:
                    rc, _out, err = module.run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                                                        module.params["comment"], "-f", path])
                    if rc != 0:
                        module.fail_json(msg=f"ssh-keygen could not create {path}: {err.strip()}", **result)
            os.chmod(path, 0o600)
        except OSError as exc:
            module.fail_json(msg=f"cannot create the SSH key {path}: {exc.strerror} ({exc.filename})", **result)
    if not os.path.exists(path + ".pub"):
        result["changed"] = True
        if module.check_mode:
            module.exit_json(**result)
        # -P "": a key with a passphrase fails here instead of waiting for one at a prompt.
        rc, out, err = module.run_command(["ssh-keygen", "-y", "-P", "", "-f", path])
        if rc != 0:
            module.fail_json(msg=f"cannot derive the public key of {path} (a passphrase?): {err.strip()}; put its "
                             f"public key in {path}.pub", **result)
        try:
            with open(path + ".pub", "w", encoding="utf-8") as handle:
                handle.write(out.strip() + "\n")
        except OSError as exc:
            module.fail_json(msg=f"cannot write {path}.pub: {exc.strerror}", **result)
    try:
        with open(path + ".pub", encoding="utf-8") as handle:
            result["public_key"] = handle.read().strip()
    except OSError as exc:
        module.fail_json(msg=f"cannot read {path}.pub: {exc.strerror}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
