"""The simulator's ``execute`` command check: what Vast allows (ls, rm, du; 512 characters), what the
command may touch (the instance's own files, symlinks resolved) and when it may run (stopped)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mlops_vast.sim import execute, instance_init, instance_io, market
from mlops_vast.sim.errors import VastError
from mlops_vast.sim.host_loopback import LoopbackBackend
from mlops_vast.sim.host_namespace import NamespaceBackend
from mlops_vast.sim.hosts import HostError, HostManager
from mlops_vast.sim.models import Instance


@pytest.mark.parametrize(("command", "words"), [
    ("ls", ["ls"]),
    ("ls -l workspace", ["ls", "-l", "/workspace"]),
    ("du -d 2 -h /workspace/a/../b", ["du", "-d", "2", "-h", "/workspace/b"]),
    ("du -hd 1 workspace", ["du", "-hd", "1", "/workspace"]),
    ("du --max-depth 1 --block-size=1K workspace", ["du", "--max-depth", "1", "--block-size=1K", "/workspace"]),
    ("du --exclude '*.tmp' -D /root/", ["du", "--exclude", "*.tmp", "-D", "/root"]),
    ("ls -I '*.tmp' '/workspace/a b'", ["ls", "-I", "*.tmp", "/workspace/a b"]),
    ("ls -H --dereference-command-line-symlink-to-dir /tmp", ["ls", "-H", "--dereference-command-line-symlink-to-dir",
                                                             "/tmp"]),
    ("rm -rf /workspace/x root/.cache /tmp/t/", ["rm", "-rf", "/workspace/x", "/root/.cache", "/tmp/t"]),
])
def test_parse_finds_the_paths(command: str, words: list[str]) -> None:
    assert execute.parse(command, NamespaceBackend.own_dirs).words == words


@pytest.mark.parametrize("command", [
    None, "", "  ", 42, "cat /etc/passwd", "ls; reboot", "ls && id", "ls | sh", "ls > /workspace/x", "ls `id`",
    "ls $(id)", "ls\nid", "ls 'unbalanced", "lsblk", "ls " + "a" * 510,
    "rm -rf /", "rm -r home/x", "rm /etc/hostname", "rm /workspace", "rm /workspace/../etc/x", "rm -- -odd",
    # ls and du stay inside the instance's own directories too (loopback: the simulator's state is outside).
    "ls /etc", "ls -l /", "du -s /", "du -sh /workspace/../var", "ls /workspace /run/vastsim",
    # Options that read other files: a list of paths or patterns, or every symlink's target.
    "du --files0-from /workspace/list", "du --files0-from=/workspace/list", "du --files0-f=/workspace/list",
    "du --files0 /workspace/list", "du -X /workspace/pats /workspace", "du -sX/workspace/pats /workspace",
    "du -shX /workspace/pats /workspace", "du --exclude-from /workspace/pats", "du --exclude-from=/workspace/p",
    "du --exclude-f=/workspace/p /workspace", "du -L /workspace", "du -sL /workspace",
    "du --dereference /workspace", "du --deref /workspace", "ls -L /workspace", "ls -lL /workspace",
    "ls --dereference /workspace",
])
def test_parse_refuses(command: object) -> None:
    with pytest.raises(execute.CommandError):
        execute.parse(command, NamespaceBackend.own_dirs)


def test_loopback_mode_keeps_every_path_in_the_workspace() -> None:
    assert execute.parse("du -s /workspace workspace/sub", LoopbackBackend.own_dirs).words == ["du", "-s", "/workspace",
                                                                                 "/workspace/sub"]
    for command in ("rm /tmp/x", "ls /root", "du -s /etc", "ls ../state.json"):
        with pytest.raises(execute.CommandError, match="/workspace"):
            execute.parse(command, LoopbackBackend.own_dirs)  # loopback instances share the machine's /tmp and /root


@pytest.fixture
def escape(tmp_path: Path) -> tuple[Path, Path]:
    """An instance directory ``own`` with ``own/esc`` -> ``outside``, which holds a file the tests own."""
    own, outside = tmp_path / "own", tmp_path / "outside"
    own.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("must survive\n")
    (own / "esc").symlink_to(outside)
    (own / "up").symlink_to(tmp_path)
    (own / "file").write_text("mine\n")
    return own, outside


@pytest.mark.parametrize(("name", "path", "refused"), [
    ("rm", "esc/victim", True),  # rm -rf own/esc/victim would remove outside/victim
    ("rm", "esc", False),  # the link itself: rm does not follow it
    ("rm", "file", False),
    ("rm", "up/own", True),  # the directory itself, reached through a link
    ("rm", "up/outside/victim", True),
    ("rm", "", True),  # the root itself
    ("rm", "esc/..", True),  # not normalised: .. after a symlink is the symlink's parent's, not ours
    ("ls", "esc", True),  # ls follows a symlink to a directory named on its command line
    ("ls", "esc/victim", True),
    ("ls", "", False),
    ("ls", "file", False),
    ("ls", "missing/x", False),
    ("du", "up/outside", True),
])
def test_confine_resolves_symlinks(escape: tuple[Path, Path], name: str, path: str, refused: bool) -> None:
    own, _outside = escape
    operand = str(own / path) if path else str(own)
    if path.endswith(".."):
        operand = f"{own}/{path}"
    refusal = instance_init.confine([name, "-rf", operand], [2], [str(own)], remove=name == "rm")
    assert (refusal is not None) == refused, refusal
    if refused:
        assert refusal.startswith("refused:") and operand in refusal


def run(hosts: HostManager, command: str, **kwargs: object) -> str:
    return asyncio.run(execute.run(execute.parse(command, hosts.own_dirs), hosts, 7, **kwargs))


@pytest.fixture
def loopback(tmp_path: Path) -> tuple[HostManager, Path, Path]:
    """A loopback-mode instance 7 whose workspace has ``esc`` -> a directory outside with a file in it."""
    hosts = HostManager(tmp_path / "state", mode="loopback")
    workspace = hosts.instance_dir(7) / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "keep.txt").write_text("hi\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("must survive\n")
    (workspace / "esc").symlink_to(outside)
    return hosts, workspace, outside


def test_loopback_execute_does_not_follow_a_symlink_out(loopback: tuple[HostManager, Path, Path]) -> None:
    hosts, workspace, outside = loopback
    for command in ("rm -rf /workspace/esc/victim", "ls /workspace/esc", "du -a /workspace/esc/victim"):
        out = run(hosts, command)
        assert out.startswith("vastsim: refused:") and "not the instance's own" in out, (command, out)
        assert (outside / "victim").read_text() == "must survive\n", command
    # What is the instance's own still works: the link itself goes, what it points to stays.
    assert run(hosts, "ls") == "esc\nkeep.txt\n"  # no path: the workspace
    # A trailing slash would make rm -r empty the directory the link points to; the path is normalised.
    assert run(hosts, "rm -r /workspace/esc/") == ""
    assert not os.path.lexists(workspace / "esc") and (outside / "victim").exists()
    assert run(hosts, "ls /workspace") == "keep.txt\n"


def test_execute_does_not_run_when_proceed_objects(loopback: tuple[HostManager, Path, Path]) -> None:
    hosts, workspace, _outside = loopback
    assert run(hosts, "rm /workspace/keep.txt", proceed=lambda: "the instance is starting") == (
        "vastsim: the instance is starting\n")
    assert (workspace / "keep.txt").exists()
    with pytest.raises(HostError, match="not the instance"):
        asyncio.run(hosts.run_in_view(7, ["rm", "/etc/x"], paths=[1], remove=True, timeout=5))


@pytest.fixture
def sim_market(tmp_path: Path) -> market.Market:
    state = tmp_path / "state"
    state.mkdir()
    return market.Market(state, speed=100.0, hosts=HostManager(state, mode="loopback"))


def rent(sim: market.Market) -> Instance:
    account = next(iter(sim.state.accounts.values()))
    offer = next(iter(sim.catalog.offers))
    instance, _started = sim.create_instance(account, offer, {"image": "pytorch/pytorch", "disk": 10})
    return instance


@pytest.mark.parametrize("waiting", ["queued", "scheduling", "outbid"])
def test_execute_does_not_run_once_the_instance_starts_loading(sim_market: market.Market, waiting: str) -> None:
    instance = rent(sim_market)
    account = next(iter(sim_market.state.accounts.values()))
    workspace = sim_market.hosts.instance_dir(instance.id) / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "data").write_text("the host will mount this\n")
    instance.phase, instance.intended_status = waiting, "running"  # stopped, waiting for its GPUs

    async def scenario() -> str:
        token, _path = sim_market.execute(account, instance.id, {"command": "rm /workspace/data"})
        # The GPUs free up before the command gets to run: the instance starts loading (_try_schedule).
        instance.phase = "loading"
        await sim_market.host_sync.ops[instance.id]
        return sim_market.instance_io.results[token].text or ""

    out = asyncio.run(scenario())
    assert "the instance is starting; the command did not run" in out, out
    assert (workspace / "data").exists()
    for phase in ("loading", "stopping", "running"):
        instance.phase = phase
        with pytest.raises(VastError, match="only avail on stopped"):
            sim_market.execute(account, instance.id, {"command": "ls"})


def test_results_are_bounded(sim_market: market.Market, monkeypatch: pytest.MonkeyPatch) -> None:
    instance = rent(sim_market)
    account = next(iter(sim_market.state.accounts.values()))
    tokens = [sim_market.request_logs(account, instance.id, {}) for _ in range(500)]
    assert len(sim_market.instance_io.results) < len(tokens)
    assert len(sim_market.instance_io.results) == instance_io.RESULTS_KEPT
    assert list(sim_market.instance_io.results) == tokens[-instance_io.RESULTS_KEPT:]  # the newest
    ready = sim_market.instance_io.results[tokens[-1]].ready_at
    monkeypatch.setattr(instance_io.time, "time", lambda: ready + 1)
    assert sim_market.result_text(tokens[-1]) is not None
    later = ready + instance_io.RESULT_TTL_S + 1
    monkeypatch.setattr(instance_io.time, "time", lambda: later)
    assert sim_market.result_text(tokens[-1]) is None, "an expired result is gone even before the next request"
    fresh = sim_market.request_logs(account, instance.id, {})
    assert list(sim_market.instance_io.results) == [fresh]  # the others expired
