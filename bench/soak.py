#!/usr/bin/env python3
"""Soak: rent -> SSH -> destroy, N times through ``mlops.vast.vast_instance`` in one ansible-playbook, with faults
mixed in; no leak, and the memory of the simulator and of the controller flat.

    .venv/bin/python bench/soak.py --cycles 200

Starts its own simulator (namespace hosts as root, loopback otherwise), then one ``ansible-playbook`` whose loop
runs each cycle: ``vast_instance state=running`` (rent the cheapest good offer and wait for SSH), a command on the
instance over SSH (``delegate_to``, Ansible really connecting), ``vast_instance state=absent`` (destroy, proven
gone). Every ``--fault-every`` cycles a fault is armed just before the cycle, in turn: a 429 storm on every
endpoint, a create answered 503 after it was carried out (the module must adopt, not rent twice), a host that
fails to start (the module destroys it; the cycle is counted as refused), a 503 on the destroy. Meanwhile the
resident memory (RSS) of the simulator process and of the ansible-playbook process is sampled every second.

Prints cycles done and refused, seconds per cycle, leaks (open instances in vastsim's ledger, in the account's
list and in the local ledger at the end), and RSS at the start, middle and end of the soak with the growth from
the first to the last quarter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from _sim import (
    BIN,
    REPO,
    BenchError,
    Deadline,
    Outcome,
    ansible_env,
    host_info,
    say,
    start_sim,
    stop_and_check,
    write_results,
)

FAULTS = (
    {"kind": "http", "endpoint": "* /api/*", "status": 429, "retry_after": 0.2, "count": 4},
    {"kind": "http", "endpoint": "PUT /api/v0/asks/*", "status": 503, "after": True, "count": 1},
    {"kind": "host_error", "next": True, "count": 1},
    {"kind": "http", "endpoint": "DELETE /api/v0/instances/*", "status": 503, "count": 1},
)


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cycle_tasks(query: str, key: Path, marks: Path) -> list[dict[str, Any]]:
    """One cycle (``cycle`` is the loop index): rent, SSH, destroy; each outcome appended to ``marks``."""
    return [
        {"name": "Arm this cycle's fault", "ansible.builtin.uri": {
            "url": "{{ lookup('ansible.builtin.env', 'VAST_URL') }}/_sim/faults", "method": "POST",
            "body_format": "json", "body": "{{ soak_faults[(cycle // soak_every) % soak_faults | length] }}",
            "headers": {"Authorization": "Bearer {{ lookup('ansible.builtin.env', 'VAST_API_KEY') }}"}},
         "no_log": True, "when": "cycle % soak_every == soak_every - 1"},
        {"name": "Rent", "mlops.vast.vast_instance": {
            "label": "soak-{{ cycle }}", "query": query, "image": "pytorch/pytorch", "disk": 10, "state": "running",
            "wait_timeout": 120}, "register": "soak_rent", "ignore_errors": True},
        {"name": "Reach it over SSH", "ansible.builtin.raw": "true", "changed_when": False,
         "delegate_to": "{{ soak_rent.instance.ssh_host }}", "register": "soak_ssh", "ignore_errors": True,
         "when": "not soak_rent.failed",
         # Templated for the delegated host, where only hostvars name what localhost registered.
         "vars": {"ansible_port": "{{ hostvars.localhost.soak_rent.instance.ssh_port }}", "ansible_user": "root",
                  "ansible_ssh_private_key_file": str(key), "ansible_connection": "ssh"}},
        {"name": "Destroy", "mlops.vast.vast_instance": {"label": "soak-{{ cycle }}", "state": "absent"},
         "register": "soak_destroy", "retries": 3, "until": "not soak_destroy.failed"},
        {"name": "Mark", "ansible.builtin.lineinfile": {
            "path": str(marks), "create": True, "mode": "0600",
            "line": "{{ {'cycle': cycle, 'rented': not soak_rent.failed,"
                    " 'ssh': soak_ssh is not skipped and soak_ssh is succeeded,"
                    " 'msg': soak_rent.msg | default(''), 't': now().timestamp()} | to_json }}"}},
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="rent -> SSH -> destroy cycles (default 200)")
    parser.add_argument("--fault-every", type=int, default=5, help="arm a fault before every Nth cycle (default 5)")
    parser.add_argument("--speed", type=float, default=100.0, help="vastsim --speed (default 100)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=3600.0, help="overall limit in seconds (default 3600)")
    args = parser.parse_args(argv)
    if args.cycles < 4 or args.fault_every < 1:
        parser.error("--cycles must be at least 4 and --fault-every at least 1")
    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-soak-"))
    results: dict[str, Any] = {"params": {k: v for k, v in vars(args).items() if k != "json"},
                               "host": host_info(euid=os.geteuid()), "errors": []}
    outcome = Outcome(results, say)
    sim = None
    try:
        with outcome.guard():
            sim = start_sim(root, deadline, speed=args.speed, credit=1_000_000)
            key = root / "id_ed25519"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
            sim.call("POST", "/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text().strip()})
            bad = [m["machine_id"] for m in sim.call("GET", "/_sim/machines")["machines"] if m["defects"]]
            query = f"num_gpus=1 machine_id notin [{','.join(map(str, bad))}]"
            marks = root / "cycles.jsonl"
            playbook = root / "soak.yml"
            playbook.write_text(yaml.safe_dump([{
                "name": "Soak", "hosts": "localhost", "gather_facts": False,
                "vars": {"soak_faults": list(FAULTS), "soak_every": args.fault_every},
                "tasks": [{"name": "Cycle", "ansible.builtin.include_tasks": str(root / "cycle.yml"),
                           "loop": f"{{{{ range({args.cycles}) | list }}}}", "loop_control": {"loop_var": "cycle"}}],
            }], sort_keys=False))
            (root / "cycle.yml").write_text(yaml.safe_dump(cycle_tasks(query, key, marks), sort_keys=False))
            (root / "local.ini").write_text(
                f"localhost ansible_connection=local ansible_python_interpreter={BIN}/python\n")
            env = ansible_env(sim, root, MLOPS_VAST_LEDGER=str(root / "contracts.jsonl"),
                              MLOPS_VAST_SSH_KEY=str(key))
            say(f"vastsim at {sim.url}; {args.cycles} cycles, a fault before every {args.fault_every}th; "
                f"{os.cpu_count()} CPUs")
            samples: list[tuple[float, int | None, int | None]] = []
            log = (root / "ansible.log").open("w")
            started = time.monotonic()
            process = subprocess.Popen([str(BIN / "ansible-playbook"), str(playbook), "-i", str(root / "local.ini")],
                                       env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT)
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(1.0):
                    samples.append((time.monotonic() - started, rss_kib(sim.pid), rss_kib(process.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                code = process.wait(deadline.cap(args.deadline))
            except subprocess.TimeoutExpired:
                process.kill()
                raise BenchError("the soak ran out of time") from None
            finally:
                stop.set()
                sampler.join(5)
                log.close()
            seconds = time.monotonic() - started
            cycles = [json.loads(line) for line in marks.read_text().splitlines()] if marks.exists() else []
            ledger = sim.call("GET", "/_sim/ledger")
            account = [row["id"] for row in sim.call("GET", "/api/v1/instances/")["instances"]]
            local_open = open_contracts(root / "contracts.jsonl")
            results.update(
                playbook_rc=code, seconds=round(seconds, 1), cycles=len(cycles),
                rented=sum(c["rented"] for c in cycles), ssh_ok=sum(c["ssh"] for c in cycles),
                refused=[c for c in cycles if not c["rented"]],
                leaks={"vastsim_open": ledger["totals"]["open_instances"], "account": account, "local": local_open},
                instances_created=ledger["totals"]["instances"], memory=memory_figures(samples))
            report(results)
            reached_all = results["ssh_ok"] == results["rented"]
            if code != 0 or len(cycles) != args.cycles or not reached_all or account or local_open or \
                    ledger["totals"]["open_instances"]:
                outcome.fail()
    finally:
        if sim is not None and not stop_and_check(sim, results, say):
            outcome.fail()
        write_results(args.json, results, say)
    return outcome.code


def open_contracts(path: Path) -> list[int]:
    live: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if record["event"] == "created":
            live[record["id"]] = record
        elif record["event"] == "destroyed":
            live.pop(record["id"], None)
    return sorted(live)


def memory_figures(samples: list[tuple[float, int | None, int | None]]) -> dict[str, Any]:
    """RSS (MiB) of each process at the start, middle and end, and the growth from the first to the last quarter."""
    figures: dict[str, Any] = {}
    for index, name in ((1, "vastsim"), (2, "ansible-playbook")):
        values = [s[index] / 1024 for s in samples if s[index]]
        if len(values) < 8:
            continue
        quarter = len(values) // 4
        first, last = statistics.median(values[:quarter]), statistics.median(values[-quarter:])
        figures[name] = {"start_mib": round(values[0], 1), "middle_mib": round(values[len(values) // 2], 1),
                         "end_mib": round(values[-1], 1), "first_quarter_mib": round(first, 1),
                         "last_quarter_mib": round(last, 1), "growth_pct": round(100 * (last - first) / first, 1)}
    return figures


def report(results: dict[str, Any]) -> None:
    cycles = results["cycles"] or 1
    say(f"\n{results['cycles']} cycles in {results['seconds']:.0f} s ({results['seconds'] / cycles:.2f} s a cycle); "
        f"playbook rc {results['playbook_rc']}")
    say(f"  rented and reached over SSH: {results['ssh_ok']}; refused (a host that would not start): "
        f"{len(results['refused'])}; instances created in all: {results['instances_created']}")
    leaks = results["leaks"]
    say(f"  leaks: vastsim open {leaks['vastsim_open']}, account {len(leaks['account'])}, local ledger "
        f"{len(leaks['local'])}")
    say(f"  {'RSS (MiB)':<18} {'start':>7} {'middle':>7} {'end':>7} {'1st quarter':>12} {'last quarter':>13} "
        f"{'growth':>7}")
    for name, row in results["memory"].items():
        say(f"  {name:<18} {row['start_mib']:7.1f} {row['middle_mib']:7.1f} {row['end_mib']:7.1f} "
            f"{row['first_quarter_mib']:12.1f} {row['last_quarter_mib']:13.1f} {row['growth_pct']:6.1f}%")


if __name__ == "__main__":
    raise SystemExit(main())
