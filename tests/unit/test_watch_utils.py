"""mlops.vast.watch without a host: parsing, the stall clock, the outcome rules, the poll script
(run here with /bin/sh on real files), and the watch loop itself with a fake connection and an
injected clock."""

from __future__ import annotations

import json
import math
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.mlops.vast.plugins.action import watch as action
from ansible_collections.mlops.vast.plugins.module_utils.api_client import VastClient
from ansible_collections.mlops.vast.plugins.modules import watch as doc
from ansible_collections.mlops.vast.plugins.plugin_utils import host_poll as hp
from ansible_collections.mlops.vast.plugins.plugin_utils import training_log as tl
from ansible_collections.mlops.vast.plugins.plugin_utils import watch_decisions as wd
from ansible_collections.mlops.vast.plugins.plugin_utils.redaction import redacted

HF = [
    "{'loss': 0.6931, 'grad_norm': 1.2, 'learning_rate': 0.001, 'epoch': 0.05, 'step': 10}",
    "{'loss': 0.5123, 'grad_norm': 0.9, 'learning_rate': 0.0009, 'epoch': 0.1, 'step': 20}",
]
SUMMARY = ("{'train_runtime': 12.3, 'train_samples_per_second': 40.1, 'train_steps_per_second': 1.6, "
           "'train_loss': 0.41, 'epoch': 1.0}")
TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "train.py", line 10, in <module>',
    "    main()",
    '  File "train.py", line 7, in main',
    "    raise ValueError('loss is nan')",
    "ValueError: loss is nan",
]
SECRET = "sk-watch-secret-0123456789"


# ----------------------------------------------------------------------------------------- records


@pytest.mark.parametrize(("line", "expected"), [
    (HF[0], {"loss": 0.6931, "grad_norm": 1.2, "learning_rate": 0.001, "epoch": 0.05, "step": 10}),
    ('{"step": 10, "loss": 0.69, "done": false, "note": null}', {"step": 10, "loss": 0.69, "done": False,
                                                                 "note": None}),
    ("  3%|▎         | 10/400 [00:02<01:10]{'loss': 1.5, 'epoch': 0.03}", {"loss": 1.5, "epoch": 0.03}),
    ("{'loss': -1e-05, 'rewards/mean': +0.25, 'tags': ['a', ('b', 1)]}", {"loss": -1e-05, "rewards/mean": 0.25,
                                                                          "tags": ["a", ["b", 1]]}),
    ("{'eval_loss': 0.7, 'epoch': 1.0}", {"eval_loss": 0.7, "epoch": 1.0}),
])
def test_parse_record_reads_hf_and_json_lines(line: str, expected: dict) -> None:
    assert tl.parse_record(line) == expected
    assert tl.parse_record(line, "jsonl") == expected


def test_parse_record_keeps_nan_and_inf() -> None:
    record = tl.parse_record("{'loss': nan, 'grad_norm': inf, 'x': -inf, 'step': 3}")
    assert record is not None and math.isnan(record["loss"])
    assert record["grad_norm"] == math.inf and record["x"] == -math.inf
    assert tl.parse_record('{"loss": NaN, "step": 3}', "jsonl")["step"] == 3


@pytest.mark.parametrize("line", [
    "", "loading model", "[1, 2]", "{'loss': 0.5", "{__import__('os').system('id')}",
    "{'a': print('x')}", "{**base}", "{'loss': 0.1} trailing", "{" + "'k': 1, " * 5000 + "'z': 2}",
])
def test_parse_record_refuses_what_is_not_a_plain_dict(line: str) -> None:
    assert tl.parse_record(line) is None


def test_training_metrics_picks_step_loss_reward_epoch() -> None:
    metrics = tl.training_metrics({"loss": 0.5, "rewards/mean": 0.25, "epoch": 0.5, "step": 20.0})
    assert metrics == tl.Metrics(step=20, epoch=0.5, loss=0.5, reward=0.25)
    assert isinstance(metrics.step, int)
    assert tl.training_metrics({"reward": 1.0, "global_step": 7}) == tl.Metrics(step=7, reward=1.0)
    assert tl.training_metrics({"train/loss": 2.0, "train/global_step": 3}) == tl.Metrics(step=3, loss=2.0)
    # Eval lines and the summary are not training records; booleans are not numbers.
    assert tl.training_metrics({"eval_loss": 0.7, "epoch": 1.0}) is None
    assert tl.training_metrics(tl.parse_record(SUMMARY)) is None
    assert tl.training_metrics({"loss": True, "step": "10"}) is None



# ------------------------------------------------------------------------------------- log follower


def feed_text(follower: tl.LogFollower, text: str) -> None:
    """Append `text` to a log and poll it: the bytes from the follower's offset (its unfinished line) on."""
    start = follower.next_offset()
    data = follower.partial + text
    follower.feed(start + len(data.encode()), start, data)


def test_follower_reads_complete_lines_and_rereads_a_partial_one() -> None:
    follower = tl.LogFollower()
    log = "loading\n" + HF[0] + "\n" + HF[1][:20]
    follower.feed(len(log.encode()), 0, log)
    assert follower.metrics.step == 10 and follower.metric_lines == 1
    assert follower.offset == len(("loading\n" + HF[0] + "\n").encode())
    assert follower.last_lines() == ["loading", HF[0], HF[1][:20]]
    # The next poll reads from the start of the unfinished line and gets it whole.
    rest = HF[1] + "\n" + SUMMARY + "\n"
    follower.feed(follower.offset + len(rest.encode()), follower.offset, rest)
    assert follower.metric_lines == 2
    assert (follower.metrics.step, follower.metrics.loss, follower.metrics.epoch) == (20, 0.5123, 0.1)
    assert follower.summary is True
    assert follower.summary_metrics["train_loss"] == 0.41 and follower.summary_metrics["train_runtime"] == 12.3
    assert follower.last_lines(2) == [HF[1], SUMMARY]
    assert follower.traceback is False and follower.gaps == 0


def test_follower_counts_bytes_not_characters() -> None:
    follower = tl.LogFollower()
    feed_text(follower, "ünïcödé ✓\n{'loss': 1.0, 'step': 1}\n")
    assert follower.offset == len("ünïcödé ✓\n{'loss': 1.0, 'step': 1}\n".encode())
    # Undecodable bytes arrive as surrogates (surrogateescape) and still count as one byte each.
    raw = b"\xff\xfe broken\n"
    follower.feed(follower.offset + len(raw), follower.offset, raw.decode("utf-8", "surrogateescape"))
    assert follower.offset == len("ünïcödé ✓\n{'loss': 1.0, 'step': 1}\n".encode()) + len(raw)


def test_follower_collects_the_traceback_up_to_the_exception_line() -> None:
    follower = tl.LogFollower()
    feed_text(follower, HF[0] + "\n" + "\n".join(TRACEBACK[:3]) + "\n")
    assert follower.traceback is True
    # The rest arrives with the next poll; the excerpt goes on until the exception's own line.
    feed_text(follower, "\n".join(TRACEBACK[3:]) + "\nwandb: syncing\n")
    assert follower.traceback_excerpt == TRACEBACK
    assert follower.traceback_count == 1


def test_follower_chained_traceback_and_marker_in_an_unfinished_line() -> None:
    chained = [*TRACEBACK, "", "During handling of the above exception, another exception occurred:", "",
               "Traceback (most recent call last):", '  File "x.py", line 1', "RuntimeError: cleanup failed"]
    follower = tl.LogFollower()
    feed_text(follower, "\n".join(chained) + "\n")
    assert follower.traceback_count == 2
    assert follower.traceback_excerpt[-1] == "RuntimeError: cleanup failed"
    # A traceback header still being written counts at once (the process may die before the newline).
    other = tl.LogFollower()
    feed_text(other, "Traceback (most recent call last):")
    assert other.traceback is True and other.offset == 0


