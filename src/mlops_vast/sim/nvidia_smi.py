#!/usr/bin/python3
"""A stand-in for ``nvidia-smi`` on simulated vastsim instances, which have no GPU.

The script is copied onto every simulated instance and run as ``nvidia-smi``, so it
must stay a single, standard-library-only file that runs on whatever ``python3`` the
instance image ships (3.8 or newer). It answers the real tool's common invocations
in the real tool's output format, for the GPUs the instance rented:

* ``nvidia-smi`` -- the summary table (driver 530+ layout; see ``Layout``),
* ``nvidia-smi -L`` / ``--list-gpus``,
* ``nvidia-smi --query-gpu=FIELDS --format=csv[,noheader][,nounits]``,
* ``-i`` / ``--id=`` selecting GPUs (index, UUID, PCI bus id or serial, comma lists),
* ``--version`` and ``-h`` / ``--help``.

Anything else gets the real tool's "not recognized" error. Every message the real
tool prints (including errors) goes to stdout, as the real one's do, mostly followed
by an empty line; only problems with this fake's own spec file go to stderr.

GPU description
---------------
The GPUs are read from a JSON file: ``$VASTSIM_NVIDIA_SMI_SPEC`` if set, otherwise
``nvidia-smi.json`` next to ``os.path.realpath(sys.argv[0])``::

    {"driver_version": "550.54.14",     # optional, default 550.54.14
     "cuda_version": "12.4",            # optional, default follows the driver branch
     "error": null,                     # non-empty string: behave like a broken driver
     "gpus": [{
         "name": "NVIDIA GeForce RTX 4090",   # required
         "memory_total_mib": 24564,           # required
         "memory_used_mib": 1,                # default 1
         "memory_reserved_mib": 0,            # default 0; memory.free = total - reserved - used
         "utilization_gpu": 0,                # percent, default 0
         "utilization_memory": 0,             # percent, default 0
         "compute_cap": "8.9",                # default guessed from the name
         "uuid": "GPU-...",                   # default derived from name and index
         "serial": "1320222043305",           # default: 13 digits for data-centre parts, else N/A
         "pci_bus_id": "00000000:01:00.0",    # default 00000000:<index+1>:00.0
         "temperature_gpu": 34,               # Celsius, default 30 + utilization/3
         "temperature_memory": null,          # Celsius; default only for HBM parts
         "power_draw_w": 21.3,                # default from utilization and power limit
         "power_limit_w": 450,                # default guessed from the name
         "fan_speed": 30,                     # percent, null = N/A; default N/A for passive parts
         "persistence_mode": "Enabled",       # "Enabled" | "Disabled", default Enabled
         "pstate": "P8",                      # default P0 for data-centre parts, else P8/P2
         "ecc_mode": "Enabled",               # "Enabled" | "Disabled" | "N/A", default by name
         "mig_mode": "Disabled",              # "Enabled" | "Disabled" | "N/A", default by name
         "display_active": "Disabled",        # "Enabled" | "Disabled"
         "compute_mode": "Default",           # "Default" | "Exclusive_Process" | "Prohibited"
         "clocks_sm_mhz": 210,                # default: idle clock, or max when busy
         "clocks_max_sm_mhz": 3105,           # default guessed from the name
         "clocks_mem_mhz": 405,
         "clocks_max_mem_mhz": 10501,
         "vbios_version": "95.02.3C.00.EB",   # default [N/A]
         "pcie_gen": 4, "pcie_gen_current": 4, "pcie_width": 16}]}

Optional keys may be missing or null (null means N/A where the real tool can print
N/A). An empty ``gpus`` list behaves like a machine whose GPUs fell off the bus.

GPU memory in use by processes
------------------------------
A process on the instance that "holds GPU memory" says so by writing a file named after
its pid into ``gpu-processes/`` next to the spec file (``$VASTSIM_GPU_PROCESSES`` if set)::

    {"used_mib": 20480, "gpu": 0, "name": "python3"}     # or just: 20480

Files of processes that are gone are ignored (and removed). Their memory is added to the
GPU's ``memory.used`` (and taken from ``memory.free``), and they are listed by
``--query-compute-apps=pid,process_name,used_memory,gpu_uuid,gpu_bus_id,gpu_name``, so a
smoke test's memory sampling sees a job's footprint without a GPU
(``examples/tiny_trainer --gpu_mem_gib`` writes such a file).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

SPEC_ENV = "VASTSIM_NVIDIA_SMI_SPEC"
SPEC_FILENAME = "nvidia-smi.json"
PROCESSES_ENV = "VASTSIM_GPU_PROCESSES"
PROCESSES_DIRNAME = "gpu-processes"
DEFAULT_DRIVER = "550.54.14"

# Exit codes documented in nvidia-smi(1) "RETURN VALUE".
EXIT_OK = 0
EXIT_INVALID_ARGUMENT = 2
EXIT_NOT_FOUND = 6
EXIT_DRIVER_NOT_LOADED = 9
EXIT_OTHER = 255

DRIVER_FAILED_MSG = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
NO_DEVICES_MSG = "No devices were found"
HELP_HINT = "Please run 'nvidia-smi -h' for help."

# Highest CUDA version each driver branch supports; this is what the real header shows.
CUDA_BY_BRANCH = {
    530: "12.1", 535: "12.2", 545: "12.3", 550: "12.4", 555: "12.5", 560: "12.6",
    565: "12.7", 570: "12.8", 575: "12.9", 580: "13.0", 590: "13.1", 595: "13.2",
}


def _record(cls: type) -> type:
    """Make ``cls`` a plain record of its annotated fields, as ``@dataclass`` would: an ``__init__`` taking them in
    order or by name (a class-level value is the default), ``__eq__`` and ``__repr__``.

    Not ``dataclasses`` itself: importing it (with ``inspect``) and generating each class's methods was about a
    third of this fake's run time, and the fake runs at every ``nvidia-smi`` call, every poll of every watch.
    """
    names = tuple(cls.__dict__.get("__annotations__", {}))  # noqa: RUF063 - inspect is what this file avoids
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} values, {len(args)} given")
        values = dict(zip(names, args, strict=False))  # fewer values than fields: the rest by name
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{cls.__name__}() got an unexpected or repeated value {name!r}")
            values[name] = value
        for name in names:
            if name not in values:
                if name not in defaults:
                    raise TypeError(f"{cls.__name__}() is missing {name!r}")
                values[name] = defaults[name]
        self.__dict__.update(values)

    def __eq__(self: Any, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in names)

    def __repr__(self: Any) -> str:
        return f"{cls.__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    cls.__init__ = __init__  # type: ignore[misc]
    cls.__eq__ = __eq__  # type: ignore[method-assign,assignment]
    cls.__repr__ = __repr__  # type: ignore[method-assign,assignment]
    cls.__hash__ = None  # type: ignore[assignment]  # equal records must hash alike, and these are mutable
    cls._fields = names  # type: ignore[attr-defined]
    return cls


def _replace(record: Any, **changes: Any) -> Any:
    """A copy of a ``_record`` with some fields changed (``dataclasses.replace``)."""
    return type(record)(**{**{name: getattr(record, name) for name in record._fields}, **changes})


class SpecError(Exception):
    """The GPU description file is missing or malformed (a problem of the fake, not the GPU)."""


class UsageError(Exception):
    """A command line the real tool would reject; ``str()`` is the real tool's message."""

    def __init__(self, message: str, code: int = EXIT_INVALID_ARGUMENT, blank_line: bool = True) -> None:
        super().__init__(message)
        self.code = code
        # Most real messages end with an empty line; "No devices were found" does not.
        self.blank_line = blank_line


