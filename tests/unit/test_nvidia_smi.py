"""The fake nvidia-smi must print what the real tool prints, byte for byte.

Each test runs the script as a subprocess, the way instances run it, against a spec
file in tmp_path. The layout tests rebuild a spec from the values in a real capture
(tests/fixtures/nvidia-smi, see SOURCES.md) and demand the same bytes back, so any
drift in a column width, separator or padding fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "src" / "mlops_vast" / "sim" / "nvidia_smi.py"
FIXTURES = ROOT / "tests" / "fixtures" / "nvidia-smi"

DATE_LINE = re.compile(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} [ 1-3]\d \d\d:\d\d:\d\d \d{4} {7}$")

RTX4090 = {
    "name": "NVIDIA GeForce RTX 4090", "memory_total_mib": 24564, "memory_used_mib": 1,
    "utilization_gpu": 0, "compute_cap": "8.9", "uuid": "GPU-0f4a4d1c-3b42-4c4e-9d57-2c8a51e3b9a1",
    "pci_bus_id": "00000000:01:00.0", "temperature_gpu": 34, "power_draw_w": 21.3,
    "power_limit_w": 450, "fan_speed": 30, "persistence_mode": "Disabled",
}
BRIEF_SPEC = {"driver_version": "550.54.14", "cuda_version": "12.4", "error": None, "gpus": [RTX4090]}


def run_smi(tmp_path: Path, spec: dict[str, Any] | str, *args: str,
            python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec if isinstance(spec, str) else json.dumps(spec), encoding="utf-8")
    env = dict(os.environ, VASTSIM_NVIDIA_SMI_SPEC=str(spec_file))
    return subprocess.run([python, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------- fixture -> spec

BANNER = re.compile(r"NVIDIA-SMI (\S+)\s+Driver Version: (\S+)\s+CUDA Version: (\S+)")
ROW1 = re.compile(r"^\|\s+(\d+)  (.+?)\s+(On|Off)\s+\|\s+([0-9A-F:.]+)\s+(On|Off)\s+\|\s+(\S+) \|$")
ROW2 = re.compile(r"^\|\s+(N/A|\d+%)\s+(\d+)C\s+(P\d+)\s+(N/A|\d+W) /\s+(N/A|\d+W) \|"
                  r"\s+(\d+)MiB /\s+(\d+)MiB \|\s+(N/A|\d+%)\s+(.+?) \|$")
ROW3 = re.compile(r"^\|\s+\|\s+\|\s+(\S+) \|$")
COMPUTE = {"Default": "Default", "E. Process": "Exclusive_Process", "Prohibited": "Prohibited"}
ECC = {"0": "Enabled", "Off": "Disabled", "N/A": "N/A"}


def spec_from_table(text: str, full_names: dict[str, str] | None = None) -> dict[str, Any]:
    """Read every value out of a real table, so rendering it again must give the same bytes.

    The regexes only split on whitespace; widths are never assumed here.
    """
    lines = text.splitlines()
    banner = next(m for m in map(BANNER.search, lines) if m)
    gpus = []
    for i, line in enumerate(lines):
        m1 = ROW1.match(line)
        if not m1:
            continue
        m2, m3 = ROW2.match(lines[i + 1]), ROW3.match(lines[i + 2])
        assert m2 and m3, f"unparsed GPU block at line {i}"
        idx, name, pm, bus, disp, ecc = m1.groups()
        fan, temp, pstate, draw, cap, used, total, util, compute = m2.groups()
        gpus.append({
            "name": (full_names or {}).get(name, name),
            "memory_total_mib": int(total), "memory_used_mib": int(used),
            "utilization_gpu": 0 if util == "N/A" else int(util.rstrip("%")),
            "pci_bus_id": bus, "display_active": "Enabled" if disp == "On" else "Disabled",
            "temperature_gpu": int(temp), "pstate": pstate,
            "power_draw_w": None if draw == "N/A" else int(draw.rstrip("W")),
            "power_limit_w": None if cap == "N/A" else int(cap.rstrip("W")),
            "fan_speed": None if fan == "N/A" else int(fan.rstrip("%")),
            "persistence_mode": "Enabled" if pm == "On" else "Disabled",
            "ecc_mode": ECC[ecc], "mig_mode": m3.group(1), "compute_mode": COMPUTE[compute],
        })
        assert int(idx) == len(gpus) - 1
    return {"driver_version": banner.group(2), "cuda_version": banner.group(3), "gpus": gpus}


def split_date(out: str, reference: str) -> tuple[list[str], list[str]]:
    """Our lines and the fixture's, with the (time-dependent) date line checked and removed."""
    ours, theirs = out.split("\n"), reference.split("\n")
    assert DATE_LINE.match(ours[0]), repr(ours[0])
    if DATE_LINE.match(theirs[0]):
        assert len(ours[0]) == len(theirs[0])
        theirs = theirs[1:]
    return ours[1:], theirs


