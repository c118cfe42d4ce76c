"""``vastsim``: run the local Vast marketplace."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

import uvicorn

from mlops_vast.sim.api import build_app
from mlops_vast.sim.market import DEFAULT_CREDIT, Market

log = logging.getLogger("vastsim")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "vastsim"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vastsim", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the marketplace in the foreground",
        description="Serve the Vast REST API on loopback. Prints 'VAST_URL=http://HOST:PORT' when ready; "
        "on SIGINT or SIGTERM stops every instance and removes every namespace and link it made.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port to listen on (default: a free port)")
    serve.add_argument("--state-dir", type=Path, default=None,
                       help=f"where instances, keys and the ledger live (default {default_state_dir()})")
    serve.add_argument("--speed", type=float, default=1.0,
                       help="divide Vast's real provisioning timings by this factor (default 1)")
    serve.add_argument("--seed", type=int, default=0, help="seed of the offer catalogue (default 0)")
    serve.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="accept this API key (repeatable; each key is its own account). "
                       "Without one, a key is generated and written to STATE_DIR/api_key")
    serve.add_argument("--api-key-file", type=Path, metavar="PATH",
                       help="accept the keys in this file, one per line (keeps them out of process listings)")
    serve.add_argument("--credit", type=float, default=DEFAULT_CREDIT,
                       help=f"starting credit of new accounts in USD (default {DEFAULT_CREDIT:g})")
    serve.add_argument("--host-mode", choices=("namespace", "loopback"), default=None,
                       help="namespace (root: netns, mount ns, tc) or loopback; default: namespace when root")
    serve.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="vastsim %(levelname)s %(name)s: %(message)s")
    if args.speed <= 0:
        print("vastsim: --speed must be a positive number, e.g. --speed 50", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print("vastsim: --port must be between 0 and 65535", file=sys.stderr)
        return 2
    state_dir = (args.state_dir or default_state_dir()).resolve()
    try:
        if args.api_key_file:
            args.api_key += [line.strip() for line in args.api_key_file.read_text().splitlines() if line.strip()]
        state_dir.mkdir(parents=True, exist_ok=True)
        state_dir.chmod(0o700)  # it holds the accounts' keys
        return asyncio.run(serve(args, state_dir))
    except (ValueError, OSError) as exc:
        print(f"vastsim: {exc}", file=sys.stderr)
        return 1


async def serve(args: argparse.Namespace, state_dir: Path) -> int:
    from mlops_vast.sim.hosts import HostManager

    if args.host_mode == "namespace" and os.geteuid() != 0:
        raise ValueError("--host-mode namespace needs root (network and mount namespaces, tc)")
    lock = _lock_state_dir(state_dir)
    hosts = HostManager(state_dir, bind_host=args.host, mode=args.host_mode)
    public_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    market = Market(state_dir, speed=args.speed, seed=args.seed, api_keys=args.api_key,
                    credit=args.credit, hosts=hosts, public_host=public_host)
    key_file = state_dir / "api_key"
    first_key = args.api_key[0] if args.api_key else next(iter(market.accounts))
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
        print(f"VAST_URL=http://{host}:{port}", flush=True)
        log.warning("API key in %s; host mode %s; state in %s", key_file, hosts.mode, state_dir)
        await serving
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must finish even if the signal repeats
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await market.shutdown()
        lock.close()
    return 0


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
