"""The seeded offer catalogue: GPU models, machines, offers, and Vast-shaped offer rows.

Everything here is deterministic for a seed so that a test, a demo and a user's CI
all see the same marketplace: ``build_catalog(seed)`` draws every attribute from one
``random.Random(seed)`` in a fixed order, and ``now`` only moves the listing dates.

The catalogue is modelled on the late-2025 Vast market (names as Vast's
``gpu_names/unique`` spells them, per-GPU prices in the observed ranges, VRAM as
``nvidia-smi`` reports it in MiB). A handful of machines carry *defects*: their offer
rows look as good as any other (verified, reliable, cheap, fast ``inet_down``) and
only the simulator's instance, once rented, shows the problem. That is the case the
product's probe and GPU-check steps exist for.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# GPU models


@dataclass(frozen=True)
class GpuModel:
    """One GPU model as Vast lists it and as ``nvidia-smi`` on the host reports it."""

    vast_name: str  # Vast's gpu_name, spaces not underscores ("RTX 4090")
    smi_name: str  # nvidia-smi --query-gpu=name
    vram_mb: int  # per GPU, MiB as nvidia-smi prints it; Vast's gpu_ram carries the same number
    compute_cap: int  # CUDA compute capability x100 (890 = 8.9)
    total_flops: float  # FP32 TFLOPS per GPU, the figure Vast's total_flops sums
    mem_bw: float  # GB/s
    power_limit_w: int
    pcie_gen: int  # what the card supports; a machine's slot may be slower
    dph_min: float  # on-demand $/h per GPU, cheapest realistic listing
    dph_max: float  # on-demand $/h per GPU, dearest realistic listing
    dlperf: float  # Vast-style DL-performance score per GPU (approximate)
    nvlink_bw: float = 0.0  # GB/s between GPUs; only the SXM parts have it on Vast machines
    consumer: bool = False  # GeForce cards sit in desktop boxes with desktop CPUs

    @property
    def vram_gb(self) -> float:
        return self.vram_mb / 1024


# Prices are on-demand $/h per GPU from the late-2025 Vast market; specs from NVIDIA's
# datasheets. VRAM is the MiB figure nvidia-smi prints (24564 for a 4090, 81559 for an
# H100), which is also what Vast reports as gpu_ram. Kept as an aligned table on purpose.
# fmt: off
GPU_MODELS: tuple[GpuModel, ...] = (
    GpuModel("RTX 3090", "NVIDIA GeForce RTX 3090", 24576, 860, 35.6, 936.0, 350, 4,
             0.13, 0.25, 32.0, consumer=True),
    GpuModel("RTX 4080S", "NVIDIA GeForce RTX 4080 SUPER", 16376, 890, 52.2, 736.0, 320, 4,
             0.15, 0.28, 42.0, consumer=True),
    GpuModel("RTX 4090", "NVIDIA GeForce RTX 4090", 24564, 890, 82.6, 1008.0, 450, 4,
             0.28, 0.50, 62.0, consumer=True),
    GpuModel("A40", "NVIDIA A40", 46068, 860, 37.4, 696.0, 300, 4, 0.30, 0.45, 34.0),
    GpuModel("RTX A6000", "NVIDIA RTX A6000", 49140, 860, 38.7, 768.0, 300, 4, 0.40, 0.55, 36.0),
    GpuModel("L40S", "NVIDIA L40S", 46068, 890, 91.6, 864.0, 350, 4, 0.55, 0.90, 72.0),
    GpuModel("RTX 6000Ada", "NVIDIA RTX 6000 Ada Generation", 49140, 890, 91.1, 960.0, 300, 4,
             0.60, 0.90, 70.0),
    GpuModel("A100 PCIE", "NVIDIA A100-PCIE-40GB", 40960, 800, 19.5, 1555.0, 250, 4,
             0.50, 0.85, 52.0),
    GpuModel("A100 SXM4", "NVIDIA A100-SXM4-80GB", 81920, 800, 19.5, 2039.0, 400, 4,
             0.70, 1.40, 68.0, nvlink_bw=600.0),
    GpuModel("H100 PCIE", "NVIDIA H100 PCIe", 81559, 900, 51.2, 2039.0, 350, 5, 1.60, 2.20, 95.0),
    GpuModel("H100 SXM", "NVIDIA H100 80GB HBM3", 81559, 900, 66.9, 3350.0, 700, 5,
             1.60, 2.60, 130.0, nvlink_bw=900.0),
)
# fmt: on

_MODELS: dict[str, GpuModel] = {m.vast_name: m for m in GPU_MODELS}

# The card a dishonest or misconfigured host actually has when it advertises another:
# always a lesser part, so that renting it silently costs the user performance.
_LESSER: dict[str, str] = {
    "RTX 4090": "RTX 3090",
    "RTX 4080S": "RTX 3090",
    "RTX 3090": "RTX 4080S",
    "RTX 6000Ada": "RTX A6000",
    "L40S": "A40",
    "RTX A6000": "A40",
    "A100 SXM4": "A100 PCIE",
    "H100 SXM": "H100 PCIE",
    "H100 PCIE": "A100 SXM4",
}


def lesser_gpu(vast_name: str) -> GpuModel:
    """The lesser model a ``wrong_gpu`` host really carries instead of ``vast_name``."""
    return _MODELS[_LESSER.get(vast_name, "RTX 3090")]


# ---------------------------------------------------------------------------------------------
# Drivers


def driver_vers_int(driver_version: str) -> int:
    """``"535.86.05"`` → ``535086005``: each part zero-padded to 3 digits, as Vast's driver_vers."""
    parts = [int(p) for p in driver_version.split(".")]
    parts += [0] * (3 - len(parts))
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]


