"""Bad input to every user-facing surface (issue 12, item 5): the modules' options (one ansible-playbook process runs
every case as a task of its own), the playbooks' variables, the CLI and the Python API. Each case must end in one
message naming the option and what to do, with no traceback, and nothing may be rented: vastsim's ledger and the
local contract ledger stay empty. Cases already covered elsewhere (train.yml's run contract:
test_collection_shape.py; the CLI's run files: tests/unit/test_cli_args.py; queries and keys of vast_instance:
test_modules.py) are not repeated here."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import mlops_vast
from mlops_vast import cli
from tests.conftest import Sim, running_sim
from tests.integration.ansible_run import ansible_env, ledger_open, local_inventory, run_playbook

pytestmark = pytest.mark.slow


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


DEAD_URL = f"http://127.0.0.1:{closed_port()}"  # nothing listens: the kernel refuses at once
HUGE = "x" * 100_000
IMAGE = "pytorch/pytorch:latest"
RUN = {"label": "bad-input", "query": "num_gpus=1", "image": IMAGE}

# (case, module, options, words the message must hold: the option's name first, then what to do or what was got)
MODULE_CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("offer-query-dangling", "vast_offer", {"query": "gpu_ram >="}, ["Invalid query", "Missing value", "write e.g."]),
    ("offer-query-unknown-field", "vast_offer", {"query": "gpu_rams >= 24"}, ["gpu_rams", "not a valid search key"]),
    ("offer-query-huge", "vast_offer", {"query": HUGE}, ["Invalid query", "Missing operator"]),
    ("offer-regex", "vast_offer", {"query": "gpu_name ~ RTX_4090|("}, ["Invalid regex", "unterminated subpattern"]),
    ("offer-unknown-gpu", "vast_offer", {"query": "gpu_name=RTX_5099"}, ["no GPU on the market is called 'RTX 5099'",
                                                                       "RTX 4090"]),
    ("offer-limit-type", "vast_offer", {"query": "num_gpus=1", "limit": "ten"}, ["'limit'", "convert to int"]),
    ("offer-limit-range", "vast_offer", {"query": "num_gpus=1", "limit": -1}, ["limit must be at least 1", "-1"]),
    ("offer-type-enum", "vast_offer", {"query": "num_gpus=1", "type": "spot"}, ["type must be one of", "spot"]),
    ("offer-max-dph", "vast_offer", {"query": "num_gpus=1", "max_dph": -1}, ["max_dph must be more than 0", "-1"]),
    ("offer-storage", "vast_offer", {"query": "num_gpus=1", "storage": -5}, ["storage must be", "-5"]),
    ("offer-exclude-type", "vast_offer", {"query": "num_gpus=1", "exclude_machines": ["abc"]},
     ["'exclude_machines'", "convert to int"]),
    ("offer-api-timeout", "vast_offer", {"query": "num_gpus=1", "api_timeout": 0},
     ["api_timeout must be more than 0"]),
    ("offer-url-closed-port", "vast_offer", {"query": "num_gpus=1", "api_url": DEAD_URL, "api_timeout": 3},
     ["cannot reach the Vast API at " + DEAD_URL, "VAST_URL or the api_url option"]),
    ("offer-url-malformed", "vast_offer", {"query": "num_gpus=1", "api_url": "not a url"},
     ["api_url must start with http:// or https://"]),
    ("offer-wrong-key", "vast_offer", {"query": "num_gpus=1", "api_key": "wrong-key-0123456789"},
     ["401", "Invalid user key", "VAST_API_KEY"]),
    ("instance-state-enum", "vast_instance", {"label": "bad-input", "state": "deleted"}, ["state must be one of"]),
    ("instance-disk-type", "vast_instance", {**RUN, "disk": "big"}, ["'disk'", "convert to float"]),
    ("instance-label-empty", "vast_instance", {**RUN, "label": ""}, ["label is required to rent"]),
    ("instance-label-huge", "vast_instance", {**RUN, "label": HUGE}, ["label must be at most 256 characters"]),
    ("instance-image-empty", "vast_instance", {**RUN, "image": ""}, ["image is required"]),
    ("instance-max-offers", "vast_instance", {**RUN, "max_offers": 0}, ["max_offers must be at least 1"]),
    ("instance-wait-timeout", "vast_instance", {**RUN, "wait_timeout": -5}, ["wait_timeout must be at least 1"]),
    ("instance-query", "vast_instance", {**RUN, "query": "num_gpus = = 1"}, ["Invalid query", "nothing was rented"]),
    ("instance-offer-id-type", "vast_instance", {"label": "bad-input", "offer_id": "abc", "image": IMAGE},
     ["'offer_id'", "convert to int"]),
    ("instance-ssh-enum", "vast_instance", {**RUN, "ssh": "jupyter"}, ["ssh must be one of", "jupyter"]),
    ("instance-bid-range", "vast_instance", {**RUN, "bid_price": -1}, ["bid_price must be between", "-1"]),
    ("instance-both-sources", "vast_instance", {**RUN, "offer_id": 3}, ["mutually exclusive", "offer_id|query"]),
    ("instance-no-label", "vast_instance", {"query": "num_gpus=1", "image": IMAGE}, ["label, instance_id"]),
    ("instance-url-closed-port", "vast_instance", {**RUN, "api_url": DEAD_URL, "api_timeout": 3},
     ["cannot reach the Vast API at " + DEAD_URL]),
    ("ssh-key-malformed", "vast_ssh_key", {"public_key": "not a key"}, ["public_key must be an OpenSSH public key"]),
    ("ssh-key-missing-file", "vast_ssh_key", {"public_key_file": "/nonexistent/id.pub"},
     ["cannot read public_key_file", "No such file"]),
    ("ssh-key-state-enum", "vast_ssh_key", {"public_key": "ssh-ed25519 AAAA x", "state": "gone"},
     ["state must be one of"]),
    ("keypair-path", "ssh_keypair", {"path": "/dev/null/key", "create": True}, ["cannot create the SSH key",
                                                                               "/dev/null/key"]),
    ("exclusions-id-type", "machine_exclusions", {"machine_id": "abc"}, ["'machine_id'", "convert to int"]),
    ("exclusions-state-enum", "machine_exclusions", {"machine_id": 3, "state": "maybe"}, ["state must be one of"]),
    ("ledger-a-directory", "vast_ledger", {"ledger_path": "/tmp"}, ["cannot read the ledger /tmp",
                                                                    "Is a directory"]),
    ("wait-id-type", "wait_in_place", {"instance_id": "x"}, ["'instance_id'", "convert to int"]),
    ("wait-range", "wait_in_place", {"instance_id": 1, "wait_s": -1}, ["wait_s", "must be >= 0"]),
    ("store-action-enum", "checkpoint_store", {"action": "upload", "bucket": "b"}, ["action must be one of"]),
    ("store-bucket-empty", "checkpoint_store", {"action": "check", "bucket": ""}, ["bucket must be a bucket name"]),
    ("store-keep-range", "checkpoint_store", {"action": "retain", "bucket": "b", "keep": 1, "run_id": "r"},
     ["keep must be at least 2"]),
    ("estimate-method-enum", "estimate", {"params": 1e9, "method": "dora"}, ["method must be one of", "dora"]),
    ("estimate-batch-range", "estimate", {"params": 1e9, "micro_batch_size": 0},
     ["micro_batch_size must be at least 1"]),
    ("estimate-seq-range", "estimate", {"params": 1e9, "seq_len": -1}, ["seq_len must be at least 1"]),
    ("estimate-model-missing", "estimate", {"model_config": "no-such-model-xyz"},
     ["model_config", "give the path of the model's config.json"]),
    ("estimate-params-range", "estimate", {"params": -5}, ["params must be the model's total parameter count"]),
    # The job as one mapping (what train.yml passes): held to the same options and ranges.
    ("estimate-job-unknown", "estimate", {"job": {"params": 1e9, "seq_length": 512}},
     ["job has no option(s) seq_length"]),
    ("estimate-job-type", "estimate", {"job": {"params": "lots"}}, ["'params'", "convert to float"]),
    ("estimate-job-range", "estimate", {"job": {"params": 1e9}, "seq_len": -1}, ["seq_len must be at least 1"]),
    ("estimate-job-exclusive", "estimate", {"job": {"params": 1e9, "train_tokens": 1e6, "max_steps": 5}},
     ["mutually exclusive", "train_tokens", "max_steps"]),
    ("gpu-vram-type", "gpu_check", {"min_vram_gb": "lots"}, ["'min_vram_gb'", "convert to float"]),
    ("gpu-capability", "gpu_check", {"min_compute_capability": "eight"},
     ["min_compute_capability must be a dotted version"]),
    ("gpu-name-regex", "gpu_check", {"gpu_name": "RTX("}, ["gpu_name is not a valid regular expression"]),
    ("gpu-count-range", "gpu_check", {"gpu_count": -1}, ["gpu_count must be more than 0", "-1"]),
    ("probe-min-mbps", "bandwidth_probe", {"endpoints": [], "min_mbps": -1}, ["min_mbps must not be negative"]),
    ("probe-streams", "bandwidth_probe", {"endpoints": [], "streams": 0}, ["streams must be above 0"]),
    ("contract-missing", "validate_playbook_vars", {"spec_file": "/nonexistent.meta.yml"},
     ["cannot read the argument spec file /nonexistent.meta.yml"]),
    ("watch-fail-on-enum", "watch", {"run_dir": "/tmp/x", "tmux_session": "t", "fail_on": ["sometimes"]},
     ["fail_on must be one or more of", "sometimes"]),
    ("watch-format-enum", "watch", {"run_dir": "/tmp/x", "tmux_session": "t", "log_format": "xml"},
     ["log_format must be one of"]),
    ("watch-regex", "watch", {"run_dir": "/tmp/x", "tmux_session": "t", "summary_regex": "("},
     ["summary_regex is not a valid regular expression"]),
    ("watch-poll-range", "watch", {"run_dir": "/tmp/x", "tmux_session": "t", "poll_interval": -1},
     ["poll_interval must be > 0"]),
    ("sweep-parallel-range", "sweep", {"name": "s", "base": {"run_name": "b"}, "trials": [{"lr": 1}],
                                       "max_parallel": 0}, ["max_parallel must be at least 1"]),
    ("sweep-grid-type", "sweep", {"name": "s", "base": {"run_name": "b"}, "grid": "lr"}, ["'grid'", "dict"]),
]
# Without a key anywhere (no VAST_API_KEY, no key file in this HOME): the task's own environment drops it.
NO_KEY_CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("instance-no-key", "vast_instance", RUN, ["No Vast API key", "VAST_API_KEY"]),
    ("ssh-key-no-key", "vast_ssh_key", {"public_key": "ssh-ed25519 AAAA x"}, ["No Vast API key"]),
    ("wait-no-key", "wait_in_place", {"instance_id": 1}, ["No Vast API key"]),
]
ALL_CASES = MODULE_CASES + NO_KEY_CASES


@pytest.fixture(scope="module")
def bsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("bad-input-sim") / "state") as simulator:
        yield simulator


LANES = 4  # hosts (all localhost) running the cases side by side: each module run is a Python start-up


@pytest.fixture(scope="module")
def batch(bsim: Sim, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every module case as a task of one playbook (ignore_errors, a task timeout as a guard against a hang), the
    cases dealt over LANES local hosts that run free of each other."""
    tmp = tmp_path_factory.mktemp("bad-input")
    tasks: list[dict[str, Any]] = []
    for index, (case, module, args, _words) in enumerate(ALL_CASES):
        if module == "machine_exclusions":
            args.setdefault("path", str(tmp / "exclusions.json"))
        task = {"name": case, f"mlops.vast.{module}": args, "register": f"r{index}", "ignore_errors": True,
                "timeout": 60, "when": f"inventory_hostname == 'lane{index % LANES}'"}
        if index >= len(MODULE_CASES):
            task["environment"] = {"VAST_API_KEY": ""}
        tasks.append(task)
    named = ", ".join(f"'{case}': r{index}" for index, (case, *_rest) in enumerate(ALL_CASES))
    keep = {"dest": f"{tmp}/results-{{{{ inventory_hostname }}}}.json", "content": f"{{{{ {{{named}}} | to_json }}}}"}
    tasks.append({"name": "keep", "ansible.builtin.copy": keep})
    play = [{"hosts": "all", "gather_facts": False, "strategy": "free", "tasks": tasks}]
    (tmp / "cases.yml").write_text(yaml.safe_dump(play))
    inventory = tmp / "lanes.ini"
    inventory.write_text("".join(f"lane{lane} ansible_connection=local ansible_python_interpreter={sys.executable}\n"
                                 for lane in range(LANES)))
    started = time.monotonic()
    done = run_playbook(str(tmp / "cases.yml"), ansible_env(bsim, tmp), "-i", str(inventory), "-f", str(LANES),
                        timeout=900)
    elapsed = time.monotonic() - started
    results: dict[str, Any] = {}
    for index, (case, *_rest) in enumerate(ALL_CASES):
        lane = tmp / f"results-lane{index % LANES}.json"
        assert lane.exists(), done.stdout[-3000:] + done.stderr[-3000:]
        results[case] = json.loads(lane.read_text())[case]
    return {"results": results, "output": done.stdout + done.stderr, "seconds": elapsed, "tmp": tmp}


