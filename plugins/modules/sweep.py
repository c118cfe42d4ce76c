#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: mlops.vast.sweep is an action plugin (plugins/action/sweep.py) that runs on the controller.

from __future__ import annotations

DOCUMENTATION = r"""
module: sweep
short_description: Run a hyperparameter sweep, each trial a whole train.yml, a few at once, within one budget
description:
  - Expands the trials (an explicit list, a grid, random samples) and runs each one as its own
    C(ansible-playbook train.yml) process, with the whole lifecycle (rent until good, setup, smoke test, train,
    watch, recovery, teardown), at most O(max_parallel) at once; the others queue.
  - One process per trial isolates failures; a trial that crashes, diverges, gets a bad host or is preempted
    never stops the others.
  - Each trial's parameters reach its command as C(--name value) (C(true) as a bare flag, C(false) left out),
    unless the command names them (C({{ trial.name }}) in C(run_command), which playbooks/sweep.yml turns into
    placeholders this action fills in), or another run variable or O(trial_vars) does (C(run_disk_gb) set to
    C({{ trial.disk }})), where they are placed instead.
  - O(budget_usd) is shared, and is the whole sweep's across its re-runs (what earlier runs spent on tries that
    run again counts toward it). Each trial runs with a spending cap (C(run_max_total_usd)) that its own watch
    enforces; a trial starts only while the finished trials' cost plus the running trials' caps plus its own cap
    fit in the budget (without a cap of the run's own, what is left is shared among the queued trials, or, when that
    share would be below the floor, among as many as can start with the floor each, the rest waiting), never
    with a cap below what its watch holds in reserve at C(run_max_dph) (the burn until its next look plus
    C(run_tail_s)), and never below $0.0005, the least a trial can cost (a minute of the cheapest GPU). If the
    instances' spend still reaches the budget, the running trials are stopped and their instances destroyed, their
    newest sealed checkpoints brought home first.
  - Writes C(sweep-state.json) (every trial's state, live), each trial's folder (its train.yml results,
    C(ansible.log), C(trial.json)), and at the end C(trials.json) and C(trials.csv), one row per trial.
  - Creating C(CANCEL) in the results folder, or SIGINT/SIGTERM/SIGHUP, stops every trial and destroys its
    instance (C(playbooks/teardown.yml) through the inventory, so the newest sealed checkpoint and the run's files
    come home first, as the guard does for an interrupted C(train.yml)); the rows say C(cancelled).
  - A re-run with the same name skips the trials that completed with the same parameters and the same training
    (C(run_command), C(run_image), C(run_code_src), C(run_git_repo), C(run_env), C(run_index_url),
    C(run_wheelhouse), C(run_resume_arg)); a completed trial whose training changed runs again.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.action
attributes:
  check_mode:
    support: full
    details: Returns the trials and their commands (O(plan) does the same outside check mode); nothing is run or rented.
  diff_mode:
    support: none
  platform:
    platforms: all
    details: Runs on the controller only.
options:
  name:
    description:
      - The sweep's name. A trial is labelled C(<name>-<id>) and kept in C(<results_dir>/<id>); its id (C(t) and
        6 hex digits) comes from its parameters, so it stays the same when trials are added or removed.
      - It must not be empty, contain C(/) or start with C(.) (it names C(results/<name>)).
    type: str
    required: true
  base:
    description:
      - The base run, names without C(run_) (as M(mlops.vast.validate_playbook_vars) returns it for
        C(train.meta.yml)). Every trial gets these, with its own name, results folder, command and cap.
      - Without it, the base run is the play's C(run_*) variables (templated with C(trial) bound to placeholders,
        as playbooks/sweep.yml binds it), checked against C(train.meta.yml) in O(playbook_dir) with each trial's
        values filled in, before anything is run; a variable that is exactly one placeholder (C(run_disk_gb) set to
        C({{ trial.disk }})) gets the parameter's own value, so a number stays a number.
      - C({{ trial.items }}) for a parameter named like a method of a mapping (C(items), C(keys), C(values),
        C(get), ...) is refused, naming the variable; write C({{ trial['items'] }}).
    type: dict
  plan:
    description:
      - Only check the sweep and plan its trials (their ids, labels, parameters and commands); nothing is written,
        run or rented. playbooks/sweep.yml does this before it reaps orphans or makes the SSH key.
    type: bool
    default: false
  grid:
    description: "Every combination of these values, C({name: [values]})."
    type: dict
  random:
    description:
      - "C({count, seed, params}); each param is C({min, max, log, int}) or C({choices: [...]})."
      - The same seed always gives the same trials, whatever the order of its C(params); a parameter added
        leaves the others' values as they were (each has a random stream of its own).
    type: dict
  trials:
    description: "Explicit trials, C([{name: value}, ...])."
    type: list
    elements: raw
  max_parallel:
    description: Trials (instances) at once; the rest queue.
    type: int
    default: 2
  budget_usd:
    description: The whole sweep's budget in USD; 0 for none (each trial keeps its own C(run_max_total_usd)).
    type: float
    default: 0.0
  results_dir:
    description: Where the sweep's tables and trial folders go. Default C(results/<name>).
    type: path
  playbook_dir:
    description: Where C(train.yml) and C(teardown.yml) are. Default the playbook's directory.
    type: path
  trial_vars:
    description: Other variables for every trial's playbook (role variables such as C(provision_probe_max_seconds)).
    type: dict
    default: {}
  rerun:
    description: C(skip_completed) reuses trials that completed with the same parameters and training; C(all) runs
      every one.
    type: str
    default: skip_completed
    choices: [skip_completed, all]
  trial_timeout_s:
    description: A trial running longer is stopped and torn down. 0 derives it from the run's limits.
    type: int
    default: 0
  poll_s:
    description: Seconds between looks at the trials.
    type: float
    default: 1.0
  trial_strategy:
    description:
      - The strategy plugin each trial's C(ansible-playbook) runs with (C(ANSIBLE_STRATEGY) in its environment).
      - V(auto) is the collection's P(mlops.vast.linear#strategy), which runs a trial's instant controller tasks and
        its skipped tasks without a worker process, so that trials starting together compete less for the
        controller's cores; each trial's log then holds ansible-core 2.19's deprecation warning for strategy
        plugins from outside ansible.builtin. It is not used when you chose a strategy yourself (C(ANSIBLE_STRATEGY)
        or C(strategy) in C(ansible.cfg)), nor on an ansible-core other than 2.19; the trials then run with yours,
        or with ansible-core's default.
      - An empty string leaves it to the environment and C(ansible.cfg), as for a plain C(ansible-playbook); any
        other value is the strategy to use.
    type: str
    default: auto
seealso:
  - module: mlops.vast.validate_playbook_vars
"""

