"""bandwidth_probe on simulated instances over real SSH, against the rate tc imposes on their links.

Namespace mode (root): each instance lives in its own network namespace at ``public_ipaddr``, and the
controller's end of its veth link is that address minus one. A byte server bound to that host-side
address is reachable from that instance only. One instance is rented plain, the next after arming a
``slow_link`` fault of 170 KB/s (tbf both ways on the veth); ``mlops.vast.bandwidth_probe`` then runs on
both through ansible-playbook over SSH.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.conftest import Sim, needs_root, rent, wait_status
from tests.integration.ansible_run import ansible_env, run_playbook
from tests.integration.test_sim_lifecycle import direct_endpoint, register_key
from tests.unit.test_bandwidth_probe import Server

SLOW_KBYTES = 170
PLAYBOOK = """
- name: Probe each instance's link
  hosts: fast:slow
  gather_facts: false
  tasks:
    - name: Measure
      mlops.vast.bandwidth_probe:
        endpoints:
          - name: source
            url: "{{ probe_source }}"
          - name: source-4-streams
            url: "{{ probe_source }}"
            streams: 4
            required: false
        min_mbps: 1
        max_seconds: 5
        timeout: 5
      register: probe
      ignore_errors: true

    - name: Keep the result on the controller
      ansible.builtin.copy:
        content: "{{ probe | to_json }}"
        dest: "{{ out_dir }}/{{ inventory_hostname }}.json"
        mode: "0644"
      delegate_to: localhost
"""


@needs_root
def test_probe_reports_the_rate_tc_imposes(sim: Sim, ssh_key: Path, tmp_path: Path) -> None:
    register_key(sim, ssh_key)
    with sim.client() as client:
        rows = {"fast": wait_status(client, rent(client, label="bw-fast"), "running")}
        armed = client.post("/_sim/faults", json={"kind": "slow_link", "next": True, "kbytes_per_s": SLOW_KBYTES})
        assert armed.status_code == 200, armed.text
        rows["slow"] = wait_status(client, rent(client, label="bw-slow"), "running")
    addresses = {name: ipaddress.ip_address(row["public_ipaddr"].strip()) for name, row in rows.items()}
    if any(address.is_loopback for address in addresses.values()):
        pytest.skip("the simulator runs in loopback mode (no network namespaces, no tc)")

    servers: dict[str, Server] = {}
    threads: list[threading.Thread] = []
    try:
        for name, address in addresses.items():
            # The controller side of this instance's veth only: no other instance can reach it.
            server = Server(host=str(address - 1))
            servers[name] = server
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            threads.append(thread)
        out_dir = tmp_path / "results"
        out_dir.mkdir()
        hosts = {}
        for name, row in rows.items():
            host, port = direct_endpoint(row)
            server_host, server_port = servers[name].server_address[:2]
            hosts[name] = {"ansible_host": host, "ansible_port": port,
                           "probe_source": f"http://{server_host}:{server_port}/bytes?size=2000000000"}
        inventory = {"all": {
            "hosts": {**hosts, "localhost": {"ansible_connection": "local",
                                             "ansible_python_interpreter": sys.executable}},
            "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(ssh_key),
                     "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                     "ansible_python_interpreter": "/usr/bin/python3", "out_dir": str(out_dir)},
        }}
        (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory))
        (tmp_path / "probe.yml").write_text(PLAYBOOK)
        # No ControlPersist masters outliving the test (the instances are gone right after it).
        env = ansible_env(None, tmp_path, ANSIBLE_SSH_ARGS="-o ControlMaster=no -o ControlPath=none")
        completed = run_playbook(str(tmp_path / "probe.yml"), env, "-i", str(tmp_path / "inventory.yml"),
                                 timeout=300)
        output = completed.stdout + completed.stderr
        assert "Traceback" not in output
        results = {name: json.loads((out_dir / f"{name}.json").read_text()) for name in rows}
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)

    fast = {r["name"]: r for r in results["fast"]["results"]}
    slow = {r["name"]: r for r in results["slow"]["results"]}
    print(f"neutral: {slow['neutral']['error']}")
    print(f"measured: slow {slow['source']['mbps']} MB/s ({slow['source']['bytes']} B in "
          f"{slow['source']['seconds']} s), slow x4 {slow['source-4-streams']['mbps']} MB/s, "
          f"fast {fast['source']['mbps']} MB/s, fast x4 {fast['source-4-streams']['mbps']} MB/s")

    # The slow host: within 20% of the 170 KB/s tc imposes, measured over the full 5 s window.
    assert slow["source"]["error"] is None and slow["source"]["stopped_by"] == "max_seconds"
    assert slow["source"]["mbps"] == pytest.approx(SLOW_KBYTES / 1000, rel=0.20)
    assert slow["source-4-streams"]["ranged"] is True and slow["source-4-streams"]["error"] is None
    assert slow["source-4-streams"]["mbps"] == pytest.approx(SLOW_KBYTES / 1000, rel=0.20)
    # The neutral endpoint (public internet) is unreachable from an instance; it is optional, reported only.
    assert slow["neutral"]["required"] is False and slow["neutral"]["error"]

    # min_mbps: 1 fails the slow host, naming the endpoint and its measured rate...
    assert results["slow"]["failed"] is True
    assert results["slow"]["failed_endpoints"] == ["source"]
    assert f"source: {slow['source']['mbps']:.3f} MB/s < 1 MB/s" in results["slow"]["msg"]
    # ...and passes the fast one, many times faster.
    assert not results["fast"].get("failed"), results["fast"].get("msg")
    assert fast["source"]["ok"] is True and fast["source"]["error"] is None
    assert fast["source"]["mbps"] > 20 * slow["source"]["mbps"]
