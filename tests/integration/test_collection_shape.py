"""The collection's shape as users meet it: module_defaults for the action group, the run contract that
train.yml checks before renting, ansible-doc for every plugin and role, and the execution environment."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, Sim
from tests.integration.ansible_run import ANSIBLE_BIN, ansible_env, ledger_open, local_inventory, run_playbook
from tests.integration.test_modules import good_query

PLUGIN_DIRS = {"module": "modules", "inventory": "inventory", "filter": "filter"}


def plugins_of(kind: str) -> list[str]:
    folder = REPO / "plugins" / PLUGIN_DIRS[kind]
    return sorted(f"mlops.vast.{path.stem}" for path in folder.glob("*.py") if path.stem != "__init__")


def roles() -> list[str]:
    return sorted(f"mlops.vast.{path.name}" for path in (REPO / "roles").iterdir() if (path / "tasks").is_dir())


@pytest.mark.parametrize(("kind", "name"), [
    *[("module", name) for name in plugins_of("module")],
    *[("inventory", name) for name in plugins_of("inventory")],
    *[("filter", name) for name in plugins_of("filter")],
    *[("role", name) for name in roles()],
])
def test_ansible_doc_renders_every_module_plugin_and_role(tmp_path: Path, kind: str, name: str) -> None:
    done = subprocess.run([str(ANSIBLE_BIN / "ansible-doc"), "-t", kind, name], env=ansible_env(None, tmp_path),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "WARNING" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    if kind == "role":
        assert "OPTIONS" in done.stdout or "Options" in done.stdout, done.stdout[:500]
    else:
        assert "EXAMPLES" in done.stdout, done.stdout[:500]


def test_the_api_modules_take_their_auth_options_from_doc_fragments_not_their_own_docs() -> None:
    # The API modules are those that import the API's module base (vast_lease, say, only writes the local ledger).
    api_modules = [path for path in (REPO / "plugins" / "modules").glob("*.py")
                   if "module_utils.vast_module import" in path.read_text()]
    assert len(api_modules) >= 5, api_modules
    for path in api_modules:
        doc = module_doc(path)
        assert "mlops.vast.vast" in doc["extends_documentation_fragment"], path.name
        assert "mlops.vast.attributes" in doc["extends_documentation_fragment"], path.name
        assert "api_key" not in doc["options"], path.name


def test_every_module_takes_its_author_from_the_attributes_fragment() -> None:
    for path in (REPO / "plugins" / "modules").glob("*.py"):
        doc = module_doc(path)
        assert "mlops.vast.attributes" in doc["extends_documentation_fragment"], path.name
        assert "author" not in doc, path.name


def module_doc(path: Path) -> dict:
    return yaml.safe_load(path.read_text().split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0])


def test_every_api_module_is_in_the_action_group() -> None:
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    group = set(runtime["action_groups"]["vast"])
    api_side = {path.stem for path in (REPO / "plugins" / "modules").glob("*.py")
                if "mlops.vast.vast" in module_doc(path).get("extends_documentation_fragment", [])}
    assert api_side == group, (api_side, group)


@pytest.mark.slow
def test_module_defaults_for_the_group_set_the_key_once_for_a_play(sim: Sim, tmp_path: Path) -> None:
    env = ansible_env(sim, tmp_path)
    url, key = env.pop("VAST_URL"), env.pop("VAST_API_KEY")
    # Where else a key could come from is out of the way: HOME is private, and the CLI's key file absent.
    assert not (Path(env["HOME"]) / ".config" / "vastai").exists()
    label = "group-defaults"
    play = [{
        "name": "Rent and destroy with the key and URL set once",
        "hosts": "localhost", "gather_facts": False,
        "module_defaults": {"group/mlops.vast.vast": {"api_key": "{{ vast_key }}", "api_url": url}},
        "vars": {"vast_key": key},
        "tasks": [
            {"name": "Search", "mlops.vast.vast_offer": {"query": good_query(sim, "num_gpus=1"), "limit": 1},
             "register": "found"},
            {"name": "Rent", "mlops.vast.vast_instance": {"label": label, "offer_id": "{{ found.best.id }}",
                                                          "image": "pytorch/pytorch", "disk": 10, "wait": False},
             "register": "rented"},
            {"name": "The ledger of the same API holds it", "mlops.vast.vast_ledger": {}, "register": "ledger"},
            {"name": "Check", "ansible.builtin.assert": {"that": [
                "rented.changed", "ledger.open | map(attribute='label') | list == [" + json.dumps(label) + "]"]}},
            {"name": "Destroy", "mlops.vast.vast_instance": {"label": label, "state": "absent"}},
        ],
    }]
    book = tmp_path / "play.yml"
    book.write_text(yaml.safe_dump(play))
    done = run_playbook(str(book), env, "-i", str(local_inventory(tmp_path)))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert key not in done.stdout + done.stderr
    assert "DEPRECATION WARNING" not in done.stdout + done.stderr, done.stderr
    with sim.client() as client:
        ledger = client.get("/_sim/ledger").json()
    assert [row["label"] for row in ledger["rows"]] == [label]
    assert ledger["totals"]["open_instances"] == 0
    assert ledger_open(tmp_path) == []


@pytest.mark.parametrize(("extra", "named", "words"), [
    ({"run_disk_gb": -5}, "run_disk_gb", "must be at least 8"),
    ({"run_disk_gb": "lots"}, "run_disk_gb", "must be a number"),
    ({"run_max_attempts": "three"}, "run_max_attempts", "must be a whole number"),
    ({"run_dsik_gb": 30}, "run_dsik_gb", "did you mean run_disk_gb"),
    ({"run_poll_interval_s": 0}, "run_poll_interval_s", "must be more than 0"),
    ({"run_sources": "http://example.invalid/x"}, "run_sources", "each item of run_sources must be a mapping"),
])
def test_a_wrong_run_variable_fails_the_first_task_naming_it_and_rents_nothing(
        sim: Sim, tmp_path: Path, extra: dict, named: str, words: str) -> None:
    env = ansible_env(sim, tmp_path)
    done = run_playbook("playbooks/train.yml", env, "-i", str(local_inventory(tmp_path)), "-e", "@examples/run.yml",
                        "-e", json.dumps(extra))
    assert done.returncode != 0
    tasks = [line for line in done.stdout.splitlines() if line.startswith("TASK [")]
    assert len(tasks) == 1 and "Check the run's variables" in tasks[0], tasks
    failure = next(line for line in done.stdout.splitlines() if line.startswith("fatal:"))
    assert named in failure and words in failure, failure
    assert "Traceback" not in done.stdout + done.stderr
    with sim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["instances"] == 0
    assert ledger_open(tmp_path) == []


def test_the_bare_command_line_names_the_variable_too(tmp_path: Path) -> None:
    done = run_playbook("playbooks/train.yml", ansible_env(None, tmp_path), "-e", "run_disk_gb=-5")
    failure = next(line for line in done.stdout.splitlines() if line.startswith("fatal:"))
    assert "run_disk_gb must be at least 8, got -5" in failure
    assert "missing required arguments: run_command, run_name" in failure


def test_every_run_variable_of_the_example_is_in_the_contract_with_a_description() -> None:
    spec = yaml.safe_load((REPO / "playbooks" / "train.meta.yml").read_text())["argument_specs"]["main"]["options"]
    example = yaml.safe_load((REPO / "examples" / "run.yml").read_text())
    assert set(example) <= set(spec), set(example) - set(spec)
    for name, option in spec.items():
        assert name.startswith("run_") and option.get("description") and option.get("type"), name
        assert option.get("required") or "default" in option, f"{name} has neither a default nor required"


def test_ansible_builder_makes_a_build_context_from_the_execution_environment_file(tmp_path: Path) -> None:
    context = tmp_path / "context"
    done = subprocess.run([str(ANSIBLE_BIN / "ansible-builder"), "create", "-f", "meta/execution-environment.yml",
                           "-c", str(context)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (context / "Dockerfile").is_file() or (context / "Containerfile").is_file()
    requirements = (context / "_build" / "requirements.txt").read_text()
    bindep = (context / "_build" / "bindep.txt").read_text()
    assert "httpx" in requirements and "rsync" in bindep and "openssh-client" in bindep


def test_an_execution_environment_with_the_collection_finds_its_dependencies(tmp_path: Path) -> None:
    """What ansible-builder's introspection reads from the installed collection (paths from its root)."""
    built = tmp_path / "built"
    env = ansible_env(None, tmp_path)
    subprocess.run([str(ANSIBLE_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(built)],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    installed = tmp_path / "collections"
    subprocess.run([str(ANSIBLE_BIN / "ansible-galaxy"), "collection", "install", "--force", "-p", str(installed),
                    *map(str, built.glob("*.tar.gz"))], cwd=tmp_path, env=env, check=True, capture_output=True,
                   timeout=300)
    import ansible_builder

    script = Path(ansible_builder.__file__).parent / "_target_scripts" / "introspect.py"
    done = subprocess.run([str(ANSIBLE_BIN / "python"), str(script), "introspect", str(installed)],
                          capture_output=True, text=True, timeout=120, check=True)
    found = yaml.safe_load(done.stdout)
    assert any(line.startswith("httpx") for line in found["python"]), found
    assert any(line.startswith("rsync") for line in found["system"]), found


@pytest.mark.slow
def test_the_marketplace_playbook_rents_with_the_collections_key_and_destroys(sim: Sim, tmp_path: Path) -> None:
    done = run_playbook("playbooks/marketplace.yml", ansible_env(sim, tmp_path), "-i", str(local_inventory(tmp_path)))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    key = tmp_path / "id_ed25519"  # next to the ledger (MLOPS_VAST_LEDGER is in tmp_path)
    with sim.client() as client:
        keys = [" ".join(k["key"].split()[:2]) for k in client.get("/api/v0/ssh/").json()]
        totals = client.get("/_sim/ledger").json()["totals"]
    assert keys == [" ".join(key.with_suffix(".pub").read_text().split()[:2])]
    assert totals["instances"] == 1 and totals["open_instances"] == 0
    assert ledger_open(tmp_path) == []


def test_epoch_times_come_from_local_now_not_naive_utc() -> None:
    # now(utc=true) is a naive datetime: its .timestamp() reads it as local time, off by the controller's UTC offset
    # (a recovery's times against the API's, a deadline's against time.time() in a module).
    offenders = [f"{path.relative_to(REPO)}:{number}"
                 for folder in ("playbooks", "roles") for path in (REPO / folder).rglob("*.yml")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"now\(\s*utc\s*=\s*true\s*\)\s*\.timestamp\(", line, re.IGNORECASE)]
    assert offenders == []
