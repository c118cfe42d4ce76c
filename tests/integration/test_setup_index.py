"""A project with a real dependency (numpy) through train.yml on vastsim: from the package index the simulated
internet relays (pypi.vastsim), and from a wheelhouse the controller resolved and pushed (run_wheelhouse)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_vast.sim.index_relay import default_cache_dir
from tests.conftest import REPO, Sim, needs_root, running_sim
from tests.integration.ansible_run import ansible_env, failure_excerpt, local_inventory, run_playbook
from tests.integration.test_modules import good_query
from tests.integration.test_train import nothing_billing

pytestmark = [pytest.mark.slow, needs_root]

COMMAND = ("python3 numpy_train.py --output_dir /workspace/run/output --logging_steps 10 --save_steps 50 "
           "--max_steps 100 --step_seconds 0.01")
FROM_VENV = "from /workspace/run/code/.venv/lib/python"


@pytest.fixture(scope="module")
def index_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("index") / "state") as simulator:
        yield simulator


def numpy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(REPO / "tests" / "data" / "numpy_project", project)
    shutil.copy(REPO / "examples" / "tiny_trainer" / "train.py", project / "train.py")
    return project


def run_train(sim: Sim, tmp_path: Path, name: str, run: dict, **env_extra: str) -> subprocess.CompletedProcess:
    """train.yml on examples/run.yml with a short, fast run of the numpy project."""
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(key), MLOPS_VAST_EXCLUSIONS=str(tmp_path / "excl.json"),
                      **env_extra)
    return run_playbook("playbooks/train.yml", env, "-i", str(local_inventory(tmp_path)), "-e", "@examples/run.yml",
                        "-e", json.dumps({"run_name": name, "run_command": COMMAND,
                                          "run_code_src": str(numpy_project(tmp_path)),
                                          "run_query": good_query(sim, "reliability > 0.95 num_gpus=1"),
                                          "run_results_dir": str(tmp_path / "results"),
                                          "run_poll_interval_s": 1, "run_sync_interval_s": 2,
                                          "run_stall_timeout_s": 30, **run}), timeout=600)


def assert_trained_with_numpy(done: subprocess.CompletedProcess, tmp_path: Path, sim: Sim) -> str:
    assert done.returncode == 0, failure_excerpt(done.stdout) + done.stderr[-3000:]
    results = tmp_path / "results"
    assert json.loads((results / "watch.json").read_text())["outcome"] == "completed"
    log = (results / "run.log").read_text()
    line = next((line for line in log.splitlines() if line.startswith("numpy ")), "")
    assert FROM_VENV in line and line.endswith("checksum 45"), line or log[-2000:]
    assert (results / "checkpoints" / "checkpoint-100").is_dir()
    nothing_billing(sim, tmp_path)
    return done.stdout


def test_a_project_needing_numpy_installs_it_from_the_relayed_index(index_sim: Sim, tmp_path: Path) -> None:
    done = run_train(index_sim, tmp_path, "numpy-index", {})
    stdout = assert_trained_with_numpy(done, tmp_path, index_sim)
    assert "Install the project's dependencies (uv sync)" in stdout
    # The page the host's uv read came through the relay (cached on the controller, kept for the next run).
    cache = default_cache_dir()
    assert any((cache / "pages").glob("numpy.*")), list((cache / "pages").glob("*"))
    assert any(cache.glob("files/*/numpy-*.whl"))


def test_run_wheelhouse_installs_offline_from_wheels_the_controller_pushed(index_sim: Sim, tmp_path: Path) -> None:
    # The controller's wheel cache outlives the test's HOME: a rerun downloads nothing again.
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    done = run_train(index_sim, tmp_path, "numpy-wheels", {"run_wheelhouse": True}, XDG_CACHE_HOME=str(cache))
    stdout = assert_trained_with_numpy(done, tmp_path, index_sim)
    assert "Install the dependencies offline from the wheelhouse" in stdout
    wheels = list(cache.glob("mlops-vast/wheelhouse/project-cp*/numpy-*manylinux*.whl"))
    assert wheels, "no numpy wheel for the host's platform in the controller's wheelhouse"


@pytest.mark.parametrize("value", ["pypi.org/simple", "https://pypi.org/ simple", "ftp://mirror/simple"])
def test_a_wrong_run_index_url_fails_first_naming_it_and_rents_nothing(tmp_path: Path, value: str) -> None:
    env = ansible_env(None, tmp_path)
    done = run_playbook("playbooks/train.yml", env, "-e", "@examples/run.yml",
                        "-e", json.dumps({"run_index_url": value}), timeout=120)
    assert done.returncode == 2, done.stdout[-2000:]
    assert "run_index_url must be auto, an empty string" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert "ok=1 " in done.stdout  # the contract check only: nothing else ran, nothing was rented
    assert not (tmp_path / "contracts.jsonl").exists()


@pytest.mark.parametrize("value", ["https://user:tok3n-s3cret@pypi.example/simple",
                                   "http://__token__:tok3n-s3cret@127.0.0.1:3141/root/simple/",
                                   "https://tok3n-s3cret@pypi.example/simple"])
def test_credentials_in_run_index_url_are_refused_before_renting_and_never_echoed(tmp_path: Path, value: str) -> None:
    env = ansible_env(None, tmp_path)
    done = run_playbook("playbooks/train.yml", env, "-e", "@examples/run.yml",
                        "-e", json.dumps({"run_index_url": value}), timeout=120)
    assert done.returncode == 2, done.stdout[-2000:]
    assert "run_index_url must not carry credentials" in done.stdout, done.stdout[-2000:]
    assert "UV_INDEX_URL" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert "tok3n-s3cret" not in done.stdout + done.stderr  # the refusal does not print what it refuses
    assert "ok=1 " in done.stdout
    assert not (tmp_path / "contracts.jsonl").exists()


def test_code_from_a_git_repository_is_cloned_on_the_host(index_sim: Sim, tmp_path: Path) -> None:
    """run_git_repo instead of run_code_src: the host clones it (outside /tmp and /root, which an instance has
    private, so that the host sees the repository), and the run trains from that clone."""
    share = Path("/var/tmp") / f"mlops-vast-git-{os.getpid()}-{tmp_path.name}"
    try:
        repo = share / "repo"
        repo.mkdir(parents=True)
        shutil.copy(REPO / "examples" / "tiny_trainer" / "train.py", repo / "train.py")
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
        for argv in (["init", "-q"], ["add", "train.py"], ["commit", "-q", "-m", "tiny trainer"]):
            subprocess.run(git + argv, check=True, capture_output=True)
        done = run_train(index_sim, tmp_path, "from-git", {"run_code_src": "", "run_git_repo": f"file://{repo}",
                                                           "run_command": COMMAND.replace("numpy_train.py",
                                                                                          "train.py")})
        assert done.returncode == 0, failure_excerpt(done.stdout) + done.stderr[-3000:]
        assert "Clone the code with git" in done.stdout
        assert (tmp_path / "results" / "checkpoints" / "checkpoint-100").is_dir()
        nothing_billing(index_sim, tmp_path)
    finally:
        shutil.rmtree(share, ignore_errors=True)
