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
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import yaml
from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase
from ansible.release import __version__ as ANSIBLE_CORE_VERSION
from ansible.template import is_trusted_as_template
from ansible_collections.mlops.vast.plugins.module_utils.local_state import ContractLedger, default_ledger_path
from ansible_collections.mlops.vast.plugins.plugin_utils import var_files
from ansible_collections.mlops.vast.plugins.plugin_utils.contract import plain_errors, problems, validated
from ansible_collections.mlops.vast.plugins.plugin_utils.interrupt_teardown import Target as TeardownTarget
from ansible_collections.mlops.vast.plugins.plugin_utils.interrupt_teardown import teardown_argv, wait_or_destroy
from ansible_collections.mlops.vast.plugins.plugin_utils.runner_env import plain_environment
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_plan import (
    SweepSpecError,
    changed_training,
    check_sweep_name,
    expand,
    has_placeholder,
    method_collisions,
    named_params,
    render_command,
    render_value,
    training_digests,
    trial_expressions,
    trial_ids,
    trial_references,
    trial_run_vars,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_rows import (
    build_row,
    earlier_spend,
    read_ledger,
    row_line,
    rows_csv,
    spent,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_scheduler import (
    MIN_TRIAL_USD,
    PROGRESS_FILE,
    Budget,
    Scheduler,
    SweepLock,
    Trial,
    settle_row,
    trial_environment,
    trial_floor,
    trial_states,
    trial_strategy,
    write_json_atomic,
)

ARGUMENT_SPEC: dict[str, Any] = {
    "name": {"type": "str", "required": True},
    "base": {"type": "dict", "no_log": True},
    "plan": {"type": "bool", "default": False},
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
# How long a stopped trial's teardown waits for a host that does not answer before destroying it (the guard's).
UNREACHABLE_WAIT_S = 10.0
RUN_SPEC_FILE = "train.meta.yml"
MAX_ERRORS_SHOWN = 8


def _fail(message: str) -> None:
    raise AnsibleActionFail(message)


def _without_prefix(run_vars: dict[str, Any]) -> dict[str, Any]:
    """A run's variables as a trial's base run names them: ``run_disk_gb`` is ``disk_gb``."""
    return {key.removeprefix("run_"): value for key, value in run_vars.items()}


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
        try:
            check_sweep_name(args["name"])
        except SweepSpecError as exc:
            _fail(str(exc))
        results_dir = os.path.abspath(args["results_dir"] or os.path.join("results", args["name"]))
        try:
            param_sets = expand(args["grid"], args["random"], args["trials"])
            if args["base"] is not None:
                run_vars = {f"run_{key}": value for key, value in args["base"].items()}
                spec_path = None  # a base given whole was checked by whoever gave it
            else:
                run_vars = self._run_variables(task_vars, {name for params in param_sets for name in params})
                spec_path = os.path.join(playbook_dir, RUN_SPEC_FILE)
            bases, trials = self._plan(args["name"], run_vars, param_sets, args["trial_vars"], results_dir,
                                       spec_path)
        except SweepSpecError as exc:
            _fail(str(exc))
        base = bases[0]
        floor = max((self._floor(b) for b in bases), key=lambda least: least["floor"])
        run_cap = float(base.get("max_total_usd") or 0)
        if 0 < run_cap < floor["floor"]:
            # Every trial would be refused for it once the sweep runs: said here, before anything happens.
            _fail(f"run_max_total_usd ${run_cap:g} is below ${floor['floor']:g}, the least a trial can start with "
                  f"({floor['floor_why']}): raise it, or leave it out and let the trials share sweep_budget_usd")
        if 0 < args["budget_usd"] < (run_cap or floor["floor"]) - 1e-12:
            # No trial could ever start: said here, before the reaper, the key or anything else runs.
            least = (f"run_max_total_usd ${run_cap:g}, the cap each trial starts with" if run_cap else
                     f"${floor['floor']:g}, the least a trial can start with ({floor['floor_why']})")
            _fail(f"sweep_budget_usd ${args['budget_usd']:g} is below {least}: no trial could start. Raise "
                  "sweep_budget_usd" + (", or lower run_max_total_usd (or leave it out: the trials share the budget)"
                                        if run_cap else " (0 means no shared budget)"))

        if args["plan"] or self._play_context.check_mode:
            # Nothing is written: the plan is what --check shows, and what sweep.yml checks before renting.
            planned = [{"id": t.id, "label": t.label, "params": t.params, "command": t.run_vars["run_command"]}
                       for t in trials]
            result.update(changed=False, trials=planned, results_dir=results_dir, labels=[t.label for t in trials],
                          lines=[self._plan_line(t) for t in planned])
            result["msg"] = (f"{'Would run' if self._play_context.check_mode else 'Planned'} {len(trials)} trial(s), "
                             f"at most {args['max_parallel']} at once, results in {results_dir}")
            return result

        os.makedirs(results_dir, exist_ok=True)
        lock = SweepLock(results_dir, args["name"])
        try:
            lock.acquire()
        except SweepSpecError as exc:
            _fail(str(exc))
        try:
            return self._run_trials(result, args, trials, bases, floor, run_cap, results_dir, playbook_dir)
        finally:
            lock.release()

    def _run_trials(self, result: dict[str, Any], args: dict[str, Any], trials: list[Trial],
                    bases: list[dict[str, Any]], floor: dict[str, Any], run_cap: float, results_dir: str,
                    playbook_dir: str) -> dict[str, Any]:
        strategy = trial_strategy(args["trial_strategy"], C.config.get_config_value_and_origin("DEFAULT_STRATEGY")[1],
                                  ANSIBLE_CORE_VERSION)
        reused, retrained = self._reuse_completed(trials) if args["rerun"] == "skip_completed" else (0, {})
        spent_before = earlier_spend(results_dir, [t.id for t in trials if t.state == "queued"])
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
                              {"id": trial.id, "label": trial.label, "params": trial.params,
                               "trains": training_digests(trial.run_vars), "row": None})
            run_vars = dict(trial.run_vars)
            if trial.cap_usd:
                run_vars["run_max_total_usd"] = trial.cap_usd
            vars_file = os.path.join(private_dir, f"{trial.id}.yml")
            # Every value was templated here already (sweep.yml's templating, then the trial's parameters): the
            # trial's playbook must not template it again ({#...#} in a value would vanish, {{ x }} fail).
            var_files.write(vars_file, run_vars, unsafe=True)
            trial.vars_file = vars_file
            env = trial_environment(os.environ, progress_file=os.path.join(trial.results_dir, PROGRESS_FILE),
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
                                  duration_s=duration, started_at=trial.started_at,
                                  # A trial that never started rented nothing in this run, whatever the label's past.
                                  ledger_records=read_ledger(ledger_path) if trial.started_at else [])
            trial.outcome = trial.row["outcome"]
            settle_row(trial)
            if os.path.isdir(trial.results_dir):
                write_json_atomic(os.path.join(trial.results_dir, "trial.json"),
                                  {"id": trial.id, "label": trial.label, "params": trial.params,
                                   "trains": training_digests(trial.run_vars), "row": trial.row})
            if trial.vars_file:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(trial.vars_file)
                trial.vars_file = None

        def teardown(stopped: Sequence[Trial]) -> None:
            env = {**plain_environment(os.environ), "MLOPS_VAST_GUARD": "off"}
            running = []
            for trial in stopped:
                log_path = os.path.join(trial.results_dir, "ansible.log")
                # As the guard does for an interrupted train.yml: through the inventory, with the trial's results
                # folder, so the newest sealed checkpoint and the run's files come home, verified, first.
                target = TeardownTarget.of_run(trial.label, trial.results_dir, trial.run_vars)
                target.since = target.since or float(trial.started_at or 0.0)  # its cost, not an earlier try's
                with open(log_path, "ab") as log:
                    running.append((target, subprocess.Popen(
                        teardown_argv(target, UNREACHABLE_WAIT_S, ansible=[_ansible_playbook()]),
                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                        env=env), log_path))
            wait_or_destroy(running, time.monotonic() + TEARDOWN_TIMEOUT_S, env=env, ansible=[_ansible_playbook()])

        timeout_s = args["trial_timeout_s"] or max(self._trial_timeout(b) for b in bases)
        waves = -(-sum(1 for t in trials if t.state == "queued") // args["max_parallel"])
        scheduler = Scheduler(
            trials, launch=launch, max_parallel=args["max_parallel"],
            budget=Budget(total=args["budget_usd"], run_cap=run_cap, spent_before=spent_before, **floor),
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
            spent_usd=round(spent_before + sum(float(row.get("cost_usd") or 0) for row in rows), 6),
            spent_before_usd=spent_before,
            labels=[t.label for t in trials], lines=[row_line(row) for row in rows],
            started_at={t.label: t.started_at for t in trials if t.started_at})
        changed_vars = sorted({name for names in retrained.values() for name in names})
        result["retrained"] = retrained
        result["msg"] = (f"{completed} of {len(rows)} trial(s) completed"
                         + (f" ({reused} from an earlier run)" if reused else "")
                         + (f"; {len(retrained)} completed before ran again, {', '.join(changed_vars)} changed since"
                            if retrained else "")
                         + (f"; stopped: {scheduler.cancel_reason}" if scheduler.cancel_reason else "")
                         + (f"; ${spent_before:.6g} of the sweep's spend was by earlier runs of it, on tries run "
                            "again" if spent_before else ""))
        # The API and the CLI say the same as the playbook (reused and re-run trials included).
        write_json_atomic(os.path.join(results_dir, "sweep-state.json"),
                          {**scheduler.snapshot(), "summary": result["msg"]})
        result["msg"] += f"; results in {results_dir}/trials.csv"
        return result

    @staticmethod
    def _trials(name: str, bases: list[dict[str, Any]], param_sets: list[dict[str, Any]], results_dir: str,
                trial_vars: dict[str, Any], placed: Collection[str] = ()) -> list[Trial]:
        trials = []
        for tid, params, base in zip(trial_ids(param_sets), param_sets, bases, strict=True):
            label = f"{name}-{tid}"
            run_vars = {**render_value(trial_vars, params, "sweep_trial_vars"),
                        **trial_run_vars(base, params, label=label, results_dir=os.path.join(results_dir, tid),
                                         placed=placed)}
            trials.append(Trial(id=tid, label=label, params=params, results_dir=os.path.join(results_dir, tid),
                                run_vars=run_vars))
        return trials

    @classmethod
    def _plan(cls, name: str, run_vars: dict[str, Any], param_sets: list[dict[str, Any]],
              trial_vars: dict[str, Any], results_dir: str,
              spec_path: str | None) -> tuple[list[dict[str, Any]], list[Trial]]:
        """Each trial's base run (checked against ``spec_path`` with its values, unless None) and the trials."""
        collisions = method_collisions(run_vars) + method_collisions(trial_vars, prefix="sweep_trial_vars.")
        if collisions:
            raise SweepSpecError("; ".join(collisions))
        # A parameter another variable names is placed there, not appended to the command as well.
        placed = named_params(trial_vars) | named_params({k: v for k, v in run_vars.items() if k != "run_command"})
        if spec_path:
            bases = cls._checked_bases(name, run_vars, param_sets, spec_path, placed)
        else:
            bases = [_without_prefix(run_vars)] * len(param_sets)
        return bases, cls._trials(name, bases, param_sets, results_dir, trial_vars, placed)

    def _run_variables(self, task_vars: dict[str, Any], names: Collection[str]) -> dict[str, Any]:
        """The play's run_* variables, templated with ``trial`` bound to placeholders (as sweep.yml binds it);
        ``names``: the sweep's parameters."""
        written = {name: task_vars[name] for name in task_vars if name.startswith("run_")}
        # As written, before templating: only there is {{ trial.lr * 2 }} told from {{ trial.lr }}, and a name
        # that is no parameter told from an error of Ansible's templating.
        scanned = {**written, **({"sweep_trial_vars": task_vars["sweep_trial_vars"]}
                                 if isinstance(task_vars.get("sweep_trial_vars"), Mapping) else {})}
        computed = trial_expressions(scanned, templated=is_trusted_as_template)
        if computed:
            raise SweepSpecError("; ".join(computed) + ". Only a parameter's own value can be placed, as "
                                 "{{ trial.NAME }} (or {{ trial.NAME | quote }}): give each trial the value it needs "
                                 "(sweep_trials, sweep_grid), or compute it in the trainer")
        wrong = trial_references(scanned, names, templated=is_trusted_as_template)
        if wrong:
            raise SweepSpecError("; ".join(wrong))
        return dict(self._templar.template(written))

    @staticmethod
    def _checked_bases(name: str, run_vars: dict[str, Any], param_sets: list[dict[str, Any]], spec_path: str,
                       placed: Collection[str] = ()) -> list[dict[str, Any]]:
        """Each trial's base run (names without ``run_``, defaults filled in), checked against train.meta.yml with
        the trial's own values: a run variable that names a parameter (``run_disk_gb: "{{ trial.disk }}"``) is
        held to its type and range as each trial fills it in, before anything is rented."""
        try:
            with open(spec_path, encoding="utf-8") as handle:
                spec = dict(yaml.safe_load(handle)["argument_specs"]["main"]["options"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise SweepSpecError(f"cannot read the run's contract {spec_path}: {exc}") from None
        if has_placeholder(run_vars.get("run_max_total_usd")):
            raise SweepSpecError("run_max_total_usd cannot name a trial parameter: every trial of the sweep has "
                                 "the same cap (sweep_budget_usd shares the budget)")
        if not str(run_vars.get("run_command") or "").strip():
            # Checked here: each trial's command gets its parameters appended, which would look like a command.
            raise SweepSpecError("run_command is missing (required: the training command the trials share, their "
                                 "parameters appended as --name value)")
        try:
            cap = float(run_vars.get("run_max_total_usd") or 0)
        except (TypeError, ValueError):
            cap = 0.0  # not a number: the contract check below says so
        if 0 < cap < MIN_TRIAL_USD:
            raise SweepSpecError(f"run_max_total_usd ${cap:g} is below ${MIN_TRIAL_USD:g}, the least a trial "
                                 "can cost (a minute of the cheapest GPU): no trial could start")
        where = os.path.basename(spec_path)
        bases: list[dict[str, Any]] = []
        per_trial: list[tuple[str, list[str]]] = []
        for tid, params in zip(trial_ids(param_sets), param_sets, strict=True):
            label = f"trial {tid} ({', '.join(f'{k}={v!r}' for k, v in params.items())})"
            try:
                filled = {key: render_value(value, params, key) for key, value in run_vars.items()
                          if key != "run_command"}
                filled["run_command"] = render_command(str(run_vars.get("run_command", "")), params, placed)
            except SweepSpecError as exc:  # a parameter this trial lacks: said with the trial, as the others
                per_trial.append((label, [str(exc)]))
                continue
            filled["run_name"] = f"{name}-{tid}"  # each trial's own, as the sweep gives it
            converted, errors = validated(filled, spec)
            errors = plain_errors(errors, filled, spec) + problems(filled, spec, where=where, converted=converted)
            per_trial.append((label, errors))
            base = _without_prefix(converted)
            # The command keeps its placeholders: the trial's parameters it does not name are appended to it.
            base["command"] = str(run_vars.get("run_command", ""))
            bases.append(base)
        everywhere = set.intersection(*(set(errors) for _label, errors in per_trial)) if per_trial else set()
        said = [error for error in per_trial[0][1] if error in everywhere] if per_trial else []
        said += [f"{label}: {error}" for label, errors in per_trial for error in errors if error not in everywhere]
        if said:
            more = f"; and {len(said) - MAX_ERRORS_SHOWN} more" if len(said) > MAX_ERRORS_SHOWN else ""
            raise SweepSpecError(f"{'; '.join(said[:MAX_ERRORS_SHOWN])}{more} (the base run is described in "
                                 f"{spec_path})")
        return bases

    @staticmethod
    def _plan_line(planned: dict[str, Any]) -> str:
        params = " ".join(f"{key}={value}" for key, value in planned["params"].items())
        return f"{planned['id']} {planned['label']}: {params}; {planned['command']}"

    @staticmethod
    def _reuse_completed(trials: list[Trial]) -> tuple[int, dict[str, list[str]]]:
        """A re-run skips what already completed with the same parameters and the same training (the command, the
        image, the code's source, its environment: sweep_plan.TRAINS); (how many were reused, {trial id: the
        variables that changed} for completed ones that run again)."""
        reused, retrained = 0, {}
        for trial in trials:
            try:
                with open(os.path.join(trial.results_dir, "trial.json"), encoding="utf-8") as handle:
                    earlier = json.load(handle)
            except (OSError, ValueError):
                continue
            row = earlier.get("row") if isinstance(earlier, dict) else None
            # The label too: a trial of another sweep's (its name changed) is not this one's result.
            same_params = (isinstance(earlier, dict) and earlier.get("params") == trial.params
                           and earlier.get("label", trial.label) == trial.label)
            if not (same_params and isinstance(row, dict) and row.get("outcome") == "completed"):
                continue
            changed = changed_training(earlier.get("trains"), training_digests(trial.run_vars))
            if changed:
                retrained[trial.id] = changed
                continue
            trial.state, trial.outcome, trial.row = "done", "completed", row
            trial.cost_usd = float(row.get("cost_usd") or 0)
            reused += 1
        return reused, retrained

    @staticmethod
    def _floor(base: dict[str, Any]) -> dict[str, Any]:
        """The least cap a trial starts with (sweep_scheduler.trial_floor), from the base run's price limit, poll
        interval and tail (train.meta.yml's defaults where it leaves them out)."""
        def number(name: str, default: float) -> float:
            try:
                return float(base.get(name) if base.get(name) is not None else default)
            except (TypeError, ValueError):  # a template the contract check refuses or the trial resolves
                return default

        floor, why = trial_floor(number("max_dph", 0.0), number("poll_interval_s", 30.0), number("tail_s", 60.0))
        return {"floor": floor, "floor_why": why}

    @staticmethod
    def _trial_timeout(base: dict[str, Any]) -> int:
        """How long one trial may take before it is stopped: its own limits, plus room for renting again."""
        runtime = int(base.get("max_runtime_s") or 0) or 24 * 3600
        rent = int(base.get("rent_budget_s") or 1800)
        smoke = int(base.get("smoke_timeout_s") or 600)
        recoveries = int((base.get("recovery") or {}).get("max_preemptions") or 0) + 1
        return runtime + recoveries * (rent + smoke) + 1800
