#!/usr/bin/env bash
# Debian's chromium for the tests that open pages in a real browser (tests/browser_support.py:
# the Snakemake report, `dvc plots show`'s page). Does nothing when it is installed; without
# root or apt-get it says so and leaves it to those tests to skip.
#
#   scripts/install_chromium.sh
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_chromium.sh: chromium is missing and installing it needs root and apt-get;" \
       "the browser tests will skip" >&2
  exit 0
fi
echo "install_chromium.sh: installing Debian's chromium for the browser tests (apt-get)"
export DEBIAN_FRONTEND=noninteractive
# Another apt-get (e.g. the Slurm test's) may hold dpkg's lock: wait for it, up to 10 min.
apt_get() { apt-get -qq -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update
apt_get install -y --no-install-recommends chromium >/dev/null
