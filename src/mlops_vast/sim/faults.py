"""Faults armed through ``POST /_sim/faults``.

Two families:

* HTTP faults (``kind: http``) answer matching requests with an error instead of
  the real handler, a given number of times. They reproduce Vast's rate limiting
  (429 with and without ``Retry-After``, plain-text or JSON bodies) and 5xx storms.
* Host faults change what a rented machine does: they target an instance, a
  machine, an offer, a label or "the next instance created", and are applied when
  an instance is created on the target (or at once to a live instance).
"""

from __future__ import annotations

import fnmatch
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

HTTP_KIND = "http"
HOST_KINDS = frozenset(
    {
        "stuck_loading",  # the image pull never finishes: loading forever, no SSH
        "host_error",  # the container fails to start: cur_state stopped, status_msg "Error: ..."
        "offline",  # the machine disconnects: actual_status offline, SSH unreachable
        "slow_link",  # the instance's link is shaped with tc to `kbytes_per_s`
        "wrong_gpu",  # nvidia-smi reports `gpu_name` (an nvidia-smi name) instead of the rented GPU
        "small_disk",  # /workspace is `disk_gb` instead of what was rented
        "driver_error",  # nvidia-smi fails as with a broken driver
    }
)
MARKET_KINDS = frozenset(
    {
        "take_offer",  # another tenant rents the offer's GPUs (released when the fault is cleared)
        "outbid",  # a competing bid of `price` on `machine_id` preempts lower bids there
    }
)
TARGET_KEYS = ("instance_id", "machine_id", "offer_id", "label")
BODY_STYLES = frozenset({"json", "detail", "text", "vast"})


class FaultError(ValueError):
    """An invalid fault specification (answered with 400)."""


@dataclass
class Fault:
    id: int
    kind: str
    # http
    endpoint: str | None = None
    status: int | None = None
    count: int | None = None
    retry_after: float | None = None
    body: str = "vast"
    after: bool = False  # run the real handler first (its effects happen), then answer with the error
    # targets
    instance_id: int | None = None
    machine_id: int | None = None
    offer_id: int | None = None
    label: str | None = None
    next: bool = False
    # parameters
    kbytes_per_s: float | None = None
    gpu_name: str | None = None
    disk_gb: float | None = None
    price: float | None = None
    at_rent: bool = False  # take_offer: still listed by search, taken when someone tries to rent it
    fired: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value not in (None, {}, False)}

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count


def _number(spec: dict[str, Any], key: str, *, minimum: float = 0.0) -> float | None:
    if spec.get(key) is None:
        return None
    try:
        value = float(spec[key])
    except (TypeError, ValueError) as exc:
        raise FaultError(f"{key} must be a number, got {spec[key]!r}") from exc
    if value < minimum:
        raise FaultError(f"{key} must be >= {minimum}, got {value}")
    return value