# Highest CUDA runtime each driver branch supports (NVIDIA's compatibility table).
_CUDA_BY_BRANCH: tuple[tuple[int, float], ...] = (
    (580, 13.0),
    (575, 12.9),
    (570, 12.8),
    (565, 12.7),
    (560, 12.6),
    (555, 12.5),
    (550, 12.4),
    (545, 12.3),
    (535, 12.2),
    (530, 12.1),
    (525, 12.0),
)


def cuda_for_driver(driver_version: str) -> float:
    """The ``cuda_max_good`` a host with this driver reports (535→12.2, 550→12.4, 570→12.8)."""
    major = int(driver_version.split(".")[0])
    for branch, cuda in _CUDA_BY_BRANCH:
        if major >= branch:
            return cuda
    return 11.8


# Real driver builds seen on Vast hosts. The 535/545 ones are there so that a
# ``cuda_vers >= 12.4`` filter has something to exclude.
_NEW_DRIVERS = (
    "550.54.14",
    "550.127.05",
    "550.144.03",
    "560.35.03",
    "565.57.01",
    "570.124.06",
    "570.133.20",
    "575.57.08",
)
_OLD_DRIVERS = ("535.183.01", "535.216.03", "545.29.06")


# ---------------------------------------------------------------------------------------------
# Machines and offers


@dataclass
class Machine:
    """A physical host as the marketplace knows it. Mutable: the simulator may re-price or degrade it."""

    machine_id: int
    host_id: int
    gpu: GpuModel
    gpus_total: int
    cpu_name: str
    cpu_cores: int  # vCPUs in the whole machine
    cpu_ghz: float
    cpu_ram_mb: int  # whole machine
    disk_space_gb: float  # whole machine, available to containers
    disk_bw: float  # MB/s
    disk_name: str
    inet_up: float  # Mb/s, as advertised
    inet_down: float  # Mb/s, as advertised
    reliability: float
    geolocation: str  # "Region, CC"
    verification: str  # "verified" / "unverified" / "deverified"
    hosting_type: int  # 0 community, 1 datacenter
    static_ip: bool
    public_ipaddr: str
    direct_port_count: int
    pci_gen: int
    pcie_bw: float  # GB/s CPU<->GPU, measured by Vast
    driver_version: str
    dph_per_gpu: float  # on-demand $/h per GPU
    min_bid_per_gpu: float  # interruptible floor, $/h per GPU
    storage_cost: float  # $/GB/month
    inet_up_cost: float  # $/GB
    inet_down_cost: float  # $/GB
    start_date: float  # epoch s the listing began
    end_date: float  # epoch s the listing (maximum contract) ends
    vms_enabled: bool = False
    credit_discount_max: float = 0.4
    defects: dict[str, object] = field(default_factory=dict)

    @property
    def country_code(self) -> str:
        return self.geolocation.rsplit(",", 1)[-1].strip()

    @property
    def driver_vers(self) -> int:
        return driver_vers_int(self.driver_version)

    @property
    def cuda_max_good(self) -> float:
        # Derived, never stored, so a re-driven machine cannot advertise an inconsistent CUDA.
        return cuda_for_driver(self.driver_version)

    @property
    def verified(self) -> bool:
        return self.verification == "verified"

    @property
    def datacenter(self) -> bool:
        return self.hosting_type >= 1


