"""The seeded catalogue: determinism, market mix, units, pricing, and the bait machines."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Callable

import pytest

from mlops_vast.sim.catalog import (
    GPU_MODELS,
    Catalog,
    Machine,
    Offer,
    build_catalog,
    cuda_for_driver,
    driver_vers_int,
    offer_row,
)

NOW = 1_760_000_000.0
SEEDS = (0, 1, 2, 3, 7)

# §8 "Minimal offer row" of reference/vast-api.md, verbatim.
# fmt: off
MINIMAL_OFFER_KEYS = (
    "id", "ask_contract_id", "machine_id", "host_id", "gpu_name", "num_gpus", "gpu_ram", "gpu_total_ram",
    "cpu_cores_effective", "cpu_ram", "cpu_ghz", "disk_space", "inet_up", "inet_down", "dph_base",
    "dph_total", "min_bid", "storage_cost", "reliability", "reliability2", "dlperf", "dlperf_per_dphtotal",
    "score", "cuda_max_good", "driver_version", "compute_cap", "verification", "geolocation", "static_ip",
    "direct_port_count", "rentable", "rented", "external", "duration", "end_date", "pcie_bw",
    "total_flops", "is_bid",
)
# fmt: on

SEED_QUERIES = (
    "reliability > 0.95 cuda_vers >= 12.0 gpu_ram >= 16",
    "reliability > 0.95 cuda_vers >= 12.4 gpu_name ~ A100|RTX_4090|RTX_3090|H100 num_gpus=1",
    "reliability > 0.95 cuda_vers >= 12.4 gpu_name ~ A100 num_gpus >= 2",
    "gpu_ram>=24 num_gpus=1",
)


# ---------------------------------------------------------------------------------------------
# A deliberately tiny evaluator of the seeds' queries, independent of the simulator's own
# query module so that a bug there cannot hide a catalogue that matches nothing.

_ALIASES = {"cuda_vers": "cuda_max_good", "dph": "dph_total"}
_GB_FIELDS = {"gpu_ram", "gpu_total_ram", "cpu_ram"}  # the CLI sends GB x 1000 as MB
_CMP: dict[str, Callable[[object, object], bool]] = {
    ">": lambda a, b: a > b,  # type: ignore[operator]
    ">=": lambda a, b: a >= b,  # type: ignore[operator]
    "<": lambda a, b: a < b,  # type: ignore[operator]
    "<=": lambda a, b: a <= b,  # type: ignore[operator]
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def predicate(query: str) -> Callable[[dict[str, object]], bool]:
    terms = re.findall(r"(\w+)\s*(>=|<=|!=|=|>|<|~)\s*(\S+)", query)
    assert terms and "".join(re.split(r"\w+\s*(?:>=|<=|!=|=|>|<|~)\s*\S+", query)).strip() == ""

    def check(row: dict[str, object]) -> bool:
        # The CLI's default filters: verified, rentable, not external.
        if row["verification"] != "verified" or not row["rentable"] or row["external"]:
            return False
        for name, op, raw in terms:
            value = raw.replace("_", " ")
            if op == "~":
                # The seeds' "regex match" on the GPU name (the real CLI has no such operator).
                if not re.search(value, str(row[name])):
                    return False
                continue
            field = _ALIASES.get(name, name)
            number = float(value) * (1000 if field in _GB_FIELDS else 1)
            if not _CMP[op](row[field], number):
                return False
        return True

    return check


def search(catalog: Catalog, query: str, **kwargs: object) -> list[dict[str, object]]:
    rows = [r for r in catalog.rows(now=NOW, **kwargs) if predicate(query)(r)]  # type: ignore[arg-type]
    return sorted(rows, key=lambda r: r["dph_total"])  # type: ignore[arg-type,return-value]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(0, now=NOW)


def _machine(**overrides: object) -> Machine:
    """A hand-made machine with round numbers, so pricing can be checked against arithmetic."""
    base = {
        "machine_id": 4242,
        "host_id": 99999,
        "gpu": next(m for m in GPU_MODELS if m.vast_name == "RTX 4090"),
        "gpus_total": 4,
        "cpu_name": "AMD EPYC 7543 32-Core Processor",
        "cpu_cores": 64,
        "cpu_ghz": 2.8,
        "cpu_ram_mb": 256_000,
        "disk_space_gb": 2000.0,
        "disk_bw": 3000.0,
        "disk_name": "Samsung SSD 990 PRO 4TB",
        "inet_up": 800.0,
        "inet_down": 900.0,
        "reliability": 0.98,
        "geolocation": "Quebec, CA",
        "verification": "verified",
        "hosting_type": 1,
        "static_ip": True,
        "public_ipaddr": "203.0.113.7",
        "direct_port_count": 100,
        "pci_gen": 4,
        "pcie_bw": 24.0,
        "driver_version": "535.86.05",
        "dph_per_gpu": 0.4,
        "min_bid_per_gpu": 0.15,
        "storage_cost": 0.18,
        "inet_up_cost": 0.01,
        "inet_down_cost": 0.005,
        "start_date": NOW - 86400,
        "end_date": NOW + 10 * 86400,
    }
    base.update(overrides)
    return Machine(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_gives_identical_catalogue() -> None:
    a, b = build_catalog(5, now=NOW), build_catalog(5, now=NOW)
    assert a == b
    assert a.rows(now=NOW) == b.rows(now=NOW)


def test_different_seeds_differ() -> None:
    a, b = build_catalog(0, now=NOW), build_catalog(1, now=NOW)
    assert set(a.offers) != set(b.offers)
    assert set(a.machines) != set(b.machines)
    prices_a = sorted(m.dph_per_gpu for m in a.machines.values())
    prices_b = sorted(m.dph_per_gpu for m in b.machines.values())
    assert prices_a != prices_b


def test_now_only_shifts_listing_dates() -> None:
    a, b = build_catalog(3, now=NOW), build_catalog(3, now=NOW + 5000)
    assert a.offers == b.offers
    assert a.machines.keys() == b.machines.keys()
    for mid, ma in a.machines.items():
        mb = b.machines[mid]
        assert mb.end_date - ma.end_date == pytest.approx(5000)
        assert dataclasses.replace(mb, end_date=ma.end_date, start_date=ma.start_date) == ma


def test_default_now_is_the_clock() -> None:
    import time

    before = time.time()
    cat = build_catalog(0)
    assert all(m.end_date > before + 6 * 86400 for m in cat.machines.values())


# ---------------------------------------------------------------------------------------------
# Market mix


@pytest.mark.parametrize("seed", SEEDS)
def test_counts_and_mix(seed: int) -> None:
    cat = build_catalog(seed, now=NOW)
    machines = list(cat.machines.values())
    assert len(cat.offers) >= 40
    assert len(machines) >= 24
    assert len(cat.gpu_models) >= 8
    assert {m.verification for m in machines} >= {"verified", "unverified"}
    assert {m.hosting_type for m in machines} == {0, 1}
    assert len({m.country_code for m in machines}) >= 4
    reliable = [m for m in machines if m.reliability > 0.95]
    assert len(reliable) > len(machines) / 2
    assert any(m.reliability < 0.95 for m in machines)
    # The driver mix must let `cuda_vers >= 12.4` exclude some reliable, verified machines.
    good = [m for m in reliable if m.verified]
    assert any(m.cuda_max_good < 12.4 for m in good)
    assert any(m.cuda_max_good >= 12.4 for m in good)


def test_gpu_models_span_3090_to_h100(catalog: Catalog) -> None:
    names = catalog.gpu_names()
    assert names == sorted(set(names))
    assert {"RTX 3090", "RTX 4090", "RTX A6000", "A100 SXM4", "H100 SXM"} <= set(names)
    assert all("_" not in n for n in names)
    for model in GPU_MODELS:
        assert 0 < model.dph_min < model.dph_max
        assert model.smi_name.startswith("NVIDIA ")
    price = {m.vast_name: (m.dph_min, m.dph_max) for m in GPU_MODELS}
    assert price["RTX 3090"][1] < price["RTX 4090"][1] < price["A100 SXM4"][1] < price["H100 SXM"][1]


def test_ids_look_like_vasts(catalog: Catalog) -> None:
    assert all(1_000 <= mid <= 99_999 for mid in catalog.machines)
    assert all(1_000_000 <= oid <= 99_999_999 for oid in catalog.offers)
    for offer_id, offer in catalog.offers.items():
        assert offer.id == offer_id
    for machine in catalog.machines.values():
        sizes = sorted(o.num_gpus for o in catalog.offers_on(machine.machine_id))
        assert sizes == [k for k in (1, 2, 4, 8) if k <= machine.gpus_total]
        assert machine.gpus_total in (1, 2, 4, 8)


def test_machine_attributes_are_well_formed(catalog: Catalog) -> None:
    docs = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    for m in catalog.machines.values():
        assert re.fullmatch(r"[A-Za-z .-]+, [A-Z]{2}", m.geolocation), m.geolocation
        assert m.country_code == m.geolocation[-2:]
        assert any(ipaddress.ip_address(m.public_ipaddr) in net for net in docs)
        assert 0 < m.min_bid_per_gpu < m.dph_per_gpu
        assert m.gpu.dph_min <= m.dph_per_gpu <= m.gpu.dph_max
        assert 0.05 <= m.storage_cost <= 0.30
        assert m.end_date - NOW >= 7 * 86400
        assert m.cuda_max_good == cuda_for_driver(m.driver_version)
        assert m.verification in ("verified", "unverified", "deverified")


def test_driver_helpers() -> None:
    assert driver_vers_int("535.86.05") == 535086005
    assert driver_vers_int("550.54.14") == 550054014
    assert cuda_for_driver("535.183.01") == 12.2
    assert cuda_for_driver("550.54.14") == 12.4
    assert cuda_for_driver("560.35.03") == 12.6
    assert cuda_for_driver("570.124.06") == 12.8
    assert _machine(driver_version="550.127.05").driver_vers == 550127005


# ---------------------------------------------------------------------------------------------
# The seeds' queries


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("query", SEED_QUERIES)
def test_seed_queries_have_matches(seed: int, query: str) -> None:
    hits = search(build_catalog(seed, now=NOW), query)
    assert hits, f"seed {seed}: no offer for {query!r}"


def test_query_evaluator_filters_what_it_should(catalog: Catalog) -> None:
    hits = search(catalog, SEED_QUERIES[2])
    assert all(str(r["gpu_name"]).startswith("A100") and r["num_gpus"] >= 2 for r in hits)  # type: ignore[operator]
    assert all(r["cuda_max_good"] >= 12.4 and r["reliability"] > 0.95 for r in hits)  # type: ignore[operator]
    # gpu_ram >= 16 is 16000 MB, so 16 GB cards (16376 MiB) pass and nothing smaller exists.
    assert any(r["gpu_ram"] == 16376 for r in search(catalog, SEED_QUERIES[0]))
    assert not search(catalog, "gpu_ram >= 200")
    everything = catalog.rows(now=NOW)
    assert len(search(catalog, SEED_QUERIES[1])) < len(everything)


@pytest.mark.parametrize("seed", SEEDS)
def test_cheapest_reliable_offers_can_be_bait(seed: int) -> None:
    cat = build_catalog(seed, now=NOW)
    top = search(cat, SEED_QUERIES[1])[0]
    assert cat.machines[top["machine_id"]].defects  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# Offer rows: keys, units, pricing


def test_minimal_offer_row_keys_present(catalog: Catalog) -> None:
    for row in catalog.rows(now=NOW):
        missing = [k for k in MINIMAL_OFFER_KEYS if k not in row]
        assert not missing


def test_rows_are_plain_json(catalog: Catalog) -> None:
    for row in catalog.rows(now=NOW) + catalog.rows(now=NOW, bid=True):
        assert json.loads(json.dumps(row)) == row
        assert isinstance(row["cuda_max_good"], float)
        assert isinstance(row["compute_cap"], int) and not isinstance(row["compute_cap"], bool)
        assert isinstance(row["driver_vers"], int)
        assert isinstance(row["gpu_ram"], int) and isinstance(row["cpu_ram"], int)
        assert row["gpu_arch"] == "nvidia" and row["cpu_arch"] == "amd64"
        assert row["resource_type"] == "gpu" and row["external"] is False


def test_units_and_shares() -> None:
    m = _machine()
    row = offer_row(Offer(12345678, m.machine_id, 2), m, now=NOW)
    assert row["gpu_name"] == "RTX 4090"
    assert row["gpu_ram"] == 24564  # MB per GPU, as Vast reports a 4090
    assert row["gpu_total_ram"] == 2 * 24564
    assert row["gpu_frac"] == 0.5
    assert row["cpu_ram"] == 128_000  # half the machine's RAM for half its GPUs
    assert row["cpu_cores_effective"] == 32.0
    assert row["disk_space"] == 1000.0
    assert row["compute_cap"] == 890
    assert row["cuda_max_good"] == 12.2
    assert row["driver_vers"] == 535086005
    assert row["geolocation"] == "Quebec, CA"
    assert row["internet_up_cost_per_tb"] == pytest.approx(10.0)


def test_catalogue_4090_rows_report_24564(catalog: Catalog) -> None:
    rows = [r for r in catalog.rows(now=NOW) if r["gpu_name"] == "RTX 4090"]
    assert rows
    assert all(r["gpu_ram"] == 24564 and r["gpu_total_ram"] == 24564 * r["num_gpus"] for r in rows)  # type: ignore[operator]


def test_on_demand_pricing_is_exact() -> None:
    m = _machine()
    row = offer_row(Offer(12345678, m.machine_id, 2), m, now=NOW, allocated_storage=10.0)
    assert row["dph_base"] == 0.4 * 2
    assert row["storage_total_cost"] == 10.0 * 0.18 / 720
    assert row["storage_total_cost"] == pytest.approx(0.0025, abs=1e-15)
    assert row["dph_total"] == row["dph_base"] + row["storage_total_cost"]  # type: ignore[operator]
    assert row["dph_total"] == pytest.approx(0.8025, abs=1e-12)
    assert row["is_bid"] is False
    assert row["min_bid"] == 0.15 * 2
    assert row["search"]["totalHour"] == row["dph_total"]  # type: ignore[index]
    assert row["dlperf_per_dphtotal"] == row["dlperf"] / row["dph_total"]  # type: ignore[operator]


def test_bid_pricing_uses_min_bid() -> None:
    m = _machine()
    offer = Offer(12345678, m.machine_id, 4)
    storage = 5.0 * 0.18 / 720
    floor = offer_row(offer, m, now=NOW, bid=True)
    assert floor["is_bid"] is True
    assert floor["min_bid"] == 0.15 * 4
    assert floor["dph_total"] == 0.15 * 4 + storage
    assert floor["dph_base"] == 0.4 * 4  # the on-demand price is still reported
    outbid = offer_row(offer, m, now=NOW, bid=True, min_bid=0.9)
    assert outbid["min_bid"] == 0.9
    assert outbid["dph_total"] == 0.9 + storage
    on_demand = offer_row(offer, m, now=NOW, min_bid=0.9)
    assert on_demand["dph_total"] == 1.6 + storage and on_demand["is_bid"] is False


def test_row_flags_pass_through() -> None:
    m = _machine()
    row = offer_row(Offer(12345678, m.machine_id, 1), m, now=NOW, rentable=False, rented=True)
    assert row["rentable"] is False and row["rented"] is True


def test_offer_row_rejects_a_foreign_machine() -> None:
    m = _machine()
    with pytest.raises(ValueError):
        offer_row(Offer(12345678, 1, 1), m, now=NOW)


def test_duration_counts_down() -> None:
    m = _machine()
    offer = Offer(12345678, m.machine_id, 1)
    early = offer_row(offer, m, now=NOW)
    late = offer_row(offer, m, now=NOW + 3600)
    assert early["duration"] == 10 * 86400
    assert late["duration"] == early["duration"] - 3600  # type: ignore[operator]
    assert early["end_date"] == late["end_date"]
    assert early["time_remaining"] == "10 days, 0 hours"


# ---------------------------------------------------------------------------------------------
# Bait machines


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["slow_link_kbytes", "wrong_gpu", "small_disk_gb", "driver_error"])
def test_each_defect_hides_on_a_trustworthy_machine(seed: int, kind: str) -> None:
    cat = build_catalog(seed, now=NOW)
    hosts = [m for m in cat.bad_machines() if kind in m.defects]
    assert hosts
    for m in hosts:
        assert m.verified and m.reliability > 0.95 and m.cuda_max_good >= 12.4
        assert m.inet_down >= 500  # the offer row advertises a fast link
        # Cheaper than every honest verified reliable listing of its model, so `-o dph+` reaches
        # it (or another bait machine) before any good host of that model.
        honest = [
            p
            for p in cat.machines.values()
            if p.gpu == m.gpu and p.verified and p.reliability > 0.95 and not p.defects
        ]
        assert honest
        assert m.dph_per_gpu < min(p.dph_per_gpu for p in honest)


def test_defect_values(catalog: Catalog) -> None:
    defects = {k: v for m in catalog.bad_machines() for k, v in m.defects.items()}
    assert defects["slow_link_kbytes"] == 170
    assert defects["small_disk_gb"] == 2
    assert defects["driver_error"] is True
    smi_names = {g.smi_name for g in GPU_MODELS}
    for m in catalog.bad_machines():
        if "wrong_gpu" in m.defects:
            assert m.defects["wrong_gpu"] in smi_names
            assert m.defects["wrong_gpu"] != m.gpu.smi_name
    good = [m for m in catalog.machines.values() if m not in catalog.bad_machines()]
    assert all(m.defects == {} for m in good)
