"""gpu_check: its nvidia-smi parser on real captures, its requirement checks, and main() for real.

The expected values in FIXTURES were typed in by hand from the fixture files
(tests/fixtures/nvidia-smi, see SOURCES.md there), not produced by the parser.
main() runs through Ansible's patch_module_args against the simulator's fake
nvidia-smi (src/mlops_vast/sim/nvidia_smi.py) installed on a temporary PATH, the
way vastsim installs it on instances.
"""

from __future__ import annotations

import ast
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.mlops.vast.plugins.module_utils import nvidia_smi_parse as smi
from ansible_collections.mlops.vast.plugins.modules import gpu_check

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"
FAKE_SMI = ROOT / "src" / "mlops_vast" / "sim" / "nvidia_smi.py"

RTX4090 = "NVIDIA GeForce RTX 4090"
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
RTX3090 = "NVIDIA GeForce RTX 3090"
H200 = "NVIDIA H200"
MASKED_UUID = "GPU-00000000-0000-0000-0000-000000000000"

# --------------------------------------------------------------------------- the real captures

# Per fixture file: what a reader sees in it. Tables list (index, name, used MiB, total MiB, bus id).
TABLES: dict[str, dict[str, Any]] = {
    "rtx4090x8_550.127.05_table.txt": {
        "driver": "550.127.05", "cuda": "12.4",
        "gpus": [(0, RTX4090, 2, 24564, "00000000:01:00.0"), (1, RTX4090, 2, 24564, "00000000:25:00.0"),
                 (2, RTX4090, 2, 24564, "00000000:41:00.0"), (3, RTX4090, 2, 24564, "00000000:61:00.0"),
                 (4, RTX4090, 2, 24564, "00000000:81:00.0"), (5, RTX4090, 2, 24564, "00000000:A1:00.0"),
                 (6, RTX4090, 2, 24564, "00000000:C1:00.0"), (7, RTX4090, 2, 24564, "00000000:E1:00.0")],
        "first": {"persistence_mode": "On", "ecc": "Off", "fan": "0%", "temperature": "28C",
                  "performance_state": "P8", "power_usage": "20W", "power_cap": "450W", "mig_mode": None},
    },
    "rtx3090x2_560.35.03_table.txt": {
        "driver": "560.35.03", "cuda": "12.6",
        "gpus": [(0, RTX3090, 2, 24576, "00000000:41:00.0"), (1, RTX3090, 2, 24576, "00000000:81:00.0")],
        "first": {"fan": "30%", "temperature": "30C", "power_usage": "30W", "power_cap": "350W", "ecc": "N/A"},
    },
    "a100-sxm4-80gb-x4_555.42.02_table.txt": {
        "driver": "555.42.02", "cuda": "12.5",
        "gpus": [(0, A100, 1, 81920, "00000000:68:00.0"), (1, A100, 1, 81920, "00000000:9E:00.0"),
                 (2, A100, 1, 81920, "00000000:C2:00.0"), (3, A100, 1, 81920, "00000000:D4:00.0")],
        "first": {"fan": None, "temperature": "25C", "performance_state": "P0", "power_usage": "59W",
                  "power_cap": "500W", "ecc": "0", "mig_mode": "Disabled"},
    },
    "h100-80gb-hbm3-x8_565.57.01_table.txt": {
        "driver": "565.57.01", "cuda": "12.7",
        "gpus": [(0, H100, 1, 81559, "00000000:18:00.0"), (1, H100, 1, 81559, "00000000:2A:00.0"),
                 (2, H100, 1, 81559, "00000000:3A:00.0"), (3, H100, 1, 81559, "00000000:5D:00.0"),
                 (4, H100, 1, 81559, "00000000:9A:00.0"), (5, H100, 1, 81559, "00000000:AB:00.0"),
                 (6, H100, 1, 81559, "00000000:BA:00.0"), (7, H100, 1, 81559, "00000000:DB:00.0")],
        "first": {"power_usage": "100W", "power_cap": "700W", "mig_mode": "Disabled"},
    },
    "h100-80gb-hbm3_590.48.01_table.txt": {
        "driver": "590.48.01", "cuda": "13.1",
        "gpus": [(0, H100, 0, 81559, "00000000:00:09.0")],
        "first": {"temperature": "41C", "power_usage": "69W", "power_cap": "700W", "display_active": "Off"},
    },
    "rtx4080-super_595.71.05_table.txt": {
        "driver": "595.71.05", "cuda": "13.2",
        # The tool cuts the name to fit its column.
        "gpus": [(0, "NVIDIA GeForce RTX 4080 ...", 596, 16376, "00000000:01:00.0")],
        "first": {"name_truncated": True, "persistence_mode": "Off", "display_active": "On", "fan": "0%",
                  "temperature": "43C", "power_usage": "25W", "power_cap": "320W"},
    },
    "quadro-rtx4000-x2_535.129.03_table-head.txt": {
        "driver": "535.129.03", "cuda": "12.2",
        # Only GPU 0's block is in the stored excerpt.
        "gpus": [(0, "Quadro RTX 4000", 1, 8192, "00000000:06:00.0")],
        "first": {"persistence_mode": "Off", "fan": "30%", "temperature": "25C", "performance_state": "P8",
                  "power_usage": "10W", "power_cap": "125W", "ecc": "N/A", "mig_mode": None},
    },
    # Driver 610: "KMD Version" and "CUDA UMD Version" in the banner; MIG on, one 3g.71gb slice.
    "h200-mig_610.43.02_table.txt": {
        "driver": "610.43.02", "cuda": "13.3",
        "gpus": [(0, H200, 44, 143771, "00000000:83:00.0")],
        "first": {"persistence_mode": "On", "driver_model": None, "ecc": "On", "fan": None, "temperature": "40C",
                  "power_usage": "130W", "power_cap": "700W", "mig_mode": "Enabled", "utilization_gpu": None,
                  "mig_devices": [{"gpu": 0, "gpu_instance_id": 2, "compute_instance_id": 0, "mig_device": 0,
                                   "memory_used_mb": 44, "memory_total_mb": 71424, "sm_count": 60}]},
    },
    # Windows: the persistence column is "Driver-Model" and holds WDDM.
    "rtx2080-super_610.62_windows-wddm_table.txt": {
        "driver": "610.62", "cuda": "13.3",
        "gpus": [(0, "NVIDIA GeForce RTX 2080 ...", 797, 8192, "00000000:0C:00.0")],
        "first": {"name_truncated": True, "persistence_mode": None, "driver_model": "WDDM", "display_active": "On",
                  "fan": "38%", "temperature": "39C", "power_usage": "37W", "power_cap": "250W", "mig_mode": None,
                  "mig_devices": []},
    },
    # Driver 346: no CUDA version in the banner, no MIG row, the old narrow layout.
    "grid-k520_346.46_table.txt": {
        "driver": "346.46", "cuda": None,
        "gpus": [(0, "GRID K520", 10, 4095, "0000:00:03.0")],
        "first": {"persistence_mode": "Off", "display_active": "Off", "ecc": "N/A", "fan": None,
                  "temperature": "37C", "power_usage": "35W", "power_cap": "125W", "mig_mode": None},
    },
    # Driver 575 whose CUDA part is broken: "CUDA Version: N/A".
    "rtx5070_575.64.03_table-head.txt": {
        "driver": "575.64.03", "cuda": None,
        "gpus": [(0, "NVIDIA GeForce RTX 5070", 1731, 12227, "00000000:02:00.0")],
        "first": {"persistence_mode": "Off", "display_active": "On", "utilization_gpu": 25, "power_usage": "29W"},
    },
}

