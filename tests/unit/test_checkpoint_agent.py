"""The host's checkpoint agent (roles/train/files/checkpoint_agent.py) as the host runs it: copied next to
checkpoint_manifest.py into a folder of its own and run as a process on real directories, with real HTTP
servers on loopback standing in for the store's presigned GETs and POSTs."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENT_SOURCE = REPO / "roles" / "train" / "files" / "checkpoint_agent.py"
MANIFEST_SOURCE = REPO / "plugins" / "module_utils" / "checkpoint_manifest.py"
MANIFEST = ".mlops-seal.json"
SEALED = ".mlops-sealed"
STATE = ".mlops-agent.json"
RUN = "run-42"
PREFIX = "mlops-vast/run-42/attempt-2/"


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent as the role ships it: the script with checkpoint_manifest.py next to it, nothing else."""
    folder = tmp_path_factory.mktemp("agent")
    shutil.copy(AGENT_SOURCE, folder / "checkpoint_agent.py")
    shutil.copy(MANIFEST_SOURCE, folder / "checkpoint_manifest.py")
    return folder


@pytest.fixture(scope="module")
def agent_module(agent_dir: Path) -> ModuleType:
    """The same copy imported in this process (it puts its own folder on sys.path; that is undone here)."""
    saved_path, had_manifest = list(sys.path), "checkpoint_manifest" in sys.modules
    spec = importlib.util.spec_from_file_location("checkpoint_agent_under_test", agent_dir / "checkpoint_agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved_path
        if not had_manifest:
            sys.modules.pop("checkpoint_manifest", None)
    return module


def agent(agent_dir: Path, *args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(agent_dir / "checkpoint_agent.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def make_checkpoint(out: Path, name: str, *, marker: str | None = "trainer_state.json", size: int = 3000) -> Path:
    """A checkpoint directory as a trainer leaves it: weights, a nested folder, and (last) the marker file."""
    path = out / name
    (path / "optimizer").mkdir(parents=True)
    (path / "model.bin").write_bytes(os.urandom(size))
    (path / "optimizer" / "state.bin").write_bytes(os.urandom(257))
    if marker:
        (path / marker).write_text(json.dumps({"global_step": int(re.findall(r"\d+", name)[-1])}))
    return path


def corrupt(path: Path) -> None:
    """Same size, different bytes: only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def manifest_of(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text())


def until_file(tmp_path: Path) -> Path:
    done = tmp_path / "training-done"
    if not done.exists():  # run.sh writes the trainer's exit code into it; a test may have put one there
        done.write_text("")
    return done


def seal_all(agent_dir: Path, out: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """One final pass (the --until file exists already): seals every finished checkpoint, then exits."""
    proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--until", until_file(tmp_path),
                 "--interval", "30", *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def sealed_list(out: Path) -> list[str]:
    return (out / SEALED).read_text().splitlines()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- HTTP servers

class Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class FileStore:
    """Presigned GETs: URL path -> bytes; anything else is a 404. Records every path asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: list[str] = []
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(Quiet):
            def do_GET(self) -> None:
                store.gets.append(self.path)
                data = store.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                body = data if data is not None else b"<Error><Code>NoSuchKey</Code></Error>"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def publish(self, checkpoint: Path, tag: str) -> dict[str, Any]:
        """Put a sealed checkpoint's files and manifest in the store; its plan entry, as the controller makes it."""
        manifest = manifest_of(checkpoint)
        base = f"/{tag}/{manifest['name']}/"
        self.files[base + MANIFEST] = (checkpoint / MANIFEST).read_bytes()
        urls = {}
        for entry in manifest["files"]:
            self.files[base + entry["path"]] = (checkpoint / entry["path"]).read_bytes()
            urls[entry["path"]] = self.url + base + entry["path"]
        return {"name": manifest["name"], "step": manifest["step"], "attempt": manifest["attempt"],
                "manifest_url": self.url + base + MANIFEST, "urls": urls}


@pytest.fixture
def file_store() -> Iterator[FileStore]:
    store = FileStore()
    with serving(store.handler()) as url:
        store.url = url
        yield store


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """(field name, filename or None, value) for each part of a multipart/form-data body, in order."""
    boundary = content_type.split("boundary=", 1)[1].encode()
    tail = b"\r\n--" + boundary + b"--\r\n"
    assert body.startswith(b"--" + boundary + b"\r\n") and body.endswith(tail), "not a whole multipart body"
    parts = (b"\r\n" + body[: -len(tail)]).split(b"\r\n--" + boundary + b"\r\n")
    assert parts[0] == b""
    fields = []
    for part in parts[1:]:
        head, separator, value = part.partition(b"\r\n\r\n")
        assert separator, part[:200]
        text = head.decode()
        name = re.search(r'name="([^"]*)"', text)
        filename = re.search(r'filename="([^"]*)"', text)
        assert name, text
        fields.append((name.group(1), filename.group(1) if filename else None, value))
    return fields


class UploadStore:
    """An S3 presigned-POST endpoint: multipart/form-data, the object's key in the ``key`` field and the bytes in
    ``file`` (the last field). Answers 500 to the first ``fail_first`` POSTs (all of them with ``fail_all``)."""

    def __init__(self, *, fail_first: int = 0, fail_all: bool = False) -> None:
        self.fail_first, self.fail_all = fail_first, fail_all
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.url = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        store = self

        class Handler(Quiet):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                record: dict[str, Any] = {"path": self.path, "at": time.monotonic(), "complete": len(body) == length}
                if record["complete"]:
                    parts = parse_multipart(body, self.headers["Content-Type"])
                    record["order"] = [name for name, _filename, _value in parts]
                    record["fields"] = {name: value.decode() for name, filename, value in parts if filename is None}
                    record["key"] = record["fields"].get("key")
                    record["data"] = next(value for name, filename, value in parts if name == "file")
                with store.lock:
                    failing = store.fail_all or len(store.posts) < store.fail_first
                    record["status"] = 500 if failing else 204
                    store.posts.append(record)
                if not record["complete"]:
                    return
                answer = b"<Error><Code>InternalError</Code></Error>" if failing else b""
                self.send_response(record["status"])
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        return Handler

    def grant(self, path: Path) -> Path:
        path.write_text(json.dumps({"url": f"{self.url}/bucket", "key_prefix": PREFIX,
                                    "fields": {"policy": "cG9saWN5", "x-amz-signature": "abc123"}}))
        return path

    def ok(self) -> list[dict[str, Any]]:
        with self.lock:
            return [post for post in self.posts if post["complete"] and post["status"] < 300]


@contextlib.contextmanager
def upload_store(**options: Any) -> Iterator[UploadStore]:
    store = UploadStore(**options)
    with serving(store.handler()) as url:
        store.url = url
        yield store


# ---------------------------------------------------------------------------------------------- names

def test_a_checkpoint_step_is_the_last_number_of_its_name(agent_module: ModuleType, tmp_path: Path) -> None:
    assert agent_module.step_of("checkpoint-500") == 500
    assert agent_module.step_of("global_step30") == 30
    assert agent_module.step_of("run2-step=7") == 7
    assert agent_module.step_of("final") is None
    for name in ("checkpoint-100", "checkpoint-20", "checkpoint-final", ".restore-checkpoint-300"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-900").write_text("a file, not a checkpoint")
    # By step, not by name (checkpoint-100 sorts before checkpoint-20 as text); no step, hidden or files left out.
    assert agent_module.candidates(str(tmp_path), "checkpoint-*") == ["checkpoint-20", "checkpoint-100"]
    assert agent_module.candidates(str(tmp_path / "missing"), "checkpoint-*") == []


# ---------------------------------------------------------------------------------------------- sealing

def test_a_final_pass_seals_finished_checkpoints_and_lists_them(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ten, twenty = make_checkpoint(out, "checkpoint-10"), make_checkpoint(out, "checkpoint-20")
    unfinished = make_checkpoint(out, "checkpoint-30", marker=None)
    started = time.monotonic()
    proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--attempt", "3",
                 "--until", until_file(tmp_path), "--interval", "30", "--stable-s", "60")
    assert proc.returncode == 0, proc.stderr
    # One pass, neither the interval nor --stable-s waited for: --until says the trainer has exited.
    assert time.monotonic() - started < 15
    assert sealed_list(out) == ["checkpoint-10", "checkpoint-20"]
    manifest = manifest_of(twenty)
    assert {k: manifest[k] for k in ("format", "run_id", "attempt", "step", "name")} == {
        "format": 1, "run_id": RUN, "attempt": 3, "step": 20, "name": "checkpoint-20"}
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert sorted(listed) == ["model.bin", "optimizer/state.bin", "trainer_state.json"]
    data = (twenty / "model.bin").read_bytes()
    assert listed["model.bin"] == {"path": "model.bin", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert manifest_of(ten)["step"] == 10
    assert not (unfinished / MANIFEST).exists()  # rule hf: no trainer_state.json, never finished
    assert "sealed checkpoint-20 (3 files" in proc.stderr
    # Nothing temporary is left next to the manifests or the listing.
    assert {p.name for p in out.iterdir()} == {"checkpoint-10", "checkpoint-20", "checkpoint-30", SEALED}
    assert {p.name for p in twenty.iterdir()} == {MANIFEST, "model.bin", "optimizer", "trainer_state.json"}


def test_a_checkpoint_without_trainer_state_is_never_sealed_under_rule_hf(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    half = make_checkpoint(out, "checkpoint-50", marker=None)
    for _pass in range(2):  # stable for long enough, and a final pass: still not finished
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--stable-s", "0", "--interval", "0.05",
                     "--max-s", "0.4")
        assert proc.returncode == 0, proc.stderr
        seal_all(agent_dir, out, tmp_path)
    assert not (half / MANIFEST).exists()
    assert (out / SEALED).read_text() == ""
    # The same directory under rule stable is finished once unchanged for --stable-s.
    proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--rule", "stable", "--stable-s", "0.1",
                 "--interval", "0.05", "--max-s", "0.6")
    assert proc.returncode == 0, proc.stderr
    assert sealed_list(out) == ["checkpoint-50"]


def test_rule_marker_waits_for_the_apps_own_marker(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    hf_only = make_checkpoint(out, "checkpoint-10")  # trainer_state.json means nothing under rule marker
    default = make_checkpoint(out, "checkpoint-20", marker="COMPLETE")
    custom = make_checkpoint(out, "checkpoint-30", marker="DONE")
    seal_all(agent_dir, out, tmp_path, "--rule", "marker")
    assert sealed_list(out) == ["checkpoint-20"]
    assert not (hf_only / MANIFEST).exists() and not (custom / MANIFEST).exists()
    assert "COMPLETE" in {entry["path"] for entry in manifest_of(default)["files"]}
    seal_all(agent_dir, out, tmp_path, "--rule", "marker", "--marker", "DONE")
    assert sealed_list(out) == ["checkpoint-20", "checkpoint-30"]  # sealed before stays sealed and listed
    assert not (hf_only / MANIFEST).exists()


def test_rule_stable_seals_any_checkpoint_with_files_and_follows_the_glob(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_checkpoint(out, "global_step7", marker=None)
    (out / "global_step9").mkdir()  # nothing in it yet: nothing to seal
    make_checkpoint(out, "checkpoint-5", marker=None)  # not matched by the glob
    make_checkpoint(out, "global_step_last", marker=None)  # no step
    # Under "stable" only the wait says finished: a last pass after a failed exit seals nothing new...
    seal_all(agent_dir, out, tmp_path, "--rule", "stable", "--glob", "global_step*")
    assert sealed_list(out) == []
    # ...after a clean exit (code 0 in the --until file) it does; so does a directory unchanged for --stable-s.
    until_file(tmp_path).write_text("0\n")
    seal_all(agent_dir, out, tmp_path, "--rule", "stable", "--glob", "global_step*")
    assert sealed_list(out) == ["global_step7"]
    assert manifest_of(out / "global_step7")["name"] == "checkpoint-7"  # the store names checkpoints by step
    for name in ("global_step9", "checkpoint-5", "global_step_last"):
        assert not (out / name / MANIFEST).exists(), name


def test_a_finished_checkpoint_is_sealed_only_after_stable_s(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = make_checkpoint(out, "checkpoint-10")
    proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--stable-s", "30", "--interval", "0.05",
                 "--max-s", "0.8")
    assert proc.returncode == 0, proc.stderr
    assert not (checkpoint / MANIFEST).exists()  # many passes, all within --stable-s of first seeing it
    assert (out / SEALED).read_text() == ""
    started = time.monotonic()
    proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--stable-s", "0.3", "--interval", "0.05",
                 "--max-s", "1.5")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 15
    assert sealed_list(out) == ["checkpoint-10"]
    assert agent(agent_dir, "verify", checkpoint).returncode == 0


def test_a_checkpoint_still_being_written_is_not_sealed(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = make_checkpoint(out, "checkpoint-10")
    stop = threading.Event()
    writes = []

    def writer() -> None:  # a slow save: the weights keep growing, trainer_state.json is there already
        for index in range(400):  # bounded: 20 s at most
            if stop.is_set():
                return
            with open(checkpoint / "model.bin", "ab") as handle:
                handle.write(os.urandom(64))
            writes.append(index)
            time.sleep(0.05)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--stable-s", "1", "--interval", "0.1",
                     "--max-s", "2.5")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert len(writes) > 20  # the writer really ran all along
    assert not (checkpoint / MANIFEST).exists()
    assert (out / SEALED).read_text() == ""
    # Once it stops changing, it is sealed, with the file as it ended up.
    proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--stable-s", "0.3", "--interval", "0.05",
                 "--max-s", "1.5")
    assert proc.returncode == 0, proc.stderr
    sizes = {entry["path"]: entry["size"] for entry in manifest_of(checkpoint)["files"]}
    assert sizes["model.bin"] == (checkpoint / "model.bin").stat().st_size == 3000 + 64 * len(writes)


def test_a_sealed_checkpoint_is_never_resealed(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = make_checkpoint(out, "checkpoint-10")
    seal_all(agent_dir, out, tmp_path)
    first = (checkpoint / MANIFEST).read_bytes()
    corrupt(checkpoint / "model.bin")  # damaged after sealing: the manifest must keep saying what was sealed
    seal_all(agent_dir, out, tmp_path, "--attempt", "9")
    assert (checkpoint / MANIFEST).read_bytes() == first
    assert sealed_list(out) == ["checkpoint-10"]


# ---------------------------------------------------------------------------------------------- verify

def test_verify_exits_0_only_for_a_checkpoint_that_matches_its_manifest(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = make_checkpoint(out, "checkpoint-10")
    unsealed = make_checkpoint(out, "checkpoint-20", marker=None)
    seal_all(agent_dir, out, tmp_path, "--attempt", "2")

    proc = agent(agent_dir, "verify", checkpoint)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"directory": str(checkpoint), "ok": True, "problems": [], "step": 10,
                                       "attempt": 2}
    proc = agent(agent_dir, "verify", unsealed)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["problems"] == ["not sealed (no manifest)"]

    (checkpoint / "extra.txt").write_text("a file the manifest does not list is not a problem")
    assert agent(agent_dir, "verify", checkpoint).returncode == 0
    corrupt(checkpoint / "model.bin")
    proc = agent(agent_dir, "verify", checkpoint)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert not report["ok"] and len(report["problems"]) == 1 and report["problems"][0].startswith("model.bin: sha256")
    (checkpoint / "optimizer" / "state.bin").unlink()
    assert "optimizer/state.bin: missing" in json.loads(agent(agent_dir, "verify", checkpoint).stdout)["problems"]
    assert agent(agent_dir, "verify", tmp_path / "nowhere").returncode == 1


# ---------------------------------------------------------------------------------------------- newest

def test_newest_is_the_newest_sealed_checkpoint_that_verifies(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_checkpoint(out, "checkpoint-10")
    newest = make_checkpoint(out, "checkpoint-20")
    seal_all(agent_dir, out, tmp_path)
    make_checkpoint(out, "checkpoint-30", marker=None)  # being written: never a resume point
    proc = agent(agent_dir, "newest", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(newest)
    assert "not resuming from checkpoint-30: not sealed" in proc.stderr

    corrupt(newest / "model.bin")  # same size: only the sha256 tells
    proc = agent(agent_dir, "newest", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "checkpoint-10")
    assert re.search(r"not resuming from checkpoint-20: model\.bin: sha256 [0-9a-f]{64}, the manifest says",
                     proc.stderr)
    assert newest.exists()  # without --clean nothing is removed


def test_newest_clean_removes_everything_newer_than_the_one_chosen(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    chosen = make_checkpoint(out, "checkpoint-10")
    corrupt_sealed = make_checkpoint(out, "checkpoint-20")
    seal_all(agent_dir, out, tmp_path)
    corrupt(corrupt_sealed / "model.bin")
    older_unsealed = make_checkpoint(out, "checkpoint-5", marker=None)
    newer_unsealed = [make_checkpoint(out, "checkpoint-30", marker=None), make_checkpoint(out, "checkpoint-40")]
    proc = agent(agent_dir, "newest", "--output", out, "--clean")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(chosen)
    assert not any(path.exists() for path in newer_unsealed)
    assert "removed checkpoint-30" in proc.stderr and "removed checkpoint-40" in proc.stderr
    # The broken sealed one is newer too: the resumed run writes that step again, into a clean directory.
    assert not corrupt_sealed.exists() and "removed checkpoint-20" in proc.stderr
    assert older_unsealed.exists() and chosen.exists()
    assert agent(agent_dir, "verify", chosen).returncode == 0


def test_newest_with_nothing_sound_prints_nothing_and_clean_clears_the_way(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    unsealed = make_checkpoint(out, "checkpoint-30", marker=None)
    proc = agent(agent_dir, "newest", "--output", out)
    assert (proc.returncode, proc.stdout) == (0, "") and unsealed.exists()  # without --clean nothing is removed
    proc = agent(agent_dir, "newest", "--output", out, "--clean")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert not unsealed.exists()  # a fresh start must not write its checkpoint-30 into a half-written one
    proc = agent(agent_dir, "newest", "--output", tmp_path / "never-made")
    assert (proc.returncode, proc.stdout) == (0, "")


def test_newest_passes_over_a_manifest_it_cannot_read(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    older = make_checkpoint(out, "checkpoint-10")
    seal_all(agent_dir, out, tmp_path)
    newer = make_checkpoint(out, "checkpoint-20")
    (newer / MANIFEST).write_text(json.dumps({"format": 2, "name": "checkpoint-20"}))
    proc = agent(agent_dir, "newest", "--output", out)
    assert "Traceback" not in proc.stderr
    assert (proc.returncode, proc.stdout.strip()) == (0, str(older))


# ---------------------------------------------------------------------------------------------- restore

def staged_copy(agent_dir: Path, out: Path, tmp_path: Path, step: int) -> Path:
    """A sealed checkpoint moved to the name the controller stages a restore under."""
    checkpoint = make_checkpoint(out, f"checkpoint-{step}")
    seal_all(agent_dir, out, tmp_path)
    staged = out / f".restore-checkpoint-{step}"
    checkpoint.rename(staged)
    return staged


def test_restore_adopts_a_staged_copy_that_verifies_and_rejects_the_rest(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    good = staged_copy(agent_dir, out, tmp_path, 20)
    manifest = manifest_of(good)
    model = (good / "model.bin").read_bytes()
    bad = staged_copy(agent_dir, out, tmp_path, 30)
    corrupt(bad / "model.bin")
    unsealed = out / ".restore-checkpoint-40"
    unsealed.mkdir()
    (unsealed / "model.bin").write_bytes(b"x")
    stale = make_checkpoint(out, "checkpoint-20", marker=None)  # a half-written leftover under the final name
    (stale / "junk").write_text("from the run that died")

    proc = agent(agent_dir, "restore", "--output", out, "--require")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["restored"] == {"name": "checkpoint-20", "step": 20, "attempt": 1, "path": str(out / "checkpoint-20")}
    rejected = {entry["name"]: entry["problems"] for entry in report["rejected"]}
    assert rejected["checkpoint-40"] == ["no manifest"]
    assert len(rejected["checkpoint-30"]) == 1 and rejected["checkpoint-30"][0].startswith("model.bin: sha256")
    assert {p.name for p in out.iterdir()} == {"checkpoint-20", SEALED}  # staging gone, nothing else adopted
    restored = out / "checkpoint-20"
    assert manifest_of(restored) == manifest
    assert (restored / "model.bin").read_bytes() == model
    assert not (restored / "junk").exists()  # the leftover was replaced, not merged into
    assert agent(agent_dir, "verify", restored).returncode == 0


def test_restore_reports_the_newest_of_several_staged_copies(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    staged_copy(agent_dir, out, tmp_path, 10)
    staged_copy(agent_dir, out, tmp_path, 20)
    proc = agent(agent_dir, "restore", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["restored"]["name"] == "checkpoint-20"
    for step in (10, 20):
        assert agent(agent_dir, "verify", out / f"checkpoint-{step}").returncode == 0


def test_restore_with_nothing_to_restore_exits_3_only_when_required(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = agent(agent_dir, "restore", "--output", out)  # creates the output directory
    assert (proc.returncode, json.loads(proc.stdout)) == (0, {"restored": None, "rejected": []})
    proc = agent(agent_dir, "restore", "--output", out, "--require")
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["restored"] is None


def test_restore_from_a_plan_takes_the_first_candidate_that_verifies(agent_dir: Path, tmp_path: Path,
                                                                     file_store: FileStore) -> None:
    host = tmp_path / "old-host"
    make_checkpoint(host, "checkpoint-20", size=(1 << 20) + 77)  # more than one download chunk
    make_checkpoint(host, "checkpoint-30")
    seal_all(agent_dir, host, tmp_path, "--attempt", "1")
    plan = [file_store.publish(host / "checkpoint-30", "a1"), file_store.publish(host / "checkpoint-20", "a1")]
    bad_key = "/a1/checkpoint-30/model.bin"
    data = bytearray(file_store.files[bad_key])
    data[7] ^= 0x01
    file_store.files[bad_key] = bytes(data)  # corrupt in the store: same size, so only after download
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    out = tmp_path / "new-host"

    proc = agent(agent_dir, "restore", "--output", out, "--plan", plan_file, "--require")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["restored"] == {"name": "checkpoint-20", "step": 20, "attempt": 1, "path": str(out / "checkpoint-20")}
    assert [entry["name"] for entry in report["rejected"]] == ["checkpoint-30"]
    assert report["rejected"][0]["attempt"] == 1
    assert report["rejected"][0]["problems"][0].startswith("model.bin: sha256")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-20"]  # the rejected one's staging is gone
    restored = out / "checkpoint-20"
    for path in ("model.bin", "optimizer/state.bin", "trainer_state.json", MANIFEST):
        assert (restored / path).read_bytes() == (host / "checkpoint-20" / path).read_bytes(), path
    assert agent(agent_dir, "verify", restored).returncode == 0
    assert "not restoring checkpoint-30" in proc.stderr


def test_restore_from_a_plan_stops_at_the_first_sound_candidate(agent_dir: Path, tmp_path: Path,
                                                                file_store: FileStore) -> None:
    host = tmp_path / "old-host"
    make_checkpoint(host, "checkpoint-20")
    make_checkpoint(host, "checkpoint-30")
    seal_all(agent_dir, host, tmp_path, "--attempt", "4")
    plan = [file_store.publish(host / "checkpoint-30", "a4"), file_store.publish(host / "checkpoint-20", "a4")]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "new-host"
    proc = agent(agent_dir, "restore", "--output", out, "--plan", tmp_path / "plan.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["restored"]["name"] == "checkpoint-30" and report["restored"]["attempt"] == 4
    assert report["rejected"] == []
    assert not any("checkpoint-20" in path for path in file_store.gets)  # the fallback was never downloaded
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-30"]


def test_restore_from_a_plan_falls_back_past_a_missing_object(agent_dir: Path, tmp_path: Path,
                                                              file_store: FileStore) -> None:
    host = tmp_path / "old-host"
    make_checkpoint(host, "checkpoint-20")
    make_checkpoint(host, "checkpoint-30")
    seal_all(agent_dir, host, tmp_path)
    plan = [file_store.publish(host / "checkpoint-30", "a1"), file_store.publish(host / "checkpoint-20", "a1")]
    del file_store.files["/a1/checkpoint-30/optimizer/state.bin"]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "new-host"
    proc = agent(agent_dir, "restore", "--output", out, "--plan", tmp_path / "plan.json", "--require")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["restored"]["name"] == "checkpoint-20"
    assert report["rejected"][0]["problems"][0].startswith("download failed: download answered 404")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-20"]


def test_restore_from_a_plan_where_nothing_verifies_exits_3_when_required(agent_dir: Path, tmp_path: Path,
                                                                         file_store: FileStore) -> None:
    host = tmp_path / "old-host"
    make_checkpoint(host, "checkpoint-20")
    seal_all(agent_dir, host, tmp_path)
    plan = [file_store.publish(host / "checkpoint-20", "a1"),
            {"name": "checkpoint-10", "step": 10, "attempt": 1, "manifest_url": f"{file_store.url}/gone", "urls": {}}]
    key = "/a1/checkpoint-20/trainer_state.json"
    file_store.files[key] = file_store.files[key][:-1] + b" "
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "new-host"
    for extra, code in (([], 0), (["--require"], 3)):
        proc = agent(agent_dir, "restore", "--output", out, "--plan", tmp_path / "plan.json", *extra)
        assert proc.returncode == code, proc.stderr
        report = json.loads(proc.stdout)
        assert report["restored"] is None
        assert [entry["name"] for entry in report["rejected"]] == ["checkpoint-20", "checkpoint-10"]
        assert list(out.iterdir()) == []  # nothing half-restored, no staging left


# ---------------------------------------------------------------------------------------------- uploads

def posted_checkpoint(posts: list[dict[str, Any]], checkpoint: Path, step: int) -> list[dict[str, Any]]:
    """The posts of one checkpoint, checked: every file under its key with its bytes, the manifest last."""
    prefix = f"{PREFIX}checkpoint-{step}/"
    mine = [post for post in posts if post["key"].startswith(prefix)]
    manifest = manifest_of(checkpoint)
    expected = [prefix + entry["path"] for entry in manifest["files"]] + [prefix + MANIFEST]
    assert [post["key"] for post in mine] == expected
    for post in mine:
        assert post["data"] == (checkpoint / post["key"][len(prefix):]).read_bytes(), post["key"]
        assert post["path"] == "/bucket"
        assert post["fields"] == {"policy": "cG9saWN5", "x-amz-signature": "abc123", "key": post["key"]}
        assert post["order"][-1] == "file"  # S3 ignores every field after the file
    return mine


def test_run_uploads_sealed_checkpoints_newest_first_with_the_manifest_last(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_checkpoint(out, "checkpoint-10")
    make_checkpoint(out, "checkpoint-20", size=(1 << 20) * 2 + 5)  # more than one upload chunk
    make_checkpoint(out, "checkpoint-30", marker=None)  # not sealed: never uploaded
    with upload_store() as store:
        grant = store.grant(tmp_path / "grant.json")
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--grant", grant,
                     "--until", until_file(tmp_path), "--interval", "30")
        assert proc.returncode == 0, proc.stderr
        posts = store.ok()
        assert len(posts) == len(store.posts) == 8 and all(post["complete"] for post in posts)
        newest = posted_checkpoint(posts, out / "checkpoint-20", 20)
        older = posted_checkpoint(posts, out / "checkpoint-10", 10)
        assert posts == newest + older  # the one a resume wants goes first
        assert not any("checkpoint-30" in post["key"] for post in posts)
        state = json.loads((out / STATE).read_text())
        assert state["last_error"] == ""
        assert state["uploaded"] == {name: hashlib.sha256((out / name / MANIFEST).read_bytes()).hexdigest()
                                     for name in ("checkpoint-10", "checkpoint-20")}
        assert state["last_upload"]["name"] == "checkpoint-10"

        # A later pass (or a restarted agent) uploads only what is new.
        make_checkpoint(out, "checkpoint-40")
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--grant", grant,
                     "--until", until_file(tmp_path), "--interval", "30")
        assert proc.returncode == 0, proc.stderr
        later = store.ok()[8:]
        assert later == posted_checkpoint(later, out / "checkpoint-40", 40)


def test_a_checkpoint_sealed_by_an_earlier_attempt_is_not_uploaded_again(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    restored = make_checkpoint(out, "checkpoint-10")
    seal_all(agent_dir, out, tmp_path, "--attempt", "1")  # restored from the store: attempt 1's seal
    own = make_checkpoint(out, "checkpoint-20")
    with upload_store() as store:
        grant = store.grant(tmp_path / "grant.json")
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--attempt", "2", "--grant", grant,
                     "--until", until_file(tmp_path), "--interval", "30")
        assert proc.returncode == 0, proc.stderr
        assert store.ok() == posted_checkpoint(store.ok(), own, 20)
        assert len(store.posts) == 4
    assert manifest_of(own)["attempt"] == 2 and manifest_of(restored)["attempt"] == 1
    assert sealed_list(out) == ["checkpoint-10", "checkpoint-20"]  # still listed for the controller's pull
    assert list(json.loads((out / STATE).read_text())["uploaded"]) == ["checkpoint-20"]


def test_uploads_name_the_checkpoint_by_step_whatever_the_folder_is_called(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    folder = make_checkpoint(out, "global_step30", marker=None)
    with upload_store() as store:
        grant = store.grant(tmp_path / "grant.json")
        until_file(tmp_path).write_text("0\n")  # a clean exit: "stable" seals on the last pass
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--grant", grant, "--rule", "stable",
                     "--glob", "global_step*", "--until", until_file(tmp_path), "--interval", "30")
        assert proc.returncode == 0, proc.stderr
        posted_checkpoint(store.ok(), folder, 30)
        assert len(store.posts) == 3


def test_an_upload_error_is_recorded_and_the_manifest_is_not_posted(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = make_checkpoint(out, "checkpoint-10")
    with upload_store(fail_all=True) as store:
        grant = store.grant(tmp_path / "grant.json")
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--grant", grant,
                     "--until", until_file(tmp_path), "--interval", "30")
        assert proc.returncode == 0, proc.stderr  # the sidecar never fails the run over an upload
        assert len(store.posts) == 1  # the first refusal ends the attempt: nothing more, above all no manifest
        assert not any(post["key"].endswith(MANIFEST) for post in store.posts)
        state = json.loads((out / STATE).read_text())
        assert state["last_error"].startswith("checkpoint-10: upload of ")
        assert "answered 500" in state["last_error"] and "InternalError" in state["last_error"]
        assert state["uploaded"] == {}
        assert "retrying in 2 s" in proc.stderr
    assert sealed_list(out) == ["checkpoint-10"]  # sealing does not depend on the store

    # Later, with the store answering again, all of it goes, the manifest last, and the error is cleared.
    with upload_store() as store:
        grant = store.grant(tmp_path / "grant.json")
        proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--grant", grant,
                     "--until", until_file(tmp_path), "--interval", "30")
        assert proc.returncode == 0, proc.stderr
        posted_checkpoint(store.ok(), checkpoint, 10)
    state = json.loads((out / STATE).read_text())
    assert state["last_error"] == "" and list(state["uploaded"]) == ["checkpoint-10"]


def test_a_running_agent_retries_a_failed_upload_after_a_backoff(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = make_checkpoint(out, "checkpoint-10")
    until = tmp_path / "training-done"
    with upload_store(fail_first=1) as store:
        grant = store.grant(tmp_path / "grant.json")
        proc = subprocess.Popen([sys.executable, str(agent_dir / "checkpoint_agent.py"), "run", "--output", str(out),
                                 "--run-id", RUN, "--grant", str(grant), "--until", str(until), "--stable-s", "0.2",
                                 "--interval", "0.1", "--max-s", "30"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: len(store.posts) >= 1, 15, "the first upload")
            wait_for(lambda: (out / STATE).exists(), 5, "the state file")
            assert "answered 500" in json.loads((out / STATE).read_text())["last_error"]
            wait_for(lambda: any(post["key"].endswith(MANIFEST) for post in store.ok()), 20, "the manifest's upload")
            until.write_text("")
            _stdout, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == 0, stderr
        assert store.posts[0]["status"] == 500
        assert store.posts[1]["at"] - store.posts[0]["at"] >= 1.5  # a backoff (2 s), not a tight loop
        posted_checkpoint(store.ok(), checkpoint, 10)
        assert len(store.posts) == 1 + 4  # once refused, then three files and the manifest, once each
    state = json.loads((out / STATE).read_text())
    assert state["last_error"] == "" and list(state["uploaded"]) == ["checkpoint-10"]


def test_without_a_usable_grant_nothing_is_uploaded(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_checkpoint(out, "checkpoint-10")
    with upload_store() as store:
        incomplete = tmp_path / "grant.json"
        incomplete.write_text(json.dumps({"url": f"{store.url}/bucket", "fields": {}}))  # no key_prefix
        for grant in (incomplete, tmp_path / "not-written-yet.json"):
            proc = agent(agent_dir, "run", "--output", out, "--run-id", RUN, "--grant", grant,
                         "--until", until_file(tmp_path), "--interval", "30")
            assert proc.returncode == 0, proc.stderr
        assert store.posts == []
    assert sealed_list(out) == ["checkpoint-10"]


def test_a_file_that_does_not_hash_to_the_manifest_is_never_completed(agent_module: ModuleType,
                                                                      tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(5000))
    with upload_store() as store:
        grant = {"url": f"{store.url}/bucket", "fields": {"policy": "p"}, "key_prefix": PREFIX}
        with pytest.raises(ValueError, match="changed while it was uploaded"):
            agent_module.post_object(grant, PREFIX + "checkpoint-1/model.bin", str(path), "0" * 64)
        wait_for(lambda: len(store.posts) == 1, 10, "the server to see the cut-off request")
        assert store.posts[0]["complete"] is False  # the body never ended, so the store never takes the object
        agent_module.post_object(grant, PREFIX + "checkpoint-1/model.bin", str(path),
                                 hashlib.sha256(path.read_bytes()).hexdigest())
        assert [post["data"] for post in store.ok()] == [path.read_bytes()]


def test_newest_seals_a_finished_checkpoint_the_killed_run_had_no_time_to_seal(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sealed = make_checkpoint(out, "checkpoint-10")
    seal_all(agent_dir, out, tmp_path)
    finished = make_checkpoint(out, "checkpoint-20")  # trainer_state.json written, then the host was preempted
    half = make_checkpoint(out, "checkpoint-30", marker=None)
    proc = agent(agent_dir, "newest", "--output", out, "--clean", "--run-id", RUN, "--attempt", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(finished) and (finished / MANIFEST).exists() and sealed.exists()
    assert manifest_of(finished)["attempt"] == 2 and not half.exists()


def test_a_sealed_checkpoint_written_again_is_unsealed_until_finished_again(agent_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    checkpoint = make_checkpoint(out, "checkpoint-10")
    seal_all(agent_dir, out, tmp_path)
    (checkpoint / "model.bin").write_bytes(b"a longer model, written again by a resumed run")
    (checkpoint / "trainer_state.json").unlink()  # being written: not finished
    seal_all(agent_dir, out, tmp_path)
    assert not (checkpoint / MANIFEST).exists() and sealed_list(out) == []
