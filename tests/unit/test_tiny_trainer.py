"""The example trainer (examples/tiny_trainer/train.py) honours the training contract.

It runs as a subprocess under the interpreter the simulated hosts use (/usr/bin/python3 where it
exists), so a dependency beyond the standard library, or a format drift the collection's parsers
would trip over, fails here first.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "tiny_trainer" / "train.py"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
TRACEBACK = "Traceback (most recent call last):"


def train(tmp_path: Path, *args: str, out: str = "out", timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(TRAIN), "--output_dir", str(tmp_path / out), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def hf_logs(stdout: str) -> list[dict]:
    """The per-step log lines, parsed the way the collection's HF parser may: ast.literal_eval."""
    return [ast.literal_eval(line) for line in stdout.splitlines() if line.startswith("{'loss'")]


def losses(stdout: str) -> list[float]:
    """Loss values read with a regex, which also takes the nan/inf a diverged run prints (as HF does)."""
    return [float(m) for m in re.findall(r"^\{'loss': ([^,}]+)", stdout, re.MULTILINE)]


def summary(stdout: str) -> dict | None:
    lines = [line for line in stdout.splitlines() if line.startswith("{'train_runtime'")]
    return ast.literal_eval(lines[-1]) if lines else None


def checkpoints(output_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output_dir.glob("checkpoint-*"))


def test_trains_for_real_and_logs_like_hugging_face(tmp_path):
    started = time.monotonic()
    proc = train(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 20  # 400 steps of a tiny model: fast enough for every smoke test
    assert TRACEBACK not in proc.stderr

    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    logs = hf_logs(proc.stdout)
    for line, log in zip(lines[:-1], logs, strict=True):
        assert repr(log) == line  # exactly a Python dict repr on its own line
    assert [log["step"] for log in logs] == list(range(10, 401, 10))
    for log in logs:
        assert list(log) == ["loss", "grad_norm", "learning_rate", "epoch", "step"]
        assert all(isinstance(v, (int, float)) for v in log.values())
    assert logs[-1]["loss"] < 0.3 * logs[0]["loss"]  # loss clearly goes down
    assert logs[-1]["learning_rate"] < logs[0]["learning_rate"]  # HF's linear decay

    done = summary(proc.stdout)
    assert proc.stdout.splitlines()[-1].startswith("{'train_runtime'")  # the completion marker comes last
    assert set(done) == {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
                         "epoch"}
    assert 0 < done["train_loss"] < logs[0]["loss"]
    assert done["epoch"] == logs[-1]["epoch"] > 1

    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss"]) for m in metrics] == [(log["step"], log["loss"]) for log in logs]


def test_checkpoints_at_save_steps_and_at_the_end(tmp_path):
    proc = train(tmp_path, "--max_steps", "120", "--save_steps", "50")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert checkpoints(out) == [50, 100, 120]
    for step in (50, 100, 120):
        state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert state["global_step"] == step
        assert [log["step"] for log in state["log_history"]] == list(range(10, step + 1, 10))
        for name in ("model.json", "optimizer.json", "rng_state.json"):
            assert json.loads((out / f"checkpoint-{step}" / name).read_text())
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]  # temp dirs were renamed into place


def test_save_total_limit_keeps_the_newest(tmp_path):
    proc = train(tmp_path, "--max_steps", "100", "--save_steps", "20", "--save_total_limit", "2")
    assert proc.returncode == 0, proc.stderr
    assert checkpoints(tmp_path / "out") == [80, 100]


def test_resume_from_a_middle_checkpoint_matches_an_uninterrupted_run(tmp_path):
    args = ["--max_steps", "200", "--save_steps", "50", "--report_reward"]
    full = train(tmp_path, *args, out="full")
    assert full.returncode == 0, full.stderr

    crashed = train(tmp_path, *args, "--crash_at_step", "130", out="part")
    assert crashed.returncode != 0
    assert checkpoints(tmp_path / "part") == [50, 100]
    resumed = train(tmp_path, *args, "--resume_from_checkpoint", str(tmp_path / "part" / "checkpoint-100"),
                    out="part")
    assert resumed.returncode == 0, resumed.stderr

    resumed_logs = hf_logs(resumed.stdout)
    assert resumed_logs[0]["step"] == 110  # continues from step 100, not from scratch
    assert resumed_logs == hf_logs(full.stdout)[-len(resumed_logs):]  # same losses, grad norms, rewards
    assert summary(resumed.stdout)["train_loss"] == summary(full.stdout)["train_loss"]
    for name in ("model.json", "trainer_state.json"):
        assert (tmp_path / "part" / "checkpoint-200" / name).read_text() == \
            (tmp_path / "full" / "checkpoint-200" / name).read_text()


