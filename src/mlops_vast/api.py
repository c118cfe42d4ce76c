"""The Python API: ``train(run)`` and ``sweep(sweep)`` run playbooks/train.yml and playbooks/sweep.yml through
ansible-runner and return typed results; ``on_event`` gets typed progress events as the run goes; ``cancel``
(a ``threading.Event`` or a callable returning True) stops the run and tears down what it rented.

How a run is started:

- ansible-runner's private data directory is ``<results_dir>/runner`` (artifacts: the job events, stdout, the
  status), the working directory is the caller's (relative paths in a run mean what they mean to
  ``ansible-playbook`` run from there), ``ANSIBLE_CONFIG`` is the collection's ansible.cfg.
- The API key is never in the environment ansible-runner records (``artifacts/<id>/command``): it goes into a
  0600 file in a private temporary directory outside the private data directory, the run gets only
  ``VAST_API_KEY_FILE``, and the file is removed afterwards. A run given as a dict goes the same way
  (``-e @file``), so ``run_env`` tokens do not land in ``env/extravars`` either.
- The outcome is read from ansible-runner's ``status`` (never a process exit code: the process streamer
  returns 0 for a failed play), and ``cancel_callback`` is checked every 0.2 s (``pexpect_timeout``;
  ansible-runner's default 5 s would keep a cancelled play going).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlops_vast import _keys
from mlops_vast import events as ev
from mlops_vast.inputs import (
    InputError,
    check_api_url,
    check_run,
    check_sweep,
    collection_module,
    collection_root,
    load_vars,
)
from mlops_vast.ledger import ledger_path, open_contracts

EventHandler = Callable[[ev.Event], Any]
Cancel = threading.Event | Callable[[], bool] | None

POLL_S = 0.25
# The sweep's scheduler stops its trials and brings each one's checkpoints home (its teardowns may take 600 s).
SWEEP_CANCEL_GRACE_S = 660.0
TEARDOWN_TIMEOUT_S = 900.0
TEARDOWN_SLOW_S = 60.0  # a teardown still going after this long says so, and again each time as long
# How long a stopped run's teardown waits for a host that does not answer before destroying it (the guard's).
UNREACHABLE_WAIT_S = 10.0


# ---------------------------------------------------------------------------------------------- results


@dataclass
class RunResult:
    """How a training run ended. ``outcome``: ``completed``, ``failed`` or ``cancelled``."""

    name: str
    outcome: str
    status: str  # ansible-runner's: successful, failed, canceled, timeout, unknown
    rc: int | None
    results_dir: Path
    message: str | None = None
    watch_outcome: str | None = None  # the watch's word: completed, crash, diverged, stall, timeout, preempted, ...
    triage: dict[str, Any] = field(default_factory=dict)  # watch.json's triage bundle
    checkpoints: list[Path] = field(default_factory=list)  # verified checkpoints brought home, oldest first
    cost_usd: float | None = None  # the account's charges for the run (rejected hosts too), else what its watches saw
    attempts: int = 1
    artifacts_dir: Path | None = None
    teardown: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"


ROW_FIELDS = ("id", "label", "params", "outcome", "final_loss", "best_loss", "steps", "cost_usd", "attempts", "hosts",
              "duration_s", "message", "results_dir")


@dataclass
class TrialRow:
    """One trial of a sweep, as ``results/<sweep>/trials.json`` has it."""

    id: str
    label: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    outcome: str | None = None
    final_loss: float | None = None
    best_loss: float | None = None
    steps: int | None = None
    cost_usd: float | None = None
    attempts: int | None = None
    hosts: Any = None
    duration_s: float | None = None
    message: str | None = None  # why it did not complete, or what to know of how it did
    results_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other column

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> TrialRow:
        known = {name: row[name] for name in ROW_FIELDS if name in row}
        known.setdefault("id", str(row.get("id", "")))
        return cls(**known, extra={k: v for k, v in row.items() if k not in ROW_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in ROW_FIELDS}, **self.extra}


@dataclass
class SweepResult:
    """How a sweep ended. ``outcome``: ``completed`` (every trial), ``partial`` (some), ``failed`` or
    ``cancelled``."""

    name: str
    outcome: str
    status: str
    rc: int | None
    results_dir: Path
    trials: list[TrialRow] = field(default_factory=list)
    spent_usd: float | None = None
    budget_usd: float | None = None
    message: str | None = None
    artifacts_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"


# ---------------------------------------------------------------------------------------------- plumbing


def _cancel_check(cancel: Cancel) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError("cancel must be a threading.Event or a callable returning a bool")


class _Emitter:
    """Calls ``on_event`` in the caller's thread; an exception there is reported once and does not stop the run."""

    def __init__(self, on_event: EventHandler | None) -> None:
        if on_event is not None and not callable(on_event):
            raise TypeError(f"on_event must be a callable taking one event, not {type(on_event).__name__}")
        self.on_event = on_event
        self.failed = False

    def __call__(self, event: ev.Event) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception as exc:
            if not self.failed:
                warnings.warn(f"mlops_vast: on_event raised {exc!r}; the run goes on", RuntimeWarning, stacklevel=2)
            self.failed = True


