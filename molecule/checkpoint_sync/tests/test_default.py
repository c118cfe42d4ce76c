"""mlops.vast.checkpoint_sync after a finished run: the newest checkpoint is home and matches the host's."""

import hashlib
import os
from pathlib import Path

OUTPUT = "/workspace/run/output"
LOCAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "results" / "checkpoints"


def newest_on_host(host):
    names = host.check_output(f"ls -1 {OUTPUT} | grep '^checkpoint-'").split()
    return max(names, key=lambda name: int(name.rsplit("-", 1)[1]))


def test_the_run_left_four_checkpoints_on_the_host(host):
    assert host.check_output(f"ls -1 {OUTPUT} | grep -c '^checkpoint-'") == "4"
    assert newest_on_host(host) == "checkpoint-200"


def test_the_newest_checkpoint_is_home_and_matches_the_hosts_checksums(host):
    newest = newest_on_host(host)
    local_dir = LOCAL / newest
    assert local_dir.is_dir()
    remote = host.check_output(f"cd {OUTPUT}/{newest} && find . -type f | sort | xargs sha256sum")
    remote_sums = {line.split()[1]: line.split()[0] for line in remote.splitlines()}
    local_sums = {f"./{p.relative_to(local_dir)}": hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in local_dir.rglob("*") if p.is_file()}
    assert local_sums == remote_sums
    assert "./model.json" in local_sums


def test_only_the_newest_three_are_kept_locally():
    assert sorted(p.name for p in LOCAL.iterdir()) == ["checkpoint-100", "checkpoint-150", "checkpoint-200"]