def parse_fault(fault_id: int, spec: Any) -> Fault:
    """Validate a fault body and build the Fault; errors name the bad field."""
    if not isinstance(spec, dict):
        raise FaultError("a fault is a JSON object with at least 'kind'")
    kind = spec.get("kind")
    known = {HTTP_KIND} | HOST_KINDS | MARKET_KINDS
    if kind not in known:
        raise FaultError(f"unknown fault kind {kind!r}; known kinds: {', '.join(sorted(known))}")
    count = _number(spec, "count", minimum=1)
    fault = Fault(id=fault_id, kind=kind, count=int(count) if count is not None else None)
    if kind == HTTP_KIND:
        endpoint = spec.get("endpoint")
        if not isinstance(endpoint, str) or " " not in endpoint.strip():
            raise FaultError("http faults need 'endpoint' as 'METHOD /path/pattern', e.g. 'PUT /api/v0/asks/*'")
        status = _number(spec, "status")
        if status is None or not 400 <= status <= 599:
            raise FaultError("http faults need 'status' between 400 and 599")
        body = spec.get("body", "vast")
        if body not in BODY_STYLES:
            raise FaultError(f"body must be one of {sorted(BODY_STYLES)}")
        fault.endpoint = " ".join(endpoint.split())
        fault.status = int(status)
        fault.retry_after = _number(spec, "retry_after")
        fault.body = body
        fault.after = bool(spec.get("after", False))
        fault.count = fault.count or 1
        return fault

    for key in ("instance_id", "machine_id", "offer_id"):
        value = _number(spec, key)
        setattr(fault, key, int(value) if value is not None else None)
    if spec.get("label") is not None:
        fault.label = str(spec["label"])
    fault.next = bool(spec.get("next", False))
    if not fault.next and all(getattr(fault, key) is None for key in TARGET_KEYS):
        raise FaultError(f"{kind} needs a target: one of {', '.join(TARGET_KEYS)} or next: true")
    if kind == "slow_link":
        fault.kbytes_per_s = _number(spec, "kbytes_per_s", minimum=1)
        if fault.kbytes_per_s is None:
            raise FaultError("slow_link needs 'kbytes_per_s' (e.g. 170 for 170 KB/s)")
    elif kind == "wrong_gpu":
        fault.gpu_name = str(spec.get("gpu_name") or "NVIDIA GeForce RTX 3060")
    elif kind == "small_disk":
        fault.disk_gb = _number(spec, "disk_gb", minimum=0.1) or 2.0
    elif kind == "take_offer":
        if fault.offer_id is None:
            raise FaultError("take_offer needs 'offer_id'")
        fault.at_rent = bool(spec.get("at_rent", False))
    elif kind == "outbid":
        fault.price = _number(spec, "price", minimum=0.001)
        if fault.machine_id is None or fault.price is None:
            raise FaultError("outbid needs 'machine_id' and 'price' (the competing bid in $/h)")
    return fault


class FaultBook:
    """The armed faults, with their firing counts."""

    def __init__(self, faults: list[Fault] | None = None, next_id: int = 1) -> None:
        self.faults: list[Fault] = list(faults or [])
        self._ids = itertools.count(next_id)

    def arm(self, spec: Any) -> Fault:
        fault = parse_fault(next(self._ids), spec)
        self.faults.append(fault)
        return fault

    def clear(self, fault_id: int | None = None) -> list[Fault]:
        removed = [f for f in self.faults if fault_id is None or f.id == fault_id]
        self.faults = [f for f in self.faults if f not in removed]
        return removed

    def take_http(self, method: str, path: str) -> Fault | None:
        """The first live HTTP fault matching this request, counted as fired."""
        normalised = "/" + path.strip("/") + "/"
        for fault in self.faults:
            if fault.kind != HTTP_KIND or fault.exhausted or fault.endpoint is None:
                continue
            want_method, pattern = fault.endpoint.split(" ", 1)
            pattern = "/" + pattern.strip("/") + "/"
            if want_method.upper() not in (method.upper(), "*"):
                continue
            if fnmatch.fnmatchcase(normalised, pattern) or fnmatch.fnmatchcase(normalised, pattern + "*/"):
                fault.fired += 1
                return fault
        return None

    def host_faults_for(
        self, *, instance_id: int, machine_id: int, offer_id: int, label: str | None, at_create: bool
    ) -> list[Fault]:
        """Host faults that apply to an instance; `next` faults match only at create and fire once."""
        hits: list[Fault] = []
        for fault in self.faults:
            if fault.kind not in HOST_KINDS or fault.exhausted:
                continue
            matched = (
                (fault.instance_id is not None and fault.instance_id == instance_id)
                or (fault.machine_id is not None and fault.machine_id == machine_id)
                or (fault.offer_id is not None and fault.offer_id == offer_id)
                or (fault.label is not None and label is not None and fault.label == label)
                or (fault.next and at_create)
            )
            if matched:
                fault.fired += 1
                hits.append(fault)
        if at_create:
            # A `next` fault is meant for one instance: retire it once it has one.
            self.faults = [f for f in self.faults if not (f.next and f in hits)]
        return hits

    def of_kind(self, kind: str) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind and not f.exhausted]

    def to_state(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.faults]

    @classmethod
    def from_state(cls, rows: list[dict[str, Any]]) -> FaultBook:
        faults = [Fault(**row) for row in rows]
        return cls(faults, next_id=max((f.id for f in faults), default=0) + 1)