# Tables where the GPU is not idle (utilisation other than 0, or not reported under MIG).
BUSY_TABLES = {"h200-mig_610.43.02_table.txt", "rtx5070_575.64.03_table-head.txt"}

# --query-gpu=<every field> --format=csv captures (with header and units).
QUERIES: dict[str, dict[str, Any]] = {
    "h100-80gb-hbm3_590.48.01_query-gpu-all.csv": {
        "index": 0, "name": H100, "uuid": "GPU-00000000-0000-0000-0000-000000000000", "memory_total_mb": 81559,
        "memory_used_mb": 0, "utilization_gpu": 0, "driver_version": "590.48.01", "compute_capability": "9.0",
    },
    "rtx4080-super_595.71.05_query-gpu-all.csv": {
        "index": 0, "name": "NVIDIA GeForce RTX 4080 SUPER", "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        "memory_total_mb": 16376, "memory_used_mb": 596, "utilization_gpu": 0, "driver_version": "595.71.05",
        "compute_capability": "8.9",
    },
}

LISTS: dict[str, list[tuple[int, str, str]]] = {
    "h100-80gb-hbm3_590.48.01_list.txt": [(0, H100, "GPU-00000000-0000-0000-0000-000000000000")],
    "h200-mig_610.43.02_list.txt": [(0, H200, MASKED_UUID)],
    "a100-80gb-pcie_530.30.02_mig-list.txt": [(0, "NVIDIA A100 80GB PCIe",
                                                "GPU-932bfb2c-849a-2a22-1e84-9eff6bc02b39")],
    "a100-sxm4-80gb-x4_mig-list.txt": [(0, A100, "GPU-513536b6-7d19-9063-b049-1e69664bb298"),
                                       (1, A100, "GPU-d8594bd4-0fc3-8595-e355-7c98138f3b95"),
                                       (2, A100, "GPU-5e375e7e-b41f-155b-dcdc-534524c356fc"),
                                       (3, A100, "GPU-69ec2344-ebac-b028-f88f-452abb3d7f11")],
    "quadro-rtx4000-x2_535.129.03_list.txt": [(0, "Quadro RTX 4000", "GPU-c7b57be0-94ff-d352-a59b-d0ee00aeed43"),
                                              (1, "Quadro RTX 4000", "GPU-d6de6afc-bdfe-75c4-5273-0544439153fc")],
}

VERSIONS: dict[str, dict[str, str]] = {
    "h100-80gb-hbm3_590.48.01_version.txt": {"nvidia_smi_version": "590.48.01", "driver_version": "590.48.01",
                                             "cuda_version": "13.1"},
    # 610: "DRIVER version : Deprecated, see ..." must not be read as a version.
    "h200-mig_610.43.02_version.txt": {"nvidia_smi_version": "610.43.02", "driver_version": "610.43.02",
                                       "cuda_version": "13.3"},
}

# Fixtures that are only part of a table (the "MIG devices:" box alone).
EXCERPTS = {"a100-sxm4-80gb_mig-devices-excerpt.txt"}


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_every_fixture_has_expectations_and_there_are_four_models() -> None:
    files = {p.name for p in FIXTURES.iterdir() if p.name != "SOURCES.md"}
    assert files == set(TABLES) | set(QUERIES) | set(LISTS) | set(VERSIONS) | EXCERPTS
    models = {gpu[1] for spec in TABLES.values() for gpu in spec["gpus"]} | {q["name"] for q in QUERIES.values()}
    assert len(models) >= 4, models


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_fixture(name: str) -> None:
    expected = TABLES[name]
    parsed = smi.parse_table(fixture_text(name))
    assert parsed["driver_version"] == expected["driver"]
    assert parsed["nvidia_smi_version"] == expected["driver"]
    assert parsed["cuda_version"] == expected["cuda"]
    assert smi.parse_cuda_version(fixture_text(name)) == expected["cuda"]
    got = [(g["index"], g["name"], g["memory_used_mb"], g["memory_total_mb"], g["bus_id"]) for g in parsed["gpus"]]
    assert got == expected["gpus"]
    assert all(g["compute_mode"] == "Default" for g in parsed["gpus"])
    if name not in BUSY_TABLES:
        assert all(g["utilization_gpu"] == 0 for g in parsed["gpus"])
    first = parsed["gpus"][0]
    for key, value in expected["first"].items():
        assert first[key] == value, key
    if "name_truncated" not in expected["first"]:
        assert not any(g["name_truncated"] for g in parsed["gpus"])


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_query_fixture(name: str) -> None:
    text = fixture_text(name)
    gpus = smi.gpus_from_query(text, header=True)
    assert len(gpus) == 1
    assert gpus[0] == QUERIES[name]
    rows = smi.parse_query_csv(text)
    # The header's units are gone from the keys; [N/A] is None.
    assert rows[0]["memory.total"] == f"{QUERIES[name]['memory_total_mb']} MiB"
    assert rows[0]["count"] == "1"
    assert rows[0]["vgpu_driver_capability.heterogenous_multivGPU"] is None


