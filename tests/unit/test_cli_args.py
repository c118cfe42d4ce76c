"""mlops-vast without renting anything: bad input is one clear line and exit 2, exit codes by outcome, the choice
of vastsim, the ledger and spend arithmetic of `status`, and the plain (non-terminal) display."""

from __future__ import annotations

import io
import json
import subprocess
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from mlops_vast import cli
from mlops_vast import events as ev


@pytest.mark.parametrize(("outcome", "code"), [("completed", 0), ("failed", 1), ("partial", 3), ("cancelled", 130),
                                               ("something-else", 1)])
def test_exit_codes(outcome: str, code: int) -> None:
    assert cli.exit_code(outcome) == code


@pytest.mark.parametrize(("content", "expected"), [
    (None, "does not exist"),
    ("run_name: x\n  bad: [\n", "is not valid YAML (line 2"),
    ("- a\n", "must hold a mapping"),
    ("run_name: x\nrun_bogus: 1\nfoo: 2\n", "unknown variable(s) foo, run_bogus"),
    ("run_query: x\n", "run_name is missing"),
    ("run_name: ../up\n", "run_name must not be empty, contain '/'"),
    (f"run_name: {'n' * 260}\n", "and may be at most 240 characters"),
    ("run_name: x\nrun_command: t\nrun_env: 5\n", "run_env must be a mapping, got a value not shown"),
])
@pytest.mark.parametrize("command", ["train", "estimate"])
def test_bad_run_files_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               command: str, content: str | None, expected: str) -> None:
    path = tmp_path / "run.yml"
    if content is not None:
        path.write_text(content)
    assert cli.main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err, err


SWEEP = "sweep_name: s\nrun_command: python3 train.py\nsweep_trials: [{lr: 1}]\n"


@pytest.mark.parametrize(("content", "expected"), [
    ("sweep_name: s\nsweep_trials: [{lr: 1}]\nsweep_bogus: 1\n", "unknown variable(s) sweep_bogus"),
    ("sweep_name: s\n", "no trials"),
    ("sweep_trials: [{lr: 1}]\n", "sweep_name is missing"),
    # Values, as sweep.yml's first tasks would refuse them, said before ansible-runner starts.
    (f"{SWEEP}sweep_max_parallel: 0\n", "sweep_max_parallel must be at least 1, got 0"),
    (f"{SWEEP}sweep_budget_usd: -1\n", "sweep_budget_usd must be at least 0, got -1"),
    (f"{SWEEP}run_max_dph: abc\n", "run_max_dph must be a number, got 'abc'"),
    (f"{SWEEP}run_disk_gb: -5\n", "run_disk_gb must be at least"),
    ("sweep_name: s\nrun_command: t\nsweep_grid: [0.1]\n", "sweep_grid must be a mapping"),
    ("sweep_name: s\nrun_command: t\nsweep_random: {count: 0, params: {lr: {min: 0.1, max: 1}}}\n",
     "sweep_random.count must be a whole number"),
    ("sweep_name: s\nsweep_trials: [{lr: 1}]\n", "run_command is missing"),
    (SWEEP.replace("sweep_name: s", f"sweep_name: {'K' * 260}"), "and may be at most 200 characters"),
])
def test_bad_sweep_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                expected: str) -> None:
    (tmp_path / "s.yml").write_text(content)
    assert cli.main(["sweep", str(tmp_path / "s.yml")]) == 2
    assert expected in capsys.readouterr().err