@pytest.mark.parametrize(("case", "module", "args", "words"), ALL_CASES, ids=[case[0] for case in ALL_CASES])
def test_each_bad_option_fails_with_one_clear_message(batch: dict[str, Any], case: str, module: str,
                                                      args: dict[str, Any], words: list[str]) -> None:
    result = batch["results"][case]
    assert result.get("failed") is True, result
    message = str(result.get("msg", ""))
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message[:600]!r}"
    # ansible-core 2.19 puts "exception": "(traceback unavailable)" in every failed result: no traceback is one.
    assert "Traceback (most recent call last)" not in json.dumps(result), result
    assert "Task failed: Timed out" not in message and "Module failed" not in message, message[:300]


def test_the_batch_rented_nothing_and_leaked_no_traceback(batch: dict[str, Any], bsim: Sim) -> None:
    assert "Traceback" not in batch["output"]
    with bsim.client() as client:
        totals = client.get("/_sim/ledger").json()["totals"]
    assert totals["instances"] == 0 and totals["open_instances"] == 0, totals
    assert ledger_open(batch["tmp"]) == []
    assert len(ALL_CASES) >= 40
    # Two closed-port cases each give up within api_timeout (3 s): the whole batch stays short.
    assert batch["seconds"] < 240, batch["seconds"]