def test_follower_without_step_counts_records_times_logging_steps() -> None:
    lines = ["{'loss': 0.9, 'epoch': 0.1}", "{'loss': 0.8, 'epoch': 0.2}", "{'eval_loss': 0.85, 'epoch': 0.2}",
             "{'loss': 0.7, 'epoch': 0.3}"]
    plain = tl.LogFollower()
    feed_text(plain, "\n".join(lines) + "\n")
    assert plain.metrics.step is None and plain.metric_lines == 3
    assert plain.progress_token() == ("records", 3, 0.3)
    counted = tl.LogFollower(logging_steps=50)
    feed_text(counted, "\n".join(lines) + "\n")
    assert counted.metrics.step == 150 and counted.progress_token() == ("step", 150)


def test_follower_treats_carriage_returns_as_line_ends() -> None:
    follower = tl.LogFollower()
    bar = "".join(f"\r {i}%|##  | {i}/100" for i in range(1, 40))
    feed_text(follower, bar)
    # Every redraw but the last is consumed: the offset moves even though no "\n" was written.
    assert follower.offset > 0 and follower.partial == " 39%|##  | 39/100"
    feed_text(follower, "\r" + HF[0] + "\r")
    feed_text(follower, "\n" + HF[1] + "\r\n")
    assert follower.metrics.step == 20
    assert follower.last_lines(3) == [" 39%|##  | 39/100", HF[0], HF[1]], "a split \\r\\n is one line end"


def test_follower_restarts_on_truncation_and_counts_gaps() -> None:
    follower = tl.LogFollower()
    feed_text(follower, HF[1] + "\n" + SUMMARY + "\n")
    assert follower.summary and follower.metrics.step == 20
    follower.feed(len(HF[0]) + 1, 0, HF[0] + "\n")  # a new run rewrote the file
    assert follower.truncations == 1 and follower.summary is False and follower.metrics.step == 10
    assert follower.last_lines() == [HF[0]]
    # More than a chunk was written since the last poll: the poll starts later, the middle is skipped.
    start = follower.offset + 10_000
    follower.feed(start + len(HF[1]) + 1, start, HF[1] + "\n")
    assert follower.gaps == 1 and follower.metrics.step == 20


def test_follower_progress_token_before_any_record_is_the_log_size() -> None:
    follower = tl.LogFollower()
    follower.feed(None, 0, "")
    assert follower.progress_token() == ("bytes", None, 0)
    feed_text(follower, "downloading weights\n")
    first = follower.progress_token()
    feed_text(follower, "downloading weights 50%\n")
    assert follower.progress_token() != first
    assert wd.describe_progress(follower.progress_token()).startswith("no training record yet")


def test_follower_disabled_markers() -> None:
    follower = tl.LogFollower(traceback_regex=None, summary_regex=None)
    feed_text(follower, "\n".join([*TRACEBACK, SUMMARY]) + "\n")
    assert follower.traceback is False and follower.summary is False


# -------------------------------------------------------------------------------------- stall clock


def test_follower_counts_diverging_records_in_a_row() -> None:
    follower = tl.LogFollower(diverge_factor=10)
    feed_text(follower, HF[0] + "\n"
              + "{'loss': nan, 'epoch': 0.1, 'step': 20}\n"
              + "{'loss': 0.4, 'epoch': 0.15, 'step': 30}\n"   # a sane loss ends the streak
              + "{'loss': inf, 'epoch': 0.2, 'step': 40}\n"
              + "{'reward': 0.3, 'step': 45}\n"                 # no loss: the streak goes on
              + "{'loss': 4.5, 'epoch': 0.25, 'step': 50}\n")  # above 10 x the lowest (0.4)
    assert follower.divergence.count == 2 and follower.divergence.since_step == 40
    assert follower.divergence.last_clean_step == 30
    words = follower.divergence.describe()
    assert "above 10 x the lowest (0.4), last 4.5, for 2 training record(s) in a row, from step 40" in words
    feed_text(follower, "{'loss': 3.9, 'step': 60}\n")
    assert follower.divergence.count == 0, "below 10 x 0.4: no longer diverging"
    only_nan = tl.LogFollower()
    feed_text(only_nan, "{'loss': 0.4, 'step': 10}\n{'loss': 1e9, 'step': 20}\n")
    assert only_nan.divergence.count == 0, "without a factor only NaN and inf count"
    feed_text(only_nan, "{'loss': nan, 'step': 30}\n")
    assert only_nan.divergence.count == 1 and "the loss was nan for 1 training record(s) in a row, from step 30" in \
        only_nan.divergence.describe()


def test_follower_sees_the_nan_the_hugging_face_trainer_logs_as_zero() -> None:
    """HF's logging_nan_inf_filter (on by default) logs a window of NaN losses as 0.0 beside a NaN grad_norm; the
    window where it began logs a finite loss with a NaN grad_norm, which is not diverging yet but no longer clean."""
    follower = tl.LogFollower()
    feed_text(follower, "{'loss': 0.31, 'grad_norm': 0.8, 'step': 110}\n"
              "{'loss': 0.29, 'grad_norm': nan, 'step': 120}\n"
              "{'loss': 0.0, 'grad_norm': nan, 'step': 130}\n"
              "{'loss': 0.0, 'grad_norm': nan, 'step': 140}\n")
    streak = follower.divergence
    assert (streak.count, streak.since_step, streak.last_clean_step) == (2, 130, 110)
    assert "0.0 with a grad_norm that is not finite" in streak.describe()
    # A real 0.0 loss with a finite grad_norm is a perfect fit, not a divergence; inf grad_norm alone (an fp16
    # overflow step that the scaler skips) is not one either, though it is not clean.
    other = tl.LogFollower()
    feed_text(other, "{'loss': 0.0, 'grad_norm': 0.0, 'step': 10}\n{'loss': 0.5, 'grad_norm': inf, 'step': 20}\n")
    assert other.divergence.count == 0 and other.divergence.last_clean_step == 10


def test_last_clean_step_follows_a_resumed_attempt_and_stepless_hf_lines() -> None:
    """An attempt resumed in place appends to run.log: the steps go back, and the earlier attempt's clean records
    at later steps say nothing of this one. Lines without a step (as the HF Trainer prints them) count with
    logging_steps; without it the divergence has no step, and says so."""
    resumed = tl.DivergenceStreak()
    for step, loss in ((130, 0.3), (140, 0.29), (110, math.nan), (120, math.nan)):
        resumed.observe(loss, step)
    assert (resumed.count, resumed.since_step, resumed.last_clean_step) == (2, 110, 109)
    again = tl.DivergenceStreak()
    for step, loss in ((100, 0.3), (110, 0.2), (120, 0.25)):
        again.observe(loss, step)
    assert again.last_clean_step == 120
    follower = tl.LogFollower(logging_steps=10)
    feed_text(follower, "{'loss': 0.3, 'grad_norm': 0.5, 'epoch': 0.1}\n"
                        "{'loss': 0.0, 'grad_norm': nan, 'epoch': 0.2}\n")
    assert (follower.divergence.since_step, follower.divergence.last_clean_step) == (20, 10)
    stepless = tl.LogFollower()
    feed_text(stepless, "{'loss': 0.3, 'epoch': 0.1}\n{'loss': nan, 'epoch': 0.2}\n")
    assert stepless.divergence.since_step is None and "--logging_steps" in stepless.divergence.describe()
    assert tl.hides_a_nan(0, 10**400) is True and tl.hides_a_nan(0.0, 1.5) is False  # too large: infinite, no raise


def test_divergence_factor_edges() -> None:
    negative = tl.DivergenceStreak(factor=10)
    for step, loss in enumerate([-2.0, -3.0, 1e9]):
        negative.observe(loss, step)
    assert negative.count == 0 and negative.lowest == 1e9, "no positive loss before: nothing to compare against"
    zero_then = tl.DivergenceStreak(factor=10)
    for step, loss in enumerate([0.0, 0.5, 0.4, 5.0]):
        zero_then.observe(loss, step)
    assert zero_then.count == 1 and zero_then.lowest == 0.4, "a loss of 0.0 does not switch the rule off"
    huge = tl.DivergenceStreak()
    huge.observe(10**400, 1)  # an integer too large for a float is infinite, not an OverflowError
    assert huge.count == 1 and huge.last_loss == math.inf
    assert tl.DivergenceStreak(factor=0).factor is None