def test_a_run_to_train_needs_its_command_and_an_api_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r.yml").write_text("run_name: x\n")
    assert cli.main(["train", str(tmp_path / "r.yml")]) == 2
    assert "run_command is missing (required: the training command" in capsys.readouterr().err
    # A Vast URL without any key: said at once, not by the playbook's first API call.
    (tmp_path / "r.yml").write_text("run_name: x\nrun_command: python3 train.py\n")
    for name in ("VAST_API_KEY", "VAST_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert cli.main(["train", str(tmp_path / "r.yml"), "--api-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "No Vast API key" in err and err.count("\n") == 1, err
    assert "mlops-vast --sim" in err, "the CLI's own option, not only the Python API's argument"


def test_a_usage_error_with_json_still_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["status", "--json", "--bogus"])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"outcome": "error", "exit_code": 2, "error": "usage: unrecognized arguments: --bogus"}
    assert "unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        cli.main(["status", "--bogus"])
    assert capsys.readouterr().out == ""  # without --json, nothing on stdout


def test_extra_vars_take_a_mapping_written_out_as_ansible_playbook_does() -> None:
    assert cli.extra_vars(['{"sweep_trials": [{"lr": 0.1}], "run_disk_gb": 30}', "run_name=b"]) == {
        "sweep_trials": [{"lr": 0.1}], "run_disk_gb": 30, "run_name": "b"}
    assert cli.extra_vars(["{run_disk_gb: 40}"]) == {"run_disk_gb": 40}  # YAML flow style too
    for bad in ('{"run_env": {"TOKEN": "s3cret"', "{} trailing"):
        with pytest.raises(cli.InputError, match="not valid JSON or YAML at column") as raised:
            cli.extra_vars([bad])
        assert "s3cret" not in str(raised.value) and "trailing" not in str(raised.value)


def test_bad_extra_vars_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "r.yml").write_text("run_name: x\n")
    assert cli.main(["train", str(tmp_path / "r.yml"), "-e", "novalue"]) == 2
    assert "expected NAME=VALUE" in capsys.readouterr().err
    assert cli.extra_vars(["run_max_dph=0.5", "run_name=a b", "run_env={A: 1}"]) == {
        "run_max_dph": 0.5, "run_name": "a b", "run_env": {"A": 1}}
    # -e @FILE, as ansible-playbook takes it; later ones win, in order.
    (tmp_path / "more.yml").write_text("run_max_dph: 0.7\nrun_disk_gb: 30\n")
    assert cli.extra_vars(["run_max_dph=0.5", "@" + str(tmp_path / "more.yml"), "run_disk_gb=40"]) == {
        "run_max_dph": 0.7, "run_disk_gb": 40}
    assert cli.main(["train", str(tmp_path / "r.yml"), "-e", "@" + str(tmp_path / "nope.yml")]) == 2
    assert "nope.yml does not exist" in capsys.readouterr().err
    for argv in (["train"], ["teardown"], ["teardown", "--label", "x", "--all"], ["nope"]):
        with pytest.raises(SystemExit) as raised:
            cli.main(argv)
        assert raised.value.code == 2


def test_vastsim_only_when_no_api_is_configured() -> None:
    args = Namespace(sim=False, api_url=None)
    assert cli.wants_sim(args, {}) is True
    assert cli.wants_sim(args, {"VAST_API_KEY": "k"}) is False
    assert cli.wants_sim(args, {"VAST_API_KEY_FILE": "/k"}) is False
    assert cli.wants_sim(args, {"VAST_URL": "http://x"}) is False
    assert cli.wants_sim(Namespace(sim=False, api_url="http://x"), {}) is False
    assert cli.wants_sim(Namespace(sim=True, api_url=None), {"VAST_API_KEY": "k"}) is True


