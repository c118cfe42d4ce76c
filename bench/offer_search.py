#!/usr/bin/env python3
"""Benchmark an offer search: mlops.vast.vast_offer through ansible-playbook vs ``vastai search offers``.

Starts its own ``vastsim serve`` on a temporary state directory (``--log-level debug``, so its
access log tells which requests each run sent) and, for one query, times ``--runs`` rounds (after
one warm-up round, which also fills the CLI's caches) of, interleaved:

1. ``ansible-playbook`` with one ``mlops.vast.vast_offer`` task on localhost (``-i localhost, -c local``);
2. ``ansible localhost -m mlops.vast.vast_offer -a ...`` (the same module, ad hoc);
3. ``vastai search offers '<query>' -o <order> --limit N --storage GB -t TYPE --raw`` (the official CLI 1.9.1);
4. where the time goes: ``ansible-playbook`` with one ``ansible.builtin.ping`` task (start-up plus one
   module run on localhost) and with one ``meta: noop`` task (start-up and the play, no module run),
   ``vastai --version`` (the CLI's start-up), and in-process: the module's own offer selection
   (``select_offers()``) through the collection's ``VastClient``, and one bare httpx
   ``POST /api/v0/bundles/`` of the same body.

Every run of 1, 2, 3 and the in-process search must return the same offer ids in the same order.

    .venv/bin/python bench/offer_search.py --runs 5 --json /tmp/offer_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    client_env,
    environment,
    host_info,
    noted,
    say,
    start_sim,
    stop_and_check,
    summary,
    write_results,
)

MODULE = "mlops.vast.vast_offer"
DEFAULT_QUERY = "reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 16"
LABELS = {
    "playbook": "ansible-playbook, one vast_offer task",
    "adhoc": f"ansible localhost -m {MODULE}",
    "vastai": "vastai search offers ... --raw",
    "playbook_ping": "ansible-playbook, one ansible.builtin.ping task",
    "playbook_noop": "ansible-playbook, one meta: noop task",
    "vastai_version": "vastai --version",
    "python": "python -c pass",
    "python_httpx": "python -c 'import httpx'",
    "search": "in-process: offer_selection.select_offers()",
    "http": "in-process: new httpx.Client + POST /bundles/",
}


# ------------------------------------------------------------------------------------ measurements


@dataclass
class Search:
    query: str
    order: str
    limit: int
    storage: float
    type: str

    def module_args(self) -> dict[str, Any]:
        return {"query": self.query, "order": self.order, "limit": self.limit, "storage": self.storage,
                "type": self.type}

    def cli_args(self) -> list[str]:
        return ["search", "offers", self.query, "-o", self.order, "--limit", str(self.limit),
                "--storage", f"{self.storage:g}", "-t", self.type]


def environments(sim: Sim, root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(ansible's environment, vastai's environment): private HOME/XDG dirs, the simulator, the key."""
    ansible = ansible_env(sim, root, ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_CALLBACK_FORMAT_PRETTY="false",
                          ANSIBLE_DEPRECATION_WARNINGS="false")
    vastai = {**client_env(sim, root), "VASTAI_NO_UPDATE_CHECK": "1", "COLUMNS": "300", "TERM": "dumb"}
    return ansible, vastai


def result_after(text: str, marker: str) -> dict[str, Any]:
    """The JSON object printed after ``marker`` (``ok: [localhost] => {...}``)."""
    at = text.find(marker)
    if at < 0:
        raise BenchError(f"no {marker!r} in the output:\n{text[-2000:]}")
    value, _ = json.JSONDecoder().raw_decode(text[at + len(marker):].lstrip())
    return value


def module_ids(result: dict[str, Any]) -> list[int]:
    if result.get("failed"):
        raise BenchError(f"{MODULE} failed: {result.get('msg')}")
    return [int(offer["id"]) for offer in result["offers"]]


def write_playbook(path: Path, task: dict[str, Any]) -> Path:
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "bench", **task}]}]
    path.write_text(json.dumps(play, indent=2) + "\n")  # JSON is YAML
    return path


