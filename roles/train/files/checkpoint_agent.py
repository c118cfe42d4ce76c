# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run's checkpoint agent on the rented host: seals finished checkpoints, uploads sealed ones,
finds the newest sound one to resume from, and restores one into place. Standard library only (it
runs on whatever Python the image has); the manifest code is checkpoint_manifest.py, copied next to it.

A checkpoint counts only once it is sealed: the trainer has finished writing it (the rule: Hugging
Face's trainer_state.json written last, an app's own marker file, or "stable" alone) and its files
have not changed for ``--stable-s`` seconds; then a manifest with every file's size and sha256, the
step, the run id and the attempt is written into it, last. Only sealed checkpoints are listed for
the controller's pull (``.mlops-sealed``), uploaded, resumed from or restored.

  checkpoint_agent.py run      ... sidecar: seal (and upload) as checkpoints appear, until --until exists
  checkpoint_agent.py newest   ... the newest sealed checkpoint that verifies (older ones if it does not)
  checkpoint_agent.py restore  ... download a plan's candidates (or adopt a staged copy), verify, put in place
  checkpoint_agent.py verify   ... a directory against its manifest
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkpoint_manifest import MANIFEST_NAME, build_manifest, parse_manifest, sha256_file, verify_dir

SEALED_LIST = ".mlops-sealed"  # in the output directory: the sealed checkpoints, oldest first, for rsync
STATE_FILE = ".mlops-agent.json"  # in the output directory: what was uploaded, and the agent's last error
RULES = ("hf", "marker", "stable")
HF_MARKER = "trainer_state.json"
UPLOAD_CHUNK = 1 << 20
MAX_TRIES = 5


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} checkpoint_agent: {message}", file=sys.stderr, flush=True)


def step_of(name: str) -> int | None:
    """The step a checkpoint's name carries: its last number (checkpoint-500, global_step500, step=5)."""
    numbers = re.findall(r"\d+", name)
    return int(numbers[-1]) if numbers else None


def candidates(output_dir: str, pattern: str) -> list[str]:
    """Checkpoint directories under output_dir matching the pattern, oldest step first."""
    try:
        names = os.listdir(output_dir)
    except OSError:
        return []
    found = [n for n in names if fnmatch.fnmatchcase(n, pattern) and step_of(n) is not None
             and os.path.isdir(os.path.join(output_dir, n)) and not n.startswith(".")]
    return sorted(found, key=lambda n: (step_of(n), n))