EXAMPLES = r"""
- name: Check the base run (the play's run_* variables) with each trial's values, and plan the trials
  mlops.vast.sweep:
    name: lr-sweep
    grid:
      learning_rate: [0.1, 0.05, 0.01]
      seed: [1, 2]
    plan: true

- name: Six trials, two at once, $0.50 in all
  mlops.vast.sweep:
    name: lr-sweep
    grid:
      learning_rate: [0.1, 0.05, 0.01]
      seed: [1, 2]
    max_parallel: 2
    budget_usd: 0.5
  register: swept
"""

RETURN = r"""
rows:
  description: One row per trial, as in C(trials.json).
  returned: success
  type: list
  elements: dict
  sample:
    - id: t3f9a0c
      label: lr-sweep-t3f9a0c
      params: {learning_rate: 0.1, seed: 1}
      outcome: completed
      final_loss: 0.012
      best_loss: 0.011
      steps: 400
      cost_usd: 0.0021
      attempts: 1
      hosts: [12]
      duration_s: 74.2
      message: ""
      results_dir: /srv/results/lr-sweep/t3f9a0c
trials:
  description: In check mode or with O(plan), the trials with their commands.
  returned: check mode, or with O(plan)
  type: list
  elements: dict
completed:
  description: Trials that completed (reused ones included).
  returned: success
  type: int
not_completed:
  description: Trials that did not complete (failed, cancelled, skipped for the budget).
  returned: success
  type: int
reused:
  description: Trials reused from an earlier run of the same sweep.
  returned: success
  type: int
retrained:
  description: Trials that had completed in an earlier run and ran again because what they train changed; for each
    trial id, the variables that changed.
  returned: success
  type: dict
  sample: {"t3f9a1c": ["run_command"]}
cancelled:
  description: Why the sweep was stopped early, or null.
  returned: success
  type: str
states:
  description: How many trials ended in each state (done, skipped, cancelled).
  returned: success
  type: dict
spent_usd:
  description:
    - What the sweep's instances cost, as their watches read it, earlier runs' tries that ran again included
      (RV(spent_before_usd)); the rows' C(cost_usd) are this run's.
  returned: success
  type: float
spent_before_usd:
  description:
    - What earlier runs of the sweep spent on tries no row of this run counts (the trials that run again, their
      earlier folders set aside as C(<id>.before-<time>)). It counts toward O(budget_usd), which is the whole
      sweep's, re-runs included.
  returned: success
  type: float
lines:
  description:
    - One line per trial for people (id, outcome, parameters, loss, cost, hosts, message).
    - In check mode or with O(plan), its id, label, parameters and command.
  returned: always
  type: list
  elements: str
labels:
  description: Every trial's label (instance label).
  returned: success
  type: list
  elements: str
started_at:
  description:
    - When each trial that ran in this run started (epoch seconds), by label; a trial reused from an earlier run is
      not in it. What the account's charges of a trial count from.
  returned: success
  type: dict
results_dir:
  description: Where C(trials.csv), C(trials.json), C(sweep-state.json) and the trial folders are.
  returned: success
  type: str
"""
