#!/usr/bin/env bash
# plot.sh - turns a bw_load CSV (and optionally an events file) into a PNG timeline.
#
# Three panels over time, one point per bucket (100 ms by default) of intended start time:
#   1. requests/s: all requests and 2xx responses
#   2. failure rate: transport errors (% of requests) and non-2xx responses (%)
#   3. p99 latency (ms, log scale) of ALL requests in the bucket, failed ones included
# Events are vertical dashed lines across all panels, labelled in the top one: breaker
# transitions in red, alerts and deliveries in blue, injected faults in orange, others grey.
#
# Why these choices: bw_load's t_start_ms is the intended start (wall clock, unix ms), so a
# bucket shows the load offered at that moment and what happened to it, and event timestamps
# (unix ms, as in GET /api/v1/events) line up without any conversion. Time on the x axis is
# seconds since the first request. Bucketing is done with sort + awk (mawk has no asort), the
# events JSON is read with python3 (both are in scripts/setup.sh's list), drawing with gnuplot.
#
# Events file: the body of GET /api/v1/events ({"events":[{"ts_ms":..,"kind":..,"fields":{..}}]}),
# a plain JSON array of such objects, or one such object per line. A scenario can add its own
# markers (e.g. {"ts_ms":..., "kind":"fault_injected", "fields":{"what":"stall"}}).
#
# usage: plot.sh [-o OUT.png] [-e EVENTS.json] [-t TITLE] [-b BUCKET_MS] LOAD.csv
set -euo pipefail

out=""
events=""
title=""
bucket=100

usage() {
    echo "usage: plot.sh [-o OUT.png] [-e EVENTS.json] [-t TITLE] [-b BUCKET_MS] LOAD.csv" >&2
    exit 2
}

while getopts "o:e:t:b:h" opt; do
    case "$opt" in
    o) out=$OPTARG ;;
    e) events=$OPTARG ;;
    t) title=$OPTARG ;;
    b) bucket=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