def test_the_4080_query_gives_the_name_the_table_truncates() -> None:
    table = smi.parse_table(fixture_text("rtx4080-super_595.71.05_table.txt"))
    query = smi.gpus_from_query(fixture_text("rtx4080-super_595.71.05_query-gpu-all.csv"), header=True)
    assert table["gpus"][0]["name"] == "NVIDIA GeForce RTX 4080 ..."
    assert query[0]["name"] == "NVIDIA GeForce RTX 4080 SUPER"


@pytest.mark.parametrize("name", sorted(LISTS))
def test_list_fixture(name: str) -> None:
    assert [(g["index"], g["name"], g["uuid"]) for g in smi.parse_list(fixture_text(name))] == LISTS[name]


@pytest.mark.parametrize("name", sorted(VERSIONS))
def test_version_fixture(name: str) -> None:
    assert smi.parse_version(fixture_text(name)) == VERSIONS[name]
    assert smi.parse_cuda_version(fixture_text(name)) == VERSIONS[name]["cuda_version"]


def test_query_noheader_nounits_as_gpu_check_asks() -> None:
    text = ("0, NVIDIA GeForce RTX 4090, GPU-a, 24564, 1, 0, 550.54.14, 8.9\n"
            "1, NVIDIA GeForce RTX 4090, GPU-b, 24564, 20000, 97, 550.54.14, 8.9\n")
    gpus = smi.gpus_from_query(text)
    assert [(g["index"], g["memory_used_mb"], g["utilization_gpu"]) for g in gpus] == [(0, 1, 0), (1, 20000, 97)]
    assert gpus[1]["compute_capability"] == "8.9" and gpus[1]["uuid"] == "GPU-b"
    # MIG mode: no whole-GPU utilisation.
    assert smi.gpus_from_query("0, NVIDIA A100-SXM4-80GB, GPU-c, 81920, 0, [N/A], 555.42.02, 8.0\n")[0][
        "utilization_gpu"] is None


@pytest.mark.parametrize("text", [
    "",
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n\n",
    "0, NVIDIA GeForce RTX 4090, GPU-a, lots, 1, 0, 550.54.14, 8.9\n",
    "0, NVIDIA GeForce RTX 4090, GPU-a, 24564, 1, 0, 550.54.14, eight\n",
    "0, NVIDIA GeForce RTX 4090, 24564\n",
])
def test_query_parse_errors_name_the_problem(text: str) -> None:
    with pytest.raises(smi.ParseError):
        smi.gpus_from_query(text)


def test_table_without_banner_is_a_parse_error() -> None:
    with pytest.raises(smi.ParseError, match="banner"):
        smi.parse_table("something else entirely\n")
    with pytest.raises(smi.ParseError, match="no GPU rows"):
        smi.parse_table(fixture_text("grid-k520_346.46_table.txt").split("|===")[0])


def test_mig_list_gives_each_gpu_its_slices() -> None:
    [h200] = smi.parse_list(fixture_text("h200-mig_610.43.02_list.txt"))
    assert h200["mig_devices"] == [{"profile": "3g.71gb", "index": 0,
                                    "uuid": "MIG-f165f0ad-bde2-5b72-acdf-73bbf48eeb2c", "memory_total_mb": 71 * 1024}]
    [a100] = smi.parse_list(fixture_text("a100-80gb-pcie_530.30.02_mig-list.txt"))
    assert [(m["profile"], m["index"], m["uuid"]) for m in a100["mig_devices"]] == [
        ("3g.40gb", 0, "MIG-0929581a-2be6-5dec-bf34-0954c6c529a6"),
        ("3g.40gb", 1, "MIG-3adbed3a-d03d-549f-a016-ba1fd7359f23")]
    assert {m["memory_total_mb"] for m in a100["mig_devices"]} == {40 * 1024}
    four = smi.parse_list(fixture_text("a100-sxm4-80gb-x4_mig-list.txt"))
    assert [len(g["mig_devices"]) for g in four] == [4, 0, 0, 0]
    assert {m["profile"] for m in four[0]["mig_devices"]} == {"1g.20gb"}
    # A GPU without MIG has no slices.
    assert smi.parse_list(fixture_text("h100-80gb-hbm3_590.48.01_list.txt"))[0]["mig_devices"] == []


def test_mig_devices_table_with_several_slices_per_gpu() -> None:
    # The real "MIG devices:" box of an older driver (narrow layout, "Memory-Usage" without "Shared"),
    # under a synthetic banner and GPU block in the same layout (the stored excerpt has no GPU block).
    head = ("| NVIDIA-SMI 470.57.02    Driver Version: 470.57.02    CUDA Version: 11.4     |\n"
            "|   1  NVIDIA A100-SXM...  On   | 00000000:0F:00.0 Off |                   On |\n"
            "| N/A   36C    P0   106W / 400W |  24205MiB / 81251MiB |     N/A      Default |\n"
            "|                               |                      |              Enabled |\n\n")
    parsed = smi.parse_table(head + fixture_text("a100-sxm4-80gb_mig-devices-excerpt.txt"))
    slices = parsed["gpus"][0]["mig_devices"]
    assert [(d["gpu_instance_id"], d["mig_device"], d["memory_used_mb"], d["memory_total_mb"], d["sm_count"])
            for d in slices] == [(3, 0, 14366, 19968, 28), (5, 1, 9826, 19968, 28), (6, 2, 13, 19968, 28)]
    assert parsed["gpus"][0]["memory_total_mb"] == 81251


