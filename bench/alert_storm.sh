#!/usr/bin/env bash
# bench/alert_storm.sh - issue 6 targets: does an alert storm disturb the proxy, and how fast does
# an event reach a webhook. Benchmarks, not tests.
#
#   --mode storm (default): "10k alerts raised in a storm: the gateway's proxy p99 does not move
#       by more than 10%". Per run, a fresh stack: bw_upstream, a webhook receiver, and
#       breakwater (WORKERS workers, fresh state_dir, every tier P0/P1/P2 -> one `webhook`
#       channel, group_wait 0). bw_load offers RATE req/s open loop (CONNS keep-alive
#       connections, every request logged to CSV, latency from the intended start, failed
#       requests included) to the proxied route `/` for the whole run. After BASELINE seconds,
#       ALERTS distinct alerts (labels {alertname, run, n}: no dedup) are POSTed to
#       /api/v1/alerts as fast as the admin API takes them: Alertmanager v4 bodies of BATCH
#       alerts (100 is the API's per-body limit; BATCH=1 uses the generic shape), POST_CONNS
#       keep-alive connections, 429/503 retried and counted. The script waits until the receiver
#       has ALERTS webhooks (or nothing new for 15 s, or STORM_MAX s), keeps the load on for TAIL
#       more seconds, then stops bw_load (SIGINT: stops issuing, in-flight requests finish).
#       The CSV is cut by time into windows:
#         baseline  load start + 2 s (warm-up) .. storm start
#         intake    storm start .. last POST answered        ("accepted")
#         delivery  last POST answered .. last webhook received
#         storm     intake + delivery (the p99 change is measured on this window)
#         after     last webhook + 0.5 s .. load end
#       and gives p50/p90/p99/p99.9/max and errors per window. Because background work leaves
#       short latency spikes at random moments and a longer window catches more of them, two
#       spike-robust comparisons are given too: the storm window's p99 against the median p99 of
#       baseline pieces of the same length, and the median of per-second p99s. The receiver's
#       record gives the count, distinct alerts, lost alerts, duplicates, distinct delivery ids
#       and Idempotency-Keys. A sampler (alert_storm.py sample, every 0.2 s) reads
#       /proc/PID/task/*/schedstat of the control process, each worker, the supervisor, the
#       upstream, the receiver and bw_load: CPU time and run-queue wait (time runnable but not
#       running) per window, plus /proc/stat for the whole machine: irq/softirq, steal (this is a
#       VM) and "not ours" (the rest: other engineers' processes).
#   --mode latency: "event to webhook received: p99 < 200 ms with a healthy receiver". Per run, a
#       fresh stack as above; LAT_N alerts are raised one at a time with the generic body (tier
#       LAT_TIER, group_wait 0), one every LAT_INTERVAL_MS ms (open loop), and the latency of each
#       is the receiver's arrival time minus the time just before its POST was sent (the same
#       wall clock, one machine). LAT_LOAD=1 also runs bw_load at RATE on the proxy meanwhile.
#       (bench/alert_latency.sh is this mode.)
#
# Method against noise (2 shared CPUs, other engineers' builds and tests running):
#   - PIN=split (default): breakwater (supervisor, control process, workers) is pinned to CPU 1
#     with taskset; everything the benchmark itself runs (bw_upstream, receiver, bw_load, the
#     alert poster, the sampler) to CPU 0. So the harness does not compete with the gateway, and
#     what the storm costs the workers is the gateway's own control process competing with them:
#     the question the target asks. Other people's processes are not pinned and land on both.
#     PIN=none leaves everything to the scheduler (the gateway then has 2 CPUs but shares them
#     with the harness).
#   - CONTROL_NICE=N renices only the control process after start-up (an experiment for the fix:
#     the gateway does not do this itself); CONTROL_NICE=idle makes it SCHED_IDLE (chrt -i).
#   - BENCH_NICE=N starts every process of the benchmark (gateway and harness alike) at nice N,
#     e.g. -10: other people's work (nice 0) then gets little CPU from under the benchmark, while
#     the control process and the workers keep the same priority relative to each other (so the
#     competition the target is about is unchanged). Empty (default): not changed.
#   - The alert side of the harness (receiver, alert poster, sampler) runs AUX_NICE_DELTA=10 nice
#     levels below bw_load and bw_upstream on the harness CPU, and the storm's request bodies are
#     written to a file before the load starts: receiving 10k webhooks and building 10k alerts'
#     JSON must not delay the proxied requests being measured (a real alert source and receiver
#     are on other machines). Without this, the harness's own burst at the storm's start showed
#     up as proxy latency.
#   - PAIRED=quiet (or 1; --paired quiet): every round is a storm run and a quiet control run
#     (the same procedure, nothing raised; the "intake" and "delivery" windows are 4 s and 2 s),
#     in alternating order. The quiet runs show how much the p99 moves between two windows of
#     one run by noise alone, which is the yardstick for the storm runs' change on a shared
#     machine. PAIRED=nice: every round is a storm run as configured and a storm run whose
#     control process is reniced to PAIR_NICE (default: 19 levels below the workers, i.e.
#     BENCH_NICE+19, at most 19), alternating, so the fix is compared in the same conditions.
#     PAIRED=all: every round runs all three (storm, reniced storm, quiet), the order rotating.
#   - The "after" window (TAIL s after the last webhook) is a second baseline: a change against
#     both the window before and the one after is less likely to be background drift.
#   - GW_ENV='NAME=value ...' is put in the gateway's environment (an experiment knob, e.g.
#     GW_ENV=GLIBC_TUNABLES=glibc.malloc.trim_threshold=268435456:glibc.malloc.top_pad=67108864
#     to see what glibc's heap trimming costs the control process).
#   - RUNS runs (>= 3); every run records `uptime` load averages before and after, and the
#     "not ours" CPU; the summary gives medians and min-max.
#   - PROFILE=record (storm mode, an investigation run, not for the medians): `perf record`
#     (cpu-clock, 499 Hz, dwarf call graphs) of the control process during the storm, with flat
#     and inclusive reports. PROFILE=syscalls: `perf stat` counts of selected system calls
#     (fdatasync, pwrite64, brk, epoll_ctl, ...) of the control process and of the workers during
#     the storm (tracepoint counters: cheap, unlike perf trace/strace, which slowed the storm 3x).
#     PROFILE=sched: every context switch and wake-up on both CPUs (perf record of the sched
#     tracepoints, CLOCK_MONOTONIC) from SCHED_PRE=10 s before the storm to the last webhook;
#     `perf sched timehist` gives each wake-up's scheduling delay (runnable -> on CPU) for the
#     control process, the workers, bw_load and the upstream, before vs during the storm: the
#     latency the storm adds to the proxy path, without the harness's and the VM's other noise
#     (steal time is not scheduling delay). Cheap enough to use in measured runs.
#
# Recommended (what bench/RESULTS.md reports):
#   BUILD_DIR=build-bench-SHA RUNS=5 PAIRED=all WORKERS=1 BENCH_NICE=-20 PROFILE=sched bench/alert_storm.sh
#   (WORKERS=1 with PIN=split: bw_load reuses its idle connections LIFO, so at 2000 req/s only a
#   few are busy, the others hit the keep-alive timeout and reconnect to a random worker; with
#   two workers on one CPU the traffic then flips between "one worker" and "both workers
#   competing", which alone moved p99 by 2x. PIN=none WORKERS=2 is the default deployment shape.)
#   RUNS=3 BENCH_NICE=-20 bench/alert_latency.sh
#
# usage: bench/alert_storm.sh [--mode storm|latency] [--runs N] [--rate R] [--pin split|none]
#                             [--paired quiet|nice|all] [--control-nice N|idle] [--bench-nice N]
#                             [--receiver sink|test] [--profile record|syscalls|sched]
#                             [--out-dir DIR] [--build] [--rev REV]
#   env (defaults): MODE=storm RUNS=3 PAIRED=0 RATE=2000 CONNS=32 BASELINE=30 TAIL=10 ALERTS=10000
#     BATCH=100 POST_CONNS=1 STORM_TIER=P2 WORKERS=2 PIN=split CONTROL_NICE= BENCH_NICE=
#     PAIR_NICE= RECEIVER=sink
#     LAT_N=200 LAT_INTERVAL_MS=50 LAT_TIER=P1 LAT_LOAD=0 STORM_MAX=180 PROFILE=0 (record|syscalls|sched)
#     BUILD_DIR=build-bench BUILD=0 (1: BUILD_DIR=... scripts/build.sh first, falling back to the
#     three targets needed if other people's test code does not compile) BW_REV= (--rev REV:
#     build git revision REV from a clean `git archive` export in bench/out/src-SHA, so other
#     people's uncommitted edits stay out; BUILD_DIR then defaults to build-bench-SHA; the source
#     is recorded in BUILD_DIR/bench-source.txt and in every summary)
#     OUT_DIR=bench/out/alerts-MODE-DATE (per run: bw.yaml, bw.log, load.csv, storm.json,
#     sink.jsonl, samples.jsonl, analysis.json / latency.json; summary.md)
#   RECEIVER=sink: bench/webhook_sink.py (asyncio, one thread, keeps arrival time + body in
#     memory: about a tenth of the CPU of the test receiver); RECEIVER=test:
#     tests/integration/receiver.py (writes a JSON line per request, a thread per connection).
# Prints the markdown summary on stdout (also OUT_DIR/summary.md). Every process it starts is
# tracked by PID and stopped on exit (trap), also on errors and Ctrl-C; nothing else is touched.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${MODE:-storm}
RUNS=${RUNS:-3}
RATE=${RATE:-2000}
CONNS=${CONNS:-32}
BASELINE=${BASELINE:-30}
TAIL=${TAIL:-10}
ALERTS=${ALERTS:-10000}
BATCH=${BATCH:-100}
POST_CONNS=${POST_CONNS:-1}
STORM_TIER=${STORM_TIER:-P2}
WORKERS=${WORKERS:-2}
PIN=${PIN:-split}
CONTROL_NICE=${CONTROL_NICE:-}
BENCH_NICE=${BENCH_NICE:-}
AUX_NICE_DELTA=${AUX_NICE_DELTA:-10}
SCHED_PRE=${SCHED_PRE:-10}
GW_ENV=${GW_ENV:-}
RECEIVER=${RECEIVER:-sink}
LAT_N=${LAT_N:-200}
LAT_INTERVAL_MS=${LAT_INTERVAL_MS:-50}
LAT_TIER=${LAT_TIER:-P1}
LAT_LOAD=${LAT_LOAD:-0}
STORM_MAX=${STORM_MAX:-180}
PROFILE=${PROFILE:-0}
PAIRED=${PAIRED:-0}
PAIR_NICE=${PAIR_NICE:-}
CUR_CONTROL_NICE=$CONTROL_NICE
BUILD=${BUILD:-0}
BUILD_DIR_SET=${BUILD_DIR:+1}
BUILD_DIR=${BUILD_DIR:-build-bench}
BW_REV=${BW_REV:-}
OUT_DIR=${OUT_DIR:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "alert_storm: ERROR: $*" >&2; exit 1; }
log() { echo "alert_storm: $*" >&2; }
need_arg() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mode) need_arg "$@"; MODE=$2; shift 2 ;;
        --runs) need_arg "$@"; RUNS=$2; shift 2 ;;
        --rate) need_arg "$@"; RATE=$2; shift 2 ;;
        --pin) need_arg "$@"; PIN=$2; shift 2 ;;
        --control-nice) need_arg "$@"; CONTROL_NICE=$2; shift 2 ;;
        --bench-nice) need_arg "$@"; BENCH_NICE=$2; shift 2 ;;
        --receiver) need_arg "$@"; RECEIVER=$2; shift 2 ;;
        --profile) need_arg "$@"; PROFILE=$2; shift 2 ;;
        --paired) need_arg "$@"; PAIRED=$2; shift 2 ;;
        --out-dir) need_arg "$@"; OUT_DIR=$2; shift 2 ;;
        --build) BUILD=1; shift ;;
        --rev) need_arg "$@"; BW_REV=$2; BUILD=1; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$MODE" in storm|latency) ;; *) die "MODE must be storm or latency" ;; esac
