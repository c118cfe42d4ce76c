#!/usr/bin/env python3
"""Benchmark the inventory plugin mlops.vast.vast on a large account: ansible-inventory uncached vs cached.

Starts its own ``vastsim serve`` on a temporary state directory (``--log-level debug``, so its
access log tells which requests each run sent), fills the account with ``--instances`` instances
(default 200: 8 pages of 25 of ``GET /api/v1/instances/``) and times:

1. ``ansible-inventory -i <cfg> --list`` in a subprocess, ``--runs`` rounds after one warm-up:
   the start-up floor (``-i localhost,``, no plugin), uncached (``cache: false``), the cache fill
   (``cache: true`` with ``--flush-cache``) and cached (``cache: true``, the run after a fill);
   min/median/max, requests sent, hosts listed (must be every instance), uncached/cached ratio.
2. The same parses in-process (the plugin loaded as Ansible loads it, ``InventoryData`` +
   ``DataLoader``), without ansible-inventory's start-up, plus the listing alone through the
   collection's ``VastClient``: where the time of a run goes.

Instances cost nothing here: each is rented (``PUT /api/v0/asks/{offer}/``) and stopped at once,
at ``--speed 1`` where provisioning takes 3 s, so it never reaches ``loading`` and no host (sshd,
namespace, disk) is ever booted; stopped instances free their GPUs, so the ~84 offers are rented
again and again. All are destroyed at the end (one bulk ``DELETE /api/v0/instances/``) and the
ledger must show no open instance.

    .venv/bin/python bench/inventory_scale.py --instances 200 --runs 5 --json /tmp/inventory_scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _sim import (
    BIN,
    REPO,
    BenchError,
    Deadline,
    Outcome,
    Sim,
    ansible_env,
    descendants,
    environment,
    host_info,
    noted,
    rent,
    say,
    start_sim,
    stop_and_check,
    summary,
    write_results,
)

PLUGIN = "mlops.vast.vast"
PAGE_SIZE = 25  # the plugin's page size of GET /api/v1/instances/
LABEL_PREFIX = "bench-"
# Speed 1: provisioning lasts 3 s, far longer than rent + stop, so no instance ever boots a host.
SPEED = 1.0
IMAGE = "pytorch/pytorch:latest"  # what a training account's hostvars show; never pulled, no host boots
# The example inventory/vast.yml, with every status and only this benchmark's labels.
INVENTORY_OPTIONS: dict[str, Any] = {
    "plugin": PLUGIN,
    "statuses": [],
    "label_prefix": LABEL_PREFIX,
    "hostnames": ["label", "id"],
    "prefer_direct": True,
    "keyed_groups": [{"key": "vast_gpu_name", "prefix": "gpu", "separator": "_"},
                     {"key": "vast_label", "prefix": "label", "separator": "_"},
                     {"key": "vast_actual_status", "prefix": "status", "separator": "_"}],
    "groups": {"vast_multi_gpu": "vast_num_gpus | int > 1"},
    "compose": {"ansible_python_interpreter": "'/usr/bin/python3'",
                "vast_price_per_hour": "vast_dph_total | float | round(4)"},
}


# ------------------------------------------------------------------------------ the account's rows


def populate(sim: Sim, count: int, deadline: Deadline) -> dict[str, Any]:
    """Rent ``count`` instances, each stopped right away; wait until all are ``exited``."""
    started = time.monotonic()
    offers = sim.call("POST", "/api/v0/bundles/", json={"order": [["dph_total", "asc"]], "limit": 1000})["offers"]
    if not offers:
        raise BenchError("the simulator lists no offer")
    ids: list[int] = []
    for index in range(count):
        deadline.cap(1)
        offer = offers[index % len(offers)]
        ids.append(rent(sim, offer, image=IMAGE, label=f"{LABEL_PREFIX}{index:03d}"))
        stopped = sim.call("PUT", f"/api/v0/instances/{ids[-1]}/", json={"state": "stopped"})
        if not stopped.get("success"):
            raise BenchError(f"stopping instance {ids[-1]} failed: {stopped}")
    rented_s = time.monotonic() - started
    end = time.monotonic() + deadline.cap(60)
    statuses: dict[str, int] = {}
    while time.monotonic() < end:
        rows = sim.call("GET", "/api/v0/instances/")["instances"]
        statuses = {}
        for row in rows:
            statuses[str(row["actual_status"])] = statuses.get(str(row["actual_status"]), 0) + 1
        if len(rows) == count and statuses == {"exited": count}:
            break
        time.sleep(0.1)
    else:
        raise BenchError(f"instances not all exited within 60s: {statuses}")
    machines = sim.call("GET", "/_sim/machines")["machines"]
    busy = {m["machine_id"]: m["free_gpus"] for m in machines if m["free_gpus"] != m["gpus_total"]}
    hosts = list(descendants(sim.pid))
    if busy or hosts:
        raise BenchError(f"stopped instances still hold GPUs {busy} or booted hosts (pids {hosts})")
    first = sim.call("GET", "/api/v1/instances/", params={"select_filters": "{}", "limit": PAGE_SIZE})
    return {"ids": ids, "offers": len(offers), "machines": len(machines),
            "gpus": sum(m["gpus_total"] for m in machines), "rent_and_stop_s": rented_s,
            "total_s": time.monotonic() - started, "statuses": statuses,
            "v1_total_instances": first["total_instances"]}


def destroy_all(sim: Sim, ids: list[int]) -> dict[str, Any]:
    started = time.monotonic()
    answer = sim.call("DELETE", "/api/v0/instances/", json={"instance_ids": ids}) if ids else {"failed": []}
    ledger = sim.call("GET", "/_sim/ledger")["totals"]
    return {"destroyed": len(answer.get("updated", [])), "failed": answer.get("failed", []),
            "open_instances": ledger["open_instances"], "ledger_instances": ledger["instances"],
            "destroy_s": time.monotonic() - started}


# ------------------------------------------------------------------------------------ measurements


def write_cfg(path: Path, constructed: bool = True, **extra: Any) -> Path:
    """The benchmark's config; ``constructed=False`` leaves out keyed_groups, groups and compose."""
    options = {k: v for k, v in INVENTORY_OPTIONS.items()
               if constructed or k not in ("keyed_groups", "groups", "compose")}
    path.write_text(json.dumps({**options, **extra}, indent=2) + "\n")  # JSON is YAML
    return path