def subprocess_variants(root: Path, search: Search, ansible_env: dict[str, str],
                        vastai_env: dict[str, str], url: str) -> dict[str, tuple[list[str], dict[str, str],
                                                                              Callable[[str], list[int]] | None]]:
    """name -> (argv, environment, how to read the offer ids from stdout, or None)."""
    localhost = ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]
    books = {name: write_playbook(root / f"{name}.yml", task) for name, task in (
        ("playbook", {MODULE: search.module_args()}),
        ("playbook_ping", {"ansible.builtin.ping": {}}),
        ("playbook_noop", {"ansible.builtin.meta": "noop"}),
    )}
    playbook = str(BIN / "ansible-playbook")
    vastai = [str(BIN / "vastai"), "--url", url]
    return {
        # -v prints each task's result, as one line of JSON (ANSIBLE_CALLBACK_RESULT_FORMAT=json, not pretty)
        "playbook": ([playbook, "-v", str(books["playbook"]), *localhost], ansible_env,
                     lambda out: module_ids(result_after(out, "ok: [localhost] =>"))),
        "adhoc": ([str(BIN / "ansible"), "localhost", *localhost, "-m", MODULE, "-a",
                   json.dumps(search.module_args())], ansible_env,
                  lambda out: module_ids(result_after(out, "localhost | SUCCESS =>"))),
        "vastai": ([*vastai, *search.cli_args(), "--raw"], vastai_env,
                   lambda out: [int(offer["id"]) for offer in json.loads(out)]),
        "playbook_ping": ([playbook, "-v", str(books["playbook_ping"]), *localhost], ansible_env, None),
        "playbook_noop": ([playbook, "-v", str(books["playbook_noop"]), *localhost], ansible_env, None),
        "vastai_version": ([*vastai, "--version"], vastai_env, None),
        # What every module run on localhost pays before its work: the interpreter, and httpx for vast_offer.
        "python": ([sys.executable, "-c", "pass"], ansible_env, None),
        "python_httpx": ([sys.executable, "-c", "import httpx"], ansible_env, None),
    }


def run_one(sim: Sim, name: str, argv: list[str], env: dict[str, str], ids_of: Callable[[str], list[int]] | None,
            deadline: Deadline) -> dict[str, Any]:
    timeout = deadline.cap(300)
    completed, elapsed, requests = sim.measure(lambda: subprocess.run(
        argv, env=env, cwd=Path(env["HOME"]), capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=timeout))
    output = completed.stdout + completed.stderr
    if completed.returncode != 0 or "Traceback (most recent call last)" in output:
        raise BenchError(f"{name}: {' '.join(argv[:4])} ... exited {completed.returncode}:\n{output[-3000:]}")
    sample: dict[str, Any] = {"s": elapsed, "requests": len(requests), "request_lines": requests}
    if ids_of is not None:
        try:
            sample["ids"] = ids_of(completed.stdout)
        except (ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"{name}: cannot read the offers ({exc!r}) from:\n{output[-2000:]}") from None
    return sample


def in_process_variants(sim: Sim, search: Search, ansible_env: dict[str, str],
                        results: dict[str, Any]) -> dict[str, Callable[[], list[int] | None]]:
    """The module's own work without ansible: select_offers() through VastClient, and the bare request."""
    keys = ("ANSIBLE_CONFIG", "ANSIBLE_LOCAL_TEMP", "VAST_URL", "VAST_API_KEY", "XDG_CONFIG_HOME")
    with environment({k: ansible_env[k] for k in keys}):
        t0 = time.perf_counter()
        # .collections is on sys.path in the virtualenv (the _mlops_vast.pth file).
        from ansible_collections.mlops.vast.plugins.module_utils.api_client import VastClient
        from ansible_collections.mlops.vast.plugins.module_utils.offer_selection import (
            OVERFETCH,
            OfferRequest,
            select_offers,
        )
        from ansible_collections.mlops.vast.plugins.module_utils.vast_query import build_search_body
        from ansible_collections.mlops.vast.plugins.module_utils.waiting import Deadline as VastDeadline

        results["module_import_s"] = time.perf_counter() - t0
    params = {"api_key": sim.api_key, "api_url": sim.url, "api_timeout": 30.0}
    request = OfferRequest(query=search.query, order=search.order, offer_type=search.type, storage_gb=search.storage,
                           limit=search.limit)
    body: dict[str, Any] = {}

    def module_search() -> list[int]:
        with VastClient.from_options(params, VastDeadline(60)) as client:
            selection = select_offers(client, request)
        body.update(selection.body)
        return [int(offer["id"]) for offer in selection.offers]

    def bare_request() -> None:
        # A fresh client, as each run of the module or the CLI has; the module's own body.
        sent = body or build_search_body(search.query, order=search.order, offer_type=search.type,
                                         limit=search.limit + OVERFETCH, storage_gb=search.storage)
        with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=60) as http:
            response = http.post("/api/v0/bundles/", json=sent)
            response.raise_for_status()
            response.json()

    return {"search": module_search, "http": bare_request}


