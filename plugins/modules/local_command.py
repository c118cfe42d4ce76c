#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: mlops.vast.local_command is an action plugin (plugins/action/local_command.py) that runs on
# the controller, inside Ansible's own worker process.

from __future__ import annotations

DOCUMENTATION = r"""
module: local_command
short_description: Run a program on the controller (an rsync to or from a host) without starting a module
description:
  - Runs a program with its arguments on the controller, straight from Ansible's worker process, and returns what
    C(ansible.builtin.command) returns (O(argv) is never given to a shell).
  - C(ansible.builtin.command) on localhost starts a Python interpreter for its module only to start the program
    (about 0.3 CPU-seconds each time). The roles copy code and checkpoints with rsync on the controller four times
    a run of C(train.yml), and a sweep does it for every trial.
  - Always acts on the controller, whatever host the task runs for; C(delegate_to) is not needed. The program
    gets the controller's environment plus the task's C(environment), and runs in the playbook's directory, as a
    module run on localhost would.
  - Like C(ansible.builtin.command), it always reports C(changed=true); use C(changed_when) and C(failed_when) to
    judge the program's output.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.action
attributes:
  check_mode:
    support: none
    details: As C(ansible.builtin.command) without C(creates) or C(removes), the task is skipped in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: Runs on the controller only.
options:
  argv:
    description:
      - The program and its arguments, one item each; no shell parses them, so nothing needs quoting.
    type: list
    elements: str
    required: true
  chdir:
    description:
      - The directory to run the program in; a relative one starts from the playbook's directory, which is also the
        default (where C(ansible.builtin.command) on localhost runs).
    type: path
  expand_argument_vars:
    description:
      - Expand C(~) and C($VARIABLES) (from the controller's environment) in every item of O(argv), as
        C(ansible.builtin.command) does by default, so a path given as C(~/results) means the home directory.
    type: bool
    default: true
seealso:
  - module: ansible.builtin.command
"""

EXAMPLES = r"""
- name: Copy the code to the host
  mlops.vast.local_command:
    argv: "{{ ['rsync', '-a', '--delete', '-e', hostvars[inventory_hostname] | mlops.vast.rsync_ssh, 'src/',
      hostvars[inventory_hostname] | mlops.vast.rsync_remote('/workspace/code/')] }}"
  register: copied
  changed_when: copied.stdout_lines | length > 0

- name: Tolerate files that vanished while rsync read them
  mlops.vast.local_command:
    argv: [rsync, -a, /data/in/, /data/out/]
  register: pulled
  failed_when: pulled.rc not in [0, 24]
"""

RETURN = r"""
cmd:
  description: The program and its arguments as run.
  returned: always
  type: list
  elements: str
  sample: [rsync, -a, /data/in/, /data/out/]
rc:
  description:
    - The program's exit code; when it could not be started, the error number, as C(ansible.builtin.command)
      returns it (2 for a missing program).
  returned: always
  type: int
  sample: 0
stdout:
  description: What the program printed, without the final line break.
  returned: when the program ran
  type: str
  sample: ">f+++++++++ train.py"
stdout_lines:
  description: O(argv)'s output, split into lines.
  returned: when the program ran
  type: list
  elements: str
  sample: [">f+++++++++ train.py"]
stderr:
  description: What the program printed on its error stream, without the final line break.
  returned: when the program ran
  type: str
  sample: ""
stderr_lines:
  description: The error stream, split into lines.
  returned: when the program ran
  type: list
  elements: str
  sample: []
start:
  description: When the program started.
  returned: when the program ran
  type: str
  sample: "2026-12-04 20:01:02.123456"
end:
  description: When it ended.
  returned: when the program ran
  type: str
  sample: "2026-12-04 20:01:02.456789"
delta:
  description: How long it ran.
  returned: when the program ran
  type: str
  sample: "0:00:00.333333"
"""
