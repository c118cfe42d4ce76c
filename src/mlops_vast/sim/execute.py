"""Vast's constrained ``execute`` (``PUT /api/v0/instances/command/{id}/``) on a stopped instance.

Vast allows one ``ls``, ``rm`` or ``du`` of at most 512 characters, on a *stopped* instance only
(reference §6, §9.13); it runs it against the container's files and uploads the output to the
result URL, whose ``writeable_path`` is the host-side prefix the CLI strips from it. Here the
command runs without a shell, in ``/workspace``, where the instance's files are
(``HostManager.run_in_view``):

* namespace mode (root): in fresh private mount, PID, UTS and network namespaces that mount the
  instance's disk image on ``/workspace`` and its own ``/root`` and ``/tmp``, the view it has when
  it runs (``instance_init.py`` builds both);
* loopback mode: the instance's only private directory is its workspace, so operands under
  ``/workspace`` are rewritten to it, and ``writeable_path`` strips the prefix again.

Relative paths are relative to ``/``, like the CLI's examples (``rm -r home/x``). Everything but the
instance's own directories (``/workspace``, and ``/root``, ``/tmp`` in namespace mode) is the
machine's file system, so every path operand must lie inside them: here, as written (400
otherwise), and where the command runs, with its symlinks resolved (``instance_init.confine``; the
output says why it did not run). Options that read other files (``du --files0-from``, ``-X``) or
follow every symlink (``-L``) are refused.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from mlops_vast.sim.hosts import HostError, HostManager

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
# Options that read files named by their value (du's list of paths or of patterns), or follow every
# symlink they meet (out of the instance's directories): (short, long). GNU takes any unambiguous
# prefix of a long option, so a prefix of one of these is refused too, unless it is another option.
_REFUSED_OPTIONS = {
    "ls": ({"-L"}, {"--dereference"}),
    "du": ({"-L", "-X"}, {"--dereference", "--exclude-from", "--files0-from"}),
    "rm": (set(), set()),
}
_OTHER_OPTIONS = {"--exclude", "--dereference-args", "--dereference-command-line",
                  "--dereference-command-line-symlink-to-dir"}
_REFUSED_WHY = "it reads files that need not be the instance's own (a list of them, or every symlink's target)."


class CommandError(ValueError):
    """A command Vast would refuse (answered with 400 invalid_args)."""


@dataclass
class Command:
    words: list[str]
    operands: list[int]  # indices of the words that are paths, made absolute


def parse(command: object, roots: tuple[str, ...]) -> Command:
    """Check a command as Vast does and find its path operands; CommandError says what is wrong.

    ``roots`` are the instance's own directories (``HostManager.own_dirs``): every path must lie inside one.
    """
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
    name = words[0]
    short, long = _VALUE_OPTIONS[name]
    refused_short, refused_long = _REFUSED_OPTIONS[name]
    operands, only_operands, value_next = [], False, False
    for index in range(1, len(words)):
        word = words[index]
        if value_next:
            value_next = False
        elif not only_operands and word == "--":
            only_operands = True
        elif not only_operands and word.startswith("-") and word != "-":
            if word.startswith("--"):
                option = word.split("=", 1)[0]
                others = (long | _OTHER_OPTIONS) - refused_long
                if option not in others and any(refused.startswith(option) for refused in refused_long):
                    raise CommandError(f"{name} {option} is not allowed: {_REFUSED_WHY}")
                value_next = "=" not in word and word in long
            else:
                # A cluster such as -sh or -d2: an option with a value takes the rest, or the next word.
                at = next((i for i, letter in enumerate(word[1:], 1) if f"-{letter}" in short), len(word) - 1)
                if refused := [f"-{letter}" for letter in word[1:at + 1] if f"-{letter}" in refused_short]:
                    raise CommandError(f"{name} {refused[0]} is not allowed: {_REFUSED_WHY}")
                value_next = at == len(word) - 1 and f"-{word[-1]}" in short
        else:
            path = posixpath.normpath("/" + word.lstrip("/"))
            # rm must leave the directories themselves (mount points); ls and du may look at them.
            if not any(_inside(path, root) or (name != "rm" and path == root) for root in roots):
                raise CommandError(f"{name} may only touch the instance's own files, inside {' or '.join(roots)}: "
                                   f"{word!r} is {path}.")
            words[index] = path
            operands.append(index)
    return Command(words, operands)


def _inside(path: str, root: str) -> bool:
    return path.startswith(root + "/")


async def run(command: Command, hosts: HostManager, instance_id: int, *,
              proceed: Callable[[], str | None] | None = None, timeout: float = TIMEOUT) -> str:
    """Run the command on the stopped instance's files and return its output (stdout and stderr), or why not.

    ``proceed``, asked right before it runs, may still refuse it (the instance is starting meanwhile).
    """
    try:
        out = await hosts.run_in_view(instance_id, command.words, paths=command.operands,
                                      remove=command.words[0] == "rm", timeout=timeout, proceed=proceed)
    except TimeoutError:
        return f"vastsim: {command.words[0]} did not finish within {timeout:g} s and was killed.\n"
    except HostError as exc:
        return f"vastsim: {exc}\n"
    return out[:OUTPUT_LIMIT].decode(errors="replace")
