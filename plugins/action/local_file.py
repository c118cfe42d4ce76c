# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.local_file: the run's own files on the controller, written, made or removed in Ansible's worker
process. ``ansible.builtin.copy`` and ``ansible.builtin.file`` start a Python interpreter for each module run
(two for a copy with content), and on a small controller those runs are most of what a sweep's trials cost
before they train. Documentation: plugins/modules/local_file.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from typing import Any

from ansible.plugins.action import ActionBase
from ansible_collections.mlops.vast.plugins.plugin_utils.file_content import (
    FileSpecError,
    content_bytes,
    parse_mode,
    write_atomic,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "path": {"type": "path", "required": True, "aliases": ["dest"]},
    "state": {"type": "str", "choices": ["file", "directory", "absent"], "default": "file"},
    "content": {"type": "raw"},
    "mode": {"type": "raw"},
}
DEFAULT_MODES = {"file": 0o644, "directory": 0o755}


class LocalFileError(Exception):
    """What the task was asked that cannot be done, worded for the user."""


def path_state(path: str) -> str:
    """What is at ``path``, following links (a results folder may be a link to a bigger disk)."""
    if os.path.isdir(path):
        return "directory"
    if os.path.isfile(path):
        return "file"
    return "absent" if not os.path.lexists(path) else "other"


def current_mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        state = args["state"]
        # Relative to the playbook's directory, where a module on localhost (and the pipe lookup) would run.
        path = os.path.join(self._loader.get_basedir(), args["path"])
        try:
            mode = DEFAULT_MODES.get(state, 0) if args["mode"] is None else parse_mode(args["mode"])
            if state == "file":
                if args["content"] is None:
                    raise LocalFileError("content is required with state=file (the text to write)")
                return self._file(path, content_bytes(args["content"]), mode)
            if args["content"] is not None:
                raise LocalFileError(f"content is only for state=file, not state={state}")
            if state == "directory":
                return self._directory(path, mode)
            return self._absent(path)
        except (LocalFileError, FileSpecError) as exc:
            return {"failed": True, "changed": False, "path": path, "msg": str(exc)}
        except OSError as exc:
            return {"failed": True, "changed": False, "path": path,
                    "msg": f"could not {state_verb(state)} {path} on the controller: {exc.strerror or exc}"}

    def _result(self, path: str, state: str, changed: bool, before: str, after: str, **extra: Any) -> dict[str, Any]:
        result: dict[str, Any] = {"changed": changed, "path": path, "state": state, **extra}
        if self._task.diff and changed:
            result["diff"] = {"before": before, "after": after, "before_header": path, "after_header": path}
        return result

    def _file(self, path: str, data: bytes, mode: int) -> dict[str, Any]:
        found = path_state(path)
        if found == "directory":
            raise LocalFileError(f"{path} is a directory: give the path of the file to write in it")
        if found == "other":
            raise LocalFileError(f"{path} is not a regular file (a broken link, a socket or a device): remove it first")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            if self._task.check_mode:  # an earlier task of this check run would have made it, as copy assumes
                return self._result(path, "file", True, "", data.decode("utf-8", "replace"),
                                    checksum=hashlib.sha1(data).hexdigest(), size=len(data))
            raise LocalFileError(f"the directory {directory} does not exist: make it first (state=directory)")
        old = b""
        if found == "file":
            with open(path, "rb") as existing:
                old = existing.read()
        changed = found == "absent" or old != data or current_mode(path) != mode
        if changed and not self._task.check_mode:
            write_atomic(os.path.realpath(path), data, mode)  # through a link to its file: the link stays
        return self._result(path, "file", changed, old.decode("utf-8", "replace"), data.decode("utf-8", "replace"),
                            checksum=hashlib.sha1(data).hexdigest(), size=len(data))

    def _directory(self, path: str, mode: int) -> dict[str, Any]:
        found = path_state(path)
        if found not in ("directory", "absent"):
            raise LocalFileError(f"{path} exists and is not a directory: move it away or choose another path")
        changed = found == "absent" or current_mode(path) != mode
        if changed and not self._task.check_mode:
            os.makedirs(path, exist_ok=True)
            os.chmod(path, mode)
        return self._result(path, "directory", changed, f"state: {found}\n", "state: directory\n")

    def _absent(self, path: str) -> dict[str, Any]:
        found = path_state(path)
        changed = found != "absent"
        if changed and not self._task.check_mode:
            if found == "directory" and not os.path.islink(path):  # a link goes, never what it points to
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return self._result(path, "absent", changed, f"state: {found}\n", "state: absent\n")


def state_verb(state: str) -> str:
    return {"file": "write", "directory": "make", "absent": "remove"}[state]
