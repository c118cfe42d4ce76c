"""The sweep scheduler with real trial processes (short Python children standing in for train.yml): the
parallel cap, failure isolation, the shared budget, stopping on request, and its live state file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_plan import SweepSpecError
from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_scheduler import (
    MIN_TRIAL_USD,
    Budget,
    Scheduler,
    SweepLock,
    Trial,
    trial_environment,
    trial_floor,
    trial_strategy,
)


class Harness:
    """Trials whose process sleeps ``seconds`` then exits ``rc``, and reports ``cost`` as its spend."""

    def __init__(self, tmp_path: Path, specs: list[dict], *, max_parallel: int = 2, budget: Budget | None = None,
                 trial_timeout_s: float = 60, rows: bool = False) -> None:
        self.tmp_path = tmp_path
        self.rows = rows
        self.trials = [Trial(id=f"t{i:03d}", label=f"sw-t{i:03d}", params=spec, results_dir=str(tmp_path / f"t{i}"))
                       for i, spec in enumerate(specs)]
        self.started: list[tuple[str, float]] = []
        self.ended: dict[str, float] = {}
        self.torn_down: list[str] = []
        self.finished: list[str] = []
        self.scheduler = Scheduler(
            self.trials, launch=self.launch, max_parallel=max_parallel, budget=budget or Budget(total=0),
            state_file=str(tmp_path / "sweep-state.json"), cancel_file=str(tmp_path / "CANCEL"), sweep_name="sw",
            finish=self.finish, teardown=lambda ts: self.torn_down.extend(t.label for t in ts),
            spend_of=lambda t: float(t.params.get("cost", 0.0)) if t.state != "queued" else 0.0,
            trial_timeout_s=trial_timeout_s, poll_s=0.05, stop_grace_s=2)

    def launch(self, trial: Trial) -> subprocess.Popen:
        self.started.append((trial.id, time.monotonic()))
        seconds, rc = trial.params.get("seconds", 0.2), trial.params.get("rc", 0)
        script = f"import time; time.sleep({seconds}); raise SystemExit({rc})"
        if trial.params.get("reads_vars"):
            # As a trial's playbook: reads its variables, starts its first play (the progress file), then runs on.
            script = (f"import os, sys, time; open({os.path.join(trial.results_dir, 'progress.json')!r}, 'w').close()"
                      f"\nfor _ in range(100):\n    if not os.path.exists({trial.vars_file!r}): sys.exit(0)\n"
                      "    time.sleep(0.05)\nsys.exit(7)")
        if trial.params.get("signal"):
            script = f"import os, time; time.sleep({seconds}); os.kill(os.getpid(), {trial.params['signal']})"
        return subprocess.Popen([sys.executable, "-c", script], start_new_session=True)

    def finish(self, trial: Trial) -> None:
        self.ended[trial.id] = time.monotonic()
        self.finished.append(trial.id)
        if self.rows:
            # As the sweep action's finish does: a row whose failure message is what the trial's log said.
            outcome = trial.outcome or ("completed" if trial.rc == 0 else "failed")
            trial.row = {"id": trial.id, "outcome": outcome,
                         "message": trial.params.get("says", "") if outcome == "failed" else ""}
            trial.outcome = outcome

    def max_concurrent(self) -> int:
        events = sorted([(t, 1) for _, t in self.started] + [(t, -1) for t in self.ended.values()])
        level = peak = 0
        for _, delta in events:
            level += delta
            peak = max(peak, level)
        return peak


def test_at_most_max_parallel_at_once_and_every_trial_runs(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{"seconds": 0.4}] * 5, max_parallel=2)
    trials = run.scheduler.run(deadline_s=60)
    assert [t.state for t in trials] == ["done"] * 5 and all(t.rc == 0 for t in trials)
    assert run.max_concurrent() == 2
    state = json.loads((tmp_path / "sweep-state.json").read_text())
    assert [t["state"] for t in state["trials"]] == ["done"] * 5 and state["sweep"] == "sw"


def test_a_failing_trial_does_not_stop_the_others(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{"rc": 2, "seconds": 0.05}, {"seconds": 0.3}, {"rc": 1}, {}], max_parallel=2)
    trials = run.scheduler.run(deadline_s=60)
    assert [t.rc for t in trials] == [2, 0, 1, 0]
    assert sorted(run.finished) == ["t000", "t001", "t002", "t003"]
    assert run.torn_down == []  # a trial that ended on its own tore itself down (its train.yml did)


def test_no_trial_starts_when_its_cap_would_pass_the_budget(tmp_path: Path) -> None:
    # Each trial may spend 0.4 of its own (run_max_total_usd); a 1.0 budget holds two such caps at a time, and
    # after two trials that spent 0.4 each, only 0.2 is left: the rest are skipped for the budget.
    specs = [{"cost": 0.4, "seconds": 0.2}] * 5
    run = Harness(tmp_path, specs, max_parallel=4, budget=Budget(total=1.0, run_cap=0.4))
    trials = run.scheduler.run(deadline_s=60)
    assert [t.state for t in trials] == ["done", "done", "skipped", "skipped", "skipped"]
    assert [t.outcome for t in trials[2:]] == ["budget"] * 3
    assert run.max_concurrent() == 2
    assert all(t.cap_usd == 0.4 for t in trials[:2])


def test_without_a_cap_of_its_own_each_trial_gets_a_share_of_what_is_left(tmp_path: Path) -> None:
    specs = [{"cost": 0.01, "seconds": 0.1}] * 4
    run = Harness(tmp_path, specs, max_parallel=1, budget=Budget(total=1.0))
    trials = run.scheduler.run(deadline_s=60)
    assert all(t.state == "done" for t in trials)
    caps = [t.cap_usd for t in trials]
    assert caps[0] == 0.25
    # Trials that spend less than their share leave more for those after them, and the caps never add past it.
    assert caps == sorted(caps) and caps[-1] > 0.25
    assert sum(t.cost_usd for t in trials[:-1]) + caps[-1] <= 1.0 + 1e-9


def test_spend_reaching_the_budget_stops_the_running_trials_and_tears_them_down(tmp_path: Path) -> None:
    specs = [{"cost": 0.6, "seconds": 30}, {"cost": 0.6, "seconds": 30}, {"seconds": 0.1}]
    run = Harness(tmp_path, specs, max_parallel=2, budget=Budget(total=1.0, run_cap=0.5))
    began = time.monotonic()
    trials = run.scheduler.run(deadline_s=60)
    assert time.monotonic() - began < 20
    assert sorted(run.torn_down) == ["sw-t000", "sw-t001"]
    assert [t.outcome for t in trials] == ["budget", "budget", "budget"]
    assert trials[2].state == "skipped" and all(t.process.poll() is not None for t in trials[:2])
    assert "spend reached the sweep's budget sweep_budget_usd $1" in trials[2].message


def test_the_cancel_file_stops_everything_and_tears_down_what_ran(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{"seconds": 30}] * 3, max_parallel=2)
    timer = threading.Timer(0.5, (tmp_path / "CANCEL").touch)
    timer.start()
    trials = run.scheduler.run(deadline_s=60)
    timer.join()
    assert [t.state for t in trials] == ["cancelled", "cancelled", "skipped"]
    assert all(t.outcome == "cancelled" for t in trials)
    assert sorted(run.torn_down) == ["sw-t000", "sw-t001"]
    assert "CANCEL" in json.loads((tmp_path / "sweep-state.json").read_text())["cancelled"]
    # Each row says why (the final line points at the message column).
    assert "CANCEL was created): stopped, its newest sealed checkpoint brought home" in trials[0].message
    assert trials[2].message.startswith("not started, nothing rented: asked to stop")


def test_a_trial_past_its_timeout_is_stopped_and_torn_down(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{"seconds": 30}, {"seconds": 0.1}], max_parallel=2, trial_timeout_s=0.5)
    trials = run.scheduler.run(deadline_s=60)
    assert trials[0].outcome == "timeout" and run.torn_down == ["sw-t000"]
    assert trials[0].message.startswith("ran past the trial timeout of 0.5 s (sweep_trial_timeout_s): stopped")
    assert trials[1].rc == 0 and trials[1].outcome is None


def test_a_trial_that_ended_with_its_instance_still_open_is_torn_down(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{"rc": 4}, {}], max_parallel=2)
    run.scheduler.left_open = lambda trial: [{"id": 1}] if trial.id == "t000" else []
    trials = run.scheduler.run(deadline_s=60)
    assert run.torn_down == ["sw-t000"]
    assert trials[0].orphaned and not trials[1].orphaned


def test_a_killed_trial_s_row_says_it_was_killed_and_what_the_sweep_did(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{"signal": 9}, {"signal": 15}, {"rc": 3, "says": "the smoke test failed"}], max_parallel=3,
                  rows=True)
    run.scheduler.left_open = lambda trial: [{"id": 1}] if trial.id == "t000" else []
    trials = run.scheduler.run(deadline_s=60)
    assert run.torn_down == ["sw-t000"] and [t.rc for t in trials] == [-9, -15, 3]
    assert trials[0].row["message"] == ("its playbook was killed (SIGKILL); the sweep tore its instance down, "
                                        "bringing its newest sealed checkpoint home first (teardown.json in its "
                                        "folder says what came home)")
    assert trials[1].row["message"] == "its playbook was killed (SIGTERM); nothing of it was left open"
    assert trials[2].row["message"] == "the smoke test failed", "what the trial's own log said comes first"


def test_a_trial_runs_with_the_sweep_s_strategy_its_progress_file_and_no_guard_of_its_own() -> None:
    base = {"PATH": "/usr/bin", "ANSIBLE_CALLBACKS_ENABLED": "mlops.vast.guard,", "ANSIBLE_STRATEGY": "free"}
    env = trial_environment(base, progress_file="/r/t1/progress.json", strategy="mlops.vast.linear")
    assert env["ANSIBLE_STRATEGY"] == "mlops.vast.linear" and env["PATH"] == "/usr/bin"
    assert env["ANSIBLE_CALLBACKS_ENABLED"] == "mlops.vast.guard,mlops.vast.progress"
    assert env["MLOPS_VAST_PROGRESS_FILE"] == "/r/t1/progress.json" and env["MLOPS_VAST_GUARD"] == "off"
    assert base["ANSIBLE_STRATEGY"] == "free"  # the sweep's own environment is left as it was
    # An empty strategy leaves the choice to the environment (and ansible.cfg), as for a plain ansible-playbook.
    assert trial_environment(base, progress_file="p", strategy="")["ANSIBLE_STRATEGY"] == "free"
    assert "ANSIBLE_STRATEGY" not in trial_environment({}, progress_file="p", strategy="")
    # Under ansible-runner (mlops_vast.sweep()): the trial's ansible.log is plain text, not the sweep's events.
    runner = {**base, "ANSIBLE_STDOUT_CALLBACK": "awx_display", "AWX_ISOLATED_DATA_DIR": "/r/runner/artifacts/x"}
    env = trial_environment(runner, progress_file="p", strategy="")
    assert "ANSIBLE_STDOUT_CALLBACK" not in env and "AWX_ISOLATED_DATA_DIR" not in env


def test_auto_is_the_collection_s_strategy_unless_the_user_chose_one_or_ansible_core_is_not_2_19() -> None:
    assert trial_strategy("auto", "default", "2.19.4") == "mlops.vast.linear"
    assert trial_strategy("auto", "env: ANSIBLE_STRATEGY", "2.19.4") == ""  # theirs, from the environment
    assert trial_strategy("auto", "/home/me/ansible.cfg", "2.19.4") == ""  # theirs, from ansible.cfg
    assert trial_strategy("auto", "default", "2.20.0") == ""  # written for 2.19's internals
    assert trial_strategy("ansible.builtin.free", "env: ANSIBLE_STRATEGY", "2.19.4") == "ansible.builtin.free"
    assert trial_strategy("", "default", "2.19.4") == ""


def test_a_share_below_the_watchs_reserve_at_the_price_limit_is_not_started(tmp_path: Path) -> None:
    # The QA case: $0.002 for two trials at up to $0.2/h, polled every 30 s with a 60 s tail: each would get $0.001
    # and be stopped as soon as it trained, the watch holding back $0.005 for its next look and the end of the run.
    # With the minute before the watch's first look (renting, setup, the smoke test: the QA case of three trials at
    # $0.3/h whose $0.0005 caps were spent before training), $0.2/h for 150 s.
    floor, why = trial_floor(0.2, 30, 60)
    assert floor == 0.008334 and "150 s at run_max_dph $0.2/h" in why and "run_tail_s 60 s" in why, (floor, why)
    assert "a minute to rent, set up and smoke-test" in why
    run = Harness(tmp_path, [{"cost": 0.0002}] * 2, max_parallel=2, rows=True,
                  budget=Budget(total=0.002, floor=floor, floor_why=why))
    trials = run.scheduler.run(deadline_s=60)
    assert run.started == []
    message = trials[0].row["message"]
    assert "has $0.002 left for 2 trial(s) not yet started, below $0.008334, the least a trial can start with" \
        in message, message
    assert "a budget of at least $0.008334 would start one, $0.016668 all 2 at once" in message, message
    # Enough for both: they start, each with its share.
    (tmp_path / "enough").mkdir()
    run = Harness(tmp_path / "enough", [{"cost": 0.0002}] * 2, max_parallel=2,
                  budget=Budget(total=0.017, floor=floor, floor_why=why))
    assert [t.state for t in run.scheduler.run(deadline_s=60)] == ["done", "done"]
    # No price limit: only the general floor (a minute of the cheapest GPU) is known.
    assert trial_floor(0, 30, 60)[0] == MIN_TRIAL_USD


def test_a_budget_too_small_for_one_trial_rents_nothing_and_says_why(tmp_path: Path) -> None:
    # The QA case: $0.00001 for two trials was shared out as two caps of $0.000005, and both trials rented.
    run = Harness(tmp_path, [{"cost": 0.0002}] * 2, max_parallel=2, budget=Budget(total=0.00001), rows=True)
    trials = run.scheduler.run(deadline_s=60)
    assert run.started == []
    assert [(t.state, t.outcome, t.row["outcome"]) for t in trials] == [("skipped", "budget", "budget")] * 2
    message = trials[0].row["message"]
    assert "sweep_budget_usd $1e-05 has $1e-05 left for 2 trial(s)" in message, message
    assert f"below ${MIN_TRIAL_USD:g}, the least a trial can start with" in message, message
    assert "nothing rented" in message
    state = json.loads((tmp_path / "sweep-state.json").read_text())
    assert all("has $1e-05 left" in t["message"] for t in state["trials"])


def test_the_floor_is_a_minute_of_the_cheapest_gpu_and_a_share_at_it_starts() -> None:
    assert MIN_TRIAL_USD == 0.0005
    two = [Trial(id=f"t{i}", label=f"l{i}", params={}, results_dir="r") for i in range(2)]
    assert Budget(total=2 * MIN_TRIAL_USD).next_cap(two) == (MIN_TRIAL_USD, "")
    # Not enough for both at the floor: one starts with all of it; the other waits for what it leaves.
    assert Budget(total=2 * MIN_TRIAL_USD - 0.000002).next_cap(two) == (0.000998, "")
    cap, why = Budget(total=MIN_TRIAL_USD - 0.000001).next_cap(two)
    assert cap is None and "a budget of at least $0.0005 would start one, $0.001 all 2 at once" in why, why
    # No shared budget and no cap of the run's own: no cap at all, as before.
    assert Budget(total=0).next_cap(two) == (0.0, "")


def test_a_budget_that_pays_for_some_trials_at_once_runs_them_in_turn(tmp_path: Path) -> None:
    # The QA case: $0.08 for three trials whose floor is ~$0.034 ($0.0267 each would be below it) ran none; each
    # really cost ~$0.0004. Two can start with the floor each: they share it; the third starts with what they leave.
    floor = 0.033889
    for max_parallel in (1, 2):
        work = tmp_path / f"p{max_parallel}"
        work.mkdir()
        run = Harness(work, [{"cost": 0.0004, "seconds": 0.1}] * 3, max_parallel=max_parallel, rows=True,
                      budget=Budget(total=0.08, floor=floor, floor_why="the watch's reserve"))
        trials = run.scheduler.run(deadline_s=60)
        assert [t.row["outcome"] for t in trials] == ["completed"] * 3, [t.row["message"] for t in trials]
        assert trials[0].cap_usd == 0.04, trials[0].cap_usd
        assert all(t.cap_usd >= floor for t in trials)
        assert run.max_concurrent() <= max_parallel
    # At most what the budget can hold at the floor runs at once, whatever sweep_max_parallel allows.
    work = tmp_path / "p3"
    work.mkdir()
    run = Harness(work, [{"cost": 0.0004, "seconds": 0.3}] * 3, max_parallel=3, rows=True,
                  budget=Budget(total=0.08, floor=floor, floor_why="the watch's reserve"))
    trials = run.scheduler.run(deadline_s=60)
    assert [t.row["outcome"] for t in trials] == ["completed"] * 3
    assert run.max_concurrent() == 2
    assert sum(t.cap_usd for t in trials[:2]) <= 0.08 + 1e-9


def test_a_run_cap_below_the_floor_starts_no_trial(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{}] * 2, max_parallel=2, budget=Budget(total=1.0, run_cap=0.0001), rows=True)
    trials = run.scheduler.run(deadline_s=60)
    assert run.started == [] and [t.outcome for t in trials] == ["budget", "budget"]
    assert "run_max_total_usd $0.0001 is below $0.0005" in trials[1].row["message"]


def test_a_trial_skipped_for_the_budget_says_what_was_left(tmp_path: Path) -> None:
    specs = [{"cost": 0.4, "seconds": 0.1}] * 3
    run = Harness(tmp_path, specs, max_parallel=1, budget=Budget(total=1.0, run_cap=0.4), rows=True)
    trials = run.scheduler.run(deadline_s=60)
    assert [t.outcome for t in trials] == ["completed", "completed", "budget"]
    assert trials[2].row["message"] == ("not started, nothing rented: the sweep's budget sweep_budget_usd $1 has $0.2 "
                                        "left ($0.8 spent or held by the running trials' caps), less than the "
                                        "trial's cap run_max_total_usd $0.4")


def test_a_trial_train_yml_refused_for_its_cap_is_a_budget_row_not_a_failure(tmp_path: Path) -> None:
    refused = ("Rent until good: The run would cost at least $0.0453 (optimistic; base $0.05), more than the budget "
               "run_max_total_usd $0.001. Raise the budget or shorten the run. Nothing was rented.")
    smoke = ("Smoke test (fails cheaply before the long run): Smoke test failed (exit code 0): loss 2.3 -> 2.1. "
             "Contradicts the estimate: cost: the run re-estimated from the measured step time: $0.0124 against the "
             "budget $0.001. ")
    specs = [{"rc": 2, "says": refused}, {"rc": 2, "says": smoke}, {"rc": 2, "says": "setup: pip install failed"}]
    run = Harness(tmp_path, specs, max_parallel=3, rows=True)
    trials = run.scheduler.run(deadline_s=60)
    assert [t.row["outcome"] for t in trials] == ["budget", "budget", "failed"]
    assert [t.outcome for t in trials] == ["budget", "budget", "failed"]
    assert trials[0].row["message"] == refused  # train.yml's own words stay


def test_a_trials_variables_file_goes_once_its_playbook_has_started(tmp_path: Path) -> None:
    run = Harness(tmp_path, [{"reads_vars": True}, {"seconds": 0.3}], max_parallel=2)
    for trial in run.trials:
        os.makedirs(trial.results_dir)
        trial.vars_file = str(tmp_path / f"{trial.id}.yml")
        Path(trial.vars_file).write_text("run_env: {TOKEN: s3cret}\n")
    trials = run.scheduler.run(deadline_s=60)
    assert trials[0].rc == 0, "removed while its playbook ran, once its first play had started"
    assert trials[0].vars_file is None and not (tmp_path / "t000.yml").exists()
    # Not started (no progress file): kept for the playbook to read; the sweep's finish removes it.
    assert trials[1].vars_file and (tmp_path / "t001.yml").exists()


def test_what_earlier_runs_spent_counts_toward_the_budget(tmp_path: Path) -> None:
    # $0.30 with $0.25 spent by an earlier run on these same trials: $0.05 left for three, not $0.30.
    budget = Budget(total=0.30, spent_before=0.25, floor=0.01)
    run = Harness(tmp_path, [{"cost": 0.01}, {"cost": 0.01}, {"cost": 0.01}], max_parallel=1, budget=budget)
    trials = run.scheduler.run(deadline_s=60)
    assert trials[0].cap_usd == 0.016666, trials[0].cap_usd  # a third of what is left, not of $0.30
    state = json.loads((tmp_path / "sweep-state.json").read_text())
    assert state["spent_before_usd"] == 0.25 and abs(state["spent_usd"] - 0.28) < 1e-9
    assert Budget(total=0.30, spent_before=0.29, floor=0.02).next_cap(trials[:1])[0] is None


def test_one_run_of_a_sweep_at_a_time_and_only_its_own_results_folder(tmp_path: Path) -> None:
    first = SweepLock(str(tmp_path), "sw")
    first.acquire()
    second = SweepLock(str(tmp_path), "sw")
    with pytest.raises(SweepSpecError, match=rf"sweep 'sw' is already running in {tmp_path} \(process "
                                             rf"{os.getpid()}\): wait for it to end, or stop it first"):
        second.acquire()
    first.release()
    second.acquire()  # the first run ended: the next one goes
    second.release()
    (tmp_path / "sweep-state.json").write_text(json.dumps({"sweep": "other", "trials": []}))
    with pytest.raises(SweepSpecError, match=rf"{tmp_path} holds the results of sweep 'other', not 'sw'"):
        SweepLock(str(tmp_path), "sw").acquire()
    held = SweepLock(str(tmp_path), "other")
    held.acquire()  # its own folder
    held.release()
    # A run killed while it held the lock leaves nothing to clear: the lock goes with its process.
    killed = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
                             "fcntl.flock(fd, fcntl.LOCK_EX); os.kill(os.getpid(), 9)",
                             str(tmp_path / SweepLock.FILE)], check=False)
    assert killed.returncode == -9
    SweepLock(str(tmp_path), "other").acquire()
