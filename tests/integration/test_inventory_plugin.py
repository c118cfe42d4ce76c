"""The inventory plugin mlops.vast.vast against vastsim over HTTP: in-process, through the CLIs, over SSH."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, Sim, rent, wait_status
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env

PLUGIN = "mlops.vast.vast"
# ---------------------------------------------------------------------------------------------- helpers


def load_plugin() -> Any:
    """The plugin as Ansible loads it (tests/conftest.py installed the collection finder first)."""
    from ansible.plugins.loader import inventory_loader

    plugin = inventory_loader.get(PLUGIN)
    assert plugin is not None, "inventory_loader could not find mlops.vast.vast"
    return plugin


def write_cfg(path: Path, **options: Any) -> Path:
    # JSON is YAML: no quoting surprises for templates.
    path.write_text(json.dumps({"plugin": PLUGIN, **options}, indent=2))
    return path


def parse(cfg: Path, *, cache: bool = True) -> tuple[Any, Any]:
    """Parse ``cfg`` like InventoryManager does; return (InventoryData, plugin)."""
    from ansible.inventory.data import InventoryData
    from ansible.parsing.dataloader import DataLoader

    plugin = load_plugin()
    inventory = InventoryData()
    plugin.parse(inventory, DataLoader(), str(cfg), cache=cache)
    if plugin.get_option("cache"):  # the manager calls this and ignores the AttributeError without a cache
        plugin.update_cache_if_changed()
    return inventory, plugin


def hosts_of(inventory: Any, group: str = "vast") -> set[str]:
    found = inventory.groups.get(group)
    return {h.name for h in found.get_hosts()} if found else set()


def hostvars(inventory: Any, name: str) -> dict[str, Any]:
    return dict(inventory.get_host(name).get_vars())


def safe(name: str) -> str:
    from ansible.inventory.group import to_safe_group_name

    return to_safe_group_name(name, force=True, silent=True)


def destroy_all(client: httpx.Client) -> None:
    rows = client.get("/api/v1/instances/", params={"limit": 25}).json()
    ids = [row["id"] for row in rows["instances"]]
    while rows.get("next_token"):
        rows = client.get("/api/v1/instances/", params={"limit": 25, "after_token": rows["next_token"]}).json()
        ids += [row["id"] for row in rows["instances"]]
    for instance_id in ids:
        response = client.request("DELETE", f"/api/v0/instances/{instance_id}/", json={})
        assert response.status_code in (200, 404), response.text
    assert client.get("/_sim/ledger").json()["totals"]["open_instances"] == 0


def row(client: httpx.Client, instance_id: int) -> dict[str, Any]:
    return client.get(f"/api/v0/instances/{instance_id}/").json()["instances"]


def stop(client: httpx.Client, instance_id: int) -> dict[str, Any]:
    response = client.put(f"/api/v0/instances/{instance_id}/", json={"state": "stopped"})
    assert response.json()["success"] is True, response.text
    return wait_status(client, instance_id, "exited")


def register_key(client: httpx.Client, key: Path) -> None:
    response = client.post("/api/v0/ssh/", json={"ssh_key": key.with_suffix(".pub").read_text()})
    assert response.status_code == 200, response.text


def unwrap(text: str) -> Any:
    """ansible-inventory --list output, with 2.19's {"__ansible_unsafe": x} wrappers removed."""
    return json.loads(text, object_hook=lambda d: d["__ansible_unsafe"] if set(d) == {"__ansible_unsafe"} else d)


@pytest.fixture
def requests_sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    """Every HTTP request any httpx.Client sends in this process: (method, path, query params)."""
    sent: list[tuple[str, str, dict[str, Any]]] = []
    original = httpx.Client.request

    def counting(self: httpx.Client, method: str, url: Any, *args: Any, **kwargs: Any) -> httpx.Response:
        sent.append((method, str(url), dict(kwargs.get("params") or {})))
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(httpx.Client, "request", counting)
    return sent


@pytest.fixture
def warnings_seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from ansible.utils.display import Display

    seen: list[str] = []
    display = Display()
    original = display.warning

    def record(msg: str, *args: Any, **kwargs: Any) -> None:
        seen.append(str(msg))
        original(msg, *args, **kwargs)

    monkeypatch.setattr(display, "warning", record)
    return seen


