"""Run the collection's modules and playbooks for real (ansible-playbook in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, Sim

ANSIBLE_BIN = Path(sys.executable).parent


def ansible_env(sim: Sim | None, tmp_path: Path, *, api_key: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAST_", "ANSIBLE_", "MLOPS_VAST_"))}
    env.update({
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_NOCOLOR": "1",
        # On, whatever the caller's environment says: the tests fail on a deprecation of ours.
        "ANSIBLE_DEPRECATION_WARNINGS": "1",
        "MLOPS_VAST_LEDGER": str(tmp_path / "contracts.jsonl"),
        "HOME": str(tmp_path / "home"),
        "PATH": f"{ANSIBLE_BIN}:{env.get('PATH', '')}",
    })
    (tmp_path / "home").mkdir(exist_ok=True)
    if sim is not None:
        env["VAST_URL"] = sim.url
        key = sim.api_key if api_key is None else api_key
        if key:
            env["VAST_API_KEY"] = key
    env.update(extra)
    return env


def run_task(module: str, args: dict[str, Any], env: dict[str, str], tmp_path: Path, *, check: bool = False,
             diff: bool = False, timeout: float = 300) -> dict[str, Any]:
    """Run one module task on localhost; return its result dict (with ``failed`` when it failed)."""
    playbook = tmp_path / "task.yml"
    out = tmp_path / "task-result.json"
    out.unlink(missing_ok=True)
    playbook.write_text(yaml.safe_dump([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "task", module: args, "register": "out", "ignore_errors": True},
                  # Written even in check mode: the result is the test's evidence.
                  {"name": "keep", "ansible.builtin.copy": {"content": "{{ out | to_json }}", "dest": str(out)},
                   "check_mode": False}],
    }]))
    # An explicit localhost goes through interpreter discovery, which can find a broken pyenv shim.
    argv = [str(ANSIBLE_BIN / "ansible-playbook"), str(playbook), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}"]
    argv += ["--check"] if check else []
    argv += ["--diff"] if diff else []
    try:
        completed = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                   timeout=timeout, cwd=REPO)
    finally:
        close_ssh_masters(env)
    if not out.exists():
        raise AssertionError(f"ansible-playbook said: {completed.stdout[-3000:]} {completed.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_steps(tmp_path: Path, module: str, steps: list[dict[str, Any]], inventory: Path,
              hosts: str = "localhost") -> tuple[list[dict[str, Any]], str]:
    """One playbook, one ``module`` task per step (``args``, plus any task keyword such as check_mode or diff),
    every result kept in order; also what ansible-playbook printed."""
    out = tmp_path / "results.json"
    out.unlink(missing_ok=True)
    tasks = [{"name": f"step {index}", module: step["args"], "register": f"step{index}", "ignore_errors": True,
              **{k: v for k, v in step.items() if k != "args"}} for index, step in enumerate(steps)]
    keep = "[" + ", ".join(f"step{index}" for index in range(len(steps))) + "]"
    tasks.append({"name": "keep", "ansible.builtin.copy": {"content": "{{ " + keep + " | to_json }}", "dest": str(out)},
                  "delegate_to": "localhost", "check_mode": False})
    playbook = tmp_path / "steps.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": hosts, "gather_facts": False, "tasks": tasks}]))
    done = subprocess.run([str(ANSIBLE_BIN / "ansible-playbook"), str(playbook), "-i", str(inventory)],
                          env=ansible_env(None, tmp_path), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, cwd=REPO)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout + done.stderr


def local_inventory(tmp_path: Path) -> Path:
    """localhost as a local host, in an inventory file: `-c local` would also apply to delegated hosts."""
    path = tmp_path / "local.ini"
    path.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return path


def run_playbook(playbook: str, env: dict[str, str], *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = [str(ANSIBLE_BIN / "ansible-playbook"), playbook, *extra]
    try:
        done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)
    finally:
        close_ssh_masters(env)
    # The whole output stays next to the test's files: an assertion message only holds an excerpt.
    keep = os.environ.get("MLOPS_VAST_TEST_LOGS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        (Path(keep) / f"{Path(playbook).stem}-{os.getpid()}-{time.time_ns()}.log").write_text(done.stdout + done.stderr)
    return done


def failure_excerpt(stdout: str, limit: int = 6000) -> str:
    """The failed tasks and the recap of a playbook's output: where it went wrong, not just its tail."""
    lines = stdout.splitlines()
    picked: list[str] = []
    for index, line in enumerate(lines):
        if line.startswith(("fatal:", "failed:")) or "FAILED!" in line or "UNREACHABLE!" in line:
            start = max(0, index - 3)
            while start > 0 and not lines[start].startswith("TASK ["):
                start -= 1
            picked.extend(lines[start:index + 12])
            picked.append("...")
    recap = next((i for i, line in enumerate(lines) if line.startswith("PLAY RECAP")), None)
    if recap is not None:
        picked.extend(lines[recap:])
    excerpt = "\n".join(picked) if picked else stdout
    return excerpt[-limit:]


def close_ssh_masters(env: dict[str, str]) -> None:
    """End the ControlPersist masters the run left (ansible.cfg keeps them 60 s): a test leaves nothing."""
    control_dir = Path(env.get("HOME", "")) / ".ansible" / "cp"
    for socket_path in control_dir.glob("*") if control_dir.is_dir() else []:
        subprocess.run(["ssh", "-n", "-O", "exit", "-o", f"ControlPath={socket_path}", "vastsim-test"],
                       capture_output=True, timeout=30, check=False)


def ledger_open(tmp_path: Path) -> list[int]:
    """Contract ids the local ledger still holds (created, not destroyed)."""
    path = tmp_path / "contracts.jsonl"
    live: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["event"] == "created":
                live[record["id"]] = record
            else:
                live.pop(record["id"], None)
    return sorted(live)
