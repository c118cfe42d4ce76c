"""Sealed checkpoints without a server: the manifest's checks, verifying real directories, the store's key
layout, and which checkpoints the fences leave to restore from."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.mlops.vast.plugins.module_utils import checkpoint_manifest as cm

RUN = "run-7"


def make_checkpoint(root: Path, step: int = 100) -> Path:
    """A checkpoint directory like a trainer's: a weight file over two hash chunks, a nested folder, JSON."""
    path = root / f"checkpoint-{step}"
    (path / "optimizer").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(cm.CHUNK * 2 + 12345))
    (path / "optimizer" / "state.pt").write_bytes(os.urandom(4096))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / "empty.txt").write_bytes(b"")
    return path


def good_manifest(**changes: Any) -> dict[str, Any]:
    manifest = {"format": 1, "run_id": RUN, "attempt": 2, "step": 400, "name": "checkpoint-400",
                "files": [{"path": "a/b.bin", "size": 3, "sha256": "0" * 64}], "sealed_at": 1767225600.5}
    manifest.update(changes)
    return manifest


# ---------------------------------------------------------------------------------------------- sealing

def test_seal_lists_every_file_with_size_and_sha256_and_writes_the_manifest_last(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path)
    manifest = cm.seal(path, RUN, 1, 100)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [cm.MANIFEST_NAME, "empty.txt", "model.safetensors", "optimizer", "trainer_state.json"]), \
        "no temporary file is left next to the manifest"
    on_disk = json.loads((path / cm.MANIFEST_NAME).read_text())
    assert cm.parse_manifest(on_disk) == manifest
    assert manifest["name"] == "checkpoint-100" and manifest["attempt"] == 1 and manifest["run_id"] == RUN
    by_path = {entry["path"]: entry for entry in manifest["files"]}
    assert set(by_path) == {"empty.txt", "model.safetensors", "optimizer/state.pt", "trainer_state.json"}
    weights = (path / "model.safetensors").read_bytes()
    assert by_path["model.safetensors"] == {"path": "model.safetensors", "size": len(weights),
                                            "sha256": hashlib.sha256(weights).hexdigest()}
    assert by_path["empty.txt"]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert cm.verify_dir(path, manifest) == []


def test_sealing_again_does_not_list_the_old_manifest(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path)
    cm.seal(path, RUN, 1, 100)
    again = cm.seal(path, RUN, 1, 100)
    assert cm.MANIFEST_NAME not in [entry["path"] for entry in again["files"]]


def test_sha256_file_reads_in_chunks_and_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "big"
    data = os.urandom(cm.CHUNK * 3 + 1)
    path.write_bytes(data)
    assert cm.sha256_file(path) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------- verifying

def test_one_corrupt_byte_is_a_sha256_mismatch_naming_the_file(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path)
    manifest = cm.seal(path, RUN, 1, 100)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[cm.CHUNK + 7] ^= 0x01  # inside the second chunk: every chunk is hashed
    weights.write_bytes(bytes(data))
    problems = cm.verify_dir(path, manifest)
    assert len(problems) == 1 and problems[0].startswith("model.safetensors: sha256 "), problems
    assert hashlib.sha256(bytes(data)).hexdigest() in problems[0]


def test_a_truncated_file_is_a_size_mismatch(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path)
    manifest = cm.seal(path, RUN, 1, 100)
    state = path / "optimizer" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert cm.verify_dir(path, manifest) == ["optimizer/state.pt: size 1000, the manifest says 4096"]


def test_a_missing_file_and_a_folder_in_its_place_are_reported_and_extra_files_ignored(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path)
    manifest = cm.seal(path, RUN, 1, 100)
    (path / "trainer_state.json").unlink()
    (path / "empty.txt").unlink()
    (path / "empty.txt").mkdir()
    (path / "added-by-restore.txt").write_text("mine")
    assert sorted(cm.verify_dir(path, manifest)) == ["empty.txt: not a regular file", "trainer_state.json: missing"]


def test_verify_dir_of_a_missing_directory_says_so(tmp_path: Path) -> None:
    assert cm.verify_dir(tmp_path / "nope", good_manifest()) == [f"{tmp_path / 'nope'}: no such directory"]


