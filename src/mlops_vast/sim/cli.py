"""``vastsim``: run the local Vast marketplace.

``serve`` runs it in the foreground; ``start`` runs it in the background and returns once it serves;
``stop`` stops the one serving a state directory; ``check-clean`` says whether a simulator left
anything behind (network namespaces, links, loop devices, processes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TextIO

import uvicorn

from mlops_vast.sim import harness, index_relay, internet
from mlops_vast.sim.api import build_app
from mlops_vast.sim.market import DEFAULT_CREDIT, Market

log = logging.getLogger("vastsim")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "vastsim"


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where instances, keys and the ledger live (default {default_state_dir()})")


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free port)")
    _state_dir_option(parser)
    parser.add_argument("--speed", type=float, default=1.0,
                        help="divide Vast's real provisioning timings by this factor (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the offer catalogue (default 0)")
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help="accept this API key (repeatable; each key is its own account). "
                        "Without one, a key is generated and written to STATE_DIR/api_key")
    parser.add_argument("--api-key-file", type=Path, metavar="PATH",
                        help="accept the keys in this file, one per line (keeps them out of process listings)")
    parser.add_argument("--credit", type=float, default=DEFAULT_CREDIT,
                        help=f"starting credit of new accounts in USD (default {DEFAULT_CREDIT:g})")
    parser.add_argument("--host-mode", choices=("namespace", "loopback"), default=None,
                        help="namespace (root: netns, mount ns, tc) or loopback; default: namespace when root")
    parser.add_argument("--forward", action="append", default=[], metavar="NAME=HOST:PORT",
                        help="relay the instances' HTTP requests for NAME (e.g. s3.vastsim) to a server on the "
                        "loopback, e.g. s3.vastsim=127.0.0.1:5077 (repeatable; namespace mode; as POST /_sim/forwards)")
    parser.add_argument("--index-url", default=None, metavar="URL|off",
                        help="the index the instances' package index (http://pypi.vastsim/simple) relays to "
                        "(default: this controller's own, from UV_DEFAULT_INDEX, UV_INDEX_URL, PIP_INDEX_URL or "
                        "pip.conf, else https://pypi.org/simple); off: none (namespace mode). A URL with "
                        "credentials belongs in UV_INDEX_URL, not here, where process listings show it")
    parser.add_argument("--index-cache", type=Path, default=None, metavar="DIR",
                        help="where the relayed pages and files are kept (default ~/.cache/vastsim/index)")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vastsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the marketplace in the foreground",
        description="Serve the Vast REST API on loopback. Prints 'VAST_URL=http://HOST:PORT' when ready (and "
        "writes --ready-file); on SIGINT or SIGTERM stops every instance and removes every namespace and link "
        "it made.")
    _serve_options(serve)
    serve.add_argument("--ready-file", type=Path, metavar="PATH",
                       help="write {url, pid, api_key_file, host_mode, ...} as JSON here once serving; removed "
                       "when it stops")
    start = commands.add_parser(
        "start", help="run the marketplace in the background; return once it serves",
        description="Start 'vastsim serve' in a session of its own and wait until it serves; print "
        "VAST_URL=..., VASTSIM_PID=... and VASTSIM_STATE_DIR=... (shell assignments). Its log goes to --log-file.")
    _serve_options(start)
    start.add_argument("--log-file", type=Path, help="append the simulator's log here (default STATE_DIR.log)")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to serve (default 60)")
    stop = commands.add_parser(
        "stop", help="stop the simulator serving a state directory, and check it left nothing",
        description="Send SIGTERM to the simulator serving --state-dir (the one holding its lock), wait until it "
        "is gone, then check that it left nothing behind (as check-clean). When none is running but one killed "
        "outright (SIGKILL, out of memory) left its instances' namespaces, links or processes, remove them as a "
        "new simulator on the directory would. Exits 0 when nothing is left (also when none was running).")
    _state_dir_option(stop)
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to stop (default 60)")
    clean = commands.add_parser(
        "check-clean", help="list what a simulator left behind; exit 1 if anything",
        description="Look for what a simulator on STATE_DIR may leave behind: network namespaces and links "
        "of its own, loop devices of its disks, processes naming its state directory.")
    clean.add_argument("state_dir", type=Path, metavar="STATE_DIR", nargs="?")
    # The spelling start and stop take, so that a command copied from them works here too.
    clean.add_argument("--state-dir", type=Path, dest="state_dir_option", metavar="STATE_DIR",
                       help="the same as STATE_DIR (default " + str(default_state_dir()) + ")")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-clean":
        if args.state_dir and args.state_dir_option and args.state_dir != args.state_dir_option:
            parser.error("check-clean: give the state directory once (STATE_DIR or --state-dir)")
        return check_clean((args.state_dir or args.state_dir_option or default_state_dir()).resolve())
    state_dir = (args.state_dir or default_state_dir()).resolve()
    if args.command == "stop":
        return stop(state_dir, args.timeout)
    logging.basicConfig(level=args.log_level.upper(), format="vastsim %(levelname)s %(name)s: %(message)s")
    if args.speed <= 0:
        print("vastsim: --speed must be a positive number, e.g. --speed 50", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print("vastsim: --port must be between 0 and 65535", file=sys.stderr)
        return 2
    if args.command == "start":
        return start(args, state_dir)
    try:
        if args.api_key_file:
            args.api_key += [line.strip() for line in args.api_key_file.read_text().splitlines() if line.strip()]
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)  # it holds the accounts' keys
        return asyncio.run(serve(args, state_dir))
    except (ValueError, OSError) as exc:
        print(f"vastsim: {exc}", file=sys.stderr)
        return 1


def start(args: argparse.Namespace, state_dir: Path) -> int:
    running = harness.find(state_dir)
    if running is not None:
        print(f"vastsim: state dir {state_dir} is already served by pid {running.pid}; "
              "stop it first (vastsim stop --state-dir ...)", file=sys.stderr)
        return 1
    passed = ["--host", args.host, "--port", str(args.port), "--speed", str(args.speed), "--seed", str(args.seed),
              "--credit", str(args.credit), "--log-level", args.log_level]
    passed += ["--host-mode", args.host_mode] if args.host_mode else []
    passed += [f"--forward={forward}" for forward in args.forward]
    passed += [f"--index-url={args.index_url}"] if args.index_url else []
    passed += [f"--index-cache={args.index_cache}"] if args.index_cache else []
    try:
        # --api-key and --api-key-file together: the harness hands them all over in one file of its own.
        keys = list(args.api_key)
        if args.api_key_file:
            keys += [line.strip() for line in args.api_key_file.read_text().splitlines() if line.strip()]
        sim = harness.start(state_dir, *passed, api_keys=keys, log_path=args.log_file, detach=True,
                            timeout=args.timeout)
    except (harness.SimError, OSError) as exc:
        print(f"vastsim: {exc}", file=sys.stderr)
        return 1
    # Shell assignments, quoted: `eval "$(vastsim start ...)"` sets them.
    for name, value in (("VAST_URL", sim.url), ("VASTSIM_PID", sim.pid), ("VASTSIM_STATE_DIR", sim.state_dir)):
        print(f"{name}={shlex.quote(str(value))}", flush=True)
    return 0


def stop(state_dir: Path, timeout: float) -> int:
    sim = harness.find(state_dir)
    if sim is not None:
        try:
            harness.stop(sim, timeout)
        except (harness.SimError, OSError) as exc:
            print(f"vastsim: {exc}", file=sys.stderr)
            return 1
    elif any(harness.leftovers(state_dir).values()):
        reclaim(state_dir)
    return check_clean(state_dir)


def reclaim(state_dir: Path) -> None:
    """Remove what a simulator killed outright left on ``state_dir``, as a new one there would as it starts.

    Only while no simulator holds the directory's lock: a serving one's namespaces are its running instances. A
    simulator that stopped normally removed its own; what it left is a defect that check-clean reports, so this is
    for the case where nobody is serving (a CI job killed, the simulator out of memory)."""
    from mlops_vast.sim.hosts import HostManager

    try:
        lock = _lock_state_dir(state_dir)
    except (ValueError, OSError):
        return  # a simulator started meanwhile (or the directory is not ours to lock): nothing is stale then
    with lock:
        mode = (harness.read_ready(harness.ready_path(state_dir)) or {}).get("host_mode") or None
        try:
            asyncio.run(HostManager(state_dir, mode=mode).remove_stale_namespaces())
        except (KeyError, ValueError, OSError) as exc:
            print(f"vastsim: could not remove what the simulator on {state_dir} left: {exc}", file=sys.stderr)
            return
        harness.ready_path(state_dir).unlink(missing_ok=True)  # its pid is no simulator's now
    print(f"vastsim: no simulator was serving {state_dir}; removed what one killed outright left there",
          file=sys.stderr)


def check_clean(state_dir: Path) -> int:
    left = {kind: items for kind, items in harness.leftovers(state_dir).items() if items}
    if left:
        for kind, items in left.items():
            print(f"vastsim: left behind ({kind}): {', '.join(items)}", file=sys.stderr)
        return 1
    return 0


async def serve(args: argparse.Namespace, state_dir: Path) -> int:
    from mlops_vast.sim.hosts import HostManager

    if args.host_mode == "namespace" and os.geteuid() != 0:
        raise ValueError("--host-mode namespace needs root (network and mount namespaces, tc)")
    forwards = [parse_forward_option(text) for text in args.forward]  # refused before anything starts
    lock = _lock_state_dir(state_dir)
    hosts = HostManager(state_dir, bind_host=args.host, mode=args.host_mode)
    public_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    market = Market(state_dir, speed=args.speed, seed=args.seed, api_keys=args.api_key,
                    credit=args.credit, hosts=hosts, public_host=public_host)
    for name, to in forwards:
        market.set_forward(name, to)
    if (args.index_url or "").strip().lower() != "off":
        hosts.backend.index_relay = index_relay.IndexRelay(args.index_url or index_relay.configured_index_url(),
                                                           args.index_cache or index_relay.default_cache_dir())
    key_file = state_dir / "api_key"
    first_key = args.api_key[0] if args.api_key else next(iter(market.state.accounts))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(first_key + "\n")
    market.save()
    await hosts.remove_stale_namespaces()

    stop_signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # uvicorn re-raises the signal it caught after shutting down; this keeps us alive to clean up.
        signal.signal(sig, lambda signum, frame: stop_signals.append(signum))
    config = uvicorn.Config(build_app(market), host=args.host, port=args.port, log_level=args.log_level,
                            lifespan="off", access_log=args.log_level == "debug")
    server = uvicorn.Server(config)
    ticker = asyncio.ensure_future(market.run())
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise OSError(f"could not listen on {args.host}:{args.port}")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        host = public_host if ":" not in public_host else f"[{public_host}]"
        url = f"http://{host}:{port}"
        if args.ready_file:
            harness.write_ready(args.ready_file, {"url": url, "pid": os.getpid(), "state_dir": str(state_dir),
                                                  "api_key_file": str(key_file), "host_mode": hosts.mode,
                                                  "ssh_user": hosts.ssh_user})
        print(f"VAST_URL={url}", flush=True)
        log.warning("API key in %s; host mode %s; state in %s", key_file, hosts.mode, state_dir)
        await serving
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must finish even if the signal repeats
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await market.shutdown()
        if args.ready_file:
            args.ready_file.unlink(missing_ok=True)
        lock.close()
    return 0


def parse_forward_option(text: str) -> tuple[str, str]:
    """``--forward s3.vastsim=127.0.0.1:5077`` -> ``("s3.vastsim", "127.0.0.1:5077")``, checked."""
    name, sep, to = text.partition("=")
    if not sep:
        raise ValueError(f"--forward takes NAME=HOST:PORT, e.g. s3.vastsim=127.0.0.1:5077, got {text!r}")
    try:
        internet.parse_forward(name, to)
    except ValueError as exc:
        raise ValueError(f"--forward {text}: {exc}") from None
    return name, to


def _lock_state_dir(state_dir: Path) -> TextIO:
    """One simulator per state directory: two would fight over the same instances and links."""
    handle = open(state_dir / "lock", "a+")  # noqa: SIM115 - held for the simulator's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"state dir {state_dir} is in use by vastsim pid {owner}; "
                         "stop it or pass another --state-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


if __name__ == "__main__":
    sys.exit(main())
