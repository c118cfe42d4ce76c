#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: mlops.vast.host_command is an action plugin (plugins/action/host_command.py) that runs the
# command over Ansible's connection to the host, without a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: host_command
short_description: Run a command or a shell script on the host without starting Python there
description:
  - Runs a program with its arguments (O(argv)), or a shell script (O(cmd), run by O(executable)), on the host over
    Ansible's connection (the same SSH options, persistent connection and retries), and returns what
    C(ansible.builtin.command) returns.
  - C(ansible.builtin.command) and C(ansible.builtin.shell) send a module and start Python on the host to run one
    program, about 0.1-0.2 seconds a task on a rented host. C(ansible.builtin.raw) starts no Python either, but
    runs under a terminal, which merges the output streams into one and ends every line with CR LF; this action
    keeps them apart and unchanged.
  - The task's C(environment) keyword applies to the command, as it does to a module. Unlike
    C(ansible.builtin.command), O(argv) items are never expanded (no C(~), no C($VARIABLES)); use O(cmd) for that.
  - The command's standard input is C(/dev/null). An exit code of 255 reads as SSH's own failure (the host is
    reported unreachable), as for every command Ansible runs over SSH.
  - C(become) does not apply (the collection's hosts are used as root).
  - Like C(ansible.builtin.command), it always reports C(changed=true); use C(changed_when) and C(failed_when) to
    judge the output.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.action
attributes:
  check_mode:
    support: none
    details: As C(ansible.builtin.command), the task is skipped in check mode (set C(check_mode=false) on a task
      that only reads).
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: The host needs a POSIX shell (and O(executable), when it is another shell).
options:
  argv:
    description:
      - The program and its arguments, one item each; they are quoted for the host's shell, so nothing needs quoting.
      - Exactly one of O(argv) and O(cmd).
    type: list
    elements: str
  cmd:
    description:
      - A shell script, run as C(EXECUTABLE -c SCRIPT). Exactly one of O(argv) and O(cmd).
    type: str
  executable:
    description: The shell that runs O(cmd) (V(/bin/bash) for C(set -o pipefail)); not used with O(argv).
    type: str
    default: /bin/sh
  chdir:
    description: The directory on the host to run in. Default the login directory.
    type: str
seealso:
  - module: ansible.builtin.command
  - module: ansible.builtin.shell
  - module: ansible.builtin.raw
"""

EXAMPLES = r"""
- name: Launch the run in tmux, once
  mlops.vast.host_command:
    cmd: tmux has-session -t train 2>/dev/null || tmux new-session -d -s train 'bash /workspace/run/run.sh'
  changed_when: false

- name: Ask the framework whether it sees CUDA
  mlops.vast.host_command:
    argv: [/workspace/code/.venv/bin/python, -c, "import torch; print(torch.cuda.is_available())"]
  register: cuda

- name: Read the run's checkpoints, failing on any broken pipe
  mlops.vast.host_command:
    cmd: set -o pipefail; ls -1d checkpoint-* | sort -V
    executable: /bin/bash
    chdir: /workspace/run/output
  environment:
    LC_ALL: C
  register: checkpoints
  failed_when: false
"""

RETURN = r"""
cmd:
  description: The program and its arguments (O(argv)), or the script (O(cmd)).
  returned: always
  type: raw
  sample: [tmux, has-session, -t, train]
rc:
  description: The exit code of the program or the script.
  returned: always
  type: int
  sample: 0
stdout:
  description: What it printed, without the final line break.
  returned: when it ran
  type: str
  sample: launched
stdout_lines:
  description: The output, split into lines.
  returned: when it ran
  type: list
  elements: str
  sample: [launched]
stderr:
  description: What it printed on its error stream, without the final line break.
  returned: when it ran
  type: str
  sample: ""
stderr_lines:
  description: The error stream, split into lines.
  returned: when it ran
  type: list
  elements: str
  sample: []
start:
  description: When the command was sent.
  returned: when it ran
  type: str
  sample: "2026-12-04 20:01:02.123456"
end:
  description: When its output was back.
  returned: when it ran
  type: str
  sample: "2026-12-04 20:01:02.201234"
delta:
  description: How long the round trip took.
  returned: when it ran
  type: str
  sample: "0:00:00.077778"
"""
