# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How rsync reaches a rented host over SSH, said once for every role that copies files."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any

from ..module_utils.local_state import ssh_key_in_use

DOCUMENTATION = r"""
name: rsync_ssh
short_description: The C(rsync -e) command that reaches a rented host over SSH
version_added: 0.1.0
author: mlops.vast developers (@mlops-vast)
description:
  - Builds the remote shell of an C(rsync) run on the controller against a rented host, from the host's
    inventory variables (C(ansible_port), C(ansible_ssh_private_key_file)).
  - Rented hosts get fresh host keys each time, so the host key is not pinned (their identity is the
    Vast API's word); no password or agent prompt can hang the copy (C(BatchMode)).
  - When Ansible keeps a persistent connection to the host (C(ControlPersist) in its SSH arguments, as the
    collection's C(ansible.cfg) has), the copy goes through it (C(ControlMaster=no) with Ansible's
    C(ControlPath)) instead of a new SSH handshake; without one, or when it has closed, SSH connects as usual.
options:
  _input:
    description: The host's variables, for example C(hostvars[host]).
    type: dict
    required: true
  key:
    description:
      - The private key; defaults to the host's C(ansible_ssh_private_key_file), else the key the collection
        rents with (P(mlops.vast.ssh_key#lookup)).
    type: str
  connect_timeout:
    description: Seconds to wait for the connection (C(ConnectTimeout)); 0 leaves SSH's default.
    type: int
    default: 20
  reuse_connection:
    description: Go through Ansible's persistent connection to the host when there is one.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Pull the checkpoints
  ansible.builtin.command:
    argv: [rsync, -a, -e, "{{ hostvars[host] | mlops.vast.rsync_ssh }}",
           "{{ hostvars[host] | mlops.vast.rsync_remote('/workspace/run/output/') }}", "results/"]
"""

RETURN = r"""
_value:
  description: The C(ssh ...) command line, quoted for rsync's C(-e).
  type: str
"""


def rsync_ssh(host: Mapping[str, Any], key: str | None = None, connect_timeout: int = 20,
              reuse_connection: bool = True) -> str:
    key = key or host.get("ansible_ssh_private_key_file") or ssh_key_in_use()[0]
    argv = ["ssh", "-p", str(host.get("ansible_port") or 22), "-i", os.path.expanduser(str(key)),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
    if connect_timeout:
        argv += ["-o", f"ConnectTimeout={int(connect_timeout)}"]
    control_path = ansible_control_path(host) if reuse_connection else None
    if control_path:
        # "no": use Ansible's master when its socket is there, else connect as usual; never become one.
        argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={control_path}"]
    return shlex.join(argv)


# ssh_args and the ControlPath options are Ansible's SSH connection's, read as that plugin reads them (environment,
# ansible.cfg, the host's variables).
SSH_VARIABLES = ("ansible_ssh_args", "ansible_ssh_common_args", "ansible_ssh_extra_args", "ansible_control_path",
                 "ansible_control_path_dir")


def ansible_control_path(host: Mapping[str, Any]) -> str | None:
    """The socket of Ansible's persistent SSH connection to ``host`` (it may not exist yet), or None when Ansible
    keeps none."""
    try:
        from ansible import constants as C
        from ansible.plugins.loader import connection_loader
        from ansible.utils.path import unfrackpath

        ssh = connection_loader.get("ssh", class_only=True)  # also loads its option definitions
        variables = {name: host[name] for name in SSH_VARIABLES if host.get(name) is not None}

        def option(name: str) -> Any:
            return C.config.get_config_value(name, plugin_type="connection", plugin_name="ssh", variables=variables)

        args = " ".join(str(option(name) or "") for name in ("ssh_args", "ssh_common_args", "ssh_extra_args"))
        if "controlpersist" not in args.lower():
            return None
        explicit = _ssh_option(args, "ControlPath")
        if explicit:  # the user's own, with ssh's own %-tokens: the same host, port and user expand it alike
            return explicit
        address = host.get("ansible_host") or host.get("inventory_hostname")
        pattern = option("control_path") or ssh._create_control_path(
            address, host.get("ansible_port"), host.get("ansible_user"))
        return str(pattern) % {"directory": unfrackpath(option("control_path_dir"))}
    except Exception:  # no persistent connection known: SSH connects as usual
        return None


def _ssh_option(args: str, name: str) -> str | None:
    try:
        words = shlex.split(args)
    except ValueError:
        return None
    for index, word in enumerate(words):
        if word == "-o":
            setting = words[index + 1] if index + 1 < len(words) else ""
        else:
            setting = word[2:] if word.startswith("-o") else ""
        key, value = [*setting.replace("=", " ", 1).split(" ", 1), ""][:2]
        if key.strip().lower() == name.lower() and value.strip():
            return value.strip()
    return None


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"rsync_ssh": rsync_ssh}