@dataclass(frozen=True)
class Offer:
    """One rentable slice of a machine (Vast lists 1, 2, 4, 8 GPUs of a machine as separate asks)."""

    id: int
    machine_id: int
    num_gpus: int


@dataclass
class Catalog:
    machines: dict[int, Machine]
    offers: dict[int, Offer]
    gpu_models: dict[str, GpuModel]
    seed: int = 0

    def gpu_names(self) -> list[str]:
        """Sorted unique Vast GPU names (the body of ``GET /gpu_names/unique/``)."""
        return sorted({m.gpu.vast_name for m in self.machines.values()} | set(self.gpu_models))

    def bad_machines(self) -> list[Machine]:
        """Machines whose defects only show after renting, in machine-id order."""
        return sorted((m for m in self.machines.values() if m.defects), key=lambda m: m.machine_id)

    def machine_of(self, offer_id: int) -> Machine:
        return self.machines[self.offers[offer_id].machine_id]

    def offers_on(self, machine_id: int) -> list[Offer]:
        return [o for o in self.offers.values() if o.machine_id == machine_id]

    def rows(
        self, *, now: float, allocated_storage: float = 5.0, bid: bool = False
    ) -> list[dict[str, object]]:
        """Every offer as a Vast row, unfiltered; convenient for tests and the search endpoint."""
        return [
            offer_row(o, self.machines[o.machine_id], now=now, allocated_storage=allocated_storage, bid=bid)
            for o in self.offers.values()
        ]


# ---------------------------------------------------------------------------------------------
# Catalogue plan

# Profiles decide the marketplace mix; the plan below fixes how many machines of each kind
# exist so that every seed satisfies the same guarantees (the seeds' queries match, each
# defect exists), while the seed varies ids, prices, places, hardware details.
#   good   verified community host, reliable, current driver
#   dc     verified datacenter, reliable, current driver
#   dc_old verified datacenter, reliable, 535/545 driver (cuda < 12.4)
#   old    verified community, reliable, 535/545 driver
#   flaky  low reliability (< 0.95), any verification
#   unver  unverified community
#   dever  deverified
#   bad:*  verified, reliable, cheapest of its model, with a defect after renting
_PLAN: tuple[tuple[str, int, str], ...] = (
    ("RTX 3090", 1, "good"),
    ("RTX 3090", 2, "good"),
    ("RTX 3090", 4, "old"),
    ("RTX 3090", 1, "flaky"),
    ("RTX 3090", 2, "unver"),
    ("RTX 3090", 1, "bad:slow_link"),
    ("RTX 4080S", 1, "good"),
    ("RTX 4080S", 2, "unver"),
    ("RTX 4090", 1, "good"),
    ("RTX 4090", 2, "good"),
    ("RTX 4090", 8, "dc"),
    ("RTX 4090", 4, "unver"),
    ("RTX 4090", 1, "flaky"),
    ("RTX 4090", 1, "bad:wrong_gpu"),
    ("RTX 4090", 2, "bad:driver_error"),
    ("A40", 4, "dc"),
    ("A40", 2, "dever"),
    ("RTX A6000", 1, "good"),
    ("RTX A6000", 4, "dc"),
    ("RTX A6000", 2, "old"),
    ("L40S", 8, "dc"),
    ("L40S", 2, "good"),
    ("RTX 6000Ada", 4, "dc"),
    ("RTX 6000Ada", 1, "good"),
    ("A100 PCIE", 2, "dc"),
    ("A100 PCIE", 4, "dc_old"),
    ("A100 SXM4", 8, "dc"),
    ("A100 SXM4", 4, "dc"),
    ("A100 SXM4", 2, "good"),
    ("A100 SXM4", 8, "flaky"),
    ("A100 SXM4", 4, "bad:small_disk"),
    ("H100 PCIE", 2, "dc"),
    ("H100 PCIE", 1, "good"),
    ("H100 SXM", 8, "dc"),
    ("H100 SXM", 8, "dc_old"),
    ("H100 SXM", 8, "unver"),
)

