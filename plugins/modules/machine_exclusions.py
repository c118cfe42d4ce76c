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
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.attributes
  - mlops.vast.attributes.resource
attributes:
  platform:
    platforms: posix
    details: Runs where the exclusion file is, the controller.
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

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.local_state import MachineExclusions


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
    exclusions = MachineExclusions(module.params["path"])
    try:
        before, after = exclusions.update(module.params["machine_id"], present=module.params["state"] == "present",
                                          reason=module.params["reason"] or "", write=not module.check_mode)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot use the exclusion list {exclusions.path}: {exc}")
    module.exit_json(
        changed=after != before, path=exclusions.path, machines=after, machine_ids=sorted(int(k) for k in after),
        diff={"before": {"machine_ids": sorted(int(k) for k in before)},
              "after": {"machine_ids": sorted(int(k) for k in after)}},
    )


if __name__ == "__main__":
    main()