def test_verify_dir_checks_the_manifest_it_is_given(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        cm.verify_dir(tmp_path, good_manifest(format=2))


# ---------------------------------------------------------------------------------------------- parsing

def test_a_good_manifest_parses_from_text_bytes_and_objects_alike() -> None:
    manifest = good_manifest(extra_key_from_a_newer_writer=True)
    parsed = cm.parse_manifest(manifest)
    assert parsed == cm.parse_manifest(json.dumps(manifest)) == cm.parse_manifest(json.dumps(manifest).encode())
    assert "extra_key_from_a_newer_writer" not in parsed
    assert parsed["sealed_at"] == 1767225600.5 and parsed["files"][0]["path"] == "a/b.bin"


@pytest.mark.parametrize(("data", "words"), [
    ("{not json", "manifest is not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    ("[1, 2]", "must be a JSON object, got list"),
    (good_manifest(format=2), "format is 2; this reader knows format 1 only"),
    ({k: v for k, v in good_manifest().items() if k != "sealed_at"}, "manifest lacks sealed_at"),
    (good_manifest(run_id="a/b"), "run_id must be"),
    (good_manifest(run_id=""), "run_id must be"),
    (good_manifest(attempt=True), "manifest attempt must be a whole number >= 0, got True"),
    (good_manifest(step=-1), "manifest step must be a whole number >= 0, got -1"),
    (good_manifest(name="checkpoint-401"), "its step 400 makes it 'checkpoint-400'"),
    (good_manifest(sealed_at="yesterday"), "sealed_at must be a number"),
    (good_manifest(files=[]), "non-empty list"),
    (good_manifest(files=["a.bin"]), "files[0] must be an object"),
    (good_manifest(files=[{"path": "../escape", "size": 1, "sha256": "0" * 64}]), "must be relative and POSIX"),
    (good_manifest(files=[{"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}]), "must be relative and POSIX"),
    (good_manifest(files=[{"path": "a//b", "size": 1, "sha256": "0" * 64}]), "must be relative and POSIX"),
    (good_manifest(files=[{"path": "a\\b", "size": 1, "sha256": "0" * 64}]), "must be relative and POSIX"),
    (good_manifest(files=[{"path": cm.MANIFEST_NAME, "size": 1, "sha256": "0" * 64}]), "must not list itself"),
    (good_manifest(files=[{"path": "a", "size": -1, "sha256": "0" * 64}]), "size must be a whole number"),
    (good_manifest(files=[{"path": "a", "size": 1, "sha256": "A" * 64}]), "sha256 must be 64 lowercase hex"),
    (good_manifest(files=[{"path": "a", "size": 1, "sha256": "0" * 64}] * 2), "lists 'a' twice"),
    (good_manifest(files=[{"path": "a", "size": 1, "sha256": "0" * 64},
                          {"path": "a/b", "size": 1, "sha256": "0" * 64}]), "both as a file and as a folder"),
])
def test_a_bad_manifest_is_a_value_error_saying_what_is_wrong(data: Any, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        cm.parse_manifest(data)
    assert words in str(caught.value)


def test_fences_parse_and_an_attempt_resumes_only_from_an_earlier_one() -> None:
    assert cm.parse_fence('{"attempt": 3, "resumed_from": {"attempt": 1, "step": 50}, "at": 5}') == {
        "attempt": 3, "resumed_from": {"attempt": 1, "step": 50}, "at": 5.0}
    assert cm.parse_fence({"attempt": 1, "resumed_from": None, "at": 1.0})["resumed_from"] is None
    with pytest.raises(ValueError, match="attempt 3 cannot resume from attempt 3"):
        cm.parse_fence({"attempt": 3, "resumed_from": {"attempt": 3, "step": 1}, "at": 1.0})
    with pytest.raises(ValueError, match="resumed_from step"):
        cm.parse_fence({"attempt": 3, "resumed_from": {"attempt": 1}, "at": 1.0})
    with pytest.raises(ValueError, match="fence at"):
        cm.parse_fence({"attempt": 3, "resumed_from": None})


# ---------------------------------------------------------------------------------------------- keys

def test_keys_follow_the_layout_with_and_without_a_prefix() -> None:
    assert cm.checkpoint_prefix("", RUN, 2, 400) == "run-7/attempt-2/checkpoint-400/"
    assert cm.checkpoint_prefix("/team/ckpts/", RUN, 2, 400) == "team/ckpts/run-7/attempt-2/checkpoint-400/"
    assert cm.fence_key("p", RUN, 3) == "p/run-7/fences/attempt-3.json"
    assert not cm.attempt_prefix("p", RUN, 10).startswith(cm.attempt_prefix("p", RUN, 1))
    for bad in ("a/b", "..", ".hidden", "", "x" * 129):
        with pytest.raises(ValueError, match="run_id"):
            cm.run_prefix("p", bad)


# ---------------------------------------------------------------------------------------------- lineage

def ckpt(attempt: int, step: int) -> dict[str, Any]:
    return {"attempt": attempt, "step": step, "name": f"checkpoint-{step}"}


def fence(attempt: int, source: tuple[int, int] | None) -> dict[str, Any]:
    return {"attempt": attempt, "resumed_from": None if source is None else
            {"attempt": source[0], "step": source[1]}, "at": 0.0}


def order(published: list[dict[str, Any]], fences: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(entry["attempt"], entry["step"]) for entry in cm.restore_order(published, fences)]


def test_an_empty_store_has_nothing_to_restore() -> None:
    assert cm.restore_order([], []) == []
    assert cm.restore_order([], [fence(2, (1, 100))]) == []


def test_without_fences_the_newest_attempt_then_the_newest_step_comes_first() -> None:
    published = [ckpt(1, 300), ckpt(2, 150), ckpt(1, 100), ckpt(2, 250)]
    assert order(published, []) == [(2, 250), (2, 150), (1, 300), (1, 100)]
    assert all(a is b for a, b in zip(cm.restore_order(published, []),
                                      [published[3], published[1], published[0], published[2]], strict=True))


def test_a_zombie_attempt_publishing_after_it_was_replaced_is_never_offered() -> None:
    # Attempt 1 sealed 100 and 200 and was lost; attempt 2 resumed from 200 and sealed 250; then attempt 1's
    # host came back and published 300.
    published = [ckpt(1, 100), ckpt(1, 200), ckpt(2, 250), ckpt(1, 300)]
    fences = [fence(1, None), fence(2, (1, 200))]
    assert order(published, fences) == [(2, 250), (1, 200), (1, 100)]
    # Before attempt 2 published anything, the zombie's step is still out: 200 is what the lineage continued.
    assert order([ckpt(1, 100), ckpt(1, 200), ckpt(1, 300)], fences) == [(1, 200), (1, 100)]
    assert "step 300 came later" in cm.excluded_by(1, 300, fences)
    assert cm.excluded_by(1, 200, fences) is None


def test_an_attempt_passed_over_is_out_entirely_and_a_fresh_start_drops_all_before_it() -> None:
    published = [ckpt(1, 100), ckpt(2, 300), ckpt(2, 400), ckpt(3, 150)]
    # Attempt 3 went back to attempt 1 (attempt 2's checkpoints were corrupt when it started).
    passed_over = [fence(2, (1, 100)), fence(3, (1, 100))]
    assert order(published, passed_over) == [(3, 150), (1, 100)]
    assert "passing over attempt 2" in cm.excluded_by(2, 300, passed_over)
    fresh = [fence(2, (1, 100)), fence(3, None)]
    assert order(published, fresh) == [(3, 150)]
    assert "started fresh" in cm.excluded_by(1, 100, fresh)


def test_a_fence_through_a_middle_attempt_leaves_the_older_to_that_attempts_fence() -> None:
    published = [ckpt(1, 100), ckpt(1, 200), ckpt(2, 300), ckpt(3, 400)]
    # Attempt 3 continued attempt 2; attempt 2's own fence (resumed from 1@100) decides about attempt 1.
    assert order(published, [fence(3, (2, 300)), fence(2, (1, 100))]) == [(3, 400), (2, 300), (1, 100)]
    # Without attempt 2's fence, nothing is known against attempt 1's later step.
    assert order(published, [fence(3, (2, 300))]) == [(3, 400), (2, 300), (1, 200), (1, 100)]


def test_fences_that_disagree_keep_the_lower_cut() -> None:
    published = [ckpt(1, 100), ckpt(1, 200), ckpt(1, 300)]
    assert order(published, [fence(2, (1, 300)), fence(3, (1, 100))]) == [(1, 100)]
    assert order(published, [fence(2, (1, 100)), fence(3, (1, 300))]) == [(1, 100)]


def test_a_fence_never_excludes_its_own_attempt_or_later_ones() -> None:
    published = [ckpt(2, 50), ckpt(2, 500), ckpt(3, 10)]
    assert order(published, [fence(2, None), fence(3, (2, 500))]) == [(3, 10), (2, 500), (2, 50)]