_LOCATIONS: tuple[str, ...] = (
    "Texas, US",
    "California, US",
    "Virginia, US",
    "Oregon, US",
    "Washington, US",
    "Quebec, CA",
    "Ontario, CA",
    "North Holland, NL",
    "Hesse, DE",
    "Bavaria, DE",
    "England, GB",
    "Stockholm, SE",
    "Oslo, NO",
    "Masovian, PL",
    "Tokyo, JP",
    "New South Wales, AU",
)

_DESKTOP_CPUS: tuple[tuple[str, int, float], ...] = (
    ("AMD Ryzen 9 7950X 16-Core Processor", 32, 4.5),
    ("AMD Ryzen 9 5950X 16-Core Processor", 32, 3.4),
    ("13th Gen Intel(R) Core(TM) i9-13900K", 32, 3.0),
    ("AMD Ryzen Threadripper 3960X 24-Core Processor", 48, 3.8),
    ("AMD Ryzen Threadripper PRO 5975WX 32-Cores", 64, 3.6),
)
_SERVER_CPUS: tuple[tuple[str, int, float], ...] = (
    ("AMD EPYC 7543 32-Core Processor", 128, 2.8),
    ("AMD EPYC 7V13 64-Core Processor", 128, 2.45),
    ("AMD EPYC 9354 32-Core Processor", 128, 3.25),
    ("Intel(R) Xeon(R) Platinum 8480+", 224, 2.0),
    ("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", 128, 2.0),
)
_DISKS: tuple[str, ...] = (
    "Samsung SSD 980 PRO 2TB",
    "Samsung SSD 990 PRO 4TB",
    "WD_BLACK SN850X 2000GB",
    "SAMSUNG MZQL23T8HCLS-00A07",
    "Micron_7450_MTFDKCC3T8TFS",
    "INTEL SSDPF2KX038TZ",
)

# Measured CPU<->GPU bandwidth Vast shows for a x16 slot of each generation (GB/s).
_PCIE_BW: dict[int, float] = {3: 12.5, 4: 24.5, 5: 50.0}

_OFFER_SIZES = (1, 2, 4, 8)


def _price(rng: random.Random, gpu: GpuModel, profile: str) -> float:
    span = gpu.dph_max - gpu.dph_min
    if profile.startswith("bad:"):
        # Bait: the cheapest listing of its model, so `-o dph+` puts it first among reliable hosts.
        return round(gpu.dph_min * rng.uniform(1.0, 1.03), 3)
    if profile in ("flaky", "unver", "dever"):
        # Unproven hosts undercut, but stay inside the realistic range.
        return round(rng.uniform(gpu.dph_min, gpu.dph_min + 0.6 * span), 3)
    # Honest reliable hosts never undercut the bait (>= min x 1.06 > min x 1.03).
    return round(rng.uniform(max(gpu.dph_min * 1.06, gpu.dph_min + 0.1 * span), gpu.dph_max), 3)


def _defects(profile: str, gpu: GpuModel) -> dict[str, object]:
    kind = profile.removeprefix("bad:")
    if kind == "slow_link":
        return {"slow_link_kbytes": 170}  # the seed's observed 170 KB/s
    if kind == "wrong_gpu":
        return {"wrong_gpu": lesser_gpu(gpu.vast_name).smi_name}
    if kind == "small_disk":
        return {"small_disk_gb": 2}
    if kind == "driver_error":
        return {"driver_error": True}
    raise ValueError(f"unknown defect profile {profile!r}")


def _doc_ip(index: int) -> str:
    # RFC 5737 documentation ranges only, so no simulated host ever names a real address.
    nets = ("203.0.113", "198.51.100", "192.0.2")
    return f"{nets[index // 250 % 3]}.{index % 250 + 2}"


