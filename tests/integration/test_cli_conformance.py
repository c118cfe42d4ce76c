"""The official ``vastai`` CLI 1.9.1 against vastsim: what it sends, what it reads, what it prints.

Every CLI run points at the simulator with both ``VAST_URL`` and ``--url``, has a private
HOME and XDG dirs, and gets the key from ``VAST_API_KEY`` (see ``vastai_cli``). The CLI
exits 0 on HTTP errors, so these tests assert on output (``--raw`` JSON where it exists)
and cross-check against the simulator's REST answers (reference §1.1, §4.3, §6, §9).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import API_KEY, Sim, rent, running_sim, ssh_run, wait_status
from tests.integration.vastai_cli import VastCli

pytestmark = pytest.mark.slow

DEFAULTS = {"verified": {"eq": True}, "external": {"eq": False}, "rentable": {"eq": True}}


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def search_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One simulator for the read-only search tests (searches change nothing)."""
    with running_sim(tmp_path_factory.mktemp("search-sim") / "state") as simulator:
        yield simulator


@pytest.fixture(scope="module")
def search_cli(search_sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> VastCli:
    return VastCli(search_sim.url, tmp_path_factory.mktemp("search-home"), API_KEY)


@pytest.fixture
def cli(sim: Sim, tmp_path: Path) -> VastCli:
    return VastCli(sim.url, tmp_path / "home", API_KEY)


@pytest.fixture
def client(sim: Sim) -> Iterator[httpx.Client]:
    with sim.client() as c:
        yield c


def public_key(ssh_key: Path) -> str:
    return ssh_key.with_suffix(".pub").read_text().strip()


def good_offer(cli: VastCli, client: httpx.Client, *extra: str) -> dict[str, Any]:
    """The cheapest one-GPU offer, found with the CLI, on a machine without injected defects."""
    offers = cli.raw("search", "offers", "num_gpus=1", "-o", "dph+", "--limit", "200", *extra)
    bad = {m["machine_id"] for m in client.get("/_sim/machines").json()["machines"] if m["defects"]}
    return next(o for o in offers if o["machine_id"] not in bad)


def rest_row(client: httpx.Client, instance_id: int) -> dict[str, Any] | None:
    return client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]


def ssh_user(client: httpx.Client) -> str:
    # The CLI always prints root@; loopback mode (not root) serves sshd as the current user.
    return client.get("/_sim/info").json()["ssh_user"]


def register_key(cli: VastCli, client: httpx.Client, ssh_key: Path) -> None:
    pub = public_key(ssh_key)
    out = cli.run("create", "ssh-key", pub).stdout
    assert "ssh-key created" in out and pub.split()[1] in out, out
    listed = cli.raw("show", "ssh-keys")
    assert [k["key"] for k in listed] == [pub], listed
    assert [k["key"] for k in client.get("/api/v0/ssh/").json()] == [pub]


def create(cli: VastCli, offer_id: int, *args: str) -> int:
    answer = cli.raw("create", "instance", str(offer_id), "--image", "pytorch/pytorch", *args)
    assert answer.get("success") is True and isinstance(answer.get("new_contract"), int), answer
    return answer["new_contract"]


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def table_line(text: str, marker: str) -> str:
    return next((line for line in text.splitlines() if marker in line), "")


# ------------------------------------------------------------------ search offers

