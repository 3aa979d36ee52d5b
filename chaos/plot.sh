#!/usr/bin/env bash
# plot.sh - turns a bw_load CSV (and optionally an events file) into a PNG timeline.
#
# Panels over time, one point per bucket (100 ms by default) of intended start time:
#   0. event labels: one per event (or per burst of events of one kind), fanned out so they
#      never overlap, joined to their event's time by a short connector
#   1. requests/s: all requests and 2xx responses
#   2. failure rate: transport errors (% of requests) and non-2xx responses (%)
#   3. p99 latency (ms, log scale) of ALL requests in the bucket, failed ones included
#   4. breaker state (closed / half-open / open) per upstream, rebuilt from the breaker_*
#      events, and alert deliveries (events of kind alert_delivered) as marks
# Events are vertical dashed lines across panels 1-4: breaker transitions in red, alerts and
# deliveries in blue, injected or healed faults in orange, worker events brown, others grey.
#
# Why these choices: bw_load's t_start_ms is the intended start (wall clock, unix ms), so a
# bucket shows the load offered at that moment and what happened to it, and event timestamps
# (unix ms, as in GET /api/v1/events) line up without any conversion. Time on the x axis is
# seconds since the first request. Bucketing is done with sort + awk (mawk has no asort), the
# events JSON is read with python3 (both are in scripts/setup.sh's list), drawing with gnuplot.
# Labels used to be written at their events' times on the top panel; events a few ms apart
# (half-open then closed, a crash loop) then printed on top of each other. Now the events that
# fall within one label width of each other form a cluster, a cluster shows one label per kind
# ("worker_crash x6" for six crashes), and those labels are spread out to the right.
#
# Events file: the body of GET /api/v1/events ({"events":[{"ts_ms":..,"kind":..,"fields":{..}}]}),
# a plain JSON array of such objects, or one such object per line. A scenario can add its own
# markers (e.g. {"ts_ms":..., "kind":"fault_injected", "fields":{"what":"stall"}}).
#
# -x FROM_MS starts the time axis at that unix ms instead of the first request (a load that
# starts after the fault, as in alert_partition, still shows the events before it).
#
# usage: plot.sh [-o OUT.png] [-e EVENTS.json] [-t TITLE] [-s SUBTITLE] [-b BUCKET_MS]
#                [-x FROM_MS] LOAD.csv
set -euo pipefail

out=""
events=""
title=""
subtitle=""
bucket=100
from=""

usage() {
    echo "usage: plot.sh [-o OUT.png] [-e EVENTS.json] [-t TITLE] [-s SUBTITLE] [-b BUCKET_MS] [-x FROM_MS] LOAD.csv" >&2
    exit 2
}

while getopts "o:e:t:s:b:x:h" opt; do
    case "$opt" in
    o) out=$OPTARG ;;
    e) events=$OPTARG ;;
    t) title=$OPTARG ;;
    s) subtitle=$OPTARG ;;
    b) bucket=$OPTARG ;;
    x) from=$OPTARG ;;
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
[[ -z "$from" || $from =~ ^[0-9]+$ ]] || usage
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
[[ -z "$from" ]] || ((from >= t0)) || t0=$from

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

# xmax, the highest req/s, and the p99 range (for head room above the data, where the keys go)
read -r xmax rmax pmin pmax < <(awk '
    { x = $1; if ($2 > r) r = $2
      if ($6 != "NaN" && $6 > 0) { if (pmin == "" || $6 < pmin) pmin = $6; if ($6 > pmax) pmax = $6 } }
    END { if (pmin == "") { pmin = 1; pmax = 1 }
          printf "%s %s %s %s\n", x, (r > 0 ? r : 1), pmin, pmax }' "$tmp/buckets.dat")

# Geometry (screen fractions), shared by gnuplot and the label layout below.
width=1400
height=1150
left=0.075
right=0.985

# Events -> gnuplot commands: $tmp/lines.gp (dashed lines for the data panels), $tmp/strip.gp
# (labels and connectors for the label strip), $tmp/state.gp (the breaker/delivery panel).
: >"$tmp/lines.gp"
: >"$tmp/strip.gp"
python3 - "${events:-}" "$t0" "$xmax" "$tmp" "$width" "$left" "$right" <<'EOF'
import json, sys
path, t0, xmax, tmp = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
width, left, right = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7])

items = []
if path:
    text = open(path).read().strip()
    try:
        doc = json.loads(text) if text else []
        items = doc.get("events", []) if isinstance(doc, dict) else doc
    except ValueError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