@dataclass
class _Context:
    """What every playbook of one call shares: the collection, the environment and the key file."""

    root: Path
    cwd: Path
    env_extra: dict[str, str]
    key_file: _keys.KeyFile | None
    scratch: Path  # private (0700), outside the private data dir: the run's variables as files
    sim: Any = None
    teardowns_left_running: bool = False  # abandoned by a Ctrl-C: they still need the key file

    def env(self, base: dict[str, str] | None = None, *, guard: str = "off") -> dict[str, str]:
        """The playbooks' environment. ``guard``: ``off`` for the API's own teardowns; ``orphaned`` for the run's
        playbook, whose guard then acts only if this process dies while the playbook still runs."""
        env = dict(os.environ if base is None else base)
        env.update(self.env_extra)
        env["ANSIBLE_CONFIG"] = str(self.root / "ansible.cfg")
        # The API's cancel runs the teardown itself; the playbook's guard (ansible.cfg, or a user's
        # ANSIBLE_CALLBACKS_ENABLED) must not also act on signals, or two teardowns race for the same instance.
        env["MLOPS_VAST_GUARD"] = guard
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return _keys.scrub_env(env, self.key_file.path if self.key_file else None)

    def var_file(self, name: str, data: dict[str, Any]) -> Path:
        path = self.scratch / name
        # Text marked !unsafe (mlops_vast.unsafe(), or read so from a file) stays so for the playbook.
        collection_module(self.root, "var_files", "plugin_utils").write(path, data)
        return path

    def close(self) -> None:
        if self.key_file is not None:
            if self.teardowns_left_running:
                self.key_file.hand_over()
            else:
                self.key_file.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.sim is not None:
            with contextlib.suppress(Exception):
                self.sim.stop()


def _context(api_url: str | None, api_key: str | None, sim: Any, cwd: str | os.PathLike[str] | None,
             env: dict[str, str] | None) -> _Context:
    """Resolve where to run: ``sim`` True starts (or reuses) vastsim in ``.vastsim`` (scripts/demo.sh's), a
    :class:`mlops_vast.simulator.LocalSim` is used as it is, else ``api_url`` / ``VAST_URL`` and the key."""
    root = collection_root()
    env_extra = dict(env or {})
    local_sim = None
    if sim is True:
        from mlops_vast import simulator

        local_sim = simulator.start(Path(cwd or ".") / simulator.DEFAULT_WORKDIR)
        sim = local_sim
    if sim:
        env_extra.update(sim.env())
        api_key = api_key or sim.api_key
    elif api_url:
        env_extra["VAST_URL"] = api_url
    try:
        check_api_url(env_extra.get("VAST_URL") or os.environ.get("VAST_URL"),
                      "api_url / --api-url" if api_url else "VAST_URL")
    except InputError:
        if local_sim is not None:
            local_sim.stop()
        raise
    try:
        key = api_key or _keys.resolve_api_key({**os.environ, **env_extra})
    except OSError as exc:
        if local_sim is not None:
            local_sim.stop()
        raise InputError(str(exc)) from None
    if not key:  # said before any playbook starts, not by its first task that talks to the API
        raise InputError("No Vast API key: set VAST_API_KEY (or VAST_API_KEY_FILE) or run `vastai set api-key KEY` "
                         "(in Python, api_key= too); for vastsim instead, give mlops-vast --sim (in Python, sim=True), "
                         "or leave out the key, VAST_URL and --api-url alike")
    scratch = Path(tempfile.mkdtemp(prefix="mlops-vast-run-"))
    os.chmod(scratch, 0o700)
    return _Context(root=root, cwd=Path(cwd or os.getcwd()).resolve(), env_extra=env_extra,
                    key_file=_keys.KeyFile(key, also=[scratch]), scratch=scratch, sim=local_sim)


