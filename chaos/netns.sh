#!/usr/bin/env bash
# netns.sh - network namespaces for partition tests: a gateway namespace joined to an upstream
# namespace and a receiver namespace by veth pairs, and commands to cut and heal those links.
#
# Why: a partition is a property of the network, not of a process, and tc netem is not available
# on this kernel (PLATFORM.md). Namespaces give each side its own stack, so nft rules and
# `ip link set down` act on one link without touching the host, and parallel runs with different
# --prefix values never collide (addresses exist only inside the namespaces).
#
# Topology (nothing is added to the host's own network):
#
#     PREFIX-up  10.77.0.2/30 [to-gw] ====== [to-up] 10.77.0.1/30  PREFIX-gw
#     PREFIX-rx  10.77.0.6/30 [to-gw] ====== [to-rx] 10.77.0.5/30  PREFIX-gw
#
# Each namespace also has lo up (127.0.0.1), so a gateway in PREFIX-gw can serve on loopback
# there. Links are named after their far end: "upstream" (or "up") and "receiver" (or "rx").
#
# Cutting happens in PREFIX-gw: nft base chains per link in table `inet bw_chaos` (drop/reject),
# or `ip link set down` on the gateway's end (down) or the far end (down-far). Heal removes that
# link's chains and sets both ends up. Direction is seen from the gateway: egress = packets the
# gateway sends over the link, ingress = packets it receives.
#
# Cleanup: `up` removes what it created if any step fails or it is interrupted; `down` kills
# every process still inside the namespaces (by the PIDs `ip netns pids` lists, never by name)
# and deletes them; `run` does up, runs a command, and always does down (EXIT/INT/TERM trap).
# Deleting a namespace removes its veths and nft tables with it.
#
# usage: netns.sh [--prefix P] COMMAND [ARGS]      (see usage() and chaos/README.md)
set -euo pipefail

PREFIX=bwchaos
SELF=$(readlink -f "$0")

usage() {
    cat <<'EOF'
usage: netns.sh [--prefix P] COMMAND [ARGS]
  up [--no-receiver]             create P-gw, P-up (and P-rx) and their links
  down                           kill processes inside, delete the namespaces (idempotent)
  cut LINK [--mode M] [--dir D]  LINK: upstream|up|receiver|rx
                                 M: drop (default) | reject (TCP RST, ICMP otherwise)
                                    | down (gateway end) | down-far (far end)
                                 D: both (default) | egress | ingress  (seen from the gateway;
                                    drop/reject only)
  heal LINK                      undo every cut of LINK
  exec NS CMD [ARGS]             run CMD inside NS (gw|up|rx or a full name); its PID is CMD's
  addr NS                        print NS's address (gw: its end towards up, 10.77.0.1)
  status                         namespaces, links and active cuts
  run [--no-receiver] -- CMD     up, run CMD with NETNS_* variables set, then down, whatever
                                 happens; exits with CMD's status
Default prefix: bwchaos. Namespaces: P-gw, P-up, P-rx. Needs root (CAP_NET_ADMIN) and nft.
EOF
}

die() {
    echo "netns.sh: $*" >&2
    exit 1
}

ns_name() { # gw|up|rx|full name -> full name
    case "$1" in
    gw | up | rx) echo "$PREFIX-$1" ;;
    "$PREFIX"-gw | "$PREFIX"-up | "$PREFIX"-rx) echo "$1" ;;
    *) die "unknown namespace '$1' (gw, up, rx)" ;;
    esac
}

ns_exists() {
    ip netns list | awk '{print $1}' | grep -qx -- "$1"
}

link_far() { # upstream|up|receiver|rx -> up|rx
    case "$1" in
    upstream | up) echo up ;;
    receiver | rx) echo rx ;;
    *) die "unknown link '$1' (upstream, receiver)" ;;
    esac
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "needs root (CAP_NET_ADMIN)"
}

# ---- up / down ---------------------------------------------------------------------------

CREATED=()
UP_DONE=0

