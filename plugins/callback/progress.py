# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: progress
type: notification
short_description: Write the phase of a training run to a small JSON file as the playbook goes
version_added: 0.1.0
description:
  - Writes the run's phase (C(checking), C(renting), C(setup), C(smoke), C(launching), C(training),
    C(recovering), C(teardown), C(done)), the task and play being run, and at the end the outcome, to the
    JSON file O(progress_file) names, replacing it atomically (a temporary file and a rename) on every play
    start, task start and at the end of the playbook. Readers never see half a file.
  - The phase comes from the role being run (C(mlops.vast.provision) renting, C(mlops.vast.setup) setup,
    C(mlops.vast.smoke_test) smoke, C(mlops.vast.train) launching, C(mlops.vast.watch) training,
    C(mlops.vast.teardown) teardown), from the recovery plays of C(playbooks/train_recovery.yml)
    (recovering, once one of their tasks really runs), and is C(checking) before any of them.
  - The Python API (C(mlops_vast.train)), the C(mlops-vast) command and the sweep scheduler enable it for
    each run and read the file together with the watch's C(progress-watch.json) to show live progress.
  - It does nothing unless O(progress_file) is set, and costs one small file write per task.
  - The file is one JSON object with the keys C(phase), C(task) and C(play) (names), C(outcome) (null until the
    end, then C(completed) or C(failed)), C(started_at) and C(updated_at) (Unix seconds), C(phases) (each phase
    entered so far, with the time it was first entered) and C(tasks) (how many tasks have started).
author:
  - mlops.vast developers (@mlops-vast)
requirements:
  - Enabled in C(callbacks_enabled) (for example E(ANSIBLE_CALLBACKS_ENABLED=mlops.vast.progress)).
options:
  progress_file:
    description:
      - The JSON file to keep up to date. Its directory is created when missing.
      - Unset, the callback writes nothing.
    type: path
    env:
      - name: MLOPS_VAST_PROGRESS_FILE
    ini:
      - section: mlops_vast
        key: progress_file
"""

EXAMPLES = r"""
# ANSIBLE_CALLBACKS_ENABLED=mlops.vast.progress MLOPS_VAST_PROGRESS_FILE=results/exp-1/progress.json \
#   ansible-playbook playbooks/train.yml -e @my-run.yml
# Then, from anywhere: watch -n1 cat results/exp-1/progress.json
"""

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase
from ansible_collections.mlops.vast.plugins.plugin_utils import file_content

PHASES = ("checking", "renting", "setup", "smoke", "launching", "training", "recovering", "teardown", "done")
ROLE_PHASES = {
    "provision": "renting",
    "setup": "setup",
    "smoke_test": "smoke",
    "train": "launching",
    "watch": "training",
    "teardown": "teardown",
}
RECOVERY_PLAY = "Recovery:"


def role_phase(role_name: str | None) -> str | None:
    """The phase a role stands for (``mlops.vast.setup`` or ``setup``), or None."""
    if not role_name:
        return None
    return ROLE_PHASES.get(role_name.rsplit(".", 1)[-1])


def write_atomic(path: str, data: dict[str, Any]) -> None:
    """``path`` holds ``data`` as JSON, whole: written next to it, then renamed over it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    file_content.write_atomic(path, (json.dumps(data, sort_keys=True) + "\n").encode("utf-8"))


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "mlops.vast.progress"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display: Any = None, options: Any = None) -> None:
        super().__init__(display=display, options=options)
        self._path: str | None = None
        self._state: dict[str, Any] = {"phase": "checking", "task": None, "play": None, "outcome": None,
                                       "started_at": round(time.time(), 3), "updated_at": None,
                                       "phases": {}, "tasks": 0}
        self._in_recovery = False
        self._pending_recovery = False
        self._watching_again = False  # this recovery play's watch of the relaunched run has begun

    def set_options(self, task_keys: Any = None, var_options: Any = None, direct: Any = None) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._path = self.get_option("progress_file") or None

    # ------------------------------------------------------------------------------------------ writing

    def _write(self, **changes: Any) -> None:
        phase = changes.get("phase")
        if phase and phase not in self._state["phases"]:
            # When each phase was first entered: how long renting, setup and the smoke test took, and when the run
            # began training (what bench/fleet.py measures).
            self._state["phases"][phase] = round(time.time(), 3)
        self._state.update(changes)
        if not self._path:
            return
        self._state["updated_at"] = round(time.time(), 3)
        try:
            write_atomic(self._path, self._state)
        except OSError as exc:  # progress is a nicety: it never fails the run
            self._display.warning(f"mlops.vast.progress: cannot write {self._path}: {exc}")
            self._path = None

    # ------------------------------------------------------------------------------------------ events

    def v2_playbook_on_play_start(self, play: Any) -> None:
        name = play.get_name().strip()
        self._in_recovery = name.startswith(RECOVERY_PLAY)
        self._watching_again = False
        self._write(play=name)

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        role = getattr(task, "_role", None)
        phase = role_phase(role.get_name() if role is not None else None)
        if phase is not None and ((getattr(role, "_from_files", None) or {}).get("tasks") or "main") not in (
                "main", "main.yml"):
            # One task file of a role (train.yml checks run_index_url with the setup role's check before renting)
            # is not that role's phase.
            phase = None
        changes: dict[str, Any] = {"task": task.get_name().strip(), "tasks": self._state["tasks"] + 1}
        if self._in_recovery:
            # A recovery round's plays start whether or not a round is wanted (their tasks skip): the phase is
            # recovering once one of their tasks really runs (below); the watch of a relaunched run is training.
            # The watch's own helpers (the checkpoint pull it prepares) are part of that training, not a new round.
            if phase == "training":
                changes["phase"] = phase
                self._watching_again = True
            elif self._state["phase"] != "recovering" and not self._watching_again:
                self._pending_recovery = True
        elif phase is not None:
            changes["phase"] = phase
        self._write(**changes)

    def _ran(self, result: Any) -> None:
        if not (self._in_recovery and self._pending_recovery):
            return
        facts = (getattr(result, "_result", None) or {}).get("ansible_facts") or {}
        if "recovery_wanted" in facts and not _truthy(facts["recovery_wanted"]):
            return  # the round's decision, saying no round is wanted
        self._pending_recovery = False
        self._write(phase="recovering")

    def v2_runner_on_ok(self, result: Any) -> None:
        self._ran(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._ran(result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        failed = any(stats.summarize(host).get("failures") for host in stats.processed)
        self._write(phase="done", outcome="failed" if failed else "completed")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return bool(value)