def test_query_on_a_mig_gpu_reports_the_whole_card() -> None:
    # Why gpu_check takes the slice's memory from the table: --query-gpu on the same H200 (610.43.02,
    # MIG on, one 3g.71gb slice) says memory.total 143771 MiB, the whole card. Values typed from the
    # capture's "idle :: query-gpu" row, as gpu_check asks for them (noheader, nounits).
    gpus = smi.gpus_from_query(f"0, {H200}, {MASKED_UUID}, 143771, 44, [N/A], 610.43.02, 9.0\n")
    assert gpus[0]["memory_total_mb"] == 143771 and gpus[0]["utilization_gpu"] is None


# What nvidia-smi prints instead of output. The first three are real (SOURCES.md); the others are the
# documented messages of the tool, as one line each.
ERROR_TEXTS = [
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest "
    "NVIDIA driver is installed and running.\n\n",
    "No devices were found\n",
    'Field "compute_cap" is not a valid field to query.\n\n',
    "Failed to initialize NVML: Driver/library version mismatch\n",
    "ERROR: Option -format=csv is not recognized. Please run 'nvidia-smi -h' for help.\n\n",
]


@pytest.mark.parametrize("text", ERROR_TEXTS)
def test_every_parser_refuses_error_text(text: str) -> None:
    parsers = [smi.parse_table, smi.parse_list, smi.parse_version, smi.parse_cuda_version, smi.parse_query_csv,
               smi.gpus_from_query, lambda t: smi.gpus_from_query(t, header=True),
               lambda t: smi.parse_query_csv(t, list(smi.QUERY_FIELDS))]
    for parse in parsers:
        with pytest.raises(smi.ParseError, match="error instead of"):
            parse(text)
    assert smi.error_message(text) == text.strip().splitlines()[0]


@pytest.mark.parametrize("parse", [smi.parse_list, smi.parse_version, smi.parse_table, smi.parse_query_csv])
def test_parsers_never_answer_nothing_for_garbage(parse) -> None:
    with pytest.raises(smi.ParseError):
        parse("something else entirely\n")


def test_real_outputs_are_not_taken_for_errors() -> None:
    for path in FIXTURES.iterdir():
        if path.name != "SOURCES.md":
            assert smi.error_message(path.read_text(encoding="utf-8")) is None, path.name
    # A query of processes when none run is a header and no rows: an empty list, not an error.
    assert smi.parse_query_csv("pid, process_name, used_gpu_memory [MiB]\n") == []


def test_cuda_version_from_610_and_older_labels() -> None:
    banner = "| NVIDIA-SMI 610.43.02   KMD Version: 610.43.02   CUDA UMD Version: 13.3 |"
    assert smi.parse_cuda_version(banner) == "13.3"
    # -q of 610 prints both; the deprecated one carries a note.
    q610 = ("CUDA Version   : 13.3 [Deprecated; will be removed in CUDA 14.0. Use CUDA UMD Version instead]\n"
            "CUDA UMD Version   : 13.3\n")
    assert smi.parse_cuda_version(q610) == "13.3"
    assert smi.parse_cuda_version("| NVIDIA-SMI 545.46   Driver Version: 546.80   CUDA Version: ERR!     |") is None
    assert smi.parse_cuda_version(fixture_text("grid-k520_346.46_table.txt")) is None


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(("a", "b", "order"), [
    ("12.10", "12.9", 1),
    ("12.9", "12.10", -1),
    ("12.4", "12.4.0", 0),
    ("535.104.05", "535.104", 1),
    ("535.54.03", "535.104", -1),
    ("550.54.14", "535.104.05", 1),
    ("10.0", "9.0", 1),
    ("8.9", "8.10", -1),
    ("13.0", "12.9", 1),
])
def test_versions_compare_numerically_per_component(a: str, b: str, order: int) -> None:
    assert smi.compare_versions(a, b) == order


def test_unknown_versions_never_satisfy() -> None:
    assert smi.version_tuple("N/A") is None and smi.version_tuple("") is None and smi.version_tuple(None) is None
    assert not smi.version_at_least(None, "8.0")
    assert not smi.version_at_least("[N/A]", "8.0")
    assert smi.version_at_least("8.0", "8.0")
    with pytest.raises(ValueError):
        smi.compare_versions("12.x", "12.4")


# --------------------------------------------------------------------------- requirements


def gpu(index: int = 0, name: str = RTX4090, total: int = 24564, cap: str | None = "8.9") -> dict:
    return {"index": index, "name": name, "uuid": f"GPU-{index}", "memory_total_mb": total,
            "memory_total_gb": round(total / 1024, 1), "memory_used_mb": 1, "utilization_gpu": 0,
            "driver_version": "550.54.14", "compute_capability": cap}


FACTS = {"gpus": [gpu(0), gpu(1)], "driver_version": "550.54.14", "cuda_version": "12.4", "ram_total_gb": 62.7,
         "ram_limit_gb": None, "disk_free_gb": 47.2, "disk_path": "/workspace", "torch": None}


def check(facts: dict, **req: Any) -> dict:
    checks = gpu_check.evaluate(facts, req)
    assert len(checks) == 1
    return checks[0]


