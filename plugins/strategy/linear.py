# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: linear
short_description: Ansible's linear strategy, with the controller's own instant tasks run without a worker process
description:
  - Runs a play exactly as C(ansible.builtin.linear) does (lockstep per batch of hosts), except for tasks whose
    action only computes or records something on the controller and returns at once (C(set_fact), C(assert),
    C(debug), C(fail), C(validate_argument_spec), C(add_host), C(group_by), C(include_tasks), C(include_role), and
    the collection's C(mlops.vast.local_file), C(mlops.vast.validate_playbook_vars),
    C(mlops.vast.machine_exclusions) and C(mlops.vast.ssh_keypair)), and for skipped tasks.
  - Ansible forks a worker process for every task and host, conditionals and skips included; for these tasks the
    fork, the worker's start and its exit are most of the cost (about 30 ms each on a 2-core controller, against a
    few ms for the work). This strategy runs Ansible's own task executor for them in the controller process, on a
    copy of the task, and hands the result to the same result queue a worker would, so callbacks, registered
    variables, facts, C(ignore_errors), C(failed_when), loops and C(no_log) behave as with a worker.
  - A task of any other action with a C(when) (and no loop, C(until), C(async), C(delegate_to) or C(throttle)) is
    taken as far as its conditional in the controller process, by Ansible's own executor. When the conditional is
    false, that is the task's result (skipped), as a worker would have reported it. When it holds, the task goes
    to a worker, which starts over. So the C(when) and what the executor templates before it (the connection and
    become settings) are templated twice, and a lookup there runs twice, the first time in the controller
    process.
  - Everything else (modules, commands over SSH, the collection's API modules, the watch) runs in workers as
    before. A worker freezes the objects it inherits from the controller as it starts (C(gc.freeze) in the
    forked child), so its garbage collector does not walk them, which would copy the controller's memory page by
    page.
  - Ansible compiles a template or conditional anew every time it uses it (about 650 times in one C(train.yml)'s
    controller process, and again in every worker). Once this strategy has started, its ansible-playbook process
    (the plays of other strategies in it included) compiles a text once and keeps the code, which its workers
    inherit; it is reused only while the filters and tests it calls are still the same kind of function (a role's
    own C(filter_plugins) may shadow a name). The code of the collection's own C(playbooks/) and C(roles/) is also
    kept on disk, so the next run, or a sweep's next trial, loads it instead of compiling it, in
    C(mlops-vast/templates/<python, Jinja and ansible-core versions>) under E(XDG_CACHE_HOME) (default
    C(~/.cache)); E(MLOPS_VAST_TEMPLATE_CACHE) names another folder, and an empty value keeps the code in memory
    only. No other text is written there (not extra vars, not C(examples/), not C(group_vars) or C(host_vars), not
    a playbook outside those folders; one saved inside them counts as the collection's). The folder is used only
    when it is this user's, nobody else may write to it or to a folder above it (unless sticky, as C(/tmp), or
    only this user's own group), and it is not a link; missing folders are made 0700, and never under a folder
    that fails that test; a file in it is loaded only when it is this user's, not writable by others and
    matches the digest it carries.
  - An accelerator like mitogen's strategies. C(playbooks/sweep.yml) runs each trial with it (the variable
    C(sweep_trial_strategy), option O(mlops.vast.sweep#module:trial_strategy)), where many trials starting
    together share the controller's cores. Elsewhere select it with C(ANSIBLE_STRATEGY=mlops.vast.linear), C(strategy =
    mlops.vast.linear) in C(ansible.cfg), or C(strategy) in a play; without it everything runs as before.
    C(bench/train_overhead.py --strategy mlops.vast.linear) and C(bench/fleet.py --strategy
    ansible.builtin.linear) measure the difference.
version_added: 0.2.0
author:
  - mlops.vast developers (@mlops-vast)
notes:
  - ansible-core 2.19 deprecates strategy plugins from outside ansible.builtin (mitogen's included) and prints a
    deprecation warning for them, which is why the collection's own C(ansible.cfg) does not select it (a sweep's
    trials print it in their own logs).
  - Written against ansible-core 2.19's strategy and worker internals; on another ansible-core it warns and runs
    every task in a worker, as C(ansible.builtin.linear) does.
  - Ansible's task debugger undoes a C(run_once) task's results on C(redo) only under a strategy named
    C(linear); under this one, redo such a task with C(ansible.builtin.linear).
"""

import functools
import gc
import os

from ansible.plugins.strategy.linear import StrategyModule as LinearStrategy
from ansible.release import __version__ as ANSIBLE_CORE_VERSION
from ansible.utils.display import Display
from ansible_collections.mlops.vast.plugins.plugin_utils import template_cache

display = Display()

# It reuses ansible-core 2.19's private worker internals (TaskExecutor's signature, the result queue's wire format):
# on any other version every task goes to a worker, as with ansible.builtin.linear.
try:
    from ansible._internal import _task
    from ansible.executor.task_executor import TaskExecutor
    from ansible.executor.task_result import _RawTaskResult
    from ansible.plugins import loader as plugin_loader

    SUPPORTED = ANSIBLE_CORE_VERSION.startswith("2.19.")
except ImportError:  # pragma: no cover - depends on the installed ansible-core
    SUPPORTED = False

# Actions that only compute or record on the controller and return at once: never a connection, and no wait but
# for another run's short write to a locked file (machine_exclusions, ssh_keypair).
CONTROLLER_ONLY = frozenset(
    f"{prefix}{name}" for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for name in ("set_fact", "debug", "assert", "fail", "validate_argument_spec", "add_host", "group_by",
                 "include_tasks", "include_role")
) | {"mlops.vast.local_file", "mlops.vast.validate_playbook_vars", "mlops.vast.machine_exclusions",
     "mlops.vast.ssh_keypair"}


class StrategyModule(LinearStrategy):

    def __init__(self, tqm) -> None:
        super().__init__(tqm)
        if not SUPPORTED:
            display.warning(f"mlops.vast.linear is written for ansible-core 2.19, this is {ANSIBLE_CORE_VERSION}: "
                            "every task runs in a worker, as with ansible.builtin.linear")
        else:
            _freeze_inherited_objects_in_forks()
            template_cache.install()

    def _queue_task(self, host, task, task_vars, play_context):
        if not SUPPORTED or not (self._runs_here(task) or self._may_skip_here(task)):
            return super()._queue_task(host, task, task_vars, play_context)
        # What a worker's start would have registered (a loop's items report through it as they run).
        self._queued_task_cache[(host.name, task._uuid)] = {
            "host": host, "task": task, "task_vars": task_vars, "play_context": play_context}
        if self._runs_here(task):
            self._tqm.send_callback("v2_runner_on_start", host, task)
            own_task, result = self._execute_here(host, task, task_vars, play_context, TaskExecutor)
        else:
            try:
                own_task, result = self._execute_here(host, task, task_vars, play_context, _ConditionalOnly)
            except _WorkerNeeded:
                return super()._queue_task(host, task, task_vars, play_context)
            self._tqm.send_callback("v2_runner_on_start", host, task)
        self._final_q.send_task_result(_RawTaskResult(host=host, task=own_task, return_data=result,
                                                      task_fields=own_task.dump_attrs()))
        self._pending_results += 1

    def _execute_here(self, host, task, task_vars, play_context, executor):
        # A worker works on its own copy of everything (a fork): the executor templates the task in place, may
        # change its ignore_errors and adds to the variables it is given, so it gets copies (the blocks above the
        # task come along for their inherited keywords, not their task lists); the result carries the task's fields
        # back as a worker's does.
        own_task = task.copy(exclude_parent=False, exclude_tasks=True)
        with _task.TaskContext(own_task):
            result = executor(host, own_task, dict(task_vars), play_context, self._loader,
                              plugin_loader.get_plugin_loader_namespace(), self._final_q,
                              self._variable_manager).run()
        return own_task, result

    @staticmethod
    def _runs_here(task) -> bool:
        # As written in the play (resolving it is a worker's job); retries sleep, and async is a worker's.
        return task.action in CONTROLLER_ONLY and not task.async_val and not task.until

    @staticmethod
    def _may_skip_here(task) -> bool:
        # A conditional task of any action: its executor runs here up to the conditional, and on to a worker only
        # if it holds. A loop's conditional is per item, evaluated while the loop runs, so a loop goes to a worker.
        # delegate_to is templated (the delegated host's variables gathered) before the conditional, and a throttle
        # is checked when a task is queued for a worker: both stay a worker's.
        return bool(task.when) and not (task.loop or task.loop_with or task.async_val or task.until
                                        or task.delegate_to or task.throttle)


@functools.cache
def _freeze_inherited_objects_in_forks() -> None:
    # A worker is a fork of this process: a full collection there would walk, and so copy page by page, every
    # object it inherited. Frozen as the child starts, they are left alone by the child's collector; this process's
    # own collection is untouched.
    os.register_at_fork(after_in_child=gc.freeze)


class _WorkerNeeded(BaseException):
    """The task's conditional holds: the task runs in a worker. A BaseException, so that the executor's own error
    handling (which turns an Exception into a failed result) lets it through before anything ran."""


if SUPPORTED:

    class _ConditionalOnly(TaskExecutor):
        """Ansible's executor for one task, as far as the task's conditional: a skip result when it is false,
        :class:`_WorkerNeeded` when it holds (nothing connected, loaded or ran)."""

        def _execute_internal(self, templar, variables):
            resolve = self._task._resolve_conditional

            def when_only(conditional, all_vars, **kwargs):
                # The executor's first conditional is the task's when (changed_when, failed_when come after it ran).
                if resolve(conditional, all_vars, **kwargs):
                    raise _WorkerNeeded
                return False

            self._task._resolve_conditional = when_only  # on this executor's own copy of the task
            return super()._execute_internal(templar, variables)
