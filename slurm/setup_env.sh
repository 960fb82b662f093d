#!/usr/bin/env bash
# Build the kit's environment on a cluster, configured by a profile (run on the login node, or submit it:
# `sbatch --account=... --partition=... --time=00:30:00 slurm/setup_env.sh lumi`).
#
#   slurm/setup_env.sh PROFILE      PROFILE: lumi | nvidia | local | path/to/profile.yaml
#
# Profile keys used: modules (loaded first), venv (where), torch: container | module | pip, and with routes:
# the chosen route's modules and image (slurm/profiles/lumi.yaml).
#   torch: container  LUMI's default (its AI guide): the venv is made INSIDE the route's Singularity image with
#                     --system-site-packages (torch, RCCL and DeepSpeed from the image); the job runs
#                     `singularity exec $SIF .venv/bin/python`, so the venv only works inside that image
#   torch: module     a venv on top of the cluster's PyTorch module (--system-site-packages, torch not
#                     reinstalled); LUMI's PyTorch modules are containers too: their route gives image: $SIF
#   torch: pip        a venv with torch from pip (TORCH_SPEC, default the pinned CPU build; give the CUDA index)
# A venv is thousands of small files on Lustre: LUMI's guide suggests packing it into a SquashFS image later.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:?usage: slurm/setup_env.sh PROFILE}
[[ -f "$profile" ]] || profile="slurm/profiles/$profile.yaml"
[[ -f "$profile" ]] || { echo "setup_env: no profile $1 (see slurm/profiles/)" >&2; exit 2; }

# the few keys we need, read without a YAML library (none may be installed yet)
key() { awk -F': *' -v k="$1" '$1 == k {sub(/ *#.*/, "", $2); print $2}' "$profile"; }
venv=$(key venv)
torch=$(key torch)
torch=${torch:-pip}
# modules: the top-level list, then the chosen route's list (routes: -> <torch>: -> modules:)
modules=$(awk -v r="$torch" '
  /^[^ #]/ {top = $1; route = ""; list = (top == "modules:")}
  top == "routes:" && /^  [^ #-]/ {route = $1; list = 0}
  top == "routes:" && /^    [^ #-]/ {list = (route == r ":" && $1 == "modules:")}
  list && /^ *- / {sub(/^ *- */, ""); sub(/ +#.*/, ""); print}' "$profile")
image=$(awk -v r="$torch" '
  /^[^ #]/ {top = $1; route = ""}
  top == "routes:" && /^  [^ #-]/ {route = $1}
  top == "routes:" && route == r ":" && $1 == "image:" {print $2}' "$profile")
[[ -n "$image" ]] || { image=$(key container); [[ "$image" == null ]] && image=""; }

if command -v module >/dev/null 2>&1; then
    while IFS= read -r m; do
        [[ -z "$m" ]] && continue
        case "${m%% *}" in use|unuse|purge) module $m ;; *) module load "$m" ;; esac
    done <<< "$modules"
fi
if [[ -n "$image" ]]; then
    [[ "$image" == '$SIF' ]] && image=${SIF:?setup_env: the modules of this route did not set SIF}
    echo "setup_env: building ${venv:-.venv} inside $image"
    singularity exec --bind "$PWD" "$image" env VENV="${venv:-.venv}" TORCH_SPEC=skip \
        VENV_FLAGS=--system-site-packages PYTHON=python3 bash scripts/setup.sh
    singularity exec --bind "$PWD" "$image" "${venv:-.venv}/bin/python" -m workshop_lib doctor || true
    exit 0
fi
if [[ "$torch" == module ]]; then
    python3 -c "import torch; print('setup_env: using the cluster torch', torch.__version__)"
    VENV="${venv:-.venv}" TORCH_SPEC=skip VENV_FLAGS=--system-site-packages bash scripts/setup.sh
else
    VENV="${venv:-.venv}" bash scripts/setup.sh
fi
"${venv:-.venv}/bin/python" -m workshop_lib doctor || true