def file_view(directory: str) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of every regular file under directory, the manifest left out."""
    view: dict[str, tuple[int, int]] = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            if rel == MANIFEST_NAME or name.startswith(MANIFEST_NAME + "."):
                continue
            st = os.lstat(path)
            if not os.path.islink(path):
                view[rel] = (st.st_size, st.st_mtime_ns)
    return view


def read_manifest(directory: str) -> dict | None:
    """The directory's seal, or None when there is none or it is not one this agent can trust."""
    try:
        with open(os.path.join(directory, MANIFEST_NAME)) as f:
            return parse_manifest(f.read())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: str, obj: object) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Sealer:
    """Decides when a checkpoint is finished and seals it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.output = args.output
        self.pattern = args.glob
        self.rule = args.rule
        self.marker = args.marker
        self.stable_s = args.stable_s
        self.run_id = args.run_id
        self.attempt = args.attempt
        self.seen: dict[str, tuple[dict[str, tuple[int, int]], float]] = {}  # name -> (view, since)

    def finished(self, directory: str) -> bool:
        if self.rule == "hf":
            return os.path.isfile(os.path.join(directory, HF_MARKER))
        if self.rule == "marker":
            return os.path.isfile(os.path.join(directory, self.marker))
        return True

    def seal(self, name: str, *, final: bool, clean_exit: bool = False) -> bool:
        """Seal one checkpoint if it is finished and stable; True when it is sealed (now or before)."""
        directory = os.path.join(self.output, name)
        manifest = read_manifest(directory)
        if manifest is not None:
            sizes = {entry["path"]: entry["size"] for entry in manifest["files"]}
            view = file_view(directory)
            if {rel: size for rel, (size, _mtime) in view.items()} == sizes:
                return True
            # Written to after it was sealed (a resumed run saving that step again): no longer the sealed one.
            os.remove(os.path.join(directory, MANIFEST_NAME))
            log(f"{name} changed after it was sealed; sealing it again once finished")
        if not self.finished(directory):
            return False
        view = file_view(directory)
        if not view:
            return False
        now = time.monotonic()
        before, since = self.seen.get(name, (None, now))
        # A last pass after the trainer exited needs no wait when a marker says "finished"; under "stable" only a
        # clean exit (code 0) says so: a crash or a kill mid-save leaves a half-written directory that is stable too.
        skip_wait = final and (self.rule != "stable" or clean_exit)
        if view != before:
            self.seen[name] = (view, now)
            if not skip_wait:
                return False
        elif not skip_wait and now - since < self.stable_s:
            return False
        manifest = build_manifest(directory, self.run_id, self.attempt, step_of(name))
        if file_view(directory) != view:  # written to while hashed: not finished after all
            self.seen[name] = (file_view(directory), time.monotonic())
            return False
        write_json_atomic(os.path.join(directory, MANIFEST_NAME), manifest)
        self.seen.pop(name, None)
        files = manifest["files"]
        log(f"sealed {name} ({len(files)} files, {sum(f['size'] for f in files)} bytes)")
        return True

    def sweep(self, *, final: bool = False, clean_exit: bool = False) -> list[str]:
        """Seal what is ready; the sealed checkpoints, oldest first (also written for the controller's pull)."""
        sealed = [name for name in candidates(self.output, self.pattern)
                  if self.seal(name, final=final, clean_exit=clean_exit)]
        listing = os.path.join(self.output, SEALED_LIST)
        text = "".join(f"{name}\n" for name in sealed)
        try:
            with open(listing) as f:
                unchanged = f.read() == text
        except OSError:
            unchanged = False
        if not unchanged:
            tmp = f"{listing}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, listing)
        return sealed


# ----------------------------------------------------------------------------------------- transfers

def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {parts.scheme}://")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return cls(parts.netloc, timeout=timeout), path


def post_object(grant: dict, key: str, path: str, expected_sha256: str, timeout: float = 120.0) -> None:
    """Upload one file with the controller's presigned POST (no storage credential here); the bytes sent
    must hash to the manifest's sha256, else the upload is refused before the body ends."""
    boundary = uuid.uuid4().hex
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in {**grant["fields"], "key": key}.items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{os.path.basename(path)}"\r\n'
             "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = os.path.getsize(path)
    conn, target = _connection(grant["url"], timeout)
    try:
        conn.putrequest("POST", target)
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
        conn.endheaders()
        conn.send(head)
        digest, sent = hashlib.sha256(), 0
        with open(path, "rb") as f:
            while chunk := f.read(UPLOAD_CHUNK):
                digest.update(chunk)
                sent += len(chunk)
                conn.send(chunk)
        if sent != size or digest.hexdigest() != expected_sha256:
            raise ValueError(f"{path} changed while it was uploaded; not published")
        conn.send(tail)
        response = conn.getresponse()
        body = response.read(2048)
        if response.status >= 300:
            raise OSError(f"upload of {key} answered {response.status}: {body[:300]!r}")
    finally:
        conn.close()


def get_object(url: str, dest: str, timeout: float = 120.0) -> None:
    conn, target = _connection(url, timeout)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        if response.status != 200:
            raise OSError(f"download answered {response.status}: {response.read(300)!r}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            while chunk := response.read(UPLOAD_CHUNK):
                f.write(chunk)
    finally:
        conn.close()


class Uploader:
    """Publishes sealed checkpoints with the controller's grant: data first, the manifest last."""

    def __init__(self, output: str, grant_file: str, attempt: int) -> None:
        self.output = output
        self.attempt = attempt
        self.grant_file = grant_file
        self.state_path = os.path.join(output, STATE_FILE)
        self.state = self._load()
        self.retry_at = 0.0
        self.failures = 0

    def _load(self) -> dict:
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    def grant(self) -> dict | None:
        try:
            with open(self.grant_file) as f:
                grant = json.load(f)
        except (OSError, ValueError):
            return None
        return grant if isinstance(grant, dict) and {"url", "fields", "key_prefix"} <= grant.keys() else None

    def publish(self, sealed: list[str], *, force: bool = False) -> None:
        """Upload every sealed checkpoint not uploaded yet, newest first (the one a resume wants)."""
        if not force and time.monotonic() < self.retry_at:
            return
        grant = self.grant()
        if grant is None:
            return
        uploaded = self.state.setdefault("uploaded", {})
        for name in reversed(sealed):
            directory = os.path.join(self.output, name)
            manifest = read_manifest(directory)
            if manifest is None or manifest.get("attempt") != self.attempt:
                continue  # a checkpoint restored from an earlier attempt is in the store already
            token = sha256_file(os.path.join(directory, MANIFEST_NAME))
            if uploaded.get(name) == token:
                continue
            prefix = f"{grant['key_prefix']}{manifest['name']}/"  # the store names checkpoints by step
            try:
                for entry in manifest["files"]:
                    post_object(grant, prefix + entry["path"], os.path.join(directory, entry["path"]), entry["sha256"])
                manifest_path = os.path.join(directory, MANIFEST_NAME)
                post_object(grant, prefix + MANIFEST_NAME, manifest_path, token)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self.failures += 1
                delay = min(60.0, 2.0 ** self.failures)
                self.retry_at = time.monotonic() + delay
                self.state["last_error"] = f"{name}: {exc}"
                self._save()
                log(f"upload of {name} failed ({exc}); retrying in {delay:.0f} s")
                return
            uploaded[name] = token
            self.failures = 0
            self.state["last_error"] = ""
            self.state["last_upload"] = {"name": name, "at": time.time()}
            self._save()
            log(f"uploaded {name} to {prefix}")


# ------------------------------------------------------------------------------------------ commands

def exit_code(path: str) -> int | None:
    """The trainer's exit code, which run.sh writes into the --until file."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def record_error(output: str, message: str) -> None:
    """Keep the agent's last error where the controller pulls it (.mlops-agent.json)."""
    path = os.path.join(output, STATE_FILE)
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        state = {}
    state = state if isinstance(state, dict) else {}
    state.update(last_error=message, last_error_at=time.time())
    with contextlib.suppress(OSError):
        write_json_atomic(path, state)


def cmd_run(args: argparse.Namespace) -> int:
    sealer = Sealer(args)
    uploader = Uploader(args.output, args.grant, args.attempt) if args.grant else None
    deadline = time.monotonic() + args.max_s if args.max_s else None
    while True:
        done = bool(args.until) and os.path.exists(args.until)
        try:
            sealed = sealer.sweep(final=done, clean_exit=done and exit_code(args.until) == 0)
            if uploader is not None:
                uploader.publish(sealed, force=done)
        except Exception as exc:  # e.g. a checkpoint rotated away mid-look: look again next time, never die
            log(f"pass failed: {exc!r}")
            if uploader is not None:  # it owns the state file while it runs: its next save would drop the error
                uploader.state.update(last_error=f"pass failed: {exc!r}", last_error_at=time.time())
                with contextlib.suppress(OSError):
                    uploader._save()
            else:
                record_error(args.output, f"pass failed: {exc!r}")
        if done or (deadline is not None and time.monotonic() > deadline):
            return 0
        time.sleep(args.interval)


def newest_sound(output: str, pattern: str) -> tuple[str | None, list[str]]:
    """The newest sealed checkpoint whose files match its manifest, and what was wrong with newer ones."""
    skipped = []
    for name in reversed(candidates(output, pattern)):
        directory = os.path.join(output, name)
        manifest = read_manifest(directory)
        if manifest is None:
            skipped.append(f"{name}: not sealed")
            continue
        problems = verify_dir(directory, manifest)
        if problems:
            skipped.append(f"{name}: {'; '.join(problems[:3])}")
            continue
        return directory, skipped
    return None, skipped


def cmd_newest(args: argparse.Namespace) -> int:
    if args.run_id and os.path.isdir(args.output):
        # A checkpoint the last run finished but had no time to seal (killed between the two) is sealed now,
        # by its rule, so it is not thrown away below; nothing is writing to the directory any more.
        Sealer(args).sweep(final=True)
    found, skipped = newest_sound(args.output, args.glob)
    for line in skipped:
        log(f"not resuming from {line}")
    if args.clean:
        # Whatever is newer than the resume point is unfinished or broken: the resumed run writes those steps
        # again, and must not write into a half-written directory (it would look whole).
        floor = step_of(os.path.basename(found)) if found else -1
        for name in candidates(args.output, args.glob):
            if step_of(name) > floor:
                shutil.rmtree(os.path.join(args.output, name), ignore_errors=True)
                log(f"removed {name}: not a sound checkpoint, and newer than the resume point")
    if args.report:
        manifest = read_manifest(found) if found else None
        name = os.path.basename(found) if found else None
        try:
            write_json_atomic(args.report, {"resumed_from": None if found is None else {
                "name": name, "step": step_of(name), "attempt": (manifest or {}).get("attempt")}})
        except OSError as exc:  # only a record: the resume itself must not fail for it
            log(f"cannot write {args.report}: {exc}")
    if found:
        print(found)
    return 0


def _adopt(staging: str, final: str, manifest: dict) -> list[str]:
    problems = verify_dir(staging, manifest)
    if problems:
        return problems
    write_json_atomic(os.path.join(staging, MANIFEST_NAME), manifest)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staging, final)
    return []


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore the first candidate that verifies, two-phase: staged, verified, then renamed into place."""
    os.makedirs(args.output, exist_ok=True)
    report: dict = {"restored": None, "rejected": []}
    if args.plan:
        with open(args.plan) as f:
            plan = json.load(f)
        for candidate in plan:
            name = candidate["name"]
            staging = os.path.join(args.output, f".restore-{name}")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                manifest_path = os.path.join(staging, MANIFEST_NAME + ".remote")
                get_object(candidate["manifest_url"], manifest_path)
                with open(manifest_path) as f:
                    manifest = parse_manifest(f.read())  # its paths are checked before any file is written
                os.remove(manifest_path)
                for entry in manifest["files"]:
                    get_object(candidate["urls"][entry["path"]], os.path.join(staging, entry["path"]))
                problems = _adopt(staging, os.path.join(args.output, name), manifest)
            except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
                problems = [f"download failed: {exc}"]
            if problems:
                shutil.rmtree(staging, ignore_errors=True)
                report["rejected"].append({"name": name, "attempt": candidate.get("attempt"), "problems": problems})
                log(f"not restoring {name}: {'; '.join(problems[:3])}")
                continue
            report["restored"] = {"name": name, "step": step_of(name), "attempt": candidate.get("attempt"),
                                  "path": os.path.join(args.output, name)}
            break
    else:
        staged = sorted((n for n in os.listdir(args.output) if n.startswith(".restore-")),
                        key=lambda n: step_of(n) or -1, reverse=True)
        for entry in staged:
            name = entry[len(".restore-"):]
            staging = os.path.join(args.output, entry)
            manifest = read_manifest(staging)
            final = os.path.join(args.output, name)
            problems = ["no manifest"] if manifest is None else _adopt(staging, final, manifest)
            if problems:
                shutil.rmtree(staging, ignore_errors=True)
                report["rejected"].append({"name": name, "problems": problems})
                continue
            if report["restored"] is None:
                report["restored"] = {"name": name, "step": step_of(name), "attempt": manifest.get("attempt"),
                                      "path": os.path.join(args.output, name)}
    print(json.dumps(report))
    return 0 if report["restored"] or not args.require else 3


def cmd_verify(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.directory)
    problems = ["not sealed (no manifest)"] if manifest is None else verify_dir(args.directory, manifest)
    print(json.dumps({"directory": args.directory, "ok": not problems, "problems": problems,
                      "step": (manifest or {}).get("step"), "attempt": (manifest or {}).get("attempt")}))
    return 0 if not problems else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="seal (and upload) checkpoints as they appear")
    run.add_argument("--output", required=True)
    run.add_argument("--glob", default="checkpoint-*")
    run.add_argument("--rule", choices=RULES, default="hf")
    run.add_argument("--marker", default="COMPLETE")
    run.add_argument("--stable-s", type=float, default=1.0)
    run.add_argument("--run-id", required=True)
    run.add_argument("--attempt", type=int, default=1)
    run.add_argument("--grant", default="", help="the controller's upload grant (JSON); empty: no uploads")
    run.add_argument("--until", default="",
                     help="a file whose appearance means: one last pass, then exit (it holds the trainer's exit code)")
    run.add_argument("--interval", type=float, default=0.5)
    run.add_argument("--max-s", type=float, default=0.0)
    newest = sub.add_parser("newest", help="print the newest sealed checkpoint that verifies")
    newest.add_argument("--output", required=True)
    newest.add_argument("--glob", default="checkpoint-*")
    newest.add_argument("--clean", action="store_true", help="remove what is newer than it (unfinished or broken)")
    newest.add_argument("--run-id", default="", help="seal finished checkpoints first (with --rule, --attempt)")
    newest.add_argument("--attempt", type=int, default=1)
    newest.add_argument("--rule", choices=RULES, default="hf")
    newest.add_argument("--marker", default="COMPLETE")
    newest.add_argument("--stable-s", type=float, default=1.0)
    newest.add_argument("--report", default="", help="also write what it found as JSON to this file")
    restore = sub.add_parser("restore", help="put the newest sound candidate in place")
    restore.add_argument("--output", required=True)
    restore.add_argument("--plan", default="", help="JSON list of candidates with presigned URLs, best first")
    restore.add_argument("--require", action="store_true", help="exit 3 when nothing could be restored")
    verify = sub.add_parser("verify", help="check a checkpoint against its manifest")
    verify.add_argument("directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return {"run": cmd_run, "newest": cmd_newest, "restore": cmd_restore, "verify": cmd_verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
