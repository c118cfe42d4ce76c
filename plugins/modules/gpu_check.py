#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_check
short_description: Check a rented machine's GPUs, driver, RAM and disk before long work starts
description:
  - Runs on the rented machine (standard library only) and reports what it really has, measured
    there rather than taken from the offer. Each GPU from C(nvidia-smi --query-gpu) (index, name,
    UUID, memory total and used in MiB, utilisation, driver, compute capability), the CUDA version
    the driver supports (the C(nvidia-smi) banner), system RAM from C(/proc/meminfo) and the
    cgroup limit, free disk at O(disk_path), and the CPU count.
  - Optionally asks a given Python interpreter (O(python)) whether PyTorch sees CUDA (device
    count and names, bf16 support, torch version and the CUDA version torch was built with).
    A missing torch is reported, not a crash.
  - Checks the requirements given as options and fails B(once), listing every unmet requirement
    with its measured value in RV(msg) and in RV(failures).
  - A missing C(nvidia-smi), a driver that does not answer (for example exit status 9, the tool
    could not communicate with the NVIDIA driver), no visible GPU, a hung C(nvidia-smi) or
    output that cannot be parsed fails with the cause named in RV(msg) and RV(error_cause).
    Requirements that do not need the GPU (RAM, disk, torch) are still checked and listed.
  - Sizes are GiB (2^30 bytes) throughout, as C(nvidia-smi) MiB / 1024, C(free -g) and
    C(df -BG) count them.
  - Read-only; safe and fully supported in check mode.
version_added: 0.1.0
extends_documentation_fragment:
  - mlops.vast.attributes
  - mlops.vast.attributes.host
  - mlops.vast.attributes.read_only
