# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers for the output of ``nvidia-smi``, and version comparison.

Runs on rented machines inside the gpu_check module, so it uses the standard library
only and stays compatible with Python 3.8. Checked against real captures of the tool
(tests/fixtures/nvidia-smi, see SOURCES.md there).

Private to the collection.
"""

from __future__ import annotations

import re

# Fields gpu_check asks --query-gpu for, in this order.
QUERY_FIELDS = ("index", "name", "uuid", "memory.total", "memory.used", "utilization.gpu", "driver_version",
                "compute_cap")

# Values nvidia-smi prints when it has none.
_NOT_AVAILABLE = frozenset({"[N/A]", "N/A", "[Not Supported]", "Not Supported", "[Unknown Error]", ""})

_UNIT_IN_HEADER = re.compile(r"\s*\[[^\]]*\]$")
_NUMBER_WITH_UNIT = re.compile(r"^(-?\d+(?:\.\d+)?)(?:\s*(?:MiB|MB|%|W|MHz|us|C))?$")
# Drivers 610+ print "CUDA UMD Version" and "KMD Version" (and, in --version, "CUDA version : Deprecated,
# see ..."); older ones "CUDA Version" and "Driver Version"; before 410 the banner has no CUDA version at all.
# Only a value that starts with a digit counts, so "N/A", "ERR!" and "Deprecated, ..." are not versions.
_CUDA_UMD_VERSION = re.compile(r"CUDA UMD Version\s*:\s*(\d[\d.]*)", re.IGNORECASE)
_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*(\d[\d.]*)", re.IGNORECASE)
_KMD_VERSION = re.compile(r"KMD Version\s*:\s*(\d[\w.\-]*)", re.IGNORECASE)
_DRIVER_VERSION = re.compile(r"Driver Version\s*:\s*(\d[\w.\-]*)", re.IGNORECASE)
_SMI_VERSION = re.compile(r"NVIDIA-SMI(?: version)?\s*:?\s*(\d[\w.\-]*)")
_BANNER = re.compile(r"NVIDIA-SMI\s+(\S+)\s+(?:Driver|KMD) Version:\s*(\S+)(?:\s+CUDA(?: UMD)? Version:\s*(\S+))?")
# Persistence-M column on Linux; on Windows the same column is "Driver-Model" (WDDM, TCC, MCDM).
_DRIVER_MODELS = frozenset({"WDDM", "TCC", "MCDM"})
# Table rows of one GPU. First: index, name, persistence (or driver model) | bus id, display | ECC.
_ROW_NAME = re.compile(r"^\|\s*(\d+)\s+(.+?)\s+(On|Off|N/A|WDDM|TCC|MCDM)\s*"
                       r"\|\s*([0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f.]+)\s+(On|Off|N/A)\s*\|\s*(.*?)\s*\|$")
# Second: fan, temperature, perf state, power usage / cap | memory used / total | utilisation, compute mode.
_ROW_USAGE = re.compile(r"^\|\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*/\s*(\S+)\s*\|\s*(\d+)MiB\s*/\s*(\d+)MiB\s*"
                        r"\|\s*(\S+)\s+(.*?)\s*\|$")
# Third (drivers 450+): MIG mode in the last column.
_ROW_MIG = re.compile(r"^\|\s+\|\s+\|\s*(\S.*?)\s*\|$")
# "MIG devices:" table rows (drivers 450+): GPU, GI, CI, MIG dev | used / total | SM count, ... The memory
# column is "Memory-Usage" before 580 and "Shared Memory-Usage" after; the second line of each slice (BAR1)
# has no index columns, so it never matches.
_ROW_MIG_DEVICE = re.compile(r"^\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|\s*(\d+)MiB\s*/\s*(\d+)MiB\s*\|\s*(\d+)\s")
_LIST_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]*)\)\s*$")
# -L lines of MIG slices under their GPU: "  MIG 3g.40gb     Device  0: (UUID: MIG-...)".
_LIST_MIG_LINE = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)]*)\)\s*$")
_MIG_PROFILE_GB = re.compile(r"(\d+)gb\b")
# What nvidia-smi prints instead of its output when it cannot give one (stdout, first line).
_ERROR_MARKERS = (
    "NVIDIA-SMI has failed",
    "couldn't communicate with the NVIDIA driver",
    "No devices were found",
    "Failed to initialize NVML",
    "is not a valid field to query",
    "Unable to determine the device handle",
    "GPU access blocked by the operating system",
    "Insufficient Permissions",
    "Driver/library version mismatch",
    "ERROR: Option",
    "Invalid combination of input arguments",
)


class ParseError(ValueError):
    """Output that does not look like what nvidia-smi prints; the message quotes the bad part."""


def error_message(text: str) -> str | None:
    """The error line when ``text`` is one of nvidia-smi's error messages rather than output, else None."""
    for line in text.splitlines():
        line = line.strip()
        if line and any(marker in line for marker in _ERROR_MARKERS):
            return line
    return None


