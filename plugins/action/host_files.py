# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.host_files: the directories and files a role puts on the rented host, in one task and at most two
shell commands plus one transfer per changed file, with no module run on the host. ``ansible.builtin.file``,
``copy`` and ``template`` cost a Python start on the host per directory and two per file (a stat, then the
copy), and the train role alone made eleven of them. Documentation: plugins/modules/host_files.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible_collections.mlops.vast.plugins.plugin_utils.file_content import FileSpecError, content_bytes, parse_mode

ARGUMENT_SPEC: dict[str, Any] = {
    "directories": {"type": "list", "elements": "dict", "default": [], "options": {
        "path": {"type": "str", "required": True},
        "mode": {"type": "raw", "default": "0755"},
    }},
    "files": {"type": "list", "elements": "dict", "default": [], "options": {
        "dest": {"type": "str", "required": True},
        "content": {"type": "raw"},
        "src": {"type": "path"},
        "mode": {"type": "raw", "default": "0644"},
    }, "mutually_exclusive": [("content", "src")], "required_one_of": [("content", "src")]},
}


class HostFilesError(Exception):
    """What the task was asked that cannot be done, worded for the user."""


@dataclass
class Wanted:
    path: str
    mode: int
    data: bytes | None = None  # None for a directory
    local: str | None = None  # a src file on the controller, sent as it is

    @property
    def checksum(self) -> str:
        if self.data is not None:
            return hashlib.sha1(self.data).hexdigest()
        digest = hashlib.sha1()
        with open(self.local or "", "rb") as source:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def checked(parse: Callable[[Any], Any], value: Any, where: str) -> Any:
    """``parse(value)``, its error naming the list entry it came from."""
    try:
        return parse(value)
    except FileSpecError as exc:
        raise HostFilesError(f"{where}: {exc}") from None


def host_path(path: str, where: str, directory: bool = False) -> str:
    if directory and len(path) > 1:
        path = path.rstrip("/") or "/"
    if not path.strip() or (not directory and path.endswith("/")):
        raise HostFilesError(f"{where}: give the path of a {'directory' if directory else 'file'} on the host, "
                             f"got {path!r}")
    return path


def look_script(directories: list[Wanted], files: list[Wanted], make: bool, marker: str) -> str:
    """One line per path, after ``marker`` (so nothing a login shell prints is taken for one): a directory's mode
    (then made, unless checking), a file's checksum and mode, '-' when absent, '!' when not a regular file.
    Modes are the target's (``-L``): a link to the right file is right."""
    lines = [f"M={shlex.quote(marker)}"]
    for wanted in directories:
        path = shlex.quote(wanted.path)
        lines.append(f"if [ -d {path} ]; then echo \"$M d $(stat -L -c %a {path})\"; else echo \"$M d -\"; fi")
        if make:
            lines.append(f"mkdir -p {path} && chmod {wanted.mode:o} {path} || exit 3")
    for wanted in files:
        path = shlex.quote(wanted.path)
        lines.append(f"if [ -f {path} ]; then echo \"$M f $(sha1sum < {path} | cut -d' ' -f1) "
                     f"$(stat -L -c %a {path})\"; elif [ -e {path} ]; then echo \"$M f ! !\"; "
                     f"else echo \"$M f - -\"; fi")
    return "\n".join(lines)


def read_rows(answer: str, marker: str, directories: int, files: int) -> list[list[str]]:
    """The look's rows, each checked for its shape; an answer that is not whole is an error, never a guess."""
    rows = [line.split()[1:] for line in answer.splitlines() if line.startswith(marker + " ")]
    shapes = ["d"] * directories + ["f"] * files
    well_formed = len(rows) == len(shapes) and all(row_fits(row, kind) for row, kind in zip(rows, shapes, strict=True))
    if not well_formed:
        raise HostFilesError(f"the host's answer could not be read (stat -c and sha1sum are needed): "
                             f"{answer.strip()[-400:]}")
    return rows


def row_fits(row: list[str], kind: str) -> bool:
    def octal(text: str) -> bool:
        return bool(text) and all(c in "01234567" for c in text)

    if kind == "d":
        return len(row) == 2 and row[0] == "d" and (row[1] == "-" or octal(row[1]))
    return len(row) == 3 and row[0] == "f" and (row[1:] in (["-", "-"], ["!", "!"]) or octal(row[2]))


def same_mode(found: str, wanted: int) -> bool:
    """Special bits the host keeps on its own (a directory under a setgid parent) do not count unless asked for."""
    value = int(found, 8)
    return (value if wanted > 0o777 else value & 0o777) == wanted