def build_catalog(seed: int = 0, now: float | None = None) -> Catalog:
    """Build the marketplace for ``seed``; ``now`` (default: the clock) only anchors listing dates."""
    rng = random.Random(seed)
    anchor = time.time() if now is None else float(now)

    n = len(_PLAN)
    machine_ids = rng.sample(range(1_000, 100_000), n)  # 4-5 digits, like Vast machine ids
    host_pool = rng.sample(range(10_000, 400_000), n)
    ip_slots = rng.sample(range(750), n)
    offer_count = sum(1 for _, total, _ in _PLAN for k in _OFFER_SIZES if k <= total)
    offer_ids = rng.sample(range(3_000_000, 40_000_000), offer_count)  # 7-8 digits, like ask ids

    machines: dict[int, Machine] = {}
    offers: dict[int, Offer] = {}
    hosts_by_type: dict[int, list[int]] = {0: [], 1: []}
    next_offer = iter(offer_ids)

    for index, (name, gpus_total, profile) in enumerate(_PLAN):
        gpu = _MODELS[name]
        bad = profile.startswith("bad:")
        datacenter = profile in ("dc", "dc_old")
        hosting_type = 1 if datacenter else 0

        # Big operators run several machines: reuse a host of the same kind now and then.
        same_kind = hosts_by_type[hosting_type]
        if same_kind and rng.random() < 0.3:
            host_id = rng.choice(same_kind)
        else:
            host_id = host_pool[index]
            same_kind.append(host_id)

        if profile == "flaky":
            reliability = rng.uniform(0.78, 0.94)
            verification = rng.choice(("verified", "unverified"))
        elif profile == "unver":
            reliability = rng.uniform(0.90, 0.99)
            verification = "unverified"
        elif profile == "dever":
            reliability = rng.uniform(0.85, 0.97)
            verification = "deverified"
        elif bad:
            reliability = rng.uniform(0.97, 0.995)  # looks as trustworthy as anything listed
            verification = "verified"
        else:
            reliability = rng.uniform(0.955, 0.999)
            verification = "verified"

        if profile in ("old", "dc_old"):
            driver = rng.choice(_OLD_DRIVERS)
        elif profile in ("unver", "flaky", "dever"):
            driver = rng.choice(_NEW_DRIVERS + _OLD_DRIVERS)
        else:
            driver = rng.choice(_NEW_DRIVERS)

        server = datacenter or gpus_total >= 4 or not gpu.consumer
        cpu_name, cpu_cores, cpu_ghz = rng.choice(_SERVER_CPUS if server else _DESKTOP_CPUS)
        if server:
            cpu_ram_gb = gpus_total * rng.choice((64, 128, 256))
            disk_gb = rng.uniform(500.0, 8000.0)
        else:
            cpu_ram_gb = rng.choice((64, 128, 192))
            disk_gb = rng.uniform(200.0, 2000.0)
        # Vast reports RAM a little under the nominal size (what the kernel sees).
        cpu_ram_mb = cpu_ram_gb * 1024 - rng.randrange(200, 2000)

        if datacenter:
            inet_down = rng.uniform(2000.0, 9000.0)
            inet_up = inet_down * rng.uniform(0.5, 1.0)
        elif bad:
            inet_down = rng.uniform(600.0, 1000.0)  # advertised speed is fine; the real link is not
            inet_up = inet_down * rng.uniform(0.4, 0.9)
        else:
            inet_down = rng.uniform(150.0, 1500.0)
            inet_up = inet_down * rng.uniform(0.1, 0.9)

        # Consumer boards often run GPUs in gen3 slots; datacenter boards match the card.
        pci_gen = gpu.pcie_gen if (server or rng.random() < 0.6) else 3
        pci_gen = min(pci_gen, gpu.pcie_gen)

        dph = _price(rng, gpu, profile)
        machine = Machine(
            machine_id=machine_ids[index],
            host_id=host_id,
            gpu=gpu,
            gpus_total=gpus_total,
            cpu_name=cpu_name,
            cpu_cores=cpu_cores,
            cpu_ghz=cpu_ghz,
            cpu_ram_mb=cpu_ram_mb,
            disk_space_gb=round(disk_gb, 1),
            disk_bw=round(rng.uniform(1200.0, 6500.0), 1),
            disk_name=rng.choice(_DISKS),
            inet_up=round(inet_up, 1),
            inet_down=round(inet_down, 1),
            reliability=round(reliability, 4),
            geolocation=rng.choice(_LOCATIONS),
            verification=verification,
            hosting_type=hosting_type,
            static_ip=datacenter or bad or rng.random() < 0.6,
            public_ipaddr=_doc_ip(ip_slots[index]),
            # Some community hosts open no ports: those instances are reachable only via the proxy.
            direct_port_count=rng.choice((0, 20, 100, 500)) if not (datacenter or bad) else 1000,
            pci_gen=pci_gen,
            pcie_bw=round(_PCIE_BW[pci_gen] * rng.uniform(0.85, 1.02), 1),
            driver_version=driver,
            dph_per_gpu=dph,
            min_bid_per_gpu=max(0.001, round(dph * rng.uniform(0.35, 0.65), 3)),
            storage_cost=round(rng.uniform(0.05, 0.30), 3),
            inet_up_cost=round(rng.uniform(0.002, 0.02), 4),
            inet_down_cost=round(rng.uniform(0.001, 0.01), 4),
            start_date=anchor - round(rng.uniform(1.0, 300.0) * 86400),
            end_date=anchor + round(rng.uniform(7.0, 180.0) * 86400),
            vms_enabled=datacenter and rng.random() < 0.5,
            credit_discount_max=rng.choice((0.2, 0.3, 0.4)),
            defects=_defects(profile, gpu) if bad else {},
        )
        machines[machine.machine_id] = machine
        for k in _OFFER_SIZES:
            if k <= gpus_total:
                offer = Offer(id=next(next_offer), machine_id=machine.machine_id, num_gpus=k)
                offers[offer.id] = offer

    return Catalog(machines=machines, offers=offers, gpu_models=dict(_MODELS), seed=seed)