class _PlaybookRun:
    """One ansible-runner run of a playbook, in a thread, while the caller's thread polls and emits events."""

    def __init__(self, ctx: _Context, playbook: str, var_files: Iterable[Path], private_data_dir: Path,
                 env_extra: dict[str, str] | None = None) -> None:
        import ansible_runner

        self.ctx = ctx
        self.private_data_dir = private_data_dir
        private_data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(private_data_dir, 0o700)
        self.ident = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
        cmdline = " ".join(f"-e @{shlex.quote(str(path))}" for path in var_files)
        self.config = ansible_runner.RunnerConfig(
            private_data_dir=str(private_data_dir), project_dir=str(ctx.cwd),
            playbook=str(ctx.root / "playbooks" / playbook), cmdline=cmdline, ident=self.ident,
            rotate_artifacts=10, quiet=True, suppress_env_files=True,
            settings={"pexpect_timeout": 0.2, "pexpect_use_poll": True})
        self.config.prepare()
        # prepare() drops the settings given here when the private data dir has no env/settings file (ansible-runner
        # 2.4), and the cancel check would fall back to every 5 s: time enough for a cancelled run to rent.
        self.config.pexpect_timeout, self.config.pexpect_use_poll = 0.2, True
        # prepare() copied os.environ into config.env: the key leaves it here, before Runner writes it down.
        # ansible-runner starts the playbook with SIGHUP ignored and cancels with SIGKILL: should this process die
        # (killed, crashed, its terminal closed), nothing but the playbook's own guard can destroy what it rented.
        env = ctx.env(self.config.env, guard="orphaned")
        env["MLOPS_VAST_GUARD_PARENT"] = str(os.getpid())
        env.update(env_extra or {})
        self.config.env = env
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cancel_requested = False
        self.runner = ansible_runner.Runner(self.config, event_handler=self._on_event,
                                            cancel_callback=lambda: self.cancel_requested)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"mlops-vast-{playbook}", daemon=True)

    def _on_event(self, event: dict[str, Any]) -> bool:
        self.events.put(event)
        return True

    def _run(self) -> None:
        try:
            self.runner.run()
        except BaseException as exc:  # reported by status()
            self.error = exc

    def start(self) -> _PlaybookRun:
        self.thread.start()
        return self

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.config.artifact_dir)

    def result(self) -> tuple[str, int | None]:
        """(status, rc) from the artifacts ansible-runner wrote, never the process's exit code alone."""
        artifacts = self.artifacts_dir
        status = _read_text(artifacts / "status") or "unknown"
        rc_text = _read_text(artifacts / "rc")
        rc = int(rc_text) if rc_text and rc_text.lstrip("-").isdigit() else None
        if self.error is not None and status == "unknown":
            status = "failed"
        return status, rc


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _teardown_vars(label: str, results_dir: Path, run_vars: dict[str, Any], since: float) -> dict[str, Any]:
    """teardown.yml's variables for a run stopped from here, as the guard gives them (interrupt_teardown.Target,
    which this package cannot import), so the run's files and newest sealed checkpoint come home, verified, before
    its instance is destroyed: from the run.json train.yml writes once it resolved the run (templates rendered),
    else from the run's variables (train.meta.yml's defaults for a template); the charges since ``since``."""
    resolved = ev.read_json(results_dir / "run.json") or {}
    began = resolved.get("started_at")
    if not isinstance(began, int | float) or began < since - 5:  # an earlier run's (train.yml starts after this)
        resolved = {}
    else:
        since = max(since, float(began))  # the playbook's own start: what it charged, no earlier run of the label

    def given(name: str, default: Any) -> Any:
        value = resolved.get(name.removeprefix("run_")) if resolved.get("remote_dir") else run_vars.get(name)
        return default if value in (None, "") or "{{" in str(value) else value

    try:
        keep = max(0, int(given("run_keep_checkpoints", 3)))
    except (TypeError, ValueError):
        keep = 3  # a bad value must not stop a teardown
    return {"teardown_label": label, "teardown_results_dir": str(results_dir),
            "teardown_remote_dir": str(given("run_remote_dir", "/workspace/run")),
            "teardown_checkpoint_glob": str(given("run_checkpoint_glob", "checkpoint-*")),
            "teardown_keep_checkpoints": keep, "teardown_unreachable_wait_s": UNREACHABLE_WAIT_S,
            "teardown_since": since}


def run_folders(results: Path, labels: Iterable[str]) -> dict[str, Path]:
    """The results folders under ``results`` whose run.json names one of ``labels`` (a run's results/<run>, a
    trial's results/<sweep>/<trial>): where a teardown started from outside a run brings its data home."""
    wanted = set(labels)
    found: dict[str, tuple[float, Path]] = {}
    for run_file in [*results.glob("*/run.json"), *results.glob("*/*/run.json")]:
        if ".before-" in run_file.parent.name:  # an earlier try of a trial, kept apart when it ran again
            continue
        resolved = ev.read_json(run_file) or {}
        name, began = resolved.get("name"), resolved.get("started_at")
        began = float(began) if isinstance(began, int | float) and not isinstance(began, bool) else 0.0
        if name in wanted and resolved.get("remote_dir") and began >= found.get(name, (-1.0, run_file))[0]:
            found[name] = (began, run_file.parent)  # the latest run of the name
    return {name: folder for name, (_began, folder) in found.items()}


def teardown_runs(folders: dict[str, Path], *, env: dict[str, str], cwd: Path, api_key: str,
                  on_event: EventHandler | None = None) -> dict[str, bool]:
    """Bring each run's newest sealed checkpoint and files home into its results folder (verified), then destroy its
    instance: ``{label: results folder}``, the teardown ``mlops-vast teardown`` does for a run it finds the folder
    of; {label: succeeded}. Each teardown's output goes to ``<folder>/teardown-<label>.log``; ``on_event`` gets a
    ``Warning`` each minute a teardown goes on."""
    scratch = Path(tempfile.mkdtemp(prefix="mlops-vast-teardown-"))
    os.chmod(scratch, 0o700)
    ctx = _Context(root=collection_root(), cwd=cwd.resolve(), env_extra=dict(env),
                   key_file=_keys.KeyFile(api_key, also=[scratch]), scratch=scratch)
    try:
        return _teardown(ctx, [_teardown_vars(label, folder, {}, 0.0) for label, folder in folders.items()],
                         emit=_Emitter(on_event))
    finally:
        ctx.close()


