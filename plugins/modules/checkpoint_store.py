#!/usr/bin/python
# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: checkpoint_store
short_description: Keep a run's sealed checkpoints in S3-compatible storage that rented hosts write without keys
description:
  - The controller's side of the checkpoint store. Training hosts seal each finished checkpoint directory
    by writing C(.mlops-seal.json) (every file with its size and sha256) into it last, and upload it to
    C(<prefix>/<run_id>/attempt-<attempt>/checkpoint-<step>/), the manifest last. They hold no storage
    credential; O(action=grant) gives them a presigned POST policy limited to their attempt's prefix.
  - O(action=check) checks that the bucket exists and the credentials reach it.
  - O(action=grant) signs the upload grant for O(attempt) of O(run_id). Set C(no_log) on the task (see the notes).
  - O(action=fence) records, when an attempt starts, which checkpoint it resumed from
    (C(fences/attempt-<attempt>.json), outside every upload grant); a checkpoint an older attempt's host
    publishes after it was replaced is then never chosen over the lineage the newer attempt continued.
    Written once per attempt.
  - O(action=list) lists the published checkpoints (manifest present) and the fences.
  - O(action=plan) lists the checkpoints to restore from, best first (newest attempt, then newest step, the
    fences' exclusions applied), complete ones only, with presigned GET URLs for the host, valid an hour.
  - O(action=retain) deletes all but the newest O(keep) complete checkpoints of the lineage, and incomplete
    ones untouched for O(stale_s).
  - O(action=abort_uploads) aborts the run's unfinished multipart uploads (real S3 bills their parts).
  - O(action=download) brings the best checkpoint that matches its manifest home to O(dest), falling back
    to the next candidate when one is corrupt or incomplete.
  - Credentials come from boto3's usual chain on the controller (E(AWS_ACCESS_KEY_ID) and
    E(AWS_SECRET_ACCESS_KEY), E(AWS_PROFILE), ...); the module has no option for them and returns none.
version_added: 0.2.0
extends_documentation_fragment:
  - mlops.vast.attributes
attributes:
  check_mode:
    support: full
    details:
      - O(action=retain), O(action=abort_uploads) and O(action=fence) change nothing and report what they
        would delete, abort or write; O(action=download) downloads nothing and names the checkpoint it would.
  diff_mode:
    support: none
  platform:
    platforms: all
    details: Runs on the controller (C(localhost)), which holds the storage credentials.
requirements:
  - boto3 on the controller's Python