TABLE_FIXTURES = {
    "rtx4090x8_550.127.05_table.txt": {},
    "rtx3090x2_560.35.03_table.txt": {},
    "a100-sxm4-80gb-x4_555.42.02_table.txt": {},
    "h100-80gb-hbm3-x8_565.57.01_table.txt": {},
    "h100-80gb-hbm3_590.48.01_table.txt": {},
}


@pytest.mark.parametrize("name", sorted(TABLE_FIXTURES))
def test_table_reproduces_real_capture_byte_for_byte(tmp_path: Path, name: str) -> None:
    reference = fixture(name)
    result = run_smi(tmp_path, spec_from_table(reference, TABLE_FIXTURES[name]))
    assert result.returncode == 0, result.stdout + result.stderr
    ours, theirs = split_date(result.stdout, reference)
    assert ours == theirs


def test_table_matches_595_capture_up_to_its_process_list(tmp_path: Path) -> None:
    # That capture lists desktop processes; everything else, truncated name included, must match.
    reference = fixture("rtx4080-super_595.71.05_table.txt")
    spec = spec_from_table(reference, {"NVIDIA GeForce RTX 4080 ...": "NVIDIA GeForce RTX 4080 SUPER"})
    assert spec["gpus"][0]["name"] == "NVIDIA GeForce RTX 4080 SUPER"
    result = run_smi(tmp_path, spec)
    ours, theirs = split_date(result.stdout, reference)
    process_rows = 5
    assert ours[:-3] == theirs[:-(2 + process_rows)]
    assert ours[-3] == "|  No running processes found" + " " * 61 + "|"
    assert ours[-2:] == theirs[-2:]


def test_table_matches_535_capture_head(tmp_path: Path) -> None:
    reference = fixture("quadro-rtx4000-x2_535.129.03_table-head.txt")
    spec = spec_from_table(reference)
    result = run_smi(tmp_path, spec)
    ours, theirs = split_date(result.stdout, reference)
    assert ours[: len(theirs) - 1] == theirs[:-1]
    # The 535 Processes box is two columns narrower than the 550 one.
    assert ours[len(theirs) - 1] == " " * 87
    assert ours[-3] == "|  No running processes found" + " " * 59 + "|"


# ---------------------------------------------------------------- the brief's spec, 550 layout


def test_default_550_table_has_real_layout_and_values(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC)
    assert result.returncode == 0
    lines = result.stdout.split("\n")
    real = fixture("rtx4090x8_550.127.05_table.txt").split("\n")
    assert DATE_LINE.match(lines[0])
    assert lines[2] == ("| NVIDIA-SMI 550.54.14              Driver Version: 550.54.14      "
                        "CUDA Version: 12.4     |")
    # Frame and headings identical to the real 550 capture.
    assert lines[1] == real[0]
    assert lines[3:8] == real[2:7]
    assert lines[8:12] == [
        "|   0  NVIDIA GeForce RTX 4090        Off |   00000000:01:00.0 Off |                  Off |",
        "| 30%   34C    P8             21W /  450W |       1MiB /  24564MiB |      0%      Default |",
        "|                                         |                        |                  N/A |",
        real[10],
    ]
    assert lines[12:] == real[-9:]
    assert result.stdout.endswith("+\n")


