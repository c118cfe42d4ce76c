"""``mlops-vast``: train, sweep, status, teardown, reap and estimate from a terminal, with live progress.

Exit codes: 0 completed, 1 failed, 2 bad input or usage (nothing rented), 3 some trials of a sweep failed,
130 cancelled with Ctrl-C, 143 with SIGTERM, 129 when its terminal closed (each after tearing down what it started).

Without ``VAST_API_KEY`` / ``VAST_API_KEY_FILE`` / ``VAST_URL`` and without ``--api-url``, train and sweep run
against vastsim, the local simulator (started in ``.vastsim`` like scripts/demo.sh, stopped afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from mlops_vast import events as ev
from mlops_vast.inputs import (
    InputError,
    check_api_url,
    check_run,
    collection_module,
    collection_root,
    load_vars,
    search_defaults,
)
from mlops_vast.ledger import ledger_path as _ledger_path
from mlops_vast.ledger import open_contracts

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_CANCELLED = 0, 1, 2, 3, 130
OUTCOME_EXIT = {"completed": EXIT_OK, "failed": EXIT_FAILED, "partial": EXIT_PARTIAL, "cancelled": EXIT_CANCELLED}


def exit_code(outcome: str) -> int:
    """The process exit code for a result's outcome."""
    return OUTCOME_EXIT.get(outcome, EXIT_FAILED)


# ---------------------------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """argparse's parser, keeping what it found wrong (for --json, which must print JSON whatever happened); its
    subcommands' parsers are of this class too."""

    last_error: str | None = None

    def error(self, message: str) -> NoReturn:
        _Parser.last_error = message
        super().error(message)


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="mlops-vast", description="Train on rented Vast.ai GPUs (or on vastsim), "
                                  "with live progress; nothing left billing.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, api: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print machine-readable results only")
        if api:
            p.add_argument("--api-url", help="the Vast API (default VAST_URL, or vastsim when no key is set)")
            p.add_argument("--sim", action="store_true", help="run against vastsim, started in .vastsim")

    for name, what in (("train", "RUN.yml: a run's run_* variables (examples/run.yml)"),
                       ("sweep", "SWEEP.yml: sweep_* and the base run's run_* variables")):
        p = sub.add_parser(name, help=f"run playbooks/{name}.yml with live progress")
        p.add_argument("file", metavar="RUN.yml" if name == "train" else "SWEEP.yml", help=what)
        p.add_argument("-e", "--extra-var", action="append", default=[], metavar="NAME=VALUE",
                       help="override one variable (VALUE is read as YAML); @FILE: the variables of a YAML file; "
                       "'{...}': a JSON or YAML mapping of them")
        common(p)
    p = sub.add_parser("status", help="what is rented and billing now (the ledger and the account), and its cost")
    common(p)
    p = sub.add_parser("teardown", help="destroy what this controller rented (playbooks/teardown.yml)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--label", help="only the instances with this label (a run's name, a trial's label)")
    which.add_argument("--all", action="store_true", help="every open contract in the ledger")
    p.add_argument("--results-dir", metavar="DIR",
                   help="with --label: the run's results folder, where its newest sealed checkpoint and files come "
                        "home before the destroy (default: the folder under ./results whose run.json names the label)")
    p.add_argument("--no-pull", action="store_true", help="destroy at once, bringing nothing home")
    common(p)
    p = sub.add_parser("reap", help="destroy instances of ours that no live controller watches (playbooks/reap.yml)")
    p.add_argument("--check", action="store_true", help="list the orphans with their spend; destroy nothing")
    p.add_argument("--grace", type=float, metavar="SECONDS",
                   help="orphaned this long after the lease's last renewal (default: three promised intervals)")
    p.add_argument("--unledgered", action="store_true",
                   help="also other controllers' instances in no ledger here (only when no other one is running)")
    p.add_argument("--label-prefix", default="", help="only instances whose label starts with this")
    common(p)
    p = sub.add_parser("estimate", help="VRAM, RAM, disk, time and cost of a run before renting",
                       epilog=ESTIMATE_EXIT_CODES)
    p.add_argument("file", metavar="RUN.yml", help="a run with run_estimate (examples/run-estimate.yml)")
    p.add_argument("--offers", type=_offer_count, default=5, metavar="N",
                   help="price the N offers of the run's query cheapest by $/h (0: none)")
    common(p)
    return top


def _where(path: Path, overrides: dict[str, Any]) -> str:
    """Where a wrong value came from, as an error names it: the file, and the -e values that override it."""
    return f"{path} with -e {', '.join(sorted(overrides))}" if overrides else str(path)


