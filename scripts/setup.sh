#!/usr/bin/env bash
# setup.sh - installs the Debian 12 packages that Breakwater's build and tests need, and nothing
# when they are all present already (so it is cheap to run before every build).
#   scripts/setup.sh           build + test dependencies
#   scripts/setup.sh --bench   also the benchmark tools (wrk, h2load, nginx)
set -euo pipefail

packages=(
    build-essential cmake pkg-config
    libh2o-dev libuv1-dev libssl-dev    # libh2o-dev does not pull the other two, but h2o.h needs them
    libcurl4-openssl-dev libsqlite3-dev
    libyaml-dev                         # config parser
    libjansson-dev                      # JSON for the admin API, logs and alert payloads
    libcmocka-dev                       # unit-test framework
    python3 python3-pytest              # integration tests
    curl sqlite3 iproute2 procps nftables
    wrk                                 # reload-under-load test (drives a steady load)
    gnuplot-nox                         # chaos/plot.sh timelines
    faketime                            # chaos clock_jump scenario (CLOCK_REALTIME only)
)
if [[ "${1:-}" == "--bench" ]]; then
    packages+=(nghttp2-client nginx-light)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: missing packages: ${missing[*]}; run as root or install them" >&2
    exit 1
fi
echo "setup.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