evs = []
for ev in items:
    if not isinstance(ev, dict) or "ts_ms" not in ev:
        continue
    f = ev.get("fields") if isinstance(ev.get("fields"), dict) else {}
    evs.append(((float(ev["ts_ms"]) - t0) / 1000.0, str(ev.get("kind", "event")), f, ev.get("worker")))
evs.sort(key=lambda e: e[0])


def color(kind):
    k = kind.lower()
    return ("#d62728" if "breaker" in k else
            "#1f77b4" if any(w in k for w in ("alert", "deliver", "notif", "escalat")) else
            "#ff7f0e" if any(w in k for w in ("fault", "chaos", "inject", "heal", "cut")) else
            "#8c564b" if any(w in k for w in ("worker", "crash")) else
            "#7f7f7f")


SHORT = {"fault_injected": "fault:", "fault_healed": "healed:", "alert_delivered": "delivered:"}


def extras(kind, f, worker):
    out = []
    for k in ("upstream", "state", "to", "channel", "what"):
        if k in f and not (k == "to" and kind.endswith(str(f[k]))):
            out.append(str(f[k]))
    if worker is not None and kind.startswith("worker"):
        out.append(f"w{worker}")
    return out


def esc(s):
    return s.replace("\\", "/").replace('"', "'").replace("\t", " ")


# ---- breaker state per upstream (events before t0 give the initial state) ----
# A "restarted" marker (a scenario restarted the gateway) sets every breaker back to closed:
# breaker state lives in the processes' memory, and a new gateway starts closed without an event.
LEVEL = {"closed": 0, "half_open": 1, "open": 2}
states = {}  # upstream -> [(t, level)]
for t, kind, f, _ in evs:
    if kind == "restarted" and 0 < t <= xmax:
        for seq in states.values():
            seq.append((t, 0))
        continue
    if not kind.startswith("breaker_") or t > xmax:
        continue
    to = str(f.get("to") or kind[len("breaker_"):])
    if to not in LEVEL:
        continue
    u = str(f.get("upstream", "?"))
    seq = states.setdefault(u, [(0.0, LEVEL.get(str(f.get("from")), 0))])
    if t <= 0:
        seq[0] = (0.0, LEVEL[to])
    else:
        seq.append((t, LEVEL[to]))
