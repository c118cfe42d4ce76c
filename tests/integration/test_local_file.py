"""mlops.vast.local_file, through ansible-playbook: the run's own files on the controller, written, made and removed
in Ansible's worker (no module run), idempotent, with check mode, diff and clear errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from tests.integration.ansible_run import local_inventory
from tests.integration.ansible_run import run_steps as run_module_steps


def run_steps(tmp_path: Path, steps: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    return run_module_steps(tmp_path, "mlops.vast.local_file", steps, local_inventory(tmp_path))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_file_is_written_once_then_unchanged_and_check_mode_and_diff_say_what_would_change(tmp_path: Path) -> None:
    record = tmp_path / "results" / "spend.json"
    record.parent.mkdir()
    args = {"path": str(record), "content": "first\n"}
    results, _ = run_steps(tmp_path, [
        {"args": args},
        {"args": args},
        {"args": {**args, "content": "second\n"}, "check_mode": True, "diff": True},
        {"args": {**args, "content": "second\n"}, "diff": True},
        {"args": {**args, "content": "second\n", "mode": "0600"}},
    ])
    written, again, checked, changed, private = results
    assert written["changed"] and written["state"] == "file" and written["size"] == len("first\n")
    assert not again["changed"], "the same content and mode must report changed=false"
    assert checked["changed"] and checked["diff"]["before"] == "first\n" and checked["diff"]["after"] == "second\n"
    assert changed["changed"] and changed["diff"]["before"] == "first\n"
    assert private["changed"], "a new mode alone is a change"
    assert record.read_text() == "second\n"
    assert mode_of(record) == 0o600
    assert [p.name for p in record.parent.iterdir()] == ["spend.json"], "no temporary file may be left behind"


def test_check_mode_writes_nothing_and_data_is_written_as_json(tmp_path: Path) -> None:
    data = {"label": "exp-1", "cost": 0.25, "ids": [3, 1]}
    results, _ = run_steps(tmp_path, [
        {"args": {"path": str(tmp_path / "dry.json"), "content": data}, "check_mode": True},
        {"args": {"path": str(tmp_path / "data.json"), "content": data}},
    ])
    dry, wet = results
    assert dry["changed"] and not (tmp_path / "dry.json").exists()
    assert wet["changed"] and json.loads((tmp_path / "data.json").read_text()) == data
    assert mode_of(tmp_path / "data.json") == 0o644


def test_directories_are_made_with_their_parents_and_removed_with_what_is_in_them(tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b" / "checkpoints"
    outside = tmp_path / "kept"
    outside.mkdir()
    (outside / "precious").write_text("x")
    link = tmp_path / "link-to-kept"
    link.symlink_to(outside)
    results, _ = run_steps(tmp_path, [
        {"args": {"path": str(nested), "state": "directory"}},
        {"args": {"path": str(nested), "state": "directory"}},
        {"args": {"path": str(tmp_path / "a"), "state": "absent"}, "check_mode": True},
        {"args": {"path": str(tmp_path / "a"), "state": "absent"}},
        {"args": {"path": str(tmp_path / "a"), "state": "absent"}},
        {"args": {"path": str(link), "state": "absent"}},
    ])
    made, again, would_remove, removed, gone, unlinked = results
    assert made["changed"] and not again["changed"]
    assert would_remove["changed"] and removed["changed"] and not gone["changed"]
    assert not (tmp_path / "a").exists()
    assert unlinked["changed"] and not link.is_symlink()
    assert (outside / "precious").read_text() == "x", "removing a link must never remove what it points to"


def test_wrong_input_fails_with_one_clear_message_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("keep")
    missing_parent = tmp_path / "nowhere" / "x.json"
    results, output = run_steps(tmp_path, [
        {"args": {"path": str(missing_parent), "content": "x"}},
        {"args": {"path": str(tmp_path / "a-dir"), "content": "x"}},
        {"args": {"path": str(tmp_path / "a-file"), "state": "directory"}},
        {"args": {"path": str(tmp_path / "m.json"), "content": "x", "mode": "rw-r--r--"}},
        {"args": {"path": str(tmp_path / "n.json")}},
        {"args": {"path": str(tmp_path / "d"), "state": "directory", "content": "x"}},
        {"args": {"path": str(tmp_path / "o.json"), "content": 42}},
        {"args": {"path": str(tmp_path / "p.json"), "content": "x", "stat": "file"}},
    ])
    expected = [
        "does not exist: make it first",
        "is a directory: give the path of the file",
        "exists and is not a directory",
        "mode must be an octal string",
        "content is required with state=file",
        "content is only for state=file",
        "content must be text, a dict or a list, got int",
        "stat",
    ]
    for result, words in zip(results, expected, strict=True):
        assert result["failed"], result
        assert words in result["msg"], (words, result["msg"])
    assert "Traceback" not in output
    assert not missing_parent.parent.exists()
    assert (tmp_path / "a-file").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(("home", "ansible", "local", "steps",
                                                                              "results"))) == ["a-dir", "a-file"]
    assert os.listdir(tmp_path / "a-dir") == []


def test_relative_paths_start_from_the_playbook_directory_and_check_mode_assumes_the_directory_made(
        tmp_path: Path) -> None:
    results, _ = run_steps(tmp_path, [
        {"args": {"path": "rel/out", "state": "directory"}},
        {"args": {"path": "rel/out/record.json", "content": "r", "mode": 420}},
        {"args": {"path": str(tmp_path / "later" / "x.json"), "content": "x"}, "check_mode": True},
    ])
    made, written, checked = results
    assert made["changed"] and written["changed"], results
    # The playbook (steps.yml) is in tmp_path: that is where a relative path lands, whatever the current directory.
    assert (tmp_path / "rel" / "out" / "record.json").read_text() == "r"
    assert mode_of(tmp_path / "rel" / "out" / "record.json") == 0o644, "an unquoted 0644 (the number 420) is 0644"
    assert checked["changed"] and not checked.get("failed"), checked
    assert not (tmp_path / "later").exists()
