# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.host_command: a command or a shell script run on the host over Ansible's connection, with no Python
started there. ``ansible.builtin.command`` and ``shell`` send a module and start Python on the host to run one
program (~0.1-0.2 s a task, on the host's CPU); ``ansible.builtin.raw`` needs no Python but runs under a terminal,
which merges the output streams and ends lines with CR LF. Documentation: plugins/modules/host_command.py.
"""

from __future__ import annotations

import datetime
import re
import shlex
from typing import Any

from ansible.plugins.action import ActionBase
from ansible_collections.mlops.vast.plugins.plugin_utils.command_result import CHECK_MODE_SKIP, command_result

ARGUMENT_SPEC: dict[str, Any] = {
    "cmd": {"type": "str"},
    "argv": {"type": "list", "elements": "str"},
    "executable": {"type": "str", "default": "/bin/sh"},
    "chdir": {"type": "str"},
}


# What SSH itself says when it opens the connection (host keys are not kept, by design): not the command's output.
SSH_HOST_KEY_NOTICE = re.compile(r"^Warning: Permanently added .* to the list of known hosts\.\r?\n?", re.MULTILINE)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC, mutually_exclusive=[["cmd", "argv"]],
                                           required_one_of=[["cmd", "argv"]])[0].validated_parameters
        shown: Any = args["argv"] if args["argv"] is not None else args["cmd"]
        if not shown or (args["argv"] is not None and not args["argv"][0]):
            return {"failed": True, "changed": False, "cmd": shown,
                    "msg": "nothing to run: give cmd (a shell script) or argv (the program first, then its arguments)"}
        if self._task.check_mode:
            return {**CHECK_MODE_SKIP, "cmd": shown}
        if args["argv"] is not None:
            command = " ".join(shlex.quote(word) for word in args["argv"])
        else:
            command = f"{shlex.quote(args['executable'])} -c {shlex.quote(args['cmd'])}"
        # The task's environment keyword, as a module would get it: assignments for this command only.
        environment = self._compute_environment_string()
        if environment:
            command = f"{environment} {command}"
        # No input: a command that reads stdin sees its end, as under a module, instead of waiting.
        command = f"{command} < /dev/null"
        if args["chdir"]:
            command = f"cd {shlex.quote(args['chdir'])} && {command}"
        started = datetime.datetime.now()
        # Not sudoable: no terminal (separate streams, plain line ends) and no become, as for the collection's
        # other shell round trips (host_files, the watch's polls). A lost connection raises: the host is unreachable.
        done = self._low_level_execute_command(command, sudoable=False)
        stderr = SSH_HOST_KEY_NOTICE.sub("", done.get("stderr") or "")
        ended = datetime.datetime.now()
        return command_result(shown, int(done["rc"]), done.get("stdout") or "", stderr, started, ended)