PLAYBOOK_CASES = [
    ("sweep.yml", {"sweep_name": "s", "sweep_trials": [{"lr": 1}], "sweep_max_parallel": "two"},
     ["sweep_max_parallel"]),
    ("sweep.yml", {"sweep_name": "s", "sweep_trials": [{"lr": 1}], "sweep_budjet_usd": 5},
     ["sweep_budjet_usd", "did you mean sweep_budget_usd"]),
    ("sweep.yml", {"sweep_name": "s", "sweep_trials": [{"lr": 1}], "sweep_budget_usd": 0.03,
                   "run_max_total_usd": 0.035},
     ["sweep_budget_usd $0.03 is below run_max_total_usd $0.035, the cap each trial starts with: no trial could start",
      "or lower run_max_total_usd"]),
    ("sweep.yml", {"sweep_name": "s", "sweep_trials": [{"lr": 1}], "sweep_budget_usd": 0.0001},
     ["sweep_budget_usd $0.0001 is below $", "the least a trial can start with", "no trial could start"]),
    ("train.yml", {"run_interruptible": "sometimes"}, ["run_interruptible"]),
    ("train.yml", {"run_recovery": {"max_preemptions": 99}}, ["run_recovery.max_preemptions must be at most 5"]),
    ("train.yml", {"run_code_src": "no/such/code"}, ["run_code_src 'no/such/code' is not a directory on this "
                                                     "controller (relative paths start at"]),
    ("rent.yml", {"rent_query": "gpu_ram >> 24"}, ["Invalid query", "nothing was rented"]),
]


