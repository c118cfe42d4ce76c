# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: guard
type: notification
short_description: On Ctrl-C, SIGTERM or SIGHUP, bring the run's newest checkpoint home and destroy what it rented
version_added: 0.1.0
description:
  - Runs in the C(ansible-playbook) process itself. When that process gets SIGINT (Ctrl-C), SIGTERM or SIGHUP, in any
    phase, the guard stops Ansible's workers (no task still in flight can rent after it looked), then starts the
    collection's C(playbooks/teardown.yml) for each run the playbook rented, in a new session, so that a second
    Ctrl-C or a closed terminal cannot kill it. That teardown pulls the newest sealed checkpoint and verifies it
    against its manifest (C(mlops.vast.teardown)), brings the run's files home, destroys the instance, verifies it
    gone, and asks the account that nothing of the label is billing (C(spend.json)). Its output is in
    C(<results>/guard.log).
  - The guard waits for it (at most O(timeout_s)), prints what it did, and then lets Ansible end as the signal
    would have ended it (C(User interrupted execution), exit 99, for Ctrl-C; killed by SIGTERM or SIGHUP).
  - A second signal while it waits ends Ansible at once; the teardown goes on in the background and the guard says
    where its log is. In C(orphaned) mode a repeated signal is ignored, since nobody is left to insist.
  - The runs come from the playbook's facts (C(run) of C(playbooks/train.yml), C(rent_label) of C(rent.yml)) and from
    every instance a C(mlops.vast.vast_instance) task reported (own playbooks); results go to C(run.results_dir),
    else C(results/<label>) under the current directory. Without a run it does nothing and Ansible stops as usual.
  - In C(playbooks/sweep.yml) (its C(sweep) fact) the sweep's own worker does the work. The guard sends it SIGTERM,
    upon which it stops every running trial and tears each one down the same way (checkpoints home first); the
    guard waits for it (at most O(timeout_s)), then prints each stopped trial's line and whether anything of the
    sweep is still open in the local ledger.
  - SIGKILL cannot be caught; what a killed controller leaves behind is in the local ledger
    (C(ansible-playbook playbooks/teardown.yml)).
author:
  - mlops.vast developers (@mlops-vast)
requirements:
  - Enabled in C(callbacks_enabled) (the repository's C(ansible.cfg) does; for your own playbooks add
    C(mlops.vast.guard) to C(callbacks_enabled) or E(ANSIBLE_CALLBACKS_ENABLED)).
