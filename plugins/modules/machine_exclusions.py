#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: machine_exclusions
short_description: Keep the controller's list of Vast machines never to rent again
description:
  - A small JSON file on the controller records machines that failed a check (slow link, wrong GPU,
    small disk, broken driver) with the reason and when, so later runs skip them
    (pass RV(machine_ids) to the O(mlops.vast.vast_instance#module:exclude_machines) option).
  - With no O(machine_id) the module only reads the list.
  - Writes are locked, so parallel runs (sweeps) can share the file.
version_added: 0.1.0
author:
  - mlops.vast developers (@mlops-vast)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: posix
options:
  path:
    description:
      - The exclusion file.
      - Defaults to E(MLOPS_VAST_EXCLUSIONS), else C(~/.local/state/mlops-vast/excluded_machines.json).
    type: path
  machine_id:
    description: The machine to add or remove.
    type: int
  reason:
    description: Why the machine is excluded (shown in later runs' results).
    type: str
  state:
    description: Whether O(machine_id) is on the list.
    type: str
    choices: [present, absent]
    default: present
seealso:
  - module: mlops.vast.vast_instance
  - module: mlops.vast.bandwidth_probe
  - module: mlops.vast.gpu_check
"""

EXAMPLES = r"""
- name: Read the list
  mlops.vast.machine_exclusions:
  register: excluded

- name: Rent, skipping every machine that failed before
  mlops.vast.vast_instance:
    label: exp-1
    query: gpu_ram >= 24 num_gpus=1
    image: pytorch/pytorch:latest
    exclude_machines: "{{ excluded.machine_ids }}"

- name: Remember a machine whose link was too slow
  mlops.vast.machine_exclusions:
    machine_id: 64691
    reason: "bandwidth 0.16 MB/s < 5 MB/s from huggingface.co"
"""

RETURN = r"""
machine_ids:
  description: Every excluded machine id, after the change.
  returned: always
  type: list
  elements: int
machines:
  description: The entries, keyed by machine id (as a string), each with C(reason) and C(excluded_at).
  returned: always
  type: dict
path:
  description: The file used.
  returned: always
  type: str
"""

import fcntl
import json
import os
import tempfile
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def default_path() -> str:
    if os.environ.get("MLOPS_VAST_EXCLUSIONS"):
        return os.environ["MLOPS_VAST_EXCLUSIONS"]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "mlops-vast", "excluded_machines.json")


def read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}
    machines = data.get("machines") if isinstance(data, dict) else None
    if not isinstance(machines, dict):
        raise ValueError(f"{path} is not an exclusion list (expected {{\"machines\": {{...}}}})")
    return machines


def write(path: str, machines: dict[str, Any]) -> None:
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".excluded-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"machines": machines}, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, path)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path"},
            "machine_id": {"type": "int"},
            "reason": {"type": "str"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
        },
        supports_check_mode=True,
    )
    path = os.path.expanduser(module.params["path"] or default_path())
    machine_id = module.params["machine_id"]
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            machines = read(path)
            before = dict(machines)
            key = str(machine_id) if machine_id is not None else None
            if key is not None and module.params["state"] == "present" and key not in machines:
                machines[key] = {"reason": module.params["reason"] or "", "excluded_at": time.time()}
            elif key is not None and module.params["state"] == "absent":
                machines.pop(key, None)
            changed = machines != before
            if changed and not module.check_mode:
                write(path, machines)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot use the exclusion list {path}: {exc}")
    module.exit_json(
        changed=changed, path=path, machines=machines, machine_ids=sorted(int(k) for k in machines),
        diff={"before": {"machine_ids": sorted(int(k) for k in before)},
              "after": {"machine_ids": sorted(int(k) for k in machines)}},
    )


if __name__ == "__main__":
    main()