@pytest.mark.parametrize(("req", "ok", "measured"), [
    ({"min_vram_gb": 24}, True, 24.0),           # 24564 MiB is 23.99 GiB, reported and compared as 24.0
    ({"min_vram_gb": 24.1}, False, 24.0),
    ({"gpu_count": 2}, True, 2),
    ({"gpu_count": 1}, False, 2),
    ({"gpu_name": ["A100", "RTX_4090"]}, True, RTX4090),
    ({"gpu_name": ["rtx 4090"]}, True, RTX4090),
    ({"gpu_name": ["RTX_3090", "H100"]}, False, RTX4090),
    ({"gpu_name": "A100|RTX_4090|H100"}, True, RTX4090),
    ({"gpu_name": "^NVIDIA GeForce RTX 40[0-9]0$"}, True, RTX4090),
    ({"gpu_name": "RTX_3090|H100"}, False, RTX4090),
    ({"min_compute_capability": "8.9"}, True, "8.9"),
    ({"min_compute_capability": "9.0"}, False, "8.9"),
    ({"flash_attention": True}, True, "8.9"),
    ({"min_driver": "535.104.05"}, True, "550.54.14"),
    ({"min_driver": "550.100"}, False, "550.54.14"),
    ({"min_cuda": "12.4"}, True, "12.4"),
    ({"min_cuda": "12.10"}, False, "12.4"),
    ({"min_ram_gb": 60}, True, 62.7),
    ({"min_ram_gb": 64}, False, 62.7),
    ({"min_disk_gb": 47.2}, True, 47.2),
    ({"min_disk_gb": 50}, False, 47.2),
])
def test_each_requirement_met_and_unmet(req: dict, ok: bool, measured: Any) -> None:
    result = check(FACTS, **req)
    assert result["requirement"] == next(iter(req))
    assert result["ok"] is ok
    assert result["measured"] == measured
    if not ok and next(iter(req)) in ("min_vram_gb", "gpu_name", "min_compute_capability"):
        assert result["gpus"] == [0, 1]


def test_per_gpu_requirements_name_the_failing_gpus_and_the_worst_value() -> None:
    facts = dict(FACTS, gpus=[gpu(0, A100, 81920, "8.0"), gpu(1, "Tesla T4", 15360, "7.5")])
    vram = check(facts, min_vram_gb=40)
    assert (vram["ok"], vram["measured"], vram["gpus"]) == (False, 15.0, [1])
    fa = check(facts, flash_attention=True)
    assert (fa["ok"], fa["wanted"], fa["measured"], fa["gpus"]) == (False, "8.0", "7.5", [1])
    name = check(facts, gpu_name=["a100_sxm4"])
    assert (name["ok"], name["measured"], name["gpus"]) == (False, "Tesla T4", [1])


def test_unknown_compute_capability_fails_flash_attention() -> None:
    result = check(dict(FACTS, gpus=[gpu(0, cap=None)]), flash_attention=True)
    assert result["ok"] is False and result["measured"] is None


def test_ram_counts_the_smaller_of_meminfo_and_cgroup_limit() -> None:
    assert check(dict(FACTS, ram_limit_gb=16.0), min_ram_gb=32) == {
        "requirement": "min_ram_gb", "wanted": 32, "measured": 16.0, "ok": False}


def test_several_unmet_requirements_are_listed_together() -> None:
    facts = dict(FACTS, gpus=[gpu(0, "NVIDIA GeForce RTX 3060", 12288, "8.6")], disk_free_gb=0.9)
    req = {"gpu_name": ["RTX_4090"], "min_vram_gb": 20, "gpu_count": 1, "min_cuda": "12.8", "min_disk_gb": 5,
           "min_driver": "535", "flash_attention": True}
    checks = gpu_check.evaluate(facts, req)
    assert {c["requirement"]: c["ok"] for c in checks} == {
        "gpu_name": False, "min_vram_gb": False, "gpu_count": True, "min_cuda": False, "min_disk_gb": False,
        "min_driver": True, "flash_attention": True}
    failed = [c for c in checks if not c["ok"]]
    texts = [gpu_check.describe(c, dict(facts, disk_path="/workspace")) for c in failed]
    assert texts == [
        "gpu_name wanted one of ['RTX_4090'], measured NVIDIA GeForce RTX 3060 on GPU 0",
        "min_vram_gb wanted >= 20 GiB, measured 12 GiB on GPU 0 (NVIDIA GeForce RTX 3060)",
        "min_cuda wanted >= 12.8, measured 12.4",
        "min_disk_gb wanted >= 5 GiB, measured 0.9 GiB free at /workspace",
    ]


def test_without_nvidia_smi_gpu_requirements_are_unmet_and_host_ones_still_checked() -> None:
    facts = dict(FACTS, gpus=None, driver_version=None, cuda_version=None)
    checks = gpu_check.evaluate(facts, {"min_vram_gb": 8, "gpu_count": 1, "min_cuda": "12.0", "min_disk_gb": 1})
    assert [(c["requirement"], c["measured"], c["ok"]) for c in checks] == [
        ("gpu_count", None, False), ("min_vram_gb", None, False), ("min_cuda", None, False),
        ("min_disk_gb", 47.2, True)]


def test_no_requirements_no_checks() -> None:
    assert gpu_check.evaluate(FACTS, {"flash_attention": False, "require_torch_cuda": False, "gpu_name": None}) == []


# --------------------------------------------------------------------------- main() for real