options:
  nvidia_smi:
    description:
      - The C(nvidia-smi) to run, a name looked up on E(PATH) (and C(/usr/local/nvidia/bin)) or a path.
    type: str
    default: nvidia-smi
  disk_path:
    description:
      - Where to measure free disk space (C(os.statvfs)).
      - Defaults to C(/workspace) when it exists (Vast's work volume), else C(/).
    type: path
  python:
    description:
      - A Python interpreter to ask whether PyTorch sees CUDA, for example C(/opt/conda/bin/python).
      - Without it torch is not probed and RV(torch) is null.
    type: path
  timeout:
    description:
      - Seconds each command (C(nvidia-smi), the torch probe) may take; a hung driver fails
        the check instead of hanging the play.
    type: int
    default: 60
  min_vram_gb:
    description:
      - Memory each GPU must have, in GiB (MiB / 1024, rounded to 0.1 as in RV(gpus[].memory_total_gb)).
      - An RTX 4090 reports 24564 MiB, which is 24.0; an H100 80GB HBM3 reports 81559 MiB, which is
        79.6, so ask for 79 there.
    type: float
  gpu_name:
    description:
      - The GPU model every GPU must be.
      - A list is a set of accepted names, each matched case-insensitively as a substring of the
        C(nvidia-smi) name, with C(_) and C(-) counting as spaces (C(RTX_4090) matches
        C(NVIDIA GeForce RTX 4090), C(A100_SXM4) matches C(NVIDIA A100-SXM4-80GB)).
      - A single string is a case-insensitive regular expression searched in the name, with C(_)
        standing for a space (C(A100|RTX_4090|H100)), as in the C(gpu_name ~ regex) of
        M(mlops.vast.vast_offer).
    type: raw
  gpu_count:
    description:
      - The exact number of GPUs C(nvidia-smi) must list.
    type: int
  min_compute_capability:
    description:
      - Lowest CUDA compute capability allowed on every GPU, for example C("8.0") (Ampere).
      - Quote versions in YAML; an unquoted C(12.10) is the number 12.1.
    type: str
  flash_attention:
    description:
      - Require a compute capability of at least 8.0 on every GPU, as FlashAttention 2 does.
    type: bool
    default: false
  min_driver:
    description:
      - Lowest NVIDIA driver version allowed, for example C("535.104"), compared numerically per
        dotted component (C(535.104.05) passes, C(535.54.03) does not).
    type: str
  min_cuda:
    description:
      - Lowest CUDA version the driver must support (the C(nvidia-smi) banner), for example C("12.4").
      - Compared numerically per component, so C(12.10) is above C(12.9).
    type: str
  min_ram_gb:
    description:
      - System RAM the machine must have, in GiB; the smaller of C(MemTotal) and the cgroup memory
        limit counts.
    type: float
  min_disk_gb:
    description:
      - Free disk space required at O(disk_path), in GiB.
      - A disk rented as 40 GB (decimal) is about 37 GiB before anything is written to it.
    type: float
  require_torch_cuda:
    description:
      - Require that the O(python) interpreter imports torch and that torch's C(cuda.is_available) is
        true with at least one device.
      - Needs O(python).
    type: bool
    default: false
notes:
  - The module changes nothing on the machine; C(changed) is always false.
  - Every requirement is checked even after one fails, so a single run says everything that is wrong
    with a host, which is what a rent, check and replace loop needs to record.
seealso:
  - module: mlops.vast.vast_instance
  - module: mlops.vast.vast_offer
"""

EXAMPLES = r"""
- name: Check the rented host before training (fails listing everything that is wrong)
  mlops.vast.gpu_check:
    gpu_name: [RTX_4090, A100, H100]
    gpu_count: 1
    min_vram_gb: 23.5
    min_cuda: "12.4"
    min_driver: "535.104"
    min_ram_gb: 30
    min_disk_gb: 40
    flash_attention: true
  register: gpu

- name: The same with a regex for the name, and asking the image's Python about torch
  mlops.vast.gpu_check:
    gpu_name: "A100|RTX_4090|H100"
    python: /opt/conda/bin/python
    require_torch_cuda: true
  register: gpu

- name: Record why a host was rejected without stopping the play
  mlops.vast.gpu_check:
    min_vram_gb: 40
    min_disk_gb: 100
  register: gpu
  ignore_errors: true

- name: Show the verdict
  ansible.builtin.debug:
    msg: "{{ gpu.failures | map(attribute='requirement') | list if gpu.failed else gpu.gpus[0].name }}"
"""

RETURN = r"""
msg:
  description:
    - Human-readable verdict. On failure, every unmet requirement with what was wanted and measured,
      or the cause why C(nvidia-smi) could not be used.
  returned: always
  type: str
  sample: >-
    GPU check failed on C.12345; 2 of 5 requirements not met;
    gpu_name wanted one of ['RTX 4090'], measured NVIDIA GeForce RTX 3060 on GPU 0;
    min_disk_gb wanted >= 5 GiB, measured 0.9 GiB free at /workspace
gpus:
  description: One entry per GPU, in C(nvidia-smi) order; empty when C(nvidia-smi) failed.
  returned: always
  type: list
  elements: dict
  contains:
    index:
      description: The GPU index C(nvidia-smi) uses.
      type: int
    name:
      description: The full model name, for example C(NVIDIA GeForce RTX 4090).
      type: str
    uuid:
      description: The GPU UUID.
      type: str
    memory_total_mb:
      description:
        - Total memory in MiB as C(nvidia-smi) reports it.
        - On a GPU split into MIG slices, the memory of its smallest visible slice (what one process can
          use), 0 when no slice is visible; the whole card's is in C(card_memory_total_mb).
      type: int
    memory_total_gb:
      description: Total memory in GiB, rounded to 0.1 (what O(min_vram_gb) is compared with).
      type: float
    memory_used_mb:
      description: Memory in use in MiB (of that slice, on a GPU split into MIG slices).
      type: int
    card_memory_total_mb:
      description: Only on a GPU with MIG enabled, the whole card's memory in MiB.
      type: int
    mig_devices:
      description:
        - Only on a GPU with MIG enabled, the slices of it this host can see, from the table's C(MIG devices).
        - Each has gpu_instance_id, compute_instance_id, mig_device, memory_used_mb, memory_total_mb and sm_count.
      type: list
      elements: dict
    utilization_gpu:
      description: GPU utilisation in percent, or null when not reported (MIG).
      type: int
    driver_version:
      description: The driver version.
      type: str
    compute_capability:
      description: The compute capability such as C(8.9), or null on drivers too old to report it.
      type: str
  sample:
    - index: 0
      name: NVIDIA GeForce RTX 4090
      uuid: GPU-0f4a4d1c-3b42-4c4e-9d57-2c8a51e3b9a1
      memory_total_mb: 24564
      memory_total_gb: 24.0
      memory_used_mb: 1
      utilization_gpu: 0
      driver_version: 550.54.14
      compute_capability: "8.9"
gpu_count:
  description: Number of GPUs C(nvidia-smi) listed.
  returned: always
  type: int
driver_version:
  description: The NVIDIA driver version, or null when C(nvidia-smi) failed.
  returned: always
  type: str
  sample: 550.54.14
cuda_version:
  description: The highest CUDA version the driver supports, from the C(nvidia-smi) banner, or null.
  returned: always
  type: str
  sample: "12.4"
nvidia_smi:
  description: The C(nvidia-smi) that was run, or null when none was found.
  returned: always
  type: str
error_cause:
  description:
    - Why C(nvidia-smi) could not be used, or null. One of C(nvidia_smi_missing), C(driver_error),
      C(no_devices), C(timeout), C(nvidia_smi_failed), C(unparseable_output).
  returned: always
  type: str
ram_total_gb:
  description: C(MemTotal) from C(/proc/meminfo) in GiB.
  returned: always
  type: float
ram_available_gb:
  description: C(MemAvailable) from C(/proc/meminfo) in GiB.
  returned: always
  type: float
ram_limit_gb:
  description: The cgroup memory limit in GiB, or null when there is none.
  returned: always
  type: float
disk_path:
  description: Where disk space was measured.
  returned: always
  type: str
  sample: /workspace
disk_free_gb:
  description: Space available to unprivileged users at RV(disk_path), in GiB (null if the path is missing).
  returned: always
  type: float
disk_total_gb:
  description: Size of the file system holding RV(disk_path), in GiB.
  returned: always
  type: float
cpu_count:
  description: CPUs this process may run on (its affinity mask), else the machine's CPU count.
  returned: always
  type: int
hostname:
  description: The machine's host name.
  returned: always
  type: str
torch:
  description: What O(python) says about PyTorch, or null when O(python) is not set.
  returned: always
  type: dict
  contains:
    python:
      description: The interpreter asked.
      type: str
    installed:
      description: Whether C(import torch) worked.
      type: bool
    version:
      description: C(torch.__version__).
      type: str
    python_version:
      description: The version of the interpreter asked, when it answered.
      type: str
    cuda_built:
      description: C(torch.version.cuda), the CUDA version torch was built with (null for CPU builds).
      type: str
    cuda_available:
      description: What torch's C(cuda.is_available) returned.
      type: bool
    device_count:
      description: What torch's C(cuda.device_count) returned.
      type: int
    devices:
      description: The name torch's C(cuda.get_device_name) gives each device.
      type: list
      elements: str
    bf16_supported:
      description: What torch's C(cuda.is_bf16_supported) returned.
      type: bool
    error:
      description: Why torch could not be imported or asked, or null.
      type: str
checks:
  description: Every requirement that was checked, with C(requirement), C(wanted), C(measured) and C(ok).
  returned: always
  type: list
  elements: dict
failures:
  description:
    - The unmet requirements, each with C(requirement) (the option name, or C(nvidia_smi) / C(disk_path)
      for a tool or path that could not be used), C(wanted), C(measured) and, for per-GPU
      requirements, C(gpus) (the indices that fail). Empty on success.
  returned: always
  type: list
  elements: dict
  sample:
    - requirement: min_vram_gb
      wanted: 40.0
      measured: 24.0
      gpus: [0]
"""

import json
import os
import re
import socket
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ..module_utils.nvidia_smi_parse import (
    QUERY_FIELDS,
    ParseError,
    gpus_from_query,
    parse_cuda_version,
    parse_table,
    version_at_least,
    version_tuple,
)

GIB = 1024**3
FLASH_ATTENTION_MIN_CC = "8.0"
DRIVER_FAILED = "couldn't communicate with the NVIDIA driver"
OLD_DRIVER_FIELD_ERROR = 'Field "compute_cap" is not a valid field'

# Asked of the O(python) interpreter; prints one JSON line. Kept to Python 3.6 syntax.
TORCH_PROBE = r"""
import json, sys
out = {"python_version": sys.version.split()[0], "installed": False, "version": None, "cuda_built": None,
       "cuda_available": False, "device_count": 0, "devices": [], "bf16_supported": False, "error": None}
try:
    import torch
except BaseException as exc:
    out["error"] = "%s: %s" % (type(exc).__name__, exc)
else:
    out["installed"] = True
    out["version"] = str(getattr(torch, "__version__", None))
    out["cuda_built"] = getattr(getattr(torch, "version", None), "cuda", None)
    try:
        out["cuda_available"] = bool(torch.cuda.is_available())
        if out["cuda_available"]:
            out["device_count"] = int(torch.cuda.device_count())
            out["devices"] = [str(torch.cuda.get_device_name(i)) for i in range(out["device_count"])]
            out["bf16_supported"] = bool(torch.cuda.is_bf16_supported())
    except BaseException as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
sys.stdout.write("\n" + json.dumps(out) + "\n")
"""


class SmiError(Exception):
    """nvidia-smi could not be used; ``cause`` is a short machine-readable reason."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


# --------------------------------------------------------------------------- measuring


def run(argv: list[str], timeout: int) -> tuple[int, str]:
    """(exit status, stdout + stderr) of a command; raises OSError or subprocess.TimeoutExpired."""
    completed = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    out = completed.stdout.decode("utf-8", "replace") + completed.stderr.decode("utf-8", "replace")
    return completed.returncode, out


def _short(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _smi_failure(argv: list[str], rc: int, out: str) -> SmiError:
    said = _short(out) or "nothing"
    if rc == 9 or DRIVER_FAILED in out:
        return SmiError("driver_error", f"NVIDIA driver error: nvidia-smi exited {rc} and said: {said}")
    if "No devices were found" in out or rc == 6:
        return SmiError("no_devices", f"no GPU visible: nvidia-smi exited {rc} and said: {said}")
    return SmiError("nvidia_smi_failed", f"{' '.join(argv)} exited {rc} and said: {said}")


def smi_command(smi: str, args: list[str], timeout: int) -> tuple[int, str]:
    argv = [smi, *args]
    try:
        return run(argv, timeout)
    except subprocess.TimeoutExpired:
        raise SmiError("timeout", f"{' '.join(argv)} did not answer within {timeout}s (hung driver or GPU)") from None
    except OSError as exc:
        raise SmiError("nvidia_smi_missing", f"cannot run {smi}: {exc.strerror or exc}") from None


def query_gpus(smi: str, timeout: int) -> tuple[list[dict], list[str]]:
    """GPUs from --query-gpu, falling back to a query without compute_cap on drivers before 510."""
    warnings = []
    fields = list(QUERY_FIELDS)
    args = [f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    rc, out = smi_command(smi, args, timeout)
    if rc != 0 and OLD_DRIVER_FIELD_ERROR in out:
        fields.remove("compute_cap")
        args = [f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        rc, out = smi_command(smi, args, timeout)
        warnings.append("this driver's nvidia-smi cannot report compute_cap; compute capability is unknown")
    if rc != 0:
        raise _smi_failure([smi, *args], rc, out)
    try:
        gpus = gpus_from_query(out, fields)
    except ParseError as exc:
        raise SmiError("unparseable_output", f"cannot parse the output of nvidia-smi {args[0]}: {exc}") from None
    for gpu in gpus:
        gpu["memory_total_gb"] = round(gpu["memory_total_mb"] / 1024, 1)
    return gpus, warnings


def query_cuda(smi: str, timeout: int) -> tuple[str | None, str | None, dict | None, list[str]]:
    """(CUDA version, driver version, parsed table or None) from the plain table; CUDA else from --version."""
    warnings = []
    table = None
    rc, out = smi_command(smi, [], timeout)
    if rc == 0:
        try:
            table = parse_table(out)
        except ParseError as exc:
            warnings.append(f"cannot read the nvidia-smi table: {exc}")
        else:
            if table["cuda_version"]:
                return table["cuda_version"], table["driver_version"], table, warnings
    else:
        warnings.append(f"nvidia-smi (table) exited {rc}: {_short(out, 200)}")
    rc, out = smi_command(smi, ["--version"], timeout)
    cuda = None
    if rc == 0:
        try:
            cuda = parse_cuda_version(out)
        except ParseError as exc:
            warnings.append(f"cannot read nvidia-smi --version: {exc}")
    if cuda is None:
        warnings.append("nvidia-smi does not say which CUDA version the driver supports")
    return cuda, table["driver_version"] if table else None, table, warnings


def apply_mig(gpus: list[dict], table: dict | None) -> list[str]:
    """Give each GPU split into MIG slices the memory of a slice, not of the whole card.

    --query-gpu reports the whole card's memory.total even when MIG is on, but a process runs on
    one slice and can use only that slice's memory. The table's "MIG devices:" lists the slices
    this host can see; a GPU with MIG on gets the smallest of them (any slice a job lands on has
    at least that much), 0 when none is visible. The card's own total stays in card_memory_total_mb.
    """
    warnings: list[str] = []
    if not table:
        return warnings
    by_index = {gpu["index"]: gpu for gpu in table["gpus"]}
    for gpu in gpus:
        row = by_index.get(gpu["index"])
        if row is None or (row.get("mig_mode") != "Enabled" and not row.get("mig_devices")):
            continue
        slices = row.get("mig_devices") or []
        gpu["card_memory_total_mb"] = gpu["memory_total_mb"]
        gpu["mig_devices"] = [{k: v for k, v in s.items() if k != "gpu"} for s in slices]
        if slices:
            smallest = min(slices, key=lambda s: s["memory_total_mb"])
            gpu["memory_total_mb"] = smallest["memory_total_mb"]
            gpu["memory_used_mb"] = smallest["memory_used_mb"]
        else:
            gpu["memory_total_mb"] = 0
            warnings.append(f"MIG is enabled on GPU {gpu['index']} but no MIG device is visible; "
                            "its usable memory counts as 0")
        gpu["memory_total_gb"] = round(gpu["memory_total_mb"] / 1024, 1)
    return warnings


def find_nvidia_smi(module: AnsibleModule, name: str) -> str | None:
    if "/" in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return module.get_bin_path(name, opt_dirs=["/usr/local/nvidia/bin"])


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo as bytes per key."""
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            key, _sep, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key.strip()] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def cgroup_memory_limit(root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's cgroup in bytes (v2 or v1), None when unlimited or unknown."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            with open(os.path.join(root, name), encoding="utf-8") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        # v1 writes "unlimited" as a huge page-aligned number.
        if text.isdigit() and int(text) < 2**60:
            return int(text)
        return None
    return None


def system_facts(disk_path: str | None) -> tuple[dict, list[dict], list[str]]:
    """RAM, disk, CPU and host name; a path that cannot be measured is a problem, no meminfo a warning."""
    problems, warnings = [], []
    facts: dict = {"ram_total_gb": None, "ram_available_gb": None, "ram_limit_gb": None}
    try:
        mem = read_meminfo()
        facts["ram_total_gb"] = round(mem["MemTotal"] / GIB, 1)
        if "MemAvailable" in mem:
            facts["ram_available_gb"] = round(mem["MemAvailable"] / GIB, 1)
    except (OSError, KeyError, ValueError) as exc:
        warnings.append(f"cannot read MemTotal from /proc/meminfo: {exc}")
    limit = cgroup_memory_limit()
    facts["ram_limit_gb"] = None if limit is None else round(limit / GIB, 1)

    if disk_path is None:
        disk_path = "/workspace" if os.path.isdir("/workspace") else "/"
    facts["disk_path"] = disk_path
    try:
        stat = os.statvfs(disk_path)
        facts["disk_free_gb"] = round(stat.f_bavail * stat.f_frsize / GIB, 1)
        facts["disk_total_gb"] = round(stat.f_blocks * stat.f_frsize / GIB, 1)
    except OSError as exc:
        facts["disk_free_gb"] = facts["disk_total_gb"] = None
        problems.append({"requirement": "disk_path", "wanted": f"an existing path ({disk_path})",
                         "measured": exc.strerror or str(exc)})
    try:
        facts["cpu_count"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        facts["cpu_count"] = os.cpu_count()
    facts["hostname"] = socket.gethostname()
    return facts, problems, warnings


def probe_torch(python: str, timeout: int) -> dict:
    """Ask ``python`` about torch and CUDA; every problem ends up in ``error``, never raised."""
    result: dict = {"python": python, "installed": False, "version": None, "cuda_built": None,
                    "cuda_available": False, "device_count": 0, "devices": [], "bf16_supported": False,
                    "error": None}
    try:
        rc, out = run([python, "-c", TORCH_PROBE], timeout)
    except subprocess.TimeoutExpired:
        result["error"] = f"{python} did not answer within {timeout}s"
        return result
    except OSError as exc:
        result["error"] = f"cannot run {python}: {exc.strerror or exc}"
        return result
    lines = [line for line in out.splitlines() if line.startswith("{")]
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        result["error"] = f"{python} exited {rc} without an answer: {_short(out, 300)}"
        return result
    result.update(answer)
    return result


# --------------------------------------------------------------------------- requirements


def _norm_name(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def name_matcher(wanted: str | list[str]):
    """A predicate on GPU names: a list is a set of substrings, a string a regex (``_`` = space)."""
    if isinstance(wanted, str):
        pattern = re.compile(wanted.replace("_", " "), re.IGNORECASE)
        return lambda name: pattern.search(name) is not None
    needles = [_norm_name(str(w)) for w in wanted]
    return lambda name: any(needle in _norm_name(name) for needle in needles)


def _per_gpu(gpus: list[dict], requirement: str, wanted, value_of, ok_for, worst) -> dict:
    failing = [g for g in gpus if not ok_for(g)]
    measured = worst([value_of(g) for g in (failing or gpus)]) if gpus else None
    check = {"requirement": requirement, "wanted": wanted, "measured": measured, "ok": not failing and bool(gpus)}
    if failing:
        check["gpus"] = [g["index"] for g in failing]
    return check


def _lowest_version(values: list):
    known = [v for v in values if version_tuple(v) is not None]
    if len(known) < len(values) or not values:
        return None
    return min(known, key=version_tuple)


def evaluate(facts: dict, req: dict) -> list[dict]:
    """Every requirement set in ``req`` as {requirement, wanted, measured, ok[, gpus]}.

    ``facts`` holds what was measured (gpus, driver_version, cuda_version, ram, disk, torch);
    ``gpus`` None means nvidia-smi could not be used: GPU requirements are then unmet, measured None.
    """
    checks: list[dict] = []
    known = facts.get("gpus") is not None
    gpus = facts.get("gpus") or []
    if req.get("gpu_count") is not None:
        measured = len(gpus) if known else None
        checks.append({"requirement": "gpu_count", "wanted": req["gpu_count"], "measured": measured,
                       "ok": measured == req["gpu_count"]})
    if req.get("gpu_name") not in (None, "", []):
        matches = name_matcher(req["gpu_name"])
        checks.append(_per_gpu(gpus, "gpu_name", req["gpu_name"], lambda g: g["name"],
                               lambda g: matches(g["name"]), lambda values: values[0]))
    if req.get("min_vram_gb") is not None:
        checks.append(_per_gpu(gpus, "min_vram_gb", req["min_vram_gb"], lambda g: g["memory_total_gb"],
                               lambda g: g["memory_total_gb"] >= req["min_vram_gb"], min))
    for name, wanted in (("min_compute_capability", req.get("min_compute_capability")),
                         ("flash_attention", FLASH_ATTENTION_MIN_CC if req.get("flash_attention") else None)):
        if wanted is not None:
            checks.append(_per_gpu(gpus, name, wanted, lambda g: g["compute_capability"],
                                   lambda g, w=wanted: version_at_least(g["compute_capability"], w),
                                   _lowest_version))
    for name, key in (("min_driver", "driver_version"), ("min_cuda", "cuda_version")):
        if req.get(name):
            measured = facts.get(key)
            checks.append({"requirement": name, "wanted": req[name], "measured": measured,
                           "ok": version_at_least(measured, req[name])})
    if req.get("min_ram_gb") is not None:
        known = [v for v in (facts.get("ram_total_gb"), facts.get("ram_limit_gb")) if v is not None]
        measured = min(known) if known else None
        checks.append({"requirement": "min_ram_gb", "wanted": req["min_ram_gb"], "measured": measured,
                       "ok": measured is not None and measured >= req["min_ram_gb"]})
    if req.get("min_disk_gb") is not None:
        measured = facts.get("disk_free_gb")
        checks.append({"requirement": "min_disk_gb", "wanted": req["min_disk_gb"], "measured": measured,
                       "ok": measured is not None and measured >= req["min_disk_gb"]})
    if req.get("require_torch_cuda"):
        torch = facts.get("torch") or {}
        if not torch:
            measured = "no python given"
        elif not torch.get("installed"):
            measured = f"torch not importable ({torch.get('error')})"
        elif not torch.get("cuda_available") or not torch.get("device_count"):
            built = torch.get("cuda_built") or "no CUDA (CPU build)"
            measured = f"torch {torch.get('version')} built for {built} sees no CUDA device"
            if torch.get("error"):
                measured += f" ({torch['error']})"
        else:
            measured = f"torch {torch.get('version')} sees {torch['device_count']} CUDA device(s)"
        ok = bool(torch.get("installed") and torch.get("cuda_available") and torch.get("device_count"))
        checks.append({"requirement": "require_torch_cuda", "wanted": True, "measured": measured, "ok": ok})
    return checks


_GIB_REQUIREMENTS = ("min_vram_gb", "min_ram_gb", "min_disk_gb")
_WANTED_TEXT = {
    "gpu_count": "exactly {}",
    "min_compute_capability": ">= {}",
    "flash_attention": "compute capability >= {}",
    "min_driver": ">= {}",
    "min_cuda": ">= {}",
}


def _text(value) -> str:
    if value is None:
        return "unknown"
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(failure: dict, facts: dict) -> str:
    """One failure as text: ``min_vram_gb wanted >= 40 GiB, measured 24 GiB on GPU 0, 1 (NVIDIA ...)``."""
    requirement, wanted, measured = failure["requirement"], failure["wanted"], failure["measured"]
    if requirement == "gpu_name":
        wanted_text = f"one of {wanted}" if isinstance(wanted, list) else f"matching /{wanted}/"
    elif requirement in _GIB_REQUIREMENTS:
        wanted_text = f">= {_text(wanted)} GiB"
    else:
        wanted_text = _WANTED_TEXT.get(requirement, "{}").format(_text(wanted))
    measured_text = _text(measured)
    if requirement in _GIB_REQUIREMENTS and measured is not None:
        measured_text += " GiB"
    text = f"{requirement} wanted {wanted_text}, measured {measured_text}"
    if failure.get("gpus"):
        text += " on GPU " + ", ".join(str(i) for i in failure["gpus"])
        names = sorted({g["name"] for g in facts.get("gpus") or [] if g["index"] in failure["gpus"]})
        if requirement != "gpu_name" and names:
            text += f" ({', '.join(names)})"
    elif requirement == "min_disk_gb":
        text += f" free at {facts.get('disk_path')}"
    return text


# --------------------------------------------------------------------------- module


def validate(module: AnsibleModule) -> None:
    params = module.params
    for name in ("min_compute_capability", "min_driver", "min_cuda"):
        if params[name] is not None and version_tuple(params[name]) is None:
            module.fail_json(msg=f"{name} must be a dotted version such as 12.4, got {params[name]!r}")
    for name in ("gpu_count", "timeout"):
        if params[name] is not None and params[name] <= 0:
            module.fail_json(msg=f"{name} must be more than 0, got {params[name]:g}")
    wanted = params["gpu_name"]
    if isinstance(wanted, list):
        if not all(isinstance(w, str) for w in wanted):
            module.fail_json(msg=f"gpu_name must be a list of names or one regex string, got {wanted!r}")
    elif wanted is not None:
        if not isinstance(wanted, str):
            module.fail_json(msg=f"gpu_name must be a list of names or one regex string, got {wanted!r}")
        try:
            re.compile(wanted.replace("_", " "))
        except re.error as exc:
            module.fail_json(msg=f"gpu_name is not a valid regular expression ({exc}): {wanted!r}")
    if params["timeout"] < 1:
        module.fail_json(msg=f"timeout must be at least 1 second, got {params['timeout']}")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
            "disk_path": {"type": "path"},
            "python": {"type": "path"},
            "timeout": {"type": "int", "default": 60},
            "min_vram_gb": {"type": "float"},
            "gpu_name": {"type": "raw"},
            "gpu_count": {"type": "int"},
            "min_compute_capability": {"type": "str"},
            "flash_attention": {"type": "bool", "default": False},
            "min_driver": {"type": "str"},
            "min_cuda": {"type": "str"},
            "min_ram_gb": {"type": "float"},
            "min_disk_gb": {"type": "float"},
            "require_torch_cuda": {"type": "bool", "default": False},
        },
        required_if=[("require_torch_cuda", True, ("python",))],
        supports_check_mode=True,
    )
    validate(module)
    params = module.params
    timeout = params["timeout"]

    facts, problems, warnings = system_facts(params["disk_path"])
    result: dict = {"changed": False, "gpus": [], "gpu_count": 0, "driver_version": None, "cuda_version": None,
                    "nvidia_smi": None, "error_cause": None, "torch": None, **facts}
    smi_problem = None
    try:
        smi = find_nvidia_smi(module, params["nvidia_smi"])
        if smi is None:
            where = "" if "/" in params["nvidia_smi"] else f" on PATH ({os.environ.get('PATH', '')})"
            raise SmiError("nvidia_smi_missing",
                           f"nvidia-smi not found (no executable {params['nvidia_smi']}{where}), "
                           "so no NVIDIA driver can be used here")
        result["nvidia_smi"] = smi
        gpus, more = query_gpus(smi, timeout)
        warnings += more
        result.update(gpus=gpus, gpu_count=len(gpus), driver_version=gpus[0]["driver_version"])
        cuda, table_driver, table, more = query_cuda(smi, timeout)
        warnings += more
        warnings += apply_mig(gpus, table)
        result["cuda_version"] = cuda
        result["driver_version"] = result["driver_version"] or table_driver
    except SmiError as exc:
        result["error_cause"] = exc.cause
        smi_problem = {"requirement": "nvidia_smi", "wanted": "a working nvidia-smi", "measured": str(exc)}

    if params["python"]:
        result["torch"] = probe_torch(params["python"], timeout)

    requirements = {name: params[name] for name in (
        "gpu_count", "gpu_name", "min_vram_gb", "min_compute_capability", "flash_attention", "min_driver",
        "min_cuda", "min_ram_gb", "min_disk_gb", "require_torch_cuda")}
    measured = dict(result, gpus=None if smi_problem else result["gpus"])
    checks = evaluate(measured, requirements)
    failures = [{k: v for k, v in check.items() if k != "ok"} for check in checks if not check["ok"]]
    failures = ([smi_problem] if smi_problem else []) + problems + failures
    result.update(checks=checks, failures=failures)
    for warning in warnings:
        module.warn(warning)

    if failures:
        unmet = [f for f in failures if f["requirement"] not in ("nvidia_smi", "disk_path")]
        parts = [describe(f, result) for f in unmet]
        head = f"GPU check failed on {result['hostname']}"
        if smi_problem:
            head += f": {smi_problem['measured']}"
        if unmet:
            head += f"; {len(unmet)} of {len(checks)} requirements not met"
        other = [f"{p['requirement']}: {p['measured']}" for p in problems]
        module.fail_json(msg="; ".join([head, *other, *parts]), **result)
    summary = ", ".join(f"{g['index']}: {g['name']} {g['memory_total_gb']} GiB cc {g['compute_capability']}"
                        for g in result["gpus"])
    module.exit_json(msg=f"{len(checks)} requirements met; GPUs {summary or 'none'}; "
                         f"driver {result['driver_version']}, CUDA {result['cuda_version']}", **result)


if __name__ == "__main__":
    main()
