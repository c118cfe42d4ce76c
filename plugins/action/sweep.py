# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""mlops.vast.sweep: run a sweep's trials, each a whole train.yml, on the controller (documentation in
plugins/modules/sweep.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.release import __version__ as ANSIBLE_CORE_VERSION
from ansible_collections.mlops.vast.plugins.module_utils.local_state import ContractLedger, default_ledger_path
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_plan import (
    SweepSpecError,
    expand,
    trial_ids,
    trial_run_vars,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_rows import (
    build_row,
    read_ledger,
    row_line,
    rows_csv,
    spent,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_scheduler import (
    Budget,
    Scheduler,
    Trial,
    trial_environment,
    trial_states,
    trial_strategy,
    write_json_atomic,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "base": {"type": "dict", "required": True, "no_log": True},
    "grid": {"type": "dict"},
    "random": {"type": "dict"},
    "trials": {"type": "list", "elements": "raw"},
    "max_parallel": {"type": "int", "default": 2},
    "budget_usd": {"type": "float", "default": 0.0},
    "results_dir": {"type": "path"},
    "playbook_dir": {"type": "path"},
    "trial_vars": {"type": "dict", "default": {}},
    "rerun": {"type": "str", "default": "skip_completed", "choices": ["skip_completed", "all"]},
    "trial_timeout_s": {"type": "int", "default": 0},
    "poll_s": {"type": "float", "default": 1.0},
    "trial_strategy": {"type": "str", "default": "auto"},
}
TEARDOWN_TIMEOUT_S = 600


def _fail(message: str) -> None:
    raise AnsibleActionFail(message)


def _ansible_playbook() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    return beside if os.access(beside, os.X_OK) else (shutil.which("ansible-playbook") or "ansible-playbook")


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True

    def run(self, tmp: str | None = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        validation = ArgumentSpecValidator(ARGUMENT_SPEC).validate(self._task.args)
        if validation.error_messages:
            _fail("mlops.vast.sweep: " + "; ".join(validation.error_messages))
        args = validation.validated_parameters
        if args["max_parallel"] < 1:
            _fail(f"sweep_max_parallel must be at least 1 (got {args['max_parallel']})")
        if args["budget_usd"] < 0:
            _fail(f"sweep_budget_usd cannot be negative (got {args['budget_usd']}); 0 means no shared budget")

        playbook_dir = args["playbook_dir"] or task_vars.get("playbook_dir") or os.getcwd()
        results_dir = os.path.abspath(args["results_dir"] or os.path.join("results", args["name"]))
        base = dict(args["base"])
        try:
            param_sets = expand(args["grid"], args["random"], args["trials"])
            trials = self._trials(args["name"], base, param_sets, results_dir, args["trial_vars"])
        except SweepSpecError as exc:
            _fail(str(exc))

        if self._play_context.check_mode:
            planned = [{"id": t.id, "label": t.label, "params": t.params, "command": t.run_vars["run_command"]}
                       for t in trials]
            result.update(changed=False, trials=planned)
            result["msg"] = f"Would run {len(trials)} trial(s), at most {args['max_parallel']} at once."
            return result

        os.makedirs(results_dir, exist_ok=True)
        strategy = trial_strategy(args["trial_strategy"], C.config.get_config_value_and_origin("DEFAULT_STRATEGY")[1],
                                  ANSIBLE_CORE_VERSION)
        reused = self._reuse_completed(trials) if args["rerun"] == "skip_completed" else 0
        ledger_path = default_ledger_path()
        private_dir = tempfile.mkdtemp(prefix="mlops-sweep-")  # trial variables (run_env may hold tokens), 0700
        cancel_file = os.path.join(results_dir, "CANCEL")
        with contextlib.suppress(FileNotFoundError):
            os.remove(cancel_file)

        def launch(trial: Trial) -> subprocess.Popen:
            if os.path.isdir(trial.results_dir) and os.listdir(trial.results_dir):
                # An earlier, unfinished try of this trial: kept apart, so its records do not make this one's row.
                os.rename(trial.results_dir, f"{trial.results_dir}.before-{time.strftime('%Y%m%dT%H%M%S')}")
            os.makedirs(trial.results_dir, exist_ok=True)
            write_json_atomic(os.path.join(trial.results_dir, "trial.json"),
                              {"id": trial.id, "label": trial.label, "params": trial.params, "row": None})
            run_vars = dict(trial.run_vars)
            if trial.cap_usd:
                run_vars["run_max_total_usd"] = trial.cap_usd
            vars_file = os.path.join(private_dir, f"{trial.id}.json")
            fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(run_vars, handle)
            env = trial_environment(os.environ, progress_file=os.path.join(trial.results_dir, "progress.json"),
                                    strategy=strategy)
            log = open(os.path.join(trial.results_dir, "ansible.log"), "ab")  # noqa: SIM115 - the child keeps it
            try:
                # A session of its own: a Ctrl-C at the terminal reaches this scheduler, which stops the trials in
                # order (their instances destroyed), instead of killing each playbook before its teardown.
                return subprocess.Popen([_ansible_playbook(), os.path.join(playbook_dir, "train.yml"),
                                         "-e", f"@{vars_file}"], stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            finally:
                log.close()

        def finish(trial: Trial) -> None:
            duration = (trial.ended_at - trial.started_at) if trial.started_at and trial.ended_at else None
            trial.row = build_row(trial_id=trial.id, label=trial.label, params=trial.params,
                                  results_dir=trial.results_dir, rc=trial.rc,
                                  outcome_override=trial.outcome if trial.outcome else None,
                                  duration_s=duration, ledger_records=read_ledger(ledger_path))
            trial.outcome = trial.row["outcome"]
            if os.path.isdir(trial.results_dir):
                write_json_atomic(os.path.join(trial.results_dir, "trial.json"),
                                  {"id": trial.id, "label": trial.label, "params": trial.params, "row": trial.row})
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(private_dir, f"{trial.id}.json"))

        def teardown(stopped: Sequence[Trial]) -> None:
            procs = []
            for trial in stopped:
                log = open(os.path.join(trial.results_dir, "ansible.log"), "ab")  # noqa: SIM115
                try:
                    procs.append(subprocess.Popen(
                        [_ansible_playbook(), os.path.join(playbook_dir, "teardown.yml"),
                         "-e", f"teardown_label={trial.label}"],
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
                finally:
                    log.close()
            for proc in procs:
                try:
                    proc.wait(timeout=TEARDOWN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()

        timeout_s = args["trial_timeout_s"] or self._trial_timeout(base)
        waves = -(-sum(1 for t in trials if t.state == "queued") // args["max_parallel"])
        scheduler = Scheduler(
            trials, launch=launch, max_parallel=args["max_parallel"],
            budget=Budget(total=args["budget_usd"], run_cap=float(base.get("max_total_usd") or 0)),
            state_file=os.path.join(results_dir, "sweep-state.json"), cancel_file=cancel_file,
            sweep_name=args["name"], finish=finish, teardown=teardown,
            spend_of=lambda trial: spent(trial.results_dir), trial_timeout_s=timeout_s, poll_s=args["poll_s"],
            left_open=lambda trial: [c for c in ContractLedger(ledger_path).open_contracts()
                                     if c.get("label") == trial.label])
        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(
                signum, lambda num, _frame: scheduler.request_cancel(f"interrupted ({signal.Signals(num).name})"))
        try:
            scheduler.run(deadline_s=timeout_s * max(1, waves) + 600)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            shutil.rmtree(private_dir, ignore_errors=True)

        rows = [t.row or {} for t in trials]
        write_json_atomic(os.path.join(results_dir, "trials.json"), rows)
        with open(os.path.join(results_dir, "trials.csv"), "w", encoding="utf-8") as handle:
            handle.write(rows_csv(rows))
        outcomes = [row.get("outcome") for row in rows]
        completed = outcomes.count("completed")
        result.update(
            changed=len(trials) > reused, rows=rows, results_dir=results_dir, completed=completed,
            not_completed=len(rows) - completed, reused=reused, cancelled=scheduler.cancel_reason,
            states=dict(trial_states(trials)),
            spent_usd=round(sum(float(row.get("cost_usd") or 0) for row in rows), 6),
            labels=[t.label for t in trials], lines=[row_line(row) for row in rows])
        result["msg"] = (f"{completed} of {len(rows)} trial(s) completed"
                         + (f" ({reused} from an earlier run)" if reused else "")
                         + (f"; stopped: {scheduler.cancel_reason}" if scheduler.cancel_reason else "")
                         + f"; results in {results_dir}/trials.csv")
        return result

    @staticmethod
    def _trials(name: str, base: dict[str, Any], param_sets: list[dict[str, Any]], results_dir: str,
                trial_vars: dict[str, Any]) -> list[Trial]:
        trials = []
        for tid, params in zip(trial_ids(param_sets), param_sets, strict=True):
            label = f"{name}-{tid}"
            run_vars = {**trial_vars, **trial_run_vars(base, params, label=label,
                                                       results_dir=os.path.join(results_dir, tid))}
            trials.append(Trial(id=tid, label=label, params=params, results_dir=os.path.join(results_dir, tid),
                                run_vars=run_vars))
        return trials

    @staticmethod
    def _reuse_completed(trials: list[Trial]) -> int:
        """A re-run skips what already completed with the same parameters."""
        reused = 0
        for trial in trials:
            try:
                with open(os.path.join(trial.results_dir, "trial.json"), encoding="utf-8") as handle:
                    earlier = json.load(handle)
            except (OSError, ValueError):
                continue
            row = earlier.get("row") if isinstance(earlier, dict) else None
            if isinstance(row, dict) and row.get("outcome") == "completed" and earlier.get("params") == trial.params:
                trial.state, trial.outcome, trial.row = "done", "completed", row
                trial.cost_usd = float(row.get("cost_usd") or 0)
                reused += 1
        return reused

    @staticmethod
    def _trial_timeout(base: dict[str, Any]) -> int:
        """How long one trial may take before it is stopped: its own limits, plus room for renting again."""
        runtime = int(base.get("max_runtime_s") or 0) or 24 * 3600
        rent = int(base.get("rent_budget_s") or 1800)
        smoke = int(base.get("smoke_timeout_s") or 600)
        recoveries = int((base.get("recovery") or {}).get("max_preemptions") or 0) + 1
        return runtime + recoveries * (rent + smoke) + 1800
