"""train.yml with run_estimate on vastsim: a job that fits no offer, or whose optimistic cost passes the budget,
rents nothing and says why; a job that fits rents the offer the estimate ranked cheapest in total."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from ansible_collections.mlops.vast.plugins.module_utils.estimate_cost import estimate
from ansible_collections.mlops.vast.plugins.module_utils.estimate_job import job_from_params

from tests.conftest import IS_ROOT, REPO, Sim, needs_root, running_sim, selected_items
from tests.integration.ansible_run import (
    ansible_env,
    failure_excerpt,
    ledger_open,
    local_inventory,
    run_playbook,
    run_task,
)
from tests.integration.test_modules import good_query

pytestmark = [pytest.mark.slow]

# run_tail_s of the smoke test's re-estimate check: the user's guess of the end (final pull, destroy).
TAIL_S = 15
MISTRAL_7B = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
              "intermediate_size": 14336, "vocab_size": 32000}


def train(sim: Sim, tmp_path: Path, **run_vars: object) -> subprocess.CompletedProcess:
    key = tmp_path / "key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = ansible_env(sim, tmp_path, MLOPS_VAST_SSH_KEY=str(key), MLOPS_VAST_EXCLUSIONS=str(tmp_path / "excl.json"))
    return run_playbook("playbooks/train.yml", env, "-i", str(local_inventory(tmp_path)), "-e", "@examples/run.yml",
                        "-e", json.dumps({"run_results_dir": str(tmp_path / "results"), **run_vars}))


def instances(sim: Sim) -> list[dict]:
    with sim.client() as client:
        return client.get("/api/v1/instances/").json()["instances"]


def test_a_job_that_fits_no_offer_rents_nothing_and_says_what_would(sim: Sim, tmp_path: Path) -> None:
    done = train(sim, tmp_path, run_name="est-nofit", run_disk_gb=800,
                 run_query="reliability > 0.95 num_gpus=1 gpu_ram <= 25",
                 run_estimate={"model_config": MISTRAL_7B, "method": "full", "precision": "amp", "seq_len": 2048,
                               "max_steps": 1000})
    assert done.returncode != 0
    message = done.stdout
    assert "No offer fits the job" in message, failure_excerpt(message)
    assert re.search(r"GPU memory: needs \d+\.\d GiB per GPU", message), failure_excerpt(message)
    assert "What would fit:" in message and "method: lora" in message, failure_excerpt(message)
    assert "Nothing was rented" in message
    assert instances(sim) == [] and ledger_open(tmp_path) == []


def test_a_disk_too_small_for_the_job_rents_nothing(sim: Sim, tmp_path: Path) -> None:
    done = train(sim, tmp_path, run_name="est-disk", run_disk_gb=20,
                 run_estimate={"model_config": MISTRAL_7B, "method": "lora", "seq_len": 1024, "max_steps": 100})
    assert done.returncode != 0
    assert re.search(r"raise the disk \(run_disk_gb\) to at least \d+", done.stdout), failure_excerpt(done.stdout)
    assert instances(sim) == [] and ledger_open(tmp_path) == []


def test_a_budget_below_the_optimistic_cost_rents_nothing(sim: Sim, tmp_path: Path) -> None:
    done = train(sim, tmp_path, run_name="est-budget", run_max_total_usd=0.001,
        run_estimate={"params": 1.1e9, "method": "lora", "seq_len": 2048, "max_steps": 400, "weights_gb": 2.2})
    assert done.returncode != 0
    assert re.search(r"would cost at least \$[\d.]+ \(optimistic", done.stdout), failure_excerpt(done.stdout)
    assert "run_max_total_usd $0.001" in done.stdout
    assert instances(sim) == [] and ledger_open(tmp_path) == []


@needs_root
def test_a_job_that_fits_rents_the_offer_ranked_cheapest_in_total(sim: Sim, tmp_path: Path) -> None:
    example = yaml.safe_load((REPO / "examples" / "run-estimate.yml").read_text())
    done = train(sim, tmp_path, run_name="est-fits", run_query=good_query(sim, "reliability > 0.95 num_gpus=1"),
                 run_estimate=example["run_estimate"], run_max_total_usd=example["run_max_total_usd"])
    assert done.returncode == 0, failure_excerpt(done.stdout)
    best = re.search(r"Best: offer (\d+) ", done.stdout)
    assert best, failure_excerpt(done.stdout)
    ledger = [json.loads(line) for line in (tmp_path / "contracts.jsonl").read_text().splitlines()]
    rented = [row for row in ledger if row.get("event", "created") == "created" and row.get("offer_id")]
    assert rented and rented[0]["offer_id"] == int(best.group(1)), (rented, best.group(0))
    assert ledger_open(tmp_path) == [], "nothing left billing"


def tiny_command(**flags: object) -> str:
    extra = " ".join(f"--{name} {value}" for name, value in flags.items())
    return f"python3 train.py --output_dir /workspace/run/output --max_steps 400 --save_steps 50 {extra}"


def ledger_row(sim: Sim, instance_id: int) -> dict:
    with sim.client() as client:
        rows = client.get("/_sim/ledger").json()["rows"]
    return next(row for row in rows if row["id"] == instance_id)


@needs_root
def test_a_smoke_test_that_contradicts_the_estimate_aborts_before_the_long_run(sim: Sim, tmp_path: Path) -> None:
    example = yaml.safe_load((REPO / "examples" / "run-estimate.yml").read_text())
    base = estimate_base_gib(example["run_estimate"])
    done = train(sim, tmp_path, run_name="est-smoke-abort", run_query=good_query(sim, "reliability > 0.95 num_gpus=1"),
                 run_estimate=example["run_estimate"],
                 run_command=tiny_command(step_seconds=0.02, gpu_mem_gib=round(1.5 * base, 3)))
    assert done.returncode != 0
    assert "Contradicts the estimate: gpu_memory_allocated: 1.50x the base estimate" in done.stdout, \
        failure_excerpt(done.stdout)
    assert "TASK [mlops.vast.train : " not in done.stdout, "the long run must not start"
    smoke = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert smoke["verdict"] == "abort" and smoke["measured"]["allocated_gib"] == pytest.approx(1.5 * base, rel=0.01)
    assert smoke["measured"]["nvidia_smi_gib"] > 1.5 * base, "vastsim's nvidia-smi saw the job's memory"
    assert ledger_open(tmp_path) == [], "torn down"


def smoke_pass_run(sim: Sim, tmp_path: Path) -> subprocess.CompletedProcess:
    example = yaml.safe_load((REPO / "examples" / "run-estimate.yml").read_text())
    base = estimate_base_gib(example["run_estimate"])
    return train(sim, tmp_path, run_name="est-smoke-pass", run_query=good_query(sim, "reliability > 0.95 num_gpus=1"),
                 run_estimate=example["run_estimate"], run_tail_s=TAIL_S,
                 run_command=tiny_command(step_seconds=0.2, gpu_mem_gib=round(1.05 * base, 3)))


BUDGET_POLL_S = 5


def budget_stop_run(sim: Sim, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """The run, its budget and the $/s of the offer it rents."""
    query = good_query(sim, "reliability > 0.95 num_gpus=1")
    env = ansible_env(sim, tmp_path)
    found = run_task("mlops.vast.vast_offer", {"query": query, "order": "dph+", "limit": 1, "storage": 20},
                     env, tmp_path)
    # On demand, so the run bills this rate (an interruptible one bills its bid, well below it, and would stop
    # near the end of the run instead of early in it).
    rate = found["offers"][0]["dph_total"] / 3600
    budget = round(rate * 100, 6)  # the whole run takes well over 100 s of billing: 400 steps of 0.5 s
    done = train(sim, tmp_path, run_name="est-budget-stop", run_query=query, run_max_total_usd=budget,
                 run_interruptible=False, run_tail_s=10, run_poll_interval_s=BUDGET_POLL_S,
                 run_command=tiny_command(step_seconds=0.5))
    return done, budget, rate


@dataclass
class LongRun:
    sim: Sim
    tmp_path: Path
    future: concurrent.futures.Future


@pytest.fixture(scope="module", autouse=True)
def long_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LongRun]]:
    """The two runs that train for minutes start as the module starts, each on a simulator of its own, and go on
    while the module's other tests run: they mostly wait on the tiny trainer's steps, so the module takes about
    as long as the longer of them instead of the sum of all its tests."""
    if not IS_ROOT:  # their tests are skipped
        yield {}
        return
    tests = {"smoke_pass": "test_a_smoke_test_within_the_estimate_passes_and_reestimates_the_cost",
             "budget_stop": "test_a_budget_below_the_runs_cost_stops_it_within_one_poll"}
    jobs = {name: job for name, job in (("smoke_pass", smoke_pass_run), ("budget_stop", budget_stop_run))
            if selected_items(request, tests[name])}
    with contextlib.ExitStack() as stack:
        places = {name: tmp_path_factory.mktemp(name) for name in jobs}
        sims = {name: stack.enter_context(running_sim(places[name] / "state")) for name in jobs}
        # Entered after the simulators, so it is left first: its exit waits for both runs to end before either
        # simulator stops, also when a test failed early.
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(jobs))))
        yield {name: LongRun(sims[name], places[name], pool.submit(job, sims[name], places[name]))
               for name, job in jobs.items()}


@needs_root
def test_a_smoke_test_within_the_estimate_passes_and_reestimates_the_cost(long_runs: dict[str, LongRun]) -> None:
    """The re-estimate after the smoke test (spend so far, plus the measured step time over the run's steps
    and the end of the run, at the instance's rate) against what vastsim's ledger charged the instance."""
    run = long_runs["smoke_pass"]
    sim, tmp_path = run.sim, run.tmp_path
    done = run.future.result(timeout=900)
    assert done.returncode == 0, failure_excerpt(done.stdout)
    smoke = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert smoke["verdict"] in ("pass", "warn"), smoke["checks"]
    memory = next(check for check in smoke["checks"] if check["name"] == "gpu_memory_allocated")
    assert memory["verdict"] == "pass"
    watch = json.loads((tmp_path / "results" / "watch.json").read_text())
    charged = ledger_row(sim, watch["instance"]["id"])["cost"]
    # The re-estimate adds run_tail_s (the user's guess of how long the end takes) to the spend so far and the
    # measured step time over the run's steps; how fast this controller pulls and destroys is not what is checked,
    # so the guess is swapped for the end as it was (run's end -> the spend record written after the destroy).
    reestimate = smoke["reestimate"]
    run_ended = int((tmp_path / "results" / "STARTED_AT").read_text()) + watch["run_elapsed_s"]
    tail_s = json.loads((tmp_path / "results" / "spend.json").read_text())["at"] - run_ended
    assert 0 < tail_s < 120, tail_s
    hours = reestimate["total_hours"] - TAIL_S / 3600 + tail_s / 3600
    reestimated = reestimate["compute_usd"] * hours / reestimate["total_hours"]
    assert abs(reestimated / charged - 1) <= 0.10, (reestimated, charged, tail_s, reestimate)
    assert watch["triage"]["spent_usd"] is not None and watch["triage"]["eta_s"] is not None


@needs_root
def test_a_budget_below_the_runs_cost_stops_it_within_one_poll(long_runs: dict[str, LongRun]) -> None:
    run = long_runs["budget_stop"]
    sim, tmp_path = run.sim, run.tmp_path
    done, budget, rate = run.future.result(timeout=900)
    assert done.returncode != 0 and "The run did not complete: budget:" in done.stdout, failure_excerpt(done.stdout)
    watch = json.loads((tmp_path / "results" / "watch.json").read_text())
    assert watch["outcome"] == "budget"
    charged = ledger_row(sim, watch["instance"]["id"])["cost"]
    assert charged <= budget + rate * BUDGET_POLL_S, (charged, budget, rate)
    assert charged >= budget - rate * (BUDGET_POLL_S + 10 + 30), "stopped near the budget, not long before it"
    assert list((tmp_path / "results" / "checkpoints").glob("checkpoint-*")), "checkpoints home"
    assert ledger_open(tmp_path) == [], "nothing billing"


def estimate_base_gib(job: dict) -> float:
    return estimate(job_from_params(job))["gpu_mem_gib"]["base"]
