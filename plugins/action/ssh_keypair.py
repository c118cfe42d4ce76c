# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.ssh_keypair, run in Ansible's worker (in the controller process under the strategy mlops.vast.linear)
rather than a new Python (plugin_utils/in_process.py).
Documentation: plugins/modules/ssh_keypair.py."""

from __future__ import annotations

from ansible_collections.mlops.vast.plugins.modules import ssh_keypair
from ansible_collections.mlops.vast.plugins.plugin_utils.in_process import InProcessAction


class ActionModule(InProcessAction):
    module = ssh_keypair
