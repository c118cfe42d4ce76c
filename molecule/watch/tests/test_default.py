"""mlops.vast.watch (the role) on a finished run: the outcome and triage bundle are in watch.json on the
controller, and the newest checkpoints were pulled while it watched."""

import json
import os
from pathlib import Path

RESULTS = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "results"


def test_the_watch_says_the_run_completed_with_its_summary():
    watch = json.loads((RESULTS / "watch.json").read_text())
    assert watch["outcome"] == "completed", watch["msg"]
    assert watch["triage"]["summary"] is True and watch["triage"]["exit_code"] == 0
    assert watch["triage"]["step"] == 200
    assert watch["instance"]["gone"] is None and watch["instance"]["api_polls"] >= 1


def test_the_newest_checkpoints_were_pulled():
    assert sorted(p.name for p in (RESULTS / "checkpoints").iterdir()) == [
        "checkpoint-100", "checkpoint-150", "checkpoint-200"]


def test_the_run_is_still_on_the_host(host):
    assert host.file("/workspace/run/EXIT_CODE").content_string.strip() == "0"