# --------------------------------------------------------------------------- GPU model

# (name keyword, compute capability, power limit W, max SM MHz, max memory MHz)
# First match wins, so more specific keywords come first. Values are those the real
# parts report; they only fill in what the spec leaves out.
_MODEL_TABLE: tuple[tuple[str, str, int, int, int], ...] = (
    ("GH200", "9.0", 900, 1980, 2619),
    ("H200", "9.0", 700, 1980, 3201),
    ("H100 PCIe", "9.0", 350, 1755, 1593),
    ("H100 NVL", "9.0", 400, 1785, 2619),
    ("H100", "9.0", 700, 1980, 2619),
    ("B200", "10.0", 1000, 1965, 3996),
    ("A100-SXM4-80GB", "8.0", 400, 1410, 1593),
    ("A100", "8.0", 400, 1410, 1215),
    ("A800", "8.0", 400, 1410, 1593),
    ("A30", "8.0", 165, 1440, 1215),
    ("A40", "8.6", 300, 1740, 7251),
    ("A10", "8.6", 150, 1695, 6251),
    ("L40S", "8.9", 350, 2520, 9001),
    ("L40", "8.9", 300, 2490, 9001),
    ("L4", "8.9", 72, 2040, 6251),
    ("RTX 6000 Ada", "8.9", 300, 3105, 10001),
    ("RTX PRO 6000", "12.0", 600, 3090, 14001),
    ("RTX 5090", "12.0", 575, 3090, 14001),
    ("RTX 5080", "12.0", 360, 3090, 15001),
    ("RTX 4090", "8.9", 450, 3105, 10501),
    ("RTX 4080", "8.9", 320, 3105, 11201),
    ("RTX 4070", "8.9", 200, 3105, 10501),
    ("RTX 40", "8.9", 200, 3105, 10501),
    ("RTX 3090", "8.6", 350, 2100, 9751),
    ("RTX 3080", "8.6", 320, 2100, 9501),
    ("RTX 30", "8.6", 220, 2100, 7001),
    ("RTX A6000", "8.6", 300, 2100, 8001),
    ("RTX A", "8.6", 230, 2100, 8001),
    ("RTX 20", "7.5", 250, 2100, 7000),
    ("Quadro RTX", "7.5", 260, 2100, 7000),
    ("TITAN RTX", "7.5", 280, 2100, 7000),
    ("T4", "7.5", 70, 1590, 5001),
    ("V100", "7.0", 300, 1530, 877),
)
_FALLBACK_MODEL = ("", "8.6", 300, 2100, 9751)

# Passive (fanless) data-centre boards report fan speed N/A and sit in P0 when idle.
_DATACENTER_KEYWORDS = ("H100", "H200", "GH200", "B200", "A100", "A800", "A30", "A10", "L4", "L40", "T4",
                        "V100")
# Boards that can be partitioned with MIG show "Disabled" rather than "N/A" in MIG M.
_MIG_KEYWORDS = ("H100", "H200", "GH200", "B200", "A100", "A800", "A30")
# HBM parts also report a memory temperature.
_HBM_KEYWORDS = ("H100", "H200", "GH200", "B200", "A100", "A800", "A30", "V100")
# Workstation / flagship GeForce boards have ECC they ship with turned off ("Off" in the table).
_ECC_OFF_KEYWORDS = ("RTX 4090", "RTX 5090", "RTX A", "Ada Generation", "RTX PRO")


def _has_any(name: str, keywords: tuple[str, ...]) -> bool:
    return any(k in name for k in keywords)


def _model_row(name: str) -> tuple[str, str, int, int, int]:
    for row in _MODEL_TABLE:
        if row[0] in name:
            return row
    return _FALLBACK_MODEL


