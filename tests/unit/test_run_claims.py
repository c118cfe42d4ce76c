"""Run names claimed by live ansible-playbook processes (plugins/module_utils/run_claims.py): a second run of a name
while the first goes on is refused; a claim lapses with its process, and a reused pid is no claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ansible_collections.mlops.vast.plugins.module_utils.run_claims import RunClaims, playbook_process, process_start

from tests.conftest import REPO


def test_a_name_held_by_a_live_process_is_refused_and_free_once_it_ends(tmp_path: Path) -> None:
    claims = RunClaims(str(tmp_path / "runs"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert claims.claim("exp", other.pid) is None
        held = claims.claim("exp", os.getpid())
        assert held is not None and held["pid"] == other.pid and held["name"] == "exp"
        assert claims.claim("exp", os.getpid(), write=False)["pid"] == other.pid  # check mode: refused all the same
        assert claims.claim("other-name", os.getpid()) is None  # names are independent
        assert claims.claim("exp", other.pid) is None  # the holder claims again (a recovery round): still its own
    finally:
        other.kill()
        other.wait()
    assert claims.holder("exp") is None  # its process is gone: the claim lapsed, nothing to release
    assert claims.claim("exp", os.getpid(), write=False) is None and claims.holder("exp") is None  # check mode: kept
    assert claims.claim("exp", os.getpid()) is None and claims.holder("exp")["pid"] == os.getpid()


def test_a_pid_reused_by_another_process_is_no_claim(tmp_path: Path) -> None:
    claims = RunClaims(str(tmp_path / "runs"))
    assert claims.claim("exp", os.getpid()) is None
    path = next((tmp_path / "runs").glob("*.json"))
    record = json.loads(path.read_text())
    assert record["started"] == process_start(os.getpid()) is not None
    path.write_text(json.dumps({**record, "started": record["started"] - 1}))  # the pid's process began later
    assert claims.holder("exp") is None
    assert claims.claim("exp", 1) is None  # so another may claim it


def test_the_claimant_is_the_ansible_playbook_above_its_worker_and_module_not_the_one_that_started_it(
        tmp_path: Path) -> None:
    # ansible-playbook forks its workers (same command line); a module runs in a Python of its own under one; a
    # sweep's worker starts each trial's ansible-playbook (another command line), whose claim must be its own.
    probe = (f"import sys; sys.path[:0] = [{str(REPO / '.collections')!r}]; "
             "from ansible_collections.mlops.vast.plugins.module_utils.run_claims import playbook_process; "
             "print(playbook_process())")
    script = tmp_path / "ansible-playbook"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, subprocess, sys
        print(sys.argv[1], os.getpid(), flush=True)
        child = os.fork()
        if child == 0:
            if sys.argv[1] == "sweep.yml":
                subprocess.run([sys.argv[0], "train.yml"])
            else:
                subprocess.run(["/bin/sh", "-c", sys.executable + " -c " + {probe!r}.replace('"', "'").join('""')])
            os._exit(0)
        os.waitpid(child, 0)
        """))
    script.chmod(0o755)
    lines = subprocess.run([str(script), "train.yml"], capture_output=True, text=True, timeout=60,
                           check=True).stdout.split()
    assert lines[0] == "train.yml" and lines[2] == lines[1], lines
    lines = subprocess.run([str(script), "sweep.yml"], capture_output=True, text=True, timeout=60,
                           check=True).stdout.split()
    assert lines[0] == "sweep.yml" and lines[2] == "train.yml" and lines[4] == lines[3] != lines[1], lines
    # Under no ansible-playbook at all, the process itself.
    assert playbook_process() == os.getpid()


def test_a_zombie_holds_no_claim(tmp_path: Path) -> None:
    claims = RunClaims(str(tmp_path / "runs"))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert claims.claim("exp", child.pid) is None and claims.holder("exp")["pid"] == child.pid
    for _attempt in range(500):  # it exits soon; not reaped (no wait() yet), it stays a zombie
        if process_start(child.pid) is None:
            break
        time.sleep(0.02)
    assert process_start(child.pid) is None and claims.holder("exp") is None
    assert claims.claim("other", child.pid) is None and claims.holder("other") is None  # a claim by a zombie: none
    child.wait()
