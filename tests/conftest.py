"""Shared fixtures: a real vastsim process per test (or module), an SSH key, API helpers.

Every simulator started here is stopped by pid at teardown, and the test fails if it
left any namespace, veth or sshd of its own behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]

# Ansible's collection finder must own `ansible_collections.*` before any test imports from it
# (unit tests import module_utils directly; the inventory tests load the plugin through the loader).
from ansible.plugins.loader import init_plugin_loader  # noqa: E402

init_plugin_loader([str(REPO / ".collections")])

from mlops_vast.sim import harness  # noqa: E402
from mlops_vast.sim.hosts import state_tag  # noqa: E402

IS_ROOT = os.geteuid() == 0
# ansible-playbook refuses a non-blocking stdin, and an ssh killed at a timeout leaves its stdin so; every
# process the tests start gets stdin of its own (/dev/null, ssh -n), and the suite starts from a blocking one.
with contextlib.suppress(OSError):
    os.set_blocking(0, True)
API_KEY = "vastsim-test-key-0123456789abcdef"
SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (namespaces, tc)")


class Sim(harness.SimProcess):
    """A simulator the tests started through the project's harness, with what the tests ask of it."""

    def client(self, api_key: str | None = None) -> httpx.Client:
        key = self.api_key if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log(self) -> str:
        return self.log_tail(limit=1 << 30)


def start_sim(state_dir: Path, *extra: str, speed: float = 100.0, api_key: str = API_KEY,
              timeout: float = 30.0) -> Sim:
    """A simulator (mlops_vast.sim.harness) at --log-level info, accepting ``api_key``."""
    started = harness.start(state_dir, "--speed", str(speed), "--log-level", "info", *extra, api_keys=[api_key],
                            timeout=timeout)
    # The harness's api_key is the last one the simulator accepts; the tests' own account is ``api_key``.
    return Sim(**{**{field.name: getattr(started, field.name) for field in fields(started)}, "api_key": api_key})


def stop_sim(sim: Sim, timeout: float = 30.0) -> int:
    return int(harness.stop(sim, timeout) or 0)


def leftovers(state_dir: Path) -> list[str]:
    """Namespaces, links, loop devices and processes a simulator on this state dir may have left behind."""
    return [item for items in harness.leftovers(state_dir).values() for item in items]


@contextlib.contextmanager
def running_sim(state_dir: Path, *extra: str) -> Iterator[Sim]:
    """A simulator for the block; afterwards it must have exited cleanly and left nothing behind."""
    simulator = start_sim(state_dir, *extra)
    try:
        yield simulator
    finally:
        harness.stop_checked(simulator)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    with running_sim(tmp_path / "state") as simulator:
        yield simulator


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vastsim-tests", "-f", str(path)],
                   check=True)
    return path


def wait_status(client: httpx.Client, instance_id: int, status: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    row: dict = {}
    while time.monotonic() < deadline:
        row = client.get(f"/api/v0/instances/{instance_id}/").json()["instances"] or {}
        if row.get("actual_status") == status:
            return row
        time.sleep(0.05)
    raise AssertionError(f"instance {instance_id} not {status} after {timeout}s: {row.get('actual_status')} "
                         f"{row.get('status_msg')}")


def ssh_run(host: str, port: int, key: Path, command: str, user: str = "root",
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-n", *SSH_OPTIONS, "-i", str(key), "-p", str(port), f"{user}@{host}", command],
                          capture_output=True, text=True, timeout=timeout)


def selected_items(request: pytest.FixtureRequest, test_name: str) -> list[pytest.Item]:
    """The items of ``test_name`` in the requesting module that this session runs (after -k and deselection): a
    module fixture that starts work for its tests in the background starts only theirs."""
    return [item for item in request.session.items
            if item.module is request.module and getattr(item, "originalname", item.name) == test_name]


def cheapest_good_offer(client: httpx.Client, query: dict | None = None) -> dict:
    """The cheapest offer matching `query` that is not on one of the catalogue's deliberately bad hosts."""
    search = {"verified": {"eq": True}, "rentable": {"eq": True}, "order": [["dph_total", "asc"]],
              "limit": 50, **(query or {})}
    offers = client.post("/api/v0/bundles/", json=search).json()["offers"]
    bad = {m["machine_id"] for m in client.get("/_sim/machines").json()["machines"] if m["defects"]}
    return next(o for o in offers if o["machine_id"] not in bad)


def rent(client: httpx.Client, query: dict | None = None, **body: object) -> int:
    """Rent the cheapest good offer matching `query` and return the instance id."""
    offer = cheapest_good_offer(client, query)
    payload = {"client_id": "me", "image": "pytorch/pytorch", "disk": 10, "runtype": "ssh_direc ssh_proxy",
               "cancel_unavail": True, **body}
    response = client.put(f"/api/v0/asks/{offer['id']}/", json=payload)
    assert response.status_code == 200, response.text
    return int(response.json()["new_contract"])


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    for _ in range(64):  # bounded: a chain of parents ends at pid 1
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
    return pids


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite: no simulator, sshd, namespace or link of ours may remain."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    processes = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    ours = _ancestors()  # pytest itself (and what started it) names the base temp when given --basetemp
    found = [line for line in processes.splitlines()
             if base in line and "ps -ww -eo" not in line and int(line.split(None, 1)[0]) not in ours]
    if IS_ROOT:
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        tags = {_tag(path) for path in Path(base).rglob("state") if path.is_dir()}
        found += [line for line in netns.splitlines() if any(f"vastsim-{tag}-" in line for tag in tags)]
        found += [line.split(":")[1].strip() for line in links.splitlines()
                  if any(f" vs{tag}" in line for tag in tags)]
    assert not found, f"the test suite left behind: {found}"


def _tag(state_dir: Path) -> str:
    return state_tag(state_dir)


# ---------------------------------------------------------------------------------------------- S3 (moto_server)

S3_ACCESS_KEY = "mlopstestaccesskey"
S3_SECRET_KEY = "mlops-test-secret-key-never-printed"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real moto_server process on loopback for the session: ``endpoint_url``, ``access_key``, ``secret_key``.

    The credentials are fixed test values; ``s3_bucket`` puts them into the environment of each test that
    uses it, never the whole session's. Stopped by pid at the end.
    """
    import socket
    import sys
    import urllib.error
    import urllib.request

    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: install the dev extras (pip install 'moto[server]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with open(log, "wb") as sink:
        # Instances reach it as http://s3.vastsim (vastsim's forward): moto must not read that host as a bucket.
        process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL,
                                   stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "MOTO_S3_CUSTOM_ENDPOINTS": "http://s3.vastsim"})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto_server exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not answer on {endpoint} within 30 s: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield {"endpoint_url": endpoint, "access_key": S3_ACCESS_KEY, "secret_key": S3_SECRET_KEY}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, object]:
    """A fresh bucket on a reset moto_server, and the test's AWS_* environment pointing boto3 at nothing else.

    Returns ``s3_server``'s keys plus ``bucket`` and ``client`` (a boto3 client with the test credentials).
    """
    import urllib.request

    import boto3
    from botocore.config import Config

    request = urllib.request.Request(f"{s3_server['endpoint_url']}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    # Nothing of the user's own AWS setup (profile files, instance metadata) may answer instead.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"ckpt-{time.time_ns()}"
    client = boto3.client("s3", endpoint_url=s3_server["endpoint_url"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required"))
    client.create_bucket(Bucket=bucket)
    return {**s3_server, "bucket": bucket, "client": client}
