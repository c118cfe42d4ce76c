"""mlops.vast.host_files on a real vastsim instance over SSH: directories and files put in one task, unchanged ones
not sent again, check mode and diff, clear errors, and no temporary file left on the host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sim, rent, running_sim, wait_status
from tests.integration.ansible_run import run_steps as run_module_steps
from tests.integration.test_sim_lifecycle import register_key
from tests.integration.test_watch import inventory, ssh, workspace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fsim(tmp_path_factory: pytest.TempPathFactory, ssh_key: Path) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("host-files-sim") / "state") as simulator:
        register_key(simulator, ssh_key)
        yield simulator


@pytest.fixture(scope="module")
def host(fsim: Sim) -> dict:
    with fsim.client() as client:
        return wait_status(client, rent(client, label="host-files"), "running")


def run_steps(tmp_path: Path, row: dict, key: Path, steps: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    return run_module_steps(tmp_path, "mlops.vast.host_files", steps, inventory(tmp_path, row, key), hosts="train")


def test_directories_and_files_in_one_task_and_a_rerun_sends_nothing(host: dict, ssh_key: Path,
                                                                      tmp_path: Path) -> None:
    base = f"{workspace(host, ssh_key)}/hf-{tmp_path.name}"
    local = tmp_path / "agent.py"
    local.write_text("print('agent')\n")
    args = {"directories": [{"path": f"{base}/out"}, {"path": f"{base}/.private", "mode": "0700"}],
            "files": [{"src": str(local), "dest": f"{base}/.private/agent.py"},
                      {"content": "#!/bin/bash\necho run\n", "dest": f"{base}/run.sh", "mode": "0755"},
                      {"content": {"step": 3, "loss": [0.5]}, "dest": f"{base}/out/record.json"}]}
    changed = {**args, "files": [*args["files"][:2], {"content": {"step": 4}, "dest": f"{base}/out/record.json"}]}
    results, output = run_steps(tmp_path, host, ssh_key, [
        {"args": args},
        {"args": args},
        {"args": changed, "check_mode": True, "diff": True},
        {"args": {"files": [{"content": "#!/bin/bash\necho run\n", "dest": f"{base}/run.sh", "mode": "0700"}]}},
    ])
    first, again, checked, moded = results
    assert not first.get("failed"), first
    assert set(first["changed_paths"]) == {f"{base}/out", f"{base}/.private", f"{base}/.private/agent.py",
                                           f"{base}/run.sh", f"{base}/out/record.json"}
    assert not again["changed"] and again["changed_paths"] == [], "a rerun must send and change nothing"
    assert checked["changed"] and checked["changed_paths"] == [f"{base}/out/record.json"]
    assert "record.json" in checked["diff"]["before"] and "record.json" in checked["diff"]["after"]
    assert moded["changed"] and moded["changed_paths"] == [f"{base}/run.sh"]
    listing = ssh(host, ssh_key, f"cd {base} && stat -c '%a %n' out .private .private/agent.py run.sh "
                                 "out/record.json && cat .private/agent.py out/record.json && "
                                 "find . -name '*.mlops-*'")
    assert "755 out\n700 .private\n644 .private/agent.py\n700 run.sh\n644 out/record.json\n" in listing
    assert "print('agent')" in listing
    record = json.loads(listing.split("print('agent')\n", 1)[1])
    assert record == {"loss": [0.5], "step": 3}, "check mode must not have written the new record"
    assert ".mlops-" not in listing, "no temporary file may be left on the host"
    assert "Traceback" not in output


def test_wrong_input_is_one_clear_message_and_nothing_is_left_half_done(host: dict, ssh_key: Path,
                                                                        tmp_path: Path) -> None:
    base = f"{workspace(host, ssh_key)}/hf-bad-{tmp_path.name}"
    ssh(host, ssh_key, f"mkdir -p {base} && echo keep > {base}/kept")
    results, output = run_steps(tmp_path, host, ssh_key, [
        {"args": {"files": [{"dest": f"{base}/a", "content": "x", "src": "/etc/hostname"}]}},
        {"args": {"files": [{"dest": f"{base}/a"}]}},
        {"args": {"files": [{"dest": f"{base}/a", "content": "x", "mode": "rwx"}]}},
        {"args": {"files": [{"dest": f"{base}/a", "src": "no-such-file.py"}]}},
        {"args": {"files": [{"dest": f"{base}/a/", "content": "x"}]}},
        {"args": {}},
        {"args": {"files": [{"dest": f"{base}/kept", "content": "new"},
                            {"dest": f"{base}/no/such/dir/b", "content": "x"}]}},
    ])
    expected = ["mutually exclusive", "one of the following is required", "mode must be an octal string",
                "no-such-file.py is not on the controller", "give the path of a file", "give at least one of",
                "could not send"]
    for result, words in zip(results, expected, strict=True):
        assert result["failed"], result
        assert words in result["msg"], (words, result["msg"])
    assert "Traceback" not in output
    left = ssh(host, ssh_key, f"cat {base}/kept; find {base} -name '*.mlops-*'")
    assert left == "keep\n", f"a failed task must leave the old file and no temporary one: {left!r}"


def test_links_setgid_parents_and_numeric_modes_read_as_right_and_a_directory_is_never_written_into(
        host: dict, ssh_key: Path, tmp_path: Path) -> None:
    base = f"{workspace(host, ssh_key)}/hf-edge-{tmp_path.name}"
    ssh(host, ssh_key, f"mkdir -p {base}/shared {base}/a-dir && chmod 2775 {base}/shared && "
                       f"printf 'x' > {base}/real && chmod 644 {base}/real && ln -s {base}/real {base}/link")
    files = [{"dest": f"{base}/link", "content": "x"}, {"dest": f"{base}/numeric", "content": "n", "mode": 420}]
    args = {"directories": [{"path": f"{base}/shared/sub"}], "files": files}
    results, output = run_steps(tmp_path, host, ssh_key, [
        {"args": args},
        {"args": args},
        {"args": {"files": [{"dest": f"{base}/a-dir", "content": "x"}]}},
        {"args": {"files": [{"dest": f"{base}/y", "src": str(tmp_path)}]}},
    ])
    first, again, into_dir, src_dir = results
    assert first["changed_paths"] == [f"{base}/shared/sub", f"{base}/numeric"], first
    assert not again["changed"], f"a link to the right file, a setgid parent's bit: all right already: {again}"
    assert into_dir["failed"] and "is not a regular file" in into_dir["msg"]
    assert src_dir["failed"] and "is not a file" in src_dir["msg"]
    assert "Traceback" not in output
    listing = ssh(host, ssh_key, f"cd {base} && stat -c '%a %n' numeric && ls -A a-dir && readlink link")
    assert listing == f"644 numeric\n{base}/real\n", "the unquoted 0644 (420) is 0644; nothing went into a-dir"


# mlops.vast.host_command shares this module's host: a command round trip with no Python started on the host.

def run_commands(tmp_path: Path, row: dict, key: Path, module: str, steps: list[dict[str, Any]],
                 python: str = "/usr/bin/python3") -> list[dict[str, Any]]:
    tmp_path.mkdir(exist_ok=True)
    path = inventory(tmp_path, row, key)
    path.write_text(path.read_text().replace("/usr/bin/python3", python))
    results, output = run_module_steps(tmp_path, module, steps, path, hosts="train")
    assert "Traceback" not in output
    return results


def test_host_command_returns_what_command_and_shell_return_and_starts_no_python_on_the_host(
        host: dict, ssh_key: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = f"{workspace(host, ssh_key)}/hc-{tmp_path.name}"
    ssh(host, ssh_key, f"mkdir -p '{base}/with space'")
    script = "set -o pipefail; echo \"out $GREETING\"; pwd; echo err >&2; false | true; exit 3"
    steps: list[dict[str, Any]] = [
        {"args": {"argv": ["sh", "-c", 'printf "%s|" "$@"; echo', "-", "a b", "$HOME", "it's"]}},
        {"args": {"cmd": script, "executable": "/bin/bash", "chdir": f"{base}/with space"},
         "environment": {"GREETING": "hello there"}},
        {"args": {"argv": ["true"]}, "check_mode": True},
    ]
    ours = run_commands(tmp_path, host, ssh_key, "mlops.vast.host_command", steps)
    # Short folders (mktemp): the SSH control socket lives below them.
    other = tmp_path_factory.mktemp("b")
    # ansible.builtin.command expands $VARS in argv unless told not to; host_command never does.
    builtin = run_commands(other, host, ssh_key, "ansible.builtin.command",
                           [{"args": {**steps[0]["args"], "expand_argument_vars": False}}])
    builtin += run_commands(other, host, ssh_key, "ansible.builtin.shell", steps[1:2])
    fields = ("rc", "stdout", "stdout_lines", "stderr", "stderr_lines", "failed")
    for mine, theirs in zip(ours, builtin, strict=False):
        assert {k: mine.get(k, False) for k in fields} == {k: theirs.get(k, False) for k in fields}, (mine, theirs)
    quoted, shell, checked = ours
    assert quoted["stdout"] == "a b|$HOME|it's|", "argv items reach the program unchanged, never expanded"
    assert shell["rc"] == 3 and shell["failed"] and shell["stdout_lines"] == ["out hello there", f"{base}/with space"]
    assert shell["stderr"] == "err" and "\r" not in shell["stdout"], "separate streams, plain line ends"
    assert checked.get("skipped") and not checked["changed"]
    # With no Python on the host a module cannot run; this action still does.
    without, = run_commands(tmp_path_factory.mktemp("n"), host, ssh_key, "mlops.vast.host_command",
                            [{"args": {"argv": ["echo", "no python needed"]}}], python="/nonexistent/python3")
    assert without["rc"] == 0 and without["stdout"] == "no python needed"
    bad, = run_commands(tmp_path_factory.mktemp("x"), host, ssh_key, "mlops.vast.host_command",
                        [{"args": {"argv": ["echo"], "cmd": "echo"}}])
    assert bad["failed"] and "mutually exclusive" in bad["msg"]
