#!/usr/bin/env python3
"""Benchmark the two ways a project's dependencies reach a slow host: the package index through the host's own
link (vastsim's pypi.vastsim, relayed to the controller's index) and a wheelhouse the controller resolved,
downloaded and pushed (``setup_wheelhouse: true``).

Starts its own ``vastsim serve`` (with a private ``--index-cache``), rents one instance through the REST API,
puts a ``slow_link`` fault of ``--kbytes-per-s`` on it (tbf both ways on its veth: the relay's downloads and
rsync over SSH cross it alike) and runs the ``mlops.vast.setup`` role on it for the project in
tests/data/numpy_project (numpy from the index). Each path is run cold (the controller fetches: the relay's
cache or the wheelhouse empty), warm (the controller's caches full; only the host's link is left) and once more
as a rerun, which must change nothing. The host's environment, uv cache and wheelhouse are removed before every
run but the reruns. Prints the wall seconds of each run, the bytes that crossed the link (the veth's counters)
and the slowest tasks, and destroys the instance whatever happens.

    .venv/bin/python bench/setup_deps.py --kbytes-per-s 500 --json /tmp/setup_deps.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _sim import (
    BIN,
    REPO,
    BenchError,
    Deadline,
    Outcome,
    Sim,
    ansible_env,
    direct_endpoint,
    host_info,
    pick_offers,
    rent,
    say,
    start_sim,
    stop_and_check,
    wait_running,
    wait_ssh,
    write_results,
)
from train_overhead import CALLBACK_NAME, read_timer, write_callback

from mlops_vast.sim.hosts import state_tag

RESET = "rm -rf /workspace/run/code/.venv /workspace/run/wheelhouse /root/.cache/uv"
PLAYBOOK = """- name: Set up the project
  hosts: bench
  gather_facts: false
  roles:
    - role: mlops.vast.setup
      vars:
        setup_code_src: {src}
        setup_remote_dir: /workspace/run/code
        setup_env: {env}
        setup_wheelhouse: {wheelhouse}
        setup_wheelhouse_cache: {cache}
        setup_check_cuda: false
"""


def link_bytes(sim: Sim, instance_id: int) -> int:
    """Bytes through the controller side of the instance's veth so far, both ways (its counters)."""
    name = f"vs{state_tag(sim.state_dir)}h{str(instance_id)[-8:]}"  # host_namespace.veth_names
    out = subprocess.run(["ip", "-s", "-j", "link", "show", "dev", name], capture_output=True, text=True)
    if out.returncode != 0:
        return -1
    stats = json.loads(out.stdout)[0].get("stats64", {})
    return int(stats.get("rx", {}).get("bytes", 0)) + int(stats.get("tx", {}).get("bytes", 0))


def rent_slow(sim: Sim, key: Path, kbytes: float, deadline: Deadline) -> tuple[int, dict[str, Any]]:
    public = key.with_suffix(".pub").read_text().split()
    sim.call("POST", "/api/v0/ssh/", json={"ssh_key": " ".join(public[:2])})
    instance_id = rent(sim, pick_offers(sim, 1)[0], label="bench-deps")
    _, row = wait_running(sim, instance_id, deadline, timeout=120, poll=0.1)
    sim.call("POST", "/_sim/faults", json={"kind": "slow_link", "instance_id": instance_id, "kbytes_per_s": kbytes})
    host, port = direct_endpoint(row)
    user = sim.call("GET", "/_sim/info")["ssh_user"]
    wait_ssh(host, port, user, key, deadline, timeout=60, retry=0.2)
    return instance_id, {"host": host, "port": port, "user": user}


