"""vastsim for the API and the CLI, as scripts/demo.sh uses it: serving ``<workdir>/state`` (reused when one
already serves it), with the ledger, the machine exclusions and the collection's SSH key in ``<workdir>``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WORKDIR = ".vastsim"


@dataclass
class LocalSim:
    url: str
    api_key: str = field(repr=False)
    workdir: Path
    started: bool  # this process started it (and stops it)
    _process: object | None = field(default=None, repr=False)

    def env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """What a run against it needs in its environment (the key is not among them: it goes in a file)."""
        environ = os.environ if environ is None else environ
        return {
            "VAST_URL": self.url,
            "MLOPS_VAST_LEDGER": environ.get("MLOPS_VAST_LEDGER") or str(self.workdir / "contracts.jsonl"),
            "MLOPS_VAST_EXCLUSIONS": (environ.get("MLOPS_VAST_EXCLUSIONS")
                                      or str(self.workdir / "excluded_machines.json")),
        }

    def stop(self) -> None:
        if self.started and self._process is not None:
            from mlops_vast.sim import harness

            harness.stop(self._process)  # type: ignore[arg-type]


def start(workdir: str | os.PathLike[str] | None = None, speed: float | None = None) -> LocalSim:
    """A simulator serving ``workdir/state``: the one serving it already, or a new one (its own session, so that
    a Ctrl-C in the terminal reaches only the caller, which then tears down through it)."""
    from mlops_vast.sim import harness

    workdir = Path(workdir or DEFAULT_WORKDIR).resolve()
    if workdir.exists() and not workdir.is_dir():
        from mlops_vast.inputs import InputError

        raise InputError(f"{workdir} is a file: vastsim keeps its state in that folder; move the file away")
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "state"
    running = harness.find(state)
    if running is not None and running.url and running.api_key:
        return LocalSim(url=running.url, api_key=running.api_key, workdir=workdir, started=False)
    speed = float(speed if speed is not None else os.environ.get("VASTSIM_SPEED", "20"))
    process = harness.start(state, "--speed", f"{speed:g}", log_path=workdir / "vastsim.log", detach=True)
    return LocalSim(url=process.url, api_key=process.api_key, workdir=workdir, started=True, _process=process)