@_record
class Gpu:
    """One simulated GPU with every value the output forms need, defaults resolved."""

    index: int
    name: str
    uuid: str
    serial: str | None
    pci_bus_id: str
    memory_total_mib: int
    memory_used_mib: int
    memory_reserved_mib: int
    utilization_gpu: int
    utilization_memory: int
    compute_cap: str
    temperature_gpu: int
    temperature_memory: int | None
    power_draw_w: float | None
    power_limit_w: float | None
    fan_speed: int | None
    persistence_mode: str
    pstate: str
    ecc_mode: str
    mig_mode: str
    display_active: str
    compute_mode: str
    clocks_sm_mhz: int
    clocks_max_sm_mhz: int
    clocks_mem_mhz: int
    clocks_max_mem_mhz: int
    vbios_version: str | None
    pcie_gen: int
    pcie_gen_current: int
    pcie_width: int

    @property
    def memory_free_mib(self) -> int:
        return max(0, self.memory_total_mib - self.memory_reserved_mib - self.memory_used_mib)


def _get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """Read an optional key, rejecting wrong types so a typo in the spec fails loudly."""
    if key not in raw or raw[key] is None:
        return default
    value = raw[key]
    # bool is an int subclass; a JSON true for a number is a spec mistake.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SpecError(f"gpus[{raw.get('_index', '?')}].{key}: unexpected value {value!r}")
    return value


def _default_uuid(name: str, index: int) -> str:
    import hashlib  # here, not at the top: most calls name no GPU without a uuid in its spec

    digest = hashlib.sha256(f"vastsim:{name}:{index}".encode()).hexdigest()
    return f"GPU-{digest[0:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def _normalise_bus_id(bus_id: str) -> str:
    # NVML prints the 8-digit domain form in upper case whatever form was configured.
    bus_id = bus_id.strip().upper()
    if bus_id.count(":") == 1:
        bus_id = "00000000:" + bus_id
    domain, rest = bus_id.split(":", 1)
    return f"{int(domain, 16):08X}:{rest}"