def test_long_names_are_truncated_like_the_real_tool(tmp_path: Path) -> None:
    spec = {"driver_version": "570.195.03", "gpus": [
        {"name": "NVIDIA RTX 6000 Ada Generation", "memory_total_mib": 49140},
        {"name": "NVIDIA RTX A2000 Laptop GPU", "memory_total_mib": 4096},
    ]}
    rows = [line for line in run_smi(tmp_path, spec).stdout.splitlines() if re.match(r"^\|\s+\d  ", line)]
    assert rows[0].startswith("|   0  NVIDIA RTX 6000 Ada Gene...    On  |")
    assert rows[1].startswith("|   1  NVIDIA RTX A2000 Laptop GPU    On  |")


def test_570_widens_the_pid_column_and_keeps_the_padded_gap(tmp_path: Path) -> None:
    out = run_smi(tmp_path, dict(BRIEF_SPEC, driver_version="570.195.03", cuda_version="12.8")).stdout
    lines = out.split("\n")
    assert lines[3] == "|" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    assert ("|  GPU   GI   CI              PID   Type   Process name                        "
            "GPU Memory |") in lines
    assert " " * 89 in lines


# ---------------------------------------------------------------- -L, --version, -h


def test_list_matches_real_capture(tmp_path: Path) -> None:
    spec = {"driver_version": "590.48.01", "cuda_version": "13.1", "gpus": [
        {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
         "uuid": "GPU-00000000-0000-0000-0000-000000000000"}]}
    assert run_smi(tmp_path, spec, "-L").stdout == fixture("h100-80gb-hbm3_590.48.01_list.txt")


@pytest.mark.parametrize("flag", ["-L", "--list-gpus"])
def test_list_two_gpus_matches_real_capture(tmp_path: Path, flag: str) -> None:
    uuids = ["GPU-c7b57be0-94ff-d352-a59b-d0ee00aeed43", "GPU-d6de6afc-bdfe-75c4-5273-0544439153fc"]
    spec = {"driver_version": "535.129.03", "gpus": [
        {"name": "Quadro RTX 4000", "memory_total_mib": 8192, "uuid": u} for u in uuids]}
    result = run_smi(tmp_path, spec, flag)
    assert result.returncode == 0
    assert result.stdout == fixture("quadro-rtx4000-x2_535.129.03_list.txt")
    assert run_smi(tmp_path, spec, flag, "-i", "1").stdout == f"GPU 1: Quadro RTX 4000 (UUID: {uuids[1]})\n"


def test_version_matches_real_capture(tmp_path: Path) -> None:
    spec = {"driver_version": "590.48.01", "cuda_version": "13.1", "gpus": []}
    result = run_smi(tmp_path, spec, "--version")
    assert (result.returncode, result.stdout) == (0, fixture("h100-80gb-hbm3_590.48.01_version.txt"))


def test_help_names_the_driver(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, "-h")
    assert result.returncode == 0
    assert result.stdout.startswith("NVIDIA System Management Interface -- v550.54.14\n")
    assert "--query-gpu" in result.stdout


# ---------------------------------------------------------------- --query-gpu


def real_csv(name: str) -> dict[str, str]:
    header, values = fixture(name).splitlines()
    return dict(zip(header.split(", "), values.split(", "), strict=True))


H100_590 = {"driver_version": "590.48.01", "cuda_version": "13.1", "gpus": [{
    "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": 0,
    "memory_reserved_mib": 479, "uuid": "GPU-00000000-0000-0000-0000-000000000000",
    "serial": "0000000000000", "pci_bus_id": "00000000:00:09.0", "temperature_gpu": 41,
    "temperature_memory": 48, "power_draw_w": 69.85, "power_limit_w": 700, "compute_cap": "9.0",
    "clocks_sm_mhz": 345, "clocks_max_sm_mhz": 1980, "clocks_mem_mhz": 2619, "clocks_max_mem_mhz": 2619,
    "vbios_version": "96.00.A5.00.01", "pcie_gen": 5, "pcie_width": 16}]}