def test_ledger_and_spend(tmp_path: Path) -> None:
    ledger = tmp_path / "contracts.jsonl"
    lines = [{"event": "created", "id": 1, "label": "a", "api_url": "http://x"},
             {"event": "created", "id": 2, "label": "b", "api_url": "http://x"},
             {"event": "created", "id": 3, "label": "c", "api_url": "http://other"},
             {"event": "destroyed", "id": 1, "api_url": "http://x"}]
    ledger.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"torn')
    assert [c["id"] for c in cli.open_contracts(ledger, "http://x")] == [2]
    assert [c["id"] for c in cli.open_contracts(ledger)] == [2, 3]
    assert cli.open_contracts(tmp_path / "missing") == []
    # Damaged lines (not UTF-8, a list, an id that is not a number) are skipped; the rest still counts.
    with open(ledger, "ab") as handle:
        handle.write(b'\n\xff\xfe{"event": "created"}\n[1, 2]\n{"event": "created", "id": "x"}\n'
                     b'{"event": "created", "id": 4, "label": "d", "api_url": "http://x"}\n')
    assert [c["id"] for c in cli.open_contracts(ledger, "http://x")] == [2, 4]
    from ansible_collections.mlops.vast.plugins.module_utils.local_state import ContractLedger

    assert [c["id"] for c in ContractLedger(str(ledger)).open_contracts("http://x")] == [2, 4]
    assert [c["id"] for c in cli.open_contracts(ledger, "http://x/")] == [2, 4]  # the same API
    # A ledger that cannot be read may hold what bills: said, not taken for an empty one.
    with pytest.raises(cli.InputError, match=f"cannot read the contract ledger {tmp_path}.*MLOPS_VAST_LEDGER"):
        cli.open_contracts(tmp_path)
    row = {"uptime_mins": 30, "dph_base": 0.4, "start_date": 1000.0, "storage_total_cost": 0.02, "dph_total": 0.42}
    assert cli.instance_spend(row, now=1000.0 + 3600) == (0.22, 0.42)
    assert cli.instance_spend({"uptime_mins": "x"}) == (None, None)


def test_plain_display_prints_phase_changes_and_warnings() -> None:
    out = io.StringIO()
    display = cli.Display("t", json_mode=False, console=Console(file=out, force_terminal=False, width=120))
    assert display.live_mode is False
    with display:
        display.on_event(ev.PhaseChanged(run="r", phase="renting", task="Rent"))
        display.on_event(ev.Progress(run="r", step=10, total=100, loss=0.5))
        display.on_event(ev.Spend(run="r", spent_usd=0.01, dph=0.2))
        display.on_event(ev.Warning(run="r", message="slow link"))
        display.on_event(ev.PhaseChanged(run="r", phase="setup", task="mlops.vast.setup : Validating arguments "
                                         "against arg spec 'main' - Code, uv and the project's environment"))
        display.on_event(ev.PhaseChanged(run="r", phase="smoke", task="mlops.vast.smoke_test : Run the smoke test"))
        display.on_event(ev.TrialStateChanged(run="q", trial="q", state="queued"))
        display.on_event(ev.PhaseChanged(run="q", phase="checking"))
        display.on_event(ev.TrialStateChanged(run="r", trial="r", state="done", outcome="completed"))
        display.on_event(ev.PhaseChanged(run="r", phase="done"))
    text = out.getvalue()
    assert "r: renting (Rent)" in text and "warning r: slow link" in text
    assert "r: setup\n" in text and "r: smoke (Run the smoke test)\n" in text
    assert "q: queued\n" in text and "q: checking" not in text
    assert text.count("r: done") == 1 and "r: done (completed)" in text
    assert display.rows["r"] == {"phase": "done", "step": 10, "total": 100, "loss": 0.5, "eta": None,
                                 "spent": 0.01, "dph": 0.2, "state": "done", "outcome": "completed"}
    table = io.StringIO()
    Console(file=table, width=160).print(display)
    assert "10/100" in table.getvalue() and "$0.200" in table.getvalue()


