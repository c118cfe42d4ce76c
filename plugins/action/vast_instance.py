# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.vast_instance, run in Ansible's worker rather than a new Python (plugin_utils/in_process.py).
Documentation: plugins/modules/vast_instance.py."""

from __future__ import annotations

from ansible_collections.mlops.vast.plugins.module_utils import vast_module
from ansible_collections.mlops.vast.plugins.modules import vast_instance
from ansible_collections.mlops.vast.plugins.plugin_utils.in_process import InProcessAction


class ActionModule(InProcessAction):
    module = vast_instance
    patched = (vast_module,)