options:
  action:
    description: What to do.
    type: str
    required: true
    choices: [check, grant, fence, list, plan, retain, abort_uploads, download]
  bucket:
    description: The bucket. It must exist (O(action=check) says how to create it when it does not).
    type: str
    required: true
  prefix:
    description: Where in the bucket the runs are; empty puts them at the top.
    type: str
    default: ""
  endpoint_url:
    description:
      - The storage's URL as the controller reaches it, for S3 look-alikes (C(http://127.0.0.1:9000)).
        Unset means AWS S3, or E(AWS_ENDPOINT_URL_S3) / E(AWS_ENDPOINT_URL) when set.
    type: str
  host_endpoint_url:
    description:
      - The same storage's URL as the rented host reaches it, when that differs from O(endpoint_url) (in
        the simulator, C(http://s3.vastsim)). Every URL handed to a host (the grant, the plan) is signed for it.
      - Defaults to O(endpoint_url).
    type: str
  region:
    description: The bucket's region. Unset means boto3's default (E(AWS_DEFAULT_REGION), the profile, else us-east-1).
    type: str
  addressing:
    description:
      - C(path) puts the bucket into the URL's path, C(virtual) into its host name. C(auto) uses path style for
        any endpoint but AWS's own (an IP, C(localhost) or C(s3.vastsim) cannot take the bucket as a subdomain).
    type: str
    choices: [auto, path, virtual]
    default: auto
  run_id:
    description:
      - The run, stable across its attempts (letters, digits, C(.), C(_), C(-)). Required by every action but
        O(action=check).
    type: str
  attempt:
    description:
      - The attempt (0 or more), counting up each time the run starts again. For O(action=grant) and
        O(action=fence).
    type: int
  resumed_from:
    description:
      - For O(action=fence), the checkpoint the attempt continues from; omit it (or null) for a fresh start.
    type: dict
    suboptions:
      attempt:
        description: The earlier attempt that wrote the checkpoint.
        type: int
        required: true
      step:
        description: The checkpoint's step.
        type: int
        required: true
  expires_s:
    description: How long the upload grant is valid, in seconds; capped at 7 days (SigV4's limit).
    type: int
    default: 86400
  keep:
    description: How many complete checkpoints of the lineage O(action=retain) keeps; at least 2, so a corrupt
      newest one always has a fallback.
    type: int
    default: 2
  stale_s:
    description: O(action=retain) deletes an incomplete checkpoint only when nothing in it was written for this long.
    type: float
    default: 3600
  limit:
    description: How many candidates O(action=plan) returns, and O(action=download) tries.
    type: int
    default: 3
  dest:
    description:
      - For O(action=download), the directory the checkpoint lands in, as C(<dest>/checkpoint-<step>) with its
        manifest. It goes to a staging directory first and is renamed only once every sha256 matches.
    type: path
notes:
  - RV(grant.fields) holds the policy's signature, with which anyone can upload below RV(grant.key_prefix)
    until RV(grant.expires_at). A module cannot hide its own result, so set C(no_log) to C(true) on the task
    (C(register) still gets the grant); without it the module warns, and C(-v), callbacks and logs show the
    signature. The presigned URLs of O(action=plan) let anyone read a checkpoint for an hour; treat them the
    same way. The storage's secret key is never in any result.
  - A host uploads each file of a sealed checkpoint with a multipart/form-data POST to RV(grant.url), with every
    field of RV(grant.fields), C(key) set to RV(grant.key_prefix) + C(checkpoint-<step>/<path>), and the file
    last; then the manifest. An object larger than 5 GiB cannot be posted.
  - A checkpoint counts as complete when its manifest object exists and every file it lists is stored with its
    size; the sha256 is checked after a download, so a consumer of RV(plan) tries them in order.
"""

EXAMPLES = r"""
- name: The bucket is there and the controller's credentials reach it
  mlops.vast.checkpoint_store:
    action: check
    bucket: ckpts
    endpoint_url: http://127.0.0.1:5077

- name: Attempt 3 resumes from attempt 2's step 1200
  mlops.vast.checkpoint_store:
    action: fence
    bucket: ckpts
    run_id: llama-sft
    attempt: 3
    resumed_from: {attempt: 2, step: 1200}

- name: Let attempt 3's host upload its checkpoints for two days
  mlops.vast.checkpoint_store:
    action: grant
    bucket: ckpts
    endpoint_url: http://127.0.0.1:5077
    host_endpoint_url: http://s3.vastsim
    run_id: llama-sft
    attempt: 3
    expires_s: 172800
  register: upload
  no_log: true

- name: What to restore from, best first
  mlops.vast.checkpoint_store:
    action: plan
    bucket: ckpts
    run_id: llama-sft
  register: restore

- name: Keep the newest two complete checkpoints (run with --check to see what would go)
  mlops.vast.checkpoint_store:
    action: retain
    bucket: ckpts
    run_id: llama-sft
    keep: 2

- name: Bring the newest whole checkpoint home
  mlops.vast.checkpoint_store:
    action: download
    bucket: ckpts
    run_id: llama-sft
    dest: "{{ playbook_dir }}/checkpoints/llama-sft"
"""

RETURN = r"""
store:
  description: The bucket, prefix and endpoints used (C(bucket), C(prefix), C(endpoint_url), C(host_endpoint_url)).
  returned: always
  type: dict
grant:
  description: The presigned POST for the attempt. Secret until it expires; see the notes.
  returned: O(action=grant)
  type: dict
  contains:
    url:
      description: Where the host posts, for O(host_endpoint_url).
      type: str
    fields:
      description: The form fields to send with every upload (the policy, its signature, the credential scope).
      type: dict
    key_prefix:
      description: Every key the host writes starts with this, C(<prefix>/<run_id>/attempt-<attempt>/).
      type: str
    expires_s:
      description: The grant's lifetime, after the 7-day cap.
      type: int
    expires_at:
      description: When it expires, in seconds since the epoch.
      type: float
    max_object_bytes:
      description: The largest object the policy accepts.
      type: int
fence:
  description: The attempt's fence, C(attempt), C(resumed_from) (C(attempt), C(step), or null) and C(at).
  returned: O(action=fence)
  type: dict
key:
  description: The fence's object key.
  returned: O(action=fence)
  type: str
fences:
  description: Every fence of the run, oldest attempt first.
  returned: O(action=list)
  type: list
  elements: dict
checkpoints:
  description:
    - Every checkpoint whose manifest object exists, newest attempt and step first, each with C(attempt), C(step),
      C(name), C(key_prefix), C(manifest_key), C(manifest), C(error) (an unreadable manifest), C(objects) (key,
      path, size), C(missing), C(complete), C(bytes), C(published_at) and C(excluded) (why the fences leave it
      out of the lineage, or null).
  returned: O(action=list)
  type: list
  elements: dict
count:
  description: How many checkpoints RV(checkpoints) or RV(plan) holds.
  returned: O(action=list) or O(action=plan)
  type: int
plan:
  description:
    - The complete checkpoints to restore from, best first, at most O(limit); each with C(attempt), C(step),
      C(name), C(key_prefix), C(manifest_key), C(manifest), C(manifest_url), C(urls) (each file's path in the
      checkpoint to its URL), C(bytes) and C(expires_at). Empty when there is nothing to restore from (a fresh
      start).
  returned: O(action=plan)
  type: list
  elements: dict
deleted:
  description: The checkpoints deleted (or, in check mode, that would be), each with C(name), C(attempt), C(step),
    C(key_prefix), C(reason) and C(objects).
  returned: O(action=retain)
  type: list
  elements: dict
kept:
  description: The complete checkpoints of the lineage kept.
  returned: O(action=retain)
  type: list
  elements: dict
uploading:
  description: Incomplete checkpoints kept because something in them was written within O(stale_s).
  returned: O(action=retain)
  type: list
  elements: dict
fenced_out:
  description: Complete checkpoints the fences leave out of the lineage; never restored, never deleted here.
  returned: O(action=retain)
  type: list
  elements: dict
aborted:
  description: The unfinished multipart uploads aborted (or that would be), each with C(key), C(upload_id) and
    C(initiated).
  returned: O(action=abort_uploads)
  type: list
  elements: dict
path:
  description: The local checkpoint directory, or null when there was nothing whole to download.
  returned: O(action=download)
  type: str
checkpoint:
  description: The checkpoint downloaded (C(name), C(attempt), C(step), C(key_prefix)), or null.
  returned: O(action=download)
  type: dict
skipped:
  description: Candidates passed over because their stored copy did not match the manifest, with C(problems).
  returned: O(action=download)
  type: list
  elements: dict
"""

from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ..module_utils.checkpoint_manifest import verify_dir
from ..module_utils.checkpoint_store import BOTO3_IMPORT_ERROR, CheckpointStoreError, S3Store

ARGUMENT_SPEC: dict[str, Any] = {
    "action": {"type": "str", "required": True,
               "choices": ["check", "grant", "fence", "list", "plan", "retain", "abort_uploads", "download"]},
    "bucket": {"type": "str", "required": True},
    "prefix": {"type": "str", "default": ""},
    "endpoint_url": {"type": "str"},
    "host_endpoint_url": {"type": "str"},
    "region": {"type": "str"},
    "addressing": {"type": "str", "default": "auto", "choices": ["auto", "path", "virtual"]},
    "run_id": {"type": "str"},
    "attempt": {"type": "int"},
    "resumed_from": {"type": "dict", "options": {"attempt": {"type": "int", "required": True},
                                                 "step": {"type": "int", "required": True}}},
    "expires_s": {"type": "int", "default": 86400},
    "keep": {"type": "int", "default": 2},
    "stale_s": {"type": "float", "default": 3600.0},
    "limit": {"type": "int", "default": 3},
    "dest": {"type": "path"},
}
REQUIRED_IF = [
    ("action", "grant", ["run_id", "attempt"]),
    ("action", "fence", ["run_id", "attempt"]),
    ("action", "list", ["run_id"]),
    ("action", "plan", ["run_id"]),
    ("action", "retain", ["run_id"]),
    ("action", "abort_uploads", ["run_id"]),
    ("action", "download", ["run_id", "dest"]),
]


def run(module: AnsibleModule, store: S3Store) -> dict[str, Any]:
    params, check_mode = module.params, module.check_mode
    action, run_id = params["action"], params["run_id"]
    if action == "check":
        store.check()
        return {"changed": False}
    if action == "grant":
        # A module cannot censor its own result (Ansible strips _ansible_* keys from it); only the task's
        # no_log hides it from the output, callbacks and logs, while register still keeps it.
        grant = store.upload_grant(run_id, params["attempt"], params["expires_s"])
        if not module.no_log:
            module.warn(f"this task's result holds the upload grant's signature, which lets anyone upload below "
                        f"{grant['key_prefix']} in bucket {store.bucket} until it expires; set no_log: true on "
                        "the task")
        return {"changed": False, "grant": grant}
    if action == "fence":
        done = store.write_fence(run_id, params["attempt"], params["resumed_from"], dry_run=check_mode)
        return {"changed": done["changed"], "fence": done["fence"], "key": done["key"]}
    if action == "list":
        checkpoints = store.published(run_id)
        return {"changed": False, "checkpoints": checkpoints, "count": len(checkpoints),
                "fences": store.fences(run_id)}
    if action == "plan":
        plan = store.restore_plan(run_id, params["limit"])
        return {"changed": False, "plan": plan, "count": len(plan)}
    if action == "retain":
        done = store.retain(run_id, params["keep"], stale_s=params["stale_s"], dry_run=check_mode)
        return {"changed": bool(done["deleted"]), **done}
    if action == "abort_uploads":
        aborted = store.abort_incomplete_uploads(run_id, dry_run=check_mode)
        return {"changed": bool(aborted), "aborted": aborted}
    if check_mode:
        return _would_download(store, run_id, Path(params["dest"]), params["limit"])
    done = store.download_latest(run_id, params["dest"], params["limit"])
    for skipped in done["skipped"]:
        module.warn(f"{skipped['name']} of attempt {skipped['attempt']} does not match its manifest "
                    f"({'; '.join(skipped['problems'][:3])}); fell back to the next checkpoint")
    return {"changed": done["changed"], "path": done["path"], "checkpoint": done["checkpoint"],
            "skipped": done["skipped"]}


def _would_download(store: S3Store, run_id: str, dest: Path, limit: int) -> dict[str, Any]:
    plan = store.restore_plan(run_id, limit)
    if not plan:
        return {"changed": False, "path": None, "checkpoint": None, "skipped": []}
    best = plan[0]
    target = dest / best["name"]
    present = target.is_dir() and not verify_dir(target, best["manifest"])
    summary = {key: best[key] for key in ("name", "attempt", "step", "key_prefix")}
    return {"changed": not present, "path": str(target), "checkpoint": summary, "skipped": []}


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, required_if=REQUIRED_IF)
    if BOTO3_IMPORT_ERROR is not None:
        module.fail_json(msg=f"{missing_required_lib('boto3')} Install it with: pip install boto3 "
                             f"({BOTO3_IMPORT_ERROR})")
    params = module.params
    where = {"bucket": params["bucket"], "prefix": params["prefix"], "endpoint_url": params["endpoint_url"],
             "host_endpoint_url": params["host_endpoint_url"] or params["endpoint_url"]}
    try:
        store = S3Store(params["bucket"], params["prefix"], params["endpoint_url"], params["host_endpoint_url"],
                        params["region"], params["addressing"])
        where["prefix"] = store.prefix
        result = run(module, store)
    except (CheckpointStoreError, ValueError) as exc:
        module.fail_json(msg=str(exc), store=where)
    module.exit_json(store=where, **result)


if __name__ == "__main__":
    main()
