# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.validate_playbook_vars: ``ansible.builtin.validate_argument_spec`` against a playbook's
argument spec file, plus what it leaves out, in one task that reports every problem at once: variables
with the prefix that the spec does not know, numbers out of range, and then the values, converted and
with every default filled in, as one fact. Documentation: plugins/modules/validate_playbook_vars.py.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from ansible.errors import AnsibleActionFail
from ansible.plugins.action.validate_argument_spec import ActionModule as ValidateArgumentSpec
from ansible_collections.mlops.vast.plugins.plugin_utils.contract import (
    finite_values,
    holds_secrets,
    plain_errors,
    problems,
    validated,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "spec_file": {"type": "path", "required": True},
    "spec_name": {"type": "str", "default": "main"},
    "prefix": {"type": "str", "default": ""},
    "fact": {"type": "str"},
}


class ActionModule(ValidateArgumentSpec):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[0].validated_parameters
        path = self._spec_path(args["spec_file"], task_vars)
        options = self._options(path, args["spec_name"])
        prefix = args["prefix"]
        # What the play has, templated; only names with the prefix count (others are not the contract's).
        given = self._templar.template({name: task_vars[name] for name in task_vars
                                        if (prefix and name.startswith(prefix)) or name in options})
        converted = validated(given, options)[0]
        # Numbers that are not finite are said here, and left out of Ansible's validator, which chokes on int() of
        # infinity (and lets NaN through every range): the variable's value there is the one without them.
        finite, errors = finite_values(given, options)
        unusable = {name: finite.get(name) for name in given if finite.get(name) != given[name] or name not in finite}
        self._task.args = {"argument_spec": options, "provided_arguments": unusable,
                           "validate_args_context": {"name": os.path.basename(path), "type": "playbook", "path": path}}
        result = super().run(tmp, task_vars)  # types, choices, required: ansible.builtin.validate_argument_spec
        said = {error.split(" ", 1)[0].split(".", 1)[0].split("[", 1)[0] for error in errors}
        # The validator's own word on those values (it may still see them) would only say it again.
        errors += [error for error in plain_errors(list(result.get("argument_errors") or []), given, options)
                   if error.split(" ", 1)[0].split(".", 1)[0].split("[", 1)[0] not in said]
        errors += problems(given, options, where=os.path.basename(path), converted=converted)
        if errors:
            return {"failed": True, "changed": False, "argument_errors": errors,
                    "msg": f"{'; '.join(errors)} (the variables are described in {path})"}

        def short(name: str) -> str:
            return name[len(prefix):] if prefix and name.startswith(prefix) else name

        values = {short(name): value for name, value in converted.items()}
        # A no_log option (tokens in run_env), or one with a no_log key (a source's headers), given a value.
        secret = {short(name) for name, option in options.items() if holds_secrets(values.get(short(name)), option)}
        out: dict[str, Any] = {"changed": False, "msg": f"the variables match {path}",
                               "values": {name: "********" if name in secret else value
                                          for name, value in values.items()}}
        if args["fact"]:
            # A module's facts are the host's facts, which a fact cache keeps on disk (a jsonfile cache, AWX's, the
            # one ansible-runner turns on in its artifacts): what holds secrets is null there, and given instead
            # as no_log_values, which the play registers and adds with a set_fact (never cached).
            out["ansible_facts"] = {args["fact"]: {name: None if name in secret else value
                                                   for name, value in values.items()}}
            if secret:
                out["no_log_values"] = {name: values[name] for name in secret}
                out["_ansible_no_log"] = True
        return out

    def _spec_path(self, spec_file: str, task_vars: dict[str, Any]) -> str:
        if os.path.isabs(spec_file):
            return spec_file
        return os.path.join(task_vars.get("playbook_dir") or os.getcwd(), spec_file)

    @staticmethod
    def _options(path: str, name: str) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle)
            return dict(data["argument_specs"][name]["options"])
        except OSError as exc:
            raise AnsibleActionFail(f"cannot read the argument spec file {path}: {exc.strerror}") from None
        except (yaml.YAMLError, KeyError, TypeError) as exc:
            raise AnsibleActionFail(f"{path} has no argument_specs.{name}.options "
                                    f"({type(exc).__name__}: {exc})") from None
