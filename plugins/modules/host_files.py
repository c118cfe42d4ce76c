#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: mlops.vast.host_files is an action plugin (plugins/action/host_files.py); on the host it runs
# only POSIX shell commands (mkdir, chmod, stat, sha1sum, mv), never a module.

from __future__ import annotations

DOCUMENTATION = r"""
module: host_files
short_description: Put directories and files on the rented host in one task, without a module run there
description:
  - Makes O(directories) and puts O(files) (text or data given in the task, or files from the controller) on the
    host the task runs for, in one task. A run of it is one shell command that reads what is there (and makes
    the directories), one transfer per file whose content differs, and one command that renames them into
    place; files that are already right are not sent.
  - C(ansible.builtin.file), C(copy) and C(template) do the same with a module run on the host per directory and
    two per file; on a small controller that drives many hosts, and on hosts whose Python starts slowly, those
    runs are most of the set-up time.
  - Each file is sent to a temporary name beside its destination and renamed over it, so a process on the host
    sees the old file or the new one, never a part. Unchanged content and mode report C(changed=false).
  - Not for secrets (the content passes through a temporary file on the controller); use
    C(ansible.builtin.copy) with C(no_log) for those. C(become) is not applied; the files belong to the login user.
  - A destination that exists and is not a regular file (a directory, say) is an error, not a place to put the
    file in. Modes are compared on what links point to; special bits a directory gets from its parent (setgid)
    are left alone unless O(directories[].mode) asks for them.
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.action
attributes:
  check_mode:
    support: full
    details: Reads what is on the host and says what would change; makes, sends and renames nothing.
  diff_mode:
    support: partial
    details: Each changed path's checksum and mode, before and after (not the text).
  platform:
    platforms: posix
    details: The host needs a POSIX shell with C(stat -c), C(sha1sum) and C(mv) (GNU coreutils or BusyBox).
options:
  directories:
    description: Directories to make, with their missing parents, before the files are put.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: A path on the host (a relative one starts from the login user's home).
        type: str
        required: true
      mode:
        description: Its permissions, as an octal string (or a number, as C(ansible.builtin.file) takes one).
        type: raw
        default: "0755"
  files:
    description: Files to put; each one's directory must exist or be in O(directories).
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: A path on the host (a relative one starts from the login user's home).
        type: str
        required: true
      content:
        description:
          - The file's text (a rendered template, for instance C(lookup('ansible.builtin.template', 'run.sh.j2'))). A
            dict or a list is written as JSON, indented as C(to_nice_json) does.
          - Exactly one of O(files[].content) and O(files[].src).
        type: raw
      src:
        description:
          - A file on the controller, found as C(ansible.builtin.copy) finds its C(src) (a role's C(files/), the
            playbook's directory, or an absolute path), sent as it is.
        type: path
      mode:
        description: Its permissions, as an octal string (or a number, as C(ansible.builtin.file) takes one).
        type: raw
        default: "0644"
seealso:
  - module: ansible.builtin.copy
  - module: ansible.builtin.file
  - module: ansible.builtin.template
"""

EXAMPLES = r"""
- name: The run's directories, its agent and its wrapper, in one task
  mlops.vast.host_files:
    directories:
      - path: /root/run/output
      - path: /root/run/.mlops
        mode: "0700"
    files:
      - src: checkpoint_agent.py
        dest: /root/run/.mlops/checkpoint_agent.py
      - content: "{{ lookup('ansible.builtin.template', 'run.sh.j2') }}"
        dest: /root/run/run.sh
        mode: "0755"
"""

RETURN = r"""
changed_paths:
  description: The directories made or changed and the files sent or re-moded (in check mode, those that would be).
  returned: success
  type: list
  elements: str
  sample: ["/root/run/output", "/root/run/run.sh"]
"""
