#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: mlops.vast.watch is an action plugin (plugins/action/watch.py) that runs on
# the controller and reaches the host through the task's own connection.

from __future__ import annotations

DOCUMENTATION = r"""
module: watch
short_description: Block until a training run in tmux completes, crashes, stalls or loses its instance
description:
  - One blocking task on the controller that watches a training run started in a tmux session on the
    rented host (the task's target), the way the seeds' "monitoring model" asks for it - sparse polling,
    one command that returns on completion, crash or timeout, and a triage bundle at the end.
  - Every O(poll_interval) seconds it runs one short shell command on the host over the host's existing
    connection (the inventory's SSH options, ControlPersist, key and become apply). The command checks
    C(tmux has-session), then reads the exit-code file (the run's wrapper writes it before its session ends, so
    a run ending during the poll is never taken for a crash), reads what is new in the log since the previous
    poll (so a traceback anywhere in the log is seen), and asks C(nvidia-smi) for the GPU utilisation. It
    changes nothing on the host.
  - Every O(api_poll_interval) seconds, when O(instance_id) is set, it asks the Vast API for the instance's
    status, from the controller with the controller's key; the key is never sent to the host. With
    O(shared_list) (the C(mlops.vast.watch) role turns it on) it reads the account's instance list, shared
    through a small file next to the contract ledger by every watch on the controller (a sweep's trials), so
    N watches make about one list request per interval, not N.
  - "It returns with O(fail_on) deciding failure: C(completed) (exit code 0 and the summary marker seen);
    C(crash) (a non-zero exit code, a traceback in the log, or the tmux session gone without an exit code);
    C(diverged) (O(diverge_records) training records in a row with a NaN or infinite loss, or one above
    O(diverge_factor) times the lowest);
    C(stall) (no new step for O(stall_timeout) seconds, or no log growth before any step was logged);
    C(max_runtime) (the run has been going longer than O(max_runtime), or the host's C(timeout) stopped it
    there with exit code 124 or 137); C(preempted) (an interruptible instance was outbid: the API says it is
    stopped though we want it running; its disk is kept and it may resume); C(host_lost) (the machine went
    offline, its container exited, or the host stayed unreachable for O(reconnect_timeout) while the API
    still calls it running); C(instance_gone) (the API says destroyed, or stopped on purpose);
    C(timeout) (the watch's own O(timeout) passed while the run goes on); C(budget) (what the instance has
    cost would pass O(max_total_usd) before the next look)."
  - When several apply at once the first of C(completed), C(preempted)/C(host_lost)/C(instance_gone), C(crash),
    C(diverged), C(max_runtime), C(stall), C(timeout) wins. Before it returns anything but C(completed) it asks
    the API once more, so a run killed by a preemption is reported as C(preempted), not as a crash.
  - A dropped connection is not an outcome. The watch resets the connection, backs off (1 s doubling up to
    O(poll_interval), at most 30 s) and polls again until O(reconnect_timeout); each outage it survives is
    counted in RV(reconnects). The run lives in tmux on the host and is not touched by any of this.
  - O(sync_command), when given, runs on the controller every O(sync_interval) seconds in the background
    while the watch goes on, for example an rsync pull of checkpoints. Its exit status, duration and output
    are reported in RV(syncs); a failing sync is a warning, never the outcome.
  - In check mode the task returns at once without contacting the host or the API.
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.vast
  - mlops.vast.attributes
  - mlops.vast.attributes.api
  - mlops.vast.attributes.action
attributes:
  action:
    details: An action plugin; it runs on the controller and reaches the host over the task's connection.
  check_mode:
    support: full
    details: Returns at once, skipped, without contacting the host or the API.
  diff_mode:
    support: none
  platform:
    platforms: posix
    details: The host (the task's target) needs a POSIX shell and tmux.
options:
  run_dir:
    description:
      - The run's directory on the host (the training contract's C(run_remote_dir)). O(log_file),
        O(exit_code_file), O(started_file), O(status_file) and O(metrics_file) are relative to it unless absolute.
      - A leading C(~/) is the remote user's home.
    type: str
    required: true
  tmux_session:
    description:
      - Name of the tmux session the run lives in, for example C(run_<run id>). Matched exactly.
    type: str
    required: true
  log_file:
    description:
      - The log the run appends everything to (stdout and stderr).
    type: str
    default: run.log
  exit_code_file:
    description:
      - The file the run's wrapper writes the exit code to when the command ends, alone on one line.
    type: str
    default: EXIT_CODE
  status_file:
    description:
      - The run's C(STATUS.md). Its first line that mentions a start and carries a time (ISO 8601 or epoch
        seconds, for example C(started_at 2026-05-01T10:00:00Z)) is the run's start for O(max_runtime),
        unless O(started_at) is given.
    type: str
    default: STATUS.md
  log_format:
    description:
      - "C(hf) reads Hugging Face Trainer lines, Python dict reprs such as
        C({'loss': 0.6931, 'learning_rate': 0.001, 'epoch': 0.05, 'step': 10})."
      - C(jsonl) reads JSON objects, one per line, from the log or from O(metrics_file).
      - Either way both notations are understood; the format only decides which is tried first.
      - A training record is one with C(loss), C(reward) (or C(rewards/mean)) or C(step). The step is
        C(step) (or C(global_step)); without it, the number of records times O(logging_steps).
    type: str
    choices: [hf, jsonl]
    default: hf
  metrics_file:
    description:
      - A JSON-lines metrics file to read step, loss and reward from instead of the log, once it holds a training
        record. It is followed as the log is, each poll reading what was added since the last (at most 256 KiB; a
        file that shrank is read again from its start). Tracebacks and the summary marker are still looked for in
        the log.
    type: str
  logging_steps:
    description:
      - Steps between two training records, to count steps from records that have no C(step) (Hugging
        Face prints C(epoch) but not C(step)). Without it such runs report the epoch and the number of
        records, and the stall clock follows the records.
    type: int
  summary_regex:
    description:
      - "A log line matching this (Python C(re.search)) is the completion marker; its dict is returned as
        RV(triage.summary_metrics). The default matches Hugging Face's final
        C({'train_runtime': ..., 'train_loss': ..., 'epoch': ...}) line."
      - An empty string means exit code 0 alone is completion.
    type: str
    default: "^\\s*\\{\\s*['\"]train_runtime['\"]\\s*:"
  traceback_regex:
    description:
      - A log line matching this is a traceback, which is a C(crash) even while the process still runs
        (a hung rank after another died). An empty string disables the check.
    type: str
    default: "^Traceback \\(most recent call last\\):"
  poll_interval:
    description:
      - Seconds between two polls of the host. Sparse by default, as the seeds advise for long runs.
    type: float
    default: 30
  end_wait:
    description:
      - Seconds a poll may wait on the host for the run's exit code before it answers (at most O(poll_interval));
        each poll starts that much early, so one interval still passes between answers. A run that ends in the
        last O(end_wait) seconds of an interval (any time, when O(poll_interval) is at most O(end_wait)) is seen
        within a quarter of a second instead of at the next poll, for the same number of round trips. The first
        poll, and polls while the host was just lost, do not wait. C(0) never waits. Below 10, since a poll that
        has not answered 10 s beyond its wait counts as hanging.
    type: float
    default: 8
  stall_timeout:
    description:
      - Seconds without a new step (before the first training record, without log growth) after which the
        run is a C(stall). C(0) disables stall detection.
    type: float
    default: 900
  diverge_records:
    description:
      - This many training records in a row whose loss is NaN or infinite make the run C(diverged), stopped like
        a stall so that no more is spent on it; so does a run that exits 0 with such a streak at its end, or with
        its last record NaN or infinite however short the streak (its final weights are no result). A loss of
        0.0 logged with a grad_norm that is not finite counts too (the Hugging Face Trainer's
        C(logging_nan_inf_filter), on by default, logs a window of NaN losses so), and with O(diverge_factor) a
        loss above that many times the lowest positive loss so far.
      - A sane record ends the streak; records without a loss (reward only) do not count. With O(metrics_file)
        its records are the ones counted, every one of them, as the log's would be.
        RV(triage.divergence.last_clean_step) says after which step checkpoints may hold the diverged weights.
        C(0) disables the rule.
    type: int
    default: 3
  diverge_factor:
    description:
      - A loss above this many times the lowest positive loss logged so far also counts toward
        O(diverge_records). It must be above 1. Unset or C(0), only NaN and infinite losses count. Losses that are
        never positive (log-likelihoods) are never above it.
    type: float
  max_runtime:
    description:
      - Seconds the run may go, counted from its start (O(started_at), else O(started_file), else O(status_file),
        else the start of the watch), measured with the host's clock. C(0) means no limit.
    type: float
    default: 0
  started_at:
    description:
      - The run's start, as epoch seconds or an ISO 8601 time (without a zone it is UTC).
    type: raw
  started_file:
    description:
      - A file on the host whose first line is the run's start (epoch seconds or ISO 8601), as the
        M(mlops.vast.train) role's wrapper writes it. Read with the polls until it is there, unless
        O(started_at) is given; an empty string turns it off.
    type: str
    default: STARTED_AT
  instance_id:
    description:
      - The Vast instance (contract) id. When set, its status is read from the API every
        O(api_poll_interval) seconds, at once when the host stops answering, and before any outcome but
        C(completed). Without it the API is not used and only O(reconnect_timeout) detects a lost host.
    type: int
  api_poll_interval:
    description:
      - Seconds between two API reads of the instance's status while the host answers.
    type: float
    default: 120
  reconnect_timeout:
    description:
      - Seconds the host may stay unreachable before the outcome is C(host_lost).
    type: float
    default: 600
  sync_command:
    description:
      - A shell command run on the controller every O(sync_interval) seconds while the run goes, for example
        an rsync pull of the checkpoints. It runs in the background; a run still going when the watch ends is
        allowed to finish within O(sync_timeout) (it is stopped at once when the instance is gone).
    type: str
  sync_interval:
    description:
      - Seconds between the starts of two syncs; the first starts one interval after the watch.
    type: float
    default: 600
  sync_timeout:
    description:
      - Seconds one sync may take before its process group is killed (reported as a failed sync).
    type: float
    default: 1800
  gpu_util:
    description:
      - Read each GPU's utilisation with C(nvidia-smi) at every poll, for RV(triage.gpu_util).
    type: bool
    default: true
  fail_on:
    description:
      - Outcomes that fail the task. The result is the same either way; use C(ignore_errors) or an empty
        list to branch on RV(outcome) instead.
    type: list
    elements: str
    choices: [completed, crash, diverged, stall, max_runtime, preempted, host_lost, instance_gone, timeout, budget]
    default: [crash, diverged, stall, max_runtime, preempted, host_lost, instance_gone, timeout, budget]
  max_total_usd:
    description:
      - The run's budget in $. The instance's spend is read from its own API row (C(dph_total), which includes
        storage, over the time since C(start_date)) at least every O(poll_interval); when what is spent plus the
        burn for one more O(poll_interval) and O(stop_margin_s) would pass it, the watch returns C(budget), so
        the teardown that follows pulls the newest checkpoint and destroys the instance. Needs O(instance_id).
        C(0) means no budget.
    type: float
    default: 0
  stop_margin_s:
    description: Seconds the stop after a C(budget) outcome is expected to take (final pull and destroy).
    type: float
    default: 60
  total_steps:
    description: The run's total steps, for the triage bundle's C(eta_s).
    type: int
  shared_list:
    description:
      - Read the instance's status from the account's instance list (one request, C(GET /api/v0/instances/),
        or the v1 list's pages where that is refused), kept in C(instances-cache.json) next to the contract
        ledger (C(MLOPS_VAST_LEDGER)) under a file lock. A list younger than half the API interval (at most 2 s
        when the host stops answering or before an outcome is blamed on the run) is reused by every watch on
        the controller; an instance missing from a reused list is looked for in a fresh one before it counts as
        gone. The file holds neither the key (entries are keyed by the API URL and a hash of the key) nor more
        of a row than the watch needs.
      - C(false) asks the API for the one instance (C(GET /api/v0/instances/{id}/)) every time.
      - The C(mlops.vast.watch) role (so C(playbooks/train.yml) and every trial of a sweep) turns it on.
    type: bool
    default: false
  progress_file:
    description:
      - A local file (on the controller) replaced atomically after every poll of the host and once more when the
        watch returns, with one JSON object C({"step", "total_steps", "loss", "spent_usd", "dph", "eta_s",
        "instance_id", "outcome", "updated_at"}) - C(step) and C(total_steps) integers or null, C(loss),
        C(spent_usd), C(dph) (the instance's C(dph_total)) and C(eta_s) numbers or null (a non-finite loss is
        null), C(outcome) null while the run goes and the final outcome at the end, C(updated_at) epoch seconds.
      - For progress displays (the C(mlops-vast) CLI reads it). A failure to write it never stops the watch.
    type: path
  timeout:
    description:
      - Seconds the watch itself may block; then it returns C(timeout) and the run goes on. C(0) means no
        limit other than the outcomes above.
    type: float
    default: 0
notes:
  - Action plugin; runs on the controller and needs no Python on the host, only a POSIX shell,
    coreutils, and tmux.
  - The poll runs as the connection's user, without become (a tty would garble the log's bytes), so that
    user must be able to read the run's files and see its tmux server, as the user who started the run does.
  - Every wait is bounded; a poll command that does not answer within twice O(poll_interval) (at least
    60 s) counts as a dropped connection.
  - The API key never appears in the result or in any message.
seealso:
  - module: mlops.vast.vast_instance
  - module: mlops.vast.gpu_check
"""

