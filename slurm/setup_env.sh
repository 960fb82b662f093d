#!/usr/bin/env bash
# Build the kit's environment on a cluster, configured by a profile (run on the login node, or submit it:
# `sbatch --account=... --partition=... --time=00:30:00 slurm/setup_env.sh lumi`).
#
#   slurm/setup_env.sh PROFILE      PROFILE: lumi | nvidia | local | path/to/profile.yaml
#
# Profile keys used: modules (loaded first), venv (where), torch: module | pip.
#   torch: module   a venv on top of the cluster's PyTorch (--system-site-packages, torch not reinstalled);
#                   on LUMI: the PyTorch module (ROCm build)
#   torch: pip      a venv with torch from pip (TORCH_SPEC, default the pinned CPU build; give the CUDA index)
# For containers (LUMI cotainr / container-wrapper), build from environment.yml instead:
#   cotainr build kit.sif --base-image=<rocm base> --conda-env=environment.yml
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:?usage: slurm/setup_env.sh PROFILE}
[[ -f "$profile" ]] || profile="slurm/profiles/$profile.yaml"
[[ -f "$profile" ]] || { echo "setup_env: no profile $1 (see slurm/profiles/)" >&2; exit 2; }

# the few keys we need, read without a YAML library (none may be installed yet)
modules=$(awk '/^modules:/{f=1;next} /^[^ -]/{f=0} f && /^ *- /{sub(/^ *- */,""); sub(/ *#.*/,""); print}' "$profile")
venv=$(awk -F': *' '/^venv:/{sub(/ *#.*/,"",$2); print $2}' "$profile")
torch=$(awk -F': *' '/^torch:/{sub(/ *#.*/,"",$2); print $2}' "$profile")
torch=${torch:-pip}

if [[ -n "$modules" ]] && command -v module >/dev/null 2>&1; then
    for m in $modules; do module load "$m"; done
fi
if [[ "$torch" == module ]]; then
    python3 -c "import torch; print('setup_env: using the cluster torch', torch.__version__)"
    VENV="${venv:-.venv}" TORCH_SPEC=skip VENV_FLAGS=--system-site-packages bash scripts/setup.sh
else
    VENV="${venv:-.venv}" bash scripts/setup.sh
fi
"${venv:-.venv}/bin/python" -m workshop_lib doctor || true
