#!/usr/bin/env bash
# The main job: set up everything (idempotently), then run the marketplace end to end.
# Without VAST_API_KEY it starts vastsim on loopback, points the playbook at it, and stops it
# afterwards (also on Ctrl-C). With VAST_API_KEY set, the same playbook talks to real Vast.ai.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/bootstrap.sh
export PATH="$repo/.venv/bin:$PATH"

workdir="$repo/.vastsim"
mkdir -p "$workdir"
key="$workdir/demo_ed25519"
[[ -f $key ]] || ssh-keygen -q -t ed25519 -N '' -C mlops-vast-demo -f "$key"
export DEMO_SSH_KEY="$key"
export MLOPS_VAST_LEDGER="${MLOPS_VAST_LEDGER:-$workdir/contracts.jsonl}"

sim_pid=""
stop_sim() {
  if [[ -n $sim_pid ]] && kill -0 "$sim_pid" 2>/dev/null; then
    kill -TERM "$sim_pid"
    wait "$sim_pid" || true
  fi
}
trap stop_sim EXIT
trap 'exit 130' INT TERM

if [[ -z ${VAST_API_KEY:-} ]]; then
  speed="${VASTSIM_SPEED:-20}"
  echo "demo: no VAST_API_KEY set, so starting vastsim (speed ${speed}x, state in .vastsim/state)" >&2
  coproc SIM { exec vastsim serve --state-dir "$workdir/state" --speed "$speed" 2>>"$workdir/vastsim.log"; }
  sim_pid=$SIM_PID
  read -r -t 60 line <&"${SIM[0]}" || { echo "demo: vastsim did not start; see .vastsim/vastsim.log" >&2; exit 1; }
  export VAST_URL="${line#VAST_URL=}"
  VAST_API_KEY="$(cat "$workdir/state/api_key")"
  export VAST_API_KEY
  echo "demo: vastsim at $VAST_URL" >&2
else
  echo "demo: VAST_API_KEY is set: running against ${VAST_URL:-https://console.vast.ai} (real money)" >&2
fi

ansible-playbook playbooks/marketplace.yml "$@"