def bench(sim: Sim, root: Path, search: Search, runs: int, deadline: Deadline, results: dict[str, Any],
          say: Callable[[str], None]) -> dict[str, Any]:
    ansible_env, vastai_env = environments(sim, root)
    commands = subprocess_variants(root, search, ansible_env, vastai_env, sim.url)
    in_process = in_process_variants(sim, search, ansible_env, results)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in [*commands, *in_process]}
    reference: list[int] | None = None
    for round_no in range(runs + 1):  # round 0 is the warm-up (.pyc files, the CLI's caches)
        for name, (argv, env, ids_of) in commands.items():
            sample = run_one(sim, name, argv, env, ids_of, deadline)
            samples[name].append(sample)
        for name, work in in_process.items():
            deadline.cap(1)
            ids, elapsed, requests = sim.measure(work)
            samples[name].append({"s": elapsed, "requests": len(requests), "request_lines": requests,
                                  **({"ids": ids} if ids is not None else {})})
        for name, rows in samples.items():
            if "ids" not in rows[-1]:
                continue
            reference = reference if reference is not None else rows[-1]["ids"]
            if rows[-1]["ids"] != reference:
                raise BenchError(f"{name} returned other offers than the first run of "
                                 f"{next(iter(commands))}:\n  {rows[-1]['ids']}\n  {reference}")
        if round_no:
            say(f"  round {round_no}/{runs}: " + ", ".join(
                f"{name} {rows[-1]['s']:.3f}s" for name, rows in samples.items()))
        else:
            results["warmup"] = {name: {"s": rows[0]["s"], "requests": rows[0]["request_lines"]}
                                 for name, rows in samples.items()}
            say(f"  warm-up: {len(reference or [])} offers; requests: " + ", ".join(
                f"{name} {len(rows[0]['request_lines'])}" for name, rows in samples.items()))
    results["offer_ids"] = reference
    return {name: {"samples": rows[1:], "summary": summary([r["s"] for r in rows[1:]], iqr=True),
                   "requests": sorted({r["requests"] for r in rows[1:]}),
                   "request_lines": rows[-1]["request_lines"]} for name, rows in samples.items()}


# ------------------------------------------------------------------------------------- reporting