def hosts_listed(stdout: str) -> tuple[int, int]:
    """(hosts in ``_meta.hostvars``, hosts of the group ``vast``) of ``ansible-inventory --list``."""
    data = json.loads(stdout)
    return len(data.get("_meta", {}).get("hostvars", {})), len(data.get("vast", {}).get("hosts", []))


def run_inventory(sim: Sim, argv: list[str], env: dict[str, str], deadline: Deadline,
                  expect_hosts: int | None) -> dict[str, Any]:
    timeout = deadline.cap(300)
    completed, elapsed, requests = sim.measure(lambda: subprocess.run(
        [str(BIN / "ansible-inventory"), *argv], env=env, cwd=REPO, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=timeout))
    if completed.returncode != 0:
        raise BenchError(f"ansible-inventory {' '.join(argv)} exited {completed.returncode}: "
                         f"{completed.stderr[-2000:]}")
    sample = {"s": elapsed, "requests": len(requests), "request_lines": requests,
              "stdout_bytes": len(completed.stdout)}
    if expect_hosts is not None:
        hostvars, group = hosts_listed(completed.stdout)
        sample["hosts"] = hostvars
        if hostvars != expect_hosts or group != expect_hosts:
            raise BenchError(f"ansible-inventory {' '.join(argv)} listed {hostvars} hosts ({group} in the group "
                             f"vast), expected {expect_hosts}")
    return sample


