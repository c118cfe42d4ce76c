"""`mlops-vast` in a real pseudo-terminal against vastsim: the live table on the screen, Ctrl-C tearing down
what the run rented, a sweep with one line per trial (and mlops_vast.sweep() giving the rows of trials.json)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pexpect
import pytest
import yaml

import mlops_vast
from mlops_vast.simulator import LocalSim
from tests.conftest import REPO, Sim, needs_root
from tests.integration.ansible_run import close_ssh_masters, ledger_open
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root]

CLI = str(Path(sys.executable).parent / "mlops-vast")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli_env(sim: Sim, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "ANSIBLE_", "MLOPS_VAST_"))}
    (tmp_path / "home").mkdir(exist_ok=True)
    env.update({"HOME": str(tmp_path / "home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
                "MLOPS_VAST_LEDGER": str(tmp_path / "contracts.jsonl"),
                "MLOPS_VAST_EXCLUSIONS": str(tmp_path / "excluded.json"),
                "VAST_API_KEY": sim.api_key, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"})
    return env


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> pexpect.spawn:
    child = pexpect.spawn(CLI, args, env=env, cwd=str(cwd), dimensions=(40, 160), encoding="utf-8",
                          codec_errors="replace", timeout=240)
    child.logfile_read = open(cwd / "screen.log", "w")  # noqa: SIM115 - the whole screen, kept with the test's files
    return child


def run_vars(sim: Sim, **extra: object) -> dict[str, object]:
    return {"run_code_src": str(REPO / "examples" / "tiny_trainer"),
            "run_query": good_query(sim, "reliability > 0.95 num_gpus=1"), "run_interruptible": False,
            "run_poll_interval_s": 1, "run_sync_interval_s": 2, "run_stall_timeout_s": 30, **extra}


def test_train_shows_the_live_table_and_ctrl_c_tears_down(sim: Sim, tmp_path: Path) -> None:
    run = {**yaml.safe_load((REPO / "examples" / "run.yml").read_text()),
           **run_vars(sim, run_name="pty-cancel", run_command="python3 train.py --output_dir /workspace/run/output "
                      "--logging_steps 10 --save_steps 50 --max_steps 5000 --step_seconds 0.05")}
    (tmp_path / "run.yml").write_text(yaml.safe_dump(run))
    env = cli_env(sim, tmp_path)
    child = spawn(["train", "run.yml", "--api-url", sim.url], env, tmp_path)
    try:
        # The live table: the run's line says training, with a step and a loss.
        child.expect(r"pty-cancel\W+training\W+\d+\W+\d", timeout=240)
        child.sendintr()
        child.expect("Cancelling", timeout=30)
        child.expect(pexpect.EOF, timeout=240)
    finally:
        child.close(force=True)
        close_ssh_masters(env)
    screen = ANSI.sub("", child.before or "")
    assert child.exitstatus == 130, screen[-3000:]
    assert "cancelled" in screen, screen[-3000:]
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
    assert ledger_open(tmp_path) == []
    assert (tmp_path / "results" / "pty-cancel" / "teardown-pty-cancel.log").exists()


def test_sweep_shows_one_line_per_trial_and_the_api_gives_the_rows_of_trials_json(sim: Sim, tmp_path: Path) -> None:
    sweep = {**yaml.safe_load((REPO / "examples" / "sweep.yml").read_text()), **run_vars(sim),
             "sweep_name": "pty-sweep", "sweep_grid": {}, "sweep_max_parallel": 2,
             "sweep_trials": [{"learning_rate": 0.1}, {"learning_rate": 0.05}],
             "sweep_trial_vars": {"provision_probe_max_seconds": 1}}
    (tmp_path / "sweep.yml").write_text(yaml.safe_dump(sweep))
    env = cli_env(sim, tmp_path)
    child = spawn(["sweep", "sweep.yml", "--api-url", sim.url], env, tmp_path)
    try:
        # Both trials on screen at once, one line each, while they run.
        seen: set[str] = set()
        while len(seen) < 2:
            child.expect(r"(pty-sweep-t[0-9a-f]{6})\W+(renting|setup|smoke|launching|training)", timeout=240)
            seen.add(child.match.group(1))
        child.expect(pexpect.EOF, timeout=300)
    finally:
        child.close(force=True)
        close_ssh_masters(env)
    screen = ANSI.sub("", child.before or "")
    assert child.exitstatus == 0, screen[-3000:]
    assert re.search(r"sweep pty-sweep: completed", screen), screen[-3000:]
    rows = json.loads((tmp_path / "results" / "pty-sweep" / "trials.json").read_text())
    assert [row["outcome"] for row in rows] == ["completed", "completed"]

    # The same sweep through the API: a re-run, which skips what completed, and returns trials.json's rows.
    api_env = {k: env[k] for k in ("HOME", "ANSIBLE_LOCAL_TEMP", "MLOPS_VAST_LEDGER", "MLOPS_VAST_EXCLUSIONS")}
    try:
        result = mlops_vast.sweep(tmp_path / "sweep.yml", cwd=tmp_path, env=api_env,
                                  sim=LocalSim(url=sim.url, api_key=sim.api_key, workdir=tmp_path, started=False))
    finally:
        close_ssh_masters(env)
    again = json.loads((tmp_path / "results" / "pty-sweep" / "trials.json").read_text())
    assert [row.as_dict() for row in result.trials] == again
    assert [row["id"] for row in again] == [row["id"] for row in rows] and result.outcome == "completed"
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