def test_divergence_streak_breaks_on_a_gap() -> None:
    follower = tl.LogFollower()
    feed_text(follower, "{'loss': nan, 'step': 10}\n{'loss': nan, 'step': 20}\n")
    follower.feed(10_000, 9_000, "{'loss': nan, 'step': 900}\n")  # the lines between were skipped unread
    assert follower.gaps == 1 and follower.divergence.count == 1


def test_stall_clock_runs_from_the_last_change_of_the_token() -> None:
    clock = wd.StallClock(timeout=60, now=1000.0)
    assert not clock.stalled(5000.0), "nothing observed yet"
    assert clock.observe(("step", 10), 1000.0) is True
    assert clock.observe(("step", 10), 1030.0) is False
    assert clock.idle(1059.0) == 59 and not clock.stalled(1059.0)
    assert clock.stalled(1060.0)
    assert clock.observe(("step", 20), 1061.0) is True
    assert not clock.stalled(1100.0) and clock.stalled(1121.0)
    # A step going back (resumed from a checkpoint) is a change too.
    assert clock.observe(("step", 15), 1122.0) is True
    assert not wd.StallClock(timeout=0, now=0).stalled(10**9), "0 disables it"


# ----------------------------------------------------------------------------------------- decisions


def obs(**fields: Any) -> wd.Observation:
    return wd.Observation(**fields)


LIMITS = wd.Limits(max_runtime=3600, stall_timeout=900, reconnect_timeout=600, timeout=7200)


@pytest.mark.parametrize(("observation", "outcome", "words"), [
    (obs(tmux=True), None, None),
    (obs(exit_code=0, summary=True, tmux=False), "completed", "exited 0"),
    # Completion wins over everything else seen at the same time.
    (obs(exit_code=0, summary=True, traceback=True, instance_gone="destroyed", stalled=True, run_elapsed=9999),
     "completed", "summary"),
    (obs(exit_code=0, summary=False, tmux=False), "crash", "without the summary marker"),
    (obs(exit_code=0, summary=False, summary_required=False), "completed", "exited 0"),
    (obs(exit_code=1, traceback=True, tmux=False), "crash", "code 1 after a traceback"),
    (obs(exit_code=-9, tmux=False), "crash", "code -9"),
    (obs(exit_code_raw="oops", tmux=False), "crash", "'oops'"),
    (obs(traceback=True, tmux=True), "crash", "has not exited yet"),
    (obs(tmux=False), "crash", "tmux session is gone"),
    # The container restarted under the run (a reboot, a short offline spell): its processes are gone, its disk kept.
    (obs(tmux=False, restarted=True), "host_lost", "host restarted since the run was launched"),
    (obs(exit_code=1, tmux=False, restarted=True), "crash", "code 1"),  # it had ended before: that is the verdict
    (obs(tmux=True, restarted=True), None, None),  # relaunched in place since: the mark is the old launch's
    (obs(tmux=False, run_dir_exists=False), "crash", "run directory does not exist"),
    (obs(tmux=None), "crash", "tmux is not installed"),
    # The instance going away explains a dead session better than a crash does.
    (obs(tmux=False, instance_gone="outbid or interrupted"), "instance_gone", "outbid"),
    (obs(exit_code=1, instance_gone="destroyed"), "instance_gone", "destroyed"),
    (obs(tmux=False, instance_gone="outbid or interrupted", gone_kind="preempted"), "preempted", "outbid"),
    (obs(tmux=False, instance_gone="offline", gone_kind="host_lost"), "host_lost", "offline"),
    # A teardown from outside the run (mlops-vast teardown, a sweep's stop) stopped its trainer: not the run's crash.
    (obs(exit_code=143, tmux=False, stopped_by="a teardown of exp"), "instance_gone",
     "stopped from outside it by a teardown of exp (exit code 143)"),
    (obs(exit_code=0, summary=True, tmux=False, stopped_by="a teardown of exp"), "completed", "exited 0"),
    (obs(exit_code=0, tmux=False, stopped_by="a teardown of exp"), "instance_gone", "exit code 0"),  # it took the TERM
    (obs(tmux=True, stopped_by="a teardown of exp"), None, None),  # still going: the stop has not landed yet
    (obs(host_fresh=False, unreachable_for=600), "host_lost", "unreachable for 600 s"),
    (obs(host_fresh=False, unreachable_for=599), None, None),
    (obs(run_elapsed=3600, tmux=True), "max_runtime", "beyond max_runtime 3600"),
    (obs(exit_code=124, run_elapsed=3601, tmux=False), "max_runtime", "exit code 124"),
    (obs(exit_code=124, run_elapsed=100, tmux=False), "crash", "code 124"),
    (obs(exit_code=137, run_elapsed=3600, traceback=True, tmux=False), "crash", "code 137"),
    (obs(traceback=True, run_elapsed=4000), "crash", "traceback"),
    (obs(run_elapsed=4000, stalled=True, idle=950), "max_runtime", "beyond"),
    (obs(stalled=True, idle=950, progress="last step 10"), "stall", "no progress for 950 s (last step 10"),
    (obs(diverging_records=3, divergence="the loss has been not finite"), "diverged", "not finite"),
    (obs(diverging_records=2, divergence="the loss"), None, None),
    # A run that ended says more by how it ended; a diverged one still going is stopped before it stalls.
    (obs(diverging_records=5, exit_code=1, tmux=False), "crash", "code 1"),
    # Ran to its end with the streak unseen until then: what it trained is not a result.
    (obs(diverging_records=5, divergence="the loss was nan", exit_code=0, summary=True, tmux=False), "diverged",
     "the loss was nan; the run then exited 0"),
    (obs(diverging_records=2, exit_code=0, summary=True, tmux=False), "completed", "exited 0"),
    # A shorter streak that was the run's last records: the final weights are NaN, not a result to keep.
    (obs(diverging_records=2, ends_nonfinite=True, divergence="the loss was nan for 2", exit_code=0, summary=True,
         tmux=False), "diverged", "the loss was nan for 2; the run then exited 0 with that loss"),
    (obs(diverging_records=2, ends_nonfinite=True, divergence="nan"), None, None),  # still going: too short yet
    (obs(diverging_records=5, divergence="diverging", stalled=True, idle=950), "diverged", "diverging"),
    (obs(stalled=True, idle=950, watch_elapsed=8000), "stall", "no progress"),
    (obs(watch_elapsed=7200), "timeout", "the run goes on"),
    # Without a fresh poll the host-side rules are not applied again (they were at the last poll).
    (obs(host_fresh=False, tmux=False, stalled=True), None, None),
    (obs(host_fresh=False, watch_elapsed=7200), "timeout", "watch's own limit"),
])
def test_decide_outcomes_and_precedence(observation: wd.Observation, outcome: str | None, words: str | None) -> None:
    verdict = wd.decide(observation, LIMITS)
    if outcome is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict[0] == outcome, verdict
        assert words in verdict[1]


def test_decide_without_limits() -> None:
    limits = wd.Limits(max_runtime=0, stall_timeout=0, reconnect_timeout=600, timeout=0, diverge_records=0)
    assert wd.decide(obs(run_elapsed=10**9, watch_elapsed=10**9, diverging_records=10**6), limits) is None


