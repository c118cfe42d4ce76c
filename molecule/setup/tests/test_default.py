"""mlops.vast.setup on a vastsim instance: the code is there as on the controller, uv runs, over SSH."""

import hashlib
import os
from pathlib import Path

CODE = "/workspace/run/code"
SOURCE = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / "examples" / "tiny_trainer"


def test_commands_come_in_over_ssh_to_the_instance(host):
    assert host.user().name == "root"
    port = host.backend.get_variables()["ansible_port"]
    assert host.check_output("echo $SSH_CONNECTION").split()[-1] == str(port)


def test_code_is_the_controllers(host):
    for name in ("train.py", "README.md"):
        remote = host.file(f"{CODE}/{name}")
        assert remote.is_file
        assert remote.sha256sum == hashlib.sha256((SOURCE / name).read_bytes()).hexdigest()


def test_excluded_files_are_not_copied(host):
    assert not host.file(f"{CODE}/__pycache__").exists
    assert host.check_output(f"find {CODE} -name '*.pyc' | wc -l") == "0"


def test_uv_is_present_and_runs(host):
    uv = host.file("/root/.local/bin/uv")
    assert uv.is_file and uv.mode & 0o111
    assert host.check_output("/root/.local/bin/uv --version").startswith("uv ")


def test_the_trainer_runs_there(host):
    out = host.check_output(f"cd {CODE} && python3 train.py --output_dir /tmp/verify --max_steps 20")
    assert "'train_loss'" in out.splitlines()[-1]
