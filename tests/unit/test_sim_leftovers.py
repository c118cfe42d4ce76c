"""harness.leftovers (what ``vastsim stop`` and ``vastsim check-clean`` report): the process asking, and those it
runs under (a `timeout` wrapper, a shell), name the state directory too but are not left behind; any other
process naming it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlops_vast.sim import harness

ASK = "import json, sys; from pathlib import Path; from mlops_vast.sim import harness; " \
      "print(json.dumps(harness.leftovers(Path(sys.argv[1]))['processes']))"


def test_the_caller_and_its_wrappers_are_not_left_behind_but_a_stray_process_is(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(state)])
    try:
        deadline = time.monotonic() + 10
        while str(state) not in Path(f"/proc/{stray.pid}/cmdline").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the child has exec'd the command that names the state directory
        # As the QA tester ran it: under `timeout`, itself under a shell, both naming the state directory.
        asked = subprocess.run(["sh", "-c", f'timeout 60 "{sys.executable}" -c "$1" "{state}"; : {state}', "sh",
                                ASK], capture_output=True, text=True, timeout=60, check=True,
                               env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        listed = json.loads(asked.stdout)
        pids = [int(line.split()[0]) for line in listed]
        assert pids == [stray.pid], listed
    finally:
        stray.kill()
        stray.wait()


def test_ancestry_walks_up_to_init() -> None:
    chain = harness._ancestry(os.getpid())
    assert {os.getpid(), os.getppid(), 1} <= chain


def test_check_clean_takes_the_state_dir_as_start_and_stop_do(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mlops_vast.sim import cli as sim_cli

    state = tmp_path / "state"
    state.mkdir()
    # A process naming the state dir: left behind, as far as check-clean can tell.
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(state)])
    try:
        assert sim_cli.main(["check-clean", str(state)]) == 1
        assert sim_cli.main(["check-clean", "--state-dir", str(state)]) == 1
        assert f"time.sleep(60) {state}" in capsys.readouterr().err
    finally:
        stray.kill()
        stray.wait(timeout=10)
    assert sim_cli.main(["check-clean", "--state-dir", str(state)]) == 0
    with pytest.raises(SystemExit) as exit_info:
        sim_cli.main(["check-clean", str(state), "--state-dir", str(tmp_path / "other")])
    assert exit_info.value.code == 2
    assert "give the state directory once" in capsys.readouterr().err
