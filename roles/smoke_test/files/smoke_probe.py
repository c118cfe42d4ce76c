"""Run the smoke test's command and measure it, on the rented host (standard library only, Python 3.8+).

    python3 smoke_probe.py --dir SMOKE_DIR --timeout S [--interval S] [--du PATH ...] -- COMMAND...

Writes into SMOKE_DIR:
  smoke.log         the command's output (stdout and stderr), unchanged;
  smoke.stamps      one line per log line: seconds since the start when that line arrived (step times
                    come from these, so the job needs no timestamps of its own);
  smoke.probe.json  exit code, wall seconds, the peak GPU memory nvidia-smi showed per GPU (sampled),
                    the host RAM peak (MemTotal - MemAvailable), swap used, and the disk used under each
                    --du path after the run.
Exit code: the command's (124 when the time limit stopped it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import threading
import time


def meminfo() -> dict:
    values = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _colon, rest = line.partition(":")
                values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values


def gpu_memory_used() -> list:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    rows = []
    for line in done.stdout.decode(errors="replace").splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and all(part.isdigit() for part in parts):
            rows.append((int(parts[0]), int(parts[1])))
    return rows


class Sampler(threading.Thread):
    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.samples = 0
        self.gpu_peak: list = []
        self.gpu_total: list = []
        self.ram_peak = 0
        self.ram_total = 0
        self.swap_peak = 0
        self.swap_start = None

    def sample(self) -> None:
        rows = gpu_memory_used()
        if rows:
            if len(self.gpu_peak) != len(rows):
                self.gpu_peak = [0] * len(rows)
            self.gpu_peak = [max(self.gpu_peak[i], rows[i][0]) for i in range(len(rows))]
            self.gpu_total = [row[1] for row in rows]
        info = meminfo()
        if "MemTotal" in info and "MemAvailable" in info:
            self.ram_total = info["MemTotal"]
            self.ram_peak = max(self.ram_peak, info["MemTotal"] - info["MemAvailable"])
        if "SwapTotal" in info and "SwapFree" in info:
            swap = info["SwapTotal"] - info["SwapFree"]
            self.swap_peak = max(self.swap_peak, swap)
            if self.swap_start is None:
                self.swap_start = swap
        self.samples += 1

    def run(self) -> None:
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)


def du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--du", action="append", default=[])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    os.makedirs(args.dir, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # lines must arrive when printed, or their times lie
    sampler = Sampler(args.interval)
    sampler.start()
    started = time.monotonic()
    timed_out = False
    with open(os.path.join(args.dir, "smoke.log"), "wb") as log, \
            open(os.path.join(args.dir, "smoke.stamps"), "w") as stamps:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)

        def stop() -> None:
            nonlocal timed_out
            timed_out = True
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
                try:
                    os.killpg(child.pid, sig)
                except OSError:
                    return
                try:
                    child.wait(wait)
                    return
                except subprocess.TimeoutExpired:
                    continue

        timer = threading.Timer(args.timeout, stop)
        timer.start()
        assert child.stdout is not None
        for line in iter(child.stdout.readline, b""):
            log.write(line)
            log.flush()
            stamps.write(f"{time.monotonic() - started:.3f}\n")
        code = child.wait()
        timer.cancel()
    seconds = time.monotonic() - started
    sampler.stopped.set()
    sampler.join(15)
    sampler.sample()
    report = {
        # As a shell reports them: a job killed by a signal (the OOM killer's 9) exits 128 + the signal.
        "exit_code": 124 if timed_out else (128 - code if code < 0 else code),
        "seconds": round(seconds, 3),
        "samples": sampler.samples,
        "gpu_mem_used_mib_peak": sampler.gpu_peak,
        "gpu_mem_total_mib": sampler.gpu_total,
        "ram_used_gib_peak": round(sampler.ram_peak / 2**30, 3),
        "ram_total_gib": round(sampler.ram_total / 2**30, 3),
        "swap_used_gib_peak": round(sampler.swap_peak / 2**30, 3),
        "swap_used_gib_start": round((sampler.swap_start or 0) / 2**30, 3),
        "disk_used_gb": {path: round(du(path) / 1e9, 6) for path in args.du},
    }
    with open(os.path.join(args.dir, "smoke.probe.json"), "w") as f:
        json.dump(report, f)
    return report["exit_code"]


if __name__ == "__main__":
    raise SystemExit(main())