def _refuse_error_text(text: str, what: str) -> None:
    message = error_message(text)
    if message is not None:
        raise ParseError(f"nvidia-smi printed an error instead of {what}: {message!r}")


# --------------------------------------------------------------------------- versions


def version_tuple(text: str | float | int | None) -> tuple[int, ...] | None:
    """``"535.104.05"`` -> ``(535, 104, 5)``; None for anything that is not dotted numbers.

    Each component is compared as a number, so 12.10 > 12.9 and 535.104 > 535.54.
    """
    if text is None:
        return None
    parts = str(text).strip().split(".")
    if not parts or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as a < b, a == b, a > b; missing components count as 0 (12.4 == 12.4.0)."""
    ta, tb = version_tuple(a), version_tuple(b)
    if ta is None or tb is None:
        raise ValueError(f"not a dotted numeric version: {a if ta is None else b!r}")
    width = max(len(ta), len(tb))
    ta += (0,) * (width - len(ta))
    tb += (0,) * (width - len(tb))
    return (ta > tb) - (ta < tb)


def version_at_least(measured: str | None, wanted: str) -> bool:
    """True when ``measured`` >= ``wanted``; an unknown or unparseable measurement is not enough."""
    if version_tuple(measured) is None:
        return False
    return compare_versions(str(measured), wanted) >= 0


# --------------------------------------------------------------------------- csv


def _value(text: str) -> str | None:
    text = text.strip()
    return None if text in _NOT_AVAILABLE else text


def _number(text: str | None, field: str, line: str) -> float | None:
    if text is None:
        return None
    match = _NUMBER_WITH_UNIT.match(text)
    if not match:
        raise ParseError(f"{field} is not a number in {line!r}")
    return float(match.group(1))


def _int(text: str | None, field: str, line: str) -> int | None:
    number = _number(text, field, line)
    return None if number is None else int(number)


_FIELD_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def _csv_rows(text: str, fields: tuple[str, ...] | list[str] | None) -> list[tuple[str, dict[str, str | None]]]:
    _refuse_error_text(text, "CSV")
    lines = [line for line in text.splitlines() if line.strip()]
    if fields is None:
        if not lines:
            raise ParseError("no header line")
        fields = [_UNIT_IN_HEADER.sub("", name.strip()) for name in lines[0].split(",")]
        bad = [name for name in fields if not _FIELD_NAME.match(name)]
        if bad:
            raise ParseError(f"not a header of field names: {lines[0].strip()!r}")
        lines = lines[1:]
    rows = []
    for line in lines:
        # The tool separates values with ", "; no value of the fields we read holds one.
        values = line.split(", ")
        if len(values) != len(fields):
            raise ParseError(f"expected {len(fields)} comma-separated values, got {len(values)}: {line.strip()!r}")
        # (No zip(strict=): this runs on the rented machine's Python, which may be older than 3.10.)
        rows.append((line.strip(), {fields[i]: _value(values[i]) for i in range(len(fields))}))
    return rows


def parse_query_csv(text: str, fields: tuple[str, ...] | list[str] | None = None) -> list[dict[str, str | None]]:
    """Rows of ``--query-gpu ... --format=csv[,noheader][,nounits]`` as dicts of raw strings.

    With a header line, the keys are its field names without the ``[unit]``; with
    ``noheader`` pass ``fields``. Values are stripped; ``[N/A]`` and the like become None.
    A header with no rows (a query of processes when none run) is an empty list; an error
    message of the tool, or a first line that is not field names, raises ParseError.
    """
    return [row for _line, row in _csv_rows(text, fields)]


def gpus_from_query(text: str, fields: tuple[str, ...] | list[str] = QUERY_FIELDS, header: bool = False) -> list[dict]:
    """GPUs from ``--query-gpu=<fields> --format=csv,noheader,nounits``.

    With ``header=True`` the field names come from the output's header line instead
    (any field list that includes ours); values with units (``81559 MiB``) are read too.
    """
    if not text.strip():
        raise ParseError("nvidia-smi printed nothing")
    rows = _csv_rows(text, None if header else fields)
    if not rows:
        raise ParseError("no GPU rows")
    gpus = []
    for position, (line, row) in enumerate(rows):
        index = _int(row.get("index"), "index", line)
        name = row.get("name")
        total = _int(row.get("memory.total"), "memory.total", line)
        if name is None or total is None:
            raise ParseError(f"a GPU without name or memory.total: {line!r}")
        cap = row.get("compute_cap")
        if cap is not None and version_tuple(cap) is None:
            raise ParseError(f"compute_cap is not a version in {line!r}")
        gpus.append({
            "index": position if index is None else index,
            "name": name,
            "uuid": row.get("uuid"),
            "memory_total_mb": total,
            "memory_used_mb": _int(row.get("memory.used"), "memory.used", line),
            "utilization_gpu": _int(row.get("utilization.gpu"), "utilization.gpu", line),
            "driver_version": row.get("driver_version"),
            "compute_capability": cap,
        })
    return gpus


# --------------------------------------------------------------------------- table, -L, --version, -q


def parse_cuda_version(text: str) -> str | None:
    """The CUDA version the driver supports, from the table header, ``--version`` or ``-q``.

    ``CUDA UMD Version`` (drivers 610+) wins over the deprecated ``CUDA Version``. None when
    the driver does not say (before 410, or ``N/A``/``ERR!`` in the banner); ParseError
    when ``text`` is an error message of the tool.
    """
    _refuse_error_text(text, "a CUDA version")
    for pattern in (_CUDA_UMD_VERSION, _CUDA_VERSION):
        match = pattern.search(text)
        if match and version_tuple(match.group(1)) is not None:
            return match.group(1)
    return None


def mig_profile_memory_mb(profile: str) -> int | None:
    """Nominal memory of a MIG profile such as ``3g.40gb`` in MiB (40 * 1024), or None."""
    match = _MIG_PROFILE_GB.search(profile)
    return int(match.group(1)) * 1024 if match else None


def _mig_devices(lines: list[str]) -> list[dict]:
    """Rows of the "MIG devices:" table, which comes after the GPU table and before "Processes:"."""
    devices: list[dict] = []
    inside = False
    for line in lines:
        if "MIG devices:" in line:
            inside = True
            continue
        if inside and "Processes:" in line:
            break
        row = _ROW_MIG_DEVICE.match(line.rstrip()) if inside else None
        if row:
            devices.append({
                "gpu": int(row.group(1)),
                "gpu_instance_id": int(row.group(2)),
                "compute_instance_id": int(row.group(3)),
                "mig_device": int(row.group(4)),
                "memory_used_mb": int(row.group(5)),
                "memory_total_mb": int(row.group(6)),
                "sm_count": int(row.group(7)),
            })
    return devices


def parse_table(text: str) -> dict:
    """The default ``nvidia-smi`` table: versions from the banner and one dict per GPU.

    Names longer than the column are cut by the tool to 24 characters plus ``...``;
    such GPUs carry ``name_truncated: true``. The banner's driver is ``Driver Version``
    or (610+) ``KMD Version``; ``cuda_version`` is None where the banner has none (drivers
    before 410) or says ``N/A``. On Windows the persistence column holds the driver model
    (``WDDM``, ``TCC``): it goes to ``driver_model`` and ``persistence_mode`` is None.
    MIG slices listed under "MIG devices:" are in ``mig_devices``, and each GPU lists its
    own; a slice's ``memory_total_mb`` is what a process on that slice can use.
    """
    _refuse_error_text(text, "the GPU table")
    header = _BANNER.search(text)
    if not header:
        raise ParseError("no 'NVIDIA-SMI ... Driver Version: ...' (or 'KMD Version: ...') banner")
    cuda = header.group(3)
    lines = text.splitlines()
    mig_devices = _mig_devices(lines)
    result: dict = {
        "nvidia_smi_version": header.group(1),
        "driver_version": header.group(2),
        "cuda_version": cuda if cuda is not None and version_tuple(cuda) is not None else None,
        "gpus": [],
        "mig_devices": mig_devices,
    }
    for number, line in enumerate(lines):
        row = _ROW_NAME.match(line.rstrip())
        if not row:
            continue
        name = row.group(2)
        mode = row.group(3)
        gpu: dict = {
            "index": int(row.group(1)),
            "name": name,
            "name_truncated": name.endswith("..."),
            "persistence_mode": None if mode in _DRIVER_MODELS or mode == "N/A" else mode,
            "driver_model": mode if mode in _DRIVER_MODELS else None,
            "bus_id": row.group(4),
            "display_active": _value(row.group(5)),
            "ecc": row.group(6),
        }
        usage = _ROW_USAGE.match(lines[number + 1].rstrip()) if number + 1 < len(lines) else None
        if not usage:
            raise ParseError(f"GPU {gpu['index']}: no usage row after {line.strip()!r}")
        util = usage.group(8)
        gpu.update({
            "fan": _value(usage.group(1)),
            "temperature": _value(usage.group(2)),
            "performance_state": _value(usage.group(3)),
            "power_usage": _value(usage.group(4)),
            "power_cap": _value(usage.group(5)),
            "memory_used_mb": int(usage.group(6)),
            "memory_total_mb": int(usage.group(7)),
            "utilization_gpu": int(util.rstrip("%")) if util.rstrip("%").isdigit() else None,
            "compute_mode": usage.group(9),
        })
        mig = _ROW_MIG.match(lines[number + 2].rstrip()) if number + 2 < len(lines) else None
        gpu["mig_mode"] = _value(mig.group(1)) if mig else None
        gpu["mig_devices"] = [d for d in mig_devices if d["gpu"] == gpu["index"]]
        result["gpus"].append(gpu)
    if not result["gpus"]:
        raise ParseError("a banner but no GPU rows")
    return result


def parse_list(text: str) -> list[dict]:
    """``nvidia-smi -L``: index, name and UUID of each GPU, with its MIG slices in ``mig_devices``.

    Each slice: ``profile`` (``3g.40gb``), ``index``, ``uuid`` and ``memory_total_mb``, the
    profile's nominal size (the table's "MIG devices:" gives the exact one). ParseError when
    there is no GPU line (an error message, or nothing).
    """
    _refuse_error_text(text, "a GPU list")
    gpus: list[dict] = []
    for line in text.splitlines():
        match = _LIST_LINE.match(line)
        if match:
            gpus.append({"index": int(match.group(1)), "name": match.group(2), "uuid": match.group(3),
                         "mig_devices": []})
            continue
        mig = _LIST_MIG_LINE.match(line)
        if mig and gpus:
            gpus[-1]["mig_devices"].append({"profile": mig.group(1), "index": int(mig.group(2)),
                                            "uuid": mig.group(3),
                                            "memory_total_mb": mig_profile_memory_mb(mig.group(1))})
    if not gpus:
        raise ParseError(f"no 'GPU n: ... (UUID: ...)' line in {' '.join(text.split())[:200]!r}")
    return gpus


def parse_version(text: str) -> dict:
    """``nvidia-smi --version``: nvidia_smi_version, driver_version, cuda_version (None when absent).

    Drivers 610+ say ``DRIVER version : Deprecated, see "KMD version" instead``; the driver is
    then ``KMD version`` and the CUDA version ``CUDA UMD version``.
    """
    _refuse_error_text(text, "version information")
    smi = _SMI_VERSION.search(text)
    driver = _KMD_VERSION.search(text) or _DRIVER_VERSION.search(text)
    if smi is None and driver is None:
        raise ParseError(f"no version in {' '.join(text.split())[:200]!r}")
    return {
        "nvidia_smi_version": smi.group(1) if smi else None,
        "driver_version": driver.group(1) if driver else None,
        "cuda_version": parse_cuda_version(text),
    }