def bench_subprocess(sim: Sim, cfgs: dict[str, Path], env: dict[str, str], count: int, runs: int,
                     deadline: Deadline, say: Callable[[str], None]) -> dict[str, Any]:
    variants: dict[str, tuple[list[str], int | None]] = {
        "startup": (["-i", "localhost,", "--list"], None),
        "uncached": (["-i", str(cfgs["nocache"]), "--list"], count),
        "fill": (["-i", str(cfgs["cache"]), "--list", "--flush-cache"], count),
        "cached": (["-i", str(cfgs["cache"]), "--list"], count),
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for round_no in range(runs + 1):  # round 0 is the warm-up (page cache, .pyc files)
        for name, (argv, expect) in variants.items():  # cached always runs right after a fill
            sample = run_inventory(sim, argv, env, deadline, expect)
            if round_no:
                samples[name].append(sample)
        if round_no:
            say(f"  round {round_no}/{runs}: " + ", ".join(
                f"{name} {samples[name][-1]['s']:.3f}s/{samples[name][-1]['requests']} req" for name in variants))
    return {name: {"samples": rows, "summary": summary([r["s"] for r in rows], iqr=True),
                   "requests": sorted({r["requests"] for r in rows}),
                   "request_lines": rows[-1]["request_lines"]} for name, rows in samples.items()}


def bench_in_process(sim: Sim, cfgs: dict[str, Path], env: dict[str, str], count: int, runs: int,
                     deadline: Deadline, say: Callable[[str], None]) -> dict[str, Any]:
    """The plugin's work without ansible-inventory: parse() into an InventoryData, as the manager does."""
    with environment({k: env[k] for k in ("ANSIBLE_CONFIG", "ANSIBLE_LOCAL_TEMP", "VAST_URL", "VAST_API_KEY",
                                           "XDG_CONFIG_HOME", "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED")}):
        t0 = time.perf_counter()
        from ansible.inventory.data import InventoryData
        from ansible.inventory.manager import InventoryManager
        from ansible.parsing.dataloader import DataLoader
        from ansible.plugins.loader import init_plugin_loader, inventory_loader

        init_plugin_loader([str(REPO / ".collections")])
        from ansible_collections.mlops.vast.plugins.module_utils.api_client import VastClient

        if inventory_loader.get(PLUGIN) is None:
            raise BenchError(f"inventory_loader cannot find {PLUGIN}")
        import_s = time.perf_counter() - t0

        def parse(cfg: Path, cache: bool) -> int:
            plugin = inventory_loader.get(PLUGIN)
            inventory = InventoryData()
            plugin.parse(inventory, DataLoader(), str(cfg), cache=cache)
            if plugin.get_option("cache"):  # InventoryManager does this after parse()
                plugin.update_cache_if_changed()
            group = inventory.groups.get("vast")
            return len(group.get_hosts()) if group else 0

        def manage(cfg: Path, cache: bool) -> int:
            # What ansible-inventory builds (cache=False is --flush-cache): plugin lookup, parse, reconcile.
            group = InventoryManager(loader=DataLoader(), sources=[str(cfg)], cache=cache).groups.get("vast")
            return len(group.get_hosts()) if group else 0

        def fetch() -> int:
            with VastClient(sim.api_key, sim.url) as client:
                return len(list(client.iter_instances({}, page_size=PAGE_SIZE)))

        variants: dict[str, Callable[[], int]] = {
            "fetch": fetch,
            "uncached": lambda: parse(cfgs["nocache"], cache=True),
            "fill": lambda: parse(cfgs["cache"], cache=False),
            "cached": lambda: parse(cfgs["cache"], cache=True),
            "bare": lambda: parse(cfgs["bare"], cache=True),
            "manager_uncached": lambda: manage(cfgs["nocache"], cache=True),
            "manager_cached": lambda: manage(cfgs["cache"], cache=True),
        }
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for round_no in range(runs + 1):
            for name, work in variants.items():
                deadline.cap(1)
                found, elapsed, requests = sim.measure(work)
                if found != count:
                    raise BenchError(f"in-process {name}: {found} hosts/rows, expected {count}")
                if round_no:
                    samples[name].append({"s": elapsed, "requests": len(requests)})
    say(f"  import ansible + plugin loader + {PLUGIN}: {import_s:.3f}s (once per process)")
    return {"import_s": import_s,
            **{name: {"samples": rows, "summary": summary([r["s"] for r in rows], iqr=True),
                      "requests": sorted({r["requests"] for r in rows})} for name, rows in samples.items()}}


# ------------------------------------------------------------------------------------- reporting


def table(rows: list[tuple[str, dict[str, Any]]], say: Callable[[str], None], hosts: str = "") -> None:
    say(f"  {'':54} {'min':>7} {'median':>7} {'max':>7}  requests{hosts}")
    for label, data in rows:
        s = data["summary"]
        requests = "/".join(map(str, data["requests"]))
        extra = f"  {data['samples'][-1].get('hosts', '-'):>5}" if hosts else ""
        say(f"  {label:54} {s['min']:7.3f} {s['median']:7.3f} {s['max']:7.3f}  {requests:>8}{extra}")


def report(results: dict[str, Any], count: int, say: Callable[[str], None]) -> None:
    sub, inproc = results.get("subprocess"), results.get("in_process")
    pages = math.ceil(count / PAGE_SIZE)
    if sub:
        say("")
        table([("start-up floor (-i localhost, --list)", sub["startup"]),
               ("uncached (cache: false)", sub["uncached"]),
               ("cache fill (cache: true, --flush-cache)", sub["fill"]),
               ("cached (cache: true, run after a fill)", sub["cached"])], say, hosts="  hosts")
        unc, cac, floor = (sub[k]["summary"]["median"] for k in ("uncached", "cached", "startup"))
        spread = (sub["uncached"]["summary"]["iqr"], sub["cached"]["summary"]["iqr"])
        say(f"  uncached / cached (medians): {unc / cac:.2f}x; uncached - cached: {noted(unc - cac, *spread)}; "
            f"requests per uncached run: {'/'.join(map(str, sub['uncached']['requests']))} "
            f"(ceil({count}/{PAGE_SIZE}) = {pages} pages), cached: {'/'.join(map(str, sub['cached']['requests']))}")
        say(f"  over the start-up floor: uncached +{unc - floor:.3f}s, cached +{cac - floor:.3f}s "
            f"({(unc - floor) / max(cac - floor, 1e-9):.2f}x)")
    if inproc:
        say("")
        table([(f"listing only (VastClient, {pages} pages)", inproc["fetch"]),
               ("plugin parse, uncached (cache: false)", inproc["uncached"]),
               ("plugin parse, cache fill (cache=False)", inproc["fill"]),
               ("plugin parse, cached", inproc["cached"]),
               ("plugin parse, uncached, no keyed_groups/groups/compose", inproc["bare"]),
               ("InventoryManager(sources=[cfg]), uncached", inproc["manager_uncached"]),
               ("InventoryManager(sources=[cfg]), cached", inproc["manager_cached"])], say)
        unc, cac, fetch = (inproc[k]["summary"]["median"] for k in ("uncached", "cached", "fetch"))
        bare = inproc["bare"]["summary"]["median"]
        say(f"  plugin parse uncached / cached (medians): {unc / cac:.2f}x; of an uncached parse: listing "
            f"{fetch:.3f}s ({fetch / unc:.0%}), making {count} hosts with their vars {bare - fetch:.3f}s "
            f"({(bare - fetch) / unc:.0%}), keyed_groups/groups/compose (Ansible's templating) {unc - bare:.3f}s "
            f"({(unc - bare) / unc:.0%})")
    if sub and inproc:
        for kind in ("uncached", "cached"):
            total = sub[kind]["summary"]["median"]
            floor = sub["startup"]["summary"]["median"]
            manager = inproc[f"manager_{kind}"]["summary"]["median"]
            parse = inproc[kind]["summary"]["median"]
            rest = total - floor - manager
            say(f"  {kind} ansible-inventory --list, {total:.3f}s: start-up floor {floor:.3f}s "
                f"({floor / total:.0%}), InventoryManager {manager:.3f}s ({manager / total:.0%}; the plugin's "
                f"parse {parse:.3f}s), the rest {rest:.3f}s ({rest / total:.0%}: first-time imports and loading, "
                "each host's vars, JSON output)")


def run_benchmark(sim: Sim, root: Path, args: argparse.Namespace, deadline: Deadline, results: dict[str, Any],
                  say: Callable[[str], None]) -> None:
    info = sim.call("GET", "/_sim/info")
    load = os.getloadavg()
    results["host"]["loadavg_start"] = load
    say(f"vastsim pid {sim.pid} at {sim.url}: host mode {info['host_mode']}, speed {info['speed']:g}, "
        f"started in {results['sim_start_s']:.2f}s; {os.cpu_count()} CPUs (load average {load[0]:.2f}), "
        f"kernel {platform.release()}, Python {platform.python_version()}")
    filled = populate(sim, args.instances, deadline)
    results["populate"] = {k: v for k, v in filled.items() if k != "ids"}
    results["instance_ids"] = filled["ids"]
    say(f"{args.instances} instances ({LABEL_PREFIX}000...) rented and stopped in {filled['rent_and_stop_s']:.2f}s "
        f"({filled['offers']} offers on {filled['machines']} machines, rented again as stopped ones freed "
        f"their GPUs); all {filled['statuses']} after {filled['total_s']:.2f}s, no host booted, every GPU free; "
        f"v1 list: total_instances {filled['v1_total_instances']}, "
        f"{math.ceil(args.instances / PAGE_SIZE)} pages of {PAGE_SIZE}")
    if filled["v1_total_instances"] != args.instances:
        raise BenchError(f"v1 list shows {filled['v1_total_instances']} instances, expected {args.instances}")

    cfgs = {"nocache": write_cfg(root / "nocache_vast.yml", cache=False),
            "bare": write_cfg(root / "bare_vast.yml", constructed=False, cache=False),
            "cache": write_cfg(root / "cached_vast.yml", cache=True, cache_plugin="ansible.builtin.jsonfile",
                               cache_connection=str(root / "inventory-cache"), cache_timeout=3600)}
    # A source that fails to parse is an error, not an empty inventory timed as a fast one.
    env = ansible_env(sim, root, ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true")
    say(f"\n1. ansible-inventory -i CFG --list in a subprocess ({args.runs} rounds after 1 warm-up; "
        "statuses: [], keyed_groups/groups/compose of inventory/vast.yml)")
    results["subprocess"] = bench_subprocess(sim, cfgs, env, args.instances, args.runs, deadline, say)
    say("\n2. the same parses in-process (no ansible-inventory start-up)")
    results["in_process"] = bench_in_process(sim, cfgs, env, args.instances, args.runs, deadline, say)
    report(results, args.instances, say)


def destroy_and_verify(sim: Sim, results: dict[str, Any], say: Callable[[str], None]) -> None:
    """Destroy every instance (one bulk DELETE), check the ledger; records errors, never raises."""
    try:
        ids = results.get("instance_ids") or [row["id"] for row in sim.call("GET", "/api/v0/instances/")["instances"]]
        destroyed = destroy_all(sim, ids)
    except (BenchError, httpx.HTTPError, ValueError, KeyError) as exc:
        results["errors"].append(f"destroy: {exc!r}")
        say(f"\ndestroying the instances FAILED: {exc}")
        return
    results["destroy"] = destroyed
    say(f"\ndestroyed {destroyed['destroyed']} instances in one bulk DELETE ({destroyed['destroy_s']:.2f}s, "
        f"failed: {destroyed['failed'] or 'none'}); ledger totals.open_instances: {destroyed['open_instances']}")
    if destroyed["failed"] or destroyed["open_instances"]:
        results["errors"].append(f"instances left open after the bulk destroy: {destroyed}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=200, help="instances in the account (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds of each variant (default 5)")
    parser.add_argument("--host-mode", choices=("loopback", "namespace"), default="loopback",
                        help="vastsim --host-mode; no host is ever booted, so it hardly matters (default loopback)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=900.0,
                        help="overall time limit in seconds (default 900)")
    args = parser.parse_args(argv)
    if args.instances < 1 or args.runs < 1:
        parser.error("--instances and --runs must be >= 1")
    if args.host_mode == "namespace" and os.geteuid() != 0:
        parser.error("--host-mode namespace needs root")
    if not (BIN / "ansible-inventory").exists():
        parser.error(f"{BIN / 'ansible-inventory'} not found: run with the virtualenv's python")

    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-bench-inv-"))
    results: dict[str, Any] = {
        "params": {"instances": args.instances, "runs": args.runs, "host_mode": args.host_mode, "speed": SPEED,
                   "page_size": PAGE_SIZE},
        "host": host_info(euid=os.geteuid()),
        "errors": [],
    }
    sim: Sim | None = None
    outcome = Outcome(results, say)
    try:
        with outcome.guard(ValueError):
            started = time.monotonic()
            # --log-level debug: the access log counts each run's requests.
            sim = start_sim(root, deadline, speed=SPEED, credit=1_000_000, host_mode=args.host_mode,
                            log_level="debug", cwd=REPO, client_timeout=60)
            results["sim_start_s"] = time.monotonic() - started
            try:
                run_benchmark(sim, root, args, deadline, results, say)
            finally:
                destroy_and_verify(sim, results, say)
    finally:
        if sim is not None and not stop_and_check(sim, results, say):
            outcome.fail()
        if results["errors"]:
            outcome.fail()
        write_results(args.json, results, say)
        shutil.rmtree(root, ignore_errors=True)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
