#!/usr/bin/env bash
# The main job: builds DVM and runs the dynamic-shape demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh >/dev/null
exec ./build/dvm demo "$@"