def extra_vars(items: list[str]) -> dict[str, Any]:
    """``-e NAME=VALUE`` (VALUE read as YAML) and, as ansible-playbook takes them, ``-e @FILE`` (a YAML mapping) and
    ``-e '{"NAME": VALUE, ...}'`` (a JSON or YAML mapping written out)."""
    out: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            out.update(load_vars(item[1:], "extra variables")[0])
            continue
        if item.lstrip().startswith("{"):
            try:
                mapping = yaml.safe_load(item)
            except yaml.YAMLError as exc:
                # Where, not what: the value may hold a token (run_env).
                mark = getattr(exc, "problem_mark", None)
                where = f" at column {mark.column + 1}" if mark is not None else ""
                raise InputError(f"an -e mapping is not valid JSON or YAML{where}; write -e '{{\"name\": value}}', "
                                 "-e NAME=VALUE or -e @FILE") from None
            if not isinstance(mapping, dict):
                raise InputError("an -e value that starts with '{' must be a mapping of variable names to values")
            out.update({str(name): value for name, value in mapping.items()})
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"-e {item!r}: expected NAME=VALUE or @FILE")
        try:
            out[name.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out[name.strip()] = value
    return out


def wants_sim(args: argparse.Namespace, environ: dict[str, str] | None = None) -> bool:
    """vastsim unless an API is configured: --sim forces it; --api-url, VAST_API_KEY(_FILE) or VAST_URL rule it out."""
    environ = dict(os.environ if environ is None else environ)
    if getattr(args, "sim", False):
        return True
    if getattr(args, "api_url", None):
        return False
    return not any(environ.get(name) for name in ("VAST_API_KEY", "VAST_API_KEY_FILE", "VAST_URL"))


# ---------------------------------------------------------------------------------------------- display


def _money(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"${value:.{digits}f}"


def _loss(value: Any) -> str:
    """A loss for the table; what is not a number (a NaN the redaction made "nan", a string) as it is."""
    if value is None:
        return "-"
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


PROGRESS_EVERY_S = 10.0
REPEAT_WINDOW_S = 30.0


def _clock() -> float:
    return time.monotonic()


class Display:
    """One line per run or trial (phase, step/max, loss, $/h, spent, ETA), live in a terminal; plain lines
    otherwise; nothing with --json."""

    def __init__(self, title: str, *, json_mode: bool, console: Any = None) -> None:
        from rich.console import Console

        self.title = title
        self.json_mode = json_mode
        # No markup: run names, trainer lines in messages and parameters are shown as written ("[/INST]" is a chat
        # template's token, not a closing tag); this module styles its own words with Text.
        self.console = console or Console(stderr=False, highlight=False, markup=False, width=_pipe_width())
        self.live_mode = not json_mode and self.console.is_terminal
        self.rows: dict[str, dict[str, Any]] = {}
        self.note = ""
        self.started = time.time()
        self.live: Any = None
        # Plain lines (a pipe, a CI log): a run's progress every PROGRESS_EVERY_S at most (its last step at once, once),
        # and a warning not again right after itself.
        self.progress_said: dict[str, float] = {}
        self.last_step_said: set[str] = set()
        self.last_warning: dict[str, tuple[str, float]] = {}

    # rich calls this on every refresh
    def __rich__(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text.assemble(f"{self.title}  ", (ev.format_duration(time.time() - self.started), "dim")),
                      title_justify="left", caption=self.note or None, caption_justify="left", expand=False)
        for column, justify in (("run", "left"), ("phase", "left"), ("step", "right"), ("loss", "right"),
                                ("$/h", "right"), ("spent", "right"), ("ETA", "right")):
            table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for run, row in list(self.rows.items()):
            step = row.get("step")
            total = row.get("total")
            steps = "-" if step is None else f"{step}/{total}" if total else str(step)
            phase = row.get("phase", "-")
            if row.get("state") and row["state"] != "running":
                phase = f"{row['state']}" + (f" ({row['outcome']})" if row.get("outcome") else "")
            table.add_row(run, phase, steps, _loss(row.get("loss")), _money(row.get("dph"), 3),
                          _money(row.get("spent")), ev.format_duration(row.get("eta")))
        return table

    def __enter__(self) -> Display:
        if self.live_mode:
            from rich.live import Live

            self.live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def say(self, text: Any) -> None:
        """A message (a str, or a rich Text with its style) above the live table (stderr when --json)."""
        if self.json_mode:  # plain text: the style is for the terminal
            print(getattr(text, "plain", text), file=sys.stderr, flush=True)
        else:
            self.console.print(text)

    def on_event(self, event: ev.Event) -> None:
        row = self.rows.setdefault(event.run, {"phase": "queued"})
        if isinstance(event, ev.PhaseChanged):
            row["phase"] = event.phase
            # A queued trial has no phase yet, and a finished one's line is its state's, with the outcome.
            if not self.live_mode and not self.json_mode and row.get("state") != "queued" and event.phase != "done":
                task = _task_words(event.task)
                self.console.print(f"{event.run}: {event.phase}" + (f" ({task})" if task else ""))
        elif isinstance(event, ev.Progress):
            row.update(step=event.step, total=event.total, loss=event.loss, eta=event.eta_s)
            if not self.live_mode and not self.json_mode:
                self._say_progress(event.run, row)
        elif isinstance(event, ev.Spend):
            row.update(spent=event.spent_usd, dph=event.dph)
        elif isinstance(event, ev.TrialStateChanged):
            row.update(state=event.state, outcome=event.outcome)
            if not self.live_mode and not self.json_mode:
                self.console.print(f"{event.run}: {event.state}" + (f" ({event.outcome})" if event.outcome else ""))
        elif isinstance(event, ev.Warning):
            if not self.json_mode and self._first_time_warned(event.run, event.message):
                from rich.text import Text

                self.console.print(Text.assemble(("warning", "yellow"), f" {event.run}: {event.message}"))
        elif isinstance(event, ev.Finished):
            row["outcome"] = event.outcome
        if self.live is not None:
            self.live.refresh()

    def _say_progress(self, run: str, row: dict[str, Any]) -> None:
        """A plain progress line for a log reader: the first step seen, then at most every PROGRESS_EVERY_S, and
        the last step."""
        now = _clock()
        last = self.progress_said.get(run)
        step, total = row.get("step"), row.get("total")
        finished = step is not None and total is not None and step >= total and run not in self.last_step_said
        if last is not None and now - last < PROGRESS_EVERY_S and not finished:
            return
        self.progress_said[run] = now
        if finished:
            self.last_step_said.add(run)
        said = [f"step {step}/{total}" if total else f"step {step}"]
        if row.get("loss") is not None:
            said.append(f"loss {_loss(row['loss'])}")
        if row.get("spent") is not None:
            said.append(f"{_money(row['spent'])} spent" + (f" at {_money(row['dph'], 3)}/h" if row.get("dph") else ""))
        if row.get("eta") is not None and not finished:
            said.append(f"ETA {ev.format_duration(row['eta'])}")
        self.console.print(f"{run}: " + ", ".join(said))

    def _first_time_warned(self, run: str, message: str) -> bool:
        """False for a warning that repeats the run's previous one within REPEAT_WINDOW_S: a failed step's reason
        comes again in the step that stops the run on it ("Renting failed: <the same reason>"). A later loss with
        the same words is another event, and is said."""
        core = message.rstrip("…").strip()
        now = _clock()
        earlier, at = self.last_warning.get(run, ("", float("-inf")))
        self.last_warning[run] = (core, now)
        if now - at > REPEAT_WINDOW_S:
            return True
        # Short texts ("unreachable") only when equal: they are not one reason said twice, but any two failures.
        return not (core == earlier or (min(len(core), len(earlier)) >= 40 and (core in earlier or earlier in core)))


def _task_words(task: str | None) -> str:
    """A task's name as a plain progress line shows it: without its role (the phase says it) and without the
    name Ansible gives a role's argument check."""
    text = (task or "").split(" : ", 1)[-1]
    return "" if text.startswith("Validating arguments against arg spec") else text


def _plain(value: Any) -> Any:
    if hasattr(value, "as_dict") and is_dataclass(value) and not isinstance(value, type):  # a row as trials.json has it
        return _plain(value.as_dict())
    if is_dataclass(value) and not isinstance(value, type):
        return _plain({f.name: getattr(value, f.name) for f in fields(value)})
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):  # JSON has no NaN: a strict parser rejects it
        return None
    return value


def _pipe_width() -> int | None:
    """Without a terminal rich assumes 80 columns and cuts the tables' cells; a log or a pipe has no such limit."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return 200


def _print_json(data: Any) -> None:
    print(json.dumps(_plain(data), indent=2, sort_keys=True, default=str, allow_nan=False), flush=True)


# ---------------------------------------------------------------------------------------------- Ctrl-C


class Interrupts:
    """First Ctrl-C (or SIGTERM, or the terminal closing): cancel (the API stops the playbook and tears down).
    Second Ctrl-C: say it is still tearing down. Third: give up at once (KeyboardInterrupt). Only Ctrl-C counts
    towards giving up."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, display: Display, what: str) -> None:
        self.cancel = threading.Event()
        self.display = display
        self.what = what
        self.count = 0
        self.signum: int | None = None  # the signal that cancelled
        self.pending: list[Any] = []  # what the handler has to say, said by the main thread
        self.previous: dict[int, Any] = {}
        self.tty_fds = tuple(fd for fd in (1, 2) if os.isatty(fd))
        # Loaded now, not in the handler: the collection's own helper (plugins/plugin_utils/terminal.py).
        self.detach = collection_module(collection_root(), "terminal", "plugin_utils").detach_from_terminal

    def handler(self, signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of the main thread, which may hold rich's or a stream's lock
        # just then (and rich's refresh thread the other one): it only records. The main thread says it the next
        # time the API asks cancelled(); the live table's caption says it at its next refresh.
        if signum == signal.SIGHUP:
            # Nobody reads a closed terminal, and a write to it fails: the teardown must not die of that.
            self.detach(self.tty_fds)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if self.count and signum != signal.SIGINT:
            # Only a person at the terminal (Ctrl-C) may abandon the teardown: a closed terminal delivers SIGHUP more
            # than once, and wrappers relay SIGTERM.
            self._tell(f"{name}: still tearing down what the run rented")
            return
        self.count += 1
        if self.count == 1:
            self.signum = signum
            from rich.text import Text

            self.pending.append(Text.assemble(
                ("Cancelling", "bold red"), f" {self.what} ({name}): stopping the playbook, then destroying what it "
                "rented (this takes a little while; Ctrl-C twice more to abandon the teardown)"))
            self.display.note = "cancelling: stopping the playbook, then tearing down what it rented"
            self.cancel.set()
        elif self.count == 2:
            self._tell("Still tearing down; one more Ctrl-C abandons it (then run `mlops-vast teardown --all`)")
        else:
            raise KeyboardInterrupt

    def _tell(self, text: str) -> None:
        """From the handler: the live table's caption, or (without one) straight to the file descriptor, which takes
        no lock of Python's streams."""
        self.display.note = text
        if not self.display.live_mode:
            with contextlib.suppress(OSError):
                os.write(2, f"mlops-vast: {text}\n".encode(errors="replace"))

    def cancelled(self) -> bool:
        """What the API polls (in the main thread): whether to cancel; says first what the handler recorded."""
        while self.pending:
            self.display.say(self.pending.pop(0))
        return self.cancel.is_set()

    def exit_code(self, outcome: str) -> int:
        """The process's exit code: 128 + the signal for a run it cancelled (130 for Ctrl-C, 143 for SIGTERM)."""
        if outcome == "cancelled" and self.signum is not None:
            return 128 + self.signum
        return exit_code(outcome)

    def __enter__(self) -> Interrupts:
        for signum in self.SIGNALS:
            # A hangup ignored on entry (nohup) stays ignored. SIGINT is taken whatever it was: a shell starts a
            # script's background jobs with SIGINT ignored, and a Ctrl-C must still tear down what the run rented.
            if signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN:
                continue
            self.previous[signum] = signal.signal(signum, self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self.previous.items():
            default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
            signal.signal(signum, previous if previous is not None else default)


# ---------------------------------------------------------------------------------------------- commands


def _target(args: argparse.Namespace, display: Display) -> dict[str, Any]:
    if wants_sim(args):
        display.say("No Vast API key set (VAST_API_KEY): running against vastsim, the local simulator "
                    "(.vastsim/); set VAST_API_KEY or --api-url for Vast.ai")
        return {"sim": True}
    return {"api_url": args.api_url} if args.api_url else {}


def cmd_train(args: argparse.Namespace) -> int:
    from mlops_vast import api

    data, path = load_vars(args.file, "run")
    overrides = extra_vars(args.extra_var)
    name = check_run({**data, **overrides}, collection_root(), _where(path, overrides))
    display = Display(f"mlops-vast train {name}", json_mode=args.json)
    target = _target(args, display)
    with display, Interrupts(display, f"run {name}") as interrupts:
        result = api.train(path or data, on_event=display.on_event, cancel=interrupts.cancelled,
                           extra_vars=overrides, **target)
    if args.json:
        _print_json(result)
    else:
        _final_run_table(display, result)
    return interrupts.exit_code(result.outcome)


def _final_run_table(display: Display, result: Any) -> None:
    from rich.table import Table

    table = Table(title=f"run {result.name}: {result.outcome}", title_justify="left")
    for column in ("outcome", "watch", "steps", "loss", "cost", "attempts", "checkpoints", "results"):
        table.add_column(column)
    # A run cancelled (or failed) before its watch reported has only what the live table last showed.
    live = display.rows.get(result.name, {})
    step = result.triage.get("step", live.get("step"))
    loss = result.triage.get("loss", live.get("loss"))
    cost = result.cost_usd if result.cost_usd is not None else live.get("spent")
    table.add_row(result.outcome, str(result.watch_outcome or "-"), "-" if step is None else str(step),
                  _loss(loss), _money(cost), str(result.attempts), str(len(result.checkpoints)),
                  str(result.results_dir))
    display.console.print(table)
    if result.outcome != "completed" and result.message:
        display.console.print(result.message)


def cmd_sweep(args: argparse.Namespace) -> int:
    from mlops_vast import api
    from mlops_vast.inputs import check_sweep

    data, path = load_vars(args.file, "sweep")
    overrides = extra_vars(args.extra_var)
    name = check_sweep({**data, **overrides}, collection_root(), _where(path, overrides))
    display = Display(f"mlops-vast sweep {name}", json_mode=args.json)
    target = _target(args, display)
    with display, Interrupts(display, f"sweep {name}") as interrupts:
        result = api.sweep(path or data, on_event=display.on_event, cancel=interrupts.cancelled,
                           extra_vars=overrides or None, **target)
    if args.json:
        _print_json(result)
    else:
        _final_sweep_table(display, result)
    return interrupts.exit_code(result.outcome)


def _final_sweep_table(display: Display, result: Any) -> None:
    from rich.table import Table

    budget = f" of {_money(result.budget_usd)}" if result.budget_usd else " (no shared budget)"
    table = Table(title=f"sweep {result.name}: {result.outcome} ({result.message}); spent "
                  f"{_money(result.spent_usd)}{budget}", title_justify="left")
    for column in ("trial", "params", "outcome", "final loss", "best loss", "steps", "cost", "attempts", "time"):
        table.add_column(column)
    for row in result.trials:
        params = " ".join(f"{k}={v}" for k, v in (row.params or {}).items())
        table.add_row(row.id, params, str(row.outcome), _loss(row.final_loss), _loss(row.best_loss),
                      "-" if row.steps is None else str(row.steps), _money(row.cost_usd), str(row.attempts or "-"),
                      ev.format_duration(row.duration_s))
    display.console.print(table)


def _api_env(args: argparse.Namespace) -> tuple[dict[str, str], str | None, Any]:
    """The environment for status/teardown: the configured API, or the vastsim serving .vastsim (if any)."""
    env = dict(os.environ)
    if args.api_url:
        env["VAST_URL"] = args.api_url
    url = env.get("VAST_URL")
    # As train and sweep say it, before anything; vastsim (--sim) brings its own URL.
    if not wants_sim(args):
        check_api_url(url, "--api-url" if args.api_url else "VAST_URL")
    sim = None
    if wants_sim(args):
        from mlops_vast.sim import harness
        from mlops_vast.simulator import DEFAULT_WORKDIR, LocalSim

        workdir = Path(DEFAULT_WORKDIR).resolve()
        found = harness.find(workdir / "state")
        env.setdefault("MLOPS_VAST_LEDGER", str(workdir / "contracts.jsonl"))
        if found is not None and found.url:
            sim = LocalSim(url=found.url, api_key=found.api_key, workdir=workdir, started=False)
            env.update(sim.env(env))
            env["VAST_API_KEY"] = found.api_key
        else:
            return env, None, None
    return env, env.get("VAST_URL") or "https://console.vast.ai", sim


def instance_spend(row: dict[str, Any], now: float | None = None) -> tuple[float | None, float | None]:
    """($ so far, $/h now) of an instance row, as Vast bills: GPU (dph_base) while running, storage since created."""
    now = time.time() if now is None else now
    try:
        gpu = float(row.get("uptime_mins") or 0) / 60 * float(row.get("dph_base") or 0)
        age_h = max(0.0, now - float(row.get("start_date") or now)) / 3600
        storage = age_h * float(row.get("storage_total_cost") or 0)
        rate = float(row["dph_total"]) if row.get("dph_total") is not None else None
    except (TypeError, ValueError):
        return None, None
    return round(gpu + storage, 4), rate


def cmd_status(args: argparse.Namespace) -> int:
    from mlops_vast import _keys

    env, api_url, _sim = _api_env(args)
    ledger = _ledger_path(env)
    contracts = open_contracts(ledger, api_url)
    instances: list[dict[str, Any]] | None = None
    problem = None
    key: str | None = None
    if api_url:
        try:
            key = _keys.resolve_api_key(env)
        except OSError as exc:
            key, problem = None, str(exc)
        if key:
            import httpx

            try:
                response = httpx.get(f"{api_url.rstrip('/')}/api/v0/instances/", params={"owner": "me"},
                                     headers={"Authorization": f"Bearer {key}"}, timeout=30)
                response.raise_for_status()
                instances = response.json().get("instances") or []
            except (httpx.HTTPError, ValueError) as exc:
                problem = f"the account could not be read at {api_url}: {_http_problem(exc)}"
        elif problem is None:
            problem = "no API key: only the ledger is shown"
    else:
        problem = "no API configured and no vastsim serving .vastsim: only the ledger is shown"
    rows = []
    in_ledger = {int(c["id"]) for c in contracts}
    for row in instances or []:
        spent, rate = instance_spend(row)
        rows.append({"id": row.get("id"), "label": row.get("label"), "status": row.get("actual_status"),
                     "gpu": row.get("gpu_name"), "dph": rate, "spent_usd": spent,
                     "in_ledger": int(row.get("id") or 0) in in_ledger})
    # Every instance of the account bills (a stopped one its storage) until it is destroyed.
    total_rate = round(sum(r["dph"] or 0 for r in rows), 4) if instances is not None else None
    total_spent = round(sum(r["spent_usd"] or 0 for r in rows), 4) if instances is not None else None
    known = {r["id"] for r in rows}
    cost, cost_problem = _ledger_cost(ledger, api_url, key) if instances is not None else (None, None)
    summary = {"api_url": api_url, "ledger": str(ledger), "open_contracts": contracts,
               "open_not_in_account": [c["id"] for c in contracts if instances is not None and c["id"] not in known],
               "instances": rows if instances is not None else None, "billing_dph": total_rate,
               "spent_usd": total_spent, "cost": cost, "note": "; ".join(filter(None, (problem, cost_problem)))
               or None}
    # Unknown is not "nothing billing": a script must be able to tell the two apart.
    code = EXIT_FAILED if api_url and instances is None else EXIT_OK
    if args.json:
        _print_json(summary)
        return code
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, markup=False, width=_pipe_width())
    console.print(f"ledger {ledger}: {len(contracts)} open contract(s)"
                  + (f": {', '.join(str(c['id']) + ' (' + str(c.get('label') or '') + ')' for c in contracts)}"
                     if contracts else ""))
    if instances is not None:
        table = Table(title=f"account at {api_url}: {len(rows)} instance(s), billing {_money(total_rate, 3)}/h now, "
                      f"{_money(total_spent)} spent by them so far", title_justify="left")
        for column in ("id", "label", "status", "gpu", "$/h", "spent", "in ledger"):
            table.add_column(column)
        for r in rows:
            table.add_row(str(r["id"]), str(r["label"] or "-"), str(r["status"]), str(r["gpu"] or "-"),
                          _money(r["dph"], 3), _money(r["spent_usd"]), "yes" if r["in_ledger"] else "no")
        console.print(table)
        if summary["open_not_in_account"]:
            console.print(f"in the ledger but not in the account (gone): {summary['open_not_in_account']}")
        if cost is not None:
            console.print(f"what this controller rented in the last {COST_DAYS} days ({cost['contracts']} contract(s) "
                          f"in the ledger) cost {_money(cost['total_usd'])} by the account's charges (GPU "
                          f"{_money(cost['gpu_usd'])}, storage {_money(cost['storage_usd'])}, bandwidth "
                          f"{_money(cost['bandwidth_usd'])})")
    if summary["note"]:
        console.print(summary["note"])
    return code


COST_DAYS = 30  # how far back status adds up the charges of the ledger's contracts


def _ledger_cost(ledger: Path, api_url: str, key: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """What the contracts the ledger recorded on this API in the last COST_DAYS days cost, by the account's charges
    (GET /api/v0/charges/), or why that could not be read."""
    root = collection_root()
    spend = collection_module(root, "account_spend")
    now = time.time()
    ids, first = spend.ledger_history(str(ledger), None, api_url, since=now - COST_DAYS * 86400)
    if not ids:
        return {"contracts": 0, "since": now - COST_DAYS * 86400, "total_usd": 0.0, "gpu_usd": 0.0,
                "storage_usd": 0.0, "bandwidth_usd": 0.0}, None
    client_module = collection_module(root, "api_client")
    errors = collection_module(root, "errors")
    try:
        client = client_module.VastClient(key, api_url, deadline=collection_module(root, "waiting").Deadline(60))
        rows = spend.charges(client, spend.charge_window(first, 0.0, now), now)
    except (errors.VastError, ValueError) as exc:
        return None, f"the account's charges could not be read: {exc}"
    totals = spend.run_spend(rows, ids, "")
    return {"contracts": len(ids), "since": first, **{k: totals[k] for k in (
        "total_usd", "gpu_usd", "storage_usd", "bandwidth_usd")}}, None


def _http_problem(exc: Exception) -> str:
    """Why a request failed, in words: the API's status and message, or what kept the connection from working."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        detail = ""
        with contextlib.suppress(ValueError, AttributeError):
            body = exc.response.json()
            detail = str(body.get("msg") or body.get("error") or "") if isinstance(body, dict) else ""
        hint = " (is the API key right?)" if exc.response.status_code in (401, 403) else ""
        return f"HTTP {exc.response.status_code}{': ' + detail if detail else ''}{hint}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc or 'connection refused'})"
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return f"not a usable URL ({exc})"
    if isinstance(exc, ValueError):
        return "the answer was not JSON"
    return f"{type(exc).__name__}: {exc}"


def _api_key(env: dict[str, str]) -> str | None:
    """The key as the collection finds it; a key file named but unreadable is bad input (exit 2), said as such."""
    from mlops_vast import _keys

    try:
        return _keys.resolve_api_key(env)
    except OSError as exc:
        raise InputError(str(exc)) from None


def _say_warning(event: ev.Event) -> None:
    if isinstance(event, ev.Warning):
        print(f"mlops-vast: {event.run}: {event.message}", file=sys.stderr)


def run_playbook(playbook: Path, env: dict[str, str], key: str | None,
                 extra: list[str]) -> subprocess.CompletedProcess[str]:
    """Run one of the collection's playbooks with this Python's ansible-playbook and the collection's ansible.cfg.

    The key reaches the modules through a 0600 file named in the environment, never in argv or extravars;
    the file is gone when this returns. Output is captured whole, for the caller to keep or quote.
    """
    from mlops_vast import _keys

    with contextlib.ExitStack() as stack:
        key_file = stack.enter_context(_keys.KeyFile(key)) if key else None
        run_env = _keys.scrub_env(env, key_file.path if key_file else None)
        run_env["ANSIBLE_CONFIG"] = str(collection_root() / "ansible.cfg")
        run_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{run_env.get('PATH', '')}"
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), *extra]
        return subprocess.run(argv, env=run_env, stdin=subprocess.DEVNULL, text=True, capture_output=True)


def cmd_teardown(args: argparse.Namespace) -> int:
    if args.label is not None and not args.label.strip():
        # Empty, it would read as no label at all: teardown.yml would destroy everything the ledger lists.
        raise InputError("--label must not be empty: give the run's label (mlops-vast status lists them), or --all")
    if args.results_dir and not args.label:
        raise InputError("--results-dir names one run's folder: give it with --label")
    if args.results_dir:
        _run_folder(args.results_dir)  # said before anything is asked or torn down
    env, api_url, _sim = _api_env(args)
    if api_url is None:
        contracts = open_contracts(_ledger_path(env))
        print("mlops-vast: no API configured (VAST_API_KEY / --api-url) and no vastsim serving .vastsim"
              + (f"; the ledger still lists {len(contracts)} open contract(s)" if contracts else ": nothing to do"),
              file=sys.stderr)
        return EXIT_FAILED if contracts else EXIT_OK
    root = collection_root()
    ledger = _ledger_path(env)
    before = [c for c in open_contracts(ledger, api_url) if args.all or c.get("label") == args.label]
    if args.label and not before and not args.json:
        # Not an error: the account may still hold an instance of that label that this ledger never saw.
        print(f"mlops-vast: no open contract labelled {args.label!r} in the ledger {ledger}; asking the account",
              file=sys.stderr)
    key = _api_key(env)
    home = {} if args.no_pull or not key else _bring_home(args, before, env, key)
    kept = sorted(label for label, record in home.items() if record["kept"])
    done = None
    reap: dict[str, Any] = {}
    log: Path | None = None
    if not (args.label and kept):  # a run whose checkpoint could not be verified keeps its (stopped) instance
        with tempfile.TemporaryDirectory(prefix="mlops-vast-teardown-") as scratch:
            report = Path(scratch) / "reap.json"
            chosen = {"teardown_label": args.label} if args.label else {"teardown_spare": kept} if kept else {}
            if not args.json:
                print("mlops-vast: destroying " + (f"the instances labelled {args.label!r}" if args.label else
                      "everything this controller rented") + ", then asking the account that nothing is billing",
                      flush=True)
            done = run_playbook(root / "playbooks" / "teardown.yml", env, key,
                                ["-e", json.dumps({**chosen, "teardown_report": str(report)})])
            with contextlib.suppress(OSError, ValueError):
                reap = json.loads(report.read_text())
        log = _keep_log(ledger.parent / "teardown.log", done.stdout + done.stderr)
    still = {c["id"] for c in open_contracts(ledger, api_url)}
    closed = [{"id": c["id"], "label": c.get("label")} for c in before if c["id"] not in still]
    ok = (done is None or done.returncode == 0) and all(record["ok"] for record in home.values())
    reaped = [{"id": o["id"], "label": o.get("label")} for o in reap.get("reaped", [])]
    stopped = [{"id": k["id"], "label": k.get("label"), "why": k.get("why")} for k in reap.get("kept", [])]
    if args.json:
        _print_json({"label": args.label, "all": args.all, "rc": None if done is None else done.returncode,
                     "outcome": "completed" if ok else "failed", "destroyed": closed, "reaped": reaped,
                     "kept_stopped": stopped, "still_open": sorted(still & {c["id"] for c in before}),
                     "brought_home": home})
        return EXIT_OK if ok else EXIT_FAILED
    for label, record in home.items():
        if not record["ok"] and not record["kept"]:
            print(f"mlops-vast: {label}: its data could not be brought home (see {record['log']}); it is destroyed "
                  "below without it", file=sys.stderr)
        elif record["ok"]:
            newest = record.get("newest_checkpoint")
            if record.get("host_reachable") is False:
                said = f"the host did not answer; {record['may_lose'] or 'nothing new came home'}"
            else:
                said = (f"newest sealed checkpoint {newest} verified and home" if newest
                        else "no sealed checkpoint on the host") + ", with the run's files"
            print(f"mlops-vast: {label}: {said} (in {record['results_dir']})")
        else:
            print(f"mlops-vast: {label}: its data could not be brought home and verified; the instance is kept "
                  f"(stopped) with its data. See {record['log']}; to give the data up: "
                  f"mlops-vast teardown --label {label} --no-pull", file=sys.stderr)
    if closed:
        print(f"mlops-vast: destroyed and closed in the ledger: {_ids(closed)}")
    if reaped:
        print(f"mlops-vast: destroyed too, in no ledger here but marked as this controller's: {_ids(reaped)}")
    if done is not None and done.returncode != 0:
        where = f"its whole output: {log}" if log else f"its last lines: {(done.stdout + done.stderr)[-1500:]}"
        print(f"mlops-vast: the teardown failed: {_why_failed(done)} ({where}); run it again, or see what still bills "
              "with mlops-vast status", file=sys.stderr)
    elif done is not None:
        spared = sorted(set(kept) | {str(k["label"]) for k in stopped})
        print("mlops-vast: the account says nothing " + (f"labelled {args.label!r}" if args.label else
              "this controller rented") + " is billing" + (", but for the instances kept stopped with data that "
              f"could not be verified, which bill their disk: {', '.join(spared)}" if spared else ""))
    return EXIT_OK if ok else EXIT_FAILED


def _ids(contracts: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['id']} ({c.get('label') or ''})" for c in contracts)


def _keep_log(path: Path, text: str) -> Path | None:
    """The playbook's whole output, for when something went wrong (the terminal gets what it did, or why not);
    None when it cannot be written there."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        return None
    return path


def _run_folder(given: str) -> Path:
    folder = Path(given).expanduser().resolve()
    if not (folder / "run.json").is_file():
        raise InputError(f"--results-dir {given} has no run.json (train.yml writes it there): it says where the run "
                         "keeps its checkpoints on the host; give the run's own results folder")
    return folder


def _bring_home(args: argparse.Namespace, contracts: list[dict[str, Any]], env: dict[str, str],
                key: str) -> dict[str, dict[str, Any]]:
    """The runs whose results folder is known (``--results-dir``, or found under ./results): each one's data home,
    the newest sealed checkpoint verified, and its instance destroyed (playbooks/teardown.yml through the
    inventory); {label: what came home}."""
    from mlops_vast import api

    if args.results_dir:
        folders = {args.label: _run_folder(args.results_dir)}
    else:
        # Only runs this controller still holds open: a folder alone says nothing of what still bills.
        labels = {c["label"] for c in contracts if c.get("label")}
        folders = api.run_folders(Path("results").resolve(), labels)
        missing = sorted(labels - set(folders))
        if missing and not args.json:
            print(f"mlops-vast: no results folder with a run.json for {', '.join(missing)} under ./results: "
                  "destroyed without bringing anything home (run this where the run was started, or give "
                  "--label with --results-dir; --no-pull says you mean it)", file=sys.stderr)
    if not folders:
        return {}
    if not args.json:
        print("mlops-vast: bringing home the newest sealed checkpoint and the files of "
              + ", ".join(f"{label} (into {folder})" for label, folder in folders.items()) + " before destroying",
              file=sys.stderr)
    began = time.time()
    outcome = api.teardown_runs(folders, env=env, cwd=Path.cwd(), api_key=key,
                                on_event=None if args.json else _say_warning)
    home: dict[str, dict[str, Any]] = {}
    for label, folder in folders.items():
        record = ev.read_json(folder / "teardown.json") or {}
        if not api._written_since(folder / "teardown.json", began):
            record = {}  # an earlier teardown's: this one did not get as far as its record
        log = folder / f"teardown-{label}.log"
        # Kept only where the role said so (a checkpoint it could not verify: the instance stopped, its data kept);
        # any other failure is destroyed below, as if nothing had been pulled.
        kept = not outcome.get(label) and "the instance is stopped, not destroyed" in (api._read_text(log) or "")
        home[label] = {"ok": bool(outcome.get(label)), "kept": kept, "results_dir": str(folder),
                       "newest_checkpoint": record.get("newest_checkpoint"),
                       "checkpoints_verified": record.get("checkpoints_verified"),
                       "host_reachable": record.get("host_reachable"), "may_lose": record.get("may_lose") or "",
                       "log": str(folder / f"teardown-{label}.log")}
    return home


def _why_failed(done: subprocess.CompletedProcess[str]) -> str:
    """A failed playbook's reason in one line: its last error (Ansible's own go to stderr), not its whole output."""
    said = f"{done.stdout}\n{done.stderr}"
    lines = [line for line in said.splitlines() if '"msg"' in line or line.startswith(("fatal", "[ERROR]", "ERROR!"))]
    last = (lines or [said.strip()[-500:] or f"ansible-playbook exited {done.returncode}"])[-1].strip()
    if "=> {" in last:  # fatal: [host]: FAILED! => {...}: the module's own msg is the reason
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return str(json.loads(last.split("=> ", 1)[1])["msg"])
    return last


def cmd_reap(args: argparse.Namespace) -> int:
    if args.grace is not None and not 0 <= args.grace <= 2592000:
        raise InputError(f"--grace must be between 0 and 2592000 seconds (30 days), got {args.grace:g}")
    env, api_url, _sim = _api_env(args)
    if api_url is None:
        print("mlops-vast: no API configured (VAST_API_KEY / --api-url) and no vastsim serving .vastsim: "
              "nothing to reap", file=sys.stderr)
        return EXIT_FAILED
    root = collection_root()
    key = _api_key(env)
    with tempfile.TemporaryDirectory(prefix="mlops-vast-reap-") as scratch:
        report = Path(scratch) / "reap.json"
        reap_vars = {"reap_unledgered": args.unledgered, "reap_label_prefix": args.label_prefix,
                     "reap_report": str(report)}
        if args.grace is not None:
            reap_vars["reap_lease_grace_s"] = args.grace
        done = run_playbook(root / "playbooks" / "reap.yml", env, key,
                            ["-e", json.dumps(reap_vars), *(["--check"] if args.check else [])])
        result = json.loads(report.read_text()) if report.exists() else None
    if args.json:
        _print_json({"rc": done.returncode, "check": args.check, "result": result})
    elif result is None:
        print(f"mlops-vast: the reaper failed: {_why_failed(done)}", file=sys.stderr)
    else:
        for orphan in result.get("orphans", []):
            print(f"orphan {orphan['id']} ({orphan['label']}, {orphan['source']}): "
                  f"{_money(orphan['spent_usd'])} spent; {orphan['why']}")
        print(("check mode: " if args.check else "") + str(result.get("msg")))
    return EXIT_OK if done.returncode == 0 else EXIT_FAILED


ESTIMATE_PLAY = """\
- name: Estimate a run
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Estimate the job
      mlops.vast.estimate:
        job: "{{ run_estimate }}"
        disk_gb: "{{ run_disk_gb | float }}"
        query: "{{ run_query }}"
        max_total_usd: "{{ run_max_total_usd | float if run_max_total_usd | default(0) | float > 0 else omit }}"
      register: estimate_job
    - name: Read the machines excluded by earlier runs (train.yml never rents them)
      mlops.vast.machine_exclusions:
      register: estimate_exclusions
      when: estimate_offers | int > 0
    - name: Search the offers that meet the floors, as train.yml does
      mlops.vast.vast_offer:
        query: "{{ estimate_job.query }}"
        order: "{{ run_order }}"
        storage: "{{ run_disk_gb }}"
        exclude_machines: "{{ estimate_exclusions.machine_ids }}"
        max_dph: "{{ run_max_dph if run_max_dph | float > 0 else omit }}"
        limit: "{{ estimate_offers | int }}"
      register: estimate_market
      when: estimate_offers | int > 0
    - name: Price the job on them
      mlops.vast.estimate:
        job: "{{ run_estimate }}"
        disk_gb: "{{ run_disk_gb | float }}"
        offers: "{{ estimate_market.offers }}"
        max_total_usd: "{{ run_max_total_usd | float if run_max_total_usd | default(0) | float > 0 else omit }}"
      register: estimate_priced
      when: estimate_offers | int > 0
    - name: Keep the result
      ansible.builtin.copy:
        dest: "{{ estimate_out }}"
        # A skipped task registers too: only a search that ran priced anything.
        content: "{{ {'job': estimate_job,
          'priced': estimate_priced if estimate_offers | int > 0 else none} | to_json }}"
        mode: "0600"
"""


def cmd_estimate(args: argparse.Namespace) -> int:
    root = collection_root()
    data, path = load_vars(args.file, "run")
    check_run(data, root, str(path), complete=False)  # an estimate needs no command
    if not data.get("run_estimate"):
        raise InputError(f"{path}: run_estimate is empty: describe the job there (examples/run-estimate.yml)")
    if args.offers and wants_sim(args):
        args.sim = True
    sim = None
    if args.offers and args.sim:
        from mlops_vast import simulator

        sim = simulator.start()
    try:
        with tempfile.TemporaryDirectory(prefix="mlops-vast-estimate-") as scratch:
            env = dict(os.environ)
            if sim is not None:
                env.update(sim.env())
                env["VAST_API_KEY"] = sim.api_key
            elif args.api_url:
                env["VAST_URL"] = args.api_url
            play = Path(scratch) / "estimate.yml"
            play.write_text(ESTIMATE_PLAY)
            out = Path(scratch) / "estimate.json"
            # train.yml's defaults first (the run file's own values override them): the same query, order,
            # disk and price limit as the run it estimates, not the whole market.
            done = run_playbook(play, env, _api_key(env) if args.offers else None,
                                ["-e", json.dumps(search_defaults(root)), "-e", f"@{path}",
                                 "-e", json.dumps({"estimate_out": str(out), "estimate_offers": args.offers})])
            if not out.exists():
                print(f"mlops-vast: the estimate failed: {_why_failed(done)}", file=sys.stderr)
                return EXIT_FAILED
            result = json.loads(out.read_text())
    finally:
        if sim is not None:
            sim.stop()
    budget = _run_budget(data)
    if args.json:
        _print_json(result)
    else:
        _print_estimate(result, budget)
    return EXIT_OK if estimate_verdict(result, budget)[0] else EXIT_FAILED


ESTIMATE_EXIT_CODES = ("exit codes: 0 an offer fits the job (within run_max_total_usd, when the run sets it), or no "
                       "offers were priced (--offers 0); 1 train would refuse the run: no priced offer fits the job "
                       "within the budget (or the budget is set without max_steps or train_tokens to price the run), "
                       "or the estimate itself failed; 2 bad input or usage")


def _offer_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of offers, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no offers priced) or more, got {value}")
    return value


def _run_budget(data: dict[str, Any]) -> float:
    """The run's run_max_total_usd (0: none), as ESTIMATE_PLAY reads it."""
    try:
        return max(0.0, float(data.get("run_max_total_usd") or 0))
    except (TypeError, ValueError):
        return 0.0


def estimate_verdict(result: dict[str, Any], budget: float) -> tuple[bool, str]:
    """Whether train would rent for this estimate (it refuses as roles/provision/tasks/estimate.yml does: no offer
    fits the job, or none within the budget), and one line that says so. Without offers priced, nothing refuses."""
    job = result.get("job") or {}
    priced = result.get("priced")
    money = f"run_max_total_usd ${budget:g}"
    if budget > 0 and not job.get("steps"):
        return False, (f"budget {money}, but run_estimate gives neither max_steps nor train_tokens: the run's cost "
                       "cannot be estimated, and train would refuse it")
    if not isinstance(priced, dict):
        return True, (f"budget {money}: no offers priced (--offers 0), so whether one fits within it is unknown"
                      if budget > 0 else "no offers priced (--offers 0)")
    fitting = [offer for offer in priced.get("offers") or [] if offer.get("fits")]
    if not fitting:
        return False, "no offer fits the job: train would refuse the run"
    if budget <= 0:
        return True, f"{len(fitting)} offer(s) fit the job; the run has no budget (run_max_total_usd)"
    within = [offer for offer in fitting if offer.get("within_budget")]
    if not within:
        cheapest = min(fitting, key=lambda offer: (offer.get("cost_usd") or {}).get("opt") or 0)
        least = (cheapest.get("cost_usd") or {}).get("opt")
        return False, (f"budget {money}: no offer fits within it; the cheapest fitting one (offer "
                       f"{cheapest.get('id')}) would cost at least ${least}: train would refuse the run (raise the "
                       "budget or shorten the run)")
    at_risk = sum(1 for offer in within if offer.get("budget_at_risk"))
    return True, (f"budget {money}: {len(within)} of {len(fitting)} fitting offer(s) within it (optimistic cost)"
                  + (f"; {at_risk} may pass it (pessimistic), where the watch stops the run at the budget"
                     if at_risk else ""))


def _budget_cell(offer: dict[str, Any]) -> Any:
    from rich.text import Text

    if not offer.get("within_budget"):
        return Text("over", style="red")
    return Text("at risk", style="yellow") if offer.get("budget_at_risk") else Text("within", style="green")


def _print_estimate(result: dict[str, Any], budget: float = 0.0) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False, markup=False, width=_pipe_width())
    job = result["job"]

    def rng(value: Any, unit: str) -> str:
        if isinstance(value, dict):
            return f"{value.get('opt')} / {value.get('base')} / {value.get('pess')} {unit}"
        return f"{value} {unit}"

    table = Table(title="the job (optimistic / base / pessimistic)", title_justify="left")
    table.add_column("what")
    table.add_column("estimate")
    for label, key, unit in (("GPU memory (nvidia-smi, per GPU)", "gpu_mem_device_gib", "GiB"),
                             ("system RAM", "ram_gib", "GiB"), ("disk", "disk_gb", "GB")):
        if key in job:
            table.add_row(label, rng(job[key], unit))
    if job.get("steps"):
        table.add_row("steps", str(job["steps"]))
    if job.get("floors_query"):
        table.add_row("query floors", str(job["floors_query"]))
    console.print(table)
    priced = result.get("priced") or {}
    offers = priced.get("offers") or []
    if offers:
        title = f"offers ({priced.get('fitting', 0)} of {len(offers)} fit"
        if budget > 0:
            within = sum(1 for offer in offers if offer.get("fits") and offer.get("within_budget"))
            title += f"; {within} within the budget ${budget:g}"
        table = Table(title=title + ")", title_justify="left")
        for column in ("offer", "gpu", "fits", "hours", "cost", *(("budget",) if budget > 0 else ()), "why not"):
            table.add_column(column)
        for offer in offers:
            why_not = list(offer.get("reasons") or [])
            if budget > 0 and not offer.get("within_budget"):
                why_not.append(f"over the budget ${budget:g} (at least ${(offer.get('cost_usd') or {}).get('opt')})")
            table.add_row(str(offer.get("id")), str(offer.get("gpu_name")), "yes" if offer.get("fits") else "no",
                          rng(offer.get("hours"), "h"), rng(offer.get("cost_usd"), "$"),
                          *((_budget_cell(offer),) if budget > 0 else ()), "; ".join(why_not) or "-")
        console.print(table)
    for caveat in job.get("caveats") or []:
        console.print(Text.assemble(("caveat", "yellow"), f" {caveat}"))
    fits, line = estimate_verdict(result, budget)
    console.print(line if fits else Text(line, style="bold red"))


COMMANDS = {"train": cmd_train, "sweep": cmd_sweep, "status": cmd_status, "teardown": cmd_teardown,
            "reap": cmd_reap, "estimate": cmd_estimate}


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        # argparse has said what was wrong (usage on stderr); a script that asked for --json still gets JSON.
        if exc.code not in (0, None) and "--json" in given:
            _print_json({"outcome": "error", "exit_code": EXIT_USAGE,
                         "error": f"usage: {_Parser.last_error or 'see the message on stderr'}"})
        raise

    def fail(code: int, message: str) -> int:
        print(f"mlops-vast: {message}", file=sys.stderr)
        if getattr(args, "json", False):  # a script reading stdout gets JSON whatever happened
            _print_json({"outcome": "error", "exit_code": code, "error": message})
        return code

    try:
        return COMMANDS[args.command](args)
    except InputError as exc:
        return fail(EXIT_USAGE, f"error: {exc}")
    except KeyboardInterrupt:
        return fail(EXIT_CANCELLED, "interrupted; what may still be rented: `mlops-vast status`, "
                                    "`mlops-vast teardown --all`")
    except Exception as exc:
        if os.environ.get("MLOPS_VAST_DEBUG"):
            raise
        return fail(EXIT_FAILED, f"error: {type(exc).__name__}: {exc} (MLOPS_VAST_DEBUG=1 shows the traceback)")


if __name__ == "__main__":
    sys.exit(main())
