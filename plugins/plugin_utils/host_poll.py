# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one poll of the watch asks the rented host (one POSIX sh command over the task's own
connection), and how its answer is read. Standard library only; no I/O.

Private to the collection.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field

# Bytes of new log read per poll at most; more than this since the last poll is skipped (a gap).
LOG_CHUNK = 256 * 1024
# Relative to the run directory: the start time of the container's first process when the run was launched
# (the train role writes it).
BOOT_MARK = ".mlops/boot"
# Relative to the run directory: who stopped the run from outside it (the teardown role writes it before its SIGTERM;
# the train role removes it at each launch).
STOPPED_MARK = ".mlops/stopped-by"


# --------------------------------------------------------------------------------- the poll script

@dataclass
class PollRequest:
    run_dir: str
    log_file: str
    exit_code_file: str
    tmux_session: str
    marker: str
    log_offset: int = 0
    chunk: int = LOG_CHUNK
    metrics_offset: int = 0
    gpu_util: bool = True
    metrics_file: str | None = None
    status_file: str | None = None  # read STATUS.md this time
    started_file: str | None = None  # read the run's start (STARTED_AT) this time
    # Wait on the host up to this long for the exit code file before answering: the end of a run is then seen
    # within a quarter of a second instead of at the next poll, for the same number of round trips.
    wait_exit_s: float = 0.0


def shell_path(path: str) -> str:
    """A path quoted for sh, with a leading ``~/`` still meaning the remote user's home."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def poll_script(req: PollRequest) -> str:
    """One POSIX sh command that gathers everything a poll needs; the log's bytes come last."""
    q = shell_path
    m = req.marker
    lines = [
        f"M={q(m)}; R={q(req.run_dir)}; L={q(req.log_file)}; E={q(req.exit_code_file)}; "
        f"S={shlex.quote(req.tmux_session)}",
        'cd "$R" 2>/dev/null || echo "$M nodir"',
        # Quarter-second naps where sleep takes fractions (GNU, BusyBox), whole seconds where it does not.
        *([f'N={max(1, round(4 * req.wait_exit_s))}; while [ ! -f "$E" ] && [ "$N" -gt 0 ]; '
           'do if sleep 0.25 2>/dev/null; then N=$((N - 1)); else sleep 1; N=$((N - 4)); fi; done']
          if req.wait_exit_s > 0 else []),
        'echo "$M now $(date +%s)"',
        # The session first, then the exit code: the wrapper writes EXIT_CODE before its session ends, so a session
        # found gone has left its code (read the other way round, a run ending in between looked like a crash).
        'if command -v tmux >/dev/null 2>&1; then if tmux has-session -t "=$S" 2>/dev/null; '
        'then echo "$M tmux 1"; else echo "$M tmux 0"; fi; else echo "$M tmux -"; fi',
        'if [ -f "$E" ]; then echo "$M exit $(head -c 64 "$E" | tr -d \' \\t\\r\\n\')"; fi',
        # Written by a teardown from outside this run (teardown.yml, mlops-vast teardown, a sweep's stop) just before
        # it stops the trainer: its SIGTERM is not the run's crash.
        f'if [ -f {STOPPED_MARK} ]; then echo "$M stoppedby $(head -c 200 {STOPPED_MARK} | tr \'\\n\' \' \')"; fi',
        # When the container's first process started (field 22 of /proc/1/stat, counted after the command name,
        # which may hold spaces), now and as the launch recorded it: a restarted container has a new one.
        f'echo "$M boot $(sed \'s/.*) //\' /proc/1/stat 2>/dev/null | cut -d\' \' -f20)'
        f' $(head -c 32 {BOOT_MARK} 2>/dev/null)"',
    ]
    if req.gpu_util:
        lines.append(
            'if command -v nvidia-smi >/dev/null 2>&1; then T=; command -v timeout >/dev/null 2>&1 && T="timeout 10"; '
            'echo "$M gpu $($T nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null '
            '| tr \'\\n\' \' \')"; fi')
    if req.started_file:
        lines.append(f'if [ -f {q(req.started_file)} ]; then echo "$M started $(head -n 1 {q(req.started_file)} '
                     '| head -c 64)"; fi')
    if req.status_file:
        lines.append(f'if [ -f {q(req.status_file)} ]; then echo "$M begin status"; head -c 8192 {q(req.status_file)}; '
                     'echo; echo "$M end status"; fi')
    if req.metrics_file:
        # Followed from where the last poll stopped, as the log is, so that every record counts (a burst of NaN
        # records between two polls is a streak), not only the newest. Its bytes end just before the log line.
        lines += _follow(f"F={q(req.metrics_file)}", "F", "Y", "P", req.metrics_offset, req.chunk, "metrics")
        lines[-1] += "; echo"
    lines += _follow("", "L", "Z", "O", req.log_offset, req.chunk, "log")
    # No newline at the end: Ansible appends " && sleep 0" to the last line.
    return "\n".join(lines)


