"""mlops_vast.train() end to end against vastsim (real HTTP, real sshd hosts), through ansible-runner: typed results
and events, and no API key anywhere in the private data dir or the results. (mlops_vast.sweep() end to end:
tests/integration/test_cli.py, after the same sweep in a terminal.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import mlops_vast
from mlops_vast import _keys
from mlops_vast.simulator import LocalSim
from tests.conftest import Sim, needs_root
from tests.integration.ansible_run import close_ssh_masters, ledger_open
from tests.integration.secret_scan import files_holding
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow, needs_root]

COMMAND = ("python3 train.py --output_dir /workspace/run/output --logging_steps 10 --save_steps 50 "
           "--max_steps 200 --step_seconds 0.02")


def api_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    return {"HOME": str(tmp_path / "home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
            "MLOPS_VAST_LEDGER": str(tmp_path / "contracts.jsonl"),
            "MLOPS_VAST_EXCLUSIONS": str(tmp_path / "excluded.json")}


def local_sim(sim: Sim, tmp_path: Path) -> LocalSim:
    return LocalSim(url=sim.url, api_key=sim.api_key, workdir=tmp_path, started=False)


def fast_run(sim: Sim, name: str) -> dict[str, object]:
    return {"run_name": name, "run_command": COMMAND, "run_query": good_query(sim, "reliability > 0.95 num_gpus=1"),
            "run_poll_interval_s": 1, "run_sync_interval_s": 2, "run_stall_timeout_s": 20}


def test_train_returns_a_typed_result_with_events_and_no_key_in_the_artifacts(sim: Sim, tmp_path: Path) -> None:
    seen: list[mlops_vast.Event] = []
    env = api_env(tmp_path)
    token = f"hf_{os.urandom(12).hex()}"  # a run_env token: on the host, and nowhere on the controller's disk
    run = {**fast_run(sim, "api-e2e"), "run_env": {"HF_TOKEN": token},
           "run_command": f'echo token of $(printf %s "$HF_TOKEN" | wc -c) characters && {COMMAND}'}
    try:
        result = mlops_vast.train("examples/run.yml", extra_vars=run, on_event=seen.append,
                                  sim=local_sim(sim, tmp_path), cwd=tmp_path, env=env)
    finally:
        close_ssh_masters(env)
    assert result.outcome == "completed", (result.message, result.status)
    assert result.status == "successful" and result.rc == 0 and result.watch_outcome == "completed"
    assert result.results_dir == tmp_path / "results" / "api-e2e"
    assert [p.name for p in result.checkpoints] == ["checkpoint-100", "checkpoint-150", "checkpoint-200"]
    assert all((p / "model.json").exists() for p in result.checkpoints)
    assert result.triage["step"] == 200 and result.cost_usd and result.cost_usd > 0 and result.attempts == 1
    assert result.teardown and result.teardown["checkpoints_verified"] is True

    phases = [e.phase for e in seen if isinstance(e, mlops_vast.PhaseChanged)]
    assert phases[0] == "checking" and phases[-1] == "done", phases
    order = ["renting", "setup", "smoke", "launching", "training", "teardown"]
    assert [p for p in phases if p in order] == order, phases
    steps = [e.step for e in seen if isinstance(e, mlops_vast.Progress)]
    assert steps and steps == sorted(steps) and steps[-1] == 200, steps
    # No run_estimate: step/max and the ETA come from the command's --max_steps.
    totals = {e.total for e in seen if isinstance(e, mlops_vast.Progress)}
    assert totals == {200}, totals
    assert any(isinstance(e, mlops_vast.Spend) and e.spent_usd and e.dph for e in seen)
    assert isinstance(seen[-1], mlops_vast.Finished) and seen[-1].outcome == "completed"

    # The key: nowhere in the private data dir (under the results), the results, or the recorded environment.
    assert _keys.files_containing(tmp_path / "results", sim.api_key) == []
    # Nor URL-encoded or in base64, anywhere the run wrote (the runner's artifacts, stdout and job events
    # included), in the ledger and its leases, or in HOME; only the simulator's own state dir holds it.
    for place in [p for p in tmp_path.iterdir() if p.name != "state"]:
        assert files_holding(place, [sim.api_key]) == [], place
        # Nor the run's token (ansible-runner's fact cache in the artifacts kept it once), which the trainer had.
        assert files_holding(place, [token]) == [], place
    assert f"token of {len(token)} characters" in (result.results_dir / "run.log").read_text()
    command = json.loads(next((result.artifacts_dir).glob("command")).read_text())
    assert "VAST_API_KEY" not in command["env"] and not Path(command["env"]["VAST_API_KEY_FILE"]).exists()
    assert (result.results_dir / "runner" / "artifacts").is_dir()
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
    assert ledger_open(tmp_path) == []


def test_whatever_ends_the_wait_tears_down_before_it_is_raised(sim: Sim, tmp_path: Path) -> None:
    """A SystemExit from the caller's own SIGTERM handler (here from a cancel callable) must not leave the run
    billing: the playbook is stopped, the teardown runs with the key still there, then the exit goes on."""
    training: list[bool] = []

    def on_event(event: mlops_vast.Event) -> None:
        if isinstance(event, mlops_vast.PhaseChanged) and event.phase == "training":
            training.append(True)

    def cancel() -> bool:
        if training:
            raise SystemExit(7)
        return False

    run = {**fast_run(sim, "api-exit"), "run_command": COMMAND.replace("--max_steps 200", "--max_steps 100000")}
    env = api_env(tmp_path)
    try:
        with pytest.raises(SystemExit) as raised:
            mlops_vast.train("examples/run.yml", extra_vars=run, on_event=on_event, cancel=cancel,
                             sim=local_sim(sim, tmp_path), cwd=tmp_path, env=env)
    finally:
        close_ssh_masters(env)
    assert raised.value.code == 7 and training
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
    assert ledger_open(tmp_path) == []
    assert "failed=0" in (tmp_path / "results" / "api-exit" / "teardown-api-exit.log").read_text()


def test_an_on_event_that_raises_keyboardinterrupt_gets_it_once_and_the_run_is_torn_down(sim: Sim,
                                                                                          tmp_path: Path) -> None:
    """The callback raising KeyboardInterrupt is one interruption: the event is not delivered again (which raised
    again, counted as a second Ctrl-C, and killed the playbook with its instance billing)."""
    training: list[str | None] = []

    def on_event(event: mlops_vast.Event) -> None:
        if isinstance(event, mlops_vast.PhaseChanged) and event.phase == "training":
            training.append(event.previous)
            raise KeyboardInterrupt

    run = {**fast_run(sim, "api-ki"), "run_command": COMMAND.replace("--max_steps 200", "--max_steps 100000")}
    env = api_env(tmp_path)
    try:
        with pytest.raises(KeyboardInterrupt):
            mlops_vast.train("examples/run.yml", extra_vars=run, on_event=on_event, sim=local_sim(sim, tmp_path),
                             cwd=tmp_path, env=env)
    finally:
        close_ssh_masters(env)
    assert training == ["launching"], training
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
    assert ledger_open(tmp_path) == []
    assert "failed=0" in (tmp_path / "results" / "api-ki" / "teardown-api-ki.log").read_text()


def test_ctrl_c_while_it_waits_tears_down_with_the_checkpoints_then_raises(sim: Sim, tmp_path: Path) -> None:
    """A Ctrl-C lands where the wait spends its time (between polls): the run is still stopped and torn down, its
    newest sealed checkpoint brought home, before the KeyboardInterrupt goes on; nothing is left billing."""
    steps: list[int] = []

    def on_event(event: mlops_vast.Event) -> None:
        if isinstance(event, mlops_vast.Progress) and event.step:
            steps.append(event.step)

    def interrupt_once_past_two_checkpoints() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and max(steps, default=0) < 110:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C: to the main thread, wherever it is

    run = {**fast_run(sim, "api-sigint"), "run_command": COMMAND.replace("--max_steps 200", "--max_steps 100000")}
    env = api_env(tmp_path)
    # A suite started in the background (`cmd &` without job control) inherits SIGINT ignored, and Python keeps it
    # so: a terminal's Ctrl-C reaches a Python whose SIGINT raises KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=interrupt_once_past_two_checkpoints, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mlops_vast.train("examples/run.yml", extra_vars=run, on_event=on_event, sim=local_sim(sim, tmp_path),
                             cwd=tmp_path, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
        close_ssh_masters(env)
    assert max(steps) >= 110
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
    assert ledger_open(tmp_path) == []
    record = json.loads((tmp_path / "results" / "api-sigint" / "teardown.json").read_text())
    assert record["newest_checkpoint"] and int(record["newest_checkpoint"].rsplit("-", 1)[1]) >= 100, record
    assert "failed=0" in (tmp_path / "results" / "api-sigint" / "teardown-api-sigint.log").read_text()


def test_a_second_ctrl_c_during_a_sweep_leaves_its_teardowns_the_key(sim: Sim, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Ctrl-Cs a second apart: the sweep's playbook is killed, but the trials' teardowns (and the guards of
    trials whose parent is gone) go on in sessions of their own with the key file, which must outlive them, then go."""
    import yaml

    keys = tmp_path / "keys"
    keys.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(keys))  # where this call's key file lands
    sweep = {**yaml.safe_load(Path("examples/sweep.yml").read_text()), **fast_run(sim, "unused"),
             "sweep_name": "api-2xc", "sweep_grid": {}, "sweep_trials": [{"seed": 1}, {"seed": 2}],
             "sweep_max_parallel": 2, "sweep_budget_usd": 0, "sweep_trial_vars": {"provision_probe_max_seconds": 1},
             "sweep_results_dir": str(tmp_path / "results"),
             "run_command": COMMAND.replace("--max_steps 200", "--max_steps 100000")}
    del sweep["run_name"]
    steps: dict[str, int] = {}
    warnings: list[str] = []

    def on_event(event: mlops_vast.Event) -> None:
        if isinstance(event, mlops_vast.Progress) and event.step:
            steps[event.run] = event.step
        if isinstance(event, mlops_vast.Warning):
            warnings.append(event.message)

    def ctrl_c_twice() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (len(steps) < 2 or min(steps.values()) < 60):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.5)
        os.kill(os.getpid(), signal.SIGINT)

    env = api_env(tmp_path)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=ctrl_c_twice, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mlops_vast.sweep(sweep, on_event=on_event, sim=local_sim(sim, tmp_path), cwd=tmp_path, env=env)
        assert len(steps) == 2 and min(steps.values()) >= 60, steps
        assert any(w.startswith("interrupted twice: left at once") and "mlops-vast teardown --all" in w
                   for w in warnings), warnings
        # What the killed playbook left running tears down by itself, with the key it was started with.
        deadline = time.monotonic() + 240
        open_now = None
        while time.monotonic() < deadline:
            with sim.client() as client:
                open_now = [r for r in client.get("/_sim/ledger").json()["rows"]
                            if r["label"].startswith("api-2xc-") and r["destroyed_at"] is None]
            if not open_now:
                break
            time.sleep(2)
        assert not open_now, f"still billing: {open_now}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and list(keys.glob("mlops-vast-key-*")):
            time.sleep(1)
        assert not list(keys.glob("mlops-vast-key-*")), "the key file outlived what used it"
    finally:
        signal.signal(signal.SIGINT, previous)
        close_ssh_masters(env)
