#!/usr/bin/env bash
# test.sh - the README's test command: installs what is missing, builds, runs the whole suite.
#   BW_SANITIZE=1 BUILD_DIR=build-asan scripts/test.sh   the same under ASan + UBSan
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
build_dir=${BUILD_DIR:-build}
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$build_dir" --output-on-failure --timeout 600 "$@"