# (CLI arguments, subset of the body the CLI must send, per-row condition, order as (field, descending))
Search = tuple[list[str], dict[str, Any], Callable[[dict[str, Any]], bool], list[tuple[str, bool]]]
SEARCHES: dict[str, Search] = {
    "reliability-cuda-vram-by-price": (
        ["reliability > 0.95 cuda_vers >= 12.4 gpu_ram >= 16", "-o", "dph+"],
        {**DEFAULTS, "reliability": {"gt": "0.95"}, "cuda_max_good": {"gte": "12.4"},
         "gpu_ram": {"gte": 16000.0}, "order": [["dph_total", "asc"]], "type": "on-demand",
         "allocated_storage": 5.0},
        lambda o: o["reliability"] > 0.95 and o["cuda_max_good"] >= 12.4 and o["gpu_ram"] >= 16000,
        [("dph_total", False)],
    ),
    "gpu-count-range-by-score": (
        ["num_gpus>=2 num_gpus<=4", "-o", "score-"],
        {**DEFAULTS, "num_gpus": {"gte": "2", "lte": "4"}, "order": [["score", "desc"]]},
        lambda o: 2 <= o["num_gpus"] <= 4,
        [("score", True)],
    ),
    "gpu-name-underscore": (
        ["gpu_name=RTX_4090", "-o", "dph+"],
        {**DEFAULTS, "gpu_name": {"eq": "RTX 4090"}, "order": [["dph_total", "asc"]]},
        lambda o: o["gpu_name"] == "RTX 4090",
        [("dph_total", False)],
    ),
    "geolocation-in-any-verification": (
        ["geolocation in [US,CA] verified=any", "-o", "num_gpus-,dph+", "--limit", "1000"],
        {"external": {"eq": False}, "rentable": {"eq": True}, "geolocation": {"in": ["US", "CA"]},
         "order": [["num_gpus", "desc"], ["dph_total", "asc"]], "limit": 1000},
        lambda o: o["geolocation"].rsplit(",", 1)[-1].strip() in ("US", "CA"),
        [("num_gpus", True), ("dph_total", False)],
    ),
    "bid-storage-limit": (
        ["gpu_ram >= 16", "-t", "bid", "--storage", "50", "--limit", "5"],
        {**DEFAULTS, "gpu_ram": {"gte": 16000.0}, "order": [["score", "desc"]], "type": "bid",
         "limit": 5, "allocated_storage": 50.0},
        lambda o: (o["gpu_ram"] >= 16000 and o["is_bid"] is True
                   and o["storage_total_cost"] == pytest.approx(50 * o["storage_cost"] / 720)
                   and o["dph_total"] == pytest.approx(o["min_bid"] + o["storage_total_cost"])),
        [("score", True)],
    ),
}


@pytest.mark.parametrize("case", list(SEARCHES))
def test_search_offers_filters_and_order(case: str, search_cli: VastCli, search_sim: Sim) -> None:
    args, expected_body, condition, order = SEARCHES[case]
    body = search_cli.sent_body("search", "offers", *args)
    assert {k: body.get(k) for k in expected_body} == expected_body, body
    if "verified" not in expected_body:
        assert "verified" not in body, "verified=any must drop the default filter"

    rows = search_cli.raw("search", "offers", *args)
    assert isinstance(rows, list) and rows, f"no offers for {args}"
    limit = body.get("limit")
    if limit:
        assert len(rows) <= limit
    for row in rows:
        if "verified" in body:
            assert row["verification"] == "verified", row["id"]
        assert row["rentable"] is True and row["external"] is False, row["id"]
        assert condition(row), {k: row[k] for k in ("id", "gpu_name", "num_gpus", "gpu_ram", "reliability",
                                                    "cuda_max_good", "geolocation", "dph_total", "min_bid")}
    keys = [tuple(-row[f] if desc else row[f] for f, desc in order) for row in rows]
    assert keys == sorted(keys), f"not sorted by {order}: {keys}"
    if case == "bid-storage-limit":
        assert len(rows) == 5
    if case == "geolocation-in-any-verification":
        assert {row["verification"] for row in rows} != {"verified"}, "verified=any gave only verified hosts"

    # The CLI hands back exactly what POST /bundles/ answers for that body.
    with search_sim.client() as client:
        direct = client.post("/api/v0/bundles/", json=body)
    assert direct.status_code == 200 and direct.headers["content-type"] == "application/json"
    assert [o["id"] for o in direct.json()["offers"]] == [row["id"] for row in rows]


def test_cli_talks_only_to_the_simulator(search_cli: VastCli, search_sim: Sim) -> None:
    search_cli.raw("search", "offers", "num_gpus=1", "--limit", "1")
    # The startup gpu_names request goes to VAST_URL only (§1); its cache proves it reached the simulator.
    cache = json.loads((search_cli.home / ".cache" / "vastai" / "gpu_names_cache.json").read_text())
    names = httpx.get(f"{search_sim.url}/api/v0/gpu_names/unique/", timeout=10).json()["gpu_names"]
    assert sorted(cache["gpu_names"]) == sorted(names)
    assert (search_cli.home / ".config" / "vastai" / "vast_role").exists()