def report(timings: dict[str, Any], offers: int, say: Callable[[str], None]) -> None:
    say(f"\n  {'':48} {'min':>7} {'median':>7} {'max':>7}  requests")
    for name, label in LABELS.items():
        s = timings[name]["summary"]
        say(f"  {label:48} {s['min']:7.3f} {s['median']:7.3f} {s['max']:7.3f}  "
            f"{'/'.join(map(str, timings[name]['requests'])):>8}")
    med = {name: timings[name]["summary"]["median"] for name in timings}
    say(f"  same {offers} offer ids in the same order from every run of vast_offer (playbook, ad hoc, in-process) "
        "and vastai")
    say(f"  vast_offer (ansible-playbook) / vastai (medians): {med['playbook'] / med['vastai']:.2f}x; "
        f"ad hoc / vastai: {med['adhoc'] / med['vastai']:.2f}x; in-process search / vastai: "
        f"{med['search'] / med['vastai']:.3f}x")
    iqr = {name: timings[name]["summary"]["iqr"] for name in timings}
    total = med["playbook"]
    httpx_import = med["python_httpx"] - med["python"]
    module_run = med["playbook_ping"] - med["playbook_noop"]
    over_ping = med["playbook"] - med["playbook_ping"]
    say(f"  where a vast_offer playbook run goes ({total:.3f}s): ansible-playbook start-up and the play (noop) "
        f"{med['playbook_noop']:.3f}s ({med['playbook_noop'] / total:.0%}); one module run on localhost (ping - noop) "
        f"{noted(module_run, iqr['playbook_ping'], iqr['playbook_noop'])} ({module_run / total:.0%}); "
        f"vast_offer over ping {noted(over_ping, iqr['playbook'], iqr['playbook_ping'])} ({over_ping / total:.0%})")
    rest = over_ping - httpx_import - med["search"]
    say(f"    vast_offer over ping: importing httpx in the module's interpreter ~{httpx_import:.3f}s "
        f"(python -c 'import httpx' - python -c pass), the search itself {med['search']:.3f}s in-process "
        f"({med['search'] / total:.1%} of the run; a new httpx.Client + the bare POST: {med['http']:.3f}s), "
        f"the rest {noted(rest, iqr['playbook'], iqr['playbook_ping'])} (a larger AnsiballZ payload with the "
        f"collection's module_utils, the result of {offers} offers through the controller and its callback)")
    cli, start = med["vastai"], med["vastai_version"]
    say(f"  where a vastai run goes ({cli:.3f}s): start-up (--version: imports, argparse) {start:.3f}s "
        f"({start / cli:.0%}), the search and its output {noted(cli - start, iqr['vastai'], iqr['vastai_version'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--query", default=DEFAULT_QUERY, help=f"the offer query (default {DEFAULT_QUERY!r})")
    parser.add_argument("--order", default="dph+", help="sort order, as the CLI's -o (default dph+)")
    parser.add_argument("--limit", type=int, default=64,
                        help="offers to return, the CLI's --limit and the module's limit (default 64, the "
                        "number Vast returns when the CLI sends none)")
    parser.add_argument("--storage", type=float, default=5.0, help="GB of disk priced in (default 5)")
    parser.add_argument("--type", default="on-demand", choices=("on-demand", "bid", "reserved"),
                        help="offer type (default on-demand)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds of each variant (default 5)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--deadline", type=float, default=900.0, help="overall time limit in seconds (default 900)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.limit < 1 or args.storage < 0:
        parser.error("--runs and --limit must be >= 1, --storage >= 0")
    for tool in ("ansible-playbook", "ansible", "vastai"):
        if not (BIN / tool).exists():
            parser.error(f"{BIN / tool} not found: run with the virtualenv's python")

    search = Search(query=args.query, order=args.order, limit=args.limit, storage=args.storage, type=args.type)
    deadline = Deadline(args.deadline)
    root = Path(tempfile.mkdtemp(prefix="vastsim-bench-offers-"))
    results: dict[str, Any] = {
        "params": {"query": search.query, "order": search.order, "limit": search.limit, "storage": search.storage,
                   "type": search.type, "runs": args.runs},
        "host": host_info(loadavg_start=os.getloadavg()),
        "errors": [],
    }
    sim: Sim | None = None
    outcome = Outcome(results, say)
    try:
        with outcome.guard(ValueError):
            started = time.monotonic()
            # --log-level debug: the access log counts each run's requests.
            sim = start_sim(root, deadline, host_mode="loopback", log_level="debug", cwd=REPO, client_timeout=60)
            results["sim_start_s"] = time.monotonic() - started
            load = results["host"]["loadavg_start"][0]
            say(f"vastsim pid {sim.pid} at {sim.url}, started in {results['sim_start_s']:.2f}s; {os.cpu_count()} "
                f"CPUs (load average {load:.2f}), kernel {platform.release()}, Python {platform.python_version()}")
            say(f"query {search.query!r}, order {search.order}, limit {search.limit}, storage {search.storage:g} GB, "
                f"type {search.type}; {args.runs} rounds after 1 warm-up, variants interleaved")
            timings = bench(sim, root, search, args.runs, deadline, results, say)
            results["timings"] = timings
            say(f"  import of the module and its module_utils, in-process: {results['module_import_s']:.3f}s (once)")
            report(timings, len(results["offer_ids"] or []), say)
    finally:
        if sim is not None and not stop_and_check(sim, results, say):
            outcome.fail()
        write_results(args.json, results, say)
        shutil.rmtree(root, ignore_errors=True)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
