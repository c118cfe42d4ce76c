# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The environment of an ansible-playbook that a playbook starts itself (a teardown, a sweep's trial), without
what ansible-runner set for the playbook it runs. Private to the collection."""

from __future__ import annotations

import os
from collections.abc import Mapping

# Where ansible-runner's event display lives (ansible_runner.utils.get_callback_dir()), appended to the path.
RUNNER_CALLBACK_DIR = os.path.join("ansible_runner", "display_callback", "callback")


def plain_environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without what makes a playbook report elsewhere: the run's progress file and, under ansible-runner,
    its event display (the new playbook's log would be runner events, written into the running job's artifacts)."""
    env = {k: v for k, v in base.items() if k != "MLOPS_VAST_PROGRESS_FILE" and k != "AWX_ISOLATED_DATA_DIR"}
    artifacts = base.get("AWX_ISOLATED_DATA_DIR")
    if artifacts and env.get("ANSIBLE_CACHE_PLUGIN_CONNECTION", "").startswith(artifacts):
        # ansible-runner's fact cache of the job (artifacts/<ident>/fact_cache): not the new playbook's.
        env.pop("ANSIBLE_CACHE_PLUGIN_CONNECTION")
        env.pop("ANSIBLE_CACHE_PLUGIN", None)
    if env.get("ANSIBLE_STDOUT_CALLBACK") == "awx_display":
        original = env.pop("ORIGINAL_STDOUT_CALLBACK", "")
        if original:
            env["ANSIBLE_STDOUT_CALLBACK"] = original
        else:
            del env["ANSIBLE_STDOUT_CALLBACK"]
    if "ANSIBLE_CALLBACK_PLUGINS" in env:
        # Ansible imports every callback plugin on that path, and awx_display patches the display at import.
        kept = [path for path in env["ANSIBLE_CALLBACK_PLUGINS"].split(os.pathsep)
                if path and not path.rstrip("/").endswith(RUNNER_CALLBACK_DIR)]
        if kept:
            env["ANSIBLE_CALLBACK_PLUGINS"] = os.pathsep.join(kept)
        else:
            del env["ANSIBLE_CALLBACK_PLUGINS"]
    return env