def install_fake_smi(bin_dir: Path, spec: dict[str, Any]) -> Path:
    """Install the simulator's nvidia-smi as vastsim does: a shebang line, the source, and the spec beside it."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!{sys.executable}\n" + FAKE_SMI.read_text(encoding="utf-8"), encoding="utf-8")
    script.chmod(0o755)
    (bin_dir / "nvidia-smi.json").write_text(json.dumps(spec), encoding="utf-8")
    return script


def write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with patch_module_args(args), pytest.raises(SystemExit):
        gpu_check.main()
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    # In-process, Ansible shows module warnings on the controller's stderr instead of returning them.
    result.setdefault("warnings", [])
    result["warnings"].append(captured.err)
    return result


@pytest.fixture
def smi_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only a bin dir for the fake, plus the system dirs (no real nvidia-smi there)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.delenv("VASTSIM_NVIDIA_SMI_SPEC", raising=False)
    return bin_dir


RTX4090_SPEC = {"driver_version": "550.54.14", "cuda_version": "12.4", "error": None, "gpus": [
    {"name": RTX4090, "memory_total_mib": 24564, "memory_used_mib": 3, "utilization_gpu": 7, "compute_cap": "8.9",
     "uuid": "GPU-0f4a4d1c-3b42-4c4e-9d57-2c8a51e3b9a1"}]}


def test_main_reports_the_gpu_and_the_host(smi_path: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, RTX4090_SPEC)
    result = run_main({"disk_path": str(tmp_path), "gpu_name": ["RTX_4090"], "min_vram_gb": 23.5, "gpu_count": 1,
                       "min_compute_capability": "8.9", "flash_attention": True, "min_driver": "535.104",
                       "min_cuda": "12.4", "min_ram_gb": 0.1, "min_disk_gb": 0.01}, capsys)
    assert not result.get("failed"), result
    assert result["changed"] is False
    assert result["gpus"] == [{
        "index": 0, "name": RTX4090, "uuid": "GPU-0f4a4d1c-3b42-4c4e-9d57-2c8a51e3b9a1", "memory_total_mb": 24564,
        "memory_total_gb": 24.0, "memory_used_mb": 3, "utilization_gpu": 7, "driver_version": "550.54.14",
        "compute_capability": "8.9"}]
    assert (result["gpu_count"], result["driver_version"], result["cuda_version"]) == (1, "550.54.14", "12.4")
    assert result["nvidia_smi"] == str(smi_path / "nvidia-smi")
    assert result["failures"] == [] and len(result["checks"]) == 9 and all(c["ok"] for c in result["checks"])
    assert result["disk_path"] == str(tmp_path) and result["disk_free_gb"] > 0 and result["disk_total_gb"] > 0
    assert result["ram_total_gb"] > 0 and result["ram_available_gb"] > 0
    assert result["cpu_count"] >= 1 and result["hostname"]
    assert result["torch"] is None and result["error_cause"] is None


def test_main_check_mode_runs_the_same_read_only_check(smi_path: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, RTX4090_SPEC)
    result = run_main({"disk_path": str(tmp_path), "min_vram_gb": 80, "_ansible_check_mode": True}, capsys)
    assert result["failed"] is True and result["changed"] is False
    assert result["failures"] == [{"requirement": "min_vram_gb", "wanted": 80.0, "measured": 24.0, "gpus": [0]}]


def test_main_fails_once_listing_every_unmet_requirement(smi_path: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"driver_version": "535.54.03", "gpus": [
        {"name": "NVIDIA GeForce RTX 3060", "memory_total_mib": 12288, "compute_cap": "8.6"},
        {"name": "NVIDIA GeForce RTX 3060", "memory_total_mib": 12288, "compute_cap": "8.6"}]}
    install_fake_smi(smi_path, spec)
    result = run_main({"disk_path": str(tmp_path), "gpu_name": "A100|RTX_4090", "min_vram_gb": 24, "gpu_count": 1,
                       "min_driver": "535.104", "min_cuda": "12.4", "min_compute_capability": "8.0",
                       "min_disk_gb": 1e6}, capsys)
    assert result["failed"] is True
    # The 535 branch's banner says CUDA 12.2; the fake derives it from the driver like the real tool.
    assert result["cuda_version"] == "12.2"
    assert [(f["requirement"], f["measured"]) for f in result["failures"]] == [
        ("gpu_count", 2), ("gpu_name", "NVIDIA GeForce RTX 3060"), ("min_vram_gb", 12.0),
        ("min_driver", "535.54.03"), ("min_cuda", "12.2"), ("min_disk_gb", result["disk_free_gb"])]
    msg = result["msg"]
    assert "6 of 7 requirements not met" in msg
    for part in ("gpu_count wanted exactly 1, measured 2", "gpu_name wanted matching /A100|RTX_4090/, measured "
                 "NVIDIA GeForce RTX 3060 on GPU 0, 1", "min_vram_gb wanted >= 24 GiB, measured 12 GiB on GPU 0, 1",
                 "min_driver wanted >= 535.104, measured 535.54.03", "min_cuda wanted >= 12.4, measured 12.2",
                 f"min_disk_gb wanted >= 1e+06 GiB, measured {result['disk_free_gb']:g} GiB free at {tmp_path}"):
        assert part in msg, (part, msg)


def test_main_driver_error(smi_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, dict(RTX4090_SPEC, error="driver"))
    result = run_main({"disk_path": str(tmp_path), "min_vram_gb": 20, "min_disk_gb": 1e6}, capsys)
    assert result["failed"] is True and result["error_cause"] == "driver_error"
    assert "NVIDIA driver error: nvidia-smi exited 9" in result["msg"]
    assert "couldn't communicate with the NVIDIA driver" in result["msg"]
    assert "Traceback" not in json.dumps(result)
    assert [f["requirement"] for f in result["failures"]] == ["nvidia_smi", "min_vram_gb", "min_disk_gb"]
    assert result["failures"][1]["measured"] is None and result["gpus"] == []
    # Host facts are still measured.
    assert result["disk_free_gb"] > 0 and result["ram_total_gb"] > 0


def test_main_missing_nvidia_smi(smi_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_main({"disk_path": str(tmp_path)}, capsys)
    assert result["failed"] is True and result["error_cause"] == "nvidia_smi_missing"
    assert result["msg"].startswith(f"GPU check failed on {result['hostname']}: nvidia-smi not found")
    assert result["nvidia_smi"] is None
    assert "Traceback" not in json.dumps(result)
    # An explicit path that is not there says so too.
    result = run_main({"disk_path": str(tmp_path), "nvidia_smi": str(tmp_path / "nope" / "nvidia-smi")}, capsys)
    assert result["failed"] is True and result["error_cause"] == "nvidia_smi_missing"
    assert str(tmp_path / "nope" / "nvidia-smi") in result["msg"]


def test_main_no_gpu(smi_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, {"driver_version": "550.54.14", "gpus": []})
    result = run_main({"disk_path": str(tmp_path)}, capsys)
    assert result["failed"] is True and result["error_cause"] == "no_devices"
    assert "No devices were found" in result["msg"]


def test_main_unparseable_output(smi_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_script(smi_path / "nvidia-smi", "#!/bin/sh\necho 'something, else entirely'\n")
    result = run_main({"disk_path": str(tmp_path)}, capsys)
    assert result["failed"] is True and result["error_cause"] == "unparseable_output"
    assert "cannot parse the output of nvidia-smi --query-gpu" in result["msg"]
    assert "'something, else entirely'" in result["msg"]


def test_main_hung_nvidia_smi_times_out(smi_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_script(smi_path / "nvidia-smi", "#!/bin/sh\nexec sleep 30\n")
    result = run_main({"disk_path": str(tmp_path), "timeout": 1}, capsys)
    assert result["failed"] is True and result["error_cause"] == "timeout"
    assert "did not answer within 1s" in result["msg"]


def test_main_old_driver_without_compute_cap(smi_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # A pre-510 nvidia-smi: compute_cap is not a field it knows; the rest answers.
    real = install_fake_smi(smi_path / "real", dict(RTX4090_SPEC, driver_version="470.199.02", cuda_version="11.4"))
    write_script(smi_path / "nvidia-smi", f"""#!/bin/sh
