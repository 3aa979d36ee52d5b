#!/usr/bin/env bash
# bench/run.sh - Breakwater vs nginx vs direct, same upstream, same worker count, one run.
#
# Starts one bw_upstream (tests/upstream) on a free loopback port, a Breakwater and an nginx
# (keep-alive reverse proxy) in front of it, each with W workers and a generated config in a temp
# dir, then for each target (direct, nginx, breakwater) runs a wrk warm-up and a measured wrk run.
# It prints req/s, p50, p99, the proxy's CPU per request (utime+stime of the master and all its
# children, from /proc/PID/stat, before/after the measured run) and the upstream's CPU per
# request, plus the ratios Breakwater/nginx, and writes the same as markdown to
# bench/out/latest.md, with every run's details (wrk, upstream and machine CPU, per-worker CPU,
# background load, per-round ratios) below the table; wrk's raw output and Breakwater's /metrics
# after each run go to bench/out/latest-raw/. Every process it starts is tracked by PID and
# stopped on exit (trap), also on errors and Ctrl-C.
#
# On a shared 2-core machine the load generator, both proxies and the upstream compete for the
# same CPUs with whatever else runs: CPU per request is steadier than req/s; use --rounds 5 or
# more and read the per-round ratios and the "other CPU" column (background load) in the report.
#
# usage: bench/run.sh [options]            (every option also has an environment variable)
#   -w, --workers N        proxy worker processes (W)            WORKERS=2
#   -c, --connections N    wrk connections                        CONNECTIONS=64
#   -t, --threads N        wrk threads                            THREADS=2
#   -d, --duration S       measured seconds per target            DURATION=10
#       --warmup S         warm-up seconds per target             WARMUP=3
#       --rounds N         repeat all targets N times; the table shows medians   ROUNDS=1
#       --targets LIST     comma list of direct,nginx,breakwater  TARGETS=direct,nginx,breakwater
#       --large            64 KiB response bodies (bw_upstream ?size=65536)      SCENARIO=large
#       --path PATH        request path+query (overrides the scenario's)         REQ_PATH=
#       --upstream-threads N   bw_upstream --threads              UPSTREAM_THREADS=1
#       --profile          afterwards, perf-record each proxy under the same load, and count
#                          its system calls per request (perf trace -s)          PROFILE=1
#       --nginx-extra TEXT extra directives for nginx's `location /`, e.g.
#                          'proxy_buffer_size 64k; proxy_buffers 4 64k;'      NGINX_EXTRA=
#       --no-setup         skip scripts/setup.sh --bench          SETUP=0
#       --no-build         skip scripts/build.sh                  BUILD=0
#       --out FILE         markdown output                        OUT=bench/out/latest.md
#       --keep-tmp         keep the temp dir (configs, logs)      KEEP_TMP=1
#       --rev REV          build git revision REV (e.g. HEAD) from a clean `git archive` export
#                          in bench/out/src-SHA instead of the working tree   BW_REV=
#   BUILD_DIR (default bench/out/build, or bench/out/build-SHA with --rev; so the build never
#   races with other people's build/).
#
# Fails loudly (exit 1, and the report is marked INVALID) when wrk reports non-2xx/3xx responses
# or socket errors (timeouts, resets), or when the upstream saw fewer requests than wrk completed
# (the proxy answered by itself).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

WORKERS=${WORKERS:-2}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-1}
TARGETS=${TARGETS:-direct,nginx,breakwater}
SCENARIO=${SCENARIO:-small}
REQ_PATH=${REQ_PATH:-}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
PROFILE=${PROFILE:-0}
NGINX_EXTRA=${NGINX_EXTRA:-}
SETUP=${SETUP:-1}
BUILD=${BUILD:-1}
OUT=${OUT:-$ROOT/bench/out/latest.md}
KEEP_TMP=${KEEP_TMP:-0}
BW_REV=${BW_REV:-}
BUILD_DIR=${BUILD_DIR:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { printf 'bench: ERROR: %b\n' "$*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        -w|--workers) need_arg "$@"; WORKERS=$2; shift 2 ;;
        -c|--connections) need_arg "$@"; CONNECTIONS=$2; shift 2 ;;
        -t|--threads) need_arg "$@"; THREADS=$2; shift 2 ;;
        -d|--duration) need_arg "$@"; DURATION=$2; shift 2 ;;
        --warmup) need_arg "$@"; WARMUP=$2; shift 2 ;;
        --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
        --targets) need_arg "$@"; TARGETS=$2; shift 2 ;;
        --large) SCENARIO=large; shift ;;
        --small) SCENARIO=small; shift ;;
        --path) need_arg "$@"; REQ_PATH=$2; shift 2 ;;
        --upstream-threads) need_arg "$@"; UPSTREAM_THREADS=$2; shift 2 ;;
        --profile) PROFILE=1; shift ;;
        --nginx-extra) need_arg "$@"; NGINX_EXTRA=$2; shift 2 ;;
        --no-setup) SETUP=0; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) need_arg "$@"; OUT=$2; shift 2 ;;
        --keep-tmp) KEEP_TMP=1; shift ;;
        --rev) need_arg "$@"; BW_REV=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

