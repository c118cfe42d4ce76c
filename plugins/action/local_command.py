# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.local_command: a program (an rsync to or from a rented host) run on the controller straight from
Ansible's worker process. ``ansible.builtin.command`` on localhost starts a Python interpreter for the module
only to start the program (about 0.3 CPU-seconds each time), and a run of train.yml makes four such copies, a
sweep four for every trial. Documentation: plugins/modules/local_command.py.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Any

from ansible.plugins.action import ActionBase
from ansible_collections.mlops.vast.plugins.plugin_utils.command_result import (
    CHECK_MODE_SKIP,
    NO_OUTPUT,
    command_result,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.in_process import task_environment_values

ARGUMENT_SPEC: dict[str, Any] = {
    "argv": {"type": "list", "elements": "str", "required": True},
    "chdir": {"type": "path"},
    "expand_argument_vars": {"type": "bool", "default": True},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        argv: list[str] = args["argv"]
        if args["expand_argument_vars"]:
            # As ansible.builtin.command does by default: a results folder or code given as ~/... means the home.
            argv = [os.path.expanduser(os.path.expandvars(word)) for word in argv]
        if not argv or not argv[0]:
            return {"failed": True, "changed": False, "cmd": argv,
                    "msg": "argv is empty: give the program first, then its arguments, one per item"}
        if self._task.check_mode:
            # As ansible.builtin.command does: a program's effects cannot be predicted, so nothing runs.
            return {**CHECK_MODE_SKIP, "cmd": argv}
        # Where a module run on localhost runs (Ansible's local connection starts it in the playbook's directory), so
        # relative paths mean the same as they did with ansible.builtin.command.
        cwd = os.path.join(self._loader.get_basedir(), args["chdir"] or "")
        environment = {**os.environ, **task_environment_values(self._task, self._templar)}
        started = datetime.datetime.now()
        try:
            # Same process group as the worker: a Ctrl-C reaches the program too, as it would a module's child.
            done = subprocess.run(argv, cwd=cwd, env=environment, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, encoding="utf-8", errors="replace", check=False)
        except OSError as exc:
            # rc as ansible.builtin.command gives it (the errno: 2 for a missing program), and empty output, so a
            # changed_when that reads it still works.
            return {"failed": True, "changed": False, "rc": exc.errno or 1, "cmd": argv, **NO_OUTPUT,
                    "msg": f"could not run {argv[0]} in {cwd} on the controller: {exc.strerror or exc}"}
        return command_result(argv, done.returncode, done.stdout, done.stderr, started, datetime.datetime.now())
