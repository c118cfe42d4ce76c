"""A sweep trial's row, read from the results folder its train.yml left, and the sweep's CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ansible_collections.mlops.vast.plugins.plugin_utils.sweep_rows import (
    build_row,
    earlier_spend,
    failure_message,
    losses,
    rows_csv,
    spent,
)

LEDGER = [{"event": "created", "id": 1, "label": "sw-t000", "machine_id": 11},
          {"event": "created", "id": 2, "label": "sw-t001", "machine_id": 12},
          {"event": "created", "id": 3, "label": "sw-t000", "machine_id": 13},
          {"event": "destroyed", "id": 1}]


def results(tmp_path: Path, *, losses: list[float], watches: list[dict], attempts: int = 1) -> Path:
    folder = tmp_path / "t000"
    folder.mkdir()
    lines = [f"{{'loss': {loss}, 'learning_rate': 0.1, 'step': {10 * (i + 1)}}}" for i, loss in enumerate(losses)]
    (folder / "run.log").write_text("starting\n" + "\n".join(lines) + "\n{'train_runtime': 3.2}\n")
    for index, watch in enumerate(watches):
        name = "watch.json" if index == 0 else f"watch-recovery-{index}.json"
        (folder / name).write_text(json.dumps(watch))
    (folder / "recovery.json").write_text(json.dumps({"attempts": attempts, "recoveries": []}))
    return folder


def test_a_completed_trial_has_its_losses_steps_cost_attempts_and_hosts(tmp_path: Path) -> None:
    folder = results(tmp_path, losses=[0.9, 0.3, 0.4], attempts=2,
                     watches=[{"outcome": "preempted", "triage": {"spent_usd": 0.01}},
                              {"outcome": "completed", "triage": {"spent_usd": 0.02}}])
    row = build_row(trial_id="t000", label="sw-t000", params={"lr": 0.1}, results_dir=str(folder), rc=0,
                    outcome_override=None, duration_s=12.34, ledger_records=LEDGER)
    assert row["outcome"] == "completed" and row["message"] == ""
    assert (row["final_loss"], row["best_loss"], row["steps"]) == (0.4, 0.3, 30)
    assert row["cost_usd"] == 0.03 and row["attempts"] == 2 and row["hosts"] == [11, 13]
    assert row["duration_s"] == 12.3


def test_a_failed_trial_says_how_and_why(tmp_path: Path) -> None:
    folder = results(tmp_path, losses=[0.9], watches=[{"outcome": "crashed", "msg": "Traceback: boom",
                                                        "triage": {"spent_usd": 0.005}}])
    (folder / "ansible.log").write_text(
        'fatal: [localhost]: FAILED! => {"msg": "rescued earlier"}\n'
        'fatal: [localhost]: FAILED! => {"msg": "The run did not complete: crashed: Traceback: boom '
        '(results in /r; nothing is billing)"}\n')
    row = build_row(trial_id="t000", label="sw-t000", params={}, results_dir=str(folder), rc=2,
                    outcome_override=None, duration_s=None, ledger_records=LEDGER)
    assert row["outcome"] == "crashed"
    assert row["message"] == "crashed: Traceback: boom"


def test_an_ansible_error_before_the_watch_is_the_message(tmp_path: Path) -> None:
    assert failure_message("ok\n[ERROR]: Task failed: first\nmore\n[ERROR]: Task failed: no offer fits\n") == \
        "Task failed: no offer fits"
    assert failure_message("nothing here") == ""


def test_a_trial_that_never_ran_has_a_row_too(tmp_path: Path) -> None:
    row = build_row(trial_id="t009", label="sw-t009", params={"lr": 1}, results_dir=str(tmp_path / "none"), rc=None,
                    outcome_override="budget", duration_s=None, ledger_records=LEDGER)
    assert row["outcome"] == "budget" and row["hosts"] == [] and row["attempts"] == 0 and row["cost_usd"] == 0


def test_csv_has_one_column_per_parameter_and_one_line_per_trial() -> None:
    rows = [{"id": "t000", "label": "a", "params": {"lr": 0.1}, "outcome": "completed", "hosts": [1, 2]},
            {"id": "t001", "label": "b", "params": {"seed": 3}, "outcome": "failed", "hosts": []}]
    table = list(csv.DictReader(io.StringIO(rows_csv(rows))))
    assert [r["id"] for r in table] == ["t000", "t001"]
    assert table[0]["param_lr"] == "0.1" and table[0]["param_seed"] == "" and table[1]["param_seed"] == "3"
    assert table[0]["hosts"] == "1 2" and table[1]["outcome"] == "failed"
    # Parameters as the trial's command got them: JSON for lists and mappings, true/false, nothing for null.
    odd = [{"id": "t002", "label": "c", "params": {"layers": [64, 32], "opt": {"name": "adam", "beta": 0.9},
                                                  "flag": True, "off": False, "none": None, "lr": 1e-4}}]
    row = next(csv.DictReader(io.StringIO(rows_csv(odd))))
    assert (row["param_layers"], row["param_opt"]) == ("[64, 32]", '{"name": "adam", "beta": 0.9}')
    assert (row["param_flag"], row["param_off"], row["param_none"], row["param_lr"]) == ("true", "false", "", "0.0001")


def test_spend_adds_the_attempt_being_watched_to_the_finished_ones(tmp_path: Path) -> None:
    (tmp_path / "watch.json").write_text(json.dumps({"outcome": "preempted", "triage": {"spent_usd": 0.01}}))
    (tmp_path / "progress-watch.json").write_text(json.dumps({"outcome": None, "spent_usd": 0.004}))
    assert spent(str(tmp_path)) == 0.014
    # Once the watch of that attempt has ended, its record counts and the live figure no longer does.
    finished = {"outcome": "completed", "triage": {"spent_usd": 0.005}}
    (tmp_path / "watch-recovery-1.json").write_text(json.dumps(finished))
    (tmp_path / "progress-watch.json").write_text(json.dumps({"outcome": "completed", "spent_usd": 0.005}))
    assert spent(str(tmp_path)) == 0.015


def test_the_accounts_charges_count_once_train_yml_asked_for_them(tmp_path: Path) -> None:
    # The instance vanished under the watch (its last reading is null) and train.yml then asked the account.
    (tmp_path / "watch.json").write_text(json.dumps({"outcome": "instance_gone", "triage": {"spent_usd": None}}))
    (tmp_path / "progress-watch.json").write_text(json.dumps({"outcome": "instance_gone", "spent_usd": None}))
    assert spent(str(tmp_path)) == 0
    (tmp_path / "spend.json").write_text(json.dumps({"label": "sw-t000", "total_usd": 0.000518}))
    assert spent(str(tmp_path)) == 0.000518
    # Charges that lag behind what the watch saw used do not lower it.
    (tmp_path / "watch.json").write_text(json.dumps({"outcome": "completed", "triage": {"spent_usd": 0.002}}))
    assert spent(str(tmp_path)) == 0.002
    # A smoke test that rejected the host: no watch ever ran, the account alone knows.
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    (rejected / "spend.json").write_text(json.dumps({"total_usd": 0.000175}))
    assert spent(str(rejected)) == 0.000175
    assert build_row(trial_id="t001", label="sw-t001", params={}, results_dir=str(rejected), rc=2,
                     outcome_override=None, duration_s=1.0, ledger_records=[])["cost_usd"] == 0.000175


def test_without_the_run_log_the_watchs_last_lines_give_step_and_loss(tmp_path: Path) -> None:
    lines = [json.dumps({"loss": loss, "step": step}) for step, loss in ((210, 0.10), (220, 0.05), (230, 0.08))]
    (tmp_path / "watch.json").write_text(json.dumps({"outcome": "instance_gone",
                                                     "triage": {"last_lines": ["loading", *lines]}}))
    assert losses(str(tmp_path)) == (230, 0.08, 0.05)
    # The log that came home is the whole story when there is one.
    (tmp_path / "run.log").write_text(json.dumps({"loss": 0.5, "step": 10}) + "\n")
    assert losses(str(tmp_path)) == (10, 0.5, 0.5)


def test_an_instance_resumed_in_place_counts_once(tmp_path: Path) -> None:
    first = {"outcome": "preempted", "instance": {"id": 7}, "triage": {"spent_usd": 0.01}}
    again = {"outcome": "completed", "instance": {"id": 7}, "triage": {"spent_usd": 0.03}}
    (tmp_path / "watch.json").write_text(json.dumps(first))
    (tmp_path / "watch-recovery-1.json").write_text(json.dumps(again))
    (tmp_path / "progress-watch.json").write_text(json.dumps({"outcome": None, "spent_usd": 0.02, "instance_id": 9}))
    assert spent(str(tmp_path)) == 0.05


def test_a_rerun_row_has_only_the_hosts_its_own_run_rented(tmp_path: Path) -> None:
    folder = results(tmp_path, losses=[0.5], watches=[{"outcome": "completed", "triage": {"spent_usd": 0.01}}])
    ledger = [{"ts": 100.0, "event": "created", "id": 1, "label": "sw-t000", "machine_id": 11},  # the earlier run
              {"ts": 150.0, "event": "destroyed", "id": 1},
              {"ts": 205.0, "event": "created", "id": 5, "label": "sw-t000", "machine_id": 15},
              {"ts": 206.0, "event": "created", "id": 6, "label": "sw-t001", "machine_id": 16}]
    row = build_row(trial_id="t000", label="sw-t000", params={}, results_dir=str(folder), rc=0,
                    outcome_override=None, duration_s=None, ledger_records=ledger, started_at=200.0)
    assert row["hosts"] == [15]


def test_the_outcome_is_said_once_before_the_watchs_message(tmp_path: Path) -> None:
    # The watch role prefixes the outcome to the watch's message, which starts with it already.
    assert failure_message('fatal: [localhost]: FAILED! => {"msg": "The run did not complete: crash: crash: the run '
                           'exited with code 3 (t.py:9) (results in /r; nothing is billing)"}\n') == \
        "crash: the run exited with code 3 (t.py:9)"
    folder = results(tmp_path, losses=[0.9], watches=[{"outcome": "crash", "msg": "crash: crash: the run exited"}])
    row = build_row(trial_id="t000", label="sw-t000", params={}, results_dir=str(folder), rc=2,
                    outcome_override=None, duration_s=None, ledger_records=[])
    assert row["message"] == "crash: the run exited"
    # A message that merely starts with a word and a colon twice, differently, is left as it is.
    assert failure_message("The run did not complete: stall: crash log empty\n") == "stall: crash log empty"
    quoted = ('fatal: [localhost]: FAILED! => {"msg": "The run did not complete: crash: the trainer said '
              '\\"CUDA error: out of memory\\" at step 3"}\n')
    assert failure_message(quoted) == 'crash: the trainer said "CUDA error: out of memory" at step 3'


def test_a_loss_that_became_nan_is_null_in_the_row_and_said_in_words(tmp_path: Path) -> None:
    # HF's trainers print nan bare; JSON has no NaN, and a strict parser would reject trials.json.
    (tmp_path / "run.log").write_text("{'loss': 0.5, 'step': 10}\n{'loss': 0.2, 'step': 20}\n"
                                      "{'loss': nan, 'step': 30}\n")
    row = build_row(trial_id="t000", label="sw-t000", params={}, results_dir=str(tmp_path), rc=0,
                    outcome_override=None, duration_s=1.0, ledger_records=[])
    assert row["final_loss"] is None and row["best_loss"] == 0.2 and row["steps"] == 30
    assert row["message"] == "the last loss logged was nan (step 30)"
    json.loads(json.dumps(row, allow_nan=False))


def test_earlier_runs_spend_counts_the_tries_set_aside_and_those_about_to_run_again(tmp_path: Path) -> None:
    def folder(name: str, row_cost: float | None, watched: float | None) -> None:
        path = tmp_path / name
        path.mkdir()
        (path / "trial.json").write_text(json.dumps({"id": name[:7], "row": None if row_cost is None else
                                                     {"outcome": "crash", "cost_usd": row_cost}}))
        if watched is not None:
            (path / "watch.json").write_text(json.dumps({"outcome": "crash", "triage": {"spent_usd": watched}}))

    folder("t0000aa.before-20261201T101010", 0.002, 0.002)   # set aside by an earlier re-run
    folder("t0000bb.before-20261202T101010", None, 0.003)    # its controller was killed: no row, its watch's word
    folder("t0000cc", 0.004, 0.004)                          # runs again now
    folder("t0000dd", 0.0, 0.005)                            # a run in which it never started wrote a row of $0
    folder("t0000ee", 0.007, 0.007)                          # reused (completed): its row counts it already
    folder("checkpoints.before-20261202T101010", 1.0, 1.0)   # not a trial's folder
    assert earlier_spend(str(tmp_path), ["t0000cc", "t0000dd", "t0000ff"]) == 0.014
    assert earlier_spend(str(tmp_path / "none"), ["t0000cc"]) == 0.0
