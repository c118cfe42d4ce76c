#!/usr/bin/env bash
# ansible-test sanity on the collection as Galaxy would ship it: built with ansible-galaxy (galaxy.yml's
# build_ignore leaves out vastsim, the test suite, benchmarks and Molecule), unpacked under
# ansible_collections/mlops/vast in a scratch directory, checked there. Extra arguments go to
# ansible-test (scripts/sanity.sh --test validate-modules).
#
# ansible-test keeps its virtual environments under $HOME/.ansible/test; HOME is .cache/ansible-test
# here, so they are reused between runs and nothing lands in the user's home. It bootstraps pip in them
# from ci-files.testing.ansible.com, which a machine that reaches only the package registries cannot
# reach: the stand-in below (written only if the real one is not cached) takes pip from the
# interpreter's own ensurepip and the pinned version from the package index instead.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export PATH="$repo/.venv/bin:$PATH"

home="$repo/.cache/ansible-test"
cache="$home/.ansible/test/cache"
mkdir -p "$cache" "$home/.config/pip"
# pip's progress in the test environments says nothing a failure would not; errors still show.
printf '[global]\nquiet = 1\ndisable-pip-version-check = true\n' >"$home/.config/pip/pip.conf"
pip_version="$(python - <<'EOF'
from ansible_test._internal.python_requirements import get_venv_packages
from ansible_test._internal.host_configs import NativePythonConfig
print(get_venv_packages(NativePythonConfig(version="3.11", path="/"))["pip"])
EOF
)"
bootstrap="$cache/get_pip_${pip_version//./_}.py"
if [[ ! -s $bootstrap ]]; then
  cat >"$bootstrap" <<'EOF'
# Stand-in for get-pip.py (written by scripts/sanity.sh): pip from this interpreter's ensurepip, then the
# requested packages from the package index. ensurepip runs in a process of its own: it points pip's
# configuration at /dev/null in the environment of the process it runs in.
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip"], stdout=subprocess.DEVNULL)
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
EOF
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
ansible-galaxy collection build --output-path "$scratch" >/dev/null
target="$scratch/ansible_collections/mlops/vast"
mkdir -p "$target"
tar -xzf "$scratch"/mlops-vast-*.tar.gz -C "$target"
cd "$target"
HOME="$home" ansible-test sanity --python 3.11 --color no "$@"
