# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The result of a program the collection's actions run without a module (mlops.vast.local_command on the
controller, mlops.vast.host_command on the host), shaped as ``ansible.builtin.command`` returns it, so tasks judge
it the same way (``rc``, ``stdout_lines``, ``failed_when``).

Private to the collection.
"""

from __future__ import annotations

import datetime
from typing import Any

NO_OUTPUT: dict[str, Any] = {"stdout": "", "stderr": "", "stdout_lines": [], "stderr_lines": []}
# As ansible.builtin.command returns it: a task reading .stdout in check mode reads "".
CHECK_MODE_SKIP: dict[str, Any] = {"changed": False, "skipped": True, "rc": 0, **NO_OUTPUT,
                                   "msg": "Command would have run if not in check mode"}


def command_result(cmd: Any, rc: int, stdout: str, stderr: str, started: datetime.datetime,
                   ended: datetime.datetime) -> dict[str, Any]:
    """What ansible.builtin.command returns for a program that ran: always changed, failed on a non-zero exit."""
    stdout, stderr = stdout.rstrip("\r\n"), stderr.rstrip("\r\n")
    result: dict[str, Any] = {
        "changed": True, "cmd": cmd, "rc": rc, "stdout": stdout, "stderr": stderr,
        "stdout_lines": stdout.splitlines(), "stderr_lines": stderr.splitlines(),
        "start": str(started), "end": str(ended), "delta": str(ended - started), "msg": "",
    }
    if rc != 0:
        result.update(failed=True, msg="non-zero return code")
    return result
