"""mlops.vast.smoke_test on a vastsim instance: the short run happened there, was judged and reported."""

import json
import os
from pathlib import Path

SMOKE = "/workspace/run/smoke"
RESULTS = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "results"


def test_the_short_run_logged_50_steps_on_the_host(host):
    log = host.file(f"{SMOKE}/smoke.log").content_string
    assert "'step': 50}" in log and "'step': 60}" not in log
    assert "'train_loss'" in log.splitlines()[-1]
    assert "Traceback" not in log


def test_its_output_went_to_the_smoke_directory_not_the_runs(host):
    assert host.file(f"{SMOKE}/output/checkpoint-50").is_directory
    assert not host.file("/workspace/run/output").exists


def test_the_report_on_the_host_says_healthy(host):
    report = json.loads(host.file(f"{SMOKE}/smoke.json").content_string)
    assert report["exit_code"] == 0 and report["steps"] == 50
    assert report["finite"] and not report["traceback"]
    assert report["last_loss"] < report["first_loss"]
    assert report["seconds_per_step"] > 0


def test_the_report_came_home_to_the_controller(host):
    local = json.loads((RESULTS / "smoke.json").read_text())
    assert local["steps"] == 50 and local["exit_code"] == 0
