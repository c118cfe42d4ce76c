"""The simulator's ``execute`` command check: what Vast allows (ls, rm, du; 512 characters) and what rm may touch."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops_vast.sim import execute


@pytest.mark.parametrize(("command", "words"), [
    ("ls", ["ls"]),
    ("ls -l workspace", ["ls", "-l", "/workspace"]),
    ("du -d 2 -h /workspace/a/../b", ["du", "-d", "2", "-h", "/workspace/b"]),
    ("du -hd 1 workspace", ["du", "-hd", "1", "/workspace"]),
    ("du --max-depth 1 --block-size=1K workspace", ["du", "--max-depth", "1", "--block-size=1K", "/workspace"]),
    ("ls -I '*.tmp' '/workspace/a b'", ["ls", "-I", "*.tmp", "/workspace/a b"]),
    ("rm -rf /workspace/x root/.cache /tmp/t", ["rm", "-rf", "/workspace/x", "/root/.cache", "/tmp/t"]),
    ("rm -- -odd", None),  # /-odd: not the instance's
])
def test_parse_finds_the_paths(command: str, words: list[str] | None) -> None:
    if words is None:
        with pytest.raises(execute.CommandError, match="only remove"):
            execute.parse(command, "namespace")
        return
    assert execute.parse(command, "namespace").words == words


@pytest.mark.parametrize("command", [
    None, "", "  ", 42, "cat /etc/passwd", "ls; reboot", "ls && id", "ls | sh", "ls > /workspace/x", "ls `id`",
    "ls $(id)", "ls\nid", "ls 'unbalanced", "lsblk", "ls " + "a" * 510,
    "rm -rf /", "rm -r home/x", "rm /etc/hostname", "rm /workspace", "rm /workspace/../etc/x",
])
def test_parse_refuses(command: object) -> None:
    with pytest.raises(execute.CommandError):
        execute.parse(command, "namespace")


def test_loopback_mode_maps_the_workspace_and_keeps_rm_inside_it(tmp_path: Path) -> None:
    command = execute.parse("du -s /workspace workspace/sub /etc", "loopback")
    assert command.argv("loopback", tmp_path) == ["du", "-s", f"{tmp_path}/workspace", f"{tmp_path}/workspace/sub",
                                                  "/etc"]
    assert command.argv("namespace", tmp_path) == ["du", "-s", "/workspace", "/workspace/sub", "/etc"]
    with pytest.raises(execute.CommandError, match="/workspace"):
        execute.parse("rm /tmp/x", "loopback")  # loopback instances share the machine's /tmp
