"""The example trainer's in-place saves (--save_mode inplace), as Hugging Face's Trainer saves: straight into
checkpoint-<step>/, trainer_state.json last, so a kill mid-save leaves half a checkpoint that looks like one.
Watched from outside while it runs, killed with SIGKILL mid-save, and resumed: the resumed run must end bit
for bit where an uninterrupted one does, and the checkpoint agent must never offer the half-written one."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "tiny_trainer" / "train.py"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
FILES = ["model.json", "optimizer.json", "rng_state.json", "trainer_state.json"]  # in the order they are written
ARGS = ["--max_steps", "120", "--save_steps", "40", "--logging_steps", "10", "--seed", "7"]
FILE_SECONDS = 0.15


def start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, str(TRAIN), "--output_dir", str(out), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def train(out: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([PYTHON, str(TRAIN), "--output_dir", str(out), *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def listing(path: Path) -> frozenset[str]:
    try:
        return frozenset(os.listdir(path))
    except FileNotFoundError:
        return frozenset()


def half_written(checkpoint: Path) -> bool:
    names = listing(checkpoint)
    return "model.json" in names and "trainer_state.json" not in names


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def kill_mid_save(out: Path, step: int, *args: str) -> None:
    """Start a run and SIGKILL it while it writes checkpoint-<step>: after its first file, before its last."""
    proc = start(out, *args)
    checkpoint = out / f"checkpoint-{step}"
    try:
        deadline = time.monotonic() + 60
        while not half_written(checkpoint):
            assert proc.poll() is None, f"the run ended before checkpoint-{step} was half written: {proc.stderr}"
            assert time.monotonic() < deadline, f"checkpoint-{step} was never seen half written"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL


def watch_save(out: Path, step: int, *args: str) -> tuple[dict[str, float], list[frozenset[str]], set[str]]:
    """Run to the end while watching checkpoint-<step>: when each file first appeared, every distinct listing
    seen, and every name ever seen in the output directory."""
    proc = start(out, *args)
    checkpoint = out / f"checkpoint-{step}"
    first_seen: dict[str, float] = {}
    seen: list[frozenset[str]] = []
    names: set[str] = set()
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the run did not end"
            now, current = time.monotonic(), listing(checkpoint)
            for name in current:
                first_seen.setdefault(name, now)
            if current and (not seen or seen[-1] != current):
                seen.append(current)
            names |= listing(out)
            time.sleep(0.005)
        _stdout, stderr = proc.communicate(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode == 0, stderr
    return first_seen, seen, names


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The uninterrupted run of each save mode, with the same arguments, made once."""
    made: dict[str, Path] = {}

    def run(mode: str) -> Path:
        if mode not in made:
            made[mode] = tmp_path_factory.mktemp(f"reference-{mode}") / "out"
            train(made[mode], *ARGS, "--save_mode", mode, "--save_file_seconds", str(FILE_SECONDS))
        return made[mode]

    return run


