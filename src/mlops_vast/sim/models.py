"""The simulator's persistent records: accounts, SSH keys, instances, ledger rows, and their phases."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Vast's status vocabulary per internal phase: (actual_status, cur_state).
PHASES: dict[str, tuple[str | None, str]] = {
    "provisioning": (None, "running"),
    "created": ("created", "running"),
    "loading": ("loading", "running"),
    "running": ("running", "running"),
    "stopping": ("running", "stopped"),
    "stopped": ("exited", "stopped"),
    # intended running, GPUs held by someone else: the console's "Scheduling"
    "scheduling": ("created", "stopped"),
    # a start of a stopped instance queued until the GPUs free up: the container stays exited
    "queued": ("exited", "stopped"),
    "rebooting": ("rebooting", "running"),
    "recycling": ("recycling", "running"),
    "host_error": ("created", "stopped"),
    "outbid": ("exited", "stopped"),
    "offline": ("offline", "running"),
}
# Phases in which the instance's GPUs are held (no one else can rent them).
HOLDS_GPUS = frozenset({"provisioning", "created", "loading", "running", "rebooting", "recycling", "offline"})
# Phases in which the GPU part of the price is billed.
GPU_BILLED = frozenset({"running", "rebooting"})
# Phases in which the instance's sshd should be up.
HOST_UP = frozenset({"loading", "running", "rebooting", "recycling"})


@dataclass
class Account:
    id: int
    api_key: str
    email: str
    username: str
    credit: float
    balance: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "username": self.username,
            "fullname": self.username,
            "credit": round(self.credit, 6),
            "balance": round(self.balance, 6),
            "balance_threshold": 0.0,
            "balance_threshold_enabled": False,
            "can_pay": True,
            "has_billing": True,
            "host_agreement_accepted": False,
            "billaddress_country": "US",
            "ssh_key": None,
            "sid": f"sim-{self.id}",
            "key_id": self.id,
            "email_verified": True,
        }


@dataclass
class SshKey:
    id: int
    user_id: int
    key: str
    created_at: float
    instance_id: int | None = None  # set for keys attached to one instance only

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "user_id": self.user_id, "key": self.key, "public_key": self.key,
                "created_at": self.created_at, "deleted_at": None}


@dataclass
class Instance:
    id: int
    user_id: int
    offer_id: int
    machine_id: int
    num_gpus: int
    image: str
    disk: float
    runtype: str
    created_at: float
    gpu_dph: float  # on-demand $/h of the GPUs, or the bid for an interruptible instance
    storage_dph: float  # $/h for the allocated disk
    phase: str = "provisioning"
    phase_until: float | None = None  # wall-clock end of the current phase; None: no deadline
    intended_status: str = "running"
    status_msg: str | None = None
    label: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    onstart: str | None = None
    image_login: str | None = None
    is_bid: bool = False
    proxy_port: int | None = None
    address: str | None = None
    sshd_port: int | None = None
    direct_port: int = 22
    # Docker-style mapping of a direct runtype, "22/tcp" and each -p, to its public port (Market.port_map);
    # {} for proxy-only instances, None until allocated (state saved before it existed).
    ports: dict[str, int] | None = None
    instance_api_key: str = ""
    # Faults and machine defects applied to this instance (kind -> parameter).
    faults: dict[str, Any] = field(default_factory=dict)
    running_since: float | None = None
    running_seconds: float = 0.0
    gpu_cost: float = 0.0
    storage_cost: float = 0.0
    destroyed_at: float | None = None

    def enter(self, phase: str, until: float | None, msg: str | None, now: float) -> None:
        """Move to ``phase`` until the wall-clock time ``until`` (None: no deadline); the GPU meter follows."""
        if self.phase == "running" and phase != "running" and self.running_since is not None:
            self.running_since = None
        if phase == "running" and self.running_since is None:
            self.running_since = now
        self.phase = phase
        self.phase_until = until
        if msg is not None:
            self.status_msg = msg

    @property
    def actual_status(self) -> str | None:
        return PHASES[self.phase][0]

    @property
    def cur_state(self) -> str:
        return PHASES[self.phase][1]

    @property
    def cost(self) -> float:
        return self.gpu_cost + self.storage_cost

    def ledger_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "label": self.label,
            "machine_id": self.machine_id,
            "offer_id": self.offer_id,
            "is_bid": self.is_bid,
            "created_at": self.created_at,
            "running_seconds": round(self.running_seconds, 3),
            "gpu_cost": round(self.gpu_cost, 8),
            "storage_cost": round(self.storage_cost, 8),
            "cost": round(self.cost, 8),
            "destroyed_at": self.destroyed_at,
            "status": "destroyed" if self.destroyed_at else self.phase,
        }


def to_state(record: Any) -> dict[str, Any]:
    return asdict(record)


def from_state(cls: type, row: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in row.items() if key in names})
