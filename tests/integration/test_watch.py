"""mlops.vast.watch for real: ansible-playbook watches a fake training job in tmux on a vastsim instance.

The job is written here, the way the train role starts a run: `run.sh` runs a small Python
trainer that prints Hugging Face Trainer-style lines into run.log and writes EXIT_CODE when it
ends, inside the tmux session `run_<name>`, with STATUS.md next to it. Each test watches one
such run to one outcome: completed, crash, stall, max_runtime, instance_gone (destroyed through
the API, or outbid), and completed again while every SSH session to the instance is being
killed for a few seconds mid-watch.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import API_KEY, IS_ROOT, REPO, SSH_OPTIONS, Sim, cheapest_good_offer, rent, running_sim, wait_status
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env
from tests.integration.test_sim_lifecycle import direct_endpoint, register_key

pytestmark = pytest.mark.slow

# Sparse enough to be real polling, short enough that each test takes seconds.
FAST = {"poll_interval": 0.5, "stall_timeout": 4, "api_poll_interval": 1, "reconnect_timeout": 30}
# With a keepalive, as ansible.cfg has: a poll in flight when its host is destroyed is abandoned by the watch, and
# its ssh, left waiting on a dead TCP connection, would otherwise outlive the test by TCP's ~15 min retry limit.
NO_CONTROL_MASTER = "-o ControlMaster=no -o ControlPath=none -o ServerAliveInterval=3 -o ServerAliveCountMax=2"

JOB = r'''
import sys, time

mode, steps, delay, at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
started = time.time()
print("loading the tiny model", flush=True)
for step in range(1, steps + 1):
    time.sleep(delay)
    loss = round(2.0 / step, 4)
    print({"loss": loss, "grad_norm": 1.25, "learning_rate": 0.001, "rewards/mean": round(0.1 * step, 2),
           "epoch": round(step / steps, 3), "step": step}, flush=True)
    if mode == "crash" and step == at:
        raise ValueError(f"loss is nan at step {step}")
    if mode == "hang" and step == at:
        time.sleep(3600)
runtime = round(time.time() - started, 3)
print({"train_runtime": runtime, "train_samples_per_second": 40.0, "train_steps_per_second": 10.0,
       "train_loss": 0.5, "epoch": 1.0}, flush=True)
'''

RUN_SH = r'''#!/bin/bash
# The train role's wrapper, in small: the log is appended, the exit code written when the command ends.
cd "$(dirname "$0")"
python3 -u job.py "$@" >> run.log 2>&1
echo $? > EXIT_CODE
'''


@pytest.fixture(scope="module")
def wsim(tmp_path_factory: pytest.TempPathFactory, ssh_key: Path) -> Iterator[Sim]:
    """One simulator for this file, with the test key on the account."""
    with running_sim(tmp_path_factory.mktemp("watch-sim") / "state") as simulator:
        register_key(simulator, ssh_key)
        yield simulator


@pytest.fixture(scope="module")
def host(wsim: Sim) -> dict:
    """One running instance shared by the tests that do not end it."""
    with wsim.client() as client:
        return wait_status(client, rent(client, label="watch"), "running")


def ssh(row: dict, key: Path, command: str, stdin: str | None = None, timeout: float = 30) -> str:
    address, port = direct_endpoint(row)
    # Its own stdin, never the suite's: an ssh killed at its timeout would leave that one non-blocking.
    feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    done = subprocess.run(["ssh", *SSH_OPTIONS, "-i", str(key), "-p", str(port), f"{user()}@{address}", command],
                          capture_output=True, text=True, timeout=timeout, **feed)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    return done.stdout


def user() -> str:
    # Namespace mode logs in as root, like Vast; loopback mode as the user running the tests.
    return "root" if IS_ROOT else getpass.getuser()


def workspace(row: dict, key: Path) -> str:
    return ssh(row, key, 'echo "${VASTSIM_WORKSPACE:-/workspace}"').strip()


def launch(row: dict, key: Path, name: str, mode: str, steps: int, delay: float, *, at: int = 5,
           max_runtime: int = 0) -> str:
    """Start the fake run `name` in tmux session run_<name>; return its directory on the host."""
    run_dir = f"{workspace(row, key)}/{name}"
    ssh(row, key, f"mkdir -p {run_dir} && cat > {run_dir}/job.py", stdin=JOB)
    ssh(row, key, f"cat > {run_dir}/run.sh && chmod +x {run_dir}/run.sh", stdin=RUN_SH)
    status = (f"# Run {name}\\n\\n- run id: {name}\\n- started_at: $(date -u +%Y-%m-%dT%H:%M:%SZ)\\n"
              f"- max runtime: {max_runtime} s\\n- tmux session: run_{name}\\n")
    ssh(row, key, f'printf "{status}" > {run_dir}/STATUS.md && '
                  f"tmux new-session -d -s run_{name} '{run_dir}/run.sh {mode} {steps} {delay} {at}'")
    return run_dir


def inventory(tmp_path: Path, row: dict, key: Path) -> Path:
    address, port = direct_endpoint(row)
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {
        "train": {
            "ansible_host": address,
            "ansible_port": port,
            "ansible_user": user(),
            "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "ansible_python_interpreter": "/usr/bin/python3",
        },
        "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
    }}}))
    return path


def start_watch(sim: Sim, tmp_path: Path, row: dict, key: Path, args: dict[str, Any], *extra: str,
                ssh_args: str | None = NO_CONTROL_MASTER, **env_extra: str) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "watch-result.json"
    out.unlink(missing_ok=True)
    playbook = tmp_path / "watch.yml"
    playbook.write_text(yaml.safe_dump([{
        "hosts": "train", "gather_facts": False,
        "tasks": [
            {"name": "watch", "mlops.vast.watch": args, "register": "out", "ignore_errors": True},
            {"name": "keep", "ansible.builtin.copy": {"content": "{{ out | to_json }}", "dest": str(out)},
             "delegate_to": "localhost", "check_mode": False},
        ],
    }]))
    env = ansible_env(sim, tmp_path, **({"ANSIBLE_SSH_ARGS": ssh_args} if ssh_args else {}), **env_extra)
    argv = [str(ANSIBLE_BIN / "ansible-playbook"), str(playbook), "-i", str(inventory(tmp_path, row, key)), *extra]
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO, start_new_session=True)
    return process, out


def finish_watch(process: subprocess.Popen[str], out: Path, timeout: float = 90) -> tuple[dict[str, Any], str]:
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, _ = process.communicate()
        raise AssertionError(f"the watch did not return within {timeout} s: {stdout[-3000:]}") from None
    if not out.exists():
        raise AssertionError(f"no result (rc {process.returncode}): {stdout[-4000:]}")
    return json.loads(out.read_text()), stdout


def watch(sim: Sim, tmp_path: Path, row: dict, key: Path, args: dict[str, Any], *extra: str,
          **kwargs: Any) -> tuple[dict[str, Any], str]:
    return finish_watch(*start_watch(sim, tmp_path, row, key, args, *extra, **kwargs))


def job_args(run_dir: str, name: str, **more: Any) -> dict[str, Any]:
    return {"run_dir": run_dir, "tmux_session": f"run_{name}", **FAST, **more}


def log_steps(row: dict, key: Path, run_dir: str) -> list[int]:
    text = ssh(row, key, f"cat {run_dir}/run.log")
    steps = []
    for line in text.splitlines():
        if line.startswith("{'loss'") or line.startswith('{"loss"'):
            steps.append(eval(line, {"__builtins__": {}}, {})["step"])
    return steps


def wait_for_a_step(progress: Path, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until a poll of the watch has seen the run at a step (its progress file says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            if (json.loads(progress.read_text()).get("step") or 0) > 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"no poll saw a step within {timeout} s (watch rc {process.poll()})")


# ----------------------------------------------------------------------------------------------------- tests


def test_completed_run_returns_the_summary_and_syncs_in_the_background(
        wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    # 6 s of run: room for the polls counted below even when ansible-playbook starts slowly on a loaded machine.
    run_dir = launch(host, ssh_key, "done", "complete", steps=20, delay=0.3)
    local = tmp_path / "pulled"
    address, port = direct_endpoint(host)
    # The checkpoint pull the train playbook runs: rsync over the host's own connection details.
    pull = (f"rsync -a -e 'ssh {' '.join(SSH_OPTIONS)} -i {ssh_key} -p {port}' "
            f"{user()}@{address}:{run_dir}/ {local}/")
    result, stdout = watch(wsim, tmp_path, host, ssh_key, job_args(
        run_dir, "done", instance_id=host["id"], sync_command=pull, sync_interval=1))
    assert result["outcome"] == "completed", result["msg"]
    assert not result.get("failed"), result
    triage = result["triage"]
    assert triage["completed"] is True and triage["summary"] is True and triage["traceback"] is False
    # The poll asks tmux first, then reads the exit code that the wrapper writes just before its session ends: a
    # poll between the two sees the session with its code written (a snapshot, and a true one), so either state.
    assert triage["exit_code"] == 0 and triage["tmux_alive"] in (False, True)
    assert (triage["step"], triage["loss"], triage["reward"], triage["epoch"]) == (20, 0.1, 2.0, 1.0)
    assert triage["summary_metrics"]["train_loss"] == 0.5 and triage["summary_metrics"]["train_runtime"] > 2
    assert triage["last_lines"][-1].startswith("{'train_runtime':")
    assert len(triage["last_lines"]) == 20
    assert triage["gpu_util"] == [0], "the simulator's nvidia-smi reports an idle GPU"
    assert result["polls"] >= 3 and result["reconnects"] == 0
    # Read incrementally, byte for byte: nothing skipped, nothing read twice.
    assert result["log"] == {"size": result["log"]["read"], "read": result["log"]["size"], "gaps": 0,
                             "truncations": 0, "traceback_count": 0}
    assert result["instance"]["actual_status"] == "running" and result["instance"]["gone"] is None
    assert result["run_elapsed_from"] == "STATUS.md"
    # The sync ran while the run went, and what it pulled is the run's directory.
    assert result["sync_count"] >= 1 and result["sync_failures"] == 0
    assert all(s["ok"] and s["rc"] == 0 and s["duration_s"] >= 0 for s in result["syncs"])
    assert (local / "run.sh").exists() and (local / "job.py").exists()
    # The key never shows: not in the result, not in what ansible-playbook printed.
    assert API_KEY not in json.dumps(result) and API_KEY not in stdout


def test_the_end_is_seen_by_a_poll_waiting_on_the_host_not_at_the_next_interval(
        wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    # Sparse polls (10 s) and a run of ~5 s: the first poll finds it going (ansible-playbook's start may take 2-3 s
    # on a loaded machine), the next one starts 2 s later (10 - 8) and waits on the host (end_wait 8 s), so the end
    # is reported a moment after it happens, before an interval.
    run_dir = launch(host, ssh_key, "soon", "complete", steps=10, delay=0.5)
    result, _ = watch(wsim, tmp_path, host, ssh_key, job_args(run_dir, "soon", poll_interval=10, end_wait=8))
    assert result["outcome"] == "completed", result["msg"]
    assert result["polls"] == 2, "one poll that found the run going, one that waited for its end"
    assert result["elapsed_s"] < 8, f"the end should be seen while the second poll waited: {result['elapsed_s']} s"


def test_crash_returns_the_traceback_and_a_failing_sync_is_only_reported(
        wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    run_dir = launch(host, ssh_key, "crash", "crash", steps=50, delay=0.2, at=25)
    result, _ = watch(wsim, tmp_path, host, ssh_key, job_args(
        run_dir, "crash", instance_id=host["id"], sync_command="echo cannot reach the host >&2; exit 3",
        sync_interval=0.5))
    assert result["outcome"] == "crash", result["msg"]
    assert result["failed"] is True, "crash is in fail_on by default"
    triage = result["triage"]
    assert triage["traceback"] is True and triage["completed"] is False and triage["summary"] is False
    assert triage["traceback_excerpt"].startswith("Traceback (most recent call last):")
    assert triage["traceback_excerpt"].splitlines()[-1] == "ValueError: loss is nan at step 25"
    assert triage["step"] == 25
    assert triage["exit_code"] in (1, None)  # the traceback may be seen before the exit code is written
    assert result["instance"]["gone"] is None
    # The sync failed every time it ran, and that was reported, not made the outcome.
    assert result["sync_count"] >= 1 and result["sync_failures"] == result["sync_count"]
    assert result["syncs"][0]["rc"] == 3 and "cannot reach the host" in result["syncs"][0]["output"]
    assert result["syncs"][0]["ok"] is False


def test_hang_returns_stall_within_the_stall_timeout_and_a_poll(
        wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    run_dir = launch(host, ssh_key, "hang", "hang", steps=50, delay=0.1)
    try:
        result, _ = watch(wsim, tmp_path, host, ssh_key, job_args(run_dir, "hang", fail_on=[]))
        assert result["outcome"] == "stall", result["msg"]
        assert not result.get("failed"), "fail_on: [] turns no outcome into a failure"
        assert result["triage"]["step"] == 5 and result["triage"]["tmux_alive"] is True
        assert result["triage"]["exit_code"] is None and result["triage"]["traceback"] is False
        # Steps stop at about 0.5 s into the job; stall_timeout 4 s; one poll 0.5 s (plus ssh round trips).
        assert FAST["stall_timeout"] <= result["idle_s"] <= FAST["stall_timeout"] + 2
        assert result["elapsed_s"] <= FAST["stall_timeout"] + 4
        assert "last step 5" in result["msg"]
    finally:
        ssh(host, ssh_key, "tmux kill-session -t run_hang || true")


def test_max_runtime_counts_from_status_md(wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    run_dir = launch(host, ssh_key, "long", "complete", steps=1000, delay=0.1, max_runtime=3)
    try:
        result, _ = watch(wsim, tmp_path, host, ssh_key, job_args(run_dir, "long", max_runtime=3))
        assert result["outcome"] == "max_runtime", result["msg"]
        assert result["failed"] is True
        assert result["run_elapsed_from"] == "STATUS.md"
        assert 3 <= result["run_elapsed_s"] <= 6
        assert result["triage"]["tmux_alive"] is True and result["triage"]["step"] >= 10
    finally:
        ssh(host, ssh_key, "tmux kill-session -t run_long || true")


def test_check_mode_returns_at_once(wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    result, _ = watch(wsim, tmp_path, host, ssh_key, job_args("/nonexistent", "none"), "--check")
    assert result.get("skipped") is True and result["outcome"] is None
    assert time.monotonic() - started < 20


def test_destroyed_instance_mid_watch_is_instance_gone(wsim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    with wsim.client() as client:
        row = wait_status(client, rent(client, label="watch-destroy"), "running")
    run_dir = launch(row, ssh_key, "gone", "complete", steps=1000, delay=0.1)
    progress = tmp_path / "progress.json"
    process, out = start_watch(wsim, tmp_path, row, ssh_key, job_args(run_dir, "gone", instance_id=row["id"],
                                                                      progress_file=str(progress)))
    try:
        wait_for_a_step(progress, process)
        with wsim.client() as client:
            assert client.request("DELETE", f"/api/v0/instances/{row['id']}/", json={}).json()["success"]
        destroyed = time.monotonic()
        result, _ = finish_watch(process, out)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert result["outcome"] == "instance_gone", result["msg"]
    assert result["instance"]["gone"].startswith("destroyed")
    assert "the instance is gone: destroyed" in result["msg"]
    assert time.monotonic() - destroyed < 15
    assert result["triage"]["step"] > 0 and result["polls"] >= 1


def test_outbid_instance_is_preempted(wsim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    with wsim.client() as client:
        offer = cheapest_good_offer(client, {"type": "bid"})
        bid = round(offer["min_bid"] * 1.5, 4)
        created = client.put(f"/api/v0/asks/{offer['id']}/", json={"client_id": "me", "image": "x", "disk": 10,
                                                                   "price": bid, "label": "watch-bid",
                                                                   "runtype": "ssh_direc ssh_proxy"}).json()
        row = wait_status(client, created["new_contract"], "running")
    run_dir = launch(row, ssh_key, "bid", "complete", steps=1000, delay=0.1)
    process, out = start_watch(wsim, tmp_path, row, ssh_key, job_args(run_dir, "bid", instance_id=row["id"]))
    try:
        time.sleep(3)
        with wsim.client() as client:
            armed = client.post("/_sim/faults", json={"kind": "outbid", "machine_id": offer["machine_id"],
                                                      "price": bid * 2})
            assert armed.status_code == 200, armed.text
        result, _ = finish_watch(process, out)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with wsim.client() as client:
            client.request("DELETE", f"/api/v0/instances/{row['id']}/", json={})
    assert result["outcome"] == "preempted", result["msg"]
    assert result["instance"]["intended_status"] == "running" and result["instance"]["cur_state"] == "stopped"
    assert "outbid" in result["instance"]["gone"]


def test_killed_ssh_sessions_are_reconnected_and_the_run_goes_on(
        wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    steps = 60
    run_dir = launch(host, ssh_key, "drop", "complete", steps=steps, delay=0.15)
    # The product's own SSH settings (ansible.cfg): ControlPersist on, the master under this test's HOME; but no
    # connection retries, which would absorb the drops below the watcher whose own reconnecting is tested here.
    process, out = start_watch(wsim, tmp_path, host, ssh_key, job_args(run_dir, "drop", instance_id=host["id"]),
                               ssh_args=None, ANSIBLE_SSH_RETRIES="0")
    # Every other SSH session on the instance, killed for 4 s ([s] keeps the pattern from matching this shell).
    killer = ("end=$(( $(date +%s) + 4 )); n=0; while [ $(date +%s) -lt $end ]; do "
              "for pid in $(pgrep -f '[s]shd: .*@'); do [ $pid != $PPID ] && kill $pid 2>/dev/null && n=$((n+1)); "
              "done; sleep 0.05; done; echo $n")
    try:
        time.sleep(2.5)
        killed = int(ssh(host, ssh_key, killer).split()[-1])
        result, _ = finish_watch(process, out)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        stop_control_masters(tmp_path)
    assert killed >= 1, "the killer found SSH sessions to kill"
    assert result["outcome"] == "completed", result["msg"]
    assert result["reconnects"] >= 1 and result["connection_failures"] >= 1, result
    # The run never noticed: every step is in its log, in order, and it exited 0 after the summary.
    assert log_steps(host, ssh_key, run_dir) == list(range(1, steps + 1))
    assert ssh(host, ssh_key, f"cat {run_dir}/EXIT_CODE").strip() == "0"
    assert result["triage"]["step"] == steps


def stop_control_masters(tmp_path: Path) -> None:
    """Kill, by pid, the ControlPersist masters ansible started with this test's HOME."""
    control_dir = str(tmp_path / "home" / ".ansible" / "cp")
    # -ww: without it ps cuts each line at 80 columns, and a long temporary path falls off the end.
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in listing.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if control_dir in args and "ps -ww" not in args:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGTERM)


def test_api_errors_do_not_stop_the_watch_but_a_wrong_key_fails_at_once(
        wsim: Sim, host: dict, ssh_key: Path, tmp_path: Path) -> None:
    run_dir = launch(host, ssh_key, "key", "complete", steps=5, delay=0.1)
    started = time.monotonic()
    result, stdout = watch(wsim, tmp_path, host, ssh_key, job_args(
        run_dir, "key", instance_id=host["id"], api_key="wrong-key-0123456789"))
    assert result["failed"] is True and result.get("outcome") is None
    assert "the Vast API refused" in result["msg"] and "401" in result["msg"]
    assert "wrong-key-0123456789" not in json.dumps(result) and "wrong-key-0123456789" not in stdout
    assert time.monotonic() - started < 20