def _teardown(ctx: _Context, runs: Iterable[dict[str, Any]], log_dir: Path | None = None, *,
              parallel: int = 8, emit: Callable[[ev.Event], None] | None = None,
              slow_s: float = TEARDOWN_SLOW_S) -> dict[str, bool]:
    """playbooks/teardown.yml through the inventory once per run (``_teardown_vars``), in parallel, each in its own
    session so a Ctrl-C in the terminal does not cut it short; {label: succeeded}. Their output goes to
    ``log_dir/teardown-<label>.log`` (without ``log_dir``, into each run's results folder). ``emit`` gets a
    ``Warning`` for each teardown still going every ``slow_s``: a pull that does not end, or an API that refuses
    the destroy, bills meanwhile, and the person waiting should know."""
    by_label = {run["teardown_label"]: run for run in runs if run.get("teardown_label")}
    labels = list(by_label)
    env = ctx.env()
    outcome: dict[str, bool] = {}
    started: dict[str, tuple[float, Path]] = {}

    def one(label: str) -> None:
        playbook = [str(Path(sys.executable).parent / "ansible-playbook"), str(ctx.root / "playbooks" / "teardown.yml")]
        logs = log_dir or Path(by_label[label]["teardown_results_dir"])
        logs.mkdir(parents=True, exist_ok=True)
        started[label] = (time.monotonic(), logs / f"teardown-{label}.log")
        with open(logs / f"teardown-{label}.log", "w") as log:
            process = subprocess.Popen([*playbook, "-i", str(ctx.root / "inventory" / "vast.yml"), "-e",
                                        json.dumps(by_label[label])], env=env, cwd=ctx.cwd, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                outcome[label] = process.wait(timeout=TEARDOWN_TIMEOUT_S) == 0
                return
            except subprocess.TimeoutExpired:
                outcome[label] = False
            # Still pulling: the instance must not go on billing for a checkpoint that does not come. Its whole
            # session stops, and the instance is destroyed by label (interrupt_teardown.wait_or_destroy's way).
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            log.write(f"\n[mlops.vast] the teardown of {label} ran past {TEARDOWN_TIMEOUT_S:g} s: destroying it by "
                      "label, without waiting for its checkpoint\n")
            log.flush()
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run([*playbook, "-e", json.dumps({"teardown_label": label})], env=env, cwd=ctx.cwd,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=300,
                               start_new_session=True, check=False)

    threads: list[threading.Thread] = []
    pending: BaseException | None = None
    try:
        for label in labels:
            while sum(thread.is_alive() for thread in threads) >= parallel:
                time.sleep(0.1)
            thread = threading.Thread(target=one, args=(label,), daemon=True)
            thread.start()
            threads.append(thread)
        next_word = time.monotonic() + slow_s
        for thread in threads:
            while thread.is_alive():
                try:
                    thread.join(timeout=max(0.1, min(POLL_S * 5, next_word - time.monotonic())))
                    if emit is not None and time.monotonic() >= next_word:
                        next_word += slow_s
                        _still_tearing_down(emit, {label: started[label] for label in labels
                                                   if label in started and label not in outcome})
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # a SystemExit: the key must outlive the teardowns that use it
                    pending = pending or exc
    except KeyboardInterrupt:
        # The person insists: the teardowns started go on in their own sessions, without this process, and keep
        # the key file they read it from until they end (also when the Ctrl-C came while more were to start).
        ctx.teardowns_left_running = bool(threads)
        raise
    if pending is not None:
        raise pending
    return outcome


def _still_tearing_down(emit: Callable[[ev.Event], None], going: dict[str, tuple[float, Path]]) -> None:
    now = time.monotonic()
    for label, (began, log) in going.items():
        lines = (_read_text(log) or "").splitlines()
        task = next((line[6:].split("]")[0] for line in reversed(lines) if line.startswith("TASK [")), None)
        at = f" (at: {task})" if task else ""
        emit(ev.Warning(run=label, task=task, message=(
            f"still tearing down after {now - began:.0f} s{at}; the instance bills until it is destroyed. After "
            f"{TEARDOWN_TIMEOUT_S:g} s the teardown is stopped and the instance destroyed by label; a destroy the API "
            f"keeps refusing is retried. Its log: {log}")))


def _kill_trial_playbooks(trials: Iterable[dict[str, Any]]) -> None:
    """SIGKILL the process group of each running trial's ansible-playbook (sweep-state.json's pid), if that pid is
    still an ansible-playbook (not a reused one)."""
    for trial in trials:
        pid = trial.get("pid")
        if not isinstance(pid, int) or pid <= 1:
            continue
        try:
            if b"ansible-playbook" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            os.killpg(pid, signal.SIGKILL)  # started with start_new_session: its group is its pid
        except OSError:
            continue


def _wait(play: _PlaybookRun, poll: Callable[[], None], emit: _Emitter, run_name: str,
          cancelled: Callable[[], bool], on_cancel: Callable[[], None]) -> bool:
    """Poll until the playbook ends; True when it was cancelled (``cancelled()``); :class:`_Interrupted` when
    something else ended the wait (a KeyboardInterrupt, a SystemExit), after the playbook ended.

    ``on_cancel`` is called once, in this thread, when cancellation is first seen."""
    state: dict[str, Any] = {"cancelled": False, "cause": None}

    def interrupted(exc: BaseException) -> None:
        # A Ctrl-C, a SystemExit from the caller's own signal handler, an error in cancel() or on_event: leaving
        # now would delete the key file under a playbook that still runs (whose guard would then lack it).
        if state["cause"] is not None and isinstance(exc, KeyboardInterrupt):
            # A second interruption: the caller insists. The playbook is killed, not torn down.
            play.cancel_requested = True
            play.thread.join(timeout=10)
            raise exc
        state["cause"] = state["cause"] or exc
        if not state["cancelled"]:
            state["cancelled"] = True
            try:
                on_cancel()
            except BaseException:  # the playbook must still be stopped
                play.cancel_requested = True

    try:
        while True:
            finished = play.done  # read before the last poll, so that poll sees everything the playbook wrote
            try:
                while True:
                    try:
                        event = play.events.get_nowait()
                    except queue.Empty:
                        break
                    warning = ev.warning_from_runner_event(event, run_name)
                    if warning is not None:
                        emit(warning)
                poll()
                if not state["cancelled"] and cancelled():
                    state["cancelled"] = True
                    on_cancel()
            except BaseException as exc:  # whatever ends this call first stops the run
                interrupted(exc)
            if finished:
                break
            try:
                # Nearly all of the wait is spent here: a Ctrl-C or the caller's SystemExit lands here most often.
                time.sleep(POLL_S)
            except BaseException as exc:
                interrupted(exc)
        play.thread.join()
    except KeyboardInterrupt:
        # The playbook was killed, but not what it started in sessions of their own (a sweep's trials and their
        # teardowns, which the guard of each starts once its parent is gone): they still need the key file, which
        # is handed over instead of deleted.
        play.ctx.teardowns_left_running = True
        with contextlib.suppress(BaseException):  # the caller's Ctrl-C goes on whatever on_event does
            emit(ev.Warning(run=run_name, message=(
                "interrupted twice: left at once, the playbook killed; teardowns already under way go on in the "
                "background (their logs in the results folder), anything they had not reached is still rented: "
                "check with `mlops-vast status`, finish with `mlops-vast teardown --all`")))
        raise
    if state["cause"] is not None:
        raise _Interrupted(state["cause"])
    return bool(state["cancelled"])


class _Interrupted(Exception):
    """What ended the wait (a KeyboardInterrupt, a SystemExit, an error) turned into a cancellation; re-raised
    after the teardown."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


# ---------------------------------------------------------------------------------------------- train


def unsafe(text: str) -> str:
    """``text`` as YAML's ``!unsafe`` marks it: the playbook uses it as written and never templates it (a prompt
    template with ``{{ }}``, a shell ``${#ARR[@]}``), in a run or sweep given as a dict."""
    return collection_module(collection_root(), "var_files", "plugin_utils").UnsafeText(text)


def train(run: dict[str, Any] | str | os.PathLike[str], *, on_event: EventHandler | None = None,
          cancel: Cancel = None, sim: Any = None, api_url: str | None = None, api_key: str | None = None,
          extra_vars: dict[str, Any] | None = None, cwd: str | os.PathLike[str] | None = None,
          env: dict[str, str] | None = None) -> RunResult:
    """Run playbooks/train.yml for ``run`` (its run_* variables: a dict or a YAML file) and return how it ended.

    ``sim``: True runs against vastsim (started in ``.vastsim`` unless one serves it already, stopped after if
    started here); a :class:`mlops_vast.simulator.LocalSim` uses that one. ``api_url`` / ``api_key`` override
    ``VAST_URL`` and the key (``VAST_API_KEY``, ``VAST_API_KEY_FILE``, the official CLI's key files).
    ``extra_vars`` override the run's variables. ``env`` adds to the playbook's environment.
    ``cancel`` stops the playbook and runs playbooks/teardown.yml for the run's label; the outcome is then
    ``cancelled``. A KeyboardInterrupt (or anything else that ends the wait, such as a SystemExit) does the same
    and is re-raised after the teardown.
    Raises :class:`mlops_vast.InputError` for bad input, before anything is rented.
    """
    root = collection_root()
    data, path = load_vars(run, "run", cwd)
    merged = {**data, **(extra_vars or {})}
    name = check_run(merged, root, str(path) if path else "the run", cwd=cwd)
    emit, is_cancelled = _Emitter(on_event), _cancel_check(cancel)  # their TypeErrors before anything starts
    if is_cancelled():
        here = Path(cwd or os.getcwd()).resolve()
        return _not_started(name, _results_dir(merged.get("run_results_dir"), here / "results" / name, here))
    ctx = _context(api_url, api_key, sim, cwd, env)
    try:
        results_dir = _results_dir(merged.get("run_results_dir"), ctx.cwd / "results" / name, ctx.cwd)
        overrides = {**(extra_vars or {}), "run_results_dir": str(results_dir)}
        files = [path if path else ctx.var_file("run.yml", data), ctx.var_file("overrides.yml", overrides)]
        _make_results_dir(results_dir, "run_results_dir")
        started = time.time()
        play = _PlaybookRun(ctx, "train.yml", files, results_dir / "runner", {
            "ANSIBLE_CALLBACKS_ENABLED": _callbacks(ctx.env()),
            "MLOPS_VAST_PROGRESS_FILE": str(results_dir / ev.PROGRESS_FILE)})
        state: dict[str, ev.Snapshot | None] = {"snap": None}

        def poll() -> None:
            new = ev.read_snapshot(name, results_dir, state["snap"], not_before=started)
            # Kept before the events go out: a callback that raises (a KeyboardInterrupt) must not get them again.
            old, state["snap"] = state["snap"], new
            for event in ev.diff(old, new):
                emit(event)

        emit(ev.PhaseChanged(run=name, phase="checking"))
        state["snap"] = ev.Snapshot(run=name)
        play.start()
        cause: BaseException | None = None
        try:
            cancelled = _wait(play, poll, emit, name, is_cancelled, lambda: setattr(play, "cancel_requested", True))
        except _Interrupted as stop:
            cancelled, cause = True, stop.cause
        status, rc = play.result()
        teardown_ok = None
        if cancelled:
            emit(ev.PhaseChanged(run=name, phase="teardown", previous=state["snap"].phase if state["snap"] else None,
                                 task="Cancelled: playbooks/teardown.yml for the run's label"))
            teardown_ok = _teardown(ctx, [_teardown_vars(name, results_dir, merged, started)],
                                    results_dir, emit=emit).get(name, False)
        result = _run_result(name, results_dir, status, rc, cancelled, teardown_ok, play.artifacts_dir, started)
        emit(ev.Finished(run=name, outcome=result.outcome, status=status, results_dir=str(results_dir)))
        if cause is not None:
            raise cause
        return result
    finally:
        ctx.close()


def _not_started(name: str, results_dir: Path) -> RunResult:
    """A call cancelled before it began: no playbook, no simulator, nothing rented."""
    return RunResult(name=name, outcome="cancelled", status="canceled", rc=None, results_dir=results_dir,
                     message="cancelled before it started: nothing was run or rented")


def _callbacks(env: dict[str, str]) -> str:
    # The variable replaces ansible.cfg's callbacks_enabled, which names the guard: it must stay enabled.
    enabled = [name.strip() for name in env.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if name.strip()]
    return ",".join(dict.fromkeys([*enabled, "mlops.vast.guard", "mlops.vast.progress"]))


def _make_results_dir(path: Path, variable: str) -> Path | None:
    """Make the results folder (InputError when it cannot be one); the outermost folder this made, if any."""
    made = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        made = folder
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{variable}: {path} cannot be the results folder ({exc.strerror or exc}); give a folder "
                         "that exists or can be made") from None
    return made


def _results_dir(given: Any, default: Path, cwd: Path) -> Path:
    if isinstance(given, str) and given.strip() and "{{" not in given:
        path = Path(os.path.expandvars(given)).expanduser()  # as train.yml reads it (Ansible's paths: $VAR, then ~)
        return path if path.is_absolute() else (cwd / path).resolve()
    return default


def _run_result(name: str, results_dir: Path, status: str, rc: int | None, cancelled: bool,
                teardown_ok: bool | None, artifacts_dir: Path, started: float = 0.0) -> RunResult:
    paths = [results_dir / "watch.json", *sorted(results_dir.glob("watch-recovery-*.json"), key=_natural)]
    # This run's: an earlier run of the name (its recovery rounds) left its own in the same folder.
    watches = [ev.read_json(path) or {} for path in paths if _written_since(path, started)]
    watch = next((w for w in reversed(watches) if w), {})  # the last attempt's (after a recovery, not the lost one)
    # Also this run's only: a run cancelled before its teardown wrote one must not report the last run's.
    recovery = (ev.read_json(results_dir / "recovery.json") if _written_since(results_dir / "recovery.json", started)
                else None) or {}
    teardown = ev.read_json(results_dir / "teardown.json") if _written_since(results_dir / "teardown.json",
                                                                             started) else None
    # Each instance once: a round resumed in place on the same instance reports that instance's whole spend again.
    per_instance: dict[Any, float] = {}
    for index, w in enumerate(watches):
        spent = w["triage"].get("spent_usd") if isinstance(w.get("triage"), dict) else None
        if isinstance(spent, int | float) and not isinstance(spent, bool):
            instance = w.get("instance") if isinstance(w.get("instance"), dict) else {}
            key = instance.get("id") or f"round-{index}"
            per_instance[key] = max(per_instance.get(key, 0.0), float(spent))
    costs = list(per_instance.values())
    # What the account charged for the run (spend.json, written as train.yml ends): hosts rejected before one
    # passed included, which no watch saw; the watches' figure where it is larger (charges an API posts late).
    spend = ev.read_json(results_dir / "spend.json") or {}
    charged = spend.get("total_usd") if float(spend.get("at") or 0) >= started else None  # not an earlier run's
    if isinstance(charged, int | float) and not isinstance(charged, bool):
        costs = [max(float(charged), sum(costs))]
    checkpoints_dir = results_dir / "checkpoints"
    # The sealed checkpoints brought home; unsealed/ holds what the host had not sealed, as it was, and diverged/ those
    # a diverged run saved after its last clean record.
    set_aside = ("unsealed", "diverged")
    checkpoints = sorted((p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name not in set_aside),
                         key=_natural) if checkpoints_dir.is_dir() else []
    if cancelled:
        outcome = "cancelled"
        message = "cancelled; " + ("what it rented was torn down" if teardown_ok
                                   else f"the teardown did not finish: see {results_dir}/teardown-{name}.log and run "
                                        f"`mlops-vast teardown --label {name}`")
    elif status == "successful":
        outcome, message = "completed", f"run {name} completed"
    else:
        outcome = "failed"
        message = _failure_message(artifacts_dir) or watch.get("msg") or f"ansible-runner status {status}"
    return RunResult(name=name, outcome=outcome, status=status, rc=rc, results_dir=results_dir, message=message,
                     watch_outcome=watch.get("outcome"), triage=watch.get("triage") or {}, checkpoints=checkpoints,
                     cost_usd=round(sum(costs), 6) if costs else None,
                     attempts=int(recovery.get("attempts") or 1), artifacts_dir=artifacts_dir, teardown=teardown)


def _written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since - 1
    except OSError:
        return False


def _natural(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _last_failure(artifacts_dir: Path) -> tuple[str, str] | None:
    """(task, message) of the last failed task that was not rescued or ignored (the job events)."""
    events_dir = artifacts_dir / "job_events"
    found = None
    if not events_dir.is_dir():
        return None
    for path in sorted(events_dir.glob("*.json"), key=lambda p: int(p.name.split("-")[0]) if p.name[0].isdigit()
                       else 0):
        with contextlib.suppress(OSError, ValueError):
            event = json.loads(path.read_text())
            data = event.get("event_data") or {}
            if event.get("event") == "runner_on_failed" and not data.get("ignore_errors"):
                res = data.get("res") or {}
                found = (str(data.get("task") or ""), str(res.get("msg") or "failed"))
    return found


def _failure_message(artifacts_dir: Path) -> str | None:
    """The message of the last failed task that was not rescued or ignored, after its task's name."""
    found = _last_failure(artifacts_dir)
    return f"{found[0]}: {found[1]}" if found else None


# sweep.yml's first tasks: they check the sweep and plan its trials, each with its own values, before anything
# happens; a failure there is bad input (exit 2), said as the check said it.
SWEEP_INPUT_CHECKS = ("Check the sweep's variables", "Check the base run against")


def _refused_input(artifacts_dir: Path, checks: tuple[str, ...]) -> str | None:
    found = _last_failure(artifacts_dir)
    return found[1] if found and found[0].startswith(checks) else None


# ---------------------------------------------------------------------------------------------- sweep


def sweep(sweep: dict[str, Any] | str | os.PathLike[str], *, on_event: EventHandler | None = None,
          cancel: Cancel = None, sim: Any = None, api_url: str | None = None, api_key: str | None = None,
          extra_vars: dict[str, Any] | None = None, cwd: str | os.PathLike[str] | None = None,
          env: dict[str, str] | None = None, cancel_grace_s: float = SWEEP_CANCEL_GRACE_S) -> SweepResult:
    """Run playbooks/sweep.yml for ``sweep`` (sweep_* and run_* variables: a dict or a YAML file).

    Events name each trial by its label. ``cancel`` touches ``results/<sweep>/CANCEL`` (the scheduler stops its
    trials and tears each down); if the playbook has not ended ``cancel_grace_s`` later, it is stopped and every
    label in the sweep state is torn down here. Other arguments as :func:`train`.
    """
    root = collection_root()
    data, path = load_vars(sweep, "sweep", cwd)
    merged = {**data, **(extra_vars or {})}
    name = check_sweep(merged, root, str(path) if path else "the sweep", cwd=cwd)
    emit, is_cancelled = _Emitter(on_event), _cancel_check(cancel)  # their TypeErrors before anything starts
    if is_cancelled():
        here = Path(cwd or os.getcwd()).resolve()
        not_started = _not_started(name, _results_dir(merged.get("sweep_results_dir"), here / "results" / name, here))
        return SweepResult(name=name, outcome="cancelled", status=not_started.status, rc=None,
                           results_dir=not_started.results_dir, message=not_started.message)
    ctx = _context(api_url, api_key, sim, cwd, env)
    try:
        results_dir = _results_dir(merged.get("sweep_results_dir"), ctx.cwd / "results" / name, ctx.cwd)
        made = _make_results_dir(results_dir, "sweep_results_dir")
        (results_dir / "CANCEL").unlink(missing_ok=True)
        files = [path if path else ctx.var_file("sweep.yml", data)]
        if extra_vars:
            files.append(ctx.var_file("overrides.yml", extra_vars))
        started = time.time()
        play = _PlaybookRun(ctx, "sweep.yml", files, results_dir / "runner",
                            {"ANSIBLE_CALLBACKS_ENABLED": _callbacks(ctx.env())})
        watcher = _SweepWatcher(name, results_dir, started, emit)
        cancel_at: dict[str, float | None] = {"at": None}

        def on_cancel() -> None:
            cancel_at["at"] = time.monotonic()
            (results_dir / "CANCEL").touch()

        def poll() -> None:
            watcher.poll()
            at = cancel_at["at"]
            if at is not None and not play.cancel_requested and time.monotonic() - at > cancel_grace_s:
                play.cancel_requested = True

        play.start()
        cause: BaseException | None = None
        try:
            cancelled = _wait(play, poll, emit, name, is_cancelled, on_cancel)
        except _Interrupted as stop:
            cancelled, cause = True, stop.cause
        status, rc = play.result()
        refused = _refused_input(play.artifacts_dir, SWEEP_INPUT_CHECKS) if status == "failed" else None
        if refused is not None:  # nothing started: the checks come before the reaper, the key and any trial
            if made is not None:  # the folder this call made, then each parent it made that is empty now
                shutil.rmtree(results_dir, ignore_errors=True)
                for parent in [results_dir, *results_dir.parents]:
                    if parent == made.parent:
                        break
                    with contextlib.suppress(OSError):
                        parent.rmdir()
            raise InputError(f"{path or 'the sweep'}: {refused}")
        if cancelled and status == "canceled":
            # The scheduler did not finish its own teardown: every label it knew is torn down here, its trials'
            # playbooks stopped first (each in its own session, so killing the sweep's playbook left them running,
            # and one recovering would rent again).
            _kill_trial_playbooks(watcher.trials())
            stopped = _trials_still_open(watcher.trials(), ledger_path(ctx.env()), emit, name)
            _teardown(ctx, [_teardown_vars(trial["label"], Path(trial.get("results_dir") or results_dir), merged,
                                           float(trial.get("started_at") or started)) for trial in stopped],
                      results_dir, emit=emit)
        result = _sweep_result(name, results_dir, status, rc, cancelled, watcher, play.artifacts_dir,
                               _number(merged.get("sweep_budget_usd")))
        emit(ev.Finished(run=name, outcome=result.outcome, status=status, results_dir=str(results_dir)))
        if cause is not None:
            raise cause
        return result
    finally:
        ctx.close()


def _trials_still_open(trials: list[dict[str, Any]], ledger: Path, emit: Callable[[ev.Event], None],
                       run_name: str) -> list[dict[str, Any]]:
    """The trials of a cancelled sweep that still hold an instance, by the ledger: the scheduler's own teardowns
    may have finished the others (a second pull into the same folder, or a teardown of a trial that never started,
    would only do harm). A ledger that cannot be read says nothing: then every trial is torn down."""
    try:
        still_open = {str(c.get("label")) for c in open_contracts(ledger)}
    except InputError as exc:
        emit(ev.Warning(run=run_name, message=f"{exc}: tearing down every trial"))
        return list(trials)
    return [trial for trial in trials if trial.get("label") in still_open]


class _SweepWatcher:
    """Follows ``sweep-state.json`` and each trial's progress files; one snapshot per trial label."""

    def __init__(self, name: str, results_dir: Path, started: float, emit: _Emitter) -> None:
        self.name, self.results_dir, self.started, self.emit = name, results_dir, started, emit
        self.snaps: dict[str, ev.Snapshot] = {}
        self.state: dict[str, Any] = {}

    def read_state(self) -> dict[str, Any] | None:
        path = self.results_dir / "sweep-state.json"
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < self.started - 1:
                return None  # an earlier run's
        return ev.read_json(path)

    def trials(self) -> list[dict[str, Any]]:
        trials = self.state.get("trials")
        return [t for t in trials if isinstance(t, dict)] if isinstance(trials, list) else []

    def poll(self) -> None:
        state = self.read_state()
        if state is not None:
            self.state = state
        for trial in self.trials():
            label = str(trial.get("label") or trial.get("id"))
            old = self.snaps.get(label)
            base = old or ev.Snapshot(run=label, phase="checking")
            results = trial.get("results_dir")
            new = base
            if results and trial.get("state") != "queued":
                since = trial.get("started_at") if isinstance(trial.get("started_at"), int | float) else self.started
                new = ev.read_snapshot(label, Path(results), base, not_before=float(since) - 1)
            new = replace(new, state=trial.get("state"), outcome=trial.get("outcome") or new.outcome)
            if trial.get("state") in ("done", "skipped", "cancelled") and new.phase != "done":
                new = replace(new, phase="done")
            self.snaps[label] = new  # before the events: a callback that raises must not get them again
            for event in ev.diff(old, new):
                self.emit(event)


def _number(value: Any) -> float | None:
    """A number given as one (YAML may give a string); None for anything else, a template included."""
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _sweep_result(name: str, results_dir: Path, status: str, rc: int | None, cancelled: bool,
                  watcher: _SweepWatcher, artifacts_dir: Path, budget_usd: float | None = None) -> SweepResult:
    """The sweep's outcome and rows; ``budget_usd`` (the one asked for) until the sweep's state says its own (a sweep
    that failed before it started has none)."""
    rows_data: Any = None
    trials_path = results_dir / "trials.json"
    with contextlib.suppress(OSError, ValueError):
        if trials_path.stat().st_mtime >= watcher.started - 1:
            rows_data = json.loads(trials_path.read_text())
    if not isinstance(rows_data, list):
        rows_data = [{"id": t.get("id"), "label": t.get("label"), "params": t.get("params") or {},
                      "outcome": t.get("outcome") or t.get("state"), "results_dir": t.get("results_dir")}
                     for t in watcher.trials()]
    rows = [TrialRow.from_dict(row) for row in rows_data if isinstance(row, dict)]
    completed = [row for row in rows if row.outcome == "completed"]
    if cancelled:
        outcome = "cancelled"
    elif status == "successful" and rows and len(completed) == len(rows):
        outcome = "completed"
    elif completed:
        outcome = "partial"
    else:
        outcome = "failed"
    state = watcher.read_state() or watcher.state  # its last word, written as the playbook ended
    summary = state.get("summary")  # the playbook's: reused and re-run trials said too
    message = summary if isinstance(summary, str) and summary else f"{len(completed)} of {len(rows)} trial(s) completed"
    if outcome == "failed" and not rows:
        message = _failure_message(artifacts_dir) or f"ansible-runner status {status}"
    return SweepResult(name=name, outcome=outcome, status=status, rc=rc, results_dir=results_dir, trials=rows,
                       spent_usd=state.get("spent_usd"), budget_usd=state.get("budget_usd", budget_usd),
                       message=message,
                       artifacts_dir=artifacts_dir)
