#!/usr/bin/env bash
# The test command: set up everything (idempotently), lint, then run the whole suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/bootstrap.sh
export PATH="$repo/.venv/bin:$PATH"

ruff check src tests bench plugins examples
ansible-lint -q
playbooks=()
for book in playbooks/*.yml; do
  [[ $book == *.meta.yml ]] || playbooks+=("$book")  # train.meta.yml is train.yml's argument spec
done
ansible-playbook --syntax-check "${playbooks[@]}"
# Ansible's own checks, on the collection as Galaxy would ship it.
scripts/sanity.sh
# pytest exits 5 when it collected nothing; that is a failure here, as is any other non-zero code.
# Two workers, each a whole test file at a time (a file's shared simulator stays in one worker);
# MLOPS_VAST_TEST_WORKERS=0 runs everything in this process. The slowest tests are listed at the end.
pytest -n "${MLOPS_VAST_TEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
