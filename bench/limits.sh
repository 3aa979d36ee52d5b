#!/usr/bin/env bash
# bench/limits.sh - what the rate limiter and the circuit breaker cost, and how exact the limiter
# is (issues 4 and 5 targets). Benchmarks, not tests: run on a quiet machine.
#
#   1. accuracy: bw_load offers OFFERED req/s (open loop) for DURATION s to a route limited to
#      LIMIT/s (burst BURST, key global); admitted must be BURST + LIMIT * DURATION within 1%.
#   2. limiter overhead: wrk on a route whose limit never refuses vs the same route without a
#      limit, alternating ROUNDS times; req/s and worker CPU per request.
#   3. rejection cost: wrk on a route whose upstream's breaker is forced open (every answer a
#      503 circuit_open made by the worker): req/s, p50 and worker CPU per request.
#
# usage: bench/limits.sh   (env: WORKERS=2 DURATION=10 OFFERED=10000 LIMIT=5000 BURST=100
#                           ROUNDS=3 BUILD_DIR=build)
# Prints a markdown report on stdout. Every process it starts is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORKERS=${WORKERS:-2}
DURATION=${DURATION:-10}
OFFERED=${OFFERED:-10000}
LIMIT=${LIMIT:-5000}
BURST=${BURST:-100}
ROUNDS=${ROUNDS:-3}
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
TMP=$(mktemp -d /tmp/bw-limits.XXXXXX)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU seconds (utime+stime) of a process and all its children
cpu_of() {
    local total=0 pid
    for pid in "$1" $(ps -o pid= --ppid "$1"); do
        read -r -a f < "/proc/$pid/stat" || continue
        total=$((total + f[13] + f[14]))
    done
    echo "$total"
}

"$BUILD_DIR/bw_upstream" --listen 127.0.0.1:0 --name bench > "$TMP/up.out" 2> /dev/null &
PIDS+=($!)
for _ in $(seq 50); do grep -q PORT "$TMP/up.out" && break; sleep 0.05; done
UP=$(awk '/PORT/ {print $2}' "$TMP/up.out")
PORT=$(free_port)
ADMIN=$(free_port)
cat > "$TMP/bw.yaml" << EOF
listen: ["127.0.0.1:$PORT"]
workers: $WORKERS
state_dir: $TMP/var
admin: { listen: "127.0.0.1:$ADMIN" }
upstreams:
  u: { hosts: ["127.0.0.1:$UP"] }
  dead: { hosts: ["127.0.0.1:$UP"] }
routes:
  - name: limited
    match: { path_prefix: /limited }
    upstream: u
    rate_limit: { rate: $LIMIT/s, burst: $BURST, key: global }
  - name: neverlimited
    match: { path_prefix: /neverlimited }
    upstream: u
    rate_limit: { rate: 100000000/s, burst: 1000000, key: client_ip }
  - name: rejected
    match: { path_prefix: /rejected }
    upstream: dead
  - name: plain
    match: { path_prefix: / }
    upstream: u
EOF
"$BUILD_DIR/breakwater" -c "$TMP/bw.yaml" 2> "$TMP/bw.log" &
GW=$!
PIDS+=("$GW")
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/readyz" > /dev/null && break
    sleep 0.05
done
curl -sf -X POST -d '{"action":"force_open"}' "http://127.0.0.1:$ADMIN/api/v1/upstreams/dead/breaker" > /dev/null

echo "# Limiter and breaker benchmark: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- Breakwater: $WORKERS workers; one bw_upstream; everything on loopback"
echo

# 1. accuracy
sleep 1.5 # let the bucket fill
"$BUILD_DIR/bw_load" -q -c 64 -r "$OFFERED" -d "$DURATION" --json "$TMP/acc.json" "http://127.0.0.1:$PORT/limited" > /dev/null
python3 - "$TMP/acc.json" "$LIMIT" "$BURST" "$DURATION" "$OFFERED" << 'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
limit, burst, dur, offered = (int(x) for x in sys.argv[2:6])
ok = int(s["ok"])
limited = int(s.get("status", {}).get("429", 0))
secs = float(s.get("duration_s", dur))
expected = round(burst + limit * secs)
print("## 1. Limiter accuracy")
print()
print(f"Offered {offered} req/s for {secs:.2f} s (open loop, achieved {s.get('rate', 0):.0f} req/s) "
      f"to a route limited to {limit}/s, burst {burst}. Expected = burst + limit x duration.")
print()
print("| sent | admitted (200) | refused (429) | expected | error |")
print("|---:|---:|---:|---:|---:|")
print(f"| {s.get('requests')} | {ok} | {limited} | {expected} | {100.0 * (ok - expected) / expected:+.2f}% |")
print()
EOF

# 2. overhead and 3. rejection cost, with wrk
run_wrk() { # path -> "req/s p50_ms cpu_us_per_req"
    local before after out reqs
    before=$(cpu_of "$GW")
    out=$(wrk -t2 -c32 -d"$DURATION"s --latency "http://127.0.0.1:$PORT$1")
    after=$(cpu_of "$GW")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    python3 -c "
import re, sys
out = sys.argv[1]
rps = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
p50 = re.search(r'50%\s+([\d.]+)(us|ms|s)', out)
v = float(p50.group(1)) * {'us': 0.001, 'ms': 1, 's': 1000}[p50.group(2)]
ticks = int(sys.argv[2]) - int(sys.argv[3])
hz = 100
print(f'{rps:.0f} {v:.3f} {ticks / hz / int(sys.argv[4]) * 1e6:.1f}')
" "$out" "$after" "$before" "$reqs"
}

echo "## 2. Limiter overhead on the happy path"
echo
echo "wrk -t2 -c32, ${DURATION}s per run, alternating; gateway CPU is all its processes."
echo
echo "| round | route | req/s | p50 ms | gateway CPU us/req |"
echo "|---:|---|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    for route in plain neverlimited; do
        read -r rps p50 cpu <<< "$(run_wrk "/$route/x")"
        echo "| $r | $route | $rps | $p50 | $cpu |"
    done
done
echo
echo "## 3. Cost of a rejection (breaker forced open: 503 circuit_open from the worker)"
echo
read -r rps p50 cpu <<< "$(run_wrk /rejected/x)"
echo "| req/s | p50 ms | gateway CPU us/req |"
echo "|---:|---:|---:|"
echo "| $rps | $p50 | $cpu |"