def test_plain_display_says_progress_now_and_then_and_a_reason_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe or a CI log gets step, loss, spend and ETA (the first step, then at most every PROGRESS_EVERY_S, and
    the last), and a failure's reason once, not again in the step that stops the run on it."""
    clock = [100.0]
    monkeypatch.setattr(cli, "_clock", lambda: clock[0])
    out = io.StringIO()
    display = cli.Display("t", json_mode=False, console=Console(file=out, force_terminal=False, width=200))
    display.on_event(ev.Spend(run="r", spent_usd=0.0125, dph=0.25))
    display.on_event(ev.Progress(run="r", step=10, total=400, loss=1.5, eta_s=90))
    clock[0] += 3
    display.on_event(ev.Progress(run="r", step=20, total=400, loss=1.25, eta_s=80))  # too soon: not said
    display.on_event(ev.Progress(run="other", step=5, total=50, loss=None))  # another run has its own pace
    clock[0] += cli.PROGRESS_EVERY_S
    display.on_event(ev.Progress(run="r", step=200, total=400, loss=0.75, eta_s=40))
    clock[0] += 1
    display.on_event(ev.Progress(run="r", step=400, total=400, loss=0.5, eta_s=0))  # the last step: said at once
    display.on_event(ev.Progress(run="r", step=400, total=400, loss=0.49))  # once: a total that undercounts,
    display.on_event(ev.Progress(run="r", step=410, total=400, loss=0.48))  # or a loss that moves, is paced again
    lines = [line for line in out.getvalue().splitlines() if line.startswith("r: step")]
    assert lines == ["r: step 10/400, loss 1.5, $0.0125 spent at $0.250/h, ETA 1m30s",
                     "r: step 200/400, loss 0.75, $0.0125 spent at $0.250/h, ETA 40s",
                     "r: step 400/400, loss 0.5, $0.0125 spent at $0.250/h"], out.getvalue()
    assert "other: step 5/50\n" in out.getvalue()

    reason = "no GPU on the market is called 'RTX 9999'; names on the market now: A40, RTX 4090"
    display.on_event(ev.Warning(run="r", message=reason))
    display.on_event(ev.Warning(run="r", message=f"Renting failed: {reason}. Rejected bef…"))
    display.on_event(ev.Warning(run="q", message=reason))  # another run's is its own
    display.on_event(ev.Warning(run="r", message="unreachable"))
    display.on_event(ev.Warning(run="r", message="unreachable host"))  # short texts: only equal ones are one
    clock[0] += cli.REPEAT_WINDOW_S + 1
    display.on_event(ev.Warning(run="r", message="unreachable host"))  # later, the same words: another event
    warned = [line for line in out.getvalue().splitlines() if line.startswith("warning")]
    assert warned == [f"warning r: {reason}", f"warning q: {reason}", "warning r: unreachable",
                      "warning r: unreachable host", "warning r: unreachable host"], warned


def test_the_final_sweep_table_says_the_budget_as_given(tmp_path: Path) -> None:
    from mlops_vast.api import SweepResult, _sweep_result

    def title(result: SweepResult) -> str:
        out = io.StringIO()
        display = cli.Display("t", json_mode=False, console=Console(file=out, force_terminal=False, width=200))
        cli._final_sweep_table(display, result)
        return out.getvalue().splitlines()[0]

    small = SweepResult(name="b3", outcome="failed", status="failed", rc=2, results_dir=tmp_path, spent_usd=0.0004,
                        budget_usd=0.002, message="0 of 2 trial(s) completed")
    assert "spent $0.0004 of $0.0020" in title(small)  # not "of $0.00"
    # A sweep that failed before it started (a bad key): no state of its own, the budget asked for is still said.
    watcher = SimpleNamespace(state={}, started=0.0, trials=list, read_state=lambda: None)
    early = _sweep_result("s", tmp_path, "failed", 1, False, watcher, tmp_path, 0.2)
    assert early.budget_usd == 0.2 and "of $0.2000" in title(early)
    assert "(no shared budget)" in title(_sweep_result("s", tmp_path, "failed", 1, False, watcher, tmp_path, 0.0))