@pytest.mark.parametrize(("playbook", "extra", "words"), PLAYBOOK_CASES,
                         ids=[f"{p}-{next(iter(e))}-{i}" for i, (p, e, _w) in enumerate(PLAYBOOK_CASES)])
def test_bad_playbook_variables_fail_before_renting(bsim: Sim, tmp_path: Path, playbook: str, extra: dict,
                                                    words: list[str]) -> None:
    env = ansible_env(bsim, tmp_path)
    args = ["-i", str(local_inventory(tmp_path))]
    if playbook == "train.yml":
        args += ["-e", "@examples/run.yml"]
    if playbook == "sweep.yml":
        args += ["-e", "@examples/run.yml"]
    done = run_playbook(f"playbooks/{playbook}", env, *args, "-e", json.dumps(extra), timeout=300)
    assert done.returncode != 0
    failure = next(line for line in done.stdout.splitlines() if line.startswith("fatal:"))
    for word in words:
        assert word in failure, failure[:2000]
    assert "Traceback" not in done.stdout + done.stderr
    with bsim.client() as client:
        assert client.get("/_sim/ledger").json()["totals"]["instances"] == 0
    assert ledger_open(tmp_path) == []


@pytest.mark.parametrize(("argv", "words"), [
    (["train", "run.yml", "-e", "run_max_attempts=three"], "run_max_attempts"),
    (["train", "run.yml", "-e", "run_dsik_gb=30"], "run_dsik_gb"),
    (["sweep", "missing-sweep.yml"], "does not exist"),
    (["train", "run.yml", "-e", "run_disk_gb=-5"], "run_disk_gb must be at least 8, got -5"),
    # The -e value is wrong, not the file: the message says which.
    (["train", "run.yml", "-e", "run_max_dph=abc"], "run.yml with -e run_max_dph: run_max_dph must be a number"),
    (["train", "run.yml", "-e", "novalue"], "expected NAME=VALUE"),
    (["train", "run.yml", "-e", "run_max_runtime_s=.inf"], "run_max_runtime_s must be a finite number, got inf"),
    # The key file named is not there (VAST_API_KEY_FILE below): said as bad input, not as an OSError.
    (["teardown", "--all", "--api-url", "http://127.0.0.1:9"], "no-key, which cannot be read"),
    (["reap", "--api-url", "http://127.0.0.1:9"], "no-key, which cannot be read"),
])
def test_the_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch:
                                       pytest.MonkeyPatch, argv: list[str], words: str) -> None:
    (tmp_path / "run.yml").write_text("run_name: cli-bad\nrun_command: python3 train.py\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_VAST_LEDGER", str(tmp_path / "contracts.jsonl"))
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    monkeypatch.setenv("VAST_API_KEY_FILE", str(tmp_path / "no-key"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert ledger_open(tmp_path) == []


@pytest.mark.parametrize(("run", "words"), [
    ({"run_name": "api-bad", "run_command": "x", "run_bogus": 1}, "unknown variable(s) run_bogus"),
    ({"run_command": "x"}, "run_name is missing"),
    ({"run_name": "../up", "run_command": "x"}, "run_name must not be empty, contain '/'"),
    ({"run_name": "api-bad", "run_command": "x", "run_max_attempts": "many"},
     "run_max_attempts must be a whole number, got 'many'"),
    ({"run_name": "api-bad", "run_command": "x", "run_recovery": {"max_preemptions": 9}},
     "run_recovery.max_preemptions must be at most 5, got 9"),
    ({"run_name": "api-bad", "run_command": "x", "run_max_dhp": 1}, "run_max_dhp (did you mean run_max_dph?)"),
    # Relative to cwd, where the API runs the playbook.
    ({"run_name": "api-bad", "run_command": "x", "run_code_src": "code"},
     "run_code_src 'code' is not a directory on this controller (relative paths start at"),
    (["run_name: x"], "the run must be a mapping of its variables or the path of a YAML file holding them, not list"),
    # Inside the lists and mappings too: each would have failed the host checks on every host rented.
    ({"run_name": "api-bad", "run_command": "x", "run_sources": [{"name": "x"}]}, "run_sources needs url"),
    ({"run_name": "api-bad", "run_command": "x", "run_sources": [{"name": "w", "url": "not a url"}]},
     "run_sources[0].url must be an http:// or https:// URL with a host, got 'not a url'"),
    ({"run_name": "api-bad", "run_command": "x", "run_gpu_requirements": {"min_disk_gb": "lots"}},
     "run_gpu_requirements.min_disk_gb must be a number, got 'lots'"),
    ({"run_name": "api-bad", "run_command": "x", "run_gpu_requirements": {"min_dsk_gb": 5}},
     "run_gpu_requirements.min_dsk_gb is not a key of run_gpu_requirements; did you mean min_disk_gb?"),
    # The query language is checked before a playbook starts (mlops-vast: exit 2, not the search's failure).
    ({"run_name": "api-bad", "run_command": "x", "run_query": "gpu_ram >>= 16"}, "run_query: Unknown operator '>>='"),
])
def test_the_python_api_raises_input_error_before_renting(tmp_path: Path, run: dict, words: str) -> None:
    with pytest.raises(mlops_vast.InputError) as raised:
        mlops_vast.train(run, cwd=tmp_path, api_url="http://127.0.0.1:9", api_key="unused")
    assert words in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("sweep", "words"), [
    ({"sweep_grid": {"disk": [20, -5]}, "run_disk_gb": "{{ trial.disk }}"}, "(disk=-5): run_disk_gb must be at least"),
    ({"sweep_trials": [{"lr": 0.1}], "run_command": "python3 train.py --lr {{ trial.lr * 2 }}"},
     "run_command: {{ trial.lr * 2 }} computes with a trial parameter"),
    ({"sweep_trials": [{"lr": 0.1}], "sweep_results_dir": "/proc/version"}, "cannot be the results folder"),
])
def test_the_python_api_raises_input_error_for_a_sweep_its_checks_refuse(tmp_path: Path, sweep: dict,
                                                                         words: str) -> None:
    """What only sweep.yml's own checks can tell (each trial's values against the run's contract, the templates as
    written) is bad input too: InputError, not a failed sweep, and no results folder left behind."""
    with pytest.raises(mlops_vast.InputError) as raised:
        mlops_vast.sweep({"sweep_name": "api-bad-sweep", "run_command": "python3 train.py", **sweep}, cwd=tmp_path,
                         api_url="http://127.0.0.1:9", api_key="unused")
    assert words in str(raised.value) and "\n" not in str(raised.value), raised.value
    assert not (tmp_path / "results").exists()


def test_the_python_api_takes_paths_from_cwd_and_starts_nothing_when_cancelled_already(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "run.yml").write_text("run_name: preset\nrun_command: python3 train.py\nrun_code_src: code\n")
    monkeypatch.chdir("/")  # the file and run_code_src are found under cwd=, not here
    with pytest.raises(TypeError, match="on_event must be a callable"):
        mlops_vast.train("run.yml", cwd=tmp_path, on_event=5, api_url="http://127.0.0.1:9", api_key="unused")
    cancel = threading.Event()
    cancel.set()
    result = mlops_vast.train("run.yml", cwd=tmp_path, cancel=cancel, api_url="http://127.0.0.1:9", api_key="unused")
    assert (result.outcome, result.rc) == ("cancelled", None) and "nothing was run or rented" in result.message
    assert not (tmp_path / "results").exists()  # no playbook, no results folder
    swept = mlops_vast.sweep({"sweep_name": "preset", "sweep_trials": [{"lr": 1}], "run_command": "x"}, cwd=tmp_path,
                             cancel=cancel, api_url="http://127.0.0.1:9", api_key="unused")
    assert swept.outcome == "cancelled" and swept.trials == []


@pytest.mark.parametrize(("api_url", "env_url", "words"), [
    ("notaurl", None, "got 'notaurl' (api_url / --api-url)"),
    (None, "ftp://vast.example", "got 'ftp://vast.example' (VAST_URL)"),
])
def test_an_api_url_that_is_not_http_is_input_error_before_any_playbook(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api_url: str | None, env_url: str | None, words: str) -> None:
    monkeypatch.delenv("VAST_URL", raising=False)
    if env_url:
        monkeypatch.setenv("VAST_URL", env_url)
    with pytest.raises(mlops_vast.InputError) as raised:
        mlops_vast.train({"run_name": "api-url", "run_command": "x"}, cwd=tmp_path, api_url=api_url,
                         api_key="unused")
    assert "must start with http:// or https://" in str(raised.value) and words in str(raised.value)
    assert not (tmp_path / "results").exists()

