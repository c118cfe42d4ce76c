"""Each role's Molecule scenario (molecule/<role>/), run as CI runs it: `molecule test -s <role>`.

Every scenario rents its instance from a private vastsim (molecule/_shared/create.yml) and destroys it and
the simulator at the end (molecule/_shared/destroy.yml). Molecule runs with a private HOME, so its
ephemeral directories, caches and SSH control sockets stay in a scratch directory; afterwards nothing of
it may be running and no network namespace of its simulators may remain.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mlops_vast.sim import harness
from tests.conftest import REPO, needs_root, selected_items

BIN = Path(sys.executable).parent
SCENARIOS = sorted(path.parent.name for path in (REPO / "molecule").glob("*/molecule.yml"))


def test_every_role_has_a_scenario_verified_with_testinfra() -> None:
    roles = sorted(path.name for path in (REPO / "roles").iterdir() if (path / "tasks" / "main.yml").exists())
    assert set(roles) <= set(SCENARIOS), f"roles without a molecule scenario: {set(roles) - set(SCENARIOS)}"
    for scenario in SCENARIOS:
        assert (REPO / "molecule" / scenario / "tests" / "test_default.py").exists()


def molecule_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAST_", "ANSIBLE_", "MLOPS_VAST_", "MOLECULE_", "XDG_"))}
    env.update({
        "HOME": str(home),
        "MOLECULE_GLOB": "molecule/*/molecule.yml",  # scenarios at the collection root, not extensions/molecule
        "PATH": f"{BIN}:{env.get('PATH', '')}",  # ansible-playbook, pytest, vastsim's python, uv
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
        "PY_COLORS": "0",
    })
    return env


def leftovers(home: Path) -> list[str]:
    """Processes of this run and what its simulators left; any simulator still up is stopped first."""
    found = []
    for state in home.glob(".ansible/tmp/molecule.*/vastsim/state"):
        sim = harness.find(state)
        if sim is not None:
            found.append(f"vastsim pid {sim.pid} still running ({state})")
            with contextlib.suppress(harness.SimError):
                harness.stop(sim)  # it stops its instances and removes their namespaces
        found += [item for items in harness.leftovers(state).values() for item in items]
    processes = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    found += [line.strip() for line in processes.splitlines() if str(home) in line and "ps -ww" not in line]
    return found


@dataclass
class ScenarioRun:
    done: subprocess.CompletedProcess
    seconds: float
    left: list[str]


def run_scenario(scenario: str) -> ScenarioRun:
    # Short on purpose: SSH control sockets live in $HOME/.ansible/cp (a socket path has at most 107 bytes).
    home = Path(tempfile.mkdtemp(prefix="molecule-", dir="/tmp"))
    started = time.monotonic()
    try:
        done = subprocess.run([str(BIN / "molecule"), "test", "-s", scenario], cwd=REPO, env=molecule_env(home),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=400)
    finally:
        seconds = time.monotonic() - started
        left = leftovers(home)  # also after a timeout: whatever is still up is stopped here
        shutil.rmtree(home, ignore_errors=True)
    return ScenarioRun(done, seconds, left)


# Scenarios at once. Each has its own HOME and its own vastsim; one keeps about one core busy (Ansible's controller),
# and one at a time left the second core of a 2-core CI machine mostly idle.
PARALLEL = 2


@pytest.fixture(scope="module")
def scenario_runs(request: pytest.FixtureRequest) -> Iterator[dict[str, concurrent.futures.Future]]:
    """The selected scenarios, started in the order their tests run (-k picks which)."""
    selected = [item.callspec.params["scenario"] for item in selected_items(request, "test_molecule_scenario")]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL)
    try:
        yield {scenario: pool.submit(run_scenario, scenario) for scenario in selected}
    finally:
        # After -x stopped the session early, scenarios not yet started are not started at all.
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@needs_root
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, scenario_runs: dict[str, concurrent.futures.Future]) -> None:
    config = yaml.safe_load((REPO / "molecule" / scenario / "molecule.yml").read_text())
    run = scenario_runs[scenario].result(timeout=1400)
    output = run.done.stdout + run.done.stderr
    assert run.done.returncode == 0, f"molecule test -s {scenario} failed after {run.seconds:.0f} s:\n{output[-8000:]}"
    for step in config["scenario"]["test_sequence"]:  # every step ran (none skipped or missing)
        assert re.search(rf"{scenario} (>|➜) {step}: Executed: Successful", output), f"{step}:\n{output[-3000:]}"
    assert not run.left, f"molecule test -s {scenario} left behind: {run.left}"
    print(f"molecule test -s {scenario}: {run.seconds:.1f} s")