@pytest.fixture
def sim_env(sim: Sim, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Sim:
    """In-process parses see the simulator the way a user's shell would: VAST_URL and VAST_API_KEY."""
    monkeypatch.setenv("VAST_URL", sim.url)
    monkeypatch.setenv("VAST_API_KEY", sim.api_key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no stray key file
    for name in ("VAST_API_TIMEOUT", "VAST_API_RETRY_TIMEOUT", "VAST_PREFER_DIRECT", "VAST_SSH_USER"):
        monkeypatch.delenv(name, raising=False)
    return sim


@pytest.fixture
def client(sim: Sim) -> Iterator[httpx.Client]:
    with sim.client() as api:
        try:
            yield api
        finally:
            destroy_all(api)


# ------------------------------------------------------------------------------------------- the fleet


class Fleet:
    """Instances of several kinds, all running but one."""

    def __init__(self, client: httpx.Client) -> None:
        def rent_(label: str, runtype: str) -> int:
            return rent(client, label=label, runtype=runtype)

        self.direct = rent_("train-a", "ssh_direc ssh_proxy")
        self.proxy = rent_("train-b", "ssh_proxy")
        self.jupyter = rent_("eval-jup", "jupyter_direc ssh_direc ssh_proxy")
        self.stopped = rent_("train-stopped", "ssh_direc ssh_proxy")
        self.dup_first = rent_("dup", "ssh_direc ssh_proxy")
        self.dup_second = rent_("dup", "ssh_direc ssh_proxy")
        self.unlabeled = rent(client, runtype="ssh")
        self.running = [self.direct, self.proxy, self.jupyter, self.dup_first, self.dup_second, self.unlabeled]
        self.rows = {i: wait_status(client, i, "running") for i in [*self.running, self.stopped]}
        self.rows[self.stopped] = stop(client, self.stopped)
        # Rows change while running (uptime); endpoints and labels do not.
        self.names = {self.direct: "train-a", self.proxy: "train-b", self.jupyter: "eval-jup",
                      self.dup_first: "dup", self.dup_second: f"dup-{self.dup_second}",
                      self.unlabeled: str(self.unlabeled), self.stopped: "train-stopped"}

    def name_of(self, *ids: int) -> set[str]:
        return {self.names[i] for i in ids}


@pytest.fixture
def fleet(sim_env: Sim, client: httpx.Client) -> Fleet:
    return Fleet(client)


# ------------------------------------------------------------------------------------- in-process tests


def test_verify_file_takes_only_vast_yml(tmp_path: Path) -> None:
    plugin = load_plugin()
    for name, wanted in [("vast.yml", True), ("prod.vast.yaml", True), ("my_vast.yml", True),
                         ("hosts.yml", False), ("vast.yml.bak", False), ("vast.json", False)]:
        path = tmp_path / name
        path.write_text("plugin: mlops.vast.vast\n")
        assert plugin.verify_file(str(path)) is wanted, name
    assert plugin.verify_file(str(tmp_path / "missing.vast.yml")) is False


def test_hosts_groups_hostvars_and_endpoints(fleet: Fleet, tmp_path: Path, sim_env: Sim, client: httpx.Client,
                                             warnings_seen: list[str],
                                             requests_sent: list[tuple[str, str, dict[str, Any]]]) -> None:
    cfg = write_cfg(tmp_path / "vast.yml", keyed_groups=[
        {"key": "vast_gpu_name", "prefix": "gpu"},
        {"key": "vast_label", "prefix": "label"},
        {"key": "vast_actual_status", "prefix": "status"},
    ], groups={"jupyter": "'jupyter' in vast_image_runtype"},
        compose={"price": "vast_dph_total", "ansible_python_interpreter": "'/usr/bin/python3'"})
    inventory, _ = parse(cfg)

    # Default statuses [running]: everything but the stopped instance, filtered by the server.
    assert hosts_of(inventory) == fleet.name_of(*fleet.running)
    listing = [params for method, url, params in requests_sent if url.startswith("/api/v1/instances")]
    assert listing and all(json.loads(p["select_filters"]) == {"actual_status": {"in": ["running"]}}
                           for p in listing)
    assert hosts_of(inventory, "status_running") == fleet.name_of(*fleet.running)
    assert hosts_of(inventory, "label_train_a") == {"train-a"}
    assert hosts_of(inventory, "label_dup") == {"dup", f"dup-{fleet.dup_second}"}
    assert hosts_of(inventory, "jupyter") == {"eval-jup"}
    gpu_groups = {g for g in inventory.groups if g.startswith("gpu_")}
    assert gpu_groups == {safe(f"gpu_{fleet.rows[i]['gpu_name']}") for i in fleet.running}
    for instance_id in fleet.running:
        assert fleet.names[instance_id] in hosts_of(inventory, safe(f"gpu_{fleet.rows[instance_id]['gpu_name']}"))

    # Duplicate labels: the older instance keeps the name, the later one is <label>-<id>, with a warning.
    assert hostvars(inventory, "dup")["vast_id"] == fleet.dup_first
    assert hostvars(inventory, f"dup-{fleet.dup_second}")["vast_id"] == fleet.dup_second
    assert any(f"dup-{fleet.dup_second}" in w for w in warnings_seen), warnings_seen

    # Hostvars: every field with the prefix, plus the connection variables per vast-api.md §4.3.
    direct = hostvars(inventory, "train-a")
    fresh = row(client, fleet.direct)
    assert set(fresh) <= {k.removeprefix("vast_") for k in direct if k.startswith("vast_")}
    assert direct["vast_label"] == "train-a" and direct["vast_id"] == fleet.direct
    assert direct["vast_ports"] == fresh["ports"]
    assert (direct["ansible_host"], direct["ansible_port"]) == (
        fresh["public_ipaddr"].strip(), int(fresh["ports"]["22/tcp"][0]["HostPort"]))
    assert direct["ansible_user"] == "root"
    assert direct["price"] == direct["vast_dph_total"]
    assert direct["ansible_python_interpreter"] == "/usr/bin/python3"
    proxy = hostvars(inventory, "train-b")
    assert "22/tcp" not in (proxy["vast_ports"] or {})
    assert (proxy["ansible_host"], proxy["ansible_port"]) == (fleet.rows[fleet.proxy]["ssh_host"],
                                                              fleet.rows[fleet.proxy]["ssh_port"])
    jupyter = hostvars(inventory, "eval-jup")
    fresh = row(client, fleet.jupyter)
    assert jupyter["ansible_port"] == int(fresh["ports"]["22/tcp"][0]["HostPort"])  # direct wins when present
    assert hostvars(inventory, str(fleet.unlabeled))["vast_label"] is None

    # JSON-serialisable, and the API key appears nowhere.
    dumped = json.dumps({h.name: h.get_vars() for h in inventory.hosts.values()})
    assert sim_env.api_key not in dumped
    assert all(isinstance(v, (str, int, float, bool, list, dict, type(None)))
               for h in inventory.hosts.values() for v in h.get_vars().values())


def test_proxy_endpoint_options_and_prefix(fleet: Fleet, tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path / "vast.yml", prefer_direct=False, hostvars_prefix="v_", ansible_user="ubuntu",
                    statuses=[])
    inventory, _ = parse(cfg)
    assert hosts_of(inventory) == set(fleet.names.values())
    for instance_id, name in fleet.names.items():
        variables = hostvars(inventory, name)
        assert "vast_id" not in variables and variables["v_id"] == instance_id
        assert variables["ansible_user"] == "ubuntu"
        expected_port = fleet.rows[instance_id]["ssh_port"] + (1 if instance_id == fleet.jupyter else 0)
        assert (variables["ansible_host"], variables["ansible_port"]) == (
            fleet.rows[instance_id]["ssh_host"], expected_port), name
    # A stopped instance has no port mapping: proxy endpoint even with prefer_direct.
    inventory, _ = parse(write_cfg(tmp_path / "exited.vast.yml", statuses=["exited"]))
    assert hosts_of(inventory) == {"train-stopped"}
    stopped = hostvars(inventory, "train-stopped")
    assert stopped["vast_actual_status"] == "exited" and not stopped["vast_ports"]
    assert (stopped["ansible_host"], stopped["ansible_port"]) == (fleet.rows[fleet.stopped]["ssh_host"],
                                                                  fleet.rows[fleet.stopped]["ssh_port"])


@pytest.mark.parametrize(("options", "expected"), [
    ({"label_prefix": "train-"}, ["direct", "proxy"]),
    ({"label_prefix": "train-", "statuses": []}, ["direct", "proxy", "stopped"]),
    ({"label_regex": "^(eval|dup)"}, ["jupyter", "dup_first", "dup_second"]),
    ({"label_regex": "-(a|b)$", "statuses": ["running", "exited"]}, ["direct", "proxy"]),
    ({"label_regex": "^$"}, ["unlabeled"]),
    ({"statuses": ["loading"]}, []),
])
def test_filters(fleet: Fleet, tmp_path: Path, options: dict[str, Any], expected: list[str]) -> None:
    inventory, _ = parse(write_cfg(tmp_path / "vast.yml", **options))
    assert hosts_of(inventory) == fleet.name_of(*(getattr(fleet, attr) for attr in expected))


def test_hostnames_preference_list(fleet: Fleet, tmp_path: Path) -> None:
    by_id, _ = parse(write_cfg(tmp_path / "id.vast.yml", hostnames=["id"]))
    assert hosts_of(by_id) == {str(i) for i in fleet.running}

    expr = "vast_gpu_name | replace(' ', '_') ~ '-' ~ vast_id"
    by_expr, _ = parse(write_cfg(tmp_path / "expr.vast.yml", hostnames=[expr]))
    assert hosts_of(by_expr) == {f"{fleet.rows[i]['gpu_name'].replace(' ', '_')}-{i}" for i in fleet.running}

    # A template that renders empty (no label) gives way to the next entry, here a plain field name.
    templ, _ = parse(write_cfg(tmp_path / "t.vast.yml",
                               hostnames=["{{ (vast_label ~ '.vast') if vast_label else '' }}", "machine_id"]))
    assert hosts_of(templ) >= {"train-a.vast", "train-b.vast", "eval-jup.vast"}
    assert hostvars(templ, "train-a.vast")["vast_id"] == fleet.direct
    assert hostvars(templ, str(fleet.rows[fleet.unlabeled]["machine_id"]))["vast_id"] == fleet.unlabeled
    # Field names work directly; a duplicate name (same machine) falls back to <name>-<id>.
    by_machine, _ = parse(write_cfg(tmp_path / "m.vast.yml", hostnames=["machine_id"]))
    assert len(hosts_of(by_machine)) == len(fleet.running)


def test_paging_over_more_than_25_instances(sim_env: Sim, client: httpx.Client, tmp_path: Path,
                                            requests_sent: list[tuple[str, str, dict[str, Any]]]) -> None:
    query = {"rentable": {"eq": True}, "order": [["dph_total", "asc"]], "limit": 200}
    offers = client.post("/api/v0/bundles/", json=query).json()["offers"]
    bad = {m["machine_id"] for m in client.get("/_sim/machines").json()["machines"] if m["defects"]}
    offers = sorted(offers, key=lambda o: (o["num_gpus"] != 1, o["machine_id"] in bad, o["dph_total"]))
    rented: list[int] = []
    for offer in offers:
        if len(rented) == 30:
            break
        response = client.put(f"/api/v0/asks/{offer['id']}/", json={
            "client_id": "me", "image": "pytorch/pytorch", "disk": 10, "runtype": "ssh", "cancel_unavail": True,
            "label": f"page-{len(rented):02d}"})
        if response.status_code == 200:
            rented.append(int(response.json()["new_contract"]))
    assert len(rented) == 30

    inventory, _ = parse(write_cfg(tmp_path / "vast.yml", statuses=[], label_prefix="page-"))
    assert hosts_of(inventory) == {f"page-{n:02d}" for n in range(30)}
    assert {hostvars(inventory, f"page-{n:02d}")["vast_id"] for n in range(30)} == set(rented)
    pages = [params for method, url, params in requests_sent if url.startswith("/api/v1/instances")]
    assert len(pages) == 2
    assert "after_token" not in pages[0] and pages[1]["after_token"]


def test_cache_serves_a_second_parse_without_requests(fleet: Fleet, sim_env: Sim, client: httpx.Client,
                                                      tmp_path: Path,
                                                      requests_sent: list[tuple[str, str, dict[str, Any]]]) -> None:
    cache_dir = tmp_path / "cache"
    options = {"cache": True, "cache_plugin": "ansible.builtin.jsonfile", "cache_connection": str(cache_dir),
               "cache_timeout": 600}
    cfg = write_cfg(tmp_path / "vast.yml", **options)
    first, _ = parse(cfg)
    assert hosts_of(first) == fleet.name_of(*fleet.running)
    assert requests_sent
    files = list(cache_dir.iterdir())
    assert len(files) == 1
    assert sim_env.api_key not in files[0].read_text()
    written = files[0].stat().st_mtime_ns

    client.request("DELETE", f"/api/v0/instances/{fleet.proxy}/", json={})
    requests_sent.clear()
    second, _ = parse(cfg)
    assert requests_sent == []
    assert hosts_of(second) == hosts_of(first)  # served from the cache: train-b is still there
    assert files[0].stat().st_mtime_ns == written  # an entry just read is not written back

    # --flush-cache / refresh_inventory (cache=False): the API again, and the cache refreshed.
    third, _ = parse(cfg, cache=False)
    assert requests_sent and "train-b" not in hosts_of(third)
    requests_sent.clear()
    fourth, _ = parse(cfg)
    assert requests_sent == [] and hosts_of(fourth) == hosts_of(third)

    # Other statuses under the same file: the cached answer does not apply.
    write_cfg(cfg, statuses=[], **options)
    fifth, _ = parse(cfg)
    assert requests_sent and "train-stopped" in hosts_of(fifth)

    # Another key (account) never gets this account's cached hosts: it asks Vast, which refuses it.
    from ansible.errors import AnsibleParserError

    with pytest.raises(AnsibleParserError, match="rejected the API key"):
        parse(write_cfg(cfg, statuses=[], api_key="another-account-key-0123456789", **options))
    assert sim_env.api_key not in "".join(path.read_text() for path in cache_dir.iterdir())


def test_key_sources_and_clear_errors(sim_env: Sim, client: httpx.Client, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.errors import AnsibleParserError

    instance_id = rent(client, label="solo")
    wait_status(client, instance_id, "running")
    cfg = write_cfg(tmp_path / "vast.yml")

    # The official CLI's key file.
    monkeypatch.delenv("VAST_API_KEY")
    key_file = tmp_path / "xdg" / "vastai" / "vast_api_key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(sim_env.api_key + "\n")
    inventory, _ = parse(cfg)
    assert hosts_of(inventory) == {"solo"}

    # No key anywhere.
    key_file.unlink()
    with pytest.raises(AnsibleParserError, match="No Vast API key"):
        parse(cfg)

    # A wrong key: one clear message, and the key is not in it.
    wrong = "wrong-key-aaaabbbbccccdddd"
    with pytest.raises(AnsibleParserError) as caught:
        parse(write_cfg(tmp_path / "vast.yml", api_key=wrong))
    assert "rejected the API key" in str(caught.value) and "401" in str(caught.value)
    assert wrong not in str(caught.value) and caught.value.__cause__ is None

    # Unreachable API: fails within api_retry_timeout, not the client's default deadline.
    started = time.monotonic()
    with pytest.raises(AnsibleParserError, match="cannot connect"):
        parse(write_cfg(tmp_path / "vast.yml", api_key=sim_env.api_key, api_url="http://127.0.0.1:9",
                        api_retry_timeout=2))
    assert time.monotonic() - started < 10

    # A bad regex is a parser error, not a traceback.
    with pytest.raises(AnsibleParserError, match="label_regex"):
        parse(write_cfg(tmp_path / "vast.yml", api_key=sim_env.api_key, label_regex="("))


# ------------------------------------------------------------------------------------------ subprocess


def run_cli(argv: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def test_ansible_inventory_list_and_graph(fleet: Fleet, sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(sim, tmp_path)
    inventory = str(ANSIBLE_BIN / "ansible-inventory")

    # The repository's own example configuration.
    graph = run_cli([inventory, "-i", str(REPO / "inventory" / "vast.yml"), "--graph"], env)
    assert graph.returncode == 0, graph.stderr
    warnings = [line for line in graph.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"is the host 'dup-{fleet.dup_second}'" in warnings[0], graph.stderr
    assert "  |--@vast:\n" in graph.stdout
    for name in fleet.name_of(*fleet.running):
        assert f"|--{name}\n" in graph.stdout
    assert "@status_running:" in graph.stdout and "@label_train_a:" in graph.stdout
    assert "train-stopped" not in graph.stdout

    listed = run_cli([inventory, "-i", str(REPO / "inventory" / "vast.yml"), "--list"], env)
    assert listed.returncode == 0, listed.stderr
    data = unwrap(listed.stdout)
    assert set(data["vast"]["hosts"]) == fleet.name_of(*fleet.running)
    variables = data["_meta"]["hostvars"]["train-a"]
    assert variables["vast_id"] == fleet.direct and variables["ansible_user"] == "root"
    assert variables["ansible_python_interpreter"] == "/usr/bin/python3"
    assert sim.api_key not in listed.stdout + listed.stderr + graph.stdout + graph.stderr

    # A templated key from --extra-vars, with VAST_API_KEY unset.
    cfg = write_cfg(tmp_path / "templated.vast.yml", api_key="{{ my_vast_key }}", statuses=[])
    no_key_env = {k: v for k, v in env.items() if k != "VAST_API_KEY"}
    templated = run_cli([inventory, "-i", str(cfg), "--list", "-e", f"my_vast_key={sim.api_key}"], no_key_env)
    assert templated.returncode == 0, templated.stderr
    data = unwrap(templated.stdout)
    assert set(data["vast"]["hosts"]) == set(fleet.names.values())
    # ansible-inventory itself copies extra vars into every host's vars; nothing else may hold the key.
    for variables in data["_meta"]["hostvars"].values():
        assert variables.pop("my_vast_key") == sim.api_key
    assert sim.api_key not in json.dumps(data) + templated.stderr


def test_ansible_ping_reaches_every_instance_over_ssh(sim: Sim, client: httpx.Client, tmp_path: Path,
                                                      ssh_key: Path) -> None:
    register_key(client, ssh_key)
    ids = {
        "direct": rent(client, label="ping-direct", runtype="ssh_direc ssh_proxy"),
        "proxy": rent(client, label="ping-proxy", runtype="ssh_proxy"),
        "jupyter": rent(client, label="ping-jupyter", runtype="jupyter_direc ssh_direc ssh_proxy"),
        "stopped": rent(client, label="ping-stopped", runtype="ssh_direc ssh_proxy"),
    }
    for instance_id in ids.values():
        wait_status(client, instance_id, "running")
    stop(client, ids["stopped"])

    cfg = write_cfg(tmp_path / "vast.yml", compose={
        "ansible_ssh_private_key_file": f"'{ssh_key}'",
        "ansible_ssh_common_args": "'-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
    })
    # No ControlPersist masters outliving the test (ports are reused by the next simulator).
    env = ansible_env(sim, tmp_path, ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPath=none")
    ping = run_cli([str(ANSIBLE_BIN / "ansible"), "-i", str(cfg), "vast", "-m", "ansible.builtin.ping", "-o"],
                   env, timeout=180)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    pongs = set(re.findall(r'^(\S+) \| SUCCESS => .*"ping":\s*"pong"', ping.stdout, re.M))
    assert pongs == {"ping-direct", "ping-proxy", "ping-jupyter"}, ping.stdout

    # Each name reaches its own container (hostname C.<id>), whether direct or through the proxy.
    whoami = run_cli([str(ANSIBLE_BIN / "ansible"), "-i", str(cfg), "vast", "-m", "ansible.builtin.raw",
                      "-a", "cat /proc/sys/kernel/hostname", "-o"], env, timeout=180)
    assert whoami.returncode == 0, whoami.stdout + whoami.stderr
    for kind in ("direct", "proxy", "jupyter"):
        assert re.search(rf"^ping-{kind} \| CHANGED \| rc=0 \| \(stdout\) C\.{ids[kind]}\b", whoami.stdout, re.M), \
            whoami.stdout
    assert sim.api_key not in ping.stdout + ping.stderr + whoami.stdout + whoami.stderr


@pytest.mark.parametrize("command", ["ansible-inventory", "ansible"])
def test_wrong_key_fails_clearly_without_the_key(sim: Sim, tmp_path: Path, command: str) -> None:
    wrong = "wrong-key-0123456789abcdef"
    cfg = write_cfg(tmp_path / "vast.yml")
    argv = [str(ANSIBLE_BIN / command), "-i", str(cfg)]
    argv += ["--list"] if command == "ansible-inventory" else ["vast", "-m", "ansible.builtin.ping"]

    strict_env = ansible_env(sim, tmp_path, api_key=wrong, ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true")
    failed = run_cli(argv, strict_env)
    output = failed.stdout + failed.stderr
    assert failed.returncode != 0, output
    assert "Vast rejected the API key from VAST_API_KEY (HTTP 401" in output
    assert "Traceback" not in output
    assert wrong not in output

    # Ansible's default only warns about an unparsed source; the message is the same and keyless.
    lenient = run_cli(argv, ansible_env(sim, tmp_path, api_key=wrong))
    output = lenient.stdout + lenient.stderr
    assert "Vast rejected the API key" in output and wrong not in output


def test_missing_key_message(sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(sim, tmp_path, api_key="", ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="true")
    env.pop("VAST_API_KEY", None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "empty-xdg")
    result = run_cli([str(ANSIBLE_BIN / "ansible-inventory"), "-i", str(write_cfg(tmp_path / "vast.yml")),
                      "--graph"], env)
    assert result.returncode != 0
    assert "No Vast API key" in result.stderr and "Traceback" not in result.stderr

