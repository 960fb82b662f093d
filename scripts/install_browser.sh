#!/usr/bin/env bash
# Install what the browser test needs (Debian's chromium and chromium-driver), as root.
# tests/test_browser.py then starts JupyterLab itself and drives headless Chromium with selenium.
# Not root or no apt: print why and do nothing (the browser test then skips with that reason, except in CI).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install_browser: not root or no apt-get: the browser test will skip (install chromium chromium-driver to run it)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# the package lists may be stale (install_slurm.sh refreshes them too; a second update is quick)
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install_browser: installed $(chromium --version)"