class ActionModule(ActionBase):
    TRANSFERS_FILES = False  # no remote temporary directory: the files go beside their destinations
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        super().run(tmp, task_vars)
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        try:
            directories = [self._wanted_directory(d, f"directories[{i}]") for i, d in enumerate(args["directories"])]
            files = [self._wanted_file(f, f"files[{i}]") for i, f in enumerate(args["files"])]
            if not directories and not files:
                raise HostFilesError("give at least one of directories and files")
            return self._apply(directories, files)
        except HostFilesError as exc:
            return {"failed": True, "changed": False, "msg": str(exc)}

    @staticmethod
    def _wanted_directory(spec: dict[str, Any], where: str) -> Wanted:
        return Wanted(host_path(spec["path"], where, directory=True), checked(parse_mode, spec["mode"], where))

    def _wanted_file(self, spec: dict[str, Any], where: str) -> Wanted:
        dest = host_path(spec["dest"], f"{where}.dest")
        mode = checked(parse_mode, spec["mode"], where)
        if spec["src"] is not None:
            try:
                local = self._find_needle("files", spec["src"])
            except AnsibleError as exc:
                raise HostFilesError(f"{where}.src: {spec['src']} is not on the controller ({exc.message})") from None
            if not os.path.isfile(local):
                raise HostFilesError(f"{where}.src: {local} is not a file (a directory is sent with rsync, not here)")
            return Wanted(dest, mode, local=local)
        return Wanted(dest, mode, data=checked(content_bytes, spec["content"], where))

    def _shell(self, script: str, doing: str) -> str:
        done = self._low_level_execute_command(script, sudoable=False)
        if done["rc"] != 0:
            raise HostFilesError(f"could not {doing} on the host (rc {done['rc']}): "
                                 f"{(done.get('stderr') or done.get('stdout') or '').strip()[-400:]}")
        return done["stdout"]

    def _apply(self, directories: list[Wanted], files: list[Wanted]) -> dict[str, Any]:
        checking = bool(self._task.check_mode)
        marker = f"@@mlops-host-files-{secrets.token_hex(4)}"
        found = self._shell(look_script(directories, files, make=not checking, marker=marker),
                            "look at (and make) the directories")
        rows = read_rows(found, marker, len(directories), len(files))
        changed_paths: list[str] = []
        before: list[str] = []
        after: list[str] = []
        for wanted, row in zip(directories, rows, strict=False):
            if row[1] == "-" or not same_mode(row[1], wanted.mode):
                changed_paths.append(wanted.path)
                before.append(f"{wanted.path}: {'absent' if row[1] == '-' else 'directory, mode 0' + row[1]}")
                after.append(f"{wanted.path}: directory, mode {wanted.mode:04o}")
        send: list[Wanted] = []
        chmod: list[Wanted] = []
        for wanted, row in zip(files, rows[len(directories):], strict=True):
            if row[1] == "!":
                raise HostFilesError(f"{wanted.path} exists on the host and is not a regular file (a directory?): "
                                     "give the path of the file itself")
            checksum = wanted.checksum
            if row[1] != checksum:
                send.append(wanted)
            elif not same_mode(row[2], wanted.mode):
                chmod.append(wanted)
            else:
                continue
            changed_paths.append(wanted.path)
            before.append(f"{wanted.path}: {'absent' if row[1] == '-' else f'sha1 {row[1]}, mode 0{row[2]}'}")
            after.append(f"{wanted.path}: sha1 {checksum}, mode {wanted.mode:04o}")
        if not checking and (send or chmod):
            self._send(send, chmod)
        result: dict[str, Any] = {"changed": bool(changed_paths), "changed_paths": changed_paths}
        if self._task.diff and changed_paths:
            result["diff"] = {"before": "\n".join(before) + "\n", "after": "\n".join(after) + "\n"}
        return result

    def _send(self, send: list[Wanted], chmod: list[Wanted]) -> None:
        """Each file to a temporary name beside its destination, then all renamed in one command (a reader sees
        the old file or the new one); the temporary files go whatever happens."""
        suffix = f".mlops-{secrets.token_hex(4)}.tmp"
        moves: list[str] = []
        placed = False
        try:
            for wanted in send:
                temporary = wanted.path + suffix
                self._put(wanted, temporary)
                moves.append(f"chmod {wanted.mode:o} {shlex.quote(temporary)} && "
                             f"mv -f {shlex.quote(temporary)} {shlex.quote(wanted.path)}")
            moves += [f"chmod {wanted.mode:o} {shlex.quote(wanted.path)}" for wanted in chmod]
            self._shell(" && ".join(moves), "put the files in place")
            placed = True
        finally:
            if send and not placed:
                leftovers = " ".join(shlex.quote(wanted.path + suffix) for wanted in send)
                with contextlib.suppress(Exception):
                    self._low_level_execute_command(f"rm -f {leftovers}", sudoable=False)

    def _put(self, wanted: Wanted, remote: str) -> None:
        try:
            self._transfer(wanted, remote)
        except AnsibleError as exc:
            raise HostFilesError(f"could not send {wanted.path} (is its directory there, or in directories?): "
                                 f"{exc.message.strip()[-300:]}") from None

    def _transfer(self, wanted: Wanted, remote: str) -> None:
        if wanted.local is not None:
            self._connection.put_file(wanted.local, remote)
            return
        handle, local = tempfile.mkstemp(prefix="mlops-host-file-", dir=C.DEFAULT_LOCAL_TMP)  # Ansible's private one
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(wanted.data or b"")
            self._connection.put_file(local, remote)
        finally:
            os.unlink(local)
