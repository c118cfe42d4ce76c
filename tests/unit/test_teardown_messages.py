"""What the guard and the account proof say after a teardown: a host never reached, an instance stopped on purpose,
the run's facts unreadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from ansible_collections.mlops.vast.plugins.callback import guard
from ansible_collections.mlops.vast.plugins.modules.vast_spend import extra_message
from ansible_collections.mlops.vast.plugins.plugin_utils.interrupt_teardown import (
    Target,
    outcome,
    sweep_outcome,
    wait_or_destroy,
)
from ansible_collections.mlops.vast.plugins.plugin_utils.runner_env import plain_environment


def said(tmp_path: Path, record: object) -> str:
    target = Target("exp", str(tmp_path))
    (tmp_path / "teardown.json").write_text(json.dumps(record))
    return outcome(target, 0, str(tmp_path / "guard.log"))


def test_a_host_never_reached_is_not_a_host_without_checkpoints(tmp_path: Path) -> None:
    text = said(tmp_path, {"destroyed": [5], "host_reachable": False, "may_lose": "", "newest_checkpoint": None})
    assert "the host could not be reached: it was not running" in text and "no sealed checkpoint" not in text
    text = said(tmp_path, {"destroyed": [5], "host_reachable": False, "newest_checkpoint": None,
                           "may_lose": "the host did not come back within 10 s (offline)"})
    assert "could not be reached: the host did not come back within 10 s (offline)" in text
    text = said(tmp_path, {"destroyed": [5], "host_reachable": True, "newest_checkpoint": None})
    assert "no sealed checkpoint on the host" in text and "destroyed [5]" in text
    text = said(tmp_path, {"destroyed": [5], "host_reachable": True, "newest_checkpoint": "checkpoint-40"})
    assert "newest sealed checkpoint checkpoint-40 verified and home" in text
    assert "left no record" in said(tmp_path, ["not", "a", "record"])


def test_an_instance_stopped_on_purpose_is_recovered_before_it_is_destroyed() -> None:
    stopped = extra_message("exp", [{"id": 7, "actual_status": "stopped", "intended_status": "stopped"}])
    assert "[7] stopped on purpose" in stopped and "only copy" in stopped
    assert stopped.index("state=running") < stopped.index("teardown.yml"), "recovery first"
    running = extra_message("exp", [{"id": 8, "actual_status": "running", "intended_status": "running"}])
    assert running.endswith("then check again.") and "Destroy them: ansible-playbook playbooks/teardown.yml" in running
    assert "on purpose" not in running


def test_the_guard_says_so_when_it_cannot_read_the_runs_facts(capfd: pytest.CaptureFixture[str]) -> None:
    callback = guard.CallbackModule.__new__(guard.CallbackModule)
    callback._labels = {"exp-1"}
    callback._variable_manager = SimpleNamespace()  # no _nonpersistent_fact_cache: ansible-core changed
    assert callback._facts() == {}
    err = capfd.readouterr().err
    assert "[mlops.vast.guard] could not read the run's facts (AttributeError" in err
    assert "playbooks/teardown.yml -e teardown_label=exp-1" in err
    callback._variable_manager = None
    assert callback._facts() == {} and capfd.readouterr().err == "", "before any play: nothing rented, nothing said"


def test_the_guards_teardown_under_ansible_runner_logs_plainly_and_not_into_the_runs_artifacts() -> None:
    runner_env = {"PATH": "/usr/bin", "MLOPS_VAST_PROGRESS_FILE": "/r/progress.json", "AWX_ISOLATED_DATA_DIR": "/r/a",
                  "ANSIBLE_STDOUT_CALLBACK": "awx_display", "ORIGINAL_STDOUT_CALLBACK": "ansible.builtin.minimal",
                  "ANSIBLE_CALLBACK_PLUGINS": "/mine:/venv/site-packages/ansible_runner/display_callback/callback"}
    env = plain_environment(runner_env)
    assert env == {"PATH": "/usr/bin", "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",
                   "ANSIBLE_CALLBACK_PLUGINS": "/mine"}
    assert "ANSIBLE_CALLBACK_PLUGINS" not in plain_environment(
        {"ANSIBLE_CALLBACK_PLUGINS": "/v/ansible_runner/display_callback/callback/"})
    # The job's fact cache stays the job's; a cache of the user's own stays.
    cached = {"AWX_ISOLATED_DATA_DIR": "/r/a", "ANSIBLE_CACHE_PLUGIN": "jsonfile",
              "ANSIBLE_CACHE_PLUGIN_CONNECTION": "/r/a/fact_cache"}
    assert plain_environment(cached) == {}
    mine = {"ANSIBLE_CACHE_PLUGIN": "jsonfile", "ANSIBLE_CACHE_PLUGIN_CONNECTION": "/home/me/facts"}
    assert plain_environment(mine) == mine
    assert "ANSIBLE_STDOUT_CALLBACK" not in plain_environment({"ANSIBLE_STDOUT_CALLBACK": "awx_display"})
    # A user's own stdout callback outside ansible-runner stays.
    assert plain_environment({"ANSIBLE_STDOUT_CALLBACK": "yaml"}) == {"ANSIBLE_STDOUT_CALLBACK": "yaml"}


NO_SUCH_PID = 2**22 + 4321  # above Linux's largest pid_max


def test_orphaned_means_reparented_or_the_named_starter_gone() -> None:
    callback, _chained = orphaned_guard(os.getppid())
    assert not callback._orphaned()
    callback._parent = NO_SUCH_PID
    assert callback._orphaned()
    callback._parent, callback._started_under = os.getppid(), 1  # reparented since Ansible started
    assert callback._orphaned()


def orphaned_guard(parent: int) -> tuple[guard.CallbackModule, list[int]]:
    """A guard in orphaned mode watching ``parent``, whose chained (Ansible's) handlers record the signal."""
    callback = guard.CallbackModule.__new__(guard.CallbackModule)
    chained: list[int] = []
    callback._pid, callback._parent, callback._tty_fds, callback._acting = os.getpid(), parent, (), False
    callback._started_under = os.getppid()
    callback._starting, callback._running, callback._again, callback._labels = False, [], None, set()
    callback._variable_manager, callback._cwd = None, "/nonexistent"
    callback._previous = {signum: (lambda num, _frame: chained.append(num)) for signum in guard.SIGNALS}
    return callback, chained


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The teardowns the guard starts (their labels), none of them real."""
    labels: list[str] = []

    class Done:
        def poll(self) -> int:
            return 0

    def start(target: object, _wait_s: float) -> tuple[Done, str]:
        labels.append(target.label)  # type: ignore[attr-defined]
        return Done(), "/nonexistent/guard.log"

    monkeypatch.setattr(guard.teardown, "start", start)
    monkeypatch.setattr(guard.teardown, "stop_workers", lambda _pid: None)
    return labels


def test_the_orphaned_guard_leaves_signals_to_a_live_parent(started: list[str]) -> None:
    """Under the API the guard stands down while the API lives: the API's own cancel tears down."""
    callback, chained = orphaned_guard(os.getppid())
    callback._labels = {"exp-1"}
    callback._on_signal(signal.SIGTERM, None)
    assert chained == [signal.SIGTERM] and started == [] and not callback._acting


def test_the_orphaned_guard_tears_down_when_its_parent_is_gone_and_ends_ansible_after_a_hangup(
        started: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    real_kill = os.kill

    def kill(pid: int, signum: int) -> None:
        if signum == 0:
            real_kill(pid, 0)  # the guard's look whether its starter lives
        else:
            sent.append((pid, signum))

    monkeypatch.setattr(guard.os, "kill", kill)
    callback, chained = orphaned_guard(NO_SUCH_PID)  # the API that started us is gone
    callback._labels = {"exp-1"}
    callback.get_option = lambda name: {"unreachable_wait_s": 10, "timeout_s": 5}[name]  # type: ignore[method-assign]
    callback._on_signal(signal.SIGHUP, None)
    # The teardown started, and Ansible ends as for SIGTERM (under ansible-runner SIGHUP is ignored).
    assert started == ["exp-1"] and chained == [signal.SIGTERM] and callback._acting
    callback._on_signal(signal.SIGHUP, None)  # a repeated hangup while acting is not "again": nothing more
    assert started == ["exp-1"] and chained == [signal.SIGTERM]
    callback._watch_parent()  # the handler got there first: no second SIGTERM
    assert sent == []
    callback._acting = False
    callback._watch_parent()  # the parent gone and nobody acting yet: the watcher sends the SIGTERM the guard handles
    assert sent == [(os.getpid(), signal.SIGTERM)]


def test_the_guard_trusts_only_facts_this_playbook_set() -> None:
    # A persistent fact cache (jsonfile, redis) carries an earlier playbook's module facts over: an old sweep fact
    # there must not send an interrupted train.yml down the sweep's path, and an old run fact must not be torn down.
    callback = guard.CallbackModule()
    stale = {"localhost": {"sweep": {"name": "oldsweep"}, "run": {"name": "old-run"}}}
    callback._variable_manager = SimpleNamespace(_fact_cache=stale, _nonpersistent_fact_cache={
        "localhost": {"run_started_at": 100.0}})
    assert "sweep" not in callback._facts() and "run" not in callback._facts()
    callback.v2_runner_on_ok(SimpleNamespace(_result={"ansible_facts": {"run": {"name": "exp-42"}}}))
    facts = callback._facts()
    assert facts["run"] == {"name": "exp-42"} and facts["run_started_at"] == 100.0 and "sweep" not in facts


def test_a_teardown_from_outside_the_run_takes_its_places_from_run_json(tmp_path: Path) -> None:
    run_vars = {"run_remote_dir": "/workspace/{{ run_name }}", "run_keep_checkpoints": "all"}
    # Before train.yml wrote run.json: the variables, train.meta.yml's defaults for a template or a bad value.
    target = Target.of_run("sw-t1", str(tmp_path), run_vars)
    assert (target.remote_dir, target.keep_checkpoints, target.since) == ("/workspace/run", 3, 0.0)
    (tmp_path / "run.json").write_text(json.dumps({"name": "sw-t1", "remote_dir": "/workspace/sw-t1",
                                                   "checkpoint_glob": "ckpt-*", "keep_checkpoints": 0,
                                                   "started_at": 1234.5}))
    target = Target.of_run("sw-t1", str(tmp_path), run_vars)
    assert (target.remote_dir, target.checkpoint_glob, target.keep_checkpoints) == ("/workspace/sw-t1", "ckpt-*", 0)
    assert target.extra_vars(10)["teardown_since"] == 1234.5  # the charges of this run, not the label's history


def test_a_teardown_still_pulling_at_its_deadline_is_stopped_and_destroyed_by_label(tmp_path: Path) -> None:
    pulling = subprocess.Popen(["sleep", "60"], start_new_session=True)
    log = tmp_path / "ansible.log"
    forced = wait_or_destroy([(Target("sw-t1", str(tmp_path)), pulling, str(log))], time.monotonic() + 0.3,
                             env=dict(os.environ), ansible=["/bin/echo", "destroy:"])
    assert forced == ["sw-t1"] and pulling.poll() == -signal.SIGKILL
    text = log.read_text()
    assert "ran past its time: destroying it by label" in text
    assert 'destroy:' in text and '"teardown_label": "sw-t1"' in text and "-i" not in text.split("destroy:")[1]


def test_the_sweeps_outcome_is_this_runs_and_this_sweeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "contracts.jsonl"
    ledger.write_text("".join(json.dumps(r) + "\n" for r in [
        {"event": "created", "id": 1, "label": "sw-b-t1"},  # another sweep, named sw-b
        {"event": "created", "id": 2, "label": "sw-t2"}]))
    monkeypatch.setenv("MLOPS_VAST_LEDGER", str(ledger))
    (tmp_path / "sweep-state.json").write_text(json.dumps({"updated_at": 50.0, "trials": [
        {"label": "sw-t1", "state": "cancelled", "results_dir": str(tmp_path / "t1")},
        {"label": "sw-t2", "state": "skipped"}]}))
    lines = sweep_outcome("sw", str(tmp_path), since=10.0)
    assert "1 running trial(s) stopped, 1 not started" in lines[-1]
    assert "STILL OPEN in the local ledger: 2;" in lines[-1]  # sw-b-t1 is not this sweep's
    # A state an earlier run left (the signal came before this run's scheduler wrote its own): no trial started.
    assert "0 running trial(s) stopped, 0 not started" in sweep_outcome("sw", str(tmp_path), since=60.0)[-1]


def _frames_of(call: object) -> list:
    import sys

    frames: list = []
    sys.setprofile(lambda frame, event, _arg: frames.append(frame) if event == "call" else None)
    try:
        call()  # type: ignore[operator]
    finally:
        sys.setprofile(None)
    return frames


def test_a_signal_in_an_at_fork_hook_reaches_ansible_again_a_moment_later() -> None:
    """SIGINT while a worker was forked: Ansible's handler raised KeyboardInterrupt in logging's at-fork hook, where
    Python ignores it; Ansible went on and found its worker dead (the fault matrix's sigint-in-smoke, now and then).
    The guard sends the signal again, and chains to Ansible's handler where its exception counts."""
    import logging

    # The hooks os.fork runs in the parent: _acquireLock/_releaseLock up to Python 3.12, _prepareFork/_afterFork on.
    before, after = next((getattr(logging, a), getattr(logging, b)) for a, b in
                         (("_acquireLock", "_releaseLock"), ("_prepareFork", "_afterFork")) if hasattr(logging, b))

    def lock_and_release() -> None:
        before()
        after()

    hook = next(f for f in _frames_of(lock_and_release) if f.f_code.co_name == after.__name__)
    assert guard._swallows_exceptions(hook)
    assert not guard._swallows_exceptions(next(f for f in _frames_of(lambda: json.dumps({})) if f.f_code.co_name))
    _assert_sent_again(hook)


def _assert_sent_again(unsafe: object, safe: object = None) -> None:
    """The guard's chaining: a SIGINT that came in the frame ``unsafe`` is not handed to Ansible's handler but sent
    again; one that came in ``safe`` (None: no frame) is handed over at once."""
    chained: list[int] = []
    module = guard.CallbackModule.__new__(guard.CallbackModule)
    module._previous = {signal.SIGINT: lambda signum, _frame: chained.append(signum)}
    module._pid, module._rechain, module._rechained = os.getpid(), None, 0
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        module._chain(signal.SIGINT, unsafe)
        assert chained == [] and module._rechain == signal.SIGINT  # not raised where it would do harm
        end = time.monotonic() + 5
        while not received and time.monotonic() < end:
            time.sleep(0.01)
        assert received == [signal.SIGINT]  # sent again
    finally:
        signal.signal(signal.SIGINT, previous)
    module._chain(signal.SIGINT, safe)  # where it does no harm: Ansible's handler at once
    assert chained == [signal.SIGINT]


def test_a_signal_halfway_into_or_out_of_a_templating_context_waits_until_it_is_whole() -> None:
    """SIGINT while ansible-core pushed or popped one of its templating contexts: Ansible's KeyboardInterrupt there
    left the contexts' stack out of order, the next pop raised "Out-of-order context deactivation detected", and
    the playbook ended with status 4 instead of as interrupted (the fault matrix's sigint-in-smoke, under load).
    The guard sends such a signal again a moment later, as it does one that lands in an at-fork hook."""
    from ansible._internal._templating._datatag import DeprecatedAccessAuditContext
    from ansible._internal._templating._jinja_common import JinjaCallContext

    def nested_contexts() -> None:
        with DeprecatedAccessAuditContext(), JinjaCallContext(accept_lazy_markers=False):
            json.dumps({})

    frames = _frames_of(nested_contexts)
    halfway = [f for f in frames if f.f_code.co_name in ("__enter__", "__exit__", "_register_interest",
                                                         "_unregister_interest")]
    assert {f.f_code.co_name for f in halfway} >= {"__enter__", "__exit__", "_register_interest",
                                                  "_unregister_interest"}
    assert all(guard._in_context_bookkeeping(f) for f in halfway)
    # In the with block's body, and anywhere else, an interruption is raised at once.
    body = next(f for f in frames if f.f_code.co_name == "dumps")
    assert not guard._in_context_bookkeeping(body)
    assert not guard._in_context_bookkeeping(next(f for f in _frames_of(lambda: json.dumps({})) if f.f_code.co_name))
    _assert_sent_again(halfway[0], body)