case "$1" in *compute_cap*) echo 'Field "compute_cap" is not a valid field to query.'; echo; exit 2;; esac
exec {real} "$@"
""")
    result = run_main({"disk_path": str(tmp_path), "flash_attention": True}, capsys)
    assert result["gpus"][0]["compute_capability"] is None and result["gpus"][0]["memory_total_mb"] == 24564
    assert result["driver_version"] == "470.199.02"
    assert any("compute_cap" in w for w in result["warnings"])
    assert result["failed"] is True
    assert result["failures"] == [{"requirement": "flash_attention", "wanted": "8.0", "measured": None, "gpus": [0]}]


def replay_smi(bin_dir: Path, query_row: str, table: str, version: str) -> None:
    """An nvidia-smi that answers with real captures: the table and --version from fixture files."""
    write_script(bin_dir / "nvidia-smi", f"""#!/bin/sh
case "$1" in
  --query-gpu=*) echo '{query_row}';;
  --version) cat '{FIXTURES / version}';;
  '') cat '{FIXTURES / table}';;
  *) echo "unexpected: $*"; exit 2;;
esac
""")


H200_MIG_QUERY = f"0, {H200}, {MASKED_UUID}, 143771, 44, [N/A], 610.43.02, 9.0"


def test_main_mig_gpu_counts_the_slice_memory(smi_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # The real 610.43.02 H200: MIG on, one 3g.71gb slice of 71424 MiB; --query-gpu says 143771 (the card).
    replay_smi(smi_path, H200_MIG_QUERY, "h200-mig_610.43.02_table.txt", "h200-mig_610.43.02_version.txt")
    result = run_main({"disk_path": str(tmp_path), "min_vram_gb": 80, "min_cuda": "13.0", "min_driver": "610"},
                      capsys)
    assert result["failed"] is True
    assert result["failures"] == [{"requirement": "min_vram_gb", "wanted": 80.0, "measured": 69.8, "gpus": [0]}]
    assert "min_vram_gb wanted >= 80 GiB, measured 69.8 GiB on GPU 0 (NVIDIA H200)" in result["msg"]
    gpu = result["gpus"][0]
    assert (gpu["memory_total_mb"], gpu["memory_total_gb"], gpu["memory_used_mb"]) == (71424, 69.8, 44)
    assert gpu["card_memory_total_mb"] == 143771
    assert gpu["mig_devices"] == [{"gpu_instance_id": 2, "compute_instance_id": 0, "mig_device": 0,
                                   "memory_used_mb": 44, "memory_total_mb": 71424, "sm_count": 60}]
    assert (result["driver_version"], result["cuda_version"]) == ("610.43.02", "13.3")
    # What the slice holds is enough.
    result = run_main({"disk_path": str(tmp_path), "min_vram_gb": 64}, capsys)
    assert not result.get("failed"), result


def test_main_mig_enabled_without_a_visible_slice_has_no_memory(smi_path: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Synthetic, from the real capture: the same table with its MIG devices box emptied.
    text = fixture_text("h200-mig_610.43.02_table.txt")
    start, end = text.index("|  0    2   0   0"), text.index("+------------------+-----", text.index("|  0    2"))
    (tmp_path / "t.txt").write_text(text[:start] + text[end:], encoding="utf-8")
    write_script(smi_path / "nvidia-smi", f"""#!/bin/sh
case "$1" in --query-gpu=*) echo '{H200_MIG_QUERY}';; *) cat '{tmp_path / "t.txt"}';; esac
""")
    result = run_main({"disk_path": str(tmp_path), "min_vram_gb": 1}, capsys)
    assert result["failed"] is True and result["gpus"][0]["memory_total_mb"] == 0
    assert result["failures"][0]["measured"] == 0.0
    assert any("no MIG device is visible" in w for w in result["warnings"])


def test_main_windows_wddm_and_610_labels(smi_path: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    row = f"0, NVIDIA GeForce RTX 2080 SUPER, {MASKED_UUID}, 8192, 797, 0, 610.62, 7.5"
    replay_smi(smi_path, row, "rtx2080-super_610.62_windows-wddm_table.txt", "h200-mig_610.43.02_version.txt")
    result = run_main({"disk_path": str(tmp_path), "min_vram_gb": 8, "min_cuda": "13.3"}, capsys)
    assert not result.get("failed"), result
    assert (result["driver_version"], result["cuda_version"]) == ("610.62", "13.3")
    assert "mig_devices" not in result["gpus"][0] and result["gpus"][0]["memory_total_mb"] == 8192


def test_main_driver_too_old_to_print_a_cuda_version(smi_path: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The real 346.46 table has no CUDA version; the --version answer here is synthetic (an option refused).
    write_script(smi_path / "nvidia-smi", f"""#!/bin/sh
