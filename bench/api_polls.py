#!/usr/bin/env python3
"""API requests per poll interval when N watchers (one per sweep trial, each its own process) follow N instances:
each asking for its own instance (``GET /api/v0/instances/{id}/``, ``mlops.vast.watch`` with ``shared_list: false``)
against the list shared through the controller's cache file (``shared_list: true``, what the watch role uses:
plugins/module_utils/instance_cache.py, an entry reused for half the interval).

    .venv/bin/python bench/api_polls.py --watchers 1,4,8,16 --polls 6 --interval 1

Starts its own simulator in loopback mode at --log-level debug (no root needed; requests are counted from its access
log), rents the largest N of instances and stops them at once (their rows stay in the list; nothing boots), then for
each N and each way runs N processes that poll every ``--interval`` seconds, each starting at a random point of the
first interval (watchers never start together), ``--polls`` times. Each poll is the very call the watch makes
(``InstanceListCache.instance(client, key, id, max_age=interval / 2)`` or ``VastClient.get_instance(id)``).
Prints requests per poll interval (all N watchers together) and per watcher poll.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _sim import (
    BenchError,
    Deadline,
    Outcome,
    Sim,
    host_info,
    say,
    start_sim,
    stop_and_check,
    write_results,
)


def watcher(url: str, key: str, instance_id: int, shared: bool, cache_path: str, interval: float, polls: int,
            start_at: float, out: Any) -> None:
    """One watcher process: ``polls`` API looks at its instance, one per ``interval``, from ``start_at``."""
    from ansible_collections.mlops.vast.plugins.module_utils.api_client import VastClient
    from ansible_collections.mlops.vast.plugins.module_utils.instance_cache import InstanceListCache
    from ansible_collections.mlops.vast.plugins.module_utils.waiting import Deadline as ApiDeadline

    client = VastClient(key, url, deadline=ApiDeadline(120))
    cache = InstanceListCache(cache_path)
    found = 0
    try:
        for poll in range(polls):
            time.sleep(max(0.0, start_at + poll * interval - time.time()))
            if shared:
                row, _, _ = cache.instance(client, key, instance_id, max_age=interval / 2)
            else:
                row = client.get_instance(instance_id)
            found += row is not None and row.get("id") == instance_id
    finally:
        client.close()
    out.put((instance_id, found))


def one_round(sim: Sim, ids: list[int], shared: bool, root: Path, interval: float, polls: int,
              rng: random.Random) -> dict[str, Any]:
    cache_path = str(root / f"cache-{len(ids)}-{int(shared)}" / "instances-cache.json")
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start = time.time() + 0.5  # every process is up before the first poll
    procs = [context.Process(target=watcher, args=(sim.url, sim.api_key, i, shared, cache_path, interval, polls,
                                                   start + rng.uniform(0, interval), out)) for i in ids]

    def work() -> list[tuple[int, int]]:
        for proc in procs:
            proc.start()
        got = [out.get(timeout=polls * interval + 60) for _ in procs]
        for proc in procs:
            proc.join(30)
        return got

    got, elapsed, requests = sim.measure(work)
    if any(found != polls for _, found in got):
        raise BenchError(f"a watcher did not find its instance at every poll: {got}")
    api = [r for r in requests if r.startswith("GET /api/")]
    return {"n": len(ids), "shared": shared, "requests": len(api), "elapsed_s": elapsed,
            "per_interval": len(api) / polls, "per_watcher_poll": len(api) / (polls * len(ids)),
            "paths": sorted({r.split("?")[0].rsplit("/", 2)[0] if "/instances/" in r else r for r in api})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", default="1,4,8,16", help="comma-separated N (default 1,4,8,16)")
    parser.add_argument("--polls", type=int, default=6, help="polls per watcher (default 6)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between two polls of one watcher (the API interval; default 1)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the watchers' start offsets (default 7)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=600.0, help="overall limit in seconds (default 600)")
    args = parser.parse_args(argv)
    sizes = sorted({int(n) for n in args.watchers.split(",") if n.strip()})
    if not sizes or sizes[0] < 1 or args.polls < 2 or args.interval <= 0:
        parser.error("--watchers must list N >= 1, --polls >= 2, --interval > 0")
    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-apipolls-"))
    results: dict[str, Any] = {"params": {k: v for k, v in vars(args).items() if k != "json"},
                               "host": host_info(euid=os.geteuid()), "errors": [], "rounds": []}
    sim: Sim | None = None
    outcome = Outcome(results, say)
    rng = random.Random(args.seed)
    try:
        with outcome.guard():
            sim = start_sim(root, deadline, speed=1, host_mode="loopback", log_level="debug", credit=1_000_000)
            offers = sim.call("POST", "/api/v0/bundles/", json={"rentable": {"eq": True}, "limit": 200,
                                                                "order": [["dph_total", "asc"]]})["offers"]
            ids: list[int] = []
            used: set[int] = set()
            for offer in offers:
                if len(ids) == sizes[-1]:
                    break
                if offer["machine_id"] in used:
                    continue
                body = sim.client.put(f"/api/v0/asks/{offer['id']}/", json={
                    "client_id": "me", "image": "x", "disk": 10, "runtype": "ssh_direc ssh_proxy",
                    "label": f"bench-poll-{len(ids) + 1}"}).json()
                if body.get("success"):
                    used.add(offer["machine_id"])
                    ids.append(int(body["new_contract"]))
                    sim.call("PUT", f"/api/v0/instances/{ids[-1]}/", json={"state": "stopped"})
            if len(ids) < sizes[-1]:
                raise BenchError(f"rented only {len(ids)} instances")
            say(f"vastsim at {sim.url} (loopback, access log counted); {len(ids)} instances rented and stopped; "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
            say(f"\nN watcher processes, {args.polls} polls each every {args.interval:g} s (random start in the "
                "first interval); API requests logged by the simulator")
            say(f"  {'N':>3} {'per instance (GET /instances/ID/)':>36} {'shared list (cache file)':>28}")
            say(f"  {'':>3} {'per interval':>18} {'per watcher poll':>17} {'per interval':>13} "
                f"{'per watcher poll':>16}")
            for n in sizes:
                alone = one_round(sim, ids[:n], False, root, args.interval, args.polls, rng)
                shared = one_round(sim, ids[:n], True, root, args.interval, args.polls, rng)
                results["rounds"] += [alone, shared]
                say(f"  {n:3d} {alone['per_interval']:18.2f} {alone['per_watcher_poll']:17.2f} "
                    f"{shared['per_interval']:13.2f} {shared['per_watcher_poll']:16.2f}")
            say("  (per interval: every watcher's requests in one poll interval together; a shared list is reused "
                "for half the interval, so up to 2 list requests an interval, whatever N)")
            for instance_id in ids:
                sim.client.delete(f"/api/v0/instances/{instance_id}/")
    finally:
        if sim is not None and not stop_and_check(sim, results, say):
            outcome.fail()
        write_results(args.json, results, say)
        shutil.rmtree(root, ignore_errors=True)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