EXAMPLES = r"""
- name: Watch the run until it ends (polls every 30 s, the API every 2 min)
  mlops.vast.watch:
    run_dir: /workspace/run
    tmux_session: "run_{{ run_id }}"
    instance_id: "{{ instance.id }}"
    max_runtime: "{{ 6 * 3600 }}"
    stall_timeout: 1200
  register: watched

- name: Watch with a checkpoint pull every 10 minutes, branching on the outcome instead of failing
  mlops.vast.watch:
    run_dir: /workspace/run
    tmux_session: "run_{{ run_id }}"
    instance_id: "{{ instance.id }}"
    logging_steps: 10
    sync_command: >-
      rsync -az -e "ssh -p {{ ansible_port }} -o StrictHostKeyChecking=no"
      root@{{ ansible_host }}:/workspace/run/output/ {{ local_results }}/
    sync_interval: 600
    fail_on: []
  register: watched

- name: Triage
  ansible.builtin.debug:
    msg: >-
      {{ watched.outcome }} at step {{ watched.triage.step }}, loss {{ watched.triage.loss }},
      traceback {{ watched.triage.traceback }}, GPU {{ watched.triage.gpu_util }}
"""

RETURN = r"""
outcome:
  description: Why the watch returned.
  returned: success
  type: str
  choices: [completed, crash, diverged, stall, max_runtime, preempted, host_lost, instance_gone, timeout, budget]
  sample: completed
msg:
  description: The outcome in words, with the last progress seen.
  returned: always
  type: str
  sample: "crash: the run exited with code 1 after a traceback (last step 30, loss 0.5123)"
triage:
  description: The seeds' triage bundle, from the last successful poll.
  returned: success
  type: dict
  contains:
    step:
      description: Newest training step (or records times O(logging_steps)); null before any.
      type: int
    epoch:
      description: Newest epoch logged.
      type: float
    loss:
      description: Newest training loss (C(nan) stays C(nan)).
      type: float
    reward:
      description: Newest reward (C(reward) or C(rewards/mean)), when the run logs one.
      type: float
    last_lines:
      description: The log's last 20 lines.
      type: list
      elements: str
    traceback:
      description: Whether a traceback line was seen anywhere in the log.
      type: bool
    traceback_excerpt:
      description: The newest traceback, up to the exception's line.
      type: str
    summary:
      description: Whether the summary marker was seen.
      type: bool
    summary_metrics:
      description: The summary line's dict (for Hugging Face C(train_runtime), C(train_loss) and so on).
      type: dict
    gpu_util:
      description: Utilisation in percent per GPU from C(nvidia-smi); null where there is none.
      type: list
      elements: int
    completed:
      description: Whether the outcome is C(completed).
      type: bool
    exit_code:
      description: The exit-code file's content, null while the run goes.
      type: int
    tmux_alive:
      description: Whether the tmux session existed at the last poll (null when tmux is not installed).
      type: bool
    divergence:
      description: The O(diverge_records) rule's view of the losses.
      type: dict
      contains:
        records:
          description: Training records in a row that diverge, up to the last one read.
          type: int
        since_step:
          description: The step of the first of them (null when none, or the log has no steps).
          type: int
        last_clean_step:
          description: The step of the last record whose loss and grad_norm were sane; checkpoints of later
            steps may hold the diverged weights.
          type: int
        lowest_loss:
          description: The lowest positive loss of a sane record.
          type: float
    spent_usd:
      description: What the instance has cost so far, from its API row (null without O(instance_id)).
      type: float
    eta_s:
      description: Seconds until O(total_steps) at the pace so far (null without O(total_steps) or a step).
      type: float
  sample:
    step: 400
    epoch: 1.0
    loss: 0.4123
    reward: null
    last_lines: ["{'loss': 0.4123, 'epoch': 1.0, 'step': 400}", "{'train_runtime': 61.2, 'train_loss': 0.52}"]
    traceback: false
    traceback_excerpt: ""
    summary: true
    summary_metrics: {train_runtime: 61.2, train_loss: 0.52}
    gpu_util: [97]
    completed: true
    exit_code: 0
    tmux_alive: false
polls:
  description: Successful polls of the host.
  returned: success
  type: int
reconnects:
  description: Connection outages the watch recovered from (the host answered again).
  returned: success
  type: int
connection_failures:
  description: Polls that failed for the connection (each outage has one or more).
  returned: success
  type: int
last_connection_failure:
  description: The last failed poll's error, or null.
  returned: success
  type: str
syncs:
  description: One record per O(sync_command) run (the last 100), oldest first.
  returned: success
  type: list
  elements: dict
  sample:
    - {n: 1, rc: 0, ok: true, timed_out: false, at_s: 600.0, duration_s: 4.2, output: ""}
sync_count:
  description: Syncs run in all.
  returned: success
  type: int
sync_failures:
  description: Syncs that failed or timed out.
  returned: success
  type: int
elapsed_s:
  description: Seconds the watch blocked.
  returned: success
  type: float
run_elapsed_s:
  description: Seconds since the run's start (see O(max_runtime)).
  returned: success
  type: float
run_elapsed_from:
  description: Where the start came from, C(started_at), the started or status file's name, or C(watch).
  returned: success
  type: str
idle_s:
  description: Seconds since progress last moved.
  returned: success
  type: float
log:
  description: How much of the log was read (C(size), C(read)), polls that skipped a part larger than
    256 KiB (C(gaps)), restarts of the log (C(truncations)) and tracebacks seen (C(traceback_count)).
  returned: success
  type: dict
instance:
  description: The instance as the API last described it, when O(instance_id) is set.
  returned: success
  type: dict
  sample:
    id: 1234567
    gone: null
    actual_status: running
    intended_status: running
    cur_state: running
    status_msg: success, running pytorch/pytorch
    api_polls: 12
    api_error: null
"""
