"""roles/train/templates/run.sh.j2, rendered as Ansible renders it and run by bash: the training command is parsed
by the shell once, as written (the smoke test runs it the same way), so a value quoted in it reaches the trainer
as it is, and the resume argument's checkpoint path is one word whatever it holds."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from tests.conftest import REPO

TEMPLATE = REPO / "roles" / "train" / "templates" / "run.sh.j2"
# Prints its arguments as JSON: what the trainer was given.
ECHO_ARGS = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(\"ARGV\", json.dumps(sys.argv[1:]))'"
# Stands in for the checkpoint agent: `newest` names the checkpoint to resume from, `run` returns at once.
AGENT = """import sys
if sys.argv[1] == "newest":
    print(open(sys.argv[0] + ".newest").read().strip())
"""


def render(run_dir: Path, command: str, resume_arg: str) -> str:
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined)  # Ansible's template defaults
    env.filters["quote"] = lambda value: shlex.quote(str(value))
    env.filters["ternary"] = lambda value, yes, no: yes if value else no
    return env.from_string(TEMPLATE.read_text()).render(
        ansible_managed="test", train_run_id="r1", train_attempt=2, train_upload_grant="", train_env={},
        train_remote_dir=str(run_dir), train_code_dir=str(run_dir), train_output_dir=str(run_dir / "output"),
        train_command=command, train_resume_arg=resume_arg, train_checkpoint_glob="checkpoint-*",
        train_checkpoint_seal="marker", train_checkpoint_marker="DONE", train_checkpoint_stable_s=1,
        train_max_runtime_s=60)


def run(tmp_path: Path, command: str, resume_arg: str = "", newest: str = "") -> list[list[str]]:
    (tmp_path / ".mlops").mkdir(exist_ok=True)
    (tmp_path / ".mlops" / "checkpoint_agent.py").write_text(AGENT)
    (tmp_path / ".mlops" / "checkpoint_agent.py.newest").write_text(newest)
    script = tmp_path / "run.sh"
    script.write_text(render(tmp_path, command, resume_arg))
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/home-of-the-host"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "EXIT_CODE").read_text().strip() == "0", (tmp_path / "run.log").read_text()
    assert (tmp_path / "TRAINER_PID").read_text().strip().isdigit()  # what a teardown stops the run by
    log = (tmp_path / "run.log").read_text()
    return [json.loads(line.split(" ", 1)[1]) for line in log.splitlines() if line.startswith("ARGV ")]


@pytest.mark.parametrize("value", ["hello world 'q' \"dq\" $HOME `id` \\n", "$(touch pwned)", "a;b && c | d"])
def test_a_quoted_value_reaches_the_trainer_as_written(tmp_path: Path, value: str) -> None:
    assert run(tmp_path, f"{ECHO_ARGS} --note {shlex.quote(value)} --lr 0.1") == [["--note", value, "--lr", "0.1"]]
    assert not (tmp_path / "pwned").exists()


def test_the_command_is_still_shell_text_parsed_once(tmp_path: Path) -> None:
    # Written unquoted, $HOME is the host's (one expansion, by the shell that runs the command), and && chains.
    assert run(tmp_path, f"{ECHO_ARGS} --data $HOME/d && {ECHO_ARGS} second") == [["--data", "/home-of-the-host/d"],
                                                                                   ["second"]]


def test_the_resume_argument_names_the_newest_checkpoint_as_one_word(tmp_path: Path) -> None:
    newest = str(tmp_path / "output" / "checkpoint 40 $x")
    argv = run(tmp_path, f"{ECHO_ARGS} --lr 0.1", "--resume_from_checkpoint {checkpoint} --tag 'a b'", newest)
    assert argv == [["--lr", "0.1", "--resume_from_checkpoint", newest, "--tag", "a b"]]
    assert "resuming from" in (tmp_path / "run.log").read_text()


def test_without_a_checkpoint_nothing_is_appended(tmp_path: Path) -> None:
    assert run(tmp_path, f"{ECHO_ARGS} --lr 0.1", "--resume_from_checkpoint {checkpoint}") == [["--lr", "0.1"]]
