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
_CUDA_VERSION = re.compile(r"CUDA Version\s*:\s*(\S+)")
_DRIVER_VERSION = re.compile(r"Driver Version\s*:\s*(\S+)", re.IGNORECASE)
_SMI_VERSION = re.compile(r"NVIDIA-SMI(?: version)?\s*:?\s*(\d[\w.\-]*)")
# Table rows of one GPU. First: index, name, persistence | bus id, display | ECC.
_ROW_NAME = re.compile(r"^\|\s*(\d+)\s+(.+?)\s+(On|Off)\s*\|\s*([0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f.]+)\s+(On|Off)\s*"
                       r"\|\s*(.*?)\s*\|$")
# Second: fan, temperature, perf state, power usage / cap | memory used / total | utilisation, compute mode.
_ROW_USAGE = re.compile(r"^\|\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*/\s*(\S+)\s*\|\s*(\d+)MiB\s*/\s*(\d+)MiB\s*"
                        r"\|\s*(\S+)\s+(.*?)\s*\|$")
# Third (drivers 450+): MIG mode in the last column.
_ROW_MIG = re.compile(r"^\|\s+\|\s+\|\s*(\S.*?)\s*\|$")
_LIST_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID: ([^)]+)\)\s*$")


class ParseError(ValueError):
    """Output that does not look like what nvidia-smi prints; the message quotes the bad part."""


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


def _csv_rows(text: str, fields: tuple[str, ...] | list[str] | None) -> list[tuple[str, dict[str, str | None]]]:
    lines = [line for line in text.splitlines() if line.strip()]
    if fields is None:
        if not lines:
            raise ParseError("no header line")
        fields = [_UNIT_IN_HEADER.sub("", name.strip()) for name in lines[0].split(",")]
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
    """The CUDA version the driver supports, from the table header, ``--version`` or ``-q``."""
    match = _CUDA_VERSION.search(text)
    if not match:
        return None
    value = match.group(1)
    return value if version_tuple(value) is not None else None


def parse_table(text: str) -> dict:
    """The default ``nvidia-smi`` table: versions from the banner and one dict per GPU.

    Names longer than the column are cut by the tool to 24 characters plus ``...``;
    such GPUs carry ``name_truncated: true``.
    """
    header = re.search(r"NVIDIA-SMI\s+(\S+)\s+Driver Version:\s*(\S+)\s+CUDA Version:\s*(\S+)", text)
    if not header:
        raise ParseError("no 'NVIDIA-SMI ... Driver Version: ... CUDA Version: ...' banner")
    cuda = header.group(3)
    result: dict = {
        "nvidia_smi_version": header.group(1),
        "driver_version": header.group(2),
        "cuda_version": cuda if version_tuple(cuda) is not None else None,
        "gpus": [],
    }
    lines = text.splitlines()
    for number, line in enumerate(lines):
        row = _ROW_NAME.match(line.rstrip())
        if not row:
            continue
        name = row.group(2)
        gpu: dict = {
            "index": int(row.group(1)),
            "name": name,
            "name_truncated": name.endswith("..."),
            "persistence_mode": row.group(3),
            "bus_id": row.group(4),
            "display_active": row.group(5),
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
        result["gpus"].append(gpu)
    return result


def parse_list(text: str) -> list[dict]:
    """``nvidia-smi -L``: index, name and UUID of each GPU (MIG device lines are skipped)."""
    gpus = []
    for line in text.splitlines():
        match = _LIST_LINE.match(line)
        if match:
            gpus.append({"index": int(match.group(1)), "name": match.group(2), "uuid": match.group(3)})
    return gpus


def parse_version(text: str) -> dict:
    """``nvidia-smi --version``: nvidia_smi_version, driver_version, cuda_version (None when absent)."""
    smi = _SMI_VERSION.search(text)
    driver = _DRIVER_VERSION.search(text)
    return {
        "nvidia_smi_version": smi.group(1) if smi else None,
        "driver_version": driver.group(1) if driver else None,
        "cuda_version": parse_cuda_version(text),
    }
