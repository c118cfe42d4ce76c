# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one of the collection's controller-side modules inside Ansible's worker process instead of a new Python.

A module run on localhost costs a Python start plus the import of ``ansible.module_utils.basic`` from a zip
(about 0.3 CPU-seconds), while the worker that would start it already has Ansible imported. The modules that
only talk to the Vast API or read and write the controller's own state (the ledger, the exclusion list, a
checkpoint's manifest) get an action plugin of the same name that calls the module's ``main()`` here, with
``AnsibleModule`` replaced by :class:`InProcessModule`: the same argument validation (Ansible's
``ModuleArgumentSpecValidator``, so the same messages), check mode, warnings and ``no_log`` masking, and
``exit_json``/``fail_json`` that return the result instead of printing it and exiting. The worker is a fork
that ends with the task, so nothing the module sets up outlives it. (Under the strategy mlops.vast.linear,
machine_exclusions and ssh_keypair run in the controller process itself; the working directory and the
environment they are given are put back when they return.)

Private to the collection.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, ClassVar, NoReturn

from ansible.errors import AnsibleError
from ansible.module_utils.common.arg_spec import ModuleArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.errors import UnsupportedError
from ansible.plugins.action import ActionBase


class ModuleExit(Exception):
    """exit_json or fail_json was called: the result, ready to return."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg", ""))
        self.result = result


class InProcessModule:
    """What the collection's modules use of ``AnsibleModule``, for a run inside the worker."""

    def __init__(self, argument_spec: dict[str, Any], *, name: str, args: dict[str, Any], check_mode: bool,
                 supports_check_mode: bool = False, **rules: Any) -> None:
        self._name = name
        self._warnings: list[str] = []
        self.no_log_values: set[str] = set()
        self.check_mode = check_mode
        validation = ModuleArgumentSpecValidator(argument_spec, **rules).validate(args)
        self.no_log_values.update(validation._no_log_values)
        self.params: dict[str, Any] = validation.validated_parameters
        errors = validation.errors
        if validation.error_messages:
            message = errors.msg
            if isinstance(errors[0], UnsupportedError):
                message = f"Unsupported parameters for ({name}) module: {message}"
            self.fail_json(msg=message)
        if check_mode and not supports_check_mode:
            raise ModuleExit({"changed": False, "skipped": True,
                              "msg": f"remote module ({name}) does not support check mode"})

    def warn(self, warning: str) -> None:
        self._warnings.append(warning)

    def run_command(self, args: list[str]) -> tuple[int, str, str]:
        """An argument list (never a shell), its stdin closed, as AnsibleModule.run_command runs one."""
        try:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                                  check=False)
        except OSError as exc:
            return 127, "", f"{args[0]}: {exc.strerror}"
        return done.returncode, done.stdout, done.stderr

    def exit_json(self, **result: Any) -> NoReturn:
        result.setdefault("changed", False)
        raise ModuleExit(self._finish(result))

    def fail_json(self, msg: str, **result: Any) -> NoReturn:
        raise ModuleExit(self._finish({**result, "failed": True, "msg": msg}))

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        if self._warnings:
            result["warnings"] = [*result.get("warnings", []), *self._warnings]
        # As AnsibleModule echoes it (-v shows it): the options as validated, a secret one masked below.
        result.setdefault("invocation", {"module_args": self.params})
        # As a module's JSON would be: plain data (a datetime as text), with no secret option's value in it.
        return json.loads(json.dumps(remove_values(result, self.no_log_values), default=str))


class InProcessAction(ActionBase):
    """An action plugin that runs ``module`` (a collection module with ``main()`` building an ``AnsibleModule``
    through one of ``patched``'s names) in the worker. Subclasses set both."""

    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    module: ClassVar[ModuleType]
    # The modules (the module itself, or module_utils it builds AnsibleModule in) whose AnsibleModule is replaced.
    patched: ClassVar[tuple[ModuleType, ...]] = ()

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        super().run(tmp, task_vars)
        name = self._task.resolved_action or self._task.action
        # Plain values, not Ansible's tagged ones (a value JSON cannot hold goes as text, as to a module).
        args = json.loads(json.dumps(dict(self._task.args), default=str))
        check_mode = bool(self._task.check_mode)

        def build(argument_spec: dict[str, Any], **options: Any) -> InProcessModule:
            return InProcessModule(argument_spec, name=name, args=args, check_mode=check_mode, **options)

        targets = self.patched or (self.module,)
        saved = [target.AnsibleModule for target in targets]
        for target in targets:
            target.AnsibleModule = build
        try:
            # Where a module on localhost runs: relative paths start from the playbook's directory.
            with task_environment(self._environment()), working_directory(self._loader.get_basedir()):
                self.module.main()
        except ModuleExit as done:
            return done.result
        finally:
            for target, original in zip(targets, saved, strict=True):
                target.AnsibleModule = original
        return {"failed": True, "msg": f"{name} ended without a result"}

    def _environment(self) -> dict[str, str]:
        return task_environment_values(self._task, self._templar)


def task_environment_values(task: Any, templar: Any) -> dict[str, str]:
    """A task's ``environment:`` (play, block and task, the task's winning), as a module process gets it."""
    merged: dict[str, str] = {}
    blocks = task.environment
    for block in blocks if isinstance(blocks, list) else [blocks]:
        if not block:
            continue
        values = templar.template(block)
        if not isinstance(values, dict):
            raise AnsibleError(f"environment must be a dictionary, received {values!r}")
        merged.update({str(key): str(value) for key, value in values.items()})
    return merged


@contextmanager
def working_directory(path: str) -> Iterator[None]:
    previous = os.getcwd()
    os.chdir(path or previous)
    try:
        yield
    finally:
        os.chdir(previous)


@contextmanager
def task_environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