undo_partial_up() {
    if ((UP_DONE == 0)) && ((${#CREATED[@]} > 0)); then
        echo "netns.sh: up failed; removing ${CREATED[*]}" >&2
        for ns in "${CREATED[@]}"; do
            ip netns del "$ns" 2>/dev/null || true
        done
    fi
}

add_link() { # far (up|rx), gw address, far address
    local far=$1 gw_addr=$2 far_addr=$3
    ip link add "to-$far" netns "$PREFIX-gw" type veth peer name to-gw netns "$PREFIX-$far"
    ip -n "$PREFIX-gw" addr add "$gw_addr/30" dev "to-$far"
    ip -n "$PREFIX-$far" addr add "$far_addr/30" dev to-gw
    ip -n "$PREFIX-gw" link set "to-$far" up
    ip -n "$PREFIX-$far" link set to-gw up
}

cmd_up() {
    local receiver=1
    while (($# > 0)); do
        case "$1" in
        --no-receiver) receiver=0 ;;
        *) die "up: unknown option $1" ;;
        esac
        shift
    done
    need_root
    local names=(gw up)
    ((receiver)) && names+=(rx)
    for n in "${names[@]}"; do
        ! ns_exists "$PREFIX-$n" || die "namespace $PREFIX-$n exists already (netns.sh --prefix $PREFIX down)"
    done
    trap undo_partial_up EXIT
    trap 'exit 130' INT TERM
    for n in "${names[@]}"; do
        ip netns add "$PREFIX-$n"
        CREATED+=("$PREFIX-$n")
        ip -n "$PREFIX-$n" link set lo up
    done
    add_link up 10.77.0.1 10.77.0.2
    ((receiver)) && add_link rx 10.77.0.5 10.77.0.6
    UP_DONE=1
    trap - EXIT INT TERM
}

kill_ns_processes() { # ns
    local ns=$1 pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -n "$pids" ]] || return 0
    # shellcheck disable=SC2086 # one PID per word
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [[ -n "$pids" ]] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

cmd_down() {
    need_root
    local rc=0
    for n in gw up rx; do
        if ns_exists "$PREFIX-$n"; then
            kill_ns_processes "$PREFIX-$n"
            ip netns del "$PREFIX-$n" || rc=1
        fi
    done
    return $rc
}

# ---- cut / heal --------------------------------------------------------------------------

nft_gw() {
    ip netns exec "$PREFIX-gw" nft "$@"
}

cmd_cut() {
    (($# >= 1)) || die "cut: which link? (upstream, receiver)"
    local far mode=drop dir=both
    far=$(link_far "$1")
    shift
    while (($# > 0)); do
        case "$1" in
        --mode)
            mode=${2:-}
            shift
            ;;
        --dir)
            dir=${2:-}
            shift
            ;;
        *) die "cut: unknown option $1" ;;
        esac
        shift
    done
    need_root
    if ! ns_exists "$PREFIX-gw" || ! ns_exists "$PREFIX-$far"; then
        die "no link to $far: run up first"
    fi
    case "$mode" in
    down)
        ip -n "$PREFIX-gw" link set "to-$far" down
        return
        ;;
    down-far)
        ip -n "$PREFIX-$far" link set to-gw down
        return
        ;;
    drop | reject) ;;
    *) die "cut: --mode drop|reject|down|down-far" ;;
    esac
    case "$dir" in both | egress | ingress) ;; *) die "cut: --dir both|egress|ingress" ;; esac
    command -v nft >/dev/null || die "nft not found (apt-get install nftables)"
    # reject: TCP gets an RST (a connect is refused at once), anything else an ICMP error.
    local rules="add table inet bw_chaos
" hook chain match
    for hook in output input; do
        if [[ $hook == output ]]; then
            [[ $dir != ingress ]] || continue
            chain=out_$far match="oifname \"to-$far\""
        else
            [[ $dir != egress ]] || continue
            chain=in_$far match="iifname \"to-$far\""
        fi
        rules+="add chain inet bw_chaos $chain { type filter hook $hook priority 0; }
