#!/usr/bin/env bash
# Configures and builds DVM into build/ (Release), warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDVM_WERROR=ON >/dev/null
cmake --build build -j "$(nproc)"
