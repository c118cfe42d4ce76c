"""Vast's constrained ``execute`` (``PUT /api/v0/instances/command/{id}/``) on a stopped instance.

Vast allows one ``ls``, ``rm`` or ``du`` of at most 512 characters, on a *stopped* instance only
(reference §6, §9.13); it runs it against the container's files and uploads the output to the
result URL, whose ``writeable_path`` is the host-side prefix the CLI strips from it. Here the
command runs without a shell, where the instance's files are:

* namespace mode (root): in fresh private mount, PID, UTS and network namespaces that mount the
  instance's disk image on ``/workspace`` and its own ``/root`` and ``/tmp``, the view it has when
  it runs (``instance_init.py`` builds both), from ``/``;
* loopback mode: the instance's only private directory is its workspace, so operands under
  ``/workspace`` are rewritten to it, and ``writeable_path`` strips the prefix again.

Relative paths are relative to ``/``, like the CLI's examples (``rm -r home/x``). ``rm`` may only
remove what belongs to the instance: paths inside ``/workspace`` (and ``/root``, ``/tmp`` in
namespace mode), since everything else is the machine's own file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import posixpath
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from mlops_vast.sim import instance_init

COMMANDS = ("ls", "rm", "du")
MAX_CHARS = 512
TIMEOUT = 8.0  # the CLI polls the result URL for about 9 s
OUTPUT_LIMIT = 256 * 1024
SHELL_SYNTAX = frozenset(";&|<>`$\n")
# GNU options that take the next word as their value, so that word is not a path.
_VALUE_OPTIONS = {
    "ls": ({"-I", "-T", "-w"},
           {"--block-size", "--hide", "--ignore", "--format", "--indicator-style", "--quoting-style", "--sort",
            "--tabsize", "--time", "--time-style", "--width"}),
    "du": ({"-B", "-d", "-t", "-X"},
           {"--block-size", "--max-depth", "--threshold", "--exclude", "--exclude-from", "--files0-from",
            "--time-style"}),
    "rm": (set(), set()),
}


class CommandError(ValueError):
    """A command Vast would refuse (answered with 400 invalid_args)."""


@dataclass
class Command:
    words: list[str]
    operands: list[int]  # indices of the words that are paths, made absolute

    def argv(self, mode: str, directory: Path) -> list[str]:
        """The argv to run for an instance whose files are in ``directory``."""
        words = list(self.words)
        if mode != "namespace":
            for index in self.operands:
                if words[index] == "/workspace" or _inside(words[index], "/workspace"):
                    words[index] = str(directory) + words[index]
        return words


def parse(command: object, mode: str) -> Command:
    """Check a command as Vast does and find its path operands; CommandError says what is wrong."""
    allowed = f"Allowed: one ls, rm or du command, without shell syntax, of {MAX_CHARS} characters at most."
    if not isinstance(command, str) or not command.strip():
        raise CommandError(f"command is required. {allowed}")
    if len(command) > MAX_CHARS:
        raise CommandError(f"command is {len(command)} characters long. {allowed}")
    if SHELL_SYNTAX & set(command):
        raise CommandError(f"Invalid command {command!r}. {allowed}")
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise CommandError(f"Invalid command {command!r}: {exc}.") from None
    if not words or words[0] not in COMMANDS:
        raise CommandError(f"Invalid command {command!r}. {allowed}")
    short, long = _VALUE_OPTIONS[words[0]]
    roots = ("/workspace", "/root", "/tmp") if mode == "namespace" else ("/workspace",)
    operands, only_operands, value_next = [], False, False
    for index in range(1, len(words)):
        word = words[index]
        if value_next:
            value_next = False
        elif not only_operands and word == "--":
            only_operands = True
        elif not only_operands and word.startswith("-") and word != "-":
            if word.startswith("--"):
                value_next = "=" not in word and word in long
            else:
                # A cluster such as -sh or -d2: an option with a value takes the rest, or the next word.
                at = next((i for i, letter in enumerate(word[1:], 1) if f"-{letter}" in short), None)
                value_next = at == len(word) - 1
        else:
            path = posixpath.normpath("/" + word.lstrip("/"))
            if words[0] == "rm" and not any(_inside(path, root) for root in roots):
                raise CommandError(f"rm may only remove the instance's own files, inside {' or '.join(roots)}: "
                                   f"{word!r} is {path}.")
            words[index] = path
            operands.append(index)
    return Command(words, operands)


def _inside(path: str, root: str) -> bool:
    return path.startswith(root + "/")


async def run(command: Command, *, mode: str, directory: Path, state_dir: Path, instance_id: int,
              timeout: float = TIMEOUT) -> str:
    """Run the command on the stopped instance's files and return its output (stdout and stderr)."""
    if not directory.is_dir():
        return ""  # never booted: nothing is on its disk yet
    argv = command.argv(mode, directory)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    if mode == "namespace":
        image = directory / "disk.img"
        if not image.exists():
            return ""
        if not await _disk_released(image):
            return "vastsim: the instance's disk is still attached; try again.\n"
        for path in ("/workspace", "/run/vastsim"):
            Path(path).mkdir(parents=True, exist_ok=True)
        spec_path = directory / "etc" / "execute.json"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({
                "hostname": f"C.{instance_id}",
                "disk_image": str(image),
                "etc_dir": str(directory / "etc"),
                "bin_dir": str(directory / "bin"),
                "tmp_dir": str(directory / "tmp"),
                "home_dir": str(directory / "home"),
                "hide": [str(state_dir.resolve())],
                "env": env,
                "exec": argv,
            }, handle)
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
        argv = ["unshare", "--mount", "--uts", "--pid", "--net", "--fork", "--kill-child", "--mount-proc",
                "--propagation", "private", python, "-I", instance_init.__file__, str(spec_path)]
    process = await asyncio.create_subprocess_exec(
        *argv, cwd="/", env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, preexec_fn=_die_with_parent, start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return f"vastsim: {command.words[0]} did not finish within {timeout:g} s and was killed.\n"
    return out[:OUTPUT_LIMIT].decode(errors="replace")


async def _disk_released(image: Path) -> bool:
    # A stopped instance's mount namespace may still be unwinding; never mount one image twice.
    for _ in range(100):
        process = await asyncio.create_subprocess_exec(
            "losetup", "-j", str(image), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await process.communicate()
        if not out.strip():
            return True
        await asyncio.sleep(0.05)
    return False


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