RTX4080S_595 = {"driver_version": "595.71.05", "cuda_version": "13.2", "gpus": [{
    "name": "NVIDIA GeForce RTX 4080 SUPER", "memory_total_mib": 16376, "memory_used_mib": 596,
    "memory_reserved_mib": 434, "uuid": "GPU-00000000-0000-0000-0000-000000000000",
    "pci_bus_id": "00000000:01:00.0", "temperature_gpu": 43, "power_draw_w": 26.20, "power_limit_w": 320,
    "fan_speed": 0, "utilization_memory": 23, "persistence_mode": "Disabled", "display_active": "Enabled",
    "clocks_sm_mhz": 210, "clocks_max_sm_mhz": 3165, "clocks_mem_mhz": 405, "clocks_max_mem_mhz": 11501,
    "vbios_version": "95.03.44.00.B2", "pcie_gen": 4, "pcie_gen_current": 1, "pcie_width": 16}]}
# Values the spec cannot pin exactly: instantaneous power, the board's power range,
# and memory.free, which NVML rounds from bytes (81559 - 479 - 0 printed as 81081).
NOT_MODELLED = {"timestamp", "power.draw.instant [W]", "power.min_limit [W]", "power.max_limit [W]",
                "memory.free [MiB]"}


@pytest.mark.parametrize(("spec", "capture"), [
    (H100_590, "h100-80gb-hbm3_590.48.01_query-gpu-all.csv"),
    (RTX4080S_595, "rtx4080-super_595.71.05_query-gpu-all.csv"),
])
def test_query_headers_units_and_values_match_real_capture(
        tmp_path: Path, spec: dict[str, Any], capture: str) -> None:
    from mlops_vast.sim import nvidia_smi

    real = real_csv(capture)
    # Every field the fake answers that this driver also had, in one query.
    wanted = [f for f in nvidia_smi.FIELDS
              if any(h == f or h.startswith(f + " [") for h in real)]
    assert len(wanted) > 40
    result = run_smi(tmp_path, spec, f"--query-gpu={','.join(wanted)}", "--format=csv")
    assert result.returncode == 0, result.stdout
    header, values = result.stdout.splitlines()
    ours = dict(zip(header.split(", "), values.split(", "), strict=True))
    assert list(ours) == [h for f in wanted for h in real if h == f or h.startswith(f + " [")]
    mismatched = {k: (v, real[k]) for k, v in ours.items() if k not in NOT_MODELLED and v != real[k]}
    assert mismatched == {}
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}", ours["timestamp"])


def test_query_free_memory_is_total_minus_reserved_minus_used(tmp_path: Path) -> None:
    out = run_smi(tmp_path, H100_590, "--query-gpu=memory.total,memory.reserved,memory.used,memory.free",
                  "--format=csv,noheader").stdout
    assert out == "81559 MiB, 479 MiB, 0 MiB, 81080 MiB\n"


FIELDS_OF_THE_BRIEF = ("index,name,uuid,pci.bus_id,driver_version,memory.total,memory.used,memory.free,"
                       "utilization.gpu,utilization.memory,temperature.gpu,power.draw,power.limit,compute_cap,"
                       "persistence_mode,count,fan.speed,pstate,clocks.sm,clocks.max.sm")


def test_query_csv_with_header_and_units(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, f"--query-gpu={FIELDS_OF_THE_BRIEF}", "--format=csv")
    assert result.returncode == 0
    assert result.stdout == (
        "index, name, uuid, pci.bus_id, driver_version, memory.total [MiB], memory.used [MiB], "
        "memory.free [MiB], utilization.gpu [%], utilization.memory [%], temperature.gpu, power.draw [W], "
        "power.limit [W], compute_cap, persistence_mode, count, fan.speed [%], pstate, "
        "clocks.current.sm [MHz], clocks.max.sm [MHz]\n"
        "0, NVIDIA GeForce RTX 4090, GPU-0f4a4d1c-3b42-4c4e-9d57-2c8a51e3b9a1, 00000000:01:00.0, 550.54.14, "
        "24564 MiB, 1 MiB, 24563 MiB, 0 %, 0 %, 34, 21.30 W, 450.00 W, 8.9, Disabled, 1, 30 %, P8, "
        "210 MHz, 3105 MHz\n"
    )