def test_resume_latest_picks_the_newest_checkpoint(tmp_path):
    args = ["--max_steps", "100", "--save_steps", "20"]
    full = train(tmp_path, *args, out="full")
    crashed = train(tmp_path, *args, "--crash_at_step", "75")
    assert crashed.returncode != 0
    assert checkpoints(tmp_path / "out") == [20, 40, 60]
    resumed = train(tmp_path, *args, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint-60" in resumed.stderr
    assert hf_logs(resumed.stdout)[0]["step"] == 70
    assert hf_logs(resumed.stdout)[-1] == hf_logs(full.stdout)[-1]


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    cases = {"latest": "no checkpoint-*", str(tmp_path / "nowhere"): "not a directory"}
    broken = tmp_path / "out" / "checkpoint-10"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text("{not json")
    cases[str(broken)] = "not a usable checkpoint"
    for where, message in cases.items():
        if where == "latest":
            proc = train(tmp_path, "--resume_from_checkpoint", where, out="empty")
        else:
            proc = train(tmp_path, "--resume_from_checkpoint", where)
        assert proc.returncode != 0
        assert message in proc.stderr
        assert TRACEBACK not in proc.stderr  # a usage error, not a crash
        assert not hf_logs(proc.stdout)


def test_diverge_makes_loss_go_up(tmp_path):
    for max_steps in ("50", "400"):  # the smoke test's shortened run, and the first 50 steps of a full one
        proc = train(tmp_path, "--diverge", "--max_steps", max_steps, out=f"d{max_steps}")
        assert proc.returncode == 0, proc.stderr
        first, last = losses(proc.stdout)[0], losses(proc.stdout)[4]  # steps 10 and 50
        assert last != last or last > 10 * first  # NaN, or clearly up
    # the same short run without the switch goes down; the smoke args are appended, and the last one wins
    healthy = losses(train(tmp_path, "--max_steps", "400", "--max_steps", "50", out="ok").stdout)
    assert len(healthy) == 5 and healthy[-1] < healthy[0]


def test_nan_at_step_logs_as_the_hugging_face_trainer_does(tmp_path):
    """From --nan_at_step every step's loss is NaN; with HF's logging_nan_inf_filter (its default) a window of them
    logs 0.0 beside a NaN grad_norm, and without it nan. The collection's log reader takes neither for a sane loss."""
    from ansible_collections.mlops.vast.plugins.filter.training_log import training_log

    filtered = train(tmp_path, "--max_steps", "60", "--nan_at_step", "35", out="f")
    assert filtered.returncode == 0, filtered.stderr
    logs = [(r["loss"], r["grad_norm"]) for r in training_log(filtered.stdout)["records"]]
    assert all(grad == grad for _, grad in logs[:3]) and logs[0][0] > 0  # steps 10-30: sane
    assert logs[3][0] > 0 and logs[3][1] != logs[3][1]  # step 40: the window's average, a NaN grad_norm
    assert [loss for loss, _ in logs[4:]] == [0.0, 0.0] and all(grad != grad for _, grad in logs[4:])
    assert training_log(filtered.stdout)["finite"] is False
    plain = train(tmp_path, "--max_steps", "60", "--nan_at_step", "35", "--logging_nan_inf_filter", "false", out="p")
    assert all(loss != loss for loss in losses(plain.stdout)[3:]) and training_log(plain.stdout)["finite"] is False
    assert training_log(train(tmp_path, "--max_steps", "60", out="ok").stdout)["finite"] is True


def test_crash_at_step_leaves_a_traceback_and_the_earlier_checkpoints(tmp_path):
    proc = train(tmp_path, "--crash_at_step", "30", "--save_steps", "10")
    assert proc.returncode != 0
    assert any(line.startswith(TRACEBACK) for line in proc.stderr.splitlines())
    assert "step 30" in proc.stderr
    assert checkpoints(tmp_path / "out") == [10, 20]
    assert [log["step"] for log in hf_logs(proc.stdout)] == [10, 20]
    assert summary(proc.stdout) is None


def test_hang_at_step_stays_alive_and_silent(tmp_path):
    log = tmp_path / "run.log"
    with log.open("w") as stdout:
        proc = subprocess.Popen([PYTHON, str(TRAIN), "--output_dir", str(tmp_path / "out"), "--hang_at_step", "20",
                                 "--logging_steps", "5"], cwd=tmp_path, stdout=stdout, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "'step': 15}" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        time.sleep(2)  # the remaining 385 steps would take well under this if it had not hung
        alive = proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert alive
    text = log.read_text()
    assert [entry["step"] for entry in hf_logs(text)] == [5, 10, 15]  # nothing at or beyond step 20
    assert summary(text) is None and TRACEBACK not in text


def test_report_reward_logs_a_rising_reward(tmp_path):
    proc = train(tmp_path, "--report_reward")
    assert proc.returncode == 0, proc.stderr
    logs = hf_logs(proc.stdout)
    rewards = [log["reward"] for log in logs]
    assert all(0 < r <= 1 for r in rewards)
    assert rewards[-1] > rewards[0] + 0.1
    assert list(logs[0]) == ["loss", "grad_norm", "learning_rate", "reward", "epoch", "step"]
    metrics = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[-1])["reward"] == rewards[-1]
    assert "reward" not in hf_logs(train(tmp_path, "--max_steps", "10", out="plain").stdout)[0]


def test_step_seconds_simulates_slow_steps(tmp_path):
    started = time.monotonic()
    proc = train(tmp_path, "--max_steps", "5", "--step_seconds", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 1.0
    assert summary(proc.stdout)["train_runtime"] >= 1.0
