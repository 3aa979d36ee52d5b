#!/usr/bin/env bash
# build.sh - configures and builds into $BUILD_DIR (default build/).
#   BW_SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer build
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
args=(-DCMAKE_BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo})
if [[ "${BW_SANITIZE:-0}" == 1 ]]; then
    args=(-DCMAKE_BUILD_TYPE=Debug -DBW_SANITIZE=ON)
fi
cmake -S . -B "$build_dir" "${args[@]}" >/dev/null
cmake --build "$build_dir" -j"$(nproc)"
