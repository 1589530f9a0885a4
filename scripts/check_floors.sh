#!/usr/bin/env bash
# Run the test suite against the version floors that pyproject.toml declares.
#
# The floors of the packages whose APIs routekit leans on (FLOORED below) are installed
# exactly ("name>=X" becomes "name==X") in a fresh virtual environment, torch through
# scripts/install.sh as users get it; every other requirement resolves as usual. Then the
# README's test command runs: a floor is true when this passes.
# Usage: bash scripts/check_floors.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_DIR="$(mktemp -d "${TMPDIR:-/tmp}/routekit-floors.XXXXXX")"
trap 'rm -rf "$ENV_DIR"' EXIT
python3 -m venv "$ENV_DIR/venv"
export PATH="$ENV_DIR/venv/bin:$PATH"
unset PYTHONPATH
PINS="$ENV_DIR/floors.txt"
python3 - "$PINS" <<'PY'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
# torch is pinned through TORCH_VERSION below: the CPU build scripts/install.sh chooses.
FLOORED = {"transformers", "peft", "accelerate", "datasets", "pydantic"}
pins = []
for r in reqs:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)\s*", r.split("#")[0])
    if m and m.group(1) in FLOORED:
        pins.append(f"{m.group(1)}=={m.group(2)}")
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
print("floors:", " ".join(pins))
PY
TORCH_VERSION="$(python3 -c 'import re,tomllib; d=tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"]; print(next(re.search(r">=([0-9.]+)", r).group(1) for r in d if r.startswith("torch")))')"
TORCH_VERSION="$TORCH_VERSION" PIP_CONSTRAINT="$PINS" bash scripts/install.sh dev
python3 -m pip list 2>/dev/null | grep -iE "^(torch|transformers|peft|accelerate|datasets|pydantic|safetensors|tokenizers) "
python3 -m pytest -q -p no:cacheprovider