(($# == 1)) || usage
csv=$1
[[ -r "$csv" ]] || {
    echo "plot.sh: cannot read $csv" >&2
    exit 1
}
[[ -z "$events" || -r "$events" ]] || {
    echo "plot.sh: cannot read $events" >&2
    exit 1
}
[[ $bucket =~ ^[1-9][0-9]*$ ]] || usage
[[ -n "$out" ]] || out="${csv%.csv}.png"
[[ -n "$title" ]] || title=$(basename "$csv")
command -v gnuplot >/dev/null || {
    echo "plot.sh: gnuplot not found (apt-get install -y gnuplot-nox)" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# t0: the earliest intended start (lines are written in completion order, not start order).
t0=$(awk -F, 'NR > 1 && $1 != "" { if (t0 == "" || $1 < t0) t0 = $1 } END { print t0 }' "$csv")
[[ -n "$t0" ]] || {
    echo "plot.sh: $csv has no requests" >&2
    exit 1
}

# bucket latency_us error_flag non2xx_flag, sorted by bucket then latency; then one line per
# bucket (empty buckets included): t_s req_s ok_s err_pct non2xx_pct p99_ms
awk -F, -v t0="$t0" -v b="$bucket" 'NR > 1 && $1 != "" {
    err = ($4 != "") ? 1 : 0
    bad = (!err && ($3 < 200 || $3 >= 300)) ? 1 : 0
    printf "%d %d %d %d\n", int(($1 - t0) / b), $2, err, bad
}' "$csv" | sort -n -k1,1 -k2,2 | awk -v b="$bucket" '
# Each line is at its bucket'"'"'s start and gnuplot draws "steps" from there to the next line;
# a last line at the end of the last bucket closes the final step.
function flush(   idx, rate) {
    if (n == 0) return
    idx = int(n * 0.99); if (idx < n * 0.99) idx++; if (idx < 1) idx = 1
    rate = 1000.0 / b
    last = sprintf("%.1f %.1f %.2f %.2f %.3f", n * rate, (n - errs - bads) * rate,
        100.0 * errs / n, 100.0 * bads / n, lat[idx] / 1000.0)
    printf "%.3f %s\n", cur * b / 1000.0, last
}
function empty(k) { printf "%.3f 0 0 NaN NaN NaN\n", k * b / 1000.0 }
{
    if (n > 0 && $1 != cur) { flush(); for (k = cur + 1; k < $1; k++) empty(k); n = 0 }
    if (n == 0) { cur = $1; errs = 0; bads = 0 }
    lat[++n] = $2; errs += $3; bads += $4
}
END { flush(); printf "%.3f %s\n", (cur + 1) * b / 1000.0, last }' >"$tmp/buckets.dat"

xmax=$(awk 'END { print $1 }' "$tmp/buckets.dat")

# Events -> "t_s<TAB>color<TAB>label", relative to t0, inside the plotted range only.
: >"$tmp/events.tsv"
if [[ -n "$events" ]]; then
    python3 - "$events" "$t0" "$xmax" >"$tmp/events.tsv" <<'EOF'
import json, sys
path, t0, xmax = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
text = open(path).read().strip()
try:
    doc = json.loads(text) if text else []
    items = doc.get("events", []) if isinstance(doc, dict) else doc
except ValueError:
    items = [json.loads(line) for line in text.splitlines() if line.strip()]
for ev in items:
    if not isinstance(ev, dict) or "ts_ms" not in ev:
        continue
    t = (float(ev["ts_ms"]) - t0) / 1000.0
    if t < 0 or t > xmax:
        continue
    kind = str(ev.get("kind", "event"))
    f = ev.get("fields") if isinstance(ev.get("fields"), dict) else {}
    extra = [str(f[k]) for k in ("upstream", "state", "to", "channel", "what") if k in f]
    label = " ".join([kind] + extra)[:48].replace('"', "'").replace("\t", " ")
    k = kind.lower()
    color = ("#d62728" if "breaker" in k else
             "#1f77b4" if any(w in k for w in ("alert", "deliver", "notif", "escalat")) else
             "#ff7f0e" if any(w in k for w in ("fault", "chaos", "inject", "heal", "cut")) else
             "#7f7f7f")
    print(f"{t:.3f}\t{color}\t{label}")
EOF
fi

{
    cat <<EOF
set terminal pngcairo size 1400,960 font "DejaVu Sans,10"
set output "$out"
set datafile missing "NaN"
set xrange [0:$xmax]
set grid ytics lc rgb "#dddddd"
set key top right opaque noenhanced
set lmargin 12
set rmargin 4
set multiplot layout 3,1 title "$title  (${bucket} ms buckets)"
EOF
    # One arrow per event on every panel; labels only on the first.
    awk -F'\t' '{ printf "set arrow from %s, graph 0 to %s, graph 1 nohead dt 2 lw 1.2 lc rgb \"%s\" front\n", $1, $1, $2 }' \
        "$tmp/events.tsv"
    awk -F'\t' '{ printf "set label %d \"%s\" at %s, graph 0.98 rotate by 90 right offset 0.8,0 font \",8\" tc rgb \"%s\" front noenhanced\n", NR, $3, $1, $2 }' \
        "$tmp/events.tsv"
    cat <<EOF
set ylabel "requests/s"
set yrange [0:*]
set format x ""
plot "$tmp/buckets.dat" using 1:2 with steps lw 3 lc rgb "#aaaaaa" title "all", \
     "" using 1:3 with steps lw 1.5 lc rgb "#2ca02c" title "2xx"
unset label
set ylabel "failed (%)"
set yrange [0:105]
plot "$tmp/buckets.dat" using 1:4 with steps lw 1.5 lc rgb "#d62728" title "transport errors", \
     "" using 1:5 with steps lw 1.5 lc rgb "#9467bd" title "non-2xx"
set ylabel "p99 latency (ms)"
set logscale y
set yrange [*:*]
set format x "%g"
set xlabel "seconds since the first request"
plot "$tmp/buckets.dat" using 1:6 with steps lw 1.5 lc rgb "#1f77b4" title "p99, all requests"
unset multiplot
EOF
} >"$tmp/plot.gp"

gnuplot "$tmp/plot.gp"
echo "$out"