@pytest.mark.parametrize(("row", "words"), [
    (None, "destroyed"),
    ({}, "destroyed"),
    ({"actual_status": "running", "intended_status": "running", "cur_state": "running"}, None),
    ({"actual_status": "loading", "intended_status": "running", "cur_state": "running"}, None),
    ({"actual_status": "exited", "intended_status": "running", "cur_state": "stopped",
      "status_msg": "Instance outbid by a higher bid"}, "outbid or interrupted: intended running but cur_state "
                                                        "stopped: Instance outbid by a higher bid"),
    ({"actual_status": "exited", "intended_status": "stopped", "cur_state": "stopped"}, "stopped (intended_status"),
    ({"actual_status": "offline", "intended_status": "running", "cur_state": "running"}, "offline"),
    ({"actual_status": "exited", "intended_status": "running", "cur_state": "running"}, "container exited"),
    ({"actual_status": None, "intended_status": "running", "cur_state": "unloaded"}, "destroyed"),
])
def test_instance_verdict(row: dict | None, words: str | None) -> None:
    verdict = wd.instance_verdict(row)
    assert (verdict is None) if words is None else (verdict is not None and verdict.startswith(words))


# ------------------------------------------------------------------------------------------ times


def test_timestamps_and_status_md() -> None:
    assert wd.parse_timestamp("2026-05-01T10:00:00Z") == 1777629600.0
    assert wd.parse_timestamp("2026-05-01 12:00:00+02:00") == 1777629600.0
    assert wd.parse_timestamp("2026-05-01T12:00:00+0200") == 1777629600.0
    assert wd.parse_timestamp("2026-05-01T10:00:00") == 1777629600.0, "naive is UTC"
    assert wd.parse_timestamp(1777629600) == 1777629600.0
    assert wd.parse_timestamp("1777629600.5") == 1777629600.5
    assert wd.parse_timestamp("yesterday") is None and wd.parse_timestamp(None) is None
    assert wd.parse_timestamp(True) is None
    status = ("# Run r-42\n\n| key | value |\n|---|---|\n| run id | r-42 |\n| host | C.123 (2026-01-01) |\n"
              "| started | 2026-05-01T10:00:00Z |\n| max runtime | 21600 s |\n")
    assert wd.started_from_status(status) == 1777629600.0
    assert wd.started_from_status("run_id: r\nstart_epoch: 1777629600\n") == 1777629600.0
    assert wd.started_from_status("- run id: r\n- host: x\n") is None


# ----------------------------------------------------------------------------------- the poll script


@pytest.fixture
def fake_host(tmp_path: Path) -> dict[str, Any]:
    """A run directory plus fake tmux/nvidia-smi on PATH, so the poll script runs for real here."""
    run = tmp_path / "home" / "run"
    run.mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tmux = bin_dir / "tmux"
    # has-session -t =NAME succeeds while the file alive-NAME exists in the run directory.
    tmux.write_text(f'#!/bin/sh\n[ "$1" = has-session ] && [ -e "{run}/alive-${{3#=}}" ]\n')
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '87\\n45\\n'\n")
    # The host's clock: the real one, unless a test's fake clock wrote the time to host-now.
    date = bin_dir / "date"
    date.write_text(f'#!/bin/sh\nif [ -f "{tmp_path}/host-now" ]; then cat "{tmp_path}/host-now"; '
                    f'else exec {shutil.which("date")} "$@"; fi\n')
    for path in (tmux, smi, date):
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    return {"run": run, "env": env, "now_file": tmp_path / "host-now"}


def run_poll(fake: dict[str, Any], request: hp.PollRequest) -> tuple[hp.Snapshot, subprocess.CompletedProcess]:
    # As Ansible runs it: /bin/sh -c '<script> && sleep 0'.
    done = subprocess.run(["/bin/sh", "-c", hp.poll_script(request) + " && sleep 0"], capture_output=True,
                          env=fake["env"], cwd="/")
    return hp.parse_poll(done.stdout.decode("utf-8", "surrogateescape"), request.marker), done


def request(**more: Any) -> hp.PollRequest:
    fields = {"run_dir": "~/run", "log_file": "run.log", "exit_code_file": "EXIT_CODE", "tmux_session": "run_r1",
              "marker": "@@mlops-watch-test"}
    return hp.PollRequest(**{**fields, **more})


def test_a_waiting_poll_answers_with_the_exit_code_written_while_it_waited(fake_host: dict[str, Any]) -> None:
    run = fake_host["run"]
    (run / "run.log").write_text("loading\n")
    (run / "alive-run_r1").touch()

    def end_soon() -> None:
        time.sleep(0.6)
        (run / "EXIT_CODE").write_text("0\n")

    snap, _ = run_poll(fake_host, request())
    assert snap.ok and snap.exit_code is None, "a poll that does not wait reports the run as it is"
    writer = threading.Thread(target=end_soon)
    writer.start()
    try:
        snap, done = run_poll(fake_host, request(wait_exit_s=8))
    finally:
        writer.join()
    assert done.returncode == 0, done.stderr
    assert snap.ok and snap.exit_code == 0, "the poll must have waited for the exit code and then answered"


def test_a_run_ending_during_the_poll_is_not_taken_for_a_crash(fake_host: dict[str, Any], tmp_path: Path) -> None:
    """The run ends between the poll's reads: its wrapper writes EXIT_CODE, then its session ends. A poll that read
    the exit code before asking tmux saw no code and no session, a crash; the session is asked about first."""
    run = fake_host["run"]
    (run / "run.log").write_text(HF[0] + "\n" + SUMMARY + "\n")
    (run / "alive-run_r1").touch()
    # This tmux is asked while the run ends: the wrapper writes its code and the session is gone.
    tmux = tmp_path / "bin" / "tmux"
    tmux.write_text(f'#!/bin/sh\n[ "$1" = has-session ] || exit 1\nif [ -e "{run}/alive-${{3#=}}" ]; then '
                    f'echo 0 > "{run}/EXIT_CODE"; rm -f "{run}/alive-${{3#=}}"; fi\nexit 1\n')
    snap, done = run_poll(fake_host, request())
    assert done.returncode == 0, done.stderr
    assert snap.tmux is False and snap.exit_code == 0, snap


def test_only_polls_after_the_first_wait_and_never_longer_than_the_interval(fake_host: dict[str, Any]) -> None:
    watcher = action.Watcher(FakeAction(fake_host), params(poll_interval=5, end_wait=8))
    assert watcher.long_poll_s() == 0.0, "the first poll reads the state as it is"
    watcher.polls = 1
    assert watcher.long_poll_s() == 5.0
    watcher.exit_code = 0
    assert watcher.long_poll_s() == 0.0
    fast = action.Watcher(FakeAction(fake_host), params(poll_interval=0.5, end_wait=8))
    fast.polls = 3
    assert fast.long_poll_s() == 0.0, "sub-second polling never waits on the host"
    assert action.param_problems(params(end_wait=10)) == ["end_wait must be below 10 s (a poll waiting longer "
                                                          "would look hung)"]
    assert action.param_problems(params(end_wait=-1)) == ["end_wait must be >= 0"]


