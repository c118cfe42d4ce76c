"""VAST_API_KEY_FILE in the collection's key resolution, and the Python API's key handling (never in the
environment ansible-runner records)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.mlops.vast.plugins.module_utils import api_client as api
from ansible_collections.mlops.vast.plugins.module_utils import errors

from mlops_vast import _keys

SECRET = "sk-file-key-0123456789abcdef"


def test_key_file_comes_after_the_variable_and_before_the_cli_files(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "config"
    (config / "vastai").mkdir(parents=True)
    (config / "vastai" / "vast_api_key").write_text("xdg\n")
    key_file = tmp_path / "key"
    key_file.write_text(f"  {SECRET}\n")
    env = {"XDG_CONFIG_HOME": str(config), "VAST_API_KEY_FILE": str(key_file)}
    assert api.resolve_api_key(None, env) == (SECRET, "VAST_API_KEY_FILE")
    assert api.resolve_api_key(None, {**env, "VAST_API_KEY": "envkey"}) == ("envkey", "VAST_API_KEY")
    assert api.resolve_api_key("opt", env) == ("opt", "the api_key option")
    assert api.resolve_api_key(None, {"XDG_CONFIG_HOME": str(config)})[0] == "xdg"


@pytest.mark.parametrize("content", [None, "", "two\nlines"])
def test_a_named_key_file_that_is_missing_or_bad_is_an_error_not_a_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".vast_api_key").write_text("legacy\n")  # must not be used instead
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(errors.VastConfigError, match="VAST_API_KEY_FILE") as raised:
        api.resolve_api_key(None, {"VAST_API_KEY_FILE": str(key_file)})
    assert "two" not in str(raised.value) and "lines" not in str(raised.value)


def test_the_package_resolves_keys_in_the_collections_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config" / "vastai").mkdir(parents=True)
    env = {"HOME": str(home)}
    assert _keys.resolve_api_key(env) is None
    (home / ".vast_api_key").write_text("legacy\n")
    assert _keys.resolve_api_key(env) == "legacy"
    (home / ".config" / "vastai" / "vast_api_key").write_text("xdg\n")
    assert _keys.resolve_api_key(env) == "xdg"
    (tmp_path / "f").write_text("fromfile\n")
    assert _keys.resolve_api_key({**env, "VAST_API_KEY_FILE": str(tmp_path / "f")}) == "fromfile"
    assert _keys.resolve_api_key({**env, "VAST_API_KEY_FILE": str(tmp_path / "f"), "VAST_API_KEY": "e"}) == "e"


def test_the_key_goes_to_a_private_file_and_leaves_the_recorded_environment(tmp_path: Path) -> None:
    env = {"VAST_API_KEY": SECRET, "PATH": "/bin", "OTHER": "x"}
    with _keys.KeyFile(SECRET) as key_file:
        path = Path(key_file.path)
        assert path.read_text().strip() == SECRET
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(path.parent).st_mode & 0o777 == 0o700
        scrubbed = _keys.scrub_env(env, key_file.path)
        assert "VAST_API_KEY" not in scrubbed and scrubbed["VAST_API_KEY_FILE"] == str(path)
        assert SECRET not in json.dumps(scrubbed)
        assert scrubbed["OTHER"] == "x"
    assert not path.exists() and not path.parent.exists()


def _wait_gone(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not path.exists()


def test_a_killed_owner_leaves_no_key_file_once_nothing_started_with_it_runs(tmp_path: Path) -> None:
    """SIGKILL the process that wrote the key file (no close, no finally): its janitor removes the file and the
    call's other private directory, but only after the last process started with VAST_API_KEY_FILE has ended."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    owner_code = (
        "import os, subprocess, sys, time\n"
        "from mlops_vast import _keys\n"
        f"key = _keys.KeyFile({SECRET!r}, also=[{str(scratch)!r}])\n"
        "env = _keys.scrub_env(os.environ, key.path)\n"
        "user = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], env=env,\n"
        "                        start_new_session=True)\n"
        "print(key.path, user.pid, flush=True)\n"
        "time.sleep(60)\n")
    owner = subprocess.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(tmp_path)})
    user_pid = 0
    try:
        assert owner.stdout is not None
        path_text, pid_text = owner.stdout.readline().split()
        key_path, user_pid = Path(path_text), int(pid_text)
        assert key_path.read_text().strip() == SECRET
        owner.kill()
        owner.wait(timeout=10)
        # The process that still runs with the key file (a playbook tearing down) keeps it.
        assert not _wait_gone(key_path, 3)
        assert scratch.exists()
        os.kill(user_pid, signal.SIGKILL)
        assert _wait_gone(key_path.parent, 15), "the key file outlived everything that used it"
        assert not scratch.exists(), "the key's directory went before the call's other private directory"
    finally:
        with contextlib.suppress(ProcessLookupError):
            owner.kill()
        if user_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(user_pid, signal.SIGKILL)
        owner.wait(timeout=10)


def test_a_key_file_handed_over_stays_while_a_process_started_with_it_runs(tmp_path: Path) -> None:
    """After a Ctrl-C the API leaves its teardowns running: hand_over() keeps the file for them (close() would
    remove it under them), and the janitor removes it once the last of them has ended."""
    key_file = _keys.KeyFile(SECRET, also=[tmp_path / "scratch"])
    user = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env=_keys.scrub_env(os.environ, key_file.path), start_new_session=True)
    try:
        key_path = Path(key_file.path)
        key_file.hand_over()
        assert not _wait_gone(key_path, 3), "handed over, the file went while a process started with it ran"
    finally:
        user.kill()
        user.wait(timeout=10)
    assert _wait_gone(key_path.parent, 15), "the key file outlived the process that used it"


def test_scrub_env_without_a_key_removes_both_names() -> None:
    scrubbed = _keys.scrub_env({"VAST_API_KEY": SECRET, "VAST_API_KEY_FILE": "/x"}, None)
    assert "VAST_API_KEY" not in scrubbed and "VAST_API_KEY_FILE" not in scrubbed


def test_secrets_found_in_a_tree(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "clean.txt").write_text("nothing")
    assert _keys.files_containing(tmp_path, SECRET) == []
    (tmp_path / "a" / "leak.bin").write_bytes(b"\0\1" + SECRET.encode() + b"\0")
    assert _keys.files_containing(tmp_path, SECRET) == [tmp_path / "a" / "leak.bin"]


def test_the_package_names_the_variable_of_a_key_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"VAST_API_KEY_FILE names .*/missing, which cannot be read \(No such file"):
        _keys.resolve_api_key({"VAST_API_KEY_FILE": str(tmp_path / "missing")})
