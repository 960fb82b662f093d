#!/usr/bin/env bash
# Create or reuse the project virtual environment and install what is missing.
# Idempotent: a stamp records what was installed; a second run takes about a second.
#
#   VENV=.venv             where the environment lives
#   PYTHON=python3         the interpreter that creates it
#   TORCH_SPEC=torch==2.13.0   override for a cluster build, e.g. on LUMI use the module's torch:
#                          TORCH_SPEC=skip (keep what the base Python has, venv made with --system-site-packages)
#   VENV_FLAGS=            extra flags for `python -m venv` (e.g. --system-site-packages)
#   LOCK=1                 install the tested versions of constraints.txt; LOCK=0 lets pip pick newer ones
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}

LOCK=${LOCK:-1}
stamp_key() { cat pyproject.toml scripts/setup.sh constraints.txt; echo "$TORCH_SPEC $EXTRAS $LOCK"; }
want=$(stamp_key | sha256sum | cut -c1-16)
if [[ -f "$VENV/.workshop-stamp" && "$(cat "$VENV/.workshop-stamp")" == "$want" ]]; then
    exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv ${VENV_FLAGS:-} "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# 1. torch first and pinned: anything that depends on torch must find it satisfied.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if [[ "$TORCH_SPEC" != skip ]]; then
    pip install "$TORCH_SPEC"
fi
"$VENV/bin/python" -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" | sed 's/+.*//' >"$constraints"

# 2. the kit and its stack, never replacing that torch (and, with LOCK=1, at the tested versions).
lock=()
[[ "$LOCK" == 1 ]] && lock=(-c constraints.txt)
pip install -c "$constraints" "${lock[@]}" -e ".[$EXTRAS]"

# 3. deepspeed is sdist-only: build it against the installed torch, ops compiled on first use.
if ! "$VENV/bin/python" -c "import deepspeed" >/dev/null 2>&1; then
    DS_BUILD_OPS=0 pip install -c "$constraints" "${lock[@]}" --no-build-isolation "deepspeed>=0.16"
fi

echo "$want" >"$VENV/.workshop-stamp"
echo "setup: environment ready in $VENV ($(( $(date +%s) - start )) s)"