def test_json_display_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    display = cli.Display("t", json_mode=True)
    display.on_event(ev.PhaseChanged(run="r", phase="renting"))
    display.on_event(ev.Warning(run="r", message="w"))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_status_fails_when_the_account_cannot_be_read(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """"Nothing billing" and "unknown" must differ for a script: an unreadable account is exit 1, with why."""
    monkeypatch.setenv("VAST_API_KEY", "k")
    monkeypatch.setenv("MLOPS_VAST_LEDGER", str(tmp_path / "contracts.jsonl"))
    assert cli.main(["status", "--api-url", "http://127.0.0.1:9"]) == 1  # nothing listens on the discard port
    assert "cannot connect" in capsys.readouterr().out
    assert cli.main(["status", "--json", "--api-url", "notaurl"]) == 2  # bad input, said before anything
    said = json.loads(capsys.readouterr().out)  # --json: JSON on stdout even then
    assert said["outcome"] == "error" and said["exit_code"] == 2 and "must start with http://" in said["error"]


def test_tables_are_not_cut_to_80_columns_in_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    display = cli.Display("t", json_mode=False)  # pytest's stdout is not a terminal
    assert display.console.width == 200
    monkeypatch.setenv("COLUMNS", "90")  # the user's word wins
    assert cli.Display("t", json_mode=False).console.width == 90


@pytest.mark.parametrize(("stdout", "stderr", "expected"), [
    ('TASK [x]\nfatal: [localhost]: FAILED! => {"changed": false, "msg": "cannot reach the Vast API", "kept": []}\n',
     "", "cannot reach the Vast API"),
    ("", "[ERROR]: Task failed: no offer fits\n", "[ERROR]: Task failed: no offer fits"),
    ('fatal: [localhost]: FAILED! => {"changed": false}\n', "", 'fatal: [localhost]: FAILED! => {"changed": false}'),
    ("", "", "ansible-playbook exited 2"),
])
def test_a_failed_playbook_is_said_in_one_line(stdout: str, stderr: str, expected: str) -> None:
    done = subprocess.CompletedProcess(["ansible-playbook"], 2, stdout, stderr)
    assert cli._why_failed(done) == expected


def test_a_cancelled_runs_final_table_keeps_what_the_live_table_last_showed(tmp_path: Path) -> None:
    from mlops_vast.api import RunResult

    out = io.StringIO()
    display = cli.Display("t", json_mode=False, console=Console(file=out, force_terminal=False, width=200))
    display.on_event(ev.Progress(run="r1", step=120, total=500, loss=0.25))
    display.on_event(ev.Spend(run="r1", spent_usd=0.0042, dph=0.2))
    result = RunResult(name="r1", outcome="cancelled", status="canceled", rc=None, results_dir=tmp_path,
                       message="cancelled; what it rented was torn down", watch_outcome=None, triage={},
                       checkpoints=[], cost_usd=None, attempts=1, artifacts_dir=tmp_path, teardown=None)
    cli._final_run_table(display, result)
    row = next(line for line in out.getvalue().splitlines() if "cancelled" in line and "│" in line)
    assert "120" in row and "0.25" in row and "$0.0042" in row, out.getvalue()


@pytest.mark.parametrize("given", ["run_name=123", "run_name=2024-01-01"])
def test_a_run_name_that_yaml_reads_as_a_number_or_a_date_is_its_text(given: str) -> None:
    # -e values are read as YAML; ansible-playbook -e would take the text, and the run was "missing" its name.
    from mlops_vast.inputs import check_run, collection_root

    data = {"run_command": "python3 train.py", **cli.extra_vars(["-e", given][1:])}
    assert check_run(data, collection_root(), "the run") == given.split("=", 1)[1]


def test_json_mode_messages_are_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.text import Text

    cli.Display("run", json_mode=True).say(Text.assemble(("Cancelling", "bold red"), " run x (SIGTERM) [x]"))
    assert capsys.readouterr().err == "Cancelling run x (SIGTERM) [x]\n"


def test_the_final_run_table_shows_a_loss_that_is_not_a_number() -> None:
    """A diverged run's triage holds the loss as the redaction wrote a NaN ("nan"): the table says it, not a
    ValueError in place of the result."""
    assert cli._loss("nan") == "nan" and cli._loss(float("inf")) == "inf"
    assert cli._loss(0.123456) == "0.1235" and cli._loss(None) == "-" and cli._loss("0.5") == "0.5"


def test_messages_and_names_are_shown_as_written_not_as_markup(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A trainer's line in a message ("[INST] hi [/INST]", a chat template's tokens) is text: rich's markup would
    lose the warning and end the final table with a MarkupError."""
    from mlops_vast.api import RunResult

    display = cli.Display("mlops-vast train [x]", json_mode=False)
    display.on_event(ev.Warning(run="r[1]", message="sample: [INST] hi [/INST] [bold]"))
    result = RunResult(name="r[1]", outcome="failed", status="failed", rc=2, results_dir=tmp_path,
                       message="crash: the last line was '[/INST]'", triage={"loss": "nan"})
    cli._final_run_table(display, result)
    out = capsys.readouterr().out
    assert "warning r[1]: sample: [INST] hi [/INST] [bold]" in out
    assert "crash: the last line was '[/INST]'" in out and "run r[1]: failed" in out and "nan" in out


@pytest.mark.parametrize("argv", [["status"], ["teardown", "--all"], ["reap", "--check"]])
def test_a_bad_api_url_is_bad_input_for_every_command(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert cli.main([*argv, "--api-url", "notaurl"]) == 2
    assert "the Vast API URL must start with http:// or https://, got 'notaurl' (--api-url)" in capsys.readouterr().err


def test_sweep_json_has_each_row_as_trials_json_does(tmp_path: Path) -> None:
    """--json's trials are trials.json's rows: every column flat, not the others nested under "extra"."""
    from mlops_vast.api import SweepResult, TrialRow

    row = {"id": "t1", "label": "s-t1", "params": {"lr": 0.1}, "outcome": "diverged", "final_loss": None,
           "best_loss": 0.2, "steps": 90, "cost_usd": 0.01, "attempts": 1, "hosts": [5], "duration_s": 12.0,
           "results_dir": str(tmp_path), "message": "the loss was nan", "label_extra": "x"}
    result = SweepResult(name="s", outcome="failed", status="failed", rc=2, results_dir=tmp_path,
                         trials=[TrialRow.from_dict(row)])
    plain = cli._plain(result)
    assert plain["trials"] == [row] and plain["results_dir"] == str(tmp_path)


def test_a_cwd_or_a_vastsim_folder_that_is_a_file_is_bad_input(tmp_path: Path) -> None:
    from mlops_vast import simulator
    from mlops_vast.inputs import InputError, load_vars

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="is not a directory"):
        load_vars({"run_name": "x"}, "run", a_file)
    with pytest.raises(InputError, match="is a file: vastsim keeps its state in that folder"):
        simulator.start(a_file)


def test_teardown_says_a_results_dir_without_run_json_first(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Before anything is asked of the ledger, the account or a simulator (none serves here)."""
    monkeypatch.chdir(tmp_path)
    for name in ("VAST_API_KEY", "VAST_API_KEY_FILE", "VAST_URL"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["teardown", "--label", "x", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no run.json" in err and "asking the account" not in err and "nothing to do" not in err


def test_run_estimate_is_checked_against_the_estimators_options_before_anything_starts() -> None:
    from mlops_vast.inputs import collection_root, value_problems

    root = collection_root()
    said = value_problems({"run_name": "e", "run_estimate": {"params": 1e9, "micro_bach_size": 2}}, root)
    assert any("run_estimate has no option(s) micro_bach_size (did you mean micro_batch_size?)" in s for s in said)
    said = value_problems({"run_name": "e", "run_estimate": {"params": 1e9, "method": "dora"}}, root)
    assert any("run_estimate: value of method must be one of: full, lora, qlora, got: dora" in s for s in said)
    assert value_problems({"run_name": "e", "run_estimate": {"params": "{{ n }}", "seq_len": 512}}, root) == []
    assert value_problems({"run_name": "e", "run_estimate": {"params": 1e9, "method": "lora"}}, root) == []
