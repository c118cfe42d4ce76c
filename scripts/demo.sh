#!/usr/bin/env bash
# The main job: set up everything (idempotently), then run playbooks/train.yml with
# examples/run.yml: a real (tiny, CPU) training run from nothing to verified checkpoints on this
# machine, and nothing left billing. Without VAST_API_KEY it starts vastsim on loopback, points the
# playbook at it, and stops it afterwards. With VAST_API_KEY set, the same playbook rents on
# Vast.ai. On Ctrl-C, playbooks/teardown.yml destroys whatever the run had rented.
# Extra arguments go to ansible-playbook (e.g. -e run_name=my-run).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/bootstrap.sh
export PATH="$repo/.venv/bin:$PATH"

workdir="$repo/.vastsim"
mkdir -p "$workdir"
# The ledger (and, next to it, the collection's own SSH key, created on the first run) stay in .vastsim.
export MLOPS_VAST_LEDGER="${MLOPS_VAST_LEDGER:-$workdir/contracts.jsonl}"
export MLOPS_VAST_EXCLUSIONS="${MLOPS_VAST_EXCLUSIONS:-$workdir/excluded_machines.json}"

sim_started=""
stop_sim() {
  # vastsim stop: SIGTERM by the pid in its ready file, wait, and check it left nothing behind.
  if [[ -n $sim_started ]]; then
    vastsim stop --state-dir "$workdir/state" || echo "demo: vastsim left something behind (see above)" >&2
  fi
}
play_pid=""
interrupted() {
  echo "demo: interrupted; stopping the playbook, then destroying what it rented (playbooks/teardown.yml)" >&2
  if [[ -n $play_pid ]] && kill -0 "$play_pid" 2>/dev/null; then
    kill -TERM "$play_pid" 2>/dev/null || true
    wait "$play_pid" 2>/dev/null || true
  fi
  ansible-playbook playbooks/teardown.yml || true
  exit 130
}
trap stop_sim EXIT
trap interrupted INT TERM

if [[ -z ${VAST_API_KEY:-} ]]; then
  speed="${VASTSIM_SPEED:-20}"
  echo "demo: no VAST_API_KEY set, so starting vastsim (speed ${speed}x, state in .vastsim/state)" >&2
  # In the background; it returns once the simulator serves (or fails, with its log's end).
  # It prints shell assignments (VAST_URL, VASTSIM_PID, VASTSIM_STATE_DIR).
  started="$(vastsim start --state-dir "$workdir/state" --speed "$speed" --log-file "$workdir/vastsim.log")" || {
    echo "demo: vastsim did not start; see .vastsim/vastsim.log" >&2; exit 1; }
  sim_started=1
  eval "$started"
  export VAST_URL
  VAST_API_KEY="$(cat "$workdir/state/api_key")"
  export VAST_API_KEY
  echo "demo: vastsim at $VAST_URL" >&2
else
  echo "demo: VAST_API_KEY is set: running against ${VAST_URL:-https://console.vast.ai} (real money)" >&2
fi

# In the background so that Ctrl-C reaches the trap above while the playbook runs.
ansible-playbook playbooks/train.yml -e @examples/run.yml "$@" &
play_pid=$!
wait "$play_pid"
