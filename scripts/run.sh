#!/usr/bin/env bash
# run.sh - the README's run command: installs what is missing, builds, starts the demo upstream
# that the embedded default config points at (127.0.0.1:9001), then runs the gateway in the
# foreground on the embedded default config. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
build_dir=${BUILD_DIR:-build}

"$build_dir/bw_upstream" --listen 127.0.0.1:9001 --name demo >/dev/null &
upstream_pid=$!
gateway_pid=
stop() {
    [[ -n "$gateway_pid" ]] && kill "$gateway_pid" 2>/dev/null && wait "$gateway_pid" 2>/dev/null
    kill "$upstream_pid" 2>/dev/null && wait "$upstream_pid" 2>/dev/null
    return 0
}
trap stop EXIT
trap 'exit 0' INT TERM
echo "demo upstream on 127.0.0.1:9001 (pid $upstream_pid); gateway on 127.0.0.1:8080, admin on 127.0.0.1:9901" >&2
echo "try: curl -i localhost:8080/hello   curl localhost:9901/metrics" >&2
"$build_dir/breakwater" &
gateway_pid=$!
wait "$gateway_pid"
