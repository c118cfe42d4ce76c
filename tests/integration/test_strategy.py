"""The opt-in strategy mlops.vast.linear: the tasks it runs in the controller process behave exactly as in
ansible.builtin.linear's workers (facts, registered results, loops, failures, rescue, no_log, includes, add_host,
group_by, delegated facts), and they really run there (no worker)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env

SECRET = "s3cr3t-value-never-shown"


GC_FROZEN_LOOKUP = """
import gc

from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return [gc.get_freeze_count()]
"""


def write_playbook(tmp_path: Path) -> Path:
    (tmp_path / "lookup_plugins").mkdir()
    (tmp_path / "lookup_plugins" / "gc_frozen.py").write_text(GC_FROZEN_LOOKUP)
    (tmp_path / "step.yml").write_text(yaml.safe_dump([
        {"name": "Count the step", "ansible.builtin.set_fact": {"steps": "{{ steps + [step * 10] }}"}},
        {"name": "Say the step", "ansible.builtin.debug": {"msg": "step {{ step }}"}},
    ]))
    plays = [
        {"name": "Controller-only tasks", "hosts": "localhost", "gather_facts": False,
         "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"}, "tasks": [
            {"name": "Where it runs", "ansible.builtin.set_fact": {
                "runner_pid": "{{ lookup('ansible.builtin.pipe', 'echo $PPID') | int }}", "steps": []}},
            {"name": "A fact from a loop, registered",
             "ansible.builtin.set_fact": {"squares": "{{ (squares | default([])) + [item * item] }}"},
             "loop": [1, 2, 3], "register": "loop_result"},
            {"name": "A failing assert whose error is ignored (templated)",
             "ansible.builtin.assert": {"that": ["squares | length == 99"], "fail_msg": "not 99"},
             "ignore_errors": "{{ true }}", "register": "assert_result"},
            {"name": "Skipped", "ansible.builtin.set_fact": {"never": True}, "when": "squares | length > 5"},
            {"name": "Skipped, of an action that needs a worker", "ansible.builtin.command": {"cmd": "false"},
             "when": f"lookup('ansible.builtin.pipe', 'echo $PPID >> {tmp_path}/skip_pids; echo') == 'never'",
             "register": "skip_result"},
            {"name": "Skipped, delegated", "ansible.builtin.command": {"cmd": "false"}, "delegate_to": "localhost",
             "when": f"lookup('ansible.builtin.pipe', 'echo $PPID >> {tmp_path}/delegated_pids; echo') == 'never'",
             "register": "delegated_result"},
            {"name": "Run after its conditional held", "ansible.builtin.command": {"cmd": "echo ran"},
             "when": f"lookup('ansible.builtin.pipe', 'echo $PPID >> {tmp_path}/run_pids; echo') != 'never'",
             "register": "run_result"},
            {"name": "What the collector sees frozen in a worker", "ansible.builtin.command": {
                "cmd": "echo {{ lookup('gc_frozen') }}"}, "register": "frozen_in_worker", "changed_when": False},
            {"name": "And in the process that runs set_fact",
             "ansible.builtin.set_fact": {"frozen_in_controller": "{{ lookup('gc_frozen') }}"}},
            {"name": "failed_when on debug", "ansible.builtin.debug": {"msg": "fine"},
             "failed_when": False, "changed_when": True, "register": "debug_result"},
            {"name": "A secret fact", "ansible.builtin.set_fact": {"hidden": SECRET}, "no_log": True},
            {"name": "A block that fails and is rescued", "block": [
                {"name": "Fail on purpose", "ansible.builtin.fail": {"msg": "on purpose"}},
                {"name": "Never reached", "ansible.builtin.set_fact": {"reached": True}},
            ], "rescue": [
                {"name": "Note the rescue",
                 "ansible.builtin.set_fact": {"rescued_from": "{{ ansible_failed_task.name }}: "
                                                              "{{ ansible_failed_result.msg }}"}},
            ]},
            {"name": "Include a file per step", "ansible.builtin.include_tasks": "step.yml",
             "loop": [1, 2], "loop_control": {"loop_var": "step"}},
            {"name": "Add a host", "ansible.builtin.add_host": {"name": "extra", "groups": ["added"],
                                                                 "ansible_connection": "local"}},
            {"name": "Group by a fact", "ansible.builtin.group_by": {"key": "size_{{ squares | length }}"}},
            {"name": "A fact for the other host", "ansible.builtin.set_fact": {"given": "by localhost"},
             "delegate_to": "extra", "delegate_facts": True},
        ]},
        {"name": "The added host", "hosts": "added", "gather_facts": False, "tasks": [
            {"name": "Keep what it was given", "ansible.builtin.set_fact": {"seen": "{{ given }}"}},
        ]},
        {"name": "Summary", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "Write it", "mlops.vast.local_file": {"dest": str(tmp_path / "summary.json"), "mode": "0644",
                                                           "content": "{{ summary | to_nice_json }}"},
             "vars": {"summary": {
                 "squares": "{{ squares }}", "loop_results": "{{ loop_result.results | length }}",
                 "assert_failed": "{{ assert_result.failed }}", "assert_msg": "{{ assert_result.msg }}",
                 "never": "{{ never | default('unset') }}", "debug_changed": "{{ debug_result.changed }}",
                 "hidden_kept": "{{ hidden == '" + SECRET + "' }}", "rescued_from": "{{ rescued_from }}",
                 "reached": "{{ reached | default(false) }}", "steps": "{{ steps }}",
                 "groups": "{{ groups | dict2items | selectattr('key', 'ne', 'all') | items2dict }}",
                 "extra_saw": "{{ hostvars.extra.seen }}", "runner_pid": "{{ runner_pid }}",
                 "skip_result": "{{ skip_result.skipped }}: {{ skip_result.false_condition is defined }}",
                 "run_result": "{{ run_result.stdout }} {{ run_result.changed }}",
                 "delegated_result": "{{ delegated_result.skipped }}",
                 "frozen_in_worker": "{{ frozen_in_worker.stdout | int }}",
                 "frozen_in_controller": "{{ frozen_in_controller | int }}"}}},
        ]},
    ]
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    return playbook


def run_with(strategy: str, tmp_path: Path) -> tuple[dict, int, str]:
    """The playbook's summary and recap, ansible-playbook's pid, and its output."""
    env = ansible_env(None, tmp_path, ANSIBLE_STRATEGY=strategy,
                      ANSIBLE_LOOKUP_PLUGINS=str(tmp_path / "lookup_plugins"))
    playbook = write_playbook(tmp_path)
    process = subprocess.Popen([str(ANSIBLE_BIN / "ansible-playbook"), str(playbook), "-i", "localhost,",
                                "-c", "local", "-v"], env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    recap = [" ".join(line.split()) for line in output.splitlines() if line.startswith(("localhost ", "extra "))]
    assert len(recap) == 2, output[-3000:]
    return {"summary": summary, "recap": recap, "folder": str(tmp_path)}, process.pid, output


def without_pid(result: dict) -> dict:
    """The results but where the tasks ran, which differs by design."""
    return {**result, "folder": None,
            "summary": {key: value for key, value in result["summary"].items()
                        if key not in ("runner_pid", "frozen_in_worker")}}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, int, str]]:
    return {strategy: run_with(strategy, tmp_path_factory.mktemp(strategy.replace(".", "-")))
            for strategy in ("ansible.builtin.linear", "mlops.vast.linear")}


def test_same_results_as_the_builtin_linear(both: dict[str, tuple[dict, int, str]]) -> None:
    builtin, ours = (both[strategy][0] for strategy in ("ansible.builtin.linear", "mlops.vast.linear"))
    assert without_pid(ours) == without_pid(builtin)
    summary = ours["summary"]
    assert summary["squares"] == [1, 4, 9] and summary["loop_results"] == 3
    assert summary["assert_failed"] is True and summary["assert_msg"] == "not 99"
    assert summary["never"] == "unset" and summary["debug_changed"] is True and summary["hidden_kept"] is True
    assert summary["rescued_from"] == "Fail on purpose: on purpose" and summary["reached"] is False
    assert summary["steps"] == [10, 20]
    assert summary["groups"]["added"] == ["extra"] and summary["groups"]["size_3"] == ["localhost"]
    assert summary["extra_saw"] == "by localhost"
    assert "ignored=1" in ours["recap"][1] and "rescued=1" in ours["recap"][1], ours["recap"]


def test_no_log_is_kept(both: dict[str, tuple[dict, int, str]]) -> None:
    for _result, _pid, output in both.values():
        assert SECRET not in output
        assert "the output has been hidden due to the fact that 'no_log: true'" in output


def test_they_run_in_the_controller_process(both: dict[str, tuple[dict, int, str]]) -> None:
    """A pipe lookup's shell has the process that ran the task as its parent: ansible-playbook itself with
    mlops.vast.linear, a forked worker with the builtin strategy."""
    for strategy, in_controller in (("mlops.vast.linear", True), ("ansible.builtin.linear", False)):
        result, pid, _output = both[strategy]
        assert (int(result["summary"]["runner_pid"]) == pid) is in_controller, (strategy, result, pid)


def test_skips_are_decided_in_the_controller_process(both: dict[str, tuple[dict, int, str]]) -> None:
    """A conditional task of an action that needs a worker: with mlops.vast.linear its false conditional is
    evaluated in ansible-playbook itself and no worker starts; a true one is evaluated there, then again in the
    worker that runs the task; a delegated one goes to a worker. The builtin strategy evaluates all in workers."""
    for strategy in ("mlops.vast.linear", "ansible.builtin.linear"):
        result, pid, _output = both[strategy]
        folder = Path(result["folder"])
        skip_pids = [int(line) for line in (folder / "skip_pids").read_text().split()]
        run_pids = [int(line) for line in (folder / "run_pids").read_text().split()]
        assert result["summary"]["skip_result"] == "True: True" and result["summary"]["run_result"] == "ran True"
        # delegate_to is templated before the conditional (the delegated host's variables gathered): a worker's job.
        delegated_pids = [int(line) for line in (folder / "delegated_pids").read_text().split()]
        assert result["summary"]["delegated_result"] is True
        assert len(delegated_pids) == 1 and delegated_pids[0] != pid, (strategy, delegated_pids, pid)
        if strategy == "mlops.vast.linear":
            assert skip_pids == [pid], (skip_pids, pid)
            assert len(run_pids) == 2 and run_pids[0] == pid and run_pids[1] != pid, (run_pids, pid)
        else:
            assert len(skip_pids) == 1 and skip_pids[0] != pid and len(run_pids) == 1 and run_pids[0] != pid


def test_workers_start_with_the_controller_objects_frozen(both: dict[str, tuple[dict, int, str]]) -> None:
    """Under mlops.vast.linear a worker freezes what it inherits as it starts (so its garbage collections do not
    walk and copy the controller's objects), and the controller's own objects are never frozen; the builtin
    strategy freezes nothing."""
    ours, builtin = (both[strategy][0]["summary"] for strategy in ("mlops.vast.linear", "ansible.builtin.linear"))
    assert ours["frozen_in_worker"] > 10_000, ours
    assert builtin["frozen_in_worker"] == 0 and ours["frozen_in_controller"] == builtin["frozen_in_controller"] == 0