def test_search_offers_malformed_queries(search_cli: VastCli, search_sim: Sim) -> None:
    # Client-side: an unknown operator is refused before any request, with the CLI's error, no crash.
    for query in ("gpu_ram ~ 16", "gpu_ram >> 16", "gpu_name like RTX"):
        result = search_cli.run("search", "offers", query)
        assert "Unknown operator" in result.stdout, (query, result.stdout, result.stderr)
        raw = search_cli.run("search", "offers", query, "--raw")
        assert "Unknown operator" in raw.stdout and not raw.stdout.lstrip().startswith("["), raw.stdout
    # Server-side: an unknown field is sent (with a warning) and the simulator's 400 msg is shown.
    result = search_cli.run("search", "offers", "foo_bar=3")
    assert "Unrecognized field: foo_bar" in result.stderr
    assert "Failed with error 400" in result.stderr and "foo_bar" in result.stderr, result.stderr
    raw = search_cli.run("search", "offers", "foo_bar=3", "--raw")
    assert raw.stdout.strip() == ""
    error = json.loads(raw.stderr[raw.stderr.index("{"):])
    assert error["status_code"] == 400 and "foo_bar" in error["msg"]
    # What the CLI refuses, the server refuses too, in Vast's error shape.
    with search_sim.client() as client:
        response = client.post("/api/v0/bundles/", json={"gpu_ram": {"like": "16"}})
    assert response.status_code == 400
    assert response.json()["success"] is False and response.json()["error"] == "invalid_request"
    assert "like" in response.json()["msg"]


# ------------------------------------------------------------------ keys and instances


def test_create_ssh_key_then_show(cli: VastCli, client: httpx.Client, ssh_key: Path) -> None:
    register_key(cli, client, ssh_key)
    table = cli.run("show", "ssh-keys").stdout
    assert public_key(ssh_key).split()[1] in table


