"""What goes in and out of an instance besides SSH: its logs (``request_logs``) and ``execute`` (one ls, rm
or du on a stopped instance's files), both answered at a result URL once "uploaded", as Vast does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from mlops_vast.sim import execute
from mlops_vast.sim.errors import VastError
from mlops_vast.sim.host_sync import HostSync
from mlops_vast.sim.models import HOST_UP, Account, Instance
from mlops_vast.sim.state import SimContext

log = logging.getLogger("vastsim.market")

LOG_TAIL_BYTES = 256 * 1024
# request_logs and execute results kept for their URLs (see InstanceIO._add_result).
RESULTS_KEPT = 64
RESULT_TTL_S = 600.0


@dataclass
class LogRequest:
    instance_id: int
    ready_at: float
    text: str | None  # None until there is something to upload (an execute still running)


class InstanceIO:
    def __init__(self, ctx: SimContext, host_sync: HostSync) -> None:
        self.ctx = ctx
        self.host_sync = host_sync
        self.results: dict[str, LogRequest] = {}

    def request_logs(self, account: Account, instance_id: int, body: dict[str, Any]) -> str:
        instance = self.ctx.state.instances.get(instance_id)
        if instance is None or instance.user_id != account.id:
            raise VastError(404, "invalid_id", "Invalid instance id.")
        lines = [f"{time.strftime('%Y-%m-%dT%H:%M:%S')} vastsim: instance {instance.id} "
                 f"({instance.image}) is {instance.actual_status}; {instance.status_msg or ''}"]
        onstart_log = self.ctx.hosts.instance_dir(instance.id) / "etc" / "onstart.log"
        with contextlib.suppress(OSError), open(onstart_log, "rb") as handle:
            # Only the end: the log may be large and this runs on the event loop.
            handle.seek(max(0, onstart_log.stat().st_size - LOG_TAIL_BYTES))
            lines += handle.read().decode(errors="replace").splitlines()
        if body.get("filter"):
            lines = [line for line in lines if str(body["filter"]) in line]
        tail = body.get("tail")
        with contextlib.suppress(TypeError, ValueError):
            if tail is not None:
                lines = lines[-int(tail):]
        return self._add_result(LogRequest(instance.id, time.time() + self.ctx.timing("logs_upload"),
                                           "\n".join(lines) + "\n"))

    def execute(self, instance: Instance, body: dict[str, Any]) -> tuple[str, str]:
        """``PUT instances/command``: one ls, rm or du on a stopped instance's files (execute.py).

        Returns the result token and ``writeable_path``; the output appears at the result URL once
        the command has run (404 until then, like Vast's upload).
        """
        hosts = self.ctx.hosts
        try:
            command = execute.parse(body.get("command"), hosts.own_dirs)
        except execute.CommandError as exc:
            raise VastError(400, "invalid_args", str(exc)) from None
        if not files_at_rest(instance):
            raise VastError(400, "invalid_args", "Execute command only avail on stopped instances. "
                            "Use ssh to run commands on running instances.")
        request = LogRequest(instance.id, time.time() + self.ctx.timing("logs_upload"), None)
        token = self._add_result(request)
        previous = self.host_sync.ops.get(instance.id)

        def still_stopped() -> str | None:
            # Asked again right before the command runs: a queued, scheduling or outbid instance may have
            # started loading meanwhile, and its host must never come up on files the command changes.
            if self.ctx.state.instances.get(instance.id) is not instance:
                return "the instance was destroyed; the command did not run."
            if not files_at_rest(instance):
                return "the instance is starting; the command did not run. Use ssh to run commands on it."
            return None

        async def run() -> None:
            # A host operation like the others, so the instance does not boot while the command runs.
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                refusal = still_stopped()
                if refusal is not None:
                    request.text = f"vastsim: {refusal}\n"
                    return
                if hosts.is_running(instance.id):
                    await hosts.stop(instance.id)  # stopped meanwhile; the ticker would stop it too
                request.text = await execute.run(command, hosts, instance.id, proceed=still_stopped)
            except Exception as exc:  # a failure to run is the command's output, never a host error
                log.exception("instance %s: execute failed", instance.id)
                request.text = f"vastsim: could not run the command: {exc}\n"

        self.host_sync.ops[instance.id] = asyncio.ensure_future(run())
        return token, hosts.writeable_path(instance.id)

    def result_text(self, token: str) -> str | None:
        """A result's text once it is "uploaded" and until it expires (RESULT_TTL_S); None otherwise."""
        found = self.results.get(token)
        now = time.time()
        if found is None or found.text is None or not found.ready_at <= now < found.ready_at + RESULT_TTL_S:
            return None
        return found.text

    def _add_result(self, request: LogRequest) -> str:
        """Keep a request_logs or execute result for its URL; returns its token.

        Each result holds up to 256 KiB (a log tail, a command's output), so only the newest
        RESULTS_KEPT are kept, whatever the rate of requests (at most ~16 MiB), and none longer than
        RESULT_TTL_S after it is ready: the CLI fetches a result within seconds (execute polls for about
        9 s), so an older one is garbage. An execute still running that is dropped just goes unfetched.
        """
        expired = time.time() - RESULT_TTL_S
        for token in [token for token, old in self.results.items() if old.ready_at < expired]:
            del self.results[token]
        while len(self.results) >= RESULTS_KEPT:
            del self.results[next(iter(self.results))]  # dicts keep insertion order: the oldest
        token = secrets.token_urlsafe(16)
        self.results[token] = request
        return token


def files_at_rest(instance: Instance) -> bool:
    """Whether execute may touch the instance's files: stopped, and not on its way up or down.

    One test for the request and for the re-check right before running: a scheduling instance counts
    as stopped, but once it moves on (provisioning, created, loading) its cur_state says running.
    """
    return instance.cur_state == "stopped" and instance.phase not in HOST_UP and instance.phase != "stopping"
