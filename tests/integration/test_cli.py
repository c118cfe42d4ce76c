"""`mlops-vast` in a real pseudo-terminal against vastsim: the live table on the screen, Ctrl-C tearing down
what the run rented, a sweep with one line per trial (and mlops_vast.sweep() giving the rows of trials.json)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
import yaml

import mlops_vast
from mlops_vast.simulator import LocalSim
from tests.conftest import REPO, Sim, needs_root
from tests.integration.ansible_run import ansible_env, close_ssh_masters, ledger_open, run_task
from tests.integration.test_modules import IMAGE, good_query, open_instances

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


@pytest.mark.parametrize(("stop", "exit_status"), [("ctrl-c", 130), ("sigterm", 143), ("sighup", 129)])
def test_train_shows_the_live_table_and_ctrl_c_tears_down(sim: Sim, tmp_path: Path, stop: str,
                                                          exit_status: int) -> None:
    run = {**yaml.safe_load((REPO / "examples" / "run.yml").read_text()),
           **run_vars(sim, run_name="pty-cancel", run_command="python3 train.py --output_dir /workspace/run/output "
                      "--logging_steps 10 --save_steps 50 --max_steps 5000 --step_seconds 0.05")}
    (tmp_path / "run.yml").write_text(yaml.safe_dump(run))
    env = cli_env(sim, tmp_path)
    child = spawn(["train", "run.yml", "--api-url", sim.url], env, tmp_path)
    try:
        # The live table: the run's line says training, with a step (past the second checkpoint) and a loss.
        child.expect(r"pty-cancel\W+training\W+[1-9]\d\d+\W+\d", timeout=240)
        if stop == "ctrl-c":
            child.sendintr()
        elif stop == "sigterm":  # a service manager's stop, a CI job cancelled: only the CLI process gets it
            child.kill(signal.SIGTERM)
        else:  # the terminal closed: from then on the CLI writes to /dev/null, and must not die of it
            child.kill(signal.SIGHUP)
        if stop != "sighup":
            child.expect("Cancelling", timeout=30)
        child.expect(pexpect.EOF, timeout=240)
    finally:
        child.close(force=True)
        close_ssh_masters(env)
    screen = ANSI.sub("", child.before or "")
    assert child.exitstatus == exit_status, screen[-3000:]
    assert stop == "sighup" or "cancelled" in screen, screen[-3000:]
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0
    assert ledger_open(tmp_path) == []
    assert (tmp_path / "results" / "pty-cancel" / "teardown-pty-cancel.log").exists()
    # As the guard does after a Ctrl-C of train.yml: the run's files and newest sealed checkpoint came home first.
    record = json.loads((tmp_path / "results" / "pty-cancel" / "teardown.json").read_text())
    assert record["newest_checkpoint"] and int(record["newest_checkpoint"].rsplit("-", 1)[1]) >= 50, record
    assert (tmp_path / "results" / "pty-cancel" / "checkpoints" / record["newest_checkpoint"]).is_dir()
    assert (tmp_path / "results" / "pty-cancel" / "run.log").exists()


def test_a_killed_api_caller_leaves_the_teardown_to_the_playbooks_guard(sim: Sim, tmp_path: Path) -> None:
    """SIGKILL the process that called mlops_vast.train() while the run trains: nothing of that process can act,
    so the playbook it started must see its parent gone and tear down what it rented."""
    run = {**yaml.safe_load((REPO / "examples" / "run.yml").read_text()),
           **run_vars(sim, run_name="api-killed", run_command="python3 train.py --output_dir /workspace/run/output "
                      "--logging_steps 10 --save_steps 50 --max_steps 5000 --step_seconds 0.05")}
    (tmp_path / "run.yml").write_text(yaml.safe_dump(run))
    env = cli_env(sim, tmp_path)
    env["VAST_URL"] = sim.url
    env["TMPDIR"] = str(tmp_path / "tmp")  # where the API's key file is written, and must not be left
    (tmp_path / "tmp").mkdir()
    results = tmp_path / "results" / "api-killed"
    caller = subprocess.Popen([sys.executable, "-c", "import mlops_vast; mlops_vast.train('run.yml')"], cwd=tmp_path,
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and caller.poll() is None and _phase(results) != "training":
            time.sleep(0.5)
        assert _phase(results) == "training", f"the run never trained (caller exit {caller.poll()})"
        caller.kill()  # SIGKILL: no handler, no finally, no cancel
        caller.wait(timeout=10)
        # Done when the guard's teardown is: the account has nothing open (the destroy), then the local ledger
        # closes the contract and teardown.json is written (after the teardown has proven it gone).
        deadline = time.monotonic() + 180
        with sim.client() as client:
            def tearing_down() -> bool:
                return bool(client.get("/_sim/ledger").json()["totals"]["open_instances"] or ledger_open(tmp_path)
                            or not (results / "teardown.json").exists())

            while time.monotonic() < deadline and tearing_down():
                time.sleep(1)
            open_instances = client.get("/_sim/ledger").json()["totals"]["open_instances"]
        guard_log = results / "guard.log"
        assert open_instances == 0, guard_log.read_text()[-3000:] if guard_log.exists() else "no guard.log"
        assert ledger_open(tmp_path) == []
        assert json.loads((results / "teardown.json").read_text())["destroyed"], "the guard's teardown left no record"
        # The caller could not remove its key file: its janitor does, once the playbook that used it has ended.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and list((tmp_path / "tmp").glob("mlops-vast-*")):
            time.sleep(0.5)
        assert list((tmp_path / "tmp").glob("mlops-vast-*")) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(caller.pid, signal.SIGKILL)
        caller.wait(timeout=10)
        close_ssh_masters(env)
        # The orphaned playbook ends after its teardown; never leave one behind.
        _kill_playbooks_under(tmp_path)


def _phase(results: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((results / "progress.json").read_text()).get("phase")
    return None


def _kill_playbooks_under(directory: Path) -> None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(proc / "cwd").startswith(str(directory)) and \
                    b"ansible-playbook" in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)


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
    assert result.message == "2 of 2 trial(s) completed (2 from an earlier run)", result.message  # the playbook's
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0


def test_status_and_teardown_say_what_is_rented_and_what_they_destroyed(sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(sim, tmp_path)
    rented = run_task("mlops.vast.vast_instance", {"label": "cli-td", "query": good_query(sim), "image": IMAGE,
                                                   "disk": 12, "state": "present"}, env, tmp_path)
    assert rented["changed"] and not rented.get("failed"), rented
    instance_id = rented["instance"]["id"]
    cli = {**env, "COLUMNS": "200"}

    def mlops_vast(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, *argv, "--api-url", sim.url], env=cli, cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL)

    status = mlops_vast("status", "--json")
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert [c["id"] for c in summary["open_contracts"]] == [instance_id]
    assert [r["id"] for r in summary["instances"]] == [instance_id] and summary["billing_dph"] > 0

    unknown = mlops_vast("teardown", "--label", "no-such-label")
    assert unknown.returncode == 0 and "no open contract labelled 'no-such-label'" in unknown.stderr
    assert "the account says nothing labelled 'no-such-label' is billing" in unknown.stdout, unknown.stdout
    assert "TASK [" not in unknown.stdout + unknown.stderr, "the playbook's output goes to its log, not the terminal"
    assert "PLAY RECAP" in (tmp_path / "teardown.log").read_text()
    assert open_instances(sim) == [instance_id], "another label's teardown left this one alone"
    for empty in ("", "  "):  # not "no label", which would tear everything down
        refused = mlops_vast("teardown", "--label", empty)
        assert refused.returncode == 2 and "--label must not be empty" in refused.stderr, refused.stderr
    assert open_instances(sim) == [instance_id]

    try:
        done = mlops_vast("teardown", "--label", "cli-td", "--json")
    finally:
        close_ssh_masters(cli)
    assert done.returncode == 0, done.stdout[-3000:]
    record = json.loads(done.stdout)
    assert record["destroyed"] == [{"id": instance_id, "label": "cli-td"}] and record["still_open"] == []
    assert open_instances(sim) == [] and ledger_open(tmp_path) == []
    after = json.loads(mlops_vast("status", "--json").stdout)
    assert after["open_contracts"] == [] and after["instances"] == [] and after["billing_dph"] == 0
    # What it cost stays said after it is gone: the account's charges for the ledger's contract.
    with sim.client() as client:
        charged = sum(row["cost"] for row in client.get("/_sim/ledger").json()["rows"] if row["id"] == instance_id)
    assert after["cost"]["contracts"] == 1 and charged > 0, (after["cost"], charged)
    assert abs(after["cost"]["total_usd"] - charged) <= max(1e-5, 0.01 * charged), (after["cost"], charged)
    plain = mlops_vast("status")
    assert re.search(r"in the last 30 days \(1 contract\(s\) in the ledger\) cost \$\d", plain.stdout), plain.stdout


def test_estimate_without_offers_prices_none_and_exits_0(tmp_path: Path) -> None:
    """--offers 0 asks for the job alone: nothing priced is nothing refused (the help's exit code 0), not "no offer
    fits" from the skipped search's record."""
    env = {k: v for k, v in os.environ.items() if k not in ("VAST_API_KEY", "VAST_API_KEY_FILE", "VAST_URL")}
    done = subprocess.run([CLI, "estimate", str(REPO / "examples" / "run-estimate.yml"), "--offers", "0", "--json"],
                          env={**env, "HOME": str(tmp_path)}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["priced"] is None and result["job"]["steps"], result.get("priced")
    plain = subprocess.run([CLI, "estimate", str(REPO / "examples" / "run-estimate.yml"), "--offers", "0"],
                           env={**env, "HOME": str(tmp_path)}, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, stdin=subprocess.DEVNULL)
    assert plain.returncode == 0 and "no offers priced (--offers 0)" in plain.stdout, plain.stdout[-2000:]


def test_estimate_searches_the_offers_train_would_rent(sim: Sim, tmp_path: Path) -> None:
    """A run file without run_query is estimated on train.yml's default query (not the whole market), within its
    run_max_dph, without the machines earlier runs excluded: the offers train would rent, priced."""
    from ansible_collections.mlops.vast.plugins.module_utils.local_state import MachineExclusions

    run = yaml.safe_load((REPO / "examples" / "run-estimate.yml").read_text())
    assert "run_query" not in run  # the point of the test: the example leaves the query to train.yml's default
    (tmp_path / "run.yml").write_text(yaml.safe_dump({**run, "run_max_dph": 0.5}))
    env = cli_env(sim, tmp_path)

    def priced() -> dict:
        done = subprocess.run([CLI, "estimate", "run.yml", "--offers", "8", "--json", "--api-url", sim.url], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return json.loads(done.stdout)

    first = priced()
    default_query = yaml.safe_load((REPO / "playbooks" / "train.meta.yml").read_text())[
        "argument_specs"]["main"]["options"]["run_query"]["default"]
    assert first["job"]["query"].startswith(default_query), first["job"]["query"]
    offers = first["priced"]["offers"]
    assert offers and all(o["num_gpus"] == 1 and o["gpu_ram_gib"] >= 15.9 and o["dph_total"] <= 0.5 for o in offers), \
        [(o["gpu_name"], o["num_gpus"], o["gpu_ram_gib"], o["dph_total"]) for o in offers]
    excluded = offers[0]["machine_id"]
    MachineExclusions(env["MLOPS_VAST_EXCLUSIONS"]).update(excluded, present=True, reason="a test's bad host")
    assert excluded not in {o["machine_id"] for o in priced()["priced"]["offers"]}


def test_teardown_all_asks_the_account_even_with_an_empty_ledger(tmp_path: Path) -> None:
    """"Nothing left billing" is the account's word, not the ledger's: an API that cannot be reached fails the
    teardown, also when the ledger lists nothing (it said so, exit 0, without asking)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "ANSIBLE_", "MLOPS_VAST_"))}
    env.update({"HOME": str(tmp_path), "MLOPS_VAST_LEDGER": str(tmp_path / "contracts.jsonl"),
                "VAST_API_KEY": "k-0123456789abcdef0123"})
    done = subprocess.run([CLI, "teardown", "--all", "--api-url", "http://127.0.0.1:9"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the teardown failed: cannot reach the Vast API at http://127.0.0.1:9" in done.stderr, done.stderr[-2000:]
    assert str(tmp_path / "teardown.log") in done.stderr and "TASK [" not in done.stdout + done.stderr
    assert "the account says nothing" not in done.stdout
    assert "cannot reach the Vast API" in (tmp_path / "teardown.log").read_text()
