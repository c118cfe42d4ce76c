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


def rsync_ssh(host: Mapping[str, Any], key: str | None = None, connect_timeout: int = 20) -> str:
    key = key or host.get("ansible_ssh_private_key_file") or ssh_key_in_use()[0]
    argv = ["ssh", "-p", str(host.get("ansible_port") or 22), "-i", os.path.expanduser(str(key)),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
    if connect_timeout:
        argv += ["-o", f"ConnectTimeout={int(connect_timeout)}"]
    return shlex.join(argv)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"rsync_ssh": rsync_ssh}
