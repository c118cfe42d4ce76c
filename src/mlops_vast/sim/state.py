"""The marketplace's state and where it is kept: one JSON file in the state directory, written
atomically (0600: it holds every account's API key), so a restarted simulator knows what is rented.

``SimContext`` is what every part of the market shares: the state, the catalogue, the hosts, the
speed factor, and ``enter``/``touch``, the two ways state changes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops_vast.sim.catalog import Catalog
from mlops_vast.sim.faults import FaultBook
from mlops_vast.sim.hosts import HostManager
from mlops_vast.sim.models import Account, Instance, SshKey, from_state, to_state

INSTANCE_ID_START = 20_000_001
# Real Vast timings in seconds; the simulator divides them by its speed factor.
REAL_TIMINGS = {
    "provisioning": 3.0,  # actual_status null
    "created": 4.0,
    "loading": 40.0,  # image pull and container start for a cached image
    "start_loading": 8.0,  # restart of a stopped instance
    "stopping": 3.0,
    "rebooting": 8.0,
    "recycling": 6.0,
    "logs_upload": 2.0,  # request_logs result appearing at its URL
}


@dataclass
class SimState:
    """Everything the market keeps across restarts."""

    accounts: dict[str, Account] = field(default_factory=dict)
    ssh_keys: dict[int, SshKey] = field(default_factory=dict)
    instances: dict[int, Instance] = field(default_factory=dict)
    ledger: list[dict[str, Any]] = field(default_factory=list)  # rows of destroyed instances
    faults: FaultBook = field(default_factory=FaultBook)
    next_instance_id: int = INSTANCE_ID_START
    next_key_id: int = 1


class StateStore:
    """Loads and saves ``state.json``; a state dir belongs to the catalogue seed it was built with."""

    def __init__(self, state_dir: Path, seed: int) -> None:
        self.state_dir = state_dir
        self.seed = seed
        self.dirty = True
        self.last_save = 0.0

    @property
    def path(self) -> Path:
        return self.state_dir / "state.json"

    def load(self) -> SimState:
        if not self.path.exists():
            return SimState()
        data = json.loads(self.path.read_text())
        if data.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"state dir {self.state_dir} holds a marketplace built with --seed {data['seed']}; "
                f"use that seed or another --state-dir"
            )
        return SimState(
            accounts={row["api_key"]: from_state(Account, row) for row in data.get("accounts", [])},
            ssh_keys={row["id"]: from_state(SshKey, row) for row in data.get("ssh_keys", [])},
            instances={row["id"]: from_state(Instance, row) for row in data.get("instances", [])},
            ledger=data.get("ledger", []),
            faults=FaultBook.from_state(data.get("faults", [])),
            next_instance_id=data.get("next_instance_id", INSTANCE_ID_START),
            next_key_id=data.get("next_key_id", 1),
        )

    def save(self, state: SimState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "seed": self.seed,
            "accounts": [to_state(a) for a in state.accounts.values()],
            "ssh_keys": [to_state(k) for k in state.ssh_keys.values()],
            "instances": [to_state(i) for i in state.instances.values()],
            "ledger": state.ledger,
            "faults": state.faults.to_state(),
            "next_instance_id": state.next_instance_id,
            "next_key_id": state.next_key_id,
        }
        tmp = self.path.with_suffix(".tmp")
        # Created 0600 from the start: it holds every account's API key.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data))
        os.replace(tmp, self.path)
        self.dirty = False
        self.last_save = time.time()

    def save_if_due(self, state: SimState, now: float) -> None:
        """Save what changed, and at least once a second (billing moves all the time)."""
        if self.dirty or now - self.last_save > 1.0:
            self.save(state)


@dataclass
class SimContext:
    """What the market's parts share."""

    state: SimState
    store: StateStore
    catalog: Catalog
    hosts: HostManager
    speed: float
    public_host: str

    def timing(self, name: str) -> float:
        return REAL_TIMINGS[name] / self.speed

    def touch(self) -> None:
        self.store.dirty = True

    def enter(self, instance: Instance, phase: str, until: float | None, msg: str | None = None) -> None:
        instance.enter(phase, until, msg, time.time())
        self.touch()

    def account_of(self, user_id: int) -> Account | None:
        return next((a for a in self.state.accounts.values() if a.id == user_id), None)