case "$PIN" in split|none) ;; *) die "PIN must be split or none" ;; esac
case "$PAIRED" in 0|1|quiet|nice|all) ;; *) die "PAIRED must be 0, quiet (or 1), nice or all" ;; esac
[[ "$PAIRED" == 1 ]] && PAIRED=quiet
if [[ "$PAIRED" == nice || "$PAIRED" == all ]] && [[ -z "$PAIR_NICE" ]]; then # 19 levels below the workers
    PAIR_NICE=$(( ${BENCH_NICE:-0} + 19 > 19 ? 19 : ${BENCH_NICE:-0} + 19 ))
fi
case "$RECEIVER" in sink|test) ;; *) die "RECEIVER must be sink or test" ;; esac
for v in RUNS RATE CONNS BASELINE ALERTS BATCH POST_CONNS WORKERS LAT_N STORM_MAX; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((BATCH <= 100)) || die "BATCH is at most 100 (the admin API's per-body limit)"
[[ -z "$CONTROL_NICE" || "$CONTROL_NICE" == idle || "$CONTROL_NICE" =~ ^-?[0-9]+$ ]] ||
    die "CONTROL_NICE must be a number or 'idle'"
[[ -z "$BENCH_NICE" || "$BENCH_NICE" =~ ^-?[0-9]+$ ]] || die "BENCH_NICE must be a number"