def test_query_nounits_keeps_units_in_header_only(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, "--query-gpu=memory.total,power.draw,utilization.gpu,fan.speed",
                     "--format=csv,nounits")
    assert result.stdout == ("memory.total [MiB], power.draw [W], utilization.gpu [%], fan.speed [%]\n"
                             "24564, 21.30, 0, 30\n")


def test_query_noheader_nounits_with_space_separated_options(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, "--query-gpu", "name,memory.total,compute_cap",
                     "--format", "csv,noheader,nounits")
    assert (result.returncode, result.stdout) == (0, "NVIDIA GeForce RTX 4090, 24564, 8.9\n")


def test_query_noheader_with_units(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, "--query-gpu=memory.used,power.limit", "--format=csv,noheader")
    assert result.stdout == "1 MiB, 450.00 W\n"


def test_query_aliases_print_canonical_headers(tmp_path: Path) -> None:
    out = run_smi(tmp_path, BRIEF_SPEC, "--query-gpu=gpu_name,gpu_uuid,clocks.sm,clocks.max.mem",
                  "--format=csv").stdout
    assert out.splitlines()[0] == "name, uuid, clocks.current.sm [MHz], clocks.max.memory [MHz]"


def test_query_na_values_are_bracketed_and_unitless(tmp_path: Path) -> None:
    out = run_smi(tmp_path, H100_590, "--query-gpu=fan.speed,serial,driver_model.current",
                  "--format=csv,noheader").stdout
    assert out == "[N/A], 0000000000000, [N/A]\n"


@pytest.mark.parametrize("field", ["foo", "cuda_version", "memory.total "])
def test_unknown_field_is_rejected_like_the_real_tool(tmp_path: Path, field: str) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, f"--query-gpu=index,{field}", "--format=csv")
    assert result.returncode == 2
    assert result.stdout == f'Field "{field}" is not a valid field to query.\n\n'


def test_query_without_format_is_rejected(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, "--query-gpu=index")
    assert result.returncode == 2
    assert result.stdout == "\"--format=\" switch is missing. Please run 'nvidia-smi -h' for help.\n\n"


# ---------------------------------------------------------------- -i


def two_gpus() -> dict[str, Any]:
    second = dict(RTX4090, uuid="GPU-11111111-2222-3333-4444-555555555555", pci_bus_id="00000000:81:00.0",
                  temperature_gpu=40)
    return dict(BRIEF_SPEC, gpus=[RTX4090, second])


@pytest.mark.parametrize("args", [
    ("-i", "1"), ("--id=1",), ("-i", "GPU-11111111-2222-3333-4444-555555555555"),
    ("-i", "00000000:81:00.0"), ("--id", "81:00.0"),
])
def test_id_selects_one_gpu_in_every_form(tmp_path: Path, args: tuple[str, ...]) -> None:
    spec = two_gpus()
    query = run_smi(tmp_path, spec, *args, "--query-gpu=index,pci.bus_id,temperature.gpu",
                    "--format=csv,noheader")
    assert query.stdout == "1, 00000000:81:00.0, 40\n"
    table = run_smi(tmp_path, spec, *args).stdout
    assert "|   1  NVIDIA GeForce RTX 4090" in table
    assert "|   0  NVIDIA GeForce RTX 4090" not in table
    assert table.count("MiB /  24564MiB") == 1


def test_id_comma_list(tmp_path: Path) -> None:
    result = run_smi(tmp_path, two_gpus(), "-i", "1,0", "--query-gpu=index", "--format=csv,noheader")
    assert result.stdout == "0\n1\n"


@pytest.mark.parametrize("args", [("-i", "2"), ("-i", "2", "-L"), ("-i", "GPU-nope", "--query-gpu=index",
                                                                    "--format=csv")])
def test_missing_id_reports_no_devices(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_smi(tmp_path, two_gpus(), *args)
    assert (result.returncode, result.stdout) == (6, "No devices were found\n")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("args", [(), ("-L",), ("--query-gpu=index,name", "--format=csv")])
def test_driver_error_spec_behaves_like_a_broken_driver(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_smi(tmp_path, dict(BRIEF_SPEC, error="driver not loaded"), *args)
    assert result.returncode == 9
    assert result.stdout == ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                             "Make sure that the latest NVIDIA driver is installed and running.\n\n")


@pytest.mark.parametrize("option", ["-x", "-format=csv", "--query", "-lms100"])
def test_unknown_option(tmp_path: Path, option: str) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, option)
    assert result.returncode == 2
    assert result.stdout == (f"ERROR: Option {option} is not recognized. "
                             "Please run 'nvidia-smi -h' for help.\n\n")


