#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: mlops.vast.local_file is an action plugin (plugins/action/local_file.py) that runs on the
# controller, inside Ansible's own worker process.

from __future__ import annotations

DOCUMENTATION = r"""
module: local_file
short_description: Write a record, make a directory or remove a path on the controller, without starting a module
description:
  - The run's own files on the controller (its results folder, records such as C(spend.json) and C(teardown.json),
    the local checkpoint directory) written, made or removed by the action plugin itself, in Ansible's worker
    process.
  - C(ansible.builtin.copy) with O(content) and C(ansible.builtin.file) do the same through one or two module
    runs, each a new Python interpreter on the controller (about 0.3 CPU-seconds each); a run of C(train.yml)
    made a dozen of them, and a sweep makes them for every trial.
  - A file is written whole or not at all (a temporary file in the same directory, then renamed over the old
    one), so a record is never seen half written. Unchanged content and mode report C(changed=false).
  - Always acts on the controller, whatever host the task runs for; C(delegate_to) is not needed.
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.action
attributes:
  check_mode:
    support: full
    details: Says what it would write, make or remove, and changes nothing.
  diff_mode:
    support: full
    details: A file's old and new text; a directory's or a removed path's state.
  platform:
    platforms: posix
    details: Runs on the controller only.
options:
  path:
    description:
      - The file or directory on the controller; a relative path starts from the playbook's directory, as it
        would for a module run on localhost. For O(state=file) its directory must exist (in check mode a missing
        one reads as made by an earlier task).
      - A link is followed (a results folder may be a link to a bigger disk); O(state=absent) removes the link
        itself, never what it points to.
    type: path
    required: true
    aliases: [dest]
  state:
    description:
      - V(file) writes O(content); V(directory) makes the directory and its missing parents; V(absent) removes
        the file, or the directory with everything in it.
    type: str
    choices: [file, directory, absent]
    default: file
  content:
    description:
      - The file's text (O(state=file)). A dict or a list is written as JSON, indented as C(to_nice_json) does.
    type: raw
  mode:
    description:
      - The permissions, as an octal string (V("0644")), or a number as C(ansible.builtin.file) takes one (an
        unquoted V(0644) in YAML is the number 420, the same bits). For a file the default is V("0644"); for a
        directory, V("0755"). Only the directory named by O(path) gets it, not the parents made on the way.
    type: raw
seealso:
  - module: ansible.builtin.copy
  - module: ansible.builtin.file
"""

EXAMPLES = r"""
- name: Keep the run's record
  mlops.vast.local_file:
    path: "{{ run.results_dir }}/recovery.json"
    content: "{{ {'attempts': 2, 'recoveries': []} }}"

- name: Make the results directory
  mlops.vast.local_file:
    path: results/exp-1
    state: directory

- name: Drop an old local checkpoint
  mlops.vast.local_file:
    path: results/exp-1/checkpoints/checkpoint-100
    state: absent
"""

RETURN = r"""
path:
  description: The path acted on (a relative one joined to the playbook's directory).
  returned: always
  type: str
  sample: results/exp-1/recovery.json
state:
  description: What the path is now (in check mode, what it would be).
  returned: always
  type: str
  sample: file
checksum:
  description: SHA-1 of the file's content.
  returned: O(state=file)
  type: str
  sample: 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed
size:
  description: The file's size in bytes.
  returned: O(state=file)
  type: int
  sample: 184
"""