for v in WORKERS CONNECTIONS THREADS DURATION ROUNDS UPSTREAM_THREADS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "WARMUP must be a non-negative integer (got '$WARMUP')"
((CONNECTIONS >= THREADS)) || die "connections ($CONNECTIONS) must be >= threads ($THREADS)"
case "$SCENARIO" in
    small) EXPECT_SIZE= ; : "${REQ_PATH:=/}" ;;
    large) EXPECT_SIZE=65536; : "${REQ_PATH:=/?size=65536}" ;;
    *) die "SCENARIO must be small or large (got '$SCENARIO')" ;;
esac
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
    case "$t" in direct|nginx|breakwater) ;; *) die "unknown target '$t'" ;; esac
done
[[ "$OUT" = /* ]] || OUT="$PWD/$OUT"

# ---------------------------------------------------------------- set-up and build
cd "$ROOT"
if [[ "$SETUP" == 1 ]]; then
    scripts/setup.sh --bench
fi
SRC=$ROOT
SRC_DESC="working tree"
if [[ -n "$BW_REV" ]]; then
    sha=$(git -C "$ROOT" rev-parse --verify --short "$BW_REV^{commit}") || die "no git revision '$BW_REV'"
    SRC=$ROOT/bench/out/src-$sha
    SRC_DESC="git $sha (clean export)"
    if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
        rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
        git -C "$ROOT" archive --format=tar "$sha" | tar -x -C "$SRC.tmp"
        rm -rf "$SRC" && mv "$SRC.tmp" "$SRC"
    fi
    : "${BUILD_DIR:=$ROOT/bench/out/build-$sha}"
fi
: "${BUILD_DIR:=$ROOT/bench/out/build}"
[[ "$BUILD_DIR" = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
if [[ "$BUILD" == 1 ]]; then
    # build.sh builds everything (tests too). Other people edit the tree while we run: if their
    # half-finished test code does not compile, the two binaries we need may still build.
    blog=$(mktemp /tmp/bw-bench-build.XXXXXX)
    if ! BUILD_DIR="$BUILD_DIR" BUILD_TYPE=RelWithDebInfo "$SRC/scripts/build.sh" >"$blog" 2>&1; then
        log "scripts/build.sh failed (log: $blog); building only breakwater and bw_upstream"
        cmake --build "$BUILD_DIR" -j"$(nproc)" --target breakwater bw_upstream >&2 \
            || die "build of the $SRC_DESC failed (someone may be mid-edit): try --rev HEAD, or --no-build to reuse $BUILD_DIR"
    fi
    rm -f "$blog"
fi
[[ -d "$BUILD_DIR" ]] || die "no build directory $BUILD_DIR (drop --no-build)"
BIN=$(cd "$BUILD_DIR" && pwd)
BW_BIN=$BIN/breakwater
UP_BIN=$BIN/bw_upstream
[[ -x "$BW_BIN" && -x "$UP_BIN" ]] || die "no $BW_BIN or $UP_BIN (build first, or drop --no-build)"
for tool in wrk nginx curl python3 ps getconf; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh --bench)"
done
NGINX_BIN=$(command -v nginx)
if [[ "$PROFILE" == 1 ]]; then command -v perf >/dev/null || die "--profile needs perf (apt-get install linux-perf)"; fi
HZ=$(getconf CLK_TCK)

# ---------------------------------------------------------------- process bookkeeping
TMP=$(mktemp -d /tmp/bw-bench.XXXXXX)
STARTED=()        # PIDs we started, in start order
declare -A EXTRA  # PID -> descendants seen at start-up (stopped too, if still there)
WRK_PID=
PERF_PID=

# Stops one PID we started: TERM, up to 8 s, then KILL; reaps it.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        # a reaped child of ours disappears; an unreaped one is a zombie: wait reaps it
        [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
        log "pid $pid did not stop on TERM: KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid d cmd
    trap - EXIT INT TERM
    [[ -n "$PERF_PID" ]] && { kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; }
    [[ -n "$WRK_PID" ]] && stop_pid "$WRK_PID"
    # Children of the proxies (workers, also replacements started since): they exit with their
    # master; any that did not is stopped by PID, after checking it still runs our binary.
    for pid in "${STARTED[@]}"; do
        EXTRA[$pid]="${EXTRA[$pid]:-} $(tree "$pid" | tail -n +2 | tr '\n' ' ')"
    done
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_pid "${STARTED[i]}"
    done
    for pid in "${!EXTRA[@]}"; do
        for d in ${EXTRA[$pid]}; do
            cmd=$(readlink "/proc/$d/exe" 2>/dev/null || true)
            if [[ -n "$cmd" && ( "$cmd" == "$BW_BIN" || "$cmd" == "$NGINX_BIN" || "$cmd" == "$UP_BIN" ) ]]; then
                log "child $d of $pid still running: KILL"
                kill -KILL "$d" 2>/dev/null || true
            fi
        done
    done
    if [[ "$KEEP_TMP" == 1 || $rc -ne 0 ]]; then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# PID and all its descendants, one per line.
tree() {
    local p=$1 c
    echo "$p"
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree "$c"; done
}

# utime+stime in clock ticks summed over a process tree.
tree_ticks() {
    local p sum=0 f a
    for p in $(tree "$1"); do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }                       # drop "pid (comm) ": comm may hold spaces
        read -r -a a <<<"$f"
        sum=$((sum + a[11] + a[12]))      # fields 14 and 15 of stat: utime, stime
    done
    echo "$sum"
}

# "pid:ticks" for every process of a tree, one per line.
tree_ticks_each() {
    local p f a
    for p in $(tree "$1"); do
        f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        f=${f##*) }
        read -r -a a <<<"$f"
        echo "$p:$((a[11] + a[12]))"
    done
}

# Per-process CPU seconds between two tree_ticks_each snapshots: "pid=1.23s pid=0.02s ...".
ticks_each_delta() {
    awk -v hz="$HZ" -v before="$1" -v after="$2" 'BEGIN {
        n = split(before, b, " "); for (i = 1; i <= n; i++) { split(b[i], kv, ":"); t0[kv[1]] = kv[2] }
        n = split(after, a, " ");
        for (i = 1; i <= n; i++) { split(a[i], kv, ":"); printf "%s%s=%.2fs", (i > 1 ? " " : ""), kv[1], (kv[2] - t0[kv[1]]) / hz }
    }'
}

# Busy ticks of the whole machine (everything but idle and iowait) from /proc/stat.
machine_ticks() {
    local _cpu user nice system idle iowait irq softirq steal _rest
    read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}
softirq_ticks() {
    local _cpu _user _nice _system _idle _iowait irq softirq _rest
    read -r _cpu _user _nice _system _idle _iowait irq softirq _rest </proc/stat
    echo $((irq + softirq))
}

# CPU of this shell's reaped children (wrk), in milliseconds, from the `times` builtin. `times`
# must run in this shell, not in a $(...) subshell (a fork starts with zero children time), so
# the result goes to the variable named by $1.
children_ms() {
    local line u s
    times >"$TMP/times.txt"
    line=$(sed -n 2p "$TMP/times.txt")   # e.g. "0m1.234s 0m0.567s"
    read -r u s <<<"$line"
    printf -v "$1" '%s' "$(awk -v u="$u" -v s="$s" 'function ms(t,  m) { m = t; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", t); sub(/s$/, "", t); return (m * 60 + t) * 1000 }
        BEGIN { printf "%d\n", ms(u) + ms(s) }')"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code} %{size_download}' "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------- scheduling-gap monitor
# A 50 ms sleep loop that logs every wake-up later than 200 ms: the machine (or the VM) did not
# run us for that long. Such gaps explain wrk timeouts and watchdog kills that are not the
# gateway's fault; each run reports the longest gap seen while it ran.
python3 -u -c '
import time
while True:
    t0 = time.monotonic(); time.sleep(0.05); gap = time.monotonic() - t0
    if gap > 0.2:
        print("%.3f %.0f" % (time.time(), gap * 1000), flush=True)
' >"$TMP/gaps.txt" 2>/dev/null &
STARTED+=("$!")
max_gap_ms() {   # longest gap (ms) logged between two epoch times
    awk -v a="$1" -v b="$2" '$1 >= a && $1 - $2 / 1000 <= b && $2 > m { m = $2 } END { print m + 0 }' "$TMP/gaps.txt"
}

# ---------------------------------------------------------------- start the upstream
: >"$TMP/upstream.out"   # exists before the background child opens it: the loop below reads it
"$UP_BIN" --listen 127.0.0.1:0 --name bench --threads "$UPSTREAM_THREADS" \
    >"$TMP/upstream.out" 2>"$TMP/upstream.log" &
UP_PID=$!
STARTED+=("$UP_PID")
for ((i = 0; i < 100; i++)); do
    UP_PORT=$(awk '/^PORT /{print $2}' "$TMP/upstream.out")
    [[ -n "$UP_PORT" ]] && break
    kill -0 "$UP_PID" 2>/dev/null || die "bw_upstream exited: $(cat "$TMP/upstream.log")"
    sleep 0.05
done
[[ -n "$UP_PORT" ]] || die "bw_upstream printed no PORT line"
log "bw_upstream pid $UP_PID on 127.0.0.1:$UP_PORT ($UPSTREAM_THREADS thread(s))"

upstream_requests() {
    curl -s -m 2 "http://127.0.0.1:$UP_PORT/_stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])'
}

# ---------------------------------------------------------------- start Breakwater
want() { [[ ",$TARGETS," == *",$1,"* ]]; }
BW_PID='' NG_PID=''
if want breakwater; then
    BW_PORT=$(free_port)
    BW_ADMIN=$(free_port)
    while [[ "$BW_ADMIN" == "$BW_PORT" ]]; do BW_ADMIN=$(free_port); done
    mkdir -p "$TMP/breakwater/var"
    cat >"$TMP/breakwater/breakwater.yaml" <<EOF
# generated by bench/run.sh
listen: ["127.0.0.1:$BW_PORT"]
workers: $WORKERS
shutdown_timeout: 2s
state_dir: $TMP/breakwater/var
admin:
  listen: "127.0.0.1:$BW_ADMIN"
upstreams:
  bench:
    hosts: ["127.0.0.1:$UP_PORT"]
    connect_timeout: 1s
    timeout: 10s
    max_concurrent: 100000
routes:
  - name: bench
    match:
      path_prefix: /
    upstream: bench
EOF
    (cd "$TMP/breakwater" && exec "$BW_BIN" -c "$TMP/breakwater/breakwater.yaml") \
        >"$TMP/breakwater/breakwater.log" 2>&1 &
    BW_PID=$!
    STARTED+=("$BW_PID")
    ready=0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$BW_PID" 2>/dev/null || die "breakwater exited: $(tail -5 "$TMP/breakwater/breakwater.log")"
        if [[ "$(http_code "http://127.0.0.1:$BW_ADMIN/readyz")" == 200* ]]; then ready=1; break; fi
        sleep 0.05
    done
    ((ready)) || die "breakwater not ready after 15 s: $(tail -5 "$TMP/breakwater/breakwater.log")"
    EXTRA[$BW_PID]=$(tree "$BW_PID" | tail -n +2 | tr '\n' ' ')
    log "breakwater pid $BW_PID (children: ${EXTRA[$BW_PID]}) on 127.0.0.1:$BW_PORT, admin $BW_ADMIN"
fi

# ---------------------------------------------------------------- start nginx
if want nginx; then
    NG_PORT=$(free_port)
    while [[ "$NG_PORT" == "${BW_PORT:-}" || "$NG_PORT" == "${BW_ADMIN:-}" ]]; do NG_PORT=$(free_port); done
    NG=$TMP/nginx
    mkdir -p "$NG"
    cat >"$NG/nginx.conf" <<EOF
# generated by bench/run.sh
worker_processes $WORKERS;
daemon off;
master_process on;
user root root;
pid $NG/nginx.pid;
lock_file $NG/nginx.lock;
error_log $NG/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path $NG/client_body;
    proxy_temp_path $NG/proxy_temp;
    fastcgi_temp_path $NG/fastcgi_temp;
    uwsgi_temp_path $NG/uwsgi_temp;
    scgi_temp_path $NG/scgi_temp;
    keepalive_requests 1000000;     # client side too: nginx's default (1000) would close wrk's connections
    upstream bench {
        server 127.0.0.1:$UP_PORT;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NG_PORT;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;   # never spool bodies to disk (Breakwater streams too)
            $NGINX_EXTRA
        }
    }
}
EOF
    "$NGINX_BIN" -t -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" >"$NG/test.log" 2>&1 \
        || die "nginx -t failed: $(cat "$NG/test.log")"
    "$NGINX_BIN" -p "$NG" -e "$NG/error.log" -c "$NG/nginx.conf" >"$NG/stdout.log" 2>&1 &
    NG_PID=$!
    STARTED+=("$NG_PID")
    ready=0
    for ((i = 0; i < 300; i++)); do
        kill -0 "$NG_PID" 2>/dev/null || die "nginx exited: $(tail -5 "$NG/error.log")"
        if [[ "$(http_code "http://127.0.0.1:$NG_PORT$REQ_PATH")" == 200* ]]; then ready=1; break; fi
        sleep 0.05
    done
    ((ready)) || die "nginx not ready after 15 s: $(tail -5 "$NG/error.log")"
    for ((i = 0; i < 100; i++)); do   # wait until all W workers are forked
        (($(tree "$NG_PID" | wc -l) >= WORKERS + 1)) && break
        sleep 0.05
    done
    EXTRA[$NG_PID]=$(tree "$NG_PID" | tail -n +2 | tr '\n' ' ')
    log "nginx pid $NG_PID (children: ${EXTRA[$NG_PID]}) on 127.0.0.1:$NG_PORT"
fi

target_url() {
    case "$1" in
        direct) echo "http://127.0.0.1:$UP_PORT$REQ_PATH" ;;
        nginx) echo "http://127.0.0.1:$NG_PORT$REQ_PATH" ;;
        breakwater) echo "http://127.0.0.1:$BW_PORT$REQ_PATH" ;;
    esac
}
target_pid() {
    case "$1" in
        direct) echo "" ;;
        nginx) echo "$NG_PID" ;;
        breakwater) echo "$BW_PID" ;;
    esac
}

# Sanity check: every target answers 200 with the expected body size.
for t in "${TARGET_LIST[@]}"; do
    r=$(http_code "$(target_url "$t")")
    [[ "$r" == 200* ]] || die "$t: GET $(target_url "$t") answered '$r', not 200"
    if [[ -n "$EXPECT_SIZE" && "${r#* }" != "$EXPECT_SIZE" ]]; then
        die "$t: body of $(target_url "$t") is ${r#* } bytes, expected $EXPECT_SIZE"
    fi
done

# wrk's latency figures ("1.37ms", "850.00us", "1.02s") -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v; u = v; sub(/[a-z]+$/, "", n); sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : (u == "h") ? 3600000 : -1
        if (f < 0 || n == "") { print "nan"; exit 1 }
        printf "%.3f\n", n * f }'
}

# Runs wrk in the background (tracked), waits; output in $1.
run_wrk() {
    local out=$1 secs=$2 url=$3 rc=0
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${secs}s" --latency "$url" >"$out" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
    return "$rc"
}

# ---------------------------------------------------------------- measure
RAW_DIR=${OUT%.md}-raw     # wrk's own output of every measured run, and profiles
rm -rf "$RAW_DIR" && mkdir -p "$RAW_DIR"
declare -A R   # "target,round,metric" -> value
INVALID=()     # reasons the results cannot be trusted (the script exits 1 after the report)
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before: $LOADAVG_START"
log "W=$WORKERS workers, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s (warm-up ${WARMUP}s), path $REQ_PATH, $ROUNDS round(s)"

NT=${#TARGET_LIST[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    # Each round starts one target later, so slow drift in background load spreads evenly.
    for ((k = 0; k < NT; k++)); do
        t=${TARGET_LIST[(k + round - 1) % NT]}
        url=$(target_url "$t")
        pid=$(target_pid "$t")
        if ((WARMUP > 0)); then
            run_wrk "$TMP/wrk-$t-$round-warmup.txt" "$WARMUP" "$url" \
                || die "$t: warm-up wrk failed: $(cat "$TMP/wrk-$t-$round-warmup.txt")"
        fi
        ureq0=$(upstream_requests)
        load0=$(cut -d' ' -f1 /proc/loadavg)
        m0=$(machine_ticks)
        s0=$(softirq_ticks)
        u0=$(tree_ticks "$UP_PID")
        p0=0; e0=
        if [[ -n "$pid" ]]; then p0=$(tree_ticks "$pid"); e0=$(tree_ticks_each "$pid" | tr '\n' ' '); fi
        children_ms w0
        out=$TMP/wrk-$t-$round.txt
        ts0=$EPOCHREALTIME
        run_wrk "$out" "$DURATION" "$url" || die "$t: wrk failed: $(cat "$out")"
        ts1=$EPOCHREALTIME
        children_ms w1
        p1=0; e1=
        if [[ -n "$pid" ]]; then p1=$(tree_ticks "$pid"); e1=$(tree_ticks_each "$pid" | tr '\n' ' '); fi
        u1=$(tree_ticks "$UP_PID")
        s1=$(softirq_ticks)
        m1=$(machine_ticks)
        ureq1=$(upstream_requests)
        cp "$out" "$RAW_DIR/wrk-$t-$round.txt"

        requests=$(awk '/ requests in /{print $1; exit}' "$out")
        elapsed=$(awk '/ requests in /{sub(/s,$/, "", $4); print $4; exit}' "$out")
        rps=$(awk '/^Requests\/sec:/{print $2; exit}' "$out")
        p50=$(awk '$1 == "50%" {print $2; exit}' "$out")
        p99=$(awk '$1 == "99%" {print $2; exit}' "$out")
        [[ -n "$requests" && -n "$rps" && -n "$p50" && -n "$p99" ]] \
            || die "$t: cannot parse wrk output:\n$(cat "$out")"
        ((requests > 0)) || die "$t: wrk completed no requests"
        non2xx=$(awk -F: '/Non-2xx or 3xx responses/{gsub(/ /, "", $2); print $2; exit}' "$out")
        sockerr=$(awk '/Socket errors:/{sub(/^ +/, ""); print; exit}' "$out")
        gap=$(max_gap_ms "$ts0" "$ts1")
        if [[ "$t" == breakwater ]]; then   # the gateway's own view (latency histogram, outcomes)
            curl -s -m 2 "http://127.0.0.1:$BW_ADMIN/metrics" >"$RAW_DIR/metrics-breakwater-$round.txt" || true
        fi
        if [[ -n "$non2xx" && "$non2xx" != 0 ]]; then
            INVALID+=("$t round $round: wrk reports $non2xx non-2xx/3xx responses (of $requests)")
        fi
        if [[ -n "$sockerr" ]]; then
            INVALID+=("$t round $round: wrk reports $sockerr (longest scheduling gap during the run: ${gap} ms)")
        fi
        udelta=$((ureq1 - ureq0))         # bw_upstream does not count /_stats itself
        if ((udelta < requests)); then
            INVALID+=("$t round $round: the upstream saw $udelta requests but wrk completed $requests: something answered without the upstream")
        fi
        if ((udelta > requests + CONNECTIONS + 2)); then
            log "WARNING: $t: the upstream saw $udelta requests for $requests completed (retries?)"
        fi

        R[$t,$round,gap]=$gap
        R[$t,$round,requests]=$requests
        R[$t,$round,elapsed]=$elapsed
        R[$t,$round,rps]=$rps
        R[$t,$round,p50]=$(to_ms "$p50")
        R[$t,$round,p99]=$(to_ms "$p99")
        R[$t,$round,udelta]=$udelta
        R[$t,$round,load]=$load0
        R[$t,$round,proxy_cpu_s]=$(awk -v d=$((p1 - p0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d / hz}')
        R[$t,$round,up_cpu_s]=$(awk -v d=$((u1 - u0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d / hz}')
        R[$t,$round,wrk_cpu_s]=$(awk -v d=$((w1 - w0)) 'BEGIN{printf "%.2f", d / 1000}')
        R[$t,$round,irq_cpu_s]=$(awk -v d=$((s1 - s0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d / hz}')
        R[$t,$round,other_cpu_s]=$(awk -v d=$((m1 - m0 - (p1 - p0) - (u1 - u0))) -v w=$((w1 - w0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d / hz - w / 1000}')
        R[$t,$round,each]=$([[ -n "$pid" ]] && ticks_each_delta "$e0" "$e1" || echo -)
        # Share of the proxy's CPU taken by its busiest process: 1/W when the workers share the
        # load evenly, 100% when one worker accepted every connection (they all accept() on one
        # shared socket, and wrk opens its connections in one burst).
        R[$t,$round,busiest]=$(awk -v e="${R[$t,$round,each]}" 'BEGIN {
            n = split(e, a, " "); tot = 0; max = 0
            for (i = 1; i <= n; i++) { v = a[i]; sub(/^[0-9]+=/, "", v); sub(/s$/, "", v); v += 0; tot += v; if (v > max) max = v }
            if (tot > 0) printf "%.0f%%", 100 * max / tot; else print "-" }')
        R[$t,$round,machine_cpu_s]=$(awk -v d=$((m1 - m0)) -v hz="$HZ" 'BEGIN{printf "%.2f", d / hz}')
        if [[ -n "$pid" ]]; then
            R[$t,$round,proxy_us]=$(awk -v d=$((p1 - p0)) -v hz="$HZ" -v n="$requests" 'BEGIN{printf "%.1f", d / hz / n * 1e6}')
        else
            R[$t,$round,proxy_us]=-
        fi
        R[$t,$round,up_us]=$(awk -v d=$((u1 - u0)) -v hz="$HZ" -v n="$requests" 'BEGIN{printf "%.1f", d / hz / n * 1e6}')
        R[$t,$round,wrk_us]=$(awk -v d=$((w1 - w0)) -v n="$requests" 'BEGIN{printf "%.1f", d / 1000 / n * 1e6}')
        R[$t,$round,machine_us]=$(awk -v d=$((m1 - m0)) -v hz="$HZ" -v n="$requests" 'BEGIN{printf "%.1f", d / hz / n * 1e6}')
        log "round $round $t: ${rps} req/s, p50 ${R[$t,$round,p50]} ms, p99 ${R[$t,$round,p99]} ms, proxy ${R[$t,$round,proxy_us]} us/req, upstream ${R[$t,$round,up_us]} us/req, busiest proxy process ${R[$t,$round,busiest]}, other CPU ${R[$t,$round,other_cpu_s]} s, longest sched gap ${gap} ms (load $load0)"
    done
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average after: $LOADAVG_END"

# Median over rounds of one metric of one target.
median() {
    local t=$1 m=$2 r vals=()
    for ((r = 1; r <= ROUNDS; r++)); do vals+=("${R[$t,$r,$m]}"); done
    if [[ "${vals[0]}" == - ]]; then echo -; return; fi
    printf '%s\n' "${vals[@]}" | sort -g | awk '{a[NR] = $1} END {
        if (NR % 2) v = a[(NR + 1) / 2]; else v = (a[NR / 2] + a[NR / 2 + 1]) / 2
        print v }'
}
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "-") print "-"; else printf f, v }'; }

declare -A M
for t in "${TARGET_LIST[@]}"; do
    for m in rps p50 p99 proxy_us up_us wrk_us machine_us; do M[$t,$m]=$(median "$t" "$m"); done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "n/a"; else printf "%.2f", a / b }'; }
if want nginx && want breakwater; then
    RATIO_RPS=$(ratio "${M[breakwater,rps]}" "${M[nginx,rps]}")
    RATIO_CPU=$(ratio "${M[breakwater,proxy_us]}" "${M[nginx,proxy_us]}")
    RATIO_TOTAL=$(ratio "$(awk -v a="${M[breakwater,proxy_us]}" -v b="${M[breakwater,up_us]}" 'BEGIN{print a + b}')" \
                        "$(awk -v a="${M[nginx,proxy_us]}" -v b="${M[nginx,up_us]}" 'BEGIN{print a + b}')")
fi

# ---------------------------------------------------------------- report
what=$([[ $ROUNDS -gt 1 ]] && echo "median of $ROUNDS rounds" || echo "one round")
{
    printf '\n%-11s %10s %9s %9s %15s %18s\n' target req/s "p50 ms" "p99 ms" "proxy CPU us/req" "upstream CPU us/req"
    for t in "${TARGET_LIST[@]}"; do
        printf '%-11s %10s %9s %9s %15s %18s\n' "$t" "$(fmt "${M[$t,rps]}" %.0f)" "$(fmt "${M[$t,p50]}" %.2f)" \
            "$(fmt "${M[$t,p99]}" %.2f)" "$(fmt "${M[$t,proxy_us]}" %.1f)" "$(fmt "${M[$t,up_us]}" %.1f)"
    done
    echo "($what; W=$WORKERS, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, path $REQ_PATH; load average $LOADAVG_START -> $LOADAVG_END)"
    unbalanced=
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in nginx breakwater; do
            want "$t" || continue
            b=${R[$t,$round,busiest]%\%}
            if ((WORKERS > 1)) && [[ "$b" =~ ^[0-9]+$ ]] && ((b >= 90)); then unbalanced+=" $t/round$round"; fi
        done
    done
    for m in "${INVALID[@]}"; do echo "INVALID: $m"; done
    [[ -z "$unbalanced" ]] || echo "NOTE: one worker took (nearly) all connections in:$unbalanced (see 'busiest proxy process' in $OUT)"
    if want nginx && want breakwater; then
        echo "Breakwater/nginx: req/s ${RATIO_RPS}x (target >= 1.00), proxy CPU/req ${RATIO_CPU}x (target <= 1.00), proxy+upstream CPU/req ${RATIO_TOTAL}x"
    fi
} | tee "$TMP/table.txt"

mkdir -p "$(dirname "$OUT")"
{
    echo "# Breakwater benchmark: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`WORKERS=$WORKERS CONNECTIONS=$CONNECTIONS THREADS=$THREADS DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS SCENARIO=$SCENARIO UPSTREAM_THREADS=$UPSTREAM_THREADS${BW_REV:+ BW_REV=$BW_REV}${NGINX_EXTRA:+ NGINX_EXTRA='$NGINX_EXTRA'} bench/run.sh\`"
    echo
    echo "- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs, kernel $(uname -r), Debian $(cat /etc/debian_version 2>/dev/null || echo '?')"
    echo "- Versions: breakwater $("$BW_BIN" --version 2>&1 | head -1), h2o $(dpkg-query -W -f='${Version}' libh2o0.13 2>/dev/null || echo '?'), $("$NGINX_BIN" -v 2>&1 | sed 's/.*: //'), wrk $(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo '?'), source: $SRC_DESC$([[ -z "$BW_REV" ]] && echo " at git $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$([[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]] && echo ', with uncommitted changes')")"
    echo "- Order: targets rotate by one position every round"
    echo "- Setup: one bw_upstream ($UPSTREAM_THREADS thread(s)) shared by all targets; $WORKERS worker processes for each proxy; wrk -t$THREADS -c$CONNECTIONS --latency, ${WARMUP}s warm-up then ${DURATION}s measured per target; path \`$REQ_PATH\`; everything on loopback on the same $(nproc) CPUs"
    echo "- nginx: \`keepalive 256; keepalive_requests 1000000;\` upstream, \`proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_max_temp_file_size 0;\`, client \`keepalive_requests 1000000\`, access_log off, other settings default (proxy_buffering on, 4k/8k buffers)${NGINX_EXTRA:+; extra: \`$NGINX_EXTRA\`}. Breakwater: \`workers: $WORKERS\`, one route \`/\`, timeout 10s, max_concurrent 100000, other settings default"
    echo "- Load average: $LOADAVG_START before, $LOADAVG_END after"
    echo
    if ((${#INVALID[@]})); then
        echo "**INVALID RUN** (do not quote these numbers):"
        echo
        for m in "${INVALID[@]}"; do echo "- $m"; done
        echo
    fi
    echo "| target | req/s | p50 ms | p99 ms | proxy CPU us/req | upstream CPU us/req |"
    echo "|---|---:|---:|---:|---:|---:|"
    for t in "${TARGET_LIST[@]}"; do
        echo "| $t | $(fmt "${M[$t,rps]}" %.0f) | $(fmt "${M[$t,p50]}" %.2f) | $(fmt "${M[$t,p99]}" %.2f) | $(fmt "${M[$t,proxy_us]}" %.1f) | $(fmt "${M[$t,up_us]}" %.1f) |"
    done
    echo
    echo "($what.)"
    if want nginx && want breakwater; then
        echo
        echo "**Breakwater / nginx**: req/s **${RATIO_RPS}x** (target >= 1.00), proxy CPU per request **${RATIO_CPU}x** (target <= 1.00); proxy + upstream CPU per request ${RATIO_TOTAL}x."
    fi
    if want nginx && want breakwater && ((ROUNDS > 1)); then
        echo
        echo "Per-round ratios Breakwater/nginx (each round runs both back to back, so a round's ratio is less exposed to slow drift in background load than the medians above):"
        echo
        echo "| round | req/s | proxy CPU/req |"
        echo "|---:|---:|---:|"
        rr=() rc=()
        for ((round = 1; round <= ROUNDS; round++)); do
            q_rps=$(ratio "${R[breakwater,$round,rps]}" "${R[nginx,$round,rps]}")
            q_cpu=$(ratio "${R[breakwater,$round,proxy_us]}" "${R[nginx,$round,proxy_us]}")
            rr+=("$q_rps") rc+=("$q_cpu")
            echo "| $round | $q_rps | $q_cpu |"
        done
        echo "| median (min-max) | $(printf '%s\n' "${rr[@]}" | sort -g | awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.2f (%.2f-%.2f)", m, a[1], a[NR]}') | $(printf '%s\n' "${rc[@]}" | sort -g | awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.2f (%.2f-%.2f)", m, a[1], a[NR]}') |"
    fi
    echo
    echo "## Every run"
    echo
    echo "CPU seconds are utime+stime over the measured run (\`/proc/PID/stat\`, proxy = master + all children). wrk CPU is wrk's own (reaped child rusage, from bash \`times\`); machine CPU is all non-idle time in \`/proc/stat\`."
    echo
    echo "| round | target | requests | seconds | req/s | p50 ms | p99 ms | proxy CPU s | upstream CPU s | wrk CPU s | irq+softirq CPU s | other CPU s | proxy us/req | upstream us/req | wrk us/req | machine us/req | busiest proxy process | upstream saw | load1 | longest sched gap ms |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "${TARGET_LIST[@]}"; do
            k="$t,$round"
            echo "| $round | $t | ${R[$k,requests]} | ${R[$k,elapsed]} | ${R[$k,rps]} | ${R[$k,p50]} | ${R[$k,p99]} | $([[ -n "$(target_pid "$t")" ]] && echo "${R[$k,proxy_cpu_s]}" || echo -) | ${R[$k,up_cpu_s]} | ${R[$k,wrk_cpu_s]} | ${R[$k,irq_cpu_s]} | ${R[$k,other_cpu_s]} | ${R[$k,proxy_us]} | ${R[$k,up_us]} | ${R[$k,wrk_us]} | ${R[$k,machine_us]} | $([[ -n "$(target_pid "$t")" ]] && echo "${R[$k,busiest]}" || echo -) | ${R[$k,udelta]} | ${R[$k,load]} | ${R[$k,gap]} |"
        done
    done
    echo
    echo "\"other CPU\" = machine busy (\`/proc/stat\`) - proxy - upstream - wrk: the rest of the machine (other people's builds and tests, our own curl/python probes) plus irq/softirq time not charged to our processes (the kernel charges softirq work to whichever task it interrupted, so irq+softirq and the per-process figures overlap). A few tenths of a second is normal; seconds mean a noisy run."
    echo
    echo "\"longest sched gap\": the longest time a 50 ms sleep loop in this script went unscheduled during the run (0 = never more than 200 ms)."
    echo
    echo "\"busiest proxy process\": its share of the proxy's CPU; $((100 / WORKERS))% is an even spread over $WORKERS workers, 100% means one worker got every connection (all workers accept() on one shared listening socket and wrk opens its connections in one burst; a fresh draw every run). Compare CPU per request rather than req/s for such runs."
    echo
    echo "Proxy CPU per process (master first, then its children; Breakwater: supervisor, control, workers):"
    echo
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "${TARGET_LIST[@]}"; do
            if [[ -n "$(target_pid "$t")" ]]; then echo "- round $round $t: ${R[$t,$round,each]}"; fi
        done
    done
} >"$OUT"
log "markdown written to $OUT (wrk output of every run in $RAW_DIR/)"
if ((${#INVALID[@]})); then
    if want breakwater; then
        log "breakwater warnings and errors:"
        { grep -v '"level":"info"' "$TMP/breakwater/breakwater.log" || true; } | tail -10 >&2
    fi
    if want nginx; then tail -5 "$TMP/nginx/error.log" >&2 || true; fi
    for m in "${INVALID[@]}"; do log "INVALID: $m"; done
    die "results are invalid (${#INVALID[@]} problem(s) above); the report says so too"
fi

# ---------------------------------------------------------------- optional profile
# Not part of the measured numbers: perf adds overhead. cpu-clock (a software event) works on VMs
# without hardware counters. The binaries have no frame pointers, so this is a flat profile.
if [[ "$PROFILE" == 1 ]]; then
    pdir=$RAW_DIR
    for t in breakwater nginx; do
        want "$t" || continue
        pids=$(tree "$(target_pid "$t")" | tail -n +2 | paste -sd, -)
        log "profiling $t (pids $pids) for ${DURATION}s under the same load"
        perf record -e cpu-clock -F 1999 -p "$pids" -o "$TMP/perf-$t.data" >"$TMP/perf-$t.log" 2>&1 &
        PERF_PID=$!
        sleep 0.5
        run_wrk "$TMP/wrk-$t-profile.txt" "$DURATION" "$(target_url "$t")" || die "$t: wrk under perf failed"
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=
        perf report -i "$TMP/perf-$t.data" --no-children --sort dso --stdio >"$TMP/perf-$t-dso.txt" 2>/dev/null || true
        perf report -i "$TMP/perf-$t.data" --no-children --sort dso,sym --stdio >"$TMP/perf-$t-sym.txt" 2>/dev/null || true
        {
            echo "# perf record -e cpu-clock -F 1999 -p $pids, wrk $(awk '/^Requests\/sec:/{print $2}' "$TMP/wrk-$t-profile.txt") req/s"
            echo "## by shared object"
            grep -v -e '^#' -e '^$' "$TMP/perf-$t-dso.txt" | sed -n 1,15p
            echo "## top symbols"
            grep -v -e '^#' -e '^$' "$TMP/perf-$t-sym.txt" | sed -n 1,60p
        } >"$pdir/profile-$t.txt"
        cp "$TMP/perf-$t-sym.txt" "$pdir/profile-$t-full.txt"

        # System calls per request, by name (perf trace -s; its overhead slows the run, but the
        # count per request barely depends on speed).
        log "counting $t's system calls for ${DURATION}s under the same load"
        perf trace -s -p "$pids" -o "$TMP/trace-$t.txt" >/dev/null 2>&1 &
        PERF_PID=$!
        sleep 0.5
        run_wrk "$TMP/wrk-$t-trace.txt" "$DURATION" "$(target_url "$t")" || die "$t: wrk under perf trace failed"
        kill -INT "$PERF_PID" 2>/dev/null || true
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=
        n=$(awk '/ requests in /{print $1; exit}' "$TMP/wrk-$t-trace.txt")
        {
            echo "# $t: system calls per request (perf trace -s -p $pids; $n requests; summed over processes)"
            printf '%-20s %12s %12s %10s\n' syscall calls errors per_req
            awk -v n="$n" '$1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ { c[$1] += $2; e[$1] += $3 }
                END { for (k in c) printf "%-20s %12d %12d %10.2f\n", k, c[k], e[k], c[k] / n }' "$TMP/trace-$t.txt" \
                | sort -k4 -g -r
            awk -v n="$n" '$1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ { c += $2 } END { printf "%-20s %12d %12s %10.2f\n", "TOTAL", c, "", c / n }' "$TMP/trace-$t.txt"
        } >"$pdir/syscalls-$t.txt"
        log "system calls: $pdir/syscalls-$t.txt"
        log "profile: $pdir/profile-$t.txt"
    done
fi
