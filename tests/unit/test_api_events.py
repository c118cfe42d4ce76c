"""Progress events: merging the callback's and the watch's files, diffs into typed events, runner events into
warnings, the sweep watcher, results from a results directory, and the mlops.vast.progress callback."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

from ansible_collections.mlops.vast.plugins.callback import progress as callback

from mlops_vast import api
from mlops_vast import events as ev


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_merge_takes_the_phase_from_the_callback_and_the_numbers_from_the_watch() -> None:
    snap = ev.merge("r", {"phase": "training", "task": "watch", "updated_at": 10},
                    {"step": 120, "total_steps": 400, "loss": 0.25, "spent_usd": 0.01, "dph": 0.2, "eta_s": 33.3,
                     "instance_id": 7, "updated_at": 12})
    assert (snap.phase, snap.task, snap.step, snap.total, snap.loss) == ("training", "watch", 120, 400, 0.25)
    assert (snap.spent_usd, snap.dph, snap.eta_s, snap.instance_id, snap.updated_at) == (0.01, 0.2, 33.3, 7, 12)


def test_merge_keeps_what_a_file_no_longer_says_and_ignores_junk() -> None:
    base = ev.merge("r", {"phase": "training"}, {"step": 50, "loss": 0.5})
    again = ev.merge("r", {"phase": "recovering", "task": "wait"}, {"step": None, "loss": "nan?", "dph": True}, base)
    assert (again.phase, again.step, again.loss, again.dph) == ("recovering", 50, 0.5, None)
    assert ev.merge("r", {"phase": "no-such-phase"}, None).phase == "checking"
    assert ev.merge("r", None, {"loss": float("inf")}).loss is None


def test_diff_gives_typed_events_only_for_what_changed() -> None:
    first = ev.merge("r", {"phase": "training"}, {"step": 10, "total_steps": 100, "loss": 1.0, "spent_usd": 0.1,
                                                  "dph": 0.5})
    kinds = [type(e).__name__ for e in ev.diff(None, first)]
    assert kinds == ["PhaseChanged", "Spend", "Progress"]
    assert ev.diff(first, first) == []
    second = ev.merge("r", {"phase": "training"}, {"step": 20, "loss": 0.9}, first)
    events = ev.diff(first, second)
    assert events == [ev.Progress(run="r", step=20, total=100, loss=0.9)]
    third = ev.merge("r", {"phase": "teardown"}, {"spent_usd": 0.2}, second)
    assert [type(e) for e in ev.diff(second, third)] == [ev.PhaseChanged, ev.Spend]
    assert ev.diff(second, third)[0].previous == "training"


def test_read_snapshot_ignores_files_an_earlier_run_left(tmp_path: Path) -> None:
    write(tmp_path / ev.PROGRESS_FILE, {"phase": "done", "outcome": "completed", "updated_at": 100})
    write(tmp_path / ev.WATCH_FILE, {"step": 400, "updated_at": 100})
    assert ev.read_snapshot("r", tmp_path, not_before=200) == ev.Snapshot(run="r")
    assert ev.read_snapshot("r", tmp_path, not_before=50).step == 400
    (tmp_path / ev.WATCH_FILE).write_text("{half")
    assert ev.read_snapshot("r", tmp_path).step is None


def test_runner_events_become_warnings() -> None:
    failed = {"event": "runner_on_failed", "event_data": {"task": "Probe", "res": {"msg": "too\n slow"}}}
    assert ev.warning_from_runner_event(failed, "r") == ev.Warning(run="r", message="too slow", task="Probe")
    verbose = {"event": "verbose", "stdout": "\x1b[1;35m[WARNING]: something odd\x1b[0m"}
    assert ev.warning_from_runner_event(verbose, "r").message == "something odd"
    benign = {"event": "verbose", "stdout": "[WARNING]: No inventory was parsed, only implicit localhost"}
    assert ev.warning_from_runner_event(benign, "r") is None
    assert ev.warning_from_runner_event({"event": "runner_on_ok", "event_data": {}}, "r") is None


def test_sweep_watcher_follows_the_state_and_each_trials_files(tmp_path: Path) -> None:
    seen: list[ev.Event] = []
    started = time.time()
    watcher = api._SweepWatcher("s", tmp_path, started, api._Emitter(seen.append))
    t0, t1 = tmp_path / "t000", tmp_path / "t001"
    state = {"sweep": "s", "budget_usd": 1, "spent_usd": 0, "trials": [
        {"id": "t000", "label": "s-t000", "state": "running", "results_dir": str(t0), "started_at": started},
        {"id": "t001", "label": "s-t001", "state": "queued", "results_dir": str(t1)}]}
    write(tmp_path / "sweep-state.json", state)
    write(t0 / ev.PROGRESS_FILE, {"phase": "training", "updated_at": started + 1})
    write(t0 / ev.WATCH_FILE, {"step": 30, "total_steps": 100, "loss": 0.7, "spent_usd": 0.02, "dph": 0.3,
                               "updated_at": started + 1})
    watcher.poll()
    by_run = {(type(e).__name__, e.run) for e in seen}
    assert ("TrialStateChanged", "s-t000") in by_run and ("TrialStateChanged", "s-t001") in by_run
    assert ("Progress", "s-t000") in by_run and ("Progress", "s-t001") not in by_run
    seen.clear()
    state["trials"][0].update(state="done", outcome="completed")
    write(tmp_path / "sweep-state.json", state)
    watcher.poll()
    changes = [e for e in seen if isinstance(e, ev.TrialStateChanged)]
    assert changes == [ev.TrialStateChanged(run="s-t000", trial="s-t000", state="done", previous="running",
                                            outcome="completed")]
    assert watcher.snaps["s-t000"].phase == "done"


def test_sweep_result_reads_the_rows_and_names_the_outcome(tmp_path: Path) -> None:
    rows = [{"id": "t000", "label": "s-t000", "params": {"lr": 0.1}, "outcome": "completed", "final_loss": 0.2,
             "best_loss": 0.1, "steps": 100, "cost_usd": 0.01, "attempts": 1, "hosts": [5], "duration_s": 30.0,
             "message": "", "results_dir": "/x", "extra_col": 1},
            {"id": "t001", "label": "s-t001", "params": {"lr": 1.0}, "outcome": "crash", "final_loss": None,
             "best_loss": None, "steps": 10, "cost_usd": 0.003, "attempts": 1, "hosts": [6], "duration_s": 9.0,
             "message": "RuntimeError: boom at step 10", "results_dir": "/y"}]
    write(tmp_path / "trials.json", rows)
    watcher = api._SweepWatcher("s", tmp_path, time.time() - 5, api._Emitter(None))
    result = api._sweep_result("s", tmp_path, "failed", 2, False, watcher, tmp_path / "artifacts")
    assert result.outcome == "partial" and [r.as_dict() for r in result.trials] == rows
    assert result.trials[1].message == "RuntimeError: boom at step 10" and result.trials[0].extra == {"extra_col": 1}
    result = api._sweep_result("s", tmp_path, "successful", 0, False, watcher, tmp_path / "artifacts")
    assert result.outcome == "partial"  # a trial did not complete, whatever the status says
    write(tmp_path / "trials.json", rows[:1])
    assert api._sweep_result("s", tmp_path, "successful", 0, False, watcher, tmp_path).outcome == "completed"
    assert api._sweep_result("s", tmp_path, "canceled", 254, True, watcher, tmp_path).outcome == "cancelled"


def test_run_result_reads_the_results_directory_and_trusts_the_status_not_the_rc(tmp_path: Path) -> None:
    write(tmp_path / "watch.json", {"outcome": "completed", "msg": "ok", "triage": {"step": 400, "loss": 0.1,
                                                                                   "spent_usd": 0.002}})
    write(tmp_path / "watch-recovery-1.json", {"outcome": "completed", "triage": {"spent_usd": 0.001}})
    write(tmp_path / "recovery.json", {"attempts": 2})
    for name in ("checkpoint-100", "checkpoint-50", "checkpoint-150"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    result = api._run_result("r", tmp_path, "successful", 0, False, None, tmp_path / "none")
    assert result.outcome == "completed" and result.attempts == 2 and result.cost_usd == 0.003
    assert [p.name for p in result.checkpoints] == ["checkpoint-50", "checkpoint-100", "checkpoint-150"]
    events = tmp_path / "art" / "job_events"
    write(events / "1-a.json", {"event": "runner_on_failed", "event_data": {"task": "Probe", "ignore_errors": True,
                                                                            "res": {"msg": "ignored"}}})
    write(events / "2-b.json", {"event": "runner_on_failed", "event_data": {"task": "Report the run",
                                                                            "res": {"msg": "did not complete"}}})
    failed = api._run_result("r", tmp_path, "failed", 0, False, None, tmp_path / "art")  # rc 0: the status rules
    assert failed.outcome == "failed" and failed.message == "Report the run: did not complete"
    cancelled = api._run_result("r", tmp_path, "canceled", 254, True, True, tmp_path / "art")
    assert cancelled.outcome == "cancelled" and "torn down" in cancelled.message


class FakeRole:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


class FakeTask:
    def __init__(self, name: str, role: str | None = None) -> None:
        self.name, self._role = name, FakeRole(role) if role else None

    def get_name(self) -> str:
        return self.name


class FakePlay:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


PHASE_ORDER = list(callback.PHASES)


def make_callback(path: Path) -> callback.CallbackModule:
    plugin = callback.CallbackModule()
    plugin._path = str(path)
    return plugin


def test_progress_callback_phases_follow_the_roles_and_recovery_only_when_it_runs(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "progress.json"
    plugin = make_callback(path)

    def phase() -> str:
        return json.loads(path.read_text())["phase"]

    plugin.v2_playbook_on_play_start(FakePlay("Check the run, then rent a host that passes the checks"))
    assert phase() == "checking"
    for role, expected in (("mlops.vast.provision", "renting"), ("mlops.vast.setup", "setup"),
                           ("smoke_test", "smoke"), ("mlops.vast.train", "launching"),
                           ("mlops.vast.watch", "training")):
        plugin.v2_playbook_on_task_start(FakeTask("t", role), False)
        assert phase() == expected
    plugin.v2_playbook_on_task_start(FakeTask("Note how the attempt ended"), False)
    assert phase() == "training"
    # A recovery round that is not wanted: its tasks start and skip; the phase stays.
    plugin.v2_playbook_on_play_start(FakePlay("Recovery: decide, wait in place or replace (round 1)"))
    plugin.v2_playbook_on_task_start(FakeTask("Is this round wanted"), False)
    plugin.v2_runner_on_ok(SimpleNamespace(_result={"ansible_facts": {"recovery_wanted": False}}))
    plugin.v2_playbook_on_task_start(FakeTask("Recover"), False)
    assert phase() == "training"
    # One that is.
    plugin.v2_playbook_on_play_start(FakePlay("Recovery: decide, wait in place or replace (round 2)"))
    plugin.v2_playbook_on_task_start(FakeTask("Is this round wanted"), False)
    plugin.v2_runner_on_ok(SimpleNamespace(_result={"ansible_facts": {"recovery_wanted": True}}))
    assert phase() == "recovering"
    plugin.v2_playbook_on_task_start(FakeTask("setup again", "mlops.vast.setup"), False)
    assert phase() == "recovering"
    plugin.v2_playbook_on_play_start(FakePlay("Recovery: watch (round 2)"))
    plugin.v2_playbook_on_task_start(FakeTask("w", "mlops.vast.watch"), False)
    assert phase() == "training"
    # The roles the watch includes (its checkpoint pull) run inside that training: no flapping back to recovering.
    plugin.v2_playbook_on_task_start(FakeTask("pull", "mlops.vast.checkpoint_sync"), False)
    plugin.v2_runner_on_ok(SimpleNamespace(_result={}))
    plugin.v2_playbook_on_task_start(FakeTask("Watch the run until it ends", "mlops.vast.watch"), False)
    assert phase() == "training"
    phases_seen = []
    original = plugin._write

    def spy(**changes: object) -> None:
        phases_seen.append(changes.get("phase"))
        original(**changes)
    plugin._write = spy  # type: ignore[method-assign]
    plugin.v2_playbook_on_task_start(FakeTask("pull again", "mlops.vast.checkpoint_sync"), False)
    plugin.v2_runner_on_ok(SimpleNamespace(_result={}))
    assert "recovering" not in phases_seen, phases_seen
    plugin._write = original  # type: ignore[method-assign]
    plugin.v2_playbook_on_play_start(FakePlay("Bring results home, tear down"))
    plugin.v2_playbook_on_task_start(FakeTask("t", "mlops.vast.teardown"), False)
    assert phase() == "teardown"
    stats = SimpleNamespace(processed={"localhost": 1}, summarize=lambda host: {"failures": 0})
    plugin.v2_playbook_on_stats(stats)
    data = json.loads(path.read_text())
    assert data["phase"] == "done" and data["outcome"] == "completed" and data["updated_at"] >= data["started_at"]
    # Each phase with when it was first entered (a second training after recovery keeps the first time).
    entered = sorted(data["phases"], key=lambda name: (data["phases"][name], PHASE_ORDER.index(name)))
    assert entered == ["renting", "setup", "smoke", "launching", "training", "recovering", "teardown", "done"]
    assert data["tasks"] == 15  # every task_start above
    stats = SimpleNamespace(processed={"localhost": 1}, summarize=lambda host: {"failures": 1})
    plugin.v2_playbook_on_stats(stats)
    assert json.loads(path.read_text())["outcome"] == "failed"
    assert [p.name for p in path.parent.iterdir()] == ["progress.json"]  # no temporary file left


def test_progress_callback_without_a_file_writes_nothing(tmp_path: Path) -> None:
    plugin = callback.CallbackModule()
    plugin.v2_playbook_on_play_start(FakePlay("p"))
    plugin.v2_playbook_on_stats(SimpleNamespace(processed={}, summarize=lambda host: {}))
    assert list(tmp_path.iterdir()) == []


def test_a_run_stopped_from_the_api_is_torn_down_where_train_yml_put_it(tmp_path: Path) -> None:
    run_vars = {"run_remote_dir": "/workspace/{{ run_name }}", "run_keep_checkpoints": "0"}
    assert api._teardown_vars("exp", tmp_path, run_vars, since=100.0) == {
        "teardown_label": "exp", "teardown_results_dir": str(tmp_path), "teardown_remote_dir": "/workspace/run",
        "teardown_checkpoint_glob": "checkpoint-*", "teardown_keep_checkpoints": 0,
        "teardown_unreachable_wait_s": api.UNREACHABLE_WAIT_S, "teardown_since": 100.0}
    resolved = {"remote_dir": "/workspace/exp", "checkpoint_glob": "ckpt-*", "keep_checkpoints": 2}
    (tmp_path / "run.json").write_text(json.dumps({**resolved, "started_at": 50.0}))  # an earlier run's
    assert api._teardown_vars("exp", tmp_path, run_vars, since=100.0)["teardown_remote_dir"] == "/workspace/run"
    (tmp_path / "run.json").write_text(json.dumps({**resolved, "started_at": 101.0}))
    said = api._teardown_vars("exp", tmp_path, run_vars, since=100.0)
    assert (said["teardown_remote_dir"], said["teardown_checkpoint_glob"], said["teardown_keep_checkpoints"]) == (
        "/workspace/exp", "ckpt-*", 2)


def test_the_result_is_this_runs_last_attempt_with_what_the_account_charged(tmp_path: Path) -> None:
    earlier = tmp_path / "watch-recovery-1.json"  # an earlier run of the name was preempted once
    earlier.write_text(json.dumps({"outcome": "preempted", "triage": {"spent_usd": 0.3}}))
    os.utime(earlier, (1000.0, 1000.0))
    (tmp_path / "watch.json").write_text(json.dumps({"outcome": "completed", "triage": {"spent_usd": 0.5}}))
    started = time.time() - 60
    result = api._run_result("exp", tmp_path, "successful", 0, False, None, tmp_path, started)
    assert (result.watch_outcome, result.cost_usd) == ("completed", 0.5)
    (tmp_path / "watch-recovery-1.json").write_text(json.dumps({"outcome": "completed",
                                                                "triage": {"spent_usd": 0.25}}))
    (tmp_path / "watch.json").write_text(json.dumps({"outcome": "preempted", "triage": {"spent_usd": 0.5}}))
    (tmp_path / "spend.json").write_text(json.dumps({"at": time.time(), "total_usd": 0.9}))  # a rejected host too
    result = api._run_result("exp", tmp_path, "successful", 0, False, None, tmp_path, started)
    assert (result.watch_outcome, result.cost_usd) == ("completed", 0.9)
    # An earlier run's teardown and recovery records are not this run's (one cancelled before its teardown wrote).
    for name, record in (("teardown.json", {"newest_checkpoint": "checkpoint-400"}),
                         ("recovery.json", {"attempts": 3})):
        (tmp_path / name).write_text(json.dumps(record))
        os.utime(tmp_path / name, (1000.0, 1000.0))
    result = api._run_result("exp", tmp_path, "canceled", None, True, True, tmp_path, started)
    assert result.teardown is None and result.attempts == 1, (result.teardown, result.attempts)
    (tmp_path / "teardown.json").write_text(json.dumps({"newest_checkpoint": "checkpoint-50"}))
    assert api._run_result("exp", tmp_path, "canceled", None, True, True, tmp_path, started).teardown == {
        "newest_checkpoint": "checkpoint-50"}


def test_an_instance_resumed_in_place_counts_once_and_unsealed_is_not_a_checkpoint(tmp_path: Path) -> None:
    # Preempted, then resumed on the same instance: the second round's watch reports that instance's whole spend.
    write(tmp_path / "watch.json", {"outcome": "preempted", "instance": {"id": 7}, "triage": {"spent_usd": 0.0004}})
    write(tmp_path / "watch-recovery-1.json", {"outcome": "completed", "instance": {"id": 7},
                                               "triage": {"spent_usd": 0.0009}})
    for name in ("checkpoint-50", "checkpoint-100", "unsealed"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    result = api._run_result("r", tmp_path, "successful", 0, False, None, tmp_path / "none")
    assert result.cost_usd == 0.0009
    assert [p.name for p in result.checkpoints] == ["checkpoint-50", "checkpoint-100"]


def test_spend_goes_on_from_the_replaced_instance_never_back() -> None:
    first = ev.merge("r", None, {"instance_id": 1, "spent_usd": 0.000664, "dph": 0.2})
    again = ev.merge("r", None, {"instance_id": 1, "spent_usd": 0.0007}, first)
    assert again.spent_usd == 0.0007
    replaced = ev.merge("r", None, {"instance_id": 2, "spent_usd": 0.000254, "dph": 0.1265}, again)
    assert replaced.spent_usd == 0.000954 and replaced.dph == 0.1265  # the first instance's 0.0007 and the new one's
    later = ev.merge("r", None, {"instance_id": 2, "spent_usd": 0.0003}, replaced)
    assert later.spent_usd == 0.001
    assert [type(e).__name__ for e in ev.diff(replaced, later)] == ["Spend"]


def test_a_cancelled_sweep_tears_down_the_trials_the_ledger_holds_open_or_all_when_it_cannot_be_read(
        tmp_path: Path) -> None:
    trials = [{"label": "t-a"}, {"label": "t-b"}, {"label": "t-c"}]
    ledger = tmp_path / "contracts.jsonl"
    ledger.write_text("".join(json.dumps(line) + "\n" for line in (
        {"event": "created", "id": 1, "label": "t-a", "api_url": "http://x"},
        {"event": "created", "id": 2, "label": "t-b", "api_url": "http://x"},
        {"event": "destroyed", "id": 1, "api_url": "http://x"})))
    said: list[ev.Event] = []
    assert api._trials_still_open(trials, ledger, said.append, "s") == [{"label": "t-b"}]
    assert said == []
    # A ledger that is there but cannot be read (here a folder) says nothing of what bills: all are torn down.
    assert api._trials_still_open(trials, tmp_path, said.append, "s") == trials
    assert len(said) == 1 and isinstance(said[0], ev.Warning)
    assert "cannot read the contract ledger" in said[0].message and "every trial" in said[0].message


def test_a_teardown_that_goes_on_says_so_each_time_it_has_taken_as_long_again(tmp_path: Path,
                                                                               monkeypatch) -> None:
    # ansible-playbook stands in for a teardown whose destroy the API keeps refusing: it sits in that task.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ansible-playbook").write_text("#!/bin/sh\necho 'TASK [Destroy the instances with the label] ***'\n"
                                              "sleep 1.4\n")
    (bin_dir / "ansible-playbook").chmod(0o755)
    monkeypatch.setattr(api.sys, "executable", str(bin_dir / "python3"))
    ctx = api._Context(root=api.collection_root(), cwd=tmp_path, env_extra={}, key_file=None, scratch=tmp_path)
    seen: list[ev.Event] = []
    outcome = api._teardown(ctx, [{"teardown_label": "slow-run", "teardown_results_dir": str(tmp_path / "r")}],
                            emit=seen.append, slow_s=0.5)
    assert outcome == {"slow-run": True}
    warnings = [e for e in seen if isinstance(e, ev.Warning)]
    assert 2 <= len(warnings) <= 3, warnings
    first = warnings[0]
    assert first.run == "slow-run" and first.task == "Destroy the instances with the label"
    assert re.match(r"still tearing down after \d s \(at: Destroy the instances with the label\); the instance "
                    r"bills until it is destroyed\. After 900 s the teardown is stopped", first.message), first.message
    assert first.message.endswith(f"Its log: {tmp_path / 'r' / 'teardown-slow-run.log'}")
    # A quick one says nothing.
    (bin_dir / "ansible-playbook").write_text("#!/bin/sh\nexit 0\n")
    seen.clear()
    assert api._teardown(ctx, [{"teardown_label": "quick", "teardown_results_dir": str(tmp_path / "q")}],
                         emit=seen.append, slow_s=5) == {"quick": True}
    assert seen == []
