#!/usr/bin/env bash
# Install what the Slurm tests need (Debian's slurmctld, slurmd, slurm-client, munge), as root.
# The tests then start a 2-node cluster on localhost themselves (tests/slurm_cluster.py).
# Not root or no apt: print why and do nothing (the Slurm tests then skip with that reason, except in CI).
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install_slurm: not root or no apt-get: the Slurm tests will skip (install slurmctld slurmd slurm-client munge to run them)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
echo "install_slurm: installed $(slurmd -V)"