def _follow(setup: str, file: str, size: str, start: str, offset: int, chunk: int, name: str) -> list[str]:
    """sh lines that print ``$M <name> <size> <start>`` and the file's bytes from ``offset`` (from the start if
    the file shrank, the last ``chunk`` bytes if more came)."""
    return [
        f'{setup}{"; " if setup else ""}{size}=$(stat -c %s "${file}" 2>/dev/null || echo -1); {start}={int(offset)}',
        f'[ "${size}" -ge 0 ] && [ "${size}" -lt "${start}" ] && {start}=0',
        f'[ $(({size} - {start})) -gt {int(chunk)} ] && {start}=$(({size} - {int(chunk)}))',
        f'echo "$M {name} ${size} ${start}"',
        f'if [ "${size}" -gt "${start}" ]; then tail -c +$(({start} + 1)) "${file}" '
        f'| head -c $(({size} - {start})); fi',
    ]


@dataclass
class Snapshot:
    ok: bool = False  # the marker lines were there: the script ran
    run_dir_exists: bool = True
    host_now: float | None = None
    exit_code: int | None = None
    exit_code_raw: str | None = None  # EXIT_CODE's content when it is not a number
    tmux: bool | None = None  # None: tmux is not installed
    # The container's first process started at another time than when the run was launched: it restarted.
    restarted: bool = False
    stopped_by: str | None = None  # who stopped the run from outside it (STOPPED_MARK), if anyone did
    gpu_util: list[int] | None = None
    status_text: str | None = None
    started_text: str | None = None
    metrics_size: int | None = None  # None: no metrics file (or none asked for)
    metrics_start: int = 0
    metrics_data: str = ""
    log_size: int | None = None
    log_start: int = 0
    log_data: str = ""
    extra: list[str] = field(default_factory=list)


def parse_poll(stdout: str, marker: str) -> Snapshot:
    snap = Snapshot()
    head, sep, data = _split_log(stdout, marker)
    if sep:
        snap.ok = True
        snap.log_data = data
        head = _split_metrics(head, marker, snap)
    section: str | None = None
    body: list[str] = []
    for line in head.splitlines():
        if not line.startswith(marker + " "):
            if section is not None:
                body.append(line)
            else:
                snap.extra.append(line)
            continue
        words = line[len(marker) + 1:].split(" ", 1)
        key, value = words[0], (words[1] if len(words) > 1 else "").strip()
        if key == "begin":
            section, body = value, []
        elif key == "end":
            text = "\n".join(body).strip("\n")
            if section == "status":
                snap.status_text = text
            section = None
        elif key == "nodir":
            snap.run_dir_exists = False
        elif key == "now":
            snap.host_now = _float(value)
        elif key == "started":
            snap.started_text = value or None
        elif key == "exit":
            if value:
                try:
                    snap.exit_code = int(value)
                except ValueError:
                    snap.exit_code_raw = value[:64]
        elif key == "tmux":
            snap.tmux = {"1": True, "0": False}.get(value)
        elif key == "stoppedby":
            snap.stopped_by = value or "a teardown"
        elif key == "boot":
            marks = value.split()
            snap.restarted = len(marks) == 2 and all(map(_is_int, marks)) and marks[0] != marks[1]
        elif key == "gpu":
            utils = [round(v) for v in (_float(w) for w in value.replace(",", " ").split()) if v is not None]
            snap.gpu_util = utils or None
        elif key == "log":
            snap.log_size, snap.log_start = _size_and_start(value)
    return snap


def _size_and_start(value: str) -> tuple[int | None, int]:
    parts = value.split()
    size = int(parts[0]) if parts and _is_int(parts[0]) else -1
    return (size if size >= 0 else None), (int(parts[1]) if len(parts) > 1 and _is_int(parts[1]) else 0)


def _split_metrics(head: str, marker: str, snap: Snapshot) -> str:
    """Takes the metrics file's bytes (between its line and the log line, which ``head`` ends with) out of
    ``head`` into ``snap``; what is left is read line by line."""
    match = re.search(rf"(?m)^{re.escape(marker)} metrics ([^\n]*)\n", head)
    log_line = re.search(rf"(?m)^{re.escape(marker)} log ", head)
    if not match or not log_line or log_line.start() < match.end():
        return head
    snap.metrics_size, snap.metrics_start = _size_and_start(match.group(1))
    data = head[match.end():log_line.start()]
    snap.metrics_data = data[:-1] if data.endswith("\n") else data  # the newline the script adds
    return head[:match.start()] + head[log_line.start():]


def _split_log(stdout: str, marker: str) -> tuple[str, bool, str]:
    """Everything before the log line, whether it was there, and the log bytes after it."""
    match = re.search(rf"(?m)^{re.escape(marker)} log [^\n]*\n?", stdout)
    if not match:
        return stdout, False, ""
    return stdout[: match.end()], True, stdout[match.end():]


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", text))