def test_option_missing_its_value(tmp_path: Path) -> None:
    result = run_smi(tmp_path, BRIEF_SPEC, "-i")
    assert result.returncode == 2
    assert result.stdout == "ERROR: Option -i is missing its value. Please run 'nvidia-smi -h' for help.\n\n"


@pytest.mark.parametrize("spec", ["{not json", json.dumps({"gpus": [{"name": "x"}]}),
                                  json.dumps({"gpus": [{"name": "x", "memory_total_mib": "lots"}]})])
def test_bad_spec_is_one_clear_line(tmp_path: Path, spec: str) -> None:
    result = run_smi(tmp_path, spec)
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("nvidia-smi (vastsim): bad GPU spec:")


def test_missing_spec_file_is_one_clear_line(tmp_path: Path) -> None:
    env = dict(os.environ, VASTSIM_NVIDIA_SMI_SPEC=str(tmp_path / "absent.json"))
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr == f"nvidia-smi (vastsim): bad GPU spec: cannot read {tmp_path / 'absent.json'}: " \
                            "No such file or directory\n"


def test_spec_next_to_the_real_script_is_found_through_a_symlink(tmp_path: Path) -> None:
    install = tmp_path / "opt" / "vastsim"
    install.mkdir(parents=True)
    shutil.copy(SCRIPT, install / "nvidia_smi.py")
    (install / "nvidia-smi.json").write_text(json.dumps(BRIEF_SPEC), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(install / "nvidia_smi.py")
    env = {k: v for k, v in os.environ.items() if k != "VASTSIM_NVIDIA_SMI_SPEC"}
    result = subprocess.run([sys.executable, str(bin_dir / "nvidia-smi"), "-L"], capture_output=True,
                            text=True, env=env, timeout=60, check=False)
    assert result.stdout == f"GPU 0: NVIDIA GeForce RTX 4090 (UUID: {RTX4090['uuid']})\n"


def test_no_gpus_means_no_devices(tmp_path: Path) -> None:
    result = run_smi(tmp_path, dict(BRIEF_SPEC, gpus=[]))
    assert (result.returncode, result.stdout) == (6, "No devices were found\n")


# ---------------------------------------------------------------- 1, 2 and 8 GPUs


@pytest.mark.parametrize("count", [1, 2, 8])
def test_gpu_counts(tmp_path: Path, count: int) -> None:
    spec = {"driver_version": "550.54.14", "gpus": [
        {"name": "NVIDIA A100-SXM4-80GB", "memory_total_mib": 81920,
         "pci_bus_id": f"0000:{0x10 * (i + 1):02x}:00.0"}
        for i in range(count)]}
    table = run_smi(tmp_path, spec).stdout.split("\n")
    # date, 7 banner/heading lines, 4 per GPU, the gap, 7 Processes lines, final newline
    assert len(table) == 1 + 7 + 4 * count + 1 + 7 + 1
    rows = [line for line in table if line.startswith("|") and "NVIDIA A100-SXM4-80GB" in line]
    assert [row[:43] for row in rows] == [
        f"|{i:>4}  NVIDIA A100-SXM4-80GB          On  |" for i in range(count)]
    assert rows[-1][43:67] == f"   00000000:{0x10 * count:02X}:00.0 Off "
    # Data-centre defaults: passive cooling, ECC on, MIG capable, idle in P0.
    assert table[9].startswith("| N/A ") and " P0 " in table[9]
    assert table[9].endswith("|      0%      Default |")
    assert table[10].endswith("|             Disabled |") and table[8].endswith("|                    0 |")
    listing = run_smi(tmp_path, spec, "-L").stdout.splitlines()
    assert [line.split(" (UUID")[0] for line in listing] == [
        f"GPU {i}: NVIDIA A100-SXM4-80GB" for i in range(count)]
    assert len({line.split("UUID: ")[1] for line in listing}) == count
    query = run_smi(tmp_path, spec, "--query-gpu=index,count", "--format=csv,noheader").stdout
    assert query == "".join(f"{i}, {count}\n" for i in range(count))


# ---------------------------------------------------------------- the interpreter on the instance


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")
def test_runs_under_the_shebang_interpreter(tmp_path: Path) -> None:
    assert SCRIPT.read_text(encoding="utf-8").startswith("#!/usr/bin/python3\n")
    result = run_smi(tmp_path, BRIEF_SPEC, "--query-gpu=name", "--format=csv,noheader",
                     python="/usr/bin/python3")
    assert (result.returncode, result.stdout) == (0, "NVIDIA GeForce RTX 4090\n")


def test_main_is_importable_and_returns_the_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from mlops_vast.sim import nvidia_smi

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(BRIEF_SPEC), encoding="utf-8")
    monkeypatch.setenv("VASTSIM_NVIDIA_SMI_SPEC", str(spec_file))
    assert nvidia_smi.main(["--query-gpu=bogus", "--format=csv"]) == 2
    assert capsys.readouterr().out == 'Field "bogus" is not a valid field to query.\n\n'
    assert nvidia_smi.main(["-L"]) == 0