def test_on_demand_instance_lifecycle(cli: VastCli, client: httpx.Client, ssh_key: Path) -> None:
    register_key(cli, client, ssh_key)
    offer = good_offer(cli, client)
    instance_id = create(cli, offer["id"], "--disk", "20", "--ssh", "--direct", "--label", "X",
                         "--env", "-e FOO=bar -p 8080:8080", "--onstart-cmd", "echo hi")

    row = rest_row(client, instance_id)
    assert row is not None
    assert (row["bundle_id"], row["is_bid"], row["label"], row["image_uuid"], row["disk_space"]) == (
        offer["id"], False, "X", "pytorch/pytorch", 20)
    assert row["image_runtype"] == "ssh_direc ssh_proxy" and row["onstart"] == "echo hi"
    assert ["FOO", "bar"] in row["extra_env"] and ["-p 8080:8080", "1"] in row["extra_env"]
    row = wait_status(client, instance_id, "running")
    assert set(row["ports"]) == {"22/tcp", "8080/tcp"}, row["ports"]

    shown = cli.raw("show", "instance", str(instance_id))
    assert (shown["id"], shown["actual_status"], shown["label"]) == (instance_id, "running", "X")
    assert shown["extra_env"] == {"FOO": "bar", "-p 8080:8080": "1"}  # the CLI turns the pairs into a dict
    listed = cli.raw("show", "instances")
    assert [r["id"] for r in listed] == [instance_id] and listed[0]["label"] == "X"
    table = cli.run("show", "instances", "--no-color").stdout
    assert re.search(rf"\b{instance_id}\b.*\brunning\b.*\bX\b", table), table
    assert "running" in table_line(table, "--status:"), table
    assert row["gpu_name"] in table_line(table, "--gpu-name:"), table
    assert "verified" in table_line(table, "--verification:"), table

    # Direct runtype: ssh-url uses ports["22/tcp"] on public_ipaddr (§4.3).
    user, host, port = cli.ssh_url(instance_id)
    assert (user, host, port) == ("root", row["public_ipaddr"], int(row["ports"]["22/tcp"][0]["HostPort"]))
    done = ssh_run(host, port, ssh_key, 'cat /proc/sys/kernel/hostname; echo "$VAST_CONTAINERLABEL $FOO"',
                   user=ssh_user(client))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [f"C.{instance_id}", f"C.{instance_id} bar"], done.stdout

    out = cli.run("label", "instance", str(instance_id), "newlabel").stdout
    assert "newlabel" in out, out
    assert rest_row(client, instance_id)["label"] == "newlabel"
    assert re.search(rf"\b{instance_id}\b.*\bnewlabel\b", cli.run("show", "instances", "--no-color").stdout)

    out = cli.run("stop", "instance", str(instance_id)).stdout
    assert f"stopping instance {instance_id}" in out, out
    row = rest_row(client, instance_id)
    assert (row["intended_status"], row["cur_state"]) == ("stopped", "stopped")
    wait_status(client, instance_id, "exited")
    shown = cli.raw("show", "instance", str(instance_id))
    assert (shown["actual_status"], shown["cur_state"]) == ("exited", "stopped")
    assert "22/tcp" not in (shown["ports"] or {})

    out = cli.run("start", "instance", str(instance_id)).stdout
    assert f"starting instance {instance_id}" in out, out
    row = wait_status(client, instance_id, "running")
    assert (row["intended_status"], row["cur_state"]) == ("running", "running")
    shown = cli.raw("show", "instance", str(instance_id))
    assert (shown["actual_status"], shown["cur_state"]) == ("running", "running")
    assert "22/tcp" in shown["ports"] and "8080/tcp" in shown["ports"]
    again = ssh_run(host, port, ssh_key, "echo back", user=ssh_user(client))
    assert (again.returncode, again.stdout.strip()) == (0, "back"), again.stderr

    # logs: PUT request_logs, then an unauthenticated poll of the result URL the simulator serves.
    logs = cli.run("logs", str(instance_id), timeout=60).stdout
    assert str(instance_id) in logs and "hi" in logs.splitlines(), logs  # "hi": the onstart command's output
    assert lines(cli.run("logs", str(instance_id), "--tail", "1").stdout) == ["hi"]
    filtered = lines(cli.run("logs", str(instance_id), "--filter", "vastsim").stdout)
    assert len(filtered) == 1 and str(instance_id) in filtered[0], filtered

    out = cli.run("destroy", "instance", str(instance_id), "-y").stdout
    assert f"destroying instance {instance_id}" in out, out
    assert rest_row(client, instance_id) is None
    assert cli.raw("show", "instance", str(instance_id)) == {"instances": None}
    gone = cli.run("show", "instance", str(instance_id))
    assert "not found" in gone.stdout + gone.stderr
    assert cli.raw("show", "instances") == []
    ledger = client.get("/_sim/ledger").json()
    assert ledger["totals"]["open_instances"] == 0 and ledger["totals"]["instances"] == 1
    assert [r["status"] for r in ledger["rows"]] == ["destroyed"]


def test_proxy_ssh_url_and_login(cli: VastCli, client: httpx.Client, ssh_key: Path) -> None:
    register_key(cli, client, ssh_key)
    instance_id = create(cli, good_offer(cli, client)["id"], "--disk", "10", "--ssh", "--label", "proxied")
    row = wait_status(client, instance_id, "running")
    assert row["image_runtype"] == "ssh_proxy" and "22/tcp" not in (row["ports"] or {})

    # Proxy runtype: ssh-url is ssh_host:ssh_port (§4.3).
    user, host, port = cli.ssh_url(instance_id)
    assert (user, host, port) == ("root", row["ssh_host"], row["ssh_port"])
    done = ssh_run(host, port, ssh_key, 'echo "$VAST_CONTAINERLABEL"; cat /proc/sys/kernel/hostname',
                   user=ssh_user(client))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"C.{instance_id}", f"C.{instance_id}"]

    assert "no instance found" in cli.run("ssh-url", str(instance_id + 1000)).stdout
    cli.run("destroy", "instance", str(instance_id), "-y")
    assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0


