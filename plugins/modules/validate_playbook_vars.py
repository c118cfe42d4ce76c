#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: mlops.vast.validate_playbook_vars is an action plugin
# (plugins/action/validate_playbook_vars.py) that runs on the controller.

from __future__ import annotations

DOCUMENTATION = r"""
module: validate_playbook_vars
short_description: Check a playbook's variables against its argument spec file, before anything happens
description:
  - Holds the play's variables against the C(argument_specs) of a playbook's spec file (C(<playbook>.meta.yml),
    the form C(ansible-lint) knows) and fails once, listing every problem, or sets one fact with the values.
  - Types, choices and required variables are checked by C(ansible.builtin.validate_argument_spec), which
    this action extends.
  - Every variable whose name starts with O(prefix) must be an option of the spec; a typo fails, naming the
    closest option, instead of being ignored.
  - Numbers are held against the option's C(minimum), C(maximum) and C(exclusive_minimum), keys next to
    C(type) in the spec.
  - On success the variables, converted to their types and with the C(default) of every option not given,
    are returned in RV(values) and set as the fact O(fact), names without O(prefix), so that the defaults are
    written once, in the spec.
  - An option marked C(no_log) in the spec (a dict of tokens, say), or one given a value for a C(no_log) key of
    its own (a source's headers), is never shown - not in RV(values), not in a message - and is null in the fact
    O(fact), since a fact cache (jsonfile, AWX's, ansible-runner's in its artifacts) keeps a module's facts on
    disk. Its value is returned as RV(no_log_values), with the task's output censored as with C(no_log);
    register it and add it with a C(set_fact), which no fact cache keeps (train.yml does).
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.action
attributes:
  check_mode:
    support: full
    details: Checks and sets the fact in check mode too.
  diff_mode:
    support: none
  platform:
    platforms: all
    details: Runs on the controller only.
options:
  spec_file:
    description:
      - The argument spec file, relative to the playbook's directory (C(train.meta.yml)) or absolute.
    type: path
    required: true
  spec_name:
    description: Which entry of C(argument_specs) to use.
    type: str
    default: main
  prefix:
    description:
      - The variables of the contract start with this (C(run_)); any such variable the spec does not know
        is an error. Empty checks only the spec's own names.
    type: str
    default: ""
  fact:
    description: Set the values as this fact (C(run)), with the names without O(prefix).
    type: str
seealso:
  - module: ansible.builtin.validate_argument_spec
"""

EXAMPLES = r"""
- name: Check the run's variables (playbooks/train.meta.yml) before anything is rented
  mlops.vast.validate_playbook_vars:
    spec_file: train.meta.yml
    prefix: run_
    fact: run

- name: Use them, defaults filled in
  ansible.builtin.debug:
    msg: "{{ run.name }} rents {{ run.disk_gb }} GB"
"""

RETURN = r"""
values:
  description: Every option of the spec (names without O(prefix)) with its value or its default.
  returned: success
  type: dict
  sample: {"name": "exp-1", "disk_gb": 20.0, "max_dph": 0.0}
no_log_values:
  description:
    - The values that hold secrets (names without O(prefix)), which the fact O(fact) has as null. The task's
      output is censored when this is returned.
  returned: when O(fact) is set and such a value was given
  type: dict
argument_errors:
  description: Every problem, one sentence each, naming the variable.
  returned: failure
  type: list
  elements: str
  sample:
    - run_disk_gb must be at least 8, got -5
    - run_dsik_gb is not a variable of train.meta.yml; did you mean run_disk_gb?
"""