palette = ["#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
plots = []
with open(f"{tmp}/breaker.dat", "w") as out:
    for i, (u, seq) in enumerate(sorted(states.items())):
        off = 0.07 * (i - (len(states) - 1) / 2)  # several upstreams: side by side, not on top
        for t, lv in seq + [(xmax, seq[-1][1])]:
            out.write(f"{t:.3f} {lv + off:.3f}\n")
        out.write("\n\n")
        plots.append(f'"{tmp}/breaker.dat" index {i} using 1:2 with steps lw 2.5 '
                     f'lc rgb "{palette[i % len(palette)]}" title "breaker {esc(u)}"')
deliv = [t for t, kind, _, _ in evs if kind == "alert_delivered" and 0 <= t <= xmax]
with open(f"{tmp}/deliv.dat", "w") as out:
    for t in deliv:
        out.write(f"{t:.3f} -1\n")
if deliv:
    plots.append(f'"{tmp}/deliv.dat" using 1:2 with points pt 9 ps 1.6 lc rgb "#1f77b4" '
                 f'title "alert delivered (at the receiver)"')
with open(f"{tmp}/state.gp", "w") as out:
    if not plots:
        out.write('set label 1 "no breaker transitions or deliveries in this window" '
                  'at graph 0.5, graph 0.5 center tc rgb "#7f7f7f"\n')
        plots.append("-10 notitle")
    out.write("plot " + ", \\\n     ".join(plots) + "\n")

# ---- lines and labels (only events inside the plotted range) ----
shown = [e for e in evs if 0 <= e[0] <= xmax]
with open(f"{tmp}/lines.gp", "w") as out:
    for t, kind, _, _ in shown:
        out.write(f'set arrow from {t:.3f}, graph 0 to {t:.3f}, graph 1 nohead dt 2 lw 1 '
                  f'lc rgb "{color(kind)}" back\n')
# a rotated 8 pt label is about 11 px wide: keep label anchors 14 px apart
plot_px = (right - left) * width
sep = 14.0 / plot_px * xmax if xmax > 0 else 0.1
clusters = []
for e in shown:
    if clusters and e[0] - clusters[-1][-1][0] < sep:
        clusters[-1].append(e)
    else:
        clusters.append([e])
labels = []  # [t_anchor, color, text]
for c in clusters:
    by_kind = {}
    for e in c:
        by_kind.setdefault(e[1], []).append(e)
    for kind, es in by_kind.items():
        name = SHORT.get(kind, kind)
        ex = [" ".join(extras(kind, e[2], e[3])) for e in es]
        if len(es) == 1:
            text = " ".join([name] + ([ex[0]] if ex[0] else []))
        else:
            # the words every one of them has: "fault: crash x6" for "crash 1" .. "crash 6"
            common = [w for w in ex[0].split() if all(w in x.split() for x in ex)]
            text = " ".join([name] + common + [f"x{len(es)}"])
        labels.append([es[0][0], color(kind), text if len(text) <= 30 else text[:29] + "\u2026"])
# spread: each label at least `sep` right of the one before, then pulled back inside the range
xs = []
for t, _, _ in labels:
    xs.append(max(t, xs[-1] + sep) if xs else t)
limit = xmax - 0.3 * sep
for i in range(len(xs) - 1, -1, -1):
    xs[i] = min(xs[i], limit if i == len(xs) - 1 else xs[i + 1] - sep)
with open(f"{tmp}/strip.gp", "w") as out:
    for i, ((t, col, text), x) in enumerate(zip(labels, xs), 1):
        x = max(x, 0.0)
        out.write(f'set arrow from {t:.3f}, graph 0 to {x:.3f}, graph 0.035 nohead lw 1 '
                  f'lc rgb "{col}"\n')
        out.write(f'set label {i} "{esc(text)}" at {x:.3f}, graph 0.05 rotate by 90 left '
                  f'font ",8" tc rgb "{col}" noenhanced\n')
EOF

# Panels, top to bottom (screen fractions): title, label strip, req/s, failed %, p99, state.
{
    cat <<EOF
set terminal pngcairo size $width,$height font "DejaVu Sans,10"
set output "$out"
set datafile missing "NaN"
set xrange [0:$xmax]
set lmargin at screen $left
set rmargin at screen $right
set multiplot
set label 1001 "$title  (${bucket} ms buckets)" at screen 0.5, screen 0.988 center font ",12" noenhanced
set label 1002 "$subtitle" at screen 0.5, screen 0.971 center font ",9" tc rgb "#555555" noenhanced

# label strip
set tmargin at screen 0.963
set bmargin at screen 0.805
unset border
unset xtics
unset ytics
set yrange [0:1]
EOF
    cat "$tmp/strip.gp"
    cat <<EOF
plot -1 notitle
unset label
unset arrow

set border
set xtics
set mxtics
set ytics
set format x ""
set grid xtics ytics lc rgb "#e4e4e4"
set key top left horizontal opaque noenhanced samplen 2
EOF
    cat "$tmp/lines.gp"
    cat <<EOF
# requests/s
set tmargin at screen 0.80
set bmargin at screen 0.615
set ylabel "requests/s"
set yrange [0:$rmax * 1.3]
plot "$tmp/buckets.dat" using 1:2 with steps lw 4 lc rgb "#bbbbbb" title "all", \
     "" using 1:3 with steps lw 1.5 lc rgb "#2ca02c" title "2xx"

# failed %
set tmargin at screen 0.60
set bmargin at screen 0.445
set ylabel "failed (%)"
set yrange [0:125]
set ytics 0, 25, 100
plot "$tmp/buckets.dat" using 1:4 with steps lw 1.5 lc rgb "#d62728" title "transport errors", \
     "" using 1:5 with steps lw 1.5 lc rgb "#9467bd" title "non-2xx"

# p99
set tmargin at screen 0.43
set bmargin at screen 0.245
set ylabel "p99 latency (ms)"
set logscale y
set ytics (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
set format y "%g"
set yrange [$pmin / 1.5 : $pmax * 6]
plot "$tmp/buckets.dat" using 1:6 with steps lw 1.5 lc rgb "#1f77b4" title "p99, all requests"
unset logscale y

# breaker state and deliveries
set tmargin at screen 0.23
set bmargin at screen 0.075
set ylabel "breaker / alerts"
set yrange [-1.6:3.1]
set format y
set ytics ("closed" 0, "half-open" 1, "open" 2, "delivered" -1)
set grid noxtics ytics
set format x "%g"
set xlabel "seconds since the first request"
EOF
    cat "$tmp/state.gp"
    echo "unset multiplot"
} >"$tmp/plot.gp"

gnuplot "$tmp/plot.gp"
echo "$out"