case "$1" in
  --query-gpu=*) echo '0, GRID K520, GPU-a, 4095, 10, 0, 346.46, 3.0';;
  --version) echo "ERROR: Option --version is not recognized. Please run 'nvidia-smi -h' for help."; echo; exit 1;;
  *) cat '{FIXTURES / "grid-k520_346.46_table.txt"}';;
esac
""")
    result = run_main({"disk_path": str(tmp_path), "min_cuda": "9.0"}, capsys)
    assert result["cuda_version"] is None and result["driver_version"] == "346.46"
    assert result["failures"] == [{"requirement": "min_cuda", "wanted": "9.0", "measured": None}]
    assert any("does not say which CUDA version" in w for w in result["warnings"])


def test_main_bad_disk_path_and_bad_options(smi_path: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, RTX4090_SPEC)
    result = run_main({"disk_path": str(tmp_path / "missing"), "min_disk_gb": 1}, capsys)
    assert result["failed"] is True and "disk_path: No such file or directory" in result["msg"]
    assert [f["requirement"] for f in result["failures"]] == ["disk_path", "min_disk_gb"]
    result = run_main({"min_cuda": "twelve"}, capsys)
    assert result["failed"] is True and result["msg"] == "min_cuda must be a dotted version such as 12.4, got 'twelve'"
    result = run_main({"gpu_name": "RTX(4090"}, capsys)
    assert result["failed"] is True and result["msg"].startswith("gpu_name is not a valid regular expression")
    result = run_main({"require_torch_cuda": True}, capsys)
    assert result["failed"] is True and "python" in result["msg"]


# --------------------------------------------------------------------------- torch


FAKE_TORCH = '''
__version__ = "{version}"
class version:
    cuda = {cuda!r}
class cuda:
    @staticmethod
    def is_available():
        return {available}
    @staticmethod
    def device_count():
        return {count}
    @staticmethod
    def get_device_name(i):
        return "NVIDIA GeForce RTX 4090"
    @staticmethod
    def is_bf16_supported():
        return True
'''


def fake_python(tmp_path: Path, name: str, torch: dict[str, Any] | None) -> Path:
    """A python wrapper; with ``torch`` a stand-in torch package on its path, without it no site-packages."""
    if torch is None:
        return write_script(tmp_path / name, f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    package = tmp_path / f"{name}-site" / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_TORCH.format(**torch), encoding="utf-8")
    return write_script(tmp_path / name, f'#!/bin/sh\nPYTHONPATH={package.parent} exec {sys.executable} -S "$@"\n')


def test_torch_that_sees_cuda(smi_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, RTX4090_SPEC)
    python = fake_python(tmp_path, "py-cuda", {"version": "2.4.1+cu124", "cuda": "12.4", "available": True,
                                               "count": 1})
    result = run_main({"disk_path": str(tmp_path), "python": str(python), "require_torch_cuda": True}, capsys)
    assert not result.get("failed"), result
    torch = result["torch"]
    assert (torch["installed"], torch["version"], torch["cuda_built"]) == (True, "2.4.1+cu124", "12.4")
    assert (torch["cuda_available"], torch["device_count"], torch["bf16_supported"]) == (True, 1, True)
    assert torch["devices"] == [RTX4090] and torch["error"] is None and torch["python"] == str(python)


def test_torch_cpu_build_fails_require_torch_cuda(smi_path: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, RTX4090_SPEC)
    python = fake_python(tmp_path, "py-cpu", {"version": "2.4.1+cpu", "cuda": None, "available": False, "count": 0})
    result = run_main({"disk_path": str(tmp_path), "python": str(python), "require_torch_cuda": True}, capsys)
    assert result["failed"] is True
    assert result["failures"] == [{"requirement": "require_torch_cuda", "wanted": True,
                                   "measured": "torch 2.4.1+cpu built for no CUDA (CPU build) sees no CUDA device"}]


def test_missing_torch_is_reported_not_a_crash(smi_path: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, RTX4090_SPEC)
    python = fake_python(tmp_path, "py-bare", None)
    result = run_main({"disk_path": str(tmp_path), "python": str(python)}, capsys)
    assert not result.get("failed"), result
    assert result["torch"]["installed"] is False
    assert result["torch"]["error"] == "ModuleNotFoundError: No module named 'torch'"
    result = run_main({"disk_path": str(tmp_path), "python": str(python), "require_torch_cuda": True}, capsys)
    assert result["failed"] is True
    assert "require_torch_cuda wanted True, measured torch not importable (ModuleNotFoundError" in result["msg"]


def test_missing_python_is_reported(smi_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    install_fake_smi(smi_path, RTX4090_SPEC)
    missing = tmp_path / "no" / "python"
    result = run_main({"disk_path": str(tmp_path), "python": str(missing), "require_torch_cuda": True}, capsys)
    assert result["failed"] is True
    assert result["torch"]["error"].startswith(f"cannot run {missing}")
    assert result["failures"][0]["requirement"] == "require_torch_cuda"


def test_module_and_parser_use_only_the_standard_library() -> None:
    """They run on the rented machine: nothing but the stdlib (and Ansible's own module_utils)."""
    allowed_prefixes = ("ansible.module_utils", "..module_utils", "__future__")
    stdlib = sys.stdlib_module_names
    for path in (ROOT / "plugins" / "modules" / "gpu_check.py", ROOT / "plugins" / "module_utils" /
                 "nvidia_smi_parse.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
        names += ["." * node.level + (node.module or "") for node in tree.body if isinstance(node, ast.ImportFrom)]
        assert names
        for name in names:
            assert name.startswith(allowed_prefixes) or name.split(".")[0] in stdlib, (path.name, name)
