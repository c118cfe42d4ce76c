"""mlops.vast.local_command, through ansible-playbook: a program run on the controller from Ansible's worker (no
module run), with what ansible.builtin.command returns, for any host the task runs for."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.integration.ansible_run import local_inventory, run_steps

PY = sys.executable
# Prints to both streams, then exits with its first argument.
SCRIPT = "import sys; print('out 1'); print('out 2'); print('err', file=sys.stderr); sys.exit(int(sys.argv[1]))"
SAME_FIELDS = ("rc", "stdout", "stdout_lines", "stderr", "stderr_lines", "changed", "failed", "cmd")


def same_as_command(tmp_path: Path, argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same task with each module, each in its own playbook directory (tmp_path/ours, tmp_path/builtin)."""
    results = []
    for module, folder in (("mlops.vast.local_command", "ours"), ("ansible.builtin.command", "builtin")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (result,), _ = run_steps(tmp_path / folder, module, [{"args": {"argv": argv}}], local_inventory(tmp_path))
        results.append(result)
    return results[0], results[1]


def test_the_result_is_what_ansible_builtin_command_returns_for_success_and_failure(tmp_path: Path) -> None:
    for code in (0, 3):
        ours, builtin = same_as_command(tmp_path, [PY, "-c", SCRIPT, str(code)])
        assert {k: ours.get(k, False) for k in SAME_FIELDS} == {k: builtin.get(k, False) for k in SAME_FIELDS}
        assert ours["rc"] == code and ours["stdout_lines"] == ["out 1", "out 2"] and ours["stderr"] == "err"
        assert bool(ours.get("failed")) is (code != 0)
        assert ours["delta"].startswith("0:00:")
    # Relative paths mean the same: both run in the playbook's directory.
    ours, builtin = same_as_command(tmp_path, ["pwd"])
    assert (ours["stdout"], builtin["stdout"]) == (str(tmp_path / "ours"), str(tmp_path / "builtin"))


def test_failed_when_and_changed_when_judge_the_output_and_check_mode_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    results, _ = run_steps(tmp_path, "mlops.vast.local_command", [
        {"args": {"argv": [PY, "-c", SCRIPT, "24"]}, "failed_when": "step0.rc not in [0, 24]",
         "changed_when": "'out 2' in step0.stdout_lines"},
        {"args": {"argv": ["touch", str(marker)]}, "check_mode": True},
        {"args": {"argv": ["pwd"], "chdir": str(tmp_path)}},
        # As ansible.builtin.command: ~ and $VARS expanded in argv; the task's environment reaches the program.
        {"args": {"argv": ["sh", "-c", 'echo "$1 $GREETING"', "-", "~/results"]},
         "environment": {"GREETING": "hello"}},
        {"args": {"argv": ["echo", "~/results"], "expand_argument_vars": False}},
    ], local_inventory(tmp_path))
    tolerated, checked, where, expanded, literal = results
    assert expanded["stdout"] == f"{tmp_path / 'home'}/results hello"
    assert literal["stdout"] == "~/results"
    assert checked["stdout"] == "" and checked["stdout_lines"] == [], "check mode reads as no output, not undefined"
    assert not tolerated.get("failed") and tolerated["changed"] and tolerated["rc"] == 24
    assert checked.get("skipped") and not checked["changed"] and not marker.exists(), "check mode must run nothing"
    assert where["stdout"] == str(tmp_path)


def test_it_runs_on_the_controller_without_a_module_or_a_connection_to_the_host(tmp_path: Path) -> None:
    inventory = local_inventory(tmp_path)
    # A host nobody can reach, whose Python does not exist: a module run there, or one delegated with its
    # interpreter, would fail.
    inventory.write_text(inventory.read_text() + "far ansible_host=127.0.0.1 ansible_port=1 ansible_connection=ssh "
                         "ansible_python_interpreter=/nonexistent/python\n")
    results, _ = run_steps(tmp_path, "mlops.vast.local_command", [
        {"args": {"argv": ["sh", "-c", "echo $$ > " + str(tmp_path / "pid")]}},
        {"args": {"argv": ["/nonexistent/program", "--flag"]}},
        {"args": {"argv": []}},
    ], inventory, hosts="far")
    ran, missing, empty = results
    assert ran["rc"] == 0 and not ran.get("unreachable") and (tmp_path / "pid").read_text().strip().isdigit()
    assert missing["failed"] and missing["rc"] == 2 and "could not run /nonexistent/program" in missing["msg"]
    assert missing["stdout_lines"] == [] and missing["stderr"] == "", "empty output, so changed_when can read it"
    assert empty["failed"] and "argv is empty" in empty["msg"]