"
        if [[ $mode == reject ]]; then
            rules+="add rule inet bw_chaos $chain $match meta l4proto tcp reject with tcp reset
add rule inet bw_chaos $chain $match reject with icmpx type admin-prohibited
"
        else
            rules+="add rule inet bw_chaos $chain $match drop
"
        fi
    done
    nft_gw -f - <<<"$rules"
}

cmd_heal() {
    (($# == 1)) || die "heal: which link? (upstream, receiver)"
    local far
    far=$(link_far "$1")
    need_root
    ns_exists "$PREFIX-gw" || die "no namespaces: run up first"
    for chain in "out_$far" "in_$far"; do
        if nft_gw list chain inet bw_chaos "$chain" >/dev/null 2>&1; then
            nft_gw delete chain inet bw_chaos "$chain"
        fi
    done
    ip -n "$PREFIX-gw" link set "to-$far" up
    if ns_exists "$PREFIX-$far"; then
        ip -n "$PREFIX-$far" link set to-gw up
    fi
}

# ---- exec / addr / status / run ----------------------------------------------------------

cmd_exec() {
    (($# >= 2)) || die "exec NS CMD [ARGS]"
    local ns
    ns=$(ns_name "$1")
    shift
    ns_exists "$ns" || die "no namespace $ns: run up first"
    exec ip netns exec "$ns" "$@"
}

cmd_addr() {
    (($# == 1)) || die "addr NS"
    case "$(ns_name "$1")" in
    "$PREFIX-gw") echo 10.77.0.1 ;;
    "$PREFIX-up") echo 10.77.0.2 ;;
    "$PREFIX-rx") echo 10.77.0.6 ;;
    esac
}

cmd_status() {
    for n in gw up rx; do
        if ns_exists "$PREFIX-$n"; then
            echo "== $PREFIX-$n"
            ip -n "$PREFIX-$n" -brief addr show | grep -v '^lo ' || true
        fi
    done
    if ns_exists "$PREFIX-gw" && command -v nft >/dev/null; then
        nft_gw list table inet bw_chaos 2>/dev/null || echo "(no nft cuts)"
    fi
}

cmd_run() {
    local up_args=()
    while (($# > 0)) && [[ $1 != -- ]]; do
        up_args+=("$1")
        shift
    done
    (($# >= 2)) || die "run [--no-receiver] -- CMD [ARGS]"
    shift
    cmd_up "${up_args[@]}"
    trap 'cmd_down' EXIT
    # CMD runs in the background so that a signal interrupts `wait` at once (bash defers traps
    # until a foreground child exits); the signal is passed on to CMD by its PID, then down runs.
    local child rc=0
    trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT
    trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
    NETNS_SH=$SELF NETNS_PREFIX=$PREFIX NETNS_GW=$PREFIX-gw NETNS_UP=$PREFIX-up \
        NETNS_RX=$PREFIX-rx NETNS_GW_ADDR=10.77.0.1 NETNS_UP_ADDR=10.77.0.2 \
        NETNS_GW_RX_ADDR=10.77.0.5 NETNS_RX_ADDR=10.77.0.6 "$@" 0<&0 &
    child=$!
    wait "$child" || rc=$?
    return $rc
}

# ---- main --------------------------------------------------------------------------------

while (($# > 0)); do
    case "$1" in
    --prefix)
        PREFIX=${2:-}
        shift 2 || die "--prefix needs a value"
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) break ;;
    esac
done
[[ $PREFIX =~ ^[A-Za-z0-9][A-Za-z0-9_-]{0,23}$ ]] || die "--prefix: 1-24 letters, digits, _ or -"
(($# > 0)) || {
    usage >&2
    exit 2
}
cmd=$1
shift
case "$cmd" in
up) cmd_up "$@" ;;
down) cmd_down "$@" ;;
cut) cmd_cut "$@" ;;
heal) cmd_heal "$@" ;;
exec) cmd_exec "$@" ;;
addr) cmd_addr "$@" ;;
status) cmd_status "$@" ;;
run) cmd_run "$@" ;;
*)
    usage >&2
    exit 2
    ;;
esac