def setup_run(env: dict[str, str], root: Path, inventory: Path, endpoint: dict[str, Any], key: Path, tag: str,
              wheelhouse: bool, deadline: Deadline, sim: Sim, instance_id: int, deps: bool = True,
              reset: bool = True) -> dict[str, Any]:
    subprocess.run(["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                    "LogLevel=ERROR", "-i", str(key), "-p", str(endpoint["port"]),
                    f"{endpoint['user']}@{endpoint['host']}", RESET if reset else "true"], check=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    playbook = root / f"{tag}.yml"
    playbook.write_text(PLAYBOOK.format(src=json.dumps(str(root / "project")), wheelhouse=str(wheelhouse).lower(),
                                        env=str(deps).lower(), cache=json.dumps(str(root / "wheelhouse"))))
    before = link_bytes(sim, instance_id)
    timer = root / f"{tag}.jsonl"
    started = time.monotonic()
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)], cwd=REPO,
                          env={**env, "BENCH_TIMER_OUT": str(timer)},
                          capture_output=True, text=True, timeout=deadline.cap(900), stdin=subprocess.DEVNULL)
    wall = time.monotonic() - started
    (root / f"{tag}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise BenchError(f"{tag}: ansible-playbook exited {done.returncode}:\n{done.stdout[-2500:]}")
    moved = link_bytes(sim, instance_id) - before if before >= 0 else -1
    changed = re.search(r"changed=(\d+)", done.stdout)
    slowest = sorted(read_timer(timer)["tasks"], key=lambda task: -task["duration_s"])[:3]
    return {"path": "wheelhouse" if wheelhouse else "index", "tag": tag, "wall_s": round(wall, 1),
            "link_mb": round(moved / 1e6, 1) if moved >= 0 else None, "changed": int(changed[1]) if changed else None,
            "slowest_tasks": [(task["name"], round(task["duration_s"], 1)) for task in slowest]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kbytes-per-s", type=float, default=500, help="the slow link's rate (default 500 KB/s)")
    parser.add_argument("--deadline", type=float, default=1800, help="overall time limit in seconds")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.kbytes_per_s <= 0:
        parser.error("--kbytes-per-s must be positive, e.g. 500")
    deadline = Deadline(args.deadline)
    results: dict[str, Any] = {"host": host_info(), "kbytes_per_s": args.kbytes_per_s, "runs": [], "errors": []}
    outcome = Outcome(results, say)
    root = Path(tempfile.mkdtemp(prefix="bench-deps-"))
    sim: Sim | None = None
    instance_id: int | None = None
    try:
        with outcome.guard():
            shutil.copytree(REPO / "tests" / "data" / "numpy_project", root / "project")
            shutil.copy(REPO / "examples" / "tiny_trainer" / "train.py", root / "project" / "train.py")
            key = root / "key"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            # A private relay cache (the simulator's XDG_CACHE_HOME): the cold run really fetches from the index.
            os.environ["XDG_CACHE_HOME"] = str(root / "sim-cache")
            sim = start_sim(root, deadline, speed=1000)
            instance_id, endpoint = rent_slow(sim, key, args.kbytes_per_s, deadline)
            say(f"instance {instance_id} at {endpoint['host']}:{endpoint['port']}, link {args.kbytes_per_s:g} KB/s")
            inventory = root / "inventory.ini"
            inventory.write_text(f"bench ansible_host={endpoint['host']} ansible_port={endpoint['port']} "
                                 f"ansible_user={endpoint['user']} ansible_ssh_private_key_file={key} "
                                 "ansible_python_interpreter=/usr/bin/python3\n")
            write_callback(root)
            env = ansible_env(sim, root, ANSIBLE_CALLBACK_PLUGINS=str(root / "callback_plugins"),
                              ANSIBLE_CALLBACKS_ENABLED=CALLBACK_NAME)
            # uv itself (the controller's, ~40 MB) goes to the host once, before and outside the figures.
            row = setup_run(env, root, inventory, endpoint, key, "uv", False, deadline, sim, instance_id, deps=False)
            results["uv_push"] = row
            say(f"  uv pushed to the host (not counted below): {row['wall_s']:.1f} s, {row['link_mb']} MB")
            for tag, wheelhouse in (("index-cold", False), ("index-warm", False), ("index-rerun", False),
                                    ("wheelhouse-cold", True), ("wheelhouse-warm", True), ("wheelhouse-rerun", True)):
                # A rerun keeps the host as the run before left it: nothing to do, nothing changed.
                row = setup_run(env, root, inventory, endpoint, key, tag, wheelhouse, deadline, sim, instance_id,
                                reset=not tag.endswith("rerun"))
                if tag.endswith("rerun") and row["changed"] != 0:
                    raise BenchError(f"{tag}: the rerun reported changed={row['changed']} (expected 0)")
                results["runs"].append(row)
                say(f"  {tag:16} {row['wall_s']:7.1f} s   {row['link_mb']:6} MB across the link   "
                    f"changed={row['changed']}   slowest: "
                    + ", ".join(f"{name} {seconds}s" for name, seconds in row["slowest_tasks"]))
    finally:
        if sim is not None:
            if instance_id is not None:
                with contextlib.suppress(Exception):
                    sim.call("DELETE", f"/api/v0/instances/{instance_id}/")
            stop_and_check(sim, results, say, links=True)
        shutil.rmtree(root, ignore_errors=True)
    write_results(args.json, results, say)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
