"""Faults armed through ``POST /_sim/faults``.

Two families:

* HTTP faults (``kind: http``) answer matching requests with an error instead of
  the real handler, a given number of times. They reproduce Vast's rate limiting
  (429 with and without ``Retry-After``, plain-text or JSON bodies) and 5xx storms.
* Host faults change what a rented machine does: they target an instance, a
  machine, an offer, a label or "the next instance created", and are applied when
  an instance is created on the target (or at once to a live instance).

Two optional extras make a preemption happen when a test wants it:

* ``for_s`` (``offline``, ``outbid``): the fault clears itself that many seconds after it took effect.
* a trigger (host faults and ``outbid``): ``when_log`` (a regex matches the tail of a file on the
  instance) or ``when_partial`` (a directory matching a glob exists without a given file, i.e. a
  checkpoint being written). Until it fires on an instance the fault targets, the fault is *pending*
  and has no effect; then it takes effect as if armed at that moment, once. fault_triggers.py reads
  the instance's files; fault_effects.py evaluates the triggers from the ticker.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import math
import posixpath
import re
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
# "reset": no answer at all, the connection dropped mid-response (a proxy dying, a TCP reset).
BODY_STYLES = frozenset({"json", "detail", "text", "vast", "reset"})
TIMED_KINDS = frozenset({"offline", "outbid"})  # the kinds that take `for_s`
TRIGGER_KEYS = ("when_log", "when_partial")
TRIGGERED_KINDS = HOST_KINDS | {"outbid"}
# Triggers name files as the instance sees them, and only its own disk is read.
WORKSPACE = "/workspace"
GLOB_MAGIC = re.compile(r"[*?[]")


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
    # when it ends and when it starts (offline, outbid; triggers also for the other host faults)
    for_s: float | None = None
    when_log: dict[str, str] | None = None  # {"path": ..., "pattern": ...}
    when_partial: dict[str, str] | None = None  # {"glob": ..., "missing": ...}
    pending: bool = False  # armed with a trigger that has not fired yet: no effect
    triggered_at: float | None = None
    triggered_on: int | None = None  # the instance the trigger fired on
    effective_at: float | None = None  # when for_s started counting

    def as_dict(self) -> dict[str, Any]:
        row = {key: value for key, value in asdict(self).items() if value not in (None, {}, False)}
        if self.trigger is not None:
            row["pending"] = self.pending  # false too: a listing shows that the trigger fired
        if self.clears_at is not None:
            row["clears_at"] = self.clears_at
        return row

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    @property
    def trigger(self) -> tuple[str, dict[str, str]] | None:
        if self.when_log is not None:
            return "when_log", self.when_log
        if self.when_partial is not None:
            return "when_partial", self.when_partial
        return None

    @property
    def clears_at(self) -> float | None:
        if self.for_s is None or self.effective_at is None:
            return None
        return self.effective_at + self.for_s

    def targets(self, *, instance_id: int, machine_id: int, offer_id: int, label: str | None) -> bool:
        """Whether a host fault names this instance (``next`` aside: that one means the next one created)."""
        return (
            (self.instance_id is not None and self.instance_id == instance_id)
            or (self.machine_id is not None and self.machine_id == machine_id)
            or (self.offer_id is not None and self.offer_id == offer_id)
            or (self.label is not None and label is not None and self.label == label)
        )

    def watches(self, *, instance_id: int, machine_id: int, offer_id: int, label: str | None) -> bool:
        """Whether the fault's trigger looks at this instance: a host fault's targets; for ``outbid`` the
        instances on its machine, narrowed by ``instance_id``, ``offer_id`` and ``label`` where given."""
        if self.kind != "outbid":
            return self.targets(instance_id=instance_id, machine_id=machine_id, offer_id=offer_id, label=label)
        return (
            machine_id == self.machine_id
            and self.instance_id in (None, instance_id)
            and self.offer_id in (None, offer_id)
            and self.label in (None, label)
        )


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
        _parse_timing(fault, spec)  # refuses both
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
    _parse_timing(fault, spec)
    return fault


def _parse_timing(fault: Fault, spec: dict[str, Any]) -> None:
    """``for_s`` and the trigger, where the kind takes them."""
    kind = fault.kind
    if spec.get("for_s") is not None:
        if kind not in TIMED_KINDS:
            raise FaultError(f"for_s applies to {' and '.join(sorted(TIMED_KINDS))} faults only, not {kind}")
        value = _number(spec, "for_s", minimum=-math.inf)
        if value is None or not 0 < value < math.inf:
            raise FaultError(f"for_s must be a number of seconds > 0, got {spec['for_s']!r}")
        fault.for_s = value
    given = [key for key in TRIGGER_KEYS if spec.get(key) is not None]
    if not given:
        return
    if len(given) > 1:
        raise FaultError("give one trigger: when_log or when_partial, not both")
    if kind not in TRIGGERED_KINDS:
        raise FaultError(f"{kind} faults take no trigger; when_log and when_partial apply to host faults and outbid")
    if given[0] == "when_log":
        fault.when_log = parse_when_log(spec["when_log"])
    else:
        fault.when_partial = parse_when_partial(spec["when_partial"])
    fault.pending = True


def _trigger_object(value: Any, key: str, wanted: tuple[str, ...]) -> dict[str, Any]:
    shape = ", ".join(f'"{name}": ...' for name in wanted)
    if not isinstance(value, dict):
        raise FaultError(f"{key} must be an object {{{shape}}}")
    missing = [name for name in wanted if value.get(name) is None]
    if missing:
        raise FaultError(f"{key} needs {' and '.join(repr(name) for name in missing)}: {{{shape}}}")
    unknown = sorted(set(value) - set(wanted))
    if unknown:
        raise FaultError(f"{key} takes only {' and '.join(wanted)}, not {', '.join(unknown)}")
    for name in wanted:
        if not isinstance(value[name], str) or not value[name]:
            raise FaultError(f"{key}.{name} must be a non-empty string")
    return value


def workspace_path(path: str, key: str) -> str:
    """An absolute, normalised path below /workspace, as the instance sees it; FaultError otherwise."""
    if "\0" in path or not path.startswith("/") or posixpath.normpath(path) != path:
        raise FaultError(f"{key} must be an absolute, normalised path below {WORKSPACE}/, got {path!r}")
    if not path.startswith(WORKSPACE + "/"):
        raise FaultError(f"{key} must be below {WORKSPACE}/ (the instance's own disk), got {path!r}")
    return path


def parse_when_log(value: Any) -> dict[str, str]:
    spec = _trigger_object(value, "when_log", ("path", "pattern"))
    path = workspace_path(spec["path"], "when_log.path")
    if GLOB_MAGIC.search(path):
        raise FaultError(f"when_log.path names one file, not a glob: {path!r}")
    try:
        compile_pattern(spec["pattern"])
    except re.error as exc:
        raise FaultError(f"when_log.pattern is not a valid Python regex: {exc}") from None
    return {"path": path, "pattern": spec["pattern"]}


def parse_when_partial(value: Any) -> dict[str, str]:
    spec = _trigger_object(value, "when_partial", ("glob", "missing"))
    glob = workspace_path(spec["glob"], "when_partial.glob")
    missing = spec["missing"]
    if "/" in missing or missing in (".", "..") or "\0" in missing:
        raise FaultError(f"when_partial.missing is a file name inside the matching directory, got {missing!r}")
    return {"glob": glob, "missing": missing}


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A when_log pattern: MULTILINE, so that ``^`` and ``$`` anchor at each log line."""
    return re.compile(pattern, re.MULTILINE)


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
        """Host faults that apply to an instance; `next` faults match only at create and fire once.

        A `next` fault with a trigger or `for_s` is bound to the instance instead (it becomes an
        `instance_id` fault): it must stay armed to fire later or to clear itself. Pending faults apply
        to nothing yet.
        """
        hits: list[Fault] = []
        for fault in self.faults:
            if fault.kind not in HOST_KINDS or fault.exhausted:
                continue
            if fault.next and at_create and (fault.pending or fault.for_s is not None):
                fault.next, fault.instance_id = False, instance_id
            if fault.pending:
                continue
            targeted = fault.targets(instance_id=instance_id, machine_id=machine_id, offer_id=offer_id, label=label)
            if targeted or (fault.next and at_create):
                fault.fired += 1
                hits.append(fault)
        if at_create:
            # A `next` fault is meant for one instance: retire it once it has one.
            self.faults = [f for f in self.faults if not (f.next and f in hits)]
        return hits

    def of_kind(self, kind: str) -> list[Fault]:
        """The faults of a kind in effect (not used up, not waiting for their trigger)."""
        return [f for f in self.faults if f.kind == kind and not f.exhausted and not f.pending]

    def to_state(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self.faults]

    @classmethod
    def from_state(cls, rows: list[dict[str, Any]]) -> FaultBook:
        faults = [Fault(**row) for row in rows]
        return cls(faults, next_id=max((f.id for f in faults), default=0) + 1)
