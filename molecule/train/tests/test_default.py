"""mlops.vast.train on a vastsim instance: one run in its tmux session, its files, launched once."""

RUN = "/workspace/run"
SESSION = "run_molecule-train"


def test_the_tmux_session_exists_and_is_the_only_one(host):
    assert host.run(f"tmux has-session -t {SESSION}").rc == 0
    assert host.check_output("tmux list-sessions -F '#S'").split() == [SESSION]


def test_status_md_and_run_log_exist(host):
    status = host.file(f"{RUN}/STATUS.md")
    assert status.is_file and f"`{SESSION}`" in status.content_string and "molecule-train" in status.content_string
    assert host.file(f"{RUN}/run.log").is_file
    assert host.file(f"{RUN}/run.sh").mode & 0o111


def test_the_run_is_going_and_has_not_ended(host):
    assert not host.file(f"{RUN}/EXIT_CODE").exists
    # It logs a line every 10 steps; it has logged some by now.
    assert "'step': 10}" in host.file(f"{RUN}/run.log").content_string


def test_the_second_launch_did_not_start_a_second_run(host):
    # Exactly one trainer process, started once: one STARTED_AT, no resume line, steps without restart.
    assert host.check_output("pgrep -fc '^python3 train.py'") == "1"
    assert len(host.file(f"{RUN}/STARTED_AT").content_string.split()) == 1
    log = host.file(f"{RUN}/run.log").content_string
    assert "mlops.vast: resuming" not in log
    steps = [int(line.split("'step': ")[1].rstrip("}")) for line in log.splitlines() if "'step': " in line]
    assert steps == list(range(10, 10 * len(steps) + 1, 10))
