# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where rsync finds a rented host's files: ``user@address:path``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DOCUMENTATION = r"""
name: rsync_remote
short_description: The C(user@address:path) of a rented host, for rsync
version_added: 0.1.0
author: mlops.vast developers (@mlops-vast)
description:
  - Builds rsync's remote operand from the host's inventory variables (C(ansible_user), default C(root),
    and C(ansible_host)). Use it with P(mlops.vast.rsync_ssh#filter), which gives the port and the key.
options:
  _input:
    description: The host's variables, for example C(hostvars[host]).
    type: dict
    required: true
  path:
    description: The path on the host (a trailing C(/) copies a directory's content, as rsync means it).
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Copy the code to the host
  ansible.builtin.command:
    argv: [rsync, -az, -e, "{{ hostvars[host] | mlops.vast.rsync_ssh }}", code/,
           "{{ hostvars[host] | mlops.vast.rsync_remote('/workspace/run/code/') }}"]
"""

RETURN = r"""
_value:
  description: C(user@address:path).
  type: str
"""


def rsync_remote(host: Mapping[str, Any], path: str) -> str:
    return f"{host.get('ansible_user') or 'root'}@{host.get('ansible_host')}:{path}"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"rsync_remote": rsync_remote}