# ---------------------------------------------------------------------------------------------
# Offer rows


def _geolocode(country_code: str) -> int:
    # Vast's geolocode is an opaque int; a stable function of the country keeps it consistent.
    return sum(ord(c) << (8 * i) for i, c in enumerate(reversed(country_code.upper())))


def _time_remaining(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    days, rest = divmod(int(seconds), 86400)
    hours = rest // 3600
    return f"{days} days, {hours} hours" if days else f"{hours} hours"


def _breakdown(gpu_cost: float, disk_hour: float) -> dict[str, float]:
    total = gpu_cost + disk_hour
    return {
        "gpuCostPerHour": gpu_cost,
        "diskHour": disk_hour,
        "totalHour": total,
        "discountTotalHour": 0.0,
        "discountedTotalPerHour": total,
    }


def offer_row(
    offer: Offer,
    machine: Machine,
    *,
    now: float,
    allocated_storage: float = 5.0,
    bid: bool = False,
    rentable: bool = True,
    rented: bool = False,
    min_bid: float | None = None,
) -> dict[str, object]:
    """The offer as ``POST /bundles/`` returns it, with §3's units.

    Per-machine resources (CPU, RAM, disk) are shared in proportion to the GPUs offered.
    ``min_bid`` is per offer (not per GPU); with ``bid`` the GPU part of ``dph_total`` is
    that bid, as Vast prices ``type=bid`` searches.
    """
    if offer.machine_id != machine.machine_id:
        raise ValueError(f"offer {offer.id} is on machine {offer.machine_id}, not {machine.machine_id}")
    gpu = machine.gpu
    num = offer.num_gpus
    frac = num / machine.gpus_total

    dph_base = machine.dph_per_gpu * num
    current_min_bid = machine.min_bid_per_gpu * num if min_bid is None else float(min_bid)
    storage_total_cost = allocated_storage * machine.storage_cost / 720  # 30-day month
    gpu_part = current_min_bid if bid else dph_base
    dph_total = gpu_part + storage_total_cost

    dlperf = gpu.dlperf * num
    total_flops = gpu.total_flops * num
    # Vast's default ranking favours performance per dollar on hosts that stay up.
    score = dlperf / dph_total * machine.reliability
    duration = machine.end_date - now
    gpu_total_ram = gpu.vram_mb * num

    return {
        "id": offer.id,
        "ask_contract_id": offer.id,
        "bundle_id": offer.id,
        "bundled_results": None,
        "machine_id": machine.machine_id,
        "host_id": machine.host_id,
        "hostname": None,
        "gpu_name": gpu.vast_name,
        "num_gpus": num,
        "gpu_ram": gpu.vram_mb,
        "gpu_total_ram": gpu_total_ram,
        "gpu_frac": frac,
        "gpu_arch": "nvidia",
        "gpu_mem_bw": gpu.mem_bw,
        "gpu_lanes": 16,
        "bw_nvlink": gpu.nvlink_bw if num > 1 else 0.0,
        "gpu_max_power": float(gpu.power_limit_w),
        "gpu_max_temp": 83.0,
        "gpu_display_active": False,
        "compute_cap": gpu.compute_cap,
        "cuda_max_good": float(machine.cuda_max_good),
        "driver_version": machine.driver_version,
        "driver_vers": machine.driver_vers,
        "cpu_name": machine.cpu_name,
        "cpu_arch": "amd64",
        "cpu_ghz": machine.cpu_ghz,
        "cpu_cores": machine.cpu_cores,
        "cpu_cores_effective": machine.cpu_cores * frac,
        "cpu_ram": int(machine.cpu_ram_mb * frac),
        "has_avx": 1,
        "mobo_name": None,
        "os_version": "22.04",
        "ubuntu_version": "22.04",
        "disk_space": round(machine.disk_space_gb * frac, 1),
        "disk_bw": machine.disk_bw,
        "disk_name": machine.disk_name,
        "inet_up": machine.inet_up,
        "inet_down": machine.inet_down,
        "inet_up_cost": machine.inet_up_cost,
        "inet_down_cost": machine.inet_down_cost,
        "internet_up_cost_per_tb": machine.inet_up_cost * 1000,
        "internet_down_cost_per_tb": machine.inet_down_cost * 1000,
        "direct_port_count": machine.direct_port_count,
        "pci_gen": float(machine.pci_gen),
        "pcie_bw": machine.pcie_bw,
        "dph_base": dph_base,
        "storage_cost": machine.storage_cost,
        "storage_total_cost": storage_total_cost,
        "dph_total": dph_total,
        "min_bid": current_min_bid,
        "vram_costperhour": dph_base / (gpu_total_ram / 1024),
        "credit_discount_max": machine.credit_discount_max,
        "discount_rate": 0.0,
        "discounted_dph_total": dph_total,
        "discounted_hourly": 0.0,
        "dph_total_adj": dph_total,
        "search": _breakdown(gpu_part, storage_total_cost),
        "instance": _breakdown(dph_base, storage_total_cost),
        "reliability": machine.reliability,
        "reliability2": machine.reliability,
        "reliability_mult": 1.0,
        "expected_reliability": machine.reliability,
        "dlperf": dlperf,
        "dlperf_per_dphtotal": dlperf / dph_total,
        "total_flops": total_flops,
        "flops_per_dphtotal": total_flops / dph_total,
        "score": score,
        "verification": machine.verification,
        "geolocation": machine.geolocation,
        "geolocode": _geolocode(machine.country_code),
        "hosting_type": machine.hosting_type,
        "external": False,
        "static_ip": machine.static_ip,
        "public_ipaddr": machine.public_ipaddr,
        "rentable": rentable,
        "rented": rented,
        "is_bid": bid,
        "start_date": machine.start_date,
        "end_date": machine.end_date,
        "duration": duration,
        "time_remaining": _time_remaining(duration),
        "time_remaining_isbid": _time_remaining(duration) if bid else "",
        "vms_enabled": machine.vms_enabled,
        "is_vm_deverified": False,
        "resource_type": "gpu",
        "cluster_id": None,
        "avail_vol_ask_id": None,
        "avail_vol_dph": None,
        "avail_vol_size": None,
        "nw_disk_min_bw": None,
        "nw_disk_avg_bw": None,
        "nw_disk_max_bw": None,
    }
