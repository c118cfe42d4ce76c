"""Run the official ``vastai`` CLI (pinned 1.9.1) against a simulator, hermetically.

Each ``VastCli`` has its own HOME / XDG dirs, so the CLI's caches (gpu names, ``vast_role``,
``ssh_<id>.json``) and key files never leak between tests or from the user's account.
The CLI exits 0 on HTTP errors, so callers assert on output, not on exit codes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VASTAI = REPO / ".venv" / "bin" / "vastai"
# Variables of the caller's environment that could point the CLI elsewhere or at a real key.
_DROPPED = ("VAST_", "VASTAI_", "XDG_", "HOME", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")
SSH_URL = re.compile(r"^(ssh|scp)://(?P<user>[^@\s]+)@(?P<host>[^:\s]+):(?P<port>\d+)$", re.MULTILINE)


@dataclass
class VastCli:
    url: str
    home: Path
    api_key: str | None = None
    timeout: float = 60.0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)}
        env.update({
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "VAST_URL": self.url,
            "VASTAI_NO_UPDATE_CHECK": "1",
            "COLUMNS": "300",  # wide enough that the tables hide no column
            "TERM": "dumb",
        })
        if self.api_key is not None:
            env["VAST_API_KEY"] = self.api_key
        return env

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``vastai --url URL ARGS``; fails the test if the CLI crashed with a traceback."""
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [str(VASTAI), "--url", self.url, *args]
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env(), cwd=self.home,
                                stdin=subprocess.DEVNULL, timeout=timeout or self.timeout)
        assert "Traceback (most recent call last)" not in result.stderr + result.stdout, (
            f"vastai {' '.join(args)} crashed:\n{result.stdout}\n{result.stderr}")
        return result

    def raw(self, *args: str, timeout: float | None = None) -> Any:
        """Run with ``--raw`` and return the JSON it printed on stdout."""
        result = self.run(*args, "--raw", timeout=timeout)
        try:
            return json.loads(result.stdout)
        except ValueError:
            raise AssertionError(f"vastai {' '.join(args)} --raw printed no JSON (rc {result.returncode}):\n"
                                 f"stdout: {result.stdout!r}\nstderr: {result.stderr!r}") from None

    def sent_body(self, *args: str) -> Any:
        """The JSON body the CLI would send for ARGS (from ``--curl``, which sends nothing)."""
        if not (self.home / ".config" / "vastai" / "vast_role").exists():
            # The first authenticated command in a config dir detects the role first; --curl would show that.
            self.run("show", "user", "--raw")
        result = self.run(*args, "--curl")
        tokens = shlex.split(result.stdout)
        assert "-d" in tokens, f"--curl showed no request body: {result.stdout!r} {result.stderr!r}"
        return json.loads(tokens[tokens.index("-d") + 1])

    def ssh_url(self, instance_id: int) -> tuple[str, str, int]:
        """``vastai ssh-url ID`` parsed into (user, host, port)."""
        result = self.run("ssh-url", str(instance_id))
        match = SSH_URL.search(result.stdout)
        assert match, f"ssh-url printed no URL: {result.stdout!r} {result.stderr!r}"
        return match["user"], match["host"], int(match["port"])