def gpu_from_spec(raw: dict[str, Any], index: int) -> Gpu:
    """Build a ``Gpu`` from one entry of the spec's ``gpus`` list, filling realistic defaults."""
    if not isinstance(raw, dict):
        raise SpecError(f"gpus[{index}] is not an object")
    raw = dict(raw, _index=index)
    name = _get(raw, "name", str, None)
    total = _get(raw, "memory_total_mib", int, None)
    if not name or total is None:
        raise SpecError(f"gpus[{index}] needs at least 'name' and 'memory_total_mib'")
    _, cap, limit, max_sm, max_mem = _model_row(name)
    datacenter = _has_any(name, _DATACENTER_KEYWORDS)
    util = _get(raw, "utilization_gpu", int, 0)
    used = _get(raw, "memory_used_mib", int, 1)
    power_limit = _get(raw, "power_limit_w", (int, float), float(limit))
    if "power_draw_w" in raw and raw["power_draw_w"] is None:
        power_draw = None
    else:
        idle_share = 0.12 if datacenter else 0.05
        guess = round(power_limit * (idle_share + (0.85 - idle_share) * util / 100), 2)
        power_draw = float(_get(raw, "power_draw_w", (int, float), guess))
    busy = util > 0
    # Datacenter cards have no fan of their own: the real tool prints N/A.
    fan_guess = None if datacenter else 30 + util * 40 // 100
    fan = _get(raw, "fan_speed", int, None) if "fan_speed" in raw else fan_guess
    default_pstate = "P0" if datacenter else ("P2" if busy else "P8")
    temp = _get(raw, "temperature_gpu", int, 30 + util // 3)
    if "temperature_memory" in raw:
        temp_mem = _get(raw, "temperature_memory", int, None)
    else:
        temp_mem = temp + 7 if _has_any(name, _HBM_KEYWORDS) else None
    if datacenter:
        default_ecc = "Enabled"
    elif _has_any(name, _ECC_OFF_KEYWORDS):
        default_ecc = "Disabled"
    else:
        default_ecc = "N/A"
    serial_guess = None
    if datacenter:
        import hashlib  # here: only a data-centre part without a serial in its spec needs it

        serial_guess = str(int(hashlib.sha256(f"serial:{name}:{index}".encode()).hexdigest(), 16))[:13]
    bus = _get(raw, "pci_bus_id", str, f"00000000:{index + 1:02X}:00.0")
    try:
        bus = _normalise_bus_id(bus)
    except ValueError as exc:
        raise SpecError(f"gpus[{index}].pci_bus_id: cannot parse {bus!r}") from exc
    max_sm = _get(raw, "clocks_max_sm_mhz", int, max_sm)
    max_mem = _get(raw, "clocks_max_mem_mhz", int, max_mem)
    idle_sm = 345 if "H100" in name or "H200" in name else 210
    pcie_gen = _get(raw, "pcie_gen", int, 5 if _has_any(name, ("H100", "H200", "B200", "RTX 50")) else 4)
    gpu = Gpu(
        index=index,
        name=name,
        uuid=_get(raw, "uuid", str, _default_uuid(name, index)),
        serial=_get(raw, "serial", str, serial_guess),
        pci_bus_id=bus,
        memory_total_mib=total,
        memory_used_mib=used,
        memory_reserved_mib=_get(raw, "memory_reserved_mib", int, 0),
        utilization_gpu=util,
        utilization_memory=_get(raw, "utilization_memory", int, util // 2),
        compute_cap=_get(raw, "compute_cap", str, cap),
        temperature_gpu=temp,
        temperature_memory=temp_mem,
        power_draw_w=power_draw,
        power_limit_w=float(power_limit),
        fan_speed=fan,
        persistence_mode=_get(raw, "persistence_mode", str, "Enabled"),
        pstate=_get(raw, "pstate", str, default_pstate),
        ecc_mode=_get(raw, "ecc_mode", str, default_ecc),
        mig_mode=_get(raw, "mig_mode", str, "Disabled" if _has_any(name, _MIG_KEYWORDS) else "N/A"),
        display_active=_get(raw, "display_active", str, "Disabled"),
        compute_mode=_get(raw, "compute_mode", str, "Default"),
        clocks_sm_mhz=_get(raw, "clocks_sm_mhz", int, max_sm * 9 // 10 if busy else idle_sm),
        clocks_max_sm_mhz=max_sm,
        clocks_mem_mhz=_get(raw, "clocks_mem_mhz", int, max_mem if busy or datacenter else 405),
        clocks_max_mem_mhz=max_mem,
        vbios_version=_get(raw, "vbios_version", str, None),
        pcie_gen=pcie_gen,
        # Idle consumer boards drop the link to gen 1 to save power; the spec may say so.
        pcie_gen_current=_get(raw, "pcie_gen_current", int, pcie_gen),
        pcie_width=_get(raw, "pcie_width", int, 16),
    )
    if gpu.persistence_mode not in ("Enabled", "Disabled"):
        raise SpecError(f"gpus[{index}].persistence_mode must be Enabled or Disabled")
    return gpu


@_record
class Machine:
    """Everything the fake knows about the host: driver, CUDA and its GPUs."""

    driver_version: str
    cuda_version: str
    error: str | None
    gpus: list[Gpu]

    @property
    def driver_branch(self) -> int:
        head = self.driver_version.split(".", 1)[0]
        return int(head) if head.isdigit() else 550


def machine_from_spec(spec: Any) -> Machine:
    """Validate a parsed spec document and resolve all defaults."""
    if not isinstance(spec, dict):
        raise SpecError("top level must be a JSON object")
    driver = spec.get("driver_version") or DEFAULT_DRIVER
    if not isinstance(driver, str):
        raise SpecError("driver_version must be a string")
    branch_head = driver.split(".", 1)[0]
    branch = int(branch_head) if branch_head.isdigit() else 550
    # Branches between the listed ones (e.g. 560 vs 565) support the lower listed CUDA.
    known = [b for b in sorted(CUDA_BY_BRANCH) if b <= branch]
    cuda = spec.get("cuda_version") or (CUDA_BY_BRANCH[known[-1]] if known else "12.0")
    error = spec.get("error")
    if error is not None and not isinstance(error, str):
        raise SpecError("error must be a string or null")
    raw_gpus = spec.get("gpus", [])
    if not isinstance(raw_gpus, list):
        raise SpecError("gpus must be a list")
    gpus = [gpu_from_spec(raw, i) for i, raw in enumerate(raw_gpus)]
    return Machine(driver_version=driver, cuda_version=str(cuda), error=error or None, gpus=gpus)


def spec_path(argv0: str | None = None) -> str:
    """Where the GPU description lives: the env override, else next to the real script."""
    override = os.environ.get(SPEC_ENV)
    if override:
        return override
    script = os.path.realpath(argv0 if argv0 is not None else sys.argv[0])
    return os.path.join(os.path.dirname(script), SPEC_FILENAME)


def load_machine(path: str) -> Machine:
    """Read and validate the spec file at ``path``."""
    try:
        with open(path, encoding="utf-8") as fh:
            spec = json.load(fh)
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise SpecError(f"{path} is not valid JSON: {exc}") from exc
    return machine_from_spec(spec)


# --------------------------------------------------------------------------- table


@_record
class Layout:
    """Column widths of the summary table, which NVIDIA changes between driver branches.

    Checked against real captures (tests/fixtures/nvidia-smi): 535-549 use a 22-column
    middle box; 550 widened it to 24; 570 widened the process PID column; 580 turned
    the line under the version banner into a ``+`` border and dropped the padding spaces
    from the blank line between the two boxes. 530-534 drivers differ slightly in the
    heading row and are rendered like 535; the older pre-530 layout is not emulated.
    """

    mid: int
    driver_field: int
    power_usage: int
    power_cap: int
    mem_used: int
    mem_total: int
    wide_pid: bool
    plus_banner_border: bool
    padded_gap: bool

    left: int = 41
    right: int = 22

    @property
    def width(self) -> int:
        return self.left + self.mid + self.right + 4

    @classmethod
    def for_branch(cls, branch: int) -> Layout:
        wide = branch >= 550
        return cls(
            mid=24 if wide else 22,
            driver_field=15 if wide else 13,
            power_usage=15 if wide else 16,
            power_cap=5 if wide else 4,
            mem_used=8 if wide else 7,
            mem_total=6 if wide else 5,
            wide_pid=branch >= 570,
            plus_banner_border=branch >= 580,
            padded_gap=branch < 580,
        )


def _truncate_name(name: str) -> str:
    # The Name cell holds 27 characters; longer names keep 24 and get "..." (real
    # examples: "NVIDIA GeForce RTX 4080 ...", "NVIDIA RTX 6000 Ada Gene...").
    return name if len(name) <= 27 else name[:24] + "..."


def _watts(value: float | None) -> str:
    # The table truncates (a 69.85 W reading shows as 69W in the same real capture).
    return "N/A" if value is None else f"{int(value)}W"


def _ecc_cell(mode: str) -> str:
    # Volatile uncorrected error count when ECC is on; "Off" when supported but off.
    return {"Enabled": "0", "Disabled": "Off"}.get(mode, "N/A")


_COMPUTE_MODE_CELL = {
    "Default": "Default",
    "Exclusive_Process": "E. Process",
    "Exclusive_Thread": "E. Thread",
    "Prohibited": "Prohibited",
}


def render_table(machine: Machine, gpus: list[Gpu], now: datetime | None = None) -> str:
    """The no-argument summary, byte for byte in the layout of the machine's driver branch."""
    lay = Layout.for_branch(machine.driver_branch)
    now = now or datetime.now()
    inner = lay.width - 2
    full_rule = "+" + "-" * inner + "+"
    cols_rule = "+" + "+".join("-" * w for w in (lay.left, lay.mid, lay.right)) + "+"
    # Before 580 only the left corner of this rule is a "|"; the right one is a "+".
    banner_border = cols_rule if lay.plus_banner_border else "|" + cols_rule[1:]
    double_rule = "|" + "+".join("=" * w for w in (lay.left, lay.mid, lay.right)) + "|"

    def row(a: str, b: str, c: str) -> str:
        return f"|{a}|{b}|{c}|"

    banner = (
        f" NVIDIA-SMI {machine.driver_version:<23}"
        f"Driver Version: {machine.driver_version:<{lay.driver_field}}"
        f"CUDA Version: {machine.cuda_version:<9}"
    )
    lines = [
        f"{now:%a %b} {now.day:2d} {now:%H:%M:%S %Y}       ",
        full_rule,
        f"|{banner:<{inner}}|",
        banner_border,
        row(" GPU  Name                 Persistence-M ",
            " Bus-Id" + " " * (lay.mid - 14) + "Disp.A ",
            " Volatile Uncorr. ECC "),
        row(" Fan  Temp   Perf          Pwr:Usage/Cap ",
            "Memory-Usage ".rjust(lay.mid),
            " GPU-Util  Compute M. "),
        row(" " * lay.left, " " * lay.mid, "MIG M. ".rjust(lay.right)),
        double_rule,
    ]
    for gpu in gpus:
        persistence = "On" if gpu.persistence_mode == "Enabled" else "Off"
        disp = "On" if gpu.display_active == "Enabled" else "Off"
        bus_pad = " " * (lay.mid - 21)
        lines.append(row(
            f"{gpu.index:>4}  {_truncate_name(gpu.name):<27}    {persistence:<3} ",
            f"{bus_pad}{gpu.pci_bus_id} {disp:>3} ",
            f" {_ecc_cell(gpu.ecc_mode):>20} ",
        ))
        fan = "N/A" if gpu.fan_speed is None else f"{gpu.fan_speed:2d}%"
        # With MIG on, the whole-GPU utilisation is not reported.
        util = "N/A" if gpu.mig_mode == "Enabled" else f"{gpu.utilization_gpu}%"
        compute = _COMPUTE_MODE_CELL.get(gpu.compute_mode, gpu.compute_mode)
        lines.append(row(
            f" {fan:>3}   {gpu.temperature_gpu:2d}C    {gpu.pstate:<3}"
            f"{_watts(gpu.power_draw_w):>{lay.power_usage}} / {_watts(gpu.power_limit_w):>{lay.power_cap}} ",
            f"{gpu.memory_used_mib:>{lay.mem_used}}MiB / {gpu.memory_total_mib:>{lay.mem_total}}MiB ",
            f" {util:>7}{compute:>13} ",
        ))
        lines.append(row(" " * lay.left, " " * lay.mid, f" {gpu.mig_mode:>20} "))
        lines.append(cols_rule)
    # Real 530-575 drivers pad this separator line with spaces (two short of the table).
    lines.append(" " * (lay.width - 2) if lay.padded_gap else "")
    pid_gap = " " * (14 if lay.wide_pid else 8)
    head = f"  GPU   GI   CI{pid_gap}PID   Type   Process name"
    lines += [
        full_rule,
        f"|{' Processes:':<{inner}}|",
        f"|{head}{'GPU Memory '.rjust(inner - len(head))}|",
        f"|{'        ID   ID':<{inner - 11}}Usage      |",
        "|" + "=" * inner + "|",
        f"|{'  No running processes found':<{inner}}|",
        full_rule,
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- -L, --version, -h


def render_list(gpus: list[Gpu]) -> str:
    """``nvidia-smi -L``."""
    return "".join(f"GPU {g.index}: {g.name} (UUID: {g.uuid})\n" for g in gpus)


def render_version(machine: Machine) -> str:
    """``nvidia-smi --version``; NVML is versioned by the driver's first two components."""
    nvml = ".".join(machine.driver_version.split(".")[:2])
    return (
        f"NVIDIA-SMI version  : {machine.driver_version}\n"
        f"NVML version        : {nvml}\n"
        f"DRIVER version      : {machine.driver_version}\n"
        f"CUDA Version        : {machine.cuda_version}\n"
    )


def render_help(machine: Machine) -> str:
    """A shortened ``nvidia-smi -h``: the real text, cut to the options this fake answers."""
    return f"""NVIDIA System Management Interface -- v{machine.driver_version}

NVSMI provides monitoring information for Tesla and select Quadro devices.
The data is presented in either a plain text or an XML format, via stdout or a file.
NVSMI also provides several management operations for changing the device state.

nvidia-smi [OPTION1 [ARG1]] [OPTION2 [ARG2]] ...

    -h,   --help                Print usage information and exit.

          --version             Print version information and exit.

  LIST OPTIONS:

    -L,   --list-gpus           Display a list of GPUs connected to the system.

  SUMMARY OPTIONS:

    <no arguments>              Show a summary of GPUs connected to the system.

    [plus any of]

    -i,   --id=                 Target a specific GPU.

  SELECTIVE QUERY OPTIONS:

    Allows the caller to pass an explicit list of properties to query.

    [one of]

    --query-gpu                 Information about GPU.

    [mandatory]

    --format=                   Comma separated list of format options:
                                  csv - comma separated values (MANDATORY)
                                  noheader - skip the first line with column headers
                                  nounits - don't print units for numerical
                                             values

    [plus any of]

    -i,   --id=                 Target a specific GPU or Unit.

Please see the nvidia-smi(1) manual page for more detailed information.
"""


# --------------------------------------------------------------------------- --query-gpu

NA = None  # a value the real tool prints as [N/A]


@_record
class Field:
    """A --query-gpu property: its unit (shown in the header, and after values unless nounits)."""

    unit: str | None
    value: Callable[[Machine, Gpu, datetime], Any]
    number_format: str = "{}"


def _pci_part(gpu: Gpu, part: int) -> str:
    domain, bus, rest = gpu.pci_bus_id.split(":")
    return ["0x" + domain[-4:], "0x" + bus, "0x" + rest.split(".")[0]][part]


def _timestamp(now: datetime) -> str:
    return f"{now:%Y/%m/%d %H:%M:%S}.{now.microsecond // 1000:03d}"


_WATTS = "{:.2f}"

# Canonical names and units as the real tool prints them in the csv header
# (tests/fixtures/nvidia-smi/*query-gpu-all.csv). Temperatures really have no unit.
FIELDS: dict[str, Field] = {
    "timestamp": Field(None, lambda m, g, now: _timestamp(now)),
    "driver_version": Field(None, lambda m, g, now: m.driver_version),
    "count": Field(None, lambda m, g, now: len(m.gpus)),
    "name": Field(None, lambda m, g, now: g.name),
    "serial": Field(None, lambda m, g, now: g.serial),
    "uuid": Field(None, lambda m, g, now: g.uuid),
    "pci.bus_id": Field(None, lambda m, g, now: g.pci_bus_id),
    "pci.domain": Field(None, lambda m, g, now: _pci_part(g, 0)),
    "pci.bus": Field(None, lambda m, g, now: _pci_part(g, 1)),
    "pci.device": Field(None, lambda m, g, now: _pci_part(g, 2)),
    "pcie.link.gen.current": Field(None, lambda m, g, now: g.pcie_gen_current),
    "pcie.link.gen.gpucurrent": Field(None, lambda m, g, now: g.pcie_gen_current),
    "pcie.link.gen.max": Field(None, lambda m, g, now: g.pcie_gen),
    "pcie.link.gen.gpumax": Field(None, lambda m, g, now: g.pcie_gen),
    "pcie.link.width.current": Field(None, lambda m, g, now: g.pcie_width),
    "pcie.link.width.max": Field(None, lambda m, g, now: g.pcie_width),
    "index": Field(None, lambda m, g, now: g.index),
    "display_active": Field(None, lambda m, g, now: g.display_active),
    "persistence_mode": Field(None, lambda m, g, now: g.persistence_mode),
    "accounting.mode": Field(None, lambda m, g, now: "Disabled"),
    "driver_model.current": Field(None, lambda m, g, now: NA),
    "driver_model.pending": Field(None, lambda m, g, now: NA),
    "vbios_version": Field(None, lambda m, g, now: g.vbios_version),
    "fan.speed": Field("%", lambda m, g, now: g.fan_speed),
    "pstate": Field(None, lambda m, g, now: g.pstate),
    "memory.total": Field("MiB", lambda m, g, now: g.memory_total_mib),
    "memory.reserved": Field("MiB", lambda m, g, now: g.memory_reserved_mib),
    "memory.used": Field("MiB", lambda m, g, now: g.memory_used_mib),
    "memory.free": Field("MiB", lambda m, g, now: g.memory_free_mib),
    "compute_mode": Field(None, lambda m, g, now: g.compute_mode),
    "compute_cap": Field(None, lambda m, g, now: g.compute_cap),
    # With MIG on, whole-GPU utilisation is not reported.
    "utilization.gpu": Field("%", lambda m, g, now: NA if g.mig_mode == "Enabled"
                             else g.utilization_gpu),
    "utilization.memory": Field("%", lambda m, g, now: NA if g.mig_mode == "Enabled"
                                else g.utilization_memory),
    "utilization.encoder": Field("%", lambda m, g, now: 0),
    "utilization.decoder": Field("%", lambda m, g, now: 0),
    "encoder.stats.sessionCount": Field(None, lambda m, g, now: 0),
    "encoder.stats.averageFps": Field(None, lambda m, g, now: 0),
    "encoder.stats.averageLatency": Field(None, lambda m, g, now: 0),
    "ecc.mode.current": Field(None, lambda m, g, now: NA if g.ecc_mode == "N/A" else g.ecc_mode),
    "ecc.mode.pending": Field(None, lambda m, g, now: NA if g.ecc_mode == "N/A" else g.ecc_mode),
    "temperature.gpu": Field(None, lambda m, g, now: g.temperature_gpu),
    # Real consumer boards print a bare N/A here, not [N/A] (RTX 4080 SUPER capture).
    "temperature.memory": Field(None, lambda m, g, now: "N/A" if g.temperature_memory is None
                                else g.temperature_memory),
    "power.draw": Field("W", lambda m, g, now: g.power_draw_w, _WATTS),
    "power.draw.average": Field("W", lambda m, g, now: g.power_draw_w, _WATTS),
    "power.draw.instant": Field("W", lambda m, g, now: g.power_draw_w, _WATTS),
    "power.limit": Field("W", lambda m, g, now: g.power_limit_w, _WATTS),
    "enforced.power.limit": Field("W", lambda m, g, now: g.power_limit_w, _WATTS),
    "power.default_limit": Field("W", lambda m, g, now: g.power_limit_w, _WATTS),
    "power.min_limit": Field("W", lambda m, g, now: None if g.power_limit_w is None
                             else round(g.power_limit_w / 3), _WATTS),
    "power.max_limit": Field("W", lambda m, g, now: g.power_limit_w, _WATTS),
    "clocks.current.graphics": Field("MHz", lambda m, g, now: g.clocks_sm_mhz),
    "clocks.current.sm": Field("MHz", lambda m, g, now: g.clocks_sm_mhz),
    "clocks.current.memory": Field("MHz", lambda m, g, now: g.clocks_mem_mhz),
    "clocks.max.graphics": Field("MHz", lambda m, g, now: g.clocks_max_sm_mhz),
    "clocks.max.sm": Field("MHz", lambda m, g, now: g.clocks_max_sm_mhz),
    "clocks.max.memory": Field("MHz", lambda m, g, now: g.clocks_max_mem_mhz),
    "mig.mode.current": Field(None, lambda m, g, now: NA if g.mig_mode == "N/A" else g.mig_mode),
    "mig.mode.pending": Field(None, lambda m, g, now: NA if g.mig_mode == "N/A" else g.mig_mode),
}

# Alternative spellings from --help-query-gpu; the header always shows the canonical name.
ALIASES = {
    "gpu_name": "name",
    "gpu_serial": "serial",
    "gpu_uuid": "uuid",
    "gpu_bus_id": "pci.bus_id",
    "clocks.gr": "clocks.current.graphics",
    "clocks.sm": "clocks.current.sm",
    "clocks.mem": "clocks.current.memory",
    "clocks.max.gr": "clocks.max.graphics",
    "clocks.max.mem": "clocks.max.memory",
    "gpu.power.draw.average": "power.draw.average",
    "gpu.power.draw.instant": "power.draw.instant",
    "gpu.power.requested_limit": "power.limit",
    "gpu.power.current_limit": "enforced.power.limit",
    "gpu.power.default_limit": "power.default_limit",
    "gpu.power.min_limit": "power.min_limit",
    "gpu.power.max_limit": "power.max_limit",
}


def resolve_fields(spec: str) -> list[str]:
    """Canonical field names for a --query-gpu list, or the real tool's error."""
    names = []
    for requested in spec.split(","):
        canonical = ALIASES.get(requested, requested)
        if canonical not in FIELDS:
            raise UsageError(f'Field "{requested}" is not a valid field to query.')
        names.append(canonical)
    return names


def parse_format(spec: str) -> tuple[bool, bool]:
    """(header, units) from a --format value; csv is mandatory."""
    options = spec.split(",")
    if "csv" not in options or any(o not in ("csv", "noheader", "nounits") for o in options):
        raise UsageError(f"Invalid combination of input arguments. {HELP_HINT}")
    return "noheader" not in options, "nounits" not in options


def _format_value(field: Field, value: Any, units: bool) -> str:
    if value is None:
        return "[N/A]"
    if field.unit is None or isinstance(value, str):
        return str(value)
    text = field.number_format.format(value)
    return f"{text} {field.unit}" if units else text


def render_query(machine: Machine, gpus: list[Gpu], fields: list[str], header: bool, units: bool,
                 now: datetime | None = None) -> str:
    """``--query-gpu`` csv output: one line per GPU, ", " separated."""
    now = now or datetime.now()
    out = []
    if header:
        out.append(", ".join(f"{f} [{FIELDS[f].unit}]" if FIELDS[f].unit else f for f in fields))
    for gpu in gpus:
        out.append(", ".join(_format_value(FIELDS[f], FIELDS[f].value(machine, gpu, now), units)
                             for f in fields))
    return "".join(line + "\n" for line in out)


# --------------------------------------------------------------------------- processes


@_record
class GpuProcess:
    pid: int
    gpu: int
    used_mib: int
    name: str


def processes_dir(spec_file: str) -> str:
    return os.environ.get(PROCESSES_ENV) or os.path.join(os.path.dirname(spec_file), PROCESSES_DIRNAME)


def read_processes(directory: str) -> list[GpuProcess]:
    """The live processes that declared GPU memory; a declaration of a dead process is dropped."""
    found: list[GpuProcess] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        path = os.path.join(directory, name)
        if not os.path.exists(f"/proc/{name}"):
            try:  # noqa: SIM105 - contextlib costs an import at every call
                os.unlink(path)
            except OSError:
                pass
            continue
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read().strip()
            raw = json.loads(text) if text.startswith("{") else {"used_mib": int(float(text))}
            found.append(GpuProcess(pid=int(name), gpu=int(raw.get("gpu", 0)), used_mib=int(raw["used_mib"]),
                                    name=str(raw.get("name") or "python3")))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: the next call reads it again
    return found


def with_processes(machine: Machine, processes: list[GpuProcess]) -> Machine:
    """The machine with each GPU's used memory raised by what its processes declared."""
    if not processes:
        return machine
    gpus = []
    for gpu in machine.gpus:
        extra = sum(proc.used_mib for proc in processes if proc.gpu == gpu.index)
        used = min(gpu.memory_total_mib - gpu.memory_reserved_mib, gpu.memory_used_mib + extra)
        gpus.append(_replace(gpu, memory_used_mib=used))
    return _replace(machine, gpus=gpus)


APP_FIELDS: dict[str, tuple[str, Callable[[GpuProcess, Gpu], Any], str | None]] = {
    "timestamp": ("timestamp", lambda p, g: _timestamp(datetime.now()), None),
    "gpu_name": ("gpu_name", lambda p, g: g.name, None),
    "gpu_bus_id": ("gpu_bus_id", lambda p, g: g.pci_bus_id, None),
    "gpu_serial": ("gpu_serial", lambda p, g: g.serial, None),
    "gpu_uuid": ("gpu_uuid", lambda p, g: g.uuid, None),
    "pid": ("pid", lambda p, g: p.pid, None),
    "process_name": ("process_name", lambda p, g: p.name, None),
    "name": ("process_name", lambda p, g: p.name, None),
    "used_memory": ("used_gpu_memory", lambda p, g: p.used_mib, "MiB"),
    "used_gpu_memory": ("used_gpu_memory", lambda p, g: p.used_mib, "MiB"),
}


def render_compute_apps(machine: Machine, processes: list[GpuProcess], spec: str, header: bool,
                        units: bool) -> str:
    """``--query-compute-apps`` csv: one line per process on a GPU that exists."""
    fields = []
    for requested in spec.split(","):
        if requested not in APP_FIELDS:
            raise UsageError(f'Field "{requested}" is not a valid field to query.')
        fields.append(APP_FIELDS[requested])
    out = []
    if header:
        out.append(", ".join(f"{title} [{unit}]" if unit else title for title, _, unit in fields))
    by_index = {gpu.index: gpu for gpu in machine.gpus}
    for proc in processes:
        gpu = by_index.get(proc.gpu)
        if gpu is None:
            continue
        values = []
        for _title, value, unit in fields:
            shown = value(proc, gpu)
            values.append("[N/A]" if shown is None else f"{shown} {unit}" if unit and units else str(shown))
        out.append(", ".join(values))
    return "".join(line + "\n" for line in out)


# --------------------------------------------------------------------------- command line


@_record
class Request:
    """What the command line asked for."""

    action: str = "table"  # table | list | query | apps | version | help
    ids: str | None = None
    query: str | None = None
    fmt: str | None = None


# The query options and the action each asks for.
QUERY_OPTIONS = {"--query-gpu": "query", "--query-compute-apps": "apps"}


def parse_args(argv: list[str]) -> Request:
    """Parse the subset of the real option grammar this fake answers."""
    req = Request()
    actions = []
    i = 0

    def value_of(option: str) -> str:
        nonlocal i
        if i + 1 >= len(argv):
            raise UsageError(f"ERROR: Option {option} is missing its value. {HELP_HINT}")
        i += 1
        return argv[i]

    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            actions.append("help")
        elif arg == "--version":
            actions.append("version")
        elif arg in ("-L", "--list-gpus"):
            actions.append("list")
        elif arg in ("-i", "--id"):
            req.ids = value_of(arg)
        elif arg.startswith("--id="):
            req.ids = arg[len("--id="):]
        elif arg.split("=", 1)[0] in QUERY_OPTIONS:
            option = arg.split("=", 1)[0]
            req.query = arg[len(option) + 1:] if "=" in arg else value_of(arg)
            actions.append(QUERY_OPTIONS[option])
        elif arg == "--format":
            req.fmt = value_of(arg)
        elif arg.startswith("--format="):
            req.fmt = arg[len("--format="):]
        else:
            raise UsageError(f"ERROR: Option {arg} is not recognized. {HELP_HINT}")
        i += 1
    # Help and version win over everything else, as they do for the real tool.
    for early in ("help", "version"):
        if early in actions:
            req.action = early
            return req
    if len(set(actions)) > 1 or (req.fmt is not None and not {"query", "apps"} & set(actions)):
        raise UsageError(f"Invalid combination of input arguments. {HELP_HINT}")
    if actions:
        req.action = actions[0]
    if req.action in ("query", "apps") and req.fmt is None:
        raise UsageError(f'"--format=" switch is missing. {HELP_HINT}')
    return req


def select_gpus(machine: Machine, ids: str | None) -> list[Gpu]:
    """Apply ``-i``: indices, UUIDs, PCI bus ids or serials, comma separated."""
    if not machine.gpus:
        raise UsageError(NO_DEVICES_MSG, EXIT_NOT_FOUND, blank_line=False)
    if ids is None:
        return list(machine.gpus)
    chosen: list[Gpu] = []
    for token in ids.split(","):
        token = token.strip()
        match = None
        for gpu in machine.gpus:
            bus_forms = {gpu.pci_bus_id, gpu.pci_bus_id[4:], gpu.pci_bus_id[9:]}
            if (token == str(gpu.index) or token == gpu.uuid or token.upper() in bus_forms
                    or (gpu.serial is not None and token == gpu.serial)):
                match = gpu
                break
        if match is None:
            raise UsageError(NO_DEVICES_MSG, EXIT_NOT_FOUND, blank_line=False)
        if match not in chosen:
            chosen.append(match)
    return sorted(chosen, key=lambda g: g.index)


def run(machine: Machine, argv: list[str], now: datetime | None = None,
        processes: list[GpuProcess] | None = None) -> tuple[str, int]:
    """Produce (stdout text, exit code) for a command line; no I/O, so tests can call it."""
    processes = processes or []
    machine = with_processes(machine, processes)
    try:
        req = parse_args(argv)
        if req.action == "help":
            return render_help(machine), EXIT_OK
        if req.action == "version":
            return render_version(machine), EXIT_OK
        if machine.error:
            return DRIVER_FAILED_MSG + "\n\n", EXIT_DRIVER_NOT_LOADED
        if req.action == "query":
            assert req.query is not None and req.fmt is not None
            fields = resolve_fields(req.query)
            header, units = parse_format(req.fmt)
            gpus = select_gpus(machine, req.ids)
            return render_query(machine, gpus, fields, header, units, now), EXIT_OK
        if req.action == "apps":
            assert req.query is not None and req.fmt is not None
            header, units = parse_format(req.fmt)
            select_gpus(machine, req.ids)
            return render_compute_apps(machine, processes, req.query, header, units), EXIT_OK
        gpus = select_gpus(machine, req.ids)
        if req.action == "list":
            return render_list(gpus), EXIT_OK
        return render_table(machine, gpus, now), EXIT_OK
    except UsageError as exc:
        return f"{exc}\n" + ("\n" if exc.blank_line else ""), exc.code


def main(argv: list[str] | None = None) -> int:
    """Entry point when run as ``nvidia-smi``."""
    args = sys.argv[1:] if argv is None else argv
    path = spec_path()
    try:
        machine = load_machine(path)
    except SpecError as exc:
        sys.stderr.write(f"nvidia-smi (vastsim): bad GPU spec: {exc}\n")
        return EXIT_OTHER
    text, code = run(machine, args, processes=read_processes(processes_dir(path)))
    sys.stdout.write(text)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