options:
  timeout_s:
    description:
      - Seconds to wait for the teardown before Ansible ends (the teardown goes on after that, detached).
    type: float
    default: 150
    env:
      - name: MLOPS_VAST_GUARD_TIMEOUT_S
    ini:
      - section: mlops_vast
        key: guard_timeout_s
  unreachable_wait_s:
    description:
      - Seconds the teardown waits for an unreachable host to come back before destroying it
        (C(teardown_unreachable_wait_s)); short, so that nothing bills long after an interruption.
    type: float
    default: 10
    env:
      - name: MLOPS_VAST_GUARD_UNREACHABLE_WAIT_S
    ini:
      - section: mlops_vast
        key: guard_unreachable_wait_s
  enabled:
    description:
      - C(off) makes the guard stand down (the guard's own teardown runs with it).
      - C(orphaned) (what the Python API and C(mlops-vast) set) leaves signals to whoever started C(ansible-playbook),
        which tears down itself, but acts when that process is gone (killed, crashed, its terminal closed) while the
        playbook still runs. Nothing else would then destroy what the run rented, and the playbook would go on, or
        die at its next write to the dead terminal, leaving the instance billing.
    type: str
    default: "on"
    env:
      - name: MLOPS_VAST_GUARD
"""

EXAMPLES = r"""
# ansible.cfg of your own project:
#   [defaults]
#   callbacks_enabled = mlops.vast.guard
# or for one run:
#   ANSIBLE_CALLBACKS_ENABLED=mlops.vast.guard ansible-playbook my-training.yml
"""

import contextlib
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

from ansible.plugins.callback import CallbackBase
from ansible_collections.mlops.vast.plugins.plugin_utils import interrupt_teardown as teardown
from ansible_collections.mlops.vast.plugins.plugin_utils.terminal import detach_from_terminal

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How often an orphaned-mode guard looks whether the process that started ansible-playbook is still there.
PARENT_POLL_S = 1.0
# How long a hangup waits for the parent's exit to be complete (its pid no longer our parent).
ORPHAN_WAIT_S = 5.0
# The pid of the process whose death the guard acts on in orphaned mode (set by the API; else the parent).
PARENT_ENV = "MLOPS_VAST_GUARD_PARENT"


# How soon a signal that landed where Ansible's KeyboardInterrupt would be ignored is sent again.
RECHAIN_S = 0.05
# Functions whose exceptions Python ignores ("Exception ignored in ...") when os.fork runs them as its hooks:
# logging's module lock, taken before a fork and released after it in the parent. A KeyboardInterrupt raised there
# never reaches Ansible. (Called elsewhere they are short, and a signal deferred from them costs RECHAIN_S.)
# (_acquireLock and _releaseLock up to Python 3.12, _prepareFork and _afterFork from 3.13.)
_AT_FORK_HOOKS = {("logging/__init__.py", name)
                  for name in ("_acquireLock", "_releaseLock", "_prepareFork", "_afterFork")}


def _pid(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _swallows_exceptions(frame: Any) -> bool:
    code = getattr(frame, "f_code", None)
    if code is None:
        return False
    path = code.co_filename.replace(os.sep, "/")
    return any(path.endswith(file) and code.co_name == function for file, function in _AT_FORK_HOOKS)


# Where ansible-core 2.19 keeps its templating contexts' stack (ansible/_internal/_templating/_access.py): each
# context's __enter__ pushes, its __exit__ pops. A KeyboardInterrupt raised between the two halves of either leaves
# the stack out of order, the next pop fails ("Out-of-order context deactivation detected"), and that RuntimeError
# replaces the interruption: the playbook ends with status 4 and an error instead of as the signal asks.
_TEMPLATING = "ansible/_internal/_templating/"


def _in_context_bookkeeping(frame: Any) -> bool:
    while frame is not None:
        code = getattr(frame, "f_code", None)
        path = "" if code is None else code.co_filename.replace(os.sep, "/")
        if _TEMPLATING in path and (path.endswith("/_access.py") or code.co_name in ("__enter__", "__exit__")):
            return True
        frame = getattr(frame, "f_back", None)
    return False


def _signal_self(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def say(text: str) -> None:
    # Straight to the file descriptor: a signal handler must not re-enter Python's buffered stderr or the display.
    with contextlib.suppress(OSError):
        os.write(2, f"\n[mlops.vast.guard] {text}\n".encode(errors="replace"))


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "mlops.vast.guard"
    CALLBACK_NEEDS_ENABLED = True
    # A signal being sent again (see _chain), and how often that happened: none at first.
    _rechain: int | None = None
    _rechained = 0

    def __init__(self, display: Any = None, options: Any = None) -> None:
        super().__init__(display=display, options=options)
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}
        self._variable_manager: Any = None
        self._labels: set[str] = set()
        self._running: list[tuple[teardown.Target, Any, str]] = []
        self._cwd = os.getcwd()
        self._starting = False
        self._again: int | None = None
        self._installed = False
        self._parent: int | None = None  # orphaned mode: the process whose death the guard acts on
        self._tty_fds: tuple[int, ...] = ()
        self._started_under = 0
        self._acting = False  # orphaned mode: the teardown is under way
        self._sweep_stopping = False
        self._module_facts: dict[str, Any] = {}
        self._began = time.time()

    def set_options(self, task_keys: Any = None, var_options: Any = None, direct: Any = None) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        mode = str(self.get_option("enabled")).lower()
        if mode in ("off", "0", "false", "no") or self._installed:
            return
        self._installed = True
        if mode == "orphaned":
            # Named by whoever started ansible-playbook (the API), so that a parent that died during Ansible's start
            # is not missed: the process we started under is then already init (or a subreaper).
            self._parent = _pid(os.environ.get(PARENT_ENV)) or os.getppid()
            self._started_under = os.getppid()
            self._tty_fds = tuple(fd for fd in (0, 1, 2) if os.isatty(fd))
            threading.Thread(target=self._watch_parent, name="mlops-vast-guard-parent", daemon=True).start()
        # Ansible's TaskQueueManager set its own SIGINT/SIGTERM handlers before loading callbacks: they are kept and
        # called after the guard's work, so Ansible still ends the way the signal asks.
        for signum in SIGNALS:
            # A signal ignored on entry stays ignored (as a shell does): under nohup a hangup must not end the run.
            # Under ansible-runner (orphaned mode) the hangup of its pseudo-terminal is how its death shows first.
            runner_hangup = signum == signal.SIGHUP and self._parent is not None
            if signal.getsignal(signum) is signal.SIG_IGN and not runner_hangup:
                continue
            self._previous[signum] = signal.signal(signum, self._on_signal)

    # ------------------------------------------------------------------------------------------ what was rented

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._variable_manager = play.get_variable_manager()

    def v2_runner_on_ok(self, result: Any) -> None:
        returned = getattr(result, "_result", None) or {}
        instance = returned.get("instance")
        if isinstance(instance, dict) and instance.get("label"):
            self._labels.add(str(instance["label"]))
        facts = returned.get("ansible_facts")
        if isinstance(facts, Mapping):
            # A module's facts (validate_playbook_vars' run or sweep), as this playbook set them: Ansible also keeps
            # them in its fact cache, which a persistent cache plugin carries over from earlier playbooks.
            self._module_facts.update(facts)

    def _facts(self) -> dict[str, Any]:
        if self._variable_manager is None:  # no play started yet: nothing can have been rented
            return {}
        try:
            # Private to ansible-core (there is no public read of set_fact's cache from a callback): a change there
            # must be said, not taken for "nothing rented".
            # set_fact and register are the non-persistent ones, which win as they do for a play.
            facts = dict(self._module_facts)
            facts.update(self._variable_manager._nonpersistent_fact_cache.get("localhost", {}))
            return facts
        except Exception as exc:  # any failure is said here, never raised in a signal handler
            label = min(self._labels, default="<the run's label>")
            say(f"could not read the run's facts ({type(exc).__name__}: {exc}); if this run rented anything, run "
                f"ansible-playbook playbooks/teardown.yml -e teardown_label={label} (or playbooks/teardown.yml alone "
                "for everything in the local ledger)")
            return {}

    # ------------------------------------------------------------------------------------------ the signal

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if os.getpid() != self._pid:  # a forked worker that has not set its own handlers yet
            self._chain(signum, frame)
            return
        if self._rechain == signum:  # the guard is done; Ansible's own handler, now where it can act
            self._rechain = None
            self._chain(signum, frame)
            return
        if self._parent is not None:
            if self._acting:  # nobody is left to insist: a repeated hangup must not cut the teardown's wait short
                return
            if signum == signal.SIGHUP:
                # ansible-runner's pseudo-terminal hung up: its next write would end Ansible (EIO) before the
                # teardown. The parent may still be exiting (a terminal hangs up before its owner is reaped).
                detach_from_terminal(self._hung_up())
                end = time.monotonic() + ORPHAN_WAIT_S
                while not self._orphaned() and time.monotonic() < end:
                    time.sleep(0.1)
            if not self._orphaned():  # the API's own cancel: it tears down itself
                self._chain(signum, frame)
                return
            self._acting = True
            detach_from_terminal(self._tty_fds)
            # After the teardown Ansible must end, also where the signal was a hangup it was told to ignore.
            signum = signal.SIGTERM
        if self._starting:
            self._again = signum
            return
        if self._running:
            for target, _process, log_path in self._running:
                say(f"{name} again: Ansible stops now. " + teardown.outcome(target, None, log_path))
            self._chain(signum, frame)
            return
        facts = self._facts()
        sweep = facts.get("sweep")
        if isinstance(sweep, Mapping) and sweep.get("name"):
            self._stop_sweep(dict(sweep), name, signum, frame)
            return
        targets = teardown.targets_from(facts, self._labels, self._cwd)
        if not targets:
            self._chain(signum, frame)
            return
        say(f"{name}: stopping the playbook; bringing the newest sealed checkpoint home and destroying "
            f"{', '.join(t.label for t in targets)} (a second {name} leaves this running in the background)")
        # Until the teardown has started, a second signal only waits (noted by the handler re-entered): ending
        # Ansible before then would leave nothing to destroy what it rented.
        self._starting = True
        try:
            teardown.stop_workers(self._pid)
            for target in targets:
                process, log_path = teardown.start(target, float(self.get_option("unreachable_wait_s")))
                self._running.append((target, process, log_path))
        except OSError as exc:
            say(f"cannot start the teardown ({exc}): run ansible-playbook playbooks/teardown.yml "
                f"-e teardown_label={targets[0].label} now; the contract is in the local ledger")
        finally:
            self._starting = False
        if self._again is not None:
            self._on_signal(self._again, frame)
            return
        end = time.monotonic() + float(self.get_option("timeout_s"))
        while time.monotonic() < end and any(p.poll() is None for _t, p, _l in self._running):
            time.sleep(0.25)
        for target, process, log_path in self._running:
            say(teardown.outcome(target, process.poll(), log_path))
        self._chain(signum, frame)

    def _stop_sweep(self, sweep: dict[str, Any], name: str, signum: int, frame: Any) -> None:
        """playbooks/sweep.yml: its worker (mlops.vast.sweep) stops every running trial on SIGTERM and tears each one
        down, checkpoints home first; the guard asks it to, waits, and says what came of it."""
        if self._sweep_stopping:
            say(f"{name} again: Ansible stops now; the sweep's trials are still being stopped and torn down in the "
                f"background (see {teardown.sweep_results_dir(sweep, self._cwd)}/sweep-state.json, and "
                "mlops-vast status)")
            self._chain(signum, frame)
            return
        self._sweep_stopping = True
        results_dir = teardown.sweep_results_dir(sweep, self._cwd)
        say(f"{name}: stopping sweep {sweep['name']}: each running trial's newest sealed checkpoint comes home and its "
            f"instance is destroyed (a second {name} leaves this running in the background)")
        workers = teardown.stop_workers(self._pid, wait_s=float(self.get_option("timeout_s")))
        if workers:
            say(f"the sweep is still stopping its trials after {self.get_option('timeout_s'):g} s; it goes on in the "
                f"background (see {results_dir}/sweep-state.json, and mlops-vast status)")
        else:
            for line in teardown.sweep_outcome(str(sweep["name"]), results_dir, since=self._began):
                say(line)
        self._chain(signum, frame)

    def _orphaned(self) -> bool:
        """Reparented since Ansible started, or the process that started it (named, or the parent) is gone."""
        if os.getppid() != self._started_under:
            return True
        try:
            os.kill(self._parent, 0)
        except ProcessLookupError:
            return True
        except OSError:  # EPERM: it exists
            return False
        return False

    def _hung_up(self) -> tuple[int, ...]:
        # A terminal that hung up no longer answers isatty; one still alive (a stray kill -HUP) keeps the output.
        return tuple(fd for fd in self._tty_fds if not os.isatty(fd))

    def _watch_parent(self) -> None:
        # A thread cannot run the teardown in Ansible's main thread, so it sends the process the SIGTERM the guard
        # handles there: the same teardown, then Ansible ends as SIGTERM asks.
        while not self._orphaned():
            time.sleep(PARENT_POLL_S)
        if self._acting:  # the hangup's handler got there first; a second signal would cut its wait short
            return
        detach_from_terminal(self._tty_fds)
        with contextlib.suppress(OSError):
            os.kill(self._pid, signal.SIGTERM)

    def _chain(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            unsafe = _swallows_exceptions(frame) or _in_context_bookkeeping(frame)
            if unsafe and os.getpid() == self._pid and self._rechained < 20:
                # Ansible's handler raises KeyboardInterrupt in the frame the signal came in. In an at-fork hook
                # (logging's lock, as a worker is forked) Python ignores it: Ansible would go on, and find its
                # killed worker dead. Halfway into or out of a templating context it breaks that context's stack.
                # The same signal again, a moment later, lands where it counts.
                self._rechain, self._rechained = signum, self._rechained + 1
                threading.Timer(RECHAIN_S, _signal_self, (self._pid, signum)).start()
                return
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