def test_interruptible_instance(cli: VastCli, client: httpx.Client) -> None:
    offer = good_offer(cli, client, "-t", "bid")
    price = round(offer["min_bid"] * 1.5 + 0.01, 3)
    instance_id = create(cli, offer["id"], "--disk", "10", "--bid_price", str(price))

    row = rest_row(client, instance_id)
    assert row is not None and row["is_bid"] is True
    assert row["image_runtype"] == "ssh"  # no --ssh: the CLI sends plain "ssh" (§5)
    assert row["dph_base"] == pytest.approx(price)
    wait_status(client, instance_id, "running")
    shown = cli.raw("show", "instance", str(instance_id))
    assert shown["is_bid"] is True and shown["dph_base"] == pytest.approx(price)

    # Found with -t bid but created without --bid_price: on demand at full price (§9.8).
    other = good_offer(cli, client, "-t", "bid")
    on_demand = create(cli, other["id"], "--disk", "10")
    row = rest_row(client, on_demand)
    assert row["is_bid"] is False and row["dph_base"] == pytest.approx(other["dph_base"])

    cli.run("destroy", "instance", str(instance_id), "-y")
    cli.run("destroy", "instance", str(on_demand), "-y")
    assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0


# ------------------------------------------------------------------ copy


def test_copy_with_a_local_side_runs_rsync_over_ssh(cli: VastCli, client: httpx.Client, ssh_key: Path,
                                                    tmp_path: Path) -> None:
    """`vastai copy` to and from `local:` reads `src_addr/src_port` or `dst_addr/dst_port` (§1.1) and rsyncs."""
    register_key(cli, client, ssh_key)
    direct = create(cli, good_offer(cli, client)["id"], "--disk", "10", "--ssh", "--direct")
    row = wait_status(client, direct, "running")
    host, port = row["public_ipaddr"], int(row["ports"]["22/tcp"][0]["HostPort"])
    user = ssh_user(client)
    made = ssh_run(host, port, ssh_key, "mkdir -p /workspace/out && echo from-instance > /workspace/out/a.txt",
                   user=user)
    assert made.returncode == 0, made.stderr

    # The REST answer: the instance's direct SSH endpoint, in the fields the CLI reads.
    answer = client.put("/api/v0/commands/copy_direct/", json={
        "client_id": "me", "src_id": f"C.{direct}", "dst_id": "local", "src_path": "/workspace/out/",
        "dst_path": "/tmp/x"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True
    assert (answer.json()["src_addr"], answer.json()["src_port"]) == (host, port)
    answer = client.put("/api/v0/commands/rsync/", json={
        "client_id": "me", "src_id": None, "dst_id": str(direct), "src_path": "/tmp/x", "dst_path": "/workspace/"})
    assert (answer.json()["dst_addr"], answer.json()["dst_port"]) == (host, port), answer.text

    if client.get("/_sim/info").json()["host_mode"] != "namespace":
        pytest.skip("loopback mode: the CLI's rsync logs in as vastai_kaalia, which needs namespace mode")
    # Download: C.ID:path -> local:path.
    download = tmp_path / "dl"
    result = cli.run("copy", "-i", str(ssh_key), f"C.{direct}:/workspace/out/", f"local:{download}")
    assert (download / "a.txt").read_text() == "from-instance\n", result.stdout + result.stderr
    # Upload with the legacy form: a bare local path and ID:path.
    upload = tmp_path / "up.txt"
    upload.write_text("from-laptop\n")
    result = cli.run("copy", "-i", str(ssh_key), str(upload), f"{direct}:/workspace/in/")
    seen = ssh_run(host, port, ssh_key, "cat /workspace/in/up.txt", user=user)
    assert seen.stdout == "from-laptop\n", result.stdout + result.stderr + seen.stderr

    # A proxy-only instance: the copy goes through the SSH proxy, ssh_host:ssh_port.
    proxied = create(cli, good_offer(cli, client)["id"], "--disk", "10", "--ssh")
    row = wait_status(client, proxied, "running")
    answer = client.put("/api/v0/commands/rsync/", json={
        "client_id": "me", "src_id": None, "dst_id": f"C.{proxied}", "src_path": "/tmp/x", "dst_path": "/w/"})
    assert (answer.json()["dst_addr"], answer.json()["dst_port"]) == (row["ssh_host"], row["ssh_port"])
    result = cli.run("copy", "-i", str(ssh_key), f"local:{upload}", f"C.{proxied}:/workspace/")
    seen = ssh_run(row["ssh_host"], row["ssh_port"], ssh_key, "cat /workspace/up.txt", user=user)
    assert seen.stdout == "from-laptop\n", result.stdout + result.stderr + seen.stderr

    for instance_id in (direct, proxied):
        cli.run("destroy", "instance", str(instance_id), "-y")


def test_copy_refuses_instances_that_are_not_the_callers(tmp_path: Path) -> None:
    other_key = "vastsim-other-account-key-0123456789"
    with running_sim(tmp_path / "state", "--api-key", other_key) as simulator, \
            simulator.client() as owner, simulator.client(other_key) as other:
        theirs = rent(owner, runtype="ssh_proxy")
        missing = theirs + 1000
        for instance_id, client in ((missing, owner), (theirs, other)):
            for path, body in (
                ("rsync", {"src_id": None, "dst_id": str(instance_id), "src_path": "/tmp/x", "dst_path": "/w/"}),
                ("copy_direct", {"src_id": f"C.{instance_id}", "dst_id": "local", "src_path": "/w/",
                                 "dst_path": "/tmp/x"}),
                ("copy_direct", {"src_id": f"C.{theirs}", "dst_id": f"C.{instance_id}", "src_path": "/",
                                 "dst_path": "/"}),
            ):
                answer = client.put(f"/api/v0/commands/{path}/", json={"client_id": "me", **body})
                assert answer.status_code == 404, (path, body, answer.text)
                assert answer.json() == {"success": False, "error": "no_such_instance",
                                         "msg": f"Instance {instance_id} not found."}
        # The CLI reports the error instead of crashing on a missing dst_port / src_port.
        cli = VastCli(simulator.url, tmp_path / "home", other_key)
        for args in (("/etc/hostname", f"{theirs}:/workspace/"),
                     (f"C.{theirs}:/workspace/", f"local:{tmp_path / 'never'}")):
            result = cli.run("copy", *args)
            assert "Failed with error 404" in result.stdout + result.stderr, result.stdout + result.stderr
        assert not (tmp_path / "never").exists()


def test_bid_below_the_floor_is_created_stopped_and_never_runs(cli: VastCli, client: httpx.Client) -> None:
    offer = good_offer(cli, client, "-t", "bid")
    floor = offer["min_bid"]
    low = round(max(0.001, floor / 4), 4)
    answer = cli.raw("create", "instance", str(offer["id"]), "--image", "pytorch/pytorch", "--disk", "10",
                     "--bid_price", str(low))
    # Created but stopped: success false with a valid new_contract (§5, §9.6).
    assert answer["success"] is False and isinstance(answer["new_contract"], int), answer
    instance_id = answer["new_contract"]
    row = rest_row(client, instance_id)
    assert (row["is_bid"], row["intended_status"], row["cur_state"], row["actual_status"]) == (
        True, "running", "stopped", "exited"), row
    assert row["min_bid"] == pytest.approx(floor) and "outbid" in row["status_msg"].lower()

    # Starting it does not run it below the floor: queued until the bid wins.
    out = cli.run("start", "instance", str(instance_id)).stdout
    assert "Required resources are currently unavailable" in out, out
    time.sleep(0.5)
    row = rest_row(client, instance_id)
    assert (row["cur_state"], row["actual_status"]) == ("stopped", "exited"), row
    assert client.get("/_sim/ledger").json()["rows"][0]["gpu_cost"] == 0

    # Without --price the CLI sends price null and the server uses a winning bid (the CLI's help).
    assert cli.sent_body("change", "bid", str(instance_id)) == {"client_id": "me", "price": None}
    assert "Per gpu bid price changed" in cli.run("change", "bid", str(instance_id)).stdout
    row = wait_status(client, instance_id, "running")
    assert row["dph_base"] == pytest.approx(floor) and row["cur_state"] == "running"
    cli.run("destroy", "instance", str(instance_id), "-y")


def test_lowering_a_bid_below_the_competitor_or_floor_gets_it_outbid(cli: VastCli, client: httpx.Client) -> None:
    offer = good_offer(cli, client, "-t", "bid")
    floor = offer["min_bid"]
    high = round(floor * 4 + 0.2, 4)
    instance_id = create(cli, offer["id"], "--disk", "10", "--bid_price", str(high))
    wait_status(client, instance_id, "running")
    competitor = round(floor * 2 + 0.1, 4)
    fault = client.post("/_sim/faults", json={"kind": "outbid", "machine_id": offer["machine_id"],
                                              "price": competitor}).json()["faults"][0]
    time.sleep(0.3)
    assert rest_row(client, instance_id)["actual_status"] == "running"  # still the highest bid

    def change_bid(*price: str) -> None:
        assert "Per gpu bid price changed" in cli.run("change", "bid", str(instance_id), *price).stdout

    # Above the floor but below the competing bid: outbid.
    change_bid("--price", str(round((floor + competitor) / 2, 4)))
    row = wait_status(client, instance_id, "exited")
    assert (row["intended_status"], row["cur_state"]) == ("running", "stopped")
    assert "outbid" in row["status_msg"].lower()
    change_bid("--price", str(high))
    wait_status(client, instance_id, "running")

    # No competitor, but below the machine's floor: outbid too.
    client.delete(f"/_sim/faults/{fault['id']}")
    change_bid("--price", str(round(max(0.001, floor / 2), 4)))
    row = wait_status(client, instance_id, "exited")
    assert row["cur_state"] == "stopped" and row["dph_base"] < row["min_bid"]
    # No --price: the winning bid, which is the floor now.
    change_bid()
    row = wait_status(client, instance_id, "running")
    assert row["dph_base"] == pytest.approx(floor) == row["min_bid"]
    cli.run("destroy", "instance", str(instance_id), "-y")


def test_create_below_the_minimum_disk_is_refused(cli: VastCli, client: httpx.Client) -> None:
    offer = good_offer(cli, client)
    result = cli.run("create", "instance", str(offer["id"]), "--image", "pytorch/pytorch", "--disk", "1")
    assert "Failed with error 400" in result.stderr and "8 GB" in result.stderr, (result.stdout, result.stderr)
    raw = cli.run("create", "instance", str(offer["id"]), "--image", "pytorch/pytorch", "--disk", "1", "--raw")
    error = json.loads(raw.stderr[raw.stderr.index("{"):])
    assert error["status_code"] == 400 and "8 GB" in error["msg"], error
    assert client.get("/_sim/ledger").json()["totals"]["instances"] == 0
    instance_id = create(cli, offer["id"], "--disk", "8")  # the minimum itself is fine
    assert rest_row(client, instance_id)["disk_space"] == 8
    cli.run("destroy", "instance", str(instance_id), "-y")


def test_execute_refuses_what_vast_refuses(cli: VastCli, client: httpx.Client) -> None:
    instance_id = create(cli, good_offer(cli, client)["id"], "--disk", "10")
    wait_status(client, instance_id, "running")
    out = cli.run("execute", str(instance_id), "ls -l")
    assert "Failed with error 400" in out.stderr and "only avail on stopped instances" in out.stderr, out.stderr
    cli.run("stop", "instance", str(instance_id))
    wait_status(client, instance_id, "exited")
    for command in ("cat /etc/passwd", "ls; reboot", "ls -l " + "x" * 600, "rm -r /usr/lib", "rm -r home/x",
                    "ls /etc", "du -sh /", "du --files0-from=workspace/list", "du -X workspace/x workspace"):
        out = cli.run("execute", str(instance_id), command)
        assert "Failed with error 400" in out.stderr, (command, out.stdout, out.stderr)
    cli.run("destroy", "instance", str(instance_id), "-y")