def test_date_line_pads_single_digit_days_with_a_space() -> None:
    from datetime import datetime

    from mlops_vast.sim import nvidia_smi

    machine = nvidia_smi.machine_from_spec(BRIEF_SPEC)
    text, code = nvidia_smi.run(machine, [], now=datetime(2026, 7, 5, 9, 3, 7))
    # Same form as the real "Fri Dec  5 05:19:05 2025       " (seven trailing spaces).
    assert (code, text.split("\n")[0]) == (0, "Sun Jul  5 09:03:07 2026       ")
    text, _ = nvidia_smi.run(machine, ["--query-gpu=timestamp", "--format=csv,noheader"],
                             now=datetime(2026, 7, 5, 9, 3, 7, 45000))
    assert text == "2026/07/05 09:03:07.045\n"


def test_declared_gpu_processes_show_in_memory_and_compute_apps(tmp_path: Path) -> None:
    """The simulator's mechanism for a job's GPU memory: a file per live pid in gpu-processes/."""
    from mlops_vast.sim import nvidia_smi

    machine = nvidia_smi.machine_from_spec(BRIEF_SPEC)
    processes = tmp_path / "gpu-processes"
    processes.mkdir()
    (processes / str(os.getpid())).write_text(json.dumps({"used_mib": 20000, "name": "python3"}))
    (processes / "999999999").write_text("777")  # a process that is gone: dropped, and its file removed
    found = nvidia_smi.read_processes(str(processes))
    assert [(proc.pid, proc.used_mib) for proc in found] == [(os.getpid(), 20000)]
    assert not (processes / "999999999").exists()
    text, code = nvidia_smi.run(machine, ["--query-gpu=memory.used,memory.free", "--format=csv,noheader,nounits"],
                                processes=found)
    used = machine.gpus[0].memory_used_mib + 20000
    assert code == 0 and text == f"{used}, {machine.gpus[0].memory_total_mib - used}\n"
    text, code = nvidia_smi.run(machine, ["--query-compute-apps=pid,process_name,used_memory", "--format=csv"],
                                processes=found)
    assert text == f"pid, process_name, used_gpu_memory [MiB]\n{os.getpid()}, python3, 20000 MiB\n"
    text, _ = nvidia_smi.run(machine, ["--query-compute-apps=pid", "--format=csv,noheader"])
    assert text == "", "no process, no line"
    text, code = nvidia_smi.run(machine, ["--query-compute-apps=bogus", "--format=csv"])
    assert code == 2 and 'Field "bogus" is not a valid field to query.' in text
    # Unchanged for the next call: the machine itself is not modified.
    assert nvidia_smi.run(machine, ["--query-gpu=memory.used", "--format=csv,noheader,nounits"])[0] == \
        f"{machine.gpus[0].memory_used_mib}\n"