def test_poll_script_reads_everything_in_one_command(fake_host: dict[str, Any]) -> None:
    run = fake_host["run"]
    (run / "run.log").write_text("loading\n" + HF[0] + "\n")
    (run / "alive-run_r1").touch()
    (run / "STATUS.md").write_text("- started_at: 2026-05-01T10:00:00Z\n")
    (run / "STARTED_AT").write_text("1777629600\nignored\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n')
    snap, done = run_poll(fake_host, request(status_file="STATUS.md", metrics_file="metrics.jsonl",
                                             started_file="STARTED_AT"))
    assert done.returncode == 0, done.stderr
    assert snap.ok and snap.run_dir_exists and snap.tmux is True and snap.exit_code is None
    assert snap.gpu_util == [87, 45]
    assert abs(snap.host_now - time.time()) < 5
    assert snap.status_text == "- started_at: 2026-05-01T10:00:00Z"
    assert snap.started_text == "1777629600"
    metrics_bytes = len('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n')
    assert (snap.metrics_size, snap.metrics_start, snap.metrics_data) == (
        metrics_bytes, 0, '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n')
    assert (snap.log_size, snap.log_start, snap.log_data) == (len("loading\n" + HF[0] + "\n"), 0,
                                                              "loading\n" + HF[0] + "\n")
    # The run ends: exit code written, session gone; the next poll reads only the new bytes.
    with open(run / "run.log", "a") as log:
        log.write(SUMMARY + "\n")
    (run / "EXIT_CODE").write_text("0\n")
    (run / "alive-run_r1").unlink()
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 3, "loss": 0.8}\n{"step": 4, "lo')  # a record still being written
    offset = len("loading\n" + HF[0] + "\n")
    snap, _ = run_poll(fake_host, request(log_offset=offset, gpu_util=False, metrics_file="metrics.jsonl",
                                          metrics_offset=metrics_bytes))
    assert (snap.exit_code, snap.tmux, snap.gpu_util) == (0, False, None)
    assert (snap.status_text, snap.started_text) == (None, None), "neither was asked for"
    assert (snap.log_start, snap.log_data) == (offset, SUMMARY + "\n")
    assert (snap.metrics_start, snap.metrics_data) == (metrics_bytes, '{"step": 3, "loss": 0.8}\n{"step": 4, "lo'), \
        "only the new bytes, the unfinished line as it is"
    # A metrics file rewritten shorter is read from its start; none at all is told apart from an empty one.
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    snap, _ = run_poll(fake_host, request(metrics_file="metrics.jsonl", metrics_offset=metrics_bytes))
    assert (snap.metrics_size, snap.metrics_start, snap.metrics_data) == (12, 0, '{"step": 1}\n')
    assert (snap.log_start, snap.log_data) == (0, "loading\n" + HF[0] + "\n" + SUMMARY + "\n")
    (run / "metrics.jsonl").unlink()
    snap, _ = run_poll(fake_host, request(metrics_file="metrics.jsonl", metrics_offset=12))
    assert snap.ok and (snap.metrics_size, snap.metrics_data) == (None, "")


def test_poll_script_tells_a_restarted_container_by_its_first_process(fake_host: dict[str, Any]) -> None:
    run = fake_host["run"]
    started = Path("/proc/1/stat").read_text().rsplit(") ", 1)[1].split()[19]
    snap, _ = run_poll(fake_host, request())
    assert snap.ok and snap.restarted is False, "no launch mark: nothing to compare"
    (run / ".mlops").mkdir()
    (run / ".mlops" / "boot").write_text(started + "\n")
    snap, _ = run_poll(fake_host, request())
    assert snap.restarted is False, "the same first process as at the launch"
    (run / ".mlops" / "boot").write_text(str(int(started) + 1) + "\n")
    snap, _ = run_poll(fake_host, request())
    assert snap.restarted is True


def test_poll_script_reads_who_stopped_the_run_from_outside(fake_host: dict[str, Any]) -> None:
    run = fake_host["run"]
    snap, _ = run_poll(fake_host, request())
    assert snap.ok and snap.stopped_by is None
    (run / ".mlops").mkdir()
    (run / hp.STOPPED_MARK).write_text("a teardown of exp-42\n")
    snap, _ = run_poll(fake_host, request())
    assert snap.stopped_by == "a teardown of exp-42"


def test_poll_script_caps_the_chunk_and_notices_truncation(fake_host: dict[str, Any]) -> None:
    run = fake_host["run"]
    (run / "run.log").write_bytes(b"x" * 5000 + b"\n" + b"tail line\n")
    snap, _ = run_poll(fake_host, request(chunk=100))
    assert snap.log_size == 5011 and snap.log_start == 4911 and len(snap.log_data.encode()) == 100
    assert snap.log_data.endswith("tail line\n")
    snap, _ = run_poll(fake_host, request(log_offset=99_999))
    assert snap.log_start == 0 and snap.log_size == 5011, "a shorter file is read from its start"


def test_poll_script_missing_things_and_odd_names(fake_host: dict[str, Any], tmp_path: Path) -> None:
    snap, _ = run_poll(fake_host, request(run_dir=str(tmp_path / "nowhere"), tmux_session="x'; touch /tmp/pwn; '"))
    assert snap.ok and not snap.run_dir_exists and snap.tmux is False and snap.log_size is None
    assert snap.exit_code is None and snap.log_data == ""
    (fake_host["run"] / "EXIT_CODE").write_text("killed\n")
    snap, _ = run_poll(fake_host, request())
    assert snap.exit_code is None and snap.exit_code_raw == "killed"
    # No tmux (and no nvidia-smi) at all on the host.
    bare = tmp_path / "bare-bin"
    bare.mkdir()
    for tool in ("stat", "tail", "head", "date", "tr"):
        (bare / tool).symlink_to(shutil.which(tool))
    snap, _ = run_poll({**fake_host, "env": {**fake_host["env"], "PATH": str(bare)}}, request())
    assert snap.ok and snap.tmux is None and snap.gpu_util is None


def test_parse_poll_ignores_noise_and_needs_the_log_line() -> None:
    marker = "@@m"
    out = "motd noise\n@@m now 1777629600\n@@m exit 3\n@@m tmux 0\n@@m gpu 12 N/A\n@@m log 4 0\nab\n@@m fake"
    snap = hp.parse_poll(out, marker)
    assert snap.ok and snap.exit_code == 3 and snap.tmux is False and snap.gpu_util == [12]
    assert snap.log_data == "ab\n@@m fake", "everything after the log line is the log's bytes"
    assert snap.extra == ["motd noise"]
    assert not hp.parse_poll("bash: sh: command not found", marker).ok


def test_shell_path() -> None:
    assert hp.shell_path("~/run dir") == "\"$HOME\"/'run dir'"
    assert hp.shell_path("/workspace/run") == "/workspace/run"
    assert hp.shell_path("a;b") == "'a;b'"


def test_plain_masks_secrets_and_non_finite_numbers() -> None:
    value = {"loss": math.nan, "l": [math.inf, -math.inf, 1.5], "msg": f"key {SECRET} leaked", 3: SECRET}
    assert redacted(value, (SECRET,)) == {"loss": "nan", "l": ["inf", "-inf", 1.5], "msg": "key ******** leaked",
                                          3: "********"}
    json.dumps(redacted(value), allow_nan=False)


# ------------------------------------------------------------------------------ documentation vs spec


def test_documentation_matches_the_argument_spec() -> None:
    documented = yaml.safe_load(doc.DOCUMENTATION)["options"]
    spec = {k: v for k, v in action.ARGUMENT_SPEC.items() if k not in ("api_key", "api_url", "api_timeout")}
    assert set(documented) == set(spec)
    for name, option in spec.items():
        shown = documented[name]
        assert shown["type"] == option["type"], name
        assert shown.get("required", False) == option.get("required", False), name
        assert shown.get("default") == option.get("default"), name
        assert shown.get("choices") == option.get("choices"), name
    yaml.safe_load(doc.EXAMPLES)
    returned = yaml.safe_load(doc.RETURN)
    assert set(returned["triage"]["contains"]) == {"step", "epoch", "loss", "reward", "last_lines", "traceback",
                                                   "traceback_excerpt", "summary", "summary_metrics", "gpu_util",
                                                   "completed", "exit_code", "tmux_alive", "spent_usd", "eta_s",
                                                   "divergence"}


# ------------------------------------------------------------------------------- the loop, faked host


class FakeClock:
    """Monotonic time that only sleeping moves; wall time starts at the real time (the fake host's
    `date +%s` is real) and moves with it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = time.time() - self.now

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeConnection:
    def __init__(self) -> None:
        self.resets = 0
        self.closes = 0

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closes += 1


class FakeAction:
    """Runs each poll with /bin/sh on the fake host, whose clock is the fake clock; `script[n]`
    changes the host before poll n (1-based) and may raise to simulate a dropped connection."""

    def __init__(self, fake: dict[str, Any], script: dict[int, Any] | None = None,
                 clock: FakeClock | None = None) -> None:
        self.fake = fake
        self.clock = clock
        self.script = script or {}
        self.calls = 0
        self.sudoable: list[bool] = []
        self._connection = FakeConnection()

    def _low_level_execute_command(self, cmd: str, sudoable: bool = True) -> dict[str, Any]:
        self.calls += 1
        self.sudoable.append(sudoable)
        if self.clock is not None:
            self.fake["now_file"].write_text(f"{int(self.clock.wall())}\n")
        step = self.script.get(self.calls)
        if step is not None:
            step(self.fake["run"])
        done = subprocess.run(["/bin/sh", "-c", cmd + " && sleep 0"], capture_output=True, env=self.fake["env"])
        return {"rc": done.returncode, "stdout": done.stdout.decode("utf-8", "surrogateescape"),
                "stderr": done.stderr.decode()}


def params(**args: Any) -> dict[str, Any]:
    # No waiting on the fake host: its clock is the fake one, and a wait would be real seconds.
    result = ArgumentSpecValidator(action.ARGUMENT_SPEC).validate({"run_dir": "~/run", "tmux_session": "run_r1",
                                                                   "end_wait": 0, **args})
    assert not result.error_messages, result.error_messages
    return result.validated_parameters


def run_watch(fake: dict[str, Any], script: dict[int, Any], clock: FakeClock | None = None,
              client: Any = None, **args: Any) -> tuple[dict[str, Any], FakeAction]:
    clock = clock or FakeClock()
    fake_action = FakeAction(fake, script, clock)
    watcher = action.Watcher(fake_action, params(**args), clock=clock.clock, sleep=clock.sleep, wall=clock.wall)
    watcher.client = client
    if client is not None:
        watcher.api_key = SECRET
    outcome = None
    try:
        outcome, msg = watcher.run()
    finally:
        watcher.close(outcome)
    return redacted(watcher.result(outcome, msg), (SECRET,)), fake_action


def append(*lines: str) -> Any:
    def step(run: Path) -> None:
        with open(run / "run.log", "a") as log:
            log.write("".join(line + "\n" for line in lines))
    return step


def start_run(run: Path) -> None:
    (run / "alive-run_r1").touch()
    (run / "run.log").write_text("loading\n")


def end_run(code: int) -> Any:
    def step(run: Path) -> None:
        (run / "EXIT_CODE").write_text(f"{code}\n")
        (run / "alive-run_r1").unlink()
    return step


def both(*steps: Any) -> Any:
    def step(run: Path) -> None:
        for each in steps:
            each(run)
    return step


def lost(run: Path) -> None:
    raise AnsibleConnectionFailure("Failed to connect to the host via ssh: Connection closed by remote host")


def test_loop_completes_with_the_triage_bundle(fake_host: dict[str, Any]) -> None:
    result, fake = run_watch(fake_host, {
        1: start_run, 2: append(HF[0]), 3: append(HF[1]),
        4: both(append(SUMMARY), end_run(0)),
    }, poll_interval=30)
    assert result["outcome"] == "completed" and result["polls"] == 4 and result["elapsed_s"] == 90
    assert result["triage"] == {
        "step": 20, "epoch": 0.1, "loss": 0.5123, "reward": None, "last_lines": ["loading", HF[0], HF[1], SUMMARY],
        "traceback": False, "traceback_excerpt": "", "summary": True,
        "summary_metrics": tl.parse_record(SUMMARY), "gpu_util": [87, 45], "completed": True, "exit_code": 0,
        "tmux_alive": False, "spent_usd": None, "eta_s": None,
        "divergence": {"records": 0, "since_step": None, "last_clean_step": 20, "lowest_loss": 0.5123}}
    assert result["msg"] == "completed: the run exited 0 and printed its summary (last step 20, loss 0.5123)"
    assert fake.sudoable == [False] * 4, "no become, no tty: the log's bytes arrive as they are"
    assert result["reconnects"] == 0 and result["instance"] is None and result["syncs"] == []


def test_loop_reconnects_after_dropped_connections(fake_host: dict[str, Any]) -> None:
    result, fake = run_watch(fake_host, {
        1: start_run, 2: lost, 3: lost, 4: append(HF[0]), 5: lost, 6: both(append(SUMMARY), end_run(0)),
    }, poll_interval=30)
    assert result["outcome"] == "completed"
    assert (result["reconnects"], result["connection_failures"], result["polls"]) == (2, 3, 3)
    assert fake._connection.resets == 3 and fake._connection.closes == 3
    assert "Connection closed by remote host" in result["last_connection_failure"]
    # Backoff: 1 s, then 2 s, then back to the poll interval once the host answers.
    assert result["elapsed_s"] == 30 + 1 + 2 + 30 + 1


def test_loop_unreachable_beyond_reconnect_timeout_is_host_lost(fake_host: dict[str, Any]) -> None:
    script = {1: start_run, **{n: lost for n in range(2, 200)}}
    result, _ = run_watch(fake_host, script, poll_interval=30, reconnect_timeout=120)
    assert result["outcome"] == "host_lost"
    assert "unreachable for 120 s" in result["msg"]
    assert 120 <= result["elapsed_s"] <= 30 + 120 + 1
    assert result["reconnects"] == 0 and result["connection_failures"] >= 5


def test_loop_stall_with_an_injected_clock(fake_host: dict[str, Any]) -> None:
    result, _ = run_watch(fake_host, {1: start_run, 2: append(HF[0])}, poll_interval=30, stall_timeout=300)
    assert result["outcome"] == "stall"
    assert result["idle_s"] == 300 and result["elapsed_s"] == 330, "the step last moved at poll 2 (t=30)"
    assert "no progress for 300 s (last step 10" in result["msg"]
    assert result["triage"]["tmux_alive"] is True and result["triage"]["exit_code"] is None


def test_loop_diverged_stops_a_run_whose_loss_went_nan(fake_host: dict[str, Any]) -> None:
    nan_lines = [f"{{'loss': nan, 'grad_norm': nan, 'epoch': 0.{n}, 'step': {n}0}}" for n in (3, 4, 5)]
    result, _ = run_watch(fake_host, {1: start_run, 2: append(*HF), 3: append(*nan_lines[:2]),
                                      4: append(nan_lines[2])}, poll_interval=30, diverge_records=3)
    assert result["outcome"] == "diverged" and result["polls"] == 4, result["msg"]
    assert "the loss was nan for 3 training record(s) in a row, from step 30" in result["msg"]
    assert result["triage"]["tmux_alive"] is True, "still running: the teardown stops it"
    assert result["triage"]["divergence"] == {"records": 3, "since_step": 30, "last_clean_step": 20,
                                              "lowest_loss": 0.5123}
    for name in ("run.log",):
        (fake_host["run"] / name).unlink()
    # The metrics file is followed: a record read once counts once, however many polls come after it.
    metrics = fake_host["run"] / "metrics.jsonl"
    metrics.write_text('{"step": 10, "loss": 0.7}\n')

    def nan_at(step: int) -> Any:
        def write(run: Path) -> None:
            with open(metrics, "a") as f:
                f.write(json.dumps({"step": step, "loss": math.nan}) + "\n")
        return write
    script = {1: start_run, 2: nan_at(20), 3: append("idle"), 4: append("idle"), 5: nan_at(30)}
    result, _ = run_watch(fake_host, script, poll_interval=30, diverge_records=2, metrics_file="metrics.jsonl",
                          log_format="jsonl", stall_timeout=0, timeout=400)
    assert result["outcome"] == "diverged" and result["polls"] == 5, result["msg"]
    metrics.unlink()
    # Records without a step, re-read at every poll: one record is one, however many polls see it.
    metrics.write_text('{"loss": 0.7}\n')
    script = {1: start_run, 2: lambda run: metrics.write_text('{"loss": 0.7}\n{"loss": NaN}\n'),
              3: append("idle"), 4: append("idle"), 5: append("idle")}
    result, _ = run_watch(fake_host, script, poll_interval=30, diverge_records=2, metrics_file="metrics.jsonl",
                          log_format="jsonl", stall_timeout=0, timeout=200)
    assert result["outcome"] == "timeout" and result["triage"]["divergence"]["records"] == 1, result["msg"]
    metrics.unlink()
    # Every record counts, not only each poll's newest: a burst of NaN between two polls is a streak at once.
    metrics.write_text('{"step": 10, "loss": 0.7}\n')
    script = {1: start_run, 2: lambda run: [nan_at(step)(run) for step in (20, 30, 40)]}
    result, _ = run_watch(fake_host, script, poll_interval=30, diverge_records=3, metrics_file="metrics.jsonl",
                          log_format="jsonl", stall_timeout=0, timeout=400)
    assert result["outcome"] == "diverged" and result["polls"] == 2, result["msg"]
    assert result["triage"]["divergence"] == {"records": 3, "since_step": 20, "last_clean_step": 10,
                                              "lowest_loss": 0.7}
    metrics.unlink()


def test_a_run_that_exits_0_with_its_last_loss_nan_is_diverged_however_short_the_streak(
        fake_host: dict[str, Any]) -> None:
    nan_tail = ["{'loss': 0.0, 'grad_norm': nan, 'epoch': 0.5, 'step': 50}",
                "{'loss': 0.0, 'grad_norm': nan, 'epoch': 0.6, 'step': 60}"]
    result, _ = run_watch(fake_host, {1: start_run, 2: both(append(*HF, *nan_tail, SUMMARY), end_run(0))},
                          poll_interval=30, diverge_records=3)
    assert result["outcome"] == "diverged", result["msg"]
    assert "for 2 training record(s) in a row, from step 50; the run then exited 0 with that loss" in result["msg"]
    # Its last record sane again (a spike it came back from): completed. A loss above the factor is no NaN either.
    for name in ("run.log", "EXIT_CODE"):
        (fake_host["run"] / name).unlink()
    spike = ["{'loss': 9.5, 'epoch': 0.5, 'step': 50}"]
    result, _ = run_watch(fake_host, {1: start_run, 2: both(append(*HF, *nan_tail, "{'loss': 0.4, 'step': 70}",
                                                                   SUMMARY), end_run(0))},
                          poll_interval=30, diverge_records=3)
    assert result["outcome"] == "completed", result["msg"]
    for name in ("run.log", "EXIT_CODE"):
        (fake_host["run"] / name).unlink()
    result, _ = run_watch(fake_host, {1: start_run, 2: both(append(*HF, *spike, SUMMARY), end_run(0))},
                          poll_interval=30, diverge_records=3, diverge_factor=5)
    assert result["outcome"] == "completed", result["msg"]


def test_a_diverge_factor_at_or_below_one_is_refused() -> None:
    assert any("diverge_factor must be above 1" in p for p in action.param_problems(params(diverge_factor=0.5)))
    assert any("diverge_factor must be above 1" in p for p in action.param_problems(params(diverge_factor=1)))
    assert not action.param_problems(params(diverge_factor=0)) and not action.param_problems(params())
    assert not action.param_problems(params(diverge_factor=1.5))


def test_loop_crash_max_runtime_and_timeout(fake_host: dict[str, Any]) -> None:
    crash, _ = run_watch(fake_host, {1: start_run, 2: append(HF[0], *TRACEBACK), 3: end_run(1)}, poll_interval=30)
    assert crash["outcome"] == "crash" and crash["triage"]["traceback"] is True
    assert crash["triage"]["traceback_excerpt"] == "\n".join(TRACEBACK)
    assert crash["polls"] == 2, "a traceback is a crash at once, before the exit code"
    for name in ("run.log", "EXIT_CODE"):
        (fake_host["run"] / name).unlink(missing_ok=True)

    clock = FakeClock()
    started = clock.wall() - 3500  # the run began 3500 s before the watch
    timed, _ = run_watch(fake_host, {1: start_run}, clock=clock, poll_interval=30, stall_timeout=0,
                         max_runtime=3600, started_at=str(started))
    assert timed["outcome"] == "max_runtime" and timed["run_elapsed_from"] == "started_at"
    assert 3600 <= timed["run_elapsed_s"] <= 3630 and timed["polls"] == 5, "host clock: 3500 s + 4 polls of 30 s"

    # Without started_at the wrapper's STARTED_AT counts, read by the polls once it is there (here from poll 2).
    (fake_host["run"] / "STATUS.md").write_text(f"- started_at: {started + 3000:.0f}\n")
    written = both(start_run, lambda run: (run / "STARTED_AT").write_text(f"{started:.0f}\n"))
    read, _ = run_watch(fake_host, {1: start_run, 2: written}, clock=clock, poll_interval=30, stall_timeout=0,
                        max_runtime=3600 + 150)
    assert read["outcome"] == "max_runtime" and read["run_elapsed_from"] == "STARTED_AT", read["run_elapsed_from"]
    assert 3750 <= read["run_elapsed_s"] <= 3800, "counted from STARTED_AT, not from STATUS.md's later time"
    for name in ("STARTED_AT", "STATUS.md"):
        (fake_host["run"] / name).unlink()

    limited, _ = run_watch(fake_host, {1: start_run}, poll_interval=30, stall_timeout=0, timeout=100,
                           fail_on=["crash"])
    assert limited["outcome"] == "timeout" and limited["elapsed_s"] == 100


def test_loop_first_poll_error_fails_at_once(fake_host: dict[str, Any]) -> None:
    class Broken(FakeAction):
        def _low_level_execute_command(self, cmd: str, sudoable: bool = True) -> dict[str, Any]:
            return {"rc": 127, "stdout": "", "stderr": "sh: 1: tail: not found"}

    watcher = action.Watcher(Broken(fake_host), params(), clock=FakeClock().clock, sleep=FakeClock().sleep)
    with pytest.raises(AnsibleActionFail, match=r"cannot poll the host.*rc 127.*tail: not found"):
        watcher.run()


def test_loop_sync_failure_is_reported_not_fatal(fake_host: dict[str, Any], tmp_path: Path) -> None:
    marker = tmp_path / "synced"
    script = {1: start_run, 2: append(HF[0]), 3: append(HF[1]), 4: both(append(SUMMARY), end_run(0))}
    result, _ = run_watch(fake_host, script, poll_interval=30, sync_interval=20,
                          sync_command=f"echo pulled >> {marker}; echo rsync: connection refused >&2; exit 23")
    assert result["outcome"] == "completed" and not result.get("failed")
    assert result["sync_count"] >= 1 and result["sync_failures"] == result["sync_count"]
    first = result["syncs"][0]
    assert first["rc"] == 23 and first["ok"] is False and "connection refused" in first["output"]
    assert marker.read_text().count("pulled") == result["sync_count"]


def test_loop_api_says_destroyed_and_the_key_never_shows(fake_host: dict[str, Any]) -> None:
    answers = iter([
        {"instances": {"id": 7, "actual_status": "running", "intended_status": "running", "cur_state": "running",
                       "status_msg": f"success, running (token {SECRET})"}},
        {"instances": None},
    ])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json=next(answers))

    client = VastClient(SECRET, "http://vast.test", transport=httpx.MockTransport(handler))
    clock = FakeClock()
    result, _ = run_watch(fake_host, {1: start_run, 2: append(HF[0])}, clock=clock, client=client, instance_id=7,
                          poll_interval=30, api_poll_interval=100)
    assert result["outcome"] == "instance_gone" and result["instance"]["gone"].startswith("destroyed")
    assert result["instance"]["api_polls"] == 2 and result["elapsed_s"] == 100
    assert seen == [f"Bearer {SECRET}"] * 2
    assert SECRET not in json.dumps(result)


def test_argument_spec_defaults() -> None:
    assert action.ARGUMENT_SPEC["api_key"]["no_log"] is True
    assert params(fail_on=[])["fail_on"] == []
    defaults = params()
    assert defaults["fail_on"] == ["crash", "diverged", "stall", "max_runtime", "preempted", "host_lost",
                                   "instance_gone", "timeout", "budget"]
    assert (defaults["poll_interval"], defaults["stall_timeout"], defaults["api_poll_interval"],
            defaults["reconnect_timeout"], defaults["max_runtime"], defaults["timeout"]) == (30, 900, 120, 600, 0, 0)
    assert ArgumentSpecValidator(action.ARGUMENT_SPEC).validate({"run_dir": "/r"}).error_messages == [
        "missing required arguments: tmux_session"]


def destroyed_at(clock: FakeClock, when: float) -> VastClient:
    """An API whose instance 7 runs until the fake clock reaches ``when``, and is gone from then on."""
    def handler(request: httpx.Request) -> httpx.Response:
        row = {"id": 7, "actual_status": "running", "intended_status": "running", "cur_state": "running"}
        return httpx.Response(200, json={"instances": row if clock.now < when else None})

    return VastClient(SECRET, "http://vast.test", transport=httpx.MockTransport(handler))


def join_abandoned_polls() -> None:
    """An abandoned poll goes on to run its command: wait for it, so that no process outlives the test."""
    for thread in threading.enumerate():
        if thread.name == "mlops-vast-watch-poll":
            thread.join(30)


def test_loop_hung_poll_does_not_hide_a_destroyed_instance(fake_host: dict[str, Any]) -> None:
    """A poll stuck on a dead TCP connection: the API is still asked while it waits."""
    release = threading.Event()
    clock = FakeClock()

    def hang(run: Path) -> None:
        clock.now += 200  # what the stuck command costs in (fake) time
        release.wait(30)

    started = time.monotonic()
    try:
        result, _ = run_watch(fake_host, {1: start_run, 2: hang}, clock=clock, client=destroyed_at(clock, 1100),
                              instance_id=7, poll_interval=30, api_poll_interval=120)
    finally:
        release.set()
        join_abandoned_polls()
    assert result["outcome"] == "instance_gone" and result["instance"]["gone"].startswith("destroyed")
    assert "while a poll was waiting" in result["last_connection_failure"]
    assert time.monotonic() - started < 10, "not the 60 s command timeout"


def test_loop_a_long_poll_given_up_for_a_destroyed_instance_is_no_connection_failure(
        fake_host: dict[str, Any]) -> None:
    """The poll waits on the host for the run's end, as asked; the API says the instance is gone meanwhile: the
    watch ends at once, and the connection, which did nothing wrong, has no failure on its record."""
    clock = FakeClock()

    def api_interval_passes(run: Path) -> None:
        clock.now += 200  # the next API poll is due while this poll waits on the host

    started = time.monotonic()
    try:
        result, fake_action = run_watch(fake_host, {1: start_run, 2: api_interval_passes}, clock=clock,
                                        client=destroyed_at(clock, 1100), instance_id=7, poll_interval=30,
                                        api_poll_interval=120, end_wait=8)
        returned = time.monotonic()
    finally:
        join_abandoned_polls()  # the given-up poll's command ends when its wait does
    assert result["outcome"] == "instance_gone" and result["instance"]["gone"].startswith("destroyed")
    assert returned - started < 6, "given up within its wait, not after it"
    assert (result["connection_failures"], result["last_connection_failure"]) == (0, None)
    assert fake_action._connection.resets == 0


def test_loop_stops_for_the_budget_within_one_poll(fake_host: dict[str, Any]) -> None:
    """Spend is read from the instance's row (GPU while running, storage since creation); the watch returns
    `budget` when one more poll and the stop would pass the budget, not after."""
    clock = FakeClock()
    created = clock.wall() - 100

    def handler(request: httpx.Request) -> httpx.Response:
        row = {"id": 7, "actual_status": "running", "intended_status": "running", "cur_state": "running",
               "start_date": created, "uptime_mins": (clock.now - 1000 + 60) / 60, "dph_base": 36.0,
               "storage_total_cost": 3.6, "dph_total": 39.6}
        return httpx.Response(200, json={"instances": row})

    client = VastClient(SECRET, "http://vast.test", transport=httpx.MockTransport(handler))
    result, _ = run_watch(fake_host, {1: start_run}, clock=clock, client=client, instance_id=7, poll_interval=30,
                          max_total_usd=5.0, stop_margin_s=60, total_steps=400)
    assert result["outcome"] == "budget", result["msg"]
    spent = result["triage"]["spent_usd"]
    rate = 39.6 / 3600
    assert spent + rate * 90 >= 5.0 > spent, "stopped before the budget, with one poll and the stop in reserve"
    assert spent + rate * 90 - rate * 30 < 5.0, "not later than one poll after the threshold"
    assert result["instance"]["api_polls"] >= 2


def test_a_completed_run_is_completed_even_near_its_budget(fake_host: dict[str, Any]) -> None:
    clock = FakeClock()

    def handler(request: httpx.Request) -> httpx.Response:
        row = {"id": 7, "actual_status": "running", "intended_status": "running", "cur_state": "running",
               "start_date": clock.wall() - 100, "uptime_mins": 100 / 60, "dph_base": 36.0,
               "storage_total_cost": 0.0, "dph_total": 36.0}
        return httpx.Response(200, json={"instances": row})

    client = VastClient(SECRET, "http://vast.test", transport=httpx.MockTransport(handler))
    result, _ = run_watch(fake_host, {1: both(start_run, append(HF[0]), append(SUMMARY), end_run(0))}, clock=clock,
                          client=client, instance_id=7, poll_interval=30, max_total_usd=1.5)
    assert result["outcome"] == "completed", result["msg"]


def test_a_budget_needs_the_instance_and_no_option_may_be_negative() -> None:
    assert action.param_problems(params()) == []
    assert action.param_problems(params(max_total_usd=5.0)) == [
        "max_total_usd needs instance_id (the spend is read from the instance's API row)"]
    assert action.param_problems(params(max_total_usd=5.0, instance_id=7)) == []
    assert action.param_problems(params(max_total_usd=-1.0, stop_margin_s=-2.0)) == [
        "max_total_usd must be >= 0", "stop_margin_s must be >= 0"]


@pytest.mark.parametrize(("row", "kind"), [
    (None, "instance_gone"),
    ({"cur_state": "unloaded", "intended_status": "running"}, "instance_gone"),
    ({"cur_state": "stopped", "intended_status": "stopped"}, "instance_gone"),
    # An interruptible instance stopped under a running contract was outbid: its disk is kept, it may resume.
    ({"cur_state": "stopped", "intended_status": "running", "is_bid": True, "status_msg": ""}, "preempted"),
    ({"cur_state": "stopped", "intended_status": "running", "is_bid": False,
      "status_msg": "Instance outbid: a higher bid took the GPUs."}, "preempted"),
    # On-demand and stopped without our asking: the machine, not the market.
    ({"cur_state": "stopped", "intended_status": "running", "is_bid": False, "status_msg": "Error: GPU lost"},
     "host_lost"),
    ({"cur_state": "running", "intended_status": "running", "actual_status": "offline"}, "host_lost"),
    ({"cur_state": "running", "intended_status": "running", "actual_status": "exited"}, "host_lost"),
])
def test_gone_kind_tells_a_preemption_from_a_lost_host(row: dict[str, Any] | None, kind: str) -> None:
    assert wd.gone_kind(row) == kind


def test_no_eta_within_the_first_seconds_of_whole_second_clocks(fake_host: dict[str, Any]) -> None:
    clock = FakeClock()
    watcher = action.Watcher(FakeAction(fake_host, {}, clock), params(total_steps=400), clock=clock.clock,
                             sleep=clock.sleep, wall=clock.wall)
    watcher.metrics = lambda: SimpleNamespace(step=70)  # type: ignore[method-assign]
    watcher.run_started, watcher.host_offset = clock.wall() - 0.001, 0.0  # STARTED_AT and the poll in one second
    assert watcher.eta_s() is None  # not "done in 0 s"
    watcher.run_started = clock.wall() - 7.0
    assert watcher.eta_s() == pytest.approx(330 * 7.0 / 70)