def test_inplace_writes_straight_into_the_checkpoint_with_trainer_state_last(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first_seen, seen, names = watch_save(out, 20, "--max_steps", "20", "--save_steps", "20", "--save_mode", "inplace",
                                         "--save_file_seconds", str(FILE_SECONDS))
    assert sorted(first_seen, key=first_seen.__getitem__) == FILES
    appeared = [first_seen[name] for name in FILES]
    assert all(later - earlier >= FILE_SECONDS / 2 for earlier, later in itertools.pairwise(appeared))
    # Readers do see the checkpoint without its trainer_state.json, and never that file before the others.
    assert any("model.json" in state and "trainer_state.json" not in state for state in seen)
    assert [state for state in seen if "trainer_state.json" in state] == [frozenset(FILES)]
    assert not any(name.startswith(".tmp-") for name in names)  # no staging directory: in place
    assert sorted(os.listdir(out / "checkpoint-20")) == sorted(FILES)


def test_atomic_saves_never_show_half_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first_seen, seen, _names = watch_save(out, 20, "--max_steps", "20", "--save_steps", "20", "--save_mode", "atomic",
                                          "--save_file_seconds", str(FILE_SECONDS))
    assert seen == [frozenset(FILES)]  # the directory appears whole, by one rename
    assert set(first_seen) == set(FILES)


def test_a_kill_mid_save_leaves_a_checkpoint_without_trainer_state(tmp_path: Path) -> None:
    out = tmp_path / "out"
    kill_mid_save(out, 80, *ARGS, "--save_mode", "inplace", "--save_file_seconds", str(FILE_SECONDS))
    assert sorted(os.listdir(out / "checkpoint-40")) == sorted(FILES)
    half = listing(out / "checkpoint-80")
    assert "model.json" in half and "trainer_state.json" not in half
    assert not (out / "checkpoint-120").exists()
    # "latest" is the half-written one: a clear error, never a traceback, never a silent fresh start.
    proc = subprocess.run([PYTHON, str(TRAIN), "--output_dir", str(out), *ARGS, "--save_mode", "inplace",
                           "--resume_from_checkpoint", "latest"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "checkpoint-80 is not a usable checkpoint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode", ["inplace", "atomic"])
def test_a_run_killed_mid_save_and_resumed_ends_bit_for_bit_as_an_uninterrupted_one(
        tmp_path: Path, mode: str, reference: Callable[[str], Path]) -> None:
    args = [*ARGS, "--save_mode", mode, "--save_file_seconds", str(FILE_SECONDS)]

    out = tmp_path / "interrupted"
    if mode == "inplace":
        kill_mid_save(out, 80, *args)
    else:  # an atomic save is never half written: kill it while it waits on the slow disk after checkpoint-80
        proc = start(out, *args)
        try:
            deadline = time.monotonic() + 60
            while not (out / "checkpoint-80").exists():
                assert proc.poll() is None and time.monotonic() < deadline, "checkpoint-80 never appeared"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            stop(proc)
        assert not (out / "checkpoint-120").exists()
    resumed = train(out, *args, "--resume_from_checkpoint", str(out / "checkpoint-40"))
    assert f"Resuming from {out / 'checkpoint-40'} at step 40" in resumed.stderr

    for step in (80, 120):  # the rewritten checkpoint and the final one: every file, byte for byte
        for name in FILES:
            assert (out / f"checkpoint-{step}" / name).read_bytes() == \
                (reference(mode) / f"checkpoint-{step}" / name).read_bytes(), f"checkpoint-{step}/{name}"


def test_the_agent_resumes_from_the_newest_sealed_checkpoint_not_the_half_written_one(
        tmp_path: Path, reference: Callable[[str], Path]) -> None:
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    shutil.copy(REPO / "roles" / "train" / "files" / "checkpoint_agent.py", agent_dir)
    shutil.copy(REPO / "plugins" / "module_utils" / "checkpoint_manifest.py", agent_dir)
    done = tmp_path / "done"
    done.write_text("")

    def agent(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, str(agent_dir / "checkpoint_agent.py"), *args], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        return proc

    args = [*ARGS, "--save_mode", "inplace", "--save_file_seconds", str(FILE_SECONDS)]
    out = tmp_path / "out"
    kill_mid_save(out, 80, *args)

    agent("run", "--output", str(out), "--run-id", "tiny", "--until", str(done), "--interval", "30")
    assert (out / ".mlops-sealed").read_text() == "checkpoint-40\n"  # checkpoint-80 lacks trainer_state.json
    assert not (out / "checkpoint-80" / ".mlops-seal.json").exists()
    newest = agent("newest", "--output", str(out), "--clean").stdout.strip()
    assert newest == str(out / "checkpoint-40")
    assert not (out / "checkpoint-80").exists()  # the half-written leftover is gone before the resume

    train(out, *args, "--resume_from_checkpoint", newest)
    final = (out / "checkpoint-120" / "model.json").read_bytes()
    assert final == (reference("inplace") / "checkpoint-120" / "model.json").read_bytes()
    agent("run", "--output", str(out), "--run-id", "tiny", "--until", str(done), "--interval", "30")
    assert (out / ".mlops-sealed").read_text().split() == ["checkpoint-40", "checkpoint-80", "checkpoint-120"]
    for step in (40, 80, 120):
        agent("verify", str(out / f"checkpoint-{step}"))