cd "$ROOT"
: "${OUT_DIR:=$ROOT/bench/out/alerts-$MODE-$(date -u +%Y%m%d-%H%M%S)}"
[[ "$OUT_DIR" = /* ]] || OUT_DIR=$ROOT/$OUT_DIR
mkdir -p "$OUT_DIR"
[[ "$BUILD_DIR" = /* ]] || BUILD_DIR=$ROOT/$BUILD_DIR
if [[ "$BUILD" == 1 ]]; then
    SRC=$ROOT
    SRC_DESC="working tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | awk '{print $2}' | tr '\n' ' ')
    [[ -n "$dirty" ]] && SRC_DESC+=" + uncommitted edits in: $dirty"
    if [[ -n "$BW_REV" ]]; then # a clean export: other people's half-done edits stay out
        sha=$(git -C "$ROOT" rev-parse --verify --short "$BW_REV^{commit}") || die "no git revision '$BW_REV'"
        SRC=$ROOT/bench/out/src-$sha
        SRC_DESC="git $sha (clean export)"
        # a build dir belongs to one source dir (CMakeCache): one per revision
        [[ -n "$BUILD_DIR_SET" ]] || BUILD_DIR=$ROOT/build-bench-$sha
        if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
            rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
            git -C "$ROOT" archive --format=tar "$sha" | tar -x -C "$SRC.tmp"
            rm -rf "$SRC" && mv "$SRC.tmp" "$SRC"
        fi
    fi
    # build.sh builds everything, tests too: if other people's test code does not compile, the
    # three programs needed here may still build.
    BUILD_DIR="$BUILD_DIR" BUILD_TYPE=RelWithDebInfo "$SRC/scripts/build.sh" >"$OUT_DIR/build.log" 2>&1 ||
        cmake --build "$BUILD_DIR" -j"$(nproc)" --target breakwater bw_upstream bw_load >>"$OUT_DIR/build.log" 2>&1 ||
        die "build failed (log: $OUT_DIR/build.log)"
    echo "$SRC_DESC, built $(date -u '+%Y-%m-%d %H:%M UTC')" >"$BUILD_DIR/bench-source.txt"
fi
BW=$BUILD_DIR/breakwater
UP=$BUILD_DIR/bw_upstream
LOAD=$BUILD_DIR/bw_load
for b in "$BW" "$UP" "$LOAD"; do [[ -x "$b" ]] || die "no $b (BUILD_DIR=$BUILD_DIR; try --build)"; done
for t in python3 curl taskset; do command -v "$t" >/dev/null || die "$t not found"; done
case "$PROFILE" in
    0) ;;
    record|syscalls|sched) command -v perf >/dev/null || die "PROFILE=$PROFILE needs perf" ;;
    *) die "PROFILE must be 0, record, syscalls or sched" ;;
esac
# system calls counted by PROFILE=syscalls (tracepoint counters: far cheaper than perf trace)
SYSCALL_EVENTS=$(printf 'syscalls:sys_enter_%s,' fdatasync fsync pwrite64 pread64 brk mmap munmap \
    epoll_ctl epoll_wait poll sendto recvfrom read write writev ioctl | sed 's/,$//')
PY=/usr/bin/python3
HELPER=$ROOT/bench/alert_storm.py

if [[ "$PIN" == split ]]; then
    (($(nproc) >= 2)) || die "PIN=split needs 2 CPUs"
    GW_PIN=(taskset -c 1)
    H_PIN=(taskset -c 0)
else
    GW_PIN=()
    H_PIN=()
fi
# The alert side of the harness (receiver, poster, sampler) runs AUX_NICE_DELTA nice levels below
# the proxy side (bw_load, bw_upstream) on the same CPU, so that receiving 10k webhooks does not
# delay the requests being measured (a real receiver is on another machine).
A_PIN=(nice -n "$(( ${BENCH_NICE:-0} + AUX_NICE_DELTA ))" "${H_PIN[@]}")
if [[ -n "$BENCH_NICE" ]]; then # nice execs taskset execs the program: $! stays its PID
    GW_PIN=(nice -n "$BENCH_NICE" "${GW_PIN[@]}")
    H_PIN=(nice -n "$BENCH_NICE" "${H_PIN[@]}")
fi

# ---------------------------------------------------------------- process bookkeeping
PIDS=()          # every PID we started (this run), in start order
GW_PID=
GW_KIDS=()       # the gateway's children seen at start-up
LOAD_PID=
SAMPLER_PID=
PERF_PIDS=()

stop_pid() { # TERM (or the given signal), up to 8 s, then KILL; reaps it
    local pid=$1 sig=${2:-TERM} i
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]]; then
        log "pid $pid did not stop: KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local i pid exe
    for pid in "${PERF_PIDS[@]}"; do stop_pid "$pid" INT; done
    PERF_PIDS=()
    [[ -n "$LOAD_PID" ]] && stop_pid "$LOAD_PID" INT
    [[ -n "$SAMPLER_PID" ]] && stop_pid "$SAMPLER_PID"
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[i]}"; done
    # the gateway's children exit with it; any left over that still runs our binary: KILL
    for pid in "${GW_KIDS[@]}"; do
        exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
        if [[ -n "$exe" && "$exe" == "$BW" ]]; then
            log "gateway child $pid still running: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    PIDS=() GW_KIDS=() GW_PID='' LOAD_PID='' SAMPLER_PID=''
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

wait_port_line() { # file pid -> the port of the "PORT n" line
    local f=$1 pid=$2 i p
    for ((i = 0; i < 100; i++)); do
        p=$(awk '/^PORT /{print $2; exit}' "$f" 2>/dev/null)
        [[ -n "$p" ]] && { echo "$p"; return 0; }
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# ---------------------------------------------------------------- one stack
# start_stack DIR: upstream, receiver, gateway; sets UP_PORT RECV_PORT PORT ADMIN CONTROL WORKER_PIDS
start_stack() {
    local d=$1 i
    mkdir -p "$d"
    : >"$d/up.out"
    "${H_PIN[@]}" "$UP" --listen 127.0.0.1:0 --name bench >"$d/up.out" 2>"$d/up.log" &
    UP_PID=$!
    PIDS+=("$UP_PID")
    UP_PORT=$(wait_port_line "$d/up.out" "$UP_PID") || die "bw_upstream did not start: $(cat "$d/up.log")"
    : >"$d/recv.out"
    if [[ "$RECEIVER" == sink ]]; then
        "${A_PIN[@]}" "$PY" "$ROOT/bench/webhook_sink.py" --out "$d/sink.jsonl" >"$d/recv.out" 2>"$d/recv.log" &
    else
        "${A_PIN[@]}" "$PY" "$ROOT/tests/integration/receiver.py" --log "$d/sink.jsonl" >"$d/recv.out" 2>"$d/recv.log" &
    fi
    RECV_PID=$!
    PIDS+=("$RECV_PID")
    RECV_PORT=$(wait_port_line "$d/recv.out" "$RECV_PID") || die "receiver did not start: $(cat "$d/recv.log")"
    PORT=$(free_port)
    ADMIN=$(free_port)
    while [[ "$ADMIN" == "$PORT" ]]; do ADMIN=$(free_port); done
    cat >"$d/bw.yaml" <<EOF
listen: ["127.0.0.1:$PORT"]
workers: $WORKERS
state_dir: $d/var
admin: { listen: "127.0.0.1:$ADMIN" }
upstreams:
  bench: { hosts: ["127.0.0.1:$UP_PORT"], max_concurrent: 100000 }
routes:
  - name: bench
    match: { path_prefix: / }
    upstream: bench
alerts:
  channels:
    hook: { type: webhook, url: "http://127.0.0.1:$RECV_PORT/hook" }
  tiers:
    P0: { channels: [hook], group_wait: 0s }
    P1: { channels: [hook], group_wait: 0s }
    P2: { channels: [hook], group_wait: 0s }
EOF
    "$BW" -t -c "$d/bw.yaml" >&2 || die "config refused"
    # shellcheck disable=SC2086
    env $GW_ENV "${GW_PIN[@]}" "$BW" -c "$d/bw.yaml" 2>"$d/bw.log" &
    GW_PID=$!
    PIDS+=("$GW_PID")
    for ((i = 0; i < 200; i++)); do
        curl -sf -m 1 "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
        kill -0 "$GW_PID" 2>/dev/null || die "breakwater exited: $(tail -5 "$d/bw.log")"
        sleep 0.05
    done
    curl -sf -m 1 "http://127.0.0.1:$ADMIN/readyz" >/dev/null || die "breakwater not ready"
    mapfile -t GW_KIDS < <(ps -o pid= --ppid "$GW_PID" | tr -d ' ')
    CONTROL=$(grep '"admin API ready"' "$d/bw.log" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p' | tail -1)
    mapfile -t WORKER_PIDS < <(grep '"worker ready"' "$d/bw.log" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
    [[ -n "$CONTROL" && ${#WORKER_PIDS[@]} -eq $WORKERS ]] || die "cannot find control/worker PIDs in $d/bw.log"
    if [[ "$CUR_CONTROL_NICE" == idle ]]; then
        chrt -i -p 0 "$CONTROL" >/dev/null
    elif [[ -n "$CUR_CONTROL_NICE" ]]; then
        renice -n "$CUR_CONTROL_NICE" -p "$CONTROL" >/dev/null
    fi
    curl -sf -m 2 "http://127.0.0.1:$PORT/" >/dev/null || die "proxied GET / failed"
    log "stack: upstream $UP_PID :$UP_PORT, receiver $RECV_PID :$RECV_PORT, breakwater $GW_PID :$PORT admin :$ADMIN, control $CONTROL (nice $(awk '{print $19}' "/proc/$CONTROL/stat"), policy $(chrt -p "$CONTROL" | sed -n 's/.*policy: //p' | head -1)), workers ${WORKER_PIDS[*]} (nice $(awk '{print $19}' "/proc/${WORKER_PIDS[0]}/stat")), CPUs gateway $(taskset -cp "$GW_PID" | sed 's/.*: //') harness $(taskset -cp "$UP_PID" | sed 's/.*: //')"
}

start_load() { # DIR SECONDS
    "${H_PIN[@]}" "$LOAD" -q -c "$CONNS" -r "$RATE" -d "$2" -t 5000 -o "$1/load.csv" --json "$1/load.json" \
        "http://127.0.0.1:$PORT/" >"$1/load.out" 2>&1 &
    LOAD_PID=$!
}

stop_load() {
    stop_pid "$LOAD_PID" INT
    LOAD_PID=
}

sink_arg() { # how the helper reads the receiver
    if [[ "$RECEIVER" == sink ]]; then echo "--sink 127.0.0.1:$RECV_PORT"; else echo "--log $1/sink.jsonl"; fi
}

# ---------------------------------------------------------------- storm mode
storm_run() { # N [storm|quiet|niced]
    local n=$1 kind=${2:-storm} d run lb w pids_arg i alerts=$ALERTS suffix=
    d=$OUT_DIR/run-$n
    CUR_CONTROL_NICE=$CONTROL_NICE
    if [[ "$kind" == quiet ]]; then alerts=0; d=$OUT_DIR/run-$n-quiet; suffix=q; fi
    if [[ "$kind" == niced ]]; then CUR_CONTROL_NICE=$PAIR_NICE; d=$OUT_DIR/run-$n-niced; suffix=n; fi
    run="r$n-$kind-$$"
    lb=$(loadavg)
    start_stack "$d"
    if ((alerts > 0)); then
        "$PY" "$HELPER" bodies --n "$alerts" --batch "$BATCH" --tier "$STORM_TIER" --run "$run" --out "$d/bodies.jsonl"
    fi
    start_load "$d" $((BASELINE + STORM_MAX + TAIL + 30))
    pids_arg="control=$CONTROL,supervisor=$GW_PID"
    for ((i = 0; i < ${#WORKER_PIDS[@]}; i++)); do pids_arg+=",worker$i=${WORKER_PIDS[i]}"; done
    pids_arg+=",upstream=$UP_PID,receiver=$RECV_PID,bw_load=$LOAD_PID"
    SCHED_NAMES="control=$CONTROL"
    SCHED_PIDS="$CONTROL"
    for ((i = 0; i < ${#WORKER_PIDS[@]}; i++)); do
        SCHED_NAMES+=",worker$i=${WORKER_PIDS[i]}"
        SCHED_PIDS+=",${WORKER_PIDS[i]}"
    done
    SCHED_NAMES+=",bw_load=$LOAD_PID,upstream=$UP_PID"
    SCHED_PIDS+=",$LOAD_PID,$UP_PID"
    "${A_PIN[@]}" "$PY" "$HELPER" sample --pids "$pids_arg" --interval 0.2 --out "$d/samples.jsonl" &
    SAMPLER_PID=$!
    log "run $n: baseline ${BASELINE}s at $RATE req/s (load avg $lb)"
    if [[ "$PROFILE" == sched ]] && ((BASELINE > SCHED_PRE)); then
        sleep $((BASELINE - SCHED_PRE))
        # every context switch and wake-up on both CPUs, CLOCK_MONOTONIC time stamps
        perf record -k CLOCK_MONOTONIC -a -e sched:sched_switch -e sched:sched_wakeup \
            -e sched:sched_wakeup_new -e sched:sched_migrate_task -o "$d/perf-sched.data" \
            >/dev/null 2>"$d/perf-sched.log" &
        PERF_PIDS+=("$!")
        sleep "$SCHED_PRE"
    else
        sleep "$BASELINE"
    fi
    kill -0 "$LOAD_PID" 2>/dev/null || die "bw_load exited early: $(cat "$d/load.out")"
    case "$PROFILE" in
        record)
            perf record -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$CONTROL" -o "$d/perf-control.data" \
                >/dev/null 2>"$d/perf-record.log" &
            PERF_PIDS+=("$!") ;;
        syscalls)
            perf stat -e "$SYSCALL_EVENTS" -p "$CONTROL" -o "$d/perf-stat-control.txt" >/dev/null 2>&1 &
            PERF_PIDS+=("$!")
            perf stat -e "$SYSCALL_EVENTS" -p "$(IFS=,; echo "${WORKER_PIDS[*]}")" -o "$d/perf-stat-workers.txt" >/dev/null 2>&1 &
            PERF_PIDS+=("$!") ;;
    esac
    if [[ "$PROFILE" == record || "$PROFILE" == syscalls ]]; then sleep 0.5; fi
    log "run $n ($kind): storm of $alerts alerts (batch $BATCH, $POST_CONNS connection(s))"
    local bodies=()
    ((alerts > 0)) && bodies=(--bodies "$d/bodies.jsonl")
    "${A_PIN[@]}" "$PY" "$HELPER" storm --admin "127.0.0.1:$ADMIN" --n "$alerts" --batch "$BATCH" \
        --conns "$POST_CONNS" --tier "$STORM_TIER" --run "$run" --max-seconds "$STORM_MAX" \
        "${bodies[@]}" \
        --out "$d/storm.json" >/dev/null
    # shellcheck disable=SC2046
    w=$("${A_PIN[@]}" "$PY" "$HELPER" wait $(sink_arg "$d") --expect "$alerts" --idle 15 --timeout "$STORM_MAX")
    [[ "$kind" == quiet ]] && sleep 2 # the pretend delivery window
    log "run $n: receiver: $w"
    if [[ "$PROFILE" != 0 ]]; then
        for pid in "${PERF_PIDS[@]}"; do stop_pid "$pid" INT; done
        PERF_PIDS=()
    fi
    sleep "$TAIL"
    stop_load
    stop_pid "$SAMPLER_PID"
    SAMPLER_PID=
    if [[ "$RECEIVER" == sink ]]; then curl -sf -m 30 -X POST "http://127.0.0.1:$RECV_PORT/_dump" >/dev/null; fi
    curl -sf -m 5 "http://127.0.0.1:$ADMIN/metrics" >"$d/metrics.txt" || true
    stop_all
    "$PY" "$HELPER" analyze --csv "$d/load.csv" --storm "$d/storm.json" --sink-dump "$d/sink.jsonl" \
        --samples "$d/samples.jsonl" --run "$n$suffix" --variant "$kind" \
        --label "pin=$PIN workers=$WORKERS control_nice=${CUR_CONTROL_NICE:-same} bench_nice=${BENCH_NICE:-0} receiver=$RECEIVER" \
        --load-before "$lb" --out "$d/analysis.json"
    if [[ "$PROFILE" == sched && -f "$d/perf-sched.data" ]]; then
        perf sched timehist -i "$d/perf-sched.data" -p "$SCHED_PIDS" 2>/dev/null >"$d/perf-sched-timehist.txt" || true
        perf sched timehist -i "$d/perf-sched.data" -s 2>/dev/null | sed -n '/Runtime summary/,$p' >"$d/perf-sched-summary.txt" || true
        "$PY" "$HELPER" schedlat --timehist "$d/perf-sched-timehist.txt" --analysis "$d/analysis.json" \
            --storm "$d/storm.json" --pids "$SCHED_NAMES" >/dev/null || log "schedlat failed"
        rm -f "$d/perf-sched.data" "$d/perf-sched-timehist.txt" # large; the summary stays
    fi
    if [[ "$PROFILE" == record && -f "$d/perf-control.data" ]]; then
        perf report -i "$d/perf-control.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
            head -80 >"$d/perf-control-flat.txt" || true
        perf report -i "$d/perf-control.data" --children --sort symbol --stdio -g none 2>/dev/null |
            grep -v '^$' | head -80 >"$d/perf-control-children.txt" || true
    fi
}

# ---------------------------------------------------------------- latency mode
latency_run() {
    local n=$1 d=$OUT_DIR/run-$1 run lb
    run="l$n-$$"
    lb=$(loadavg)
    start_stack "$d"
    if [[ "$LAT_LOAD" == 1 ]]; then start_load "$d" $((LAT_N * LAT_INTERVAL_MS / 1000 + 60)); sleep 2; fi
    log "run $n: $LAT_N alerts, one every $LAT_INTERVAL_MS ms (load avg $lb)"
    # shellcheck disable=SC2046
    "${A_PIN[@]}" "$PY" "$HELPER" latency --admin "127.0.0.1:$ADMIN" $(sink_arg "$d") \
        --sink-out "$d/sink.jsonl" --n "$LAT_N" --interval-ms "$LAT_INTERVAL_MS" --tier "$LAT_TIER" \
        --run "$run" --wait-seconds 30 --load-before "$lb" --out "$d/latency.json" >&2
    [[ -n "$LOAD_PID" ]] && stop_load
    stop_all
}

# ---------------------------------------------------------------- main
if [[ -f "$BUILD_DIR/bench-source.txt" ]]; then
    SRC_DESC=$(cat "$BUILD_DIR/bench-source.txt")
else
    SRC_DESC="unknown (built outside this script; HEAD is now $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
fi
{
    echo "### bench/alert_storm.sh --mode $MODE: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, kernel $(uname -r)"
    echo "- Source: $SRC_DESC; binary $BW ($(stat -c %y "$BW" | cut -d. -f1))"
    if [[ "$MODE" == storm ]]; then
        echo "- Settings: RUNS=$RUNS PAIRED=$PAIRED${PAIR_NICE:+ PAIR_NICE=$PAIR_NICE} RATE=$RATE CONNS=$CONNS BASELINE=$BASELINE TAIL=$TAIL ALERTS=$ALERTS BATCH=$BATCH POST_CONNS=$POST_CONNS STORM_TIER=$STORM_TIER WORKERS=$WORKERS PIN=$PIN CONTROL_NICE=${CONTROL_NICE:-none} BENCH_NICE=${BENCH_NICE:-none} RECEIVER=$RECEIVER${GW_ENV:+ GW_ENV=$GW_ENV}"
    else
        echo "- Settings: RUNS=$RUNS LAT_N=$LAT_N LAT_INTERVAL_MS=$LAT_INTERVAL_MS LAT_TIER=$LAT_TIER LAT_LOAD=$LAT_LOAD$([[ "$LAT_LOAD" == 1 ]] && echo " (RATE=$RATE CONNS=$CONNS)") WORKERS=$WORKERS PIN=$PIN CONTROL_NICE=${CONTROL_NICE:-none} BENCH_NICE=${BENCH_NICE:-none} RECEIVER=$RECEIVER"
    fi
    echo "- Raw: $OUT_DIR"
    echo
} >"$OUT_DIR/summary.md"

files=()
for ((r = 1; r <= RUNS; r++)); do
    if [[ "$MODE" == storm && "$PAIRED" == all ]]; then
        kinds=(storm niced quiet)
        for ((k = 0; k < 3; k++)); do
            kind=${kinds[(r - 1 + k) % 3]}
            storm_run "$r" "$kind"
            if [[ "$kind" == storm ]]; then files+=("$OUT_DIR/run-$r/analysis.json"); else files+=("$OUT_DIR/run-$r-$kind/analysis.json"); fi
        done
    elif [[ "$MODE" == storm && "$PAIRED" != 0 ]]; then
        other=quiet
        [[ "$PAIRED" == nice ]] && other=niced
        if ((r % 2)); then order=(storm "$other"); else order=("$other" storm); fi
        for k in "${order[@]}"; do storm_run "$r" "$k"; done
        files+=("$OUT_DIR/run-$r/analysis.json" "$OUT_DIR/run-$r-$other/analysis.json")
    elif [[ "$MODE" == storm ]]; then
        storm_run "$r"
        files+=("$OUT_DIR/run-$r/analysis.json")
    else
        latency_run "$r"
        files+=("$OUT_DIR/run-$r/latency.json")
    fi
done
"$PY" "$HELPER" summary --kind "$MODE" "${files[@]}" >>"$OUT_DIR/summary.md"
cat "$OUT_DIR/summary.md"
