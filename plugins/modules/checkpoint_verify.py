#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: checkpoint_verify
short_description: Check a checkpoint directory against its seal (every file's size and sha256)
version_added: 0.2.0
description:
  - Reads the manifest a sealed checkpoint carries (C(.mlops-seal.json), written last by the run's checkpoint
    agent) or takes O(manifest), and checks that every file it lists exists with that size and sha256.
  - Used on the controller before a checkpoint is counted as home, and before the instance that holds it is
    destroyed. Reads only; never changes anything.
extends_documentation_fragment:
  - mlops.vast.attributes.in_process
  - mlops.vast.attributes
  - mlops.vast.attributes.read_only
attributes:
  platform:
    platforms: posix
    details: Runs on the controller, inside Ansible's worker, where the pulled checkpoints are.
options:
  path:
    description: The checkpoint directory.
    type: path
    required: true
  manifest:
    description:
      - The manifest to check against (for instance the host's, to compare a pulled copy with the original).
        Default the one inside O(path).
    type: dict
"""

EXAMPLES = r"""
- name: Verify the pulled copy against the host's manifest
  mlops.vast.checkpoint_verify:
    path: results/exp-42/checkpoints/checkpoint-500
  register: verified

- name: Refuse to go on with a broken copy
  ansible.builtin.assert:
    that: verified.ok
    fail_msg: "{{ verified.problems }}"
"""

RETURN = r"""
ok:
  description: Whether every listed file is present with the manifest's size and sha256.
  returned: always
  type: bool
problems:
  description: What is wrong (missing file, size or sha256 mismatch, no manifest), at most 20.
  returned: always
  type: list
  elements: str
step:
  description: The step the manifest names.
  returned: when there is a manifest
  type: int
attempt:
  description: The attempt of the run that sealed it.
  returned: when there is a manifest
  type: int
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.mlops.vast.plugins.module_utils.checkpoint_manifest import MANIFEST_NAME, verify_dir


def main() -> None:
    module = AnsibleModule(
        argument_spec={"path": {"type": "path", "required": True}, "manifest": {"type": "dict"}},
        supports_check_mode=True,
    )
    path, manifest = module.params["path"], module.params["manifest"]
    if manifest is None:
        try:
            with open(os.path.join(path, MANIFEST_NAME)) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as exc:
            module.exit_json(changed=False, ok=False, problems=[f"{path} is not sealed: {exc}"])
    if not os.path.isdir(path):
        module.exit_json(changed=False, ok=False, problems=[f"{path} is not a directory"])
    try:
        problems = verify_dir(path, manifest)
    except (ValueError, TypeError, KeyError) as exc:
        problems = [f"the manifest is malformed: {exc}"]
    module.exit_json(changed=False, ok=not problems, problems=problems[:20],
                     step=manifest.get("step") if isinstance(manifest, dict) else None,
                     attempt=manifest.get("attempt") if isinstance(manifest, dict) else None)


if __name__ == "__main__":
    main()
