#!/usr/bin/python3
"""alert_storm.py - helpers for bench/alert_storm.sh (issue 6 targets). Stdlib only.

Subcommands (each prints or writes JSON; times are unix seconds, time.time(), the same clock as
the sink's arrival times and bw_load's t_start_ms):

  bodies   write a storm's request bodies to a file, one per line (done before the load starts,
           so building 10k alerts' JSON does not burst the harness CPU during the measurement).
  storm    raise N distinct alerts through POST /api/v1/alerts as fast as the admin API takes
           them: Alertmanager v4 bodies of --batch alerts (at most 100, the API's limit), or the
           generic shape with --batch 1; --conns keep-alive connections post in parallel. Labels
           {alertname: bench_storm, run: RUN, n: i} make every alert distinct (no dedup).
           429/503/connection errors are retried (counted) after 50 ms, at most 100 times a body.
  latency  raise N alerts one at a time, one every --interval-ms (open loop: the schedule does not
           slip when a POST is slow), each with labels {run, n}; then wait for the sink, dump it,
           and report POST -> webhook arrival latency per alert.
  wait     poll the sink's /_count until it reaches --expect, or nothing new arrived for
           --idle seconds, or --timeout seconds passed.
  sample   until SIGTERM, every --interval s: CPU time and run-queue wait (/proc/PID/task/*/
           schedstat: ns on CPU, ns runnable but waiting) of each named PID, context switches,
           and machine-wide busy ticks (/proc/stat); one JSON line per sample. A pidstat -u -w
           that also sees run-queue delay.
  analyze  one run: bw_load CSV sliced into windows (baseline, storm intake, delivery, storm =
           intake + delivery, after), sink dump (count, distinct ids, lost, duplicates), sampler
           timeline (CPU and run-queue wait per process per window); JSON.
  schedlat scheduling delay (wake-up -> on CPU) of the gateway's processes before and during the
           storm, from `perf sched timehist` (PROFILE=sched); added to analysis.json.
  summary  several runs' analyze outputs -> markdown (median and min-max of every figure).
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import sys
import threading
import time


# ----------------------------------------------------------------------------- small helpers
def hostport(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def pct(sorted_vals, p):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def sink_get(sink, path, method="GET"):
    c = http.client.HTTPConnection(*hostport(sink), timeout=30)
    c.request(method, path)
    r = c.getresponse()
    body = json.loads(r.read() or b"{}")
    c.close()
    return body


def read_dump(path):
    """Records {"ts", "key", "json"}: webhook_sink.py's dump, or tests/integration/receiver.py's
    log (its lines carry the headers as a list; the Idempotency-Key is taken from there)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "key" not in r:
                r["key"] = next((v for k, v in r.get("headers", [])
                                 if k.lower() == "idempotency-key"), None)
            out.append(r)
    return out


def received_count(a):
    """Webhooks received so far: the sink's /_count, or the lines of receiver.py's log."""
    if getattr(a, "log", None):
        try:
            with open(a.log, "rb") as f:
                return sum(1 for _ in f)
        except OSError:
            return 0
    return sink_get(a.sink, "/_count")["count"]


# ----------------------------------------------------------------------------- storm
def make_bodies(n, batch, tier, run):
    """The request bodies of a storm (bytes), Alertmanager v4 (batch > 1) or generic (batch 1)."""
    bodies = []
    for b in range(0, n, batch):
        idx = range(b, min(n, b + batch))
        if batch == 1:
            i = idx[0]
            bodies.append(
                {
                    "summary": f"bench storm alert {i}",
                    "tier": tier,
                    "labels": {"alertname": "bench_storm", "run": run, "n": str(i)},
                }
            )
        else:
            bodies.append(
                {
                    "version": "4",
                    "status": "firing",
                    "alerts": [
                        {
                            "status": "firing",
                            "labels": {
                                "alertname": "bench_storm",
                                "run": run,
                                "n": str(i),
                                "tier": tier,
                            },
                            "annotations": {"summary": f"bench storm alert {i}"},
                        }
                        for i in idx
                    ],
                }
            )
    return [json.dumps(x).encode() for x in bodies]


def cmd_bodies(a):
    with open(a.out, "wb") as f:
        for b in make_bodies(a.n, a.batch, a.tier, a.run):
            f.write(b + b"\n")


def cmd_storm(a):
    n, batch = a.n, a.batch
    if n == 0:  # a control run (A/A): nothing is raised; the windows have typical lengths
        t0 = time.time()
        time.sleep(a.quiet_intake)
        t1 = time.time()
        res = {"mono_offset": time.time() - time.monotonic(),
               "codes": {}, "retries": 0, "raised": 0, "updated": 0, "ids": 0, "failed": 0,
               "t_start": t0, "t_end": t1, "t_done": t1 + a.quiet_delivery, "accept_s": t1 - t0,
               "alerts": 0, "batch": batch, "conns": a.conns, "posts": 0, "run": a.run,
               "post_ms": {"p50": None, "p99": None, "max": None}}
        with open(a.out, "w") as f:
            json.dump(res, f)
        print(json.dumps(res))
        return
    if a.bodies:  # prepared before the load started (see `bodies`): no CPU burst at storm start
        with open(a.bodies, "rb") as f:
            payloads = [line.rstrip(b"\n") for line in f if line.strip()]
    else:
        payloads = make_bodies(n, batch, a.tier, a.run)
    lock = threading.Lock()
    state = {"next": 0, "codes": {}, "retries": 0, "raised": 0, "updated": 0, "ids": 0,
             "failed": 0, "post_ms": []}
    deadline = time.time() + a.max_seconds

    def worker():
        conn = None
        while True:
            with lock:
                i = state["next"]
                if i >= len(payloads):
                    break
                state["next"] += 1
            for attempt in range(101):
                if time.time() > deadline:
                    with lock:
                        state["failed"] += 1
                    break
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(*hostport(a.admin), timeout=30)
                    t0 = time.time()
                    conn.request("POST", "/api/v1/alerts", payloads[i],
                                 {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    body = r.read()
                    t1 = time.time()
                    status = r.status
                except (OSError, http.client.HTTPException):
                    status, body = 0, b""
                    if conn is not None:
                        conn.close()
                    conn = None
                with lock:
                    state["codes"][str(status)] = state["codes"].get(str(status), 0) + 1
                if status in (200, 201, 202):
                    try:
                        doc = json.loads(body)
                    except ValueError:
                        doc = {}
                    with lock:
                        state["raised"] += int(doc.get("raised", 0))
                        state["updated"] += int(doc.get("updated", 0))
                        state["ids"] += len(doc.get("ids", []))
                        state["post_ms"].append((t1 - t0) * 1000)
                    break
                if status not in (0, 429, 503) or attempt == 100:
                    with lock:
                        state["failed"] += 1
                    break
                with lock:
                    state["retries"] += 1
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    t_start = time.time()
    threads = [threading.Thread(target=worker) for _ in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_end = time.time()
    pm = sorted(state.pop("post_ms"))
    res = dict(state, t_start=t_start, t_end=t_end, accept_s=t_end - t_start, alerts=n,
               mono_offset=time.time() - time.monotonic(),
               batch=batch, conns=a.conns, posts=len(payloads), run=a.run,
               post_ms={"p50": pct(pm, 50), "p99": pct(pm, 99), "max": pm[-1] if pm else None})
    del res["next"]
    with open(a.out, "w") as f:
        json.dump(res, f)
    print(json.dumps(res))


# ----------------------------------------------------------------------------- latency
def cmd_latency(a):
    conn = http.client.HTTPConnection(*hostport(a.admin), timeout=30)
    sent = {}
    codes = {}
    t0 = time.time() + 0.05
    for i in range(a.n):
        due = t0 + i * a.interval_ms / 1000.0
        d = due - time.time()
        if d > 0:
            time.sleep(d)
        body = json.dumps({"summary": f"bench latency alert {i}", "tier": a.tier,
                           "labels": {"alertname": "bench_latency", "run": a.run,
                                      "n": str(i)}}).encode()
        ts = time.time()
        try:
            conn.request("POST", "/api/v1/alerts", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
            conn = http.client.HTTPConnection(*hostport(a.admin), timeout=30)
        tr = time.time()
        codes[str(status)] = codes.get(str(status), 0) + 1
        sent[str(i)] = (ts, tr, status)
    t_last = time.time()
    # wait for the webhooks
    expect = sum(1 for v in sent.values() if 200 <= v[2] < 300)
    deadline = time.time() + a.wait_seconds
    while time.time() < deadline:
        if received_count(a) >= expect:
            break
        time.sleep(0.05)
    if not a.log:
        sink_get(a.sink, "/_dump", "POST")
    recs = read_dump(a.log or a.sink_out)
    first = {}
    dup = 0
    for r in recs:
        j = r.get("json") or {}
        lab = j.get("labels") or {}
        if lab.get("run") != a.run:
            continue
        k = lab.get("n")
        if k in first:
            dup += 1
            continue
        first[k] = r["ts"]
    lat, after_resp = [], []
    for k, (ts, tr, st) in sent.items():
        if k in first:
            lat.append((first[k] - ts) * 1000)
            after_resp.append((first[k] - tr) * 1000)
    lat.sort()
    after_resp.sort()
    post = sorted((tr - ts) * 1000 for ts, tr, _ in sent.values())
    res = {
        "run": a.run, "n": a.n, "interval_ms": a.interval_ms, "codes": codes,
        "loadavg_before": a.load_before,
        "loadavg_after": " ".join(open("/proc/loadavg").read().split()[:3]),
        "received": len(lat), "lost": expect - len(lat), "duplicates": dup,
        "t_start": t0, "t_end": t_last,
        "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                       "max": lat[-1] if lat else None, "min": lat[0] if lat else None},
        "post_ms": {"p50": pct(post, 50), "p99": pct(post, 99), "max": post[-1]},
        "after_response_ms": {"p50": pct(after_resp, 50), "p99": pct(after_resp, 99),
                              "max": after_resp[-1] if after_resp else None},
        "latencies_ms": [round(x, 3) for x in lat],
    }
    with open(a.out, "w") as f:
        json.dump(res, f)
    short = {k: v for k, v in res.items() if k != "latencies_ms"}
    print(json.dumps(short))


# ----------------------------------------------------------------------------- wait
def cmd_wait(a):
    t0 = time.time()
    last_n, last_change = -1, t0
    while True:
        now = time.time()
        n = received_count(a)
        if n != last_n:
            last_n, last_change = n, now
        if n >= a.expect:
            why = "complete"
            break
        if now - last_change > a.idle:
            why = "idle"
            break
        if now - t0 > a.timeout:
            why = "timeout"
            break
        time.sleep(0.05)
    print(json.dumps({"count": last_n, "why": why, "waited_s": time.time() - t0}))


# ----------------------------------------------------------------------------- sample
def proc_sched(pid):
    """(ns on CPU, ns waiting on a run queue, timeslices) summed over the threads of pid."""
    run = wait = slices = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                r, w, s = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
        run += r
        wait += w
        slices += s
    return run, wait, slices


def proc_ctxt(pid):
    vol = invol = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol = int(line.split()[1])
    except OSError:
        return None
    return vol, invol


def machine():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            p = line.split()
            v = [int(x) for x in p[1:]]
            # user nice system idle iowait irq softirq steal
            out[p[0]] = {"busy": v[0] + v[1] + v[2] + v[5] + v[6] + v[7], "iowait": v[4],
                         "irq": v[5] + v[6], "steal": v[7], "all": sum(v[:8])}
    return out


def cmd_sample(a):
    pids = dict(x.split("=", 1) for x in a.pids.split(","))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with open(a.out, "w") as f:
        while not stop.is_set():
            rec = {"t": time.time(), "m": machine(), "p": {}}
            for name, pid in pids.items():
                s = proc_sched(pid)
                c = proc_ctxt(pid)
                if s is not None:
                    rec["p"][name] = {"run": s[0], "wait": s[1], "slices": s[2],
                                      "vcs": c[0] if c else 0, "ivcs": c[1] if c else 0}
            f.write(json.dumps(rec) + "\n")
            f.flush()
            stop.wait(a.interval)


# ----------------------------------------------------------------------------- analyze
def load_csv(path):
    rows = []
    with open(path) as f:
        next(f, None)
        for line in f:
            p = line.rstrip("\n").split(",")
            if len(p) < 4:
                continue
            rows.append((int(p[0]) / 1000.0, int(p[1]), int(p[2]), p[3]))
    return rows


def window_stats(rows, a, b, ref_p99=None):
    sel = [r for r in rows if a <= r[0] < b]
    lat = sorted(r[1] / 1000.0 for r in sel)
    above = (100.0 * sum(1 for x in lat if x > ref_p99) / len(lat)) if ref_p99 and lat else None
    errors = sum(1 for r in sel if r[3] != "")
    non2xx = sum(1 for r in sel if r[3] == "" and not (200 <= r[2] < 300))
    return {
        "from": a, "to": b, "seconds": b - a, "requests": len(sel), "errors": errors,
        "non_2xx": non2xx, "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90),
        "p99_ms": pct(lat, 99), "p999_ms": pct(lat, 99.9), "max_ms": lat[-1] if lat else None,
        "over_10ms": sum(1 for x in lat if x > 10), "over_50ms": sum(1 for x in lat if x > 50),
        "above_baseline_p99_pct": above,
    }


def sampler_window(samples, a, b):
    """Per process: CPU seconds, run-queue wait seconds, involuntary switches; machine busy."""
    inside = [s for s in samples if a <= s["t"] <= b]
    if len(inside) < 2:
        return None
    s0, s1 = inside[0], inside[-1]
    dt = s1["t"] - s0["t"]
    procs = {}
    for name in s1["p"]:
        if name not in s0["p"]:
            continue
        p0, p1 = s0["p"][name], s1["p"][name]
        procs[name] = {
            "cpu_pct": round(100 * (p1["run"] - p0["run"]) / 1e9 / dt, 1),
            "runq_wait_ms_per_s": round((p1["wait"] - p0["wait"]) / 1e6 / dt, 1),
            "ivcs_per_s": round((p1["ivcs"] - p0["ivcs"]) / dt, 1),
            "vcs_per_s": round((p1["vcs"] - p0["vcs"]) / dt, 1),
        }
    hz = os.sysconf("SC_CLK_TCK")
    mach = {}
    for cpu in s1["m"]:
        busy = (s1["m"][cpu]["busy"] - s0["m"][cpu]["busy"]) / hz
        iow = (s1["m"][cpu]["iowait"] - s0["m"][cpu]["iowait"]) / hz
        irq = (s1["m"][cpu].get("irq", 0) - s0["m"][cpu].get("irq", 0)) / hz
        steal = (s1["m"][cpu].get("steal", 0) - s0["m"][cpu].get("steal", 0)) / hz
        mach[cpu] = {"busy_pct": round(100 * busy / dt, 1), "iowait_pct": round(100 * iow / dt, 1),
                     "irq_pct": round(100 * irq / dt, 1), "steal_pct": round(100 * steal / dt, 1)}
    ours = sum(v["cpu_pct"] for v in procs.values())
    # not ours: busy time of the machine that none of our processes ran, irq/softirq excluded
    # (loopback TCP of our own traffic is largely softirq time) and steal excluded (time the
    # hypervisor gave to other guests: this is a VM)
    other = mach["cpu"]["busy_pct"] - mach["cpu"]["irq_pct"] - mach["cpu"]["steal_pct"] - ours
    return {"seconds": round(dt, 2), "procs": procs, "machine": mach,
            "irq_pct": mach["cpu"]["irq_pct"], "steal_pct": mach["cpu"]["steal_pct"],
            "ours_cpu_pct": round(ours, 1), "other_cpu_pct": round(other, 1)}


def cmd_analyze(a):
    rows = load_csv(a.csv)
    storm = json.load(open(a.storm))
    ts, ta = storm["t_start"], storm["t_end"]
    recs = read_dump(a.sink_dump)
    mine = []
    for r in recs:
        j = r.get("json") or {}
        if (j.get("labels") or {}).get("run") == storm["run"]:
            mine.append(r)
    ns = [(r["json"]["labels"].get("n")) for r in mine]
    distinct_n = set(ns)
    keys = set(r.get("key") for r in mine)
    dids = set((r.get("json") or {}).get("delivery_id") for r in mine)
    aids = set((r.get("json") or {}).get("alert_id") for r in mine)
    t_done = max((r["ts"] for r in mine), default=storm.get("t_done", ta))
    t_first = min((r["ts"] for r in mine), default=None)
    # deliveries: how many alerts each delivery id carried
    per_did = {}
    for r in mine:
        d = (r.get("json") or {}).get("delivery_id")
        per_did[d] = per_did.get(d, 0) + 1
    sizes = sorted(per_did.values())
    # progress: webhooks received by time (seconds after storm start)
    arr = sorted(r["ts"] - ts for r in mine)
    progress = {}
    for q in (10, 50, 90, 99, 100):
        if arr:
            progress[f"p{q}_s"] = round(pct(arr, q), 3)
    t_load0 = min(r[0] for r in rows) if rows else ts
    t_load1 = max(r[0] for r in rows) if rows else t_done
    windows = {
        "baseline": (t_load0 + a.warm, ts),
        "intake": (ts, ta),
        "delivery": (ta, t_done),
        "storm": (ts, t_done),
        "after": (t_done + 0.5, t_load1 + 0.001),
    }
    samples = []
    if a.samples and os.path.exists(a.samples):
        with open(a.samples) as f:
            for line in f:
                try:
                    samples.append(json.loads(line))
                except ValueError:
                    pass
    out = {
        "run": a.run,
        "label": a.label,
        "variant": a.variant,
        "loadavg_before": a.load_before,
        "loadavg_after": " ".join(open("/proc/loadavg").read().split()[:3]),
        "storm": {k: storm[k] for k in ("alerts", "batch", "conns", "posts", "codes", "retries",
                                       "raised", "updated", "failed", "accept_s", "post_ms")},
        "webhooks": {
            "received": len(mine), "distinct_alerts": len(distinct_n),
            "lost": storm["alerts"] - len(distinct_n), "duplicates": len(mine) - len(distinct_n),
            "distinct_idempotency_keys": len(keys), "distinct_delivery_ids": len(dids),
            "distinct_alert_ids": len(aids),
            "alerts_per_delivery": {"min": sizes[0] if sizes else None,
                                    "median": statistics.median(sizes) if sizes else None,
                                    "max": sizes[-1] if sizes else None},
            "first_after_s": (t_first - ts) if t_first else None,
            "all_delivered_s": t_done - ts, "progress": progress,
            "rate_per_s": len(mine) / (t_done - ts) if t_done > ts else None,
        },
        "windows": {},
        "cpu": {k: sampler_window(samples, *v) for k, v in windows.items()} if samples else {},
    }
    base = window_stats(rows, *windows["baseline"])
    out["windows"] = {k: window_stats(rows, *v, ref_p99=base["p99_ms"]) for k, v in windows.items()}
    # Spike-robust views. Background work (other people's builds) puts short latency spikes at
    # random moments, and the longer a window, the more of them its p99 catches, so a 30 s
    # baseline and a 6 s storm window are not comparable as they are. (1) baseline p99 at equal
    # length: the baseline cut into pieces as long as the storm window, median of their p99s.
    # (2) per-second p99s, median over the window's seconds (a storm raises every second's
    # p99; a background spike raises a few).
    L = max(windows["storm"][1] - windows["storm"][0], 0.5)
    b0, b1 = windows["baseline"]
    pieces = []
    t = b1 - L
    while t >= b0 - 1e-9:  # aligned on the storm's start, backwards
        w = window_stats(rows, t, t + L)
        if w["p99_ms"] is not None:
            pieces.append(w["p99_ms"])
        t -= L
    out["baseline_eq"] = {"length_s": L, "pieces": len(pieces),
                          "p99_pieces_ms": [round(x, 3) for x in pieces],
                          "p99_median_ms": statistics.median(pieces) if pieces else None}
    sec = {}
    for r in rows:
        sec.setdefault(int(r[0]), []).append(r[1] / 1000.0)
    def per_second_median(a0, a1):
        v = [pct(sorted(x), 99) for k, x in sec.items() if a0 <= k and k + 1 <= a1 and len(x) > 50]
        return statistics.median(v) if v else None
    out["p99_1s_median_ms"] = {k: per_second_median(*v) for k, v in windows.items()}
    beq = out["baseline_eq"]["p99_median_ms"]
    st = out["windows"]["storm"]["p99_ms"]
    out["p99_change_eq_pct"] = 100.0 * (st - beq) / beq if beq and st is not None else None
    m = out["p99_1s_median_ms"]
    out["p99_1s_change_pct"] = (100.0 * (m["storm"] - m["baseline"]) / m["baseline"]
                                if m.get("baseline") and m.get("storm") is not None else None)
    b, s = out["windows"]["baseline"]["p99_ms"], out["windows"]["storm"]["p99_ms"]
    af = out["windows"]["after"]["p99_ms"]
    out["p99_change_vs_after_pct"] = 100.0 * (s - af) / af if af and s is not None else None
    i = out["windows"]["intake"]["p99_ms"]
    out["p99_change_pct"] = 100.0 * (s - b) / b if b and s is not None else None
    out["p99_change_intake_pct"] = 100.0 * (i - b) / b if b and i is not None else None
    # per-second p99 timeline, for the raw record
    tl = {}
    for r in rows:
        tl.setdefault(int(r[0] - ts) if r[0] >= ts else -1 - int(ts - r[0]), []).append(r[1])
    out["timeline_p99_ms"] = {str(k): round(pct(sorted(v), 99) / 1000.0, 3)
                              for k, v in sorted(tl.items())}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    w = out["windows"]
    print(f"run {a.run} [{a.label}]: {'QUIET (no alerts)' if storm['alerts'] == 0 else 'storm'}: accept {storm['accept_s']:.2f}s, all delivered "
          f"{out['webhooks']['all_delivered_s']:.2f}s, received {len(mine)} "
          f"(distinct {len(distinct_n)}, lost {out['webhooks']['lost']}, "
          f"delivery ids {len(dids)}); p99 baseline {w['baseline']['p99_ms']:.3f} ms -> storm "
          f"{w['storm']['p99_ms']:.3f} ms ({out['p99_change_pct']:+.1f}%), intake "
          f"{w['intake']['p99_ms']:.3f} ms; errors {w['baseline']['errors']}/"
          f"{w['storm']['errors']}", file=sys.stderr)


# ----------------------------------------------------------------------------- schedlat
def cmd_schedlat(a):
    """Scheduling delay (wake-up to running) of named tasks, from `perf sched timehist` text
    recorded with -k CLOCK_MONOTONIC, split into the pre-storm part and the storm window."""
    an = json.load(open(a.analysis))
    storm = json.load(open(a.storm))
    off = storm["mono_offset"]
    ts = storm["t_start"] - off
    td = ts + an["webhooks"]["all_delivered_s"]
    names = dict(x.split("=", 1) for x in a.pids.split(","))
    bypid = {v: k for k, v in names.items()}
    delays = {}
    t_first = None
    with open(a.timehist) as f:
        for line in f:
            p = line.split()
            if len(p) < 6 or not p[0][0].isdigit():
                continue
            try:
                t = float(p[0])
                d = float(p[-2])
            except ValueError:
                continue
            t_first = t if t_first is None else t_first
            task = p[2]
            pid = task[task.rfind("[") + 1:].split("/")[-1].rstrip("]")
            name = bypid.get(pid)
            if name is None:
                continue
            w = "baseline" if t < ts else "storm" if t <= td else None
            if w:
                delays.setdefault(name, {}).setdefault(w, []).append(d)
    out = {"baseline_s": ts - (t_first or ts), "storm_s": td - ts, "tasks": {}}
    for name, ws in delays.items():
        out["tasks"][name] = {}
        for w, v in ws.items():
            v.sort()
            secs = out["baseline_s"] if w == "baseline" else out["storm_s"]
            out["tasks"][name][w] = {
                "n": len(v), "p50_ms": pct(v, 50), "p99_ms": pct(v, 99), "p999_ms": pct(v, 99.9),
                "max_ms": v[-1], "over_1ms": sum(1 for x in v if x > 1.0),
                "total_ms_per_s": sum(v) / secs if secs > 0 else None}
    an["sched_delay"] = out
    with open(a.analysis, "w") as f:
        json.dump(an, f, indent=1)
    print(json.dumps(out))


# ----------------------------------------------------------------------------- summary
def fmtv(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def ctl_cpu_s(r):
    """CPU seconds of the control process over the storm window (from the sampler)."""
    c = ((r.get("cpu") or {}).get("storm") or {})
    p = c.get("procs", {}).get("control")
    return p["cpu_pct"] * c["seconds"] / 100.0 if p else float("nan")


def med_spread(vals, fmt="{:.2f}"):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return (fmt.format(statistics.median(vals)) + " (" + fmt.format(min(vals)) + "-" +
            fmt.format(max(vals)) + ")")


def cmd_summary(a):
    runs = [json.load(open(p)) for p in a.files]
    lines = []
    P = lines.append
    if a.kind == "latency":
        P("| run | load avg before -> after | sent | received | lost | p50 ms | p90 ms | p99 ms "
          "| max ms | POST ms p50 |")
        P("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in runs:
            L = r["latency_ms"]
            P(f"| {r['run']} | {r.get('loadavg_before', '')} -> {r.get('loadavg_after', '')} | "
              f"{r['n']} | {r['received']} | "
              f"{r['lost']} | {L['p50']:.1f} | {L['p90']:.1f} | {L['p99']:.1f} | {L['max']:.1f} | "
              f"{r['post_ms']['p50']:.1f} |")
        P(f"| **median (min-max)** | | | | | {med_spread([r['latency_ms']['p50'] for r in runs], '{:.1f}')} "
          f"| {med_spread([r['latency_ms']['p90'] for r in runs], '{:.1f}')} "
          f"| {med_spread([r['latency_ms']['p99'] for r in runs], '{:.1f}')} "
          f"| {med_spread([r['latency_ms']['max'] for r in runs], '{:.1f}')} "
          f"| {med_spread([r['post_ms']['p50'] for r in runs], '{:.1f}')} |")
        allv = sorted(x for r in runs for x in r["latencies_ms"])
        P("")
        P(f"All {len(allv)} alerts of the {len(runs)} runs pooled: p50 {pct(allv, 50):.1f} ms, "
          f"p99 {pct(allv, 99):.1f} ms, max {allv[-1]:.1f} ms; lost "
          f"{sum(r['lost'] for r in runs)}, duplicates {sum(r['duplicates'] for r in runs)}.")
        print("\n".join(lines))
        return
    g = lambda rs, f: [f(r) for r in rs]  # noqa: E731
    storms = [r for r in runs if r["storm"]["alerts"] > 0 and r.get("variant") != "niced"]
    niceds = [r for r in runs if r.get("variant") == "niced"]
    quiets = [r for r in runs if r["storm"]["alerts"] == 0]

    def table(rs, title):
        if not rs:
            return
        P(f"**{title}**")
        P("")
        P("| run | load avg before -> after | not-ours CPU % base/storm (steal) "
          "| baseline p50 / p99 / max ms | storm p50 / p99 / max ms | p99 change "
          "| p99 change vs equal-length baseline | per-second p99, median: base -> storm (change) "
          "| storm reqs > baseline p99 | errors base/storm | accepted in s | all delivered s "
          "| control CPU s (storm window) | webhooks (distinct, lost, delivery ids) |")
        P("|---:|---|---|---|---|---:|---:|---|---:|---|---:|---:|---:|---|")
        for r in rs:
            b, st = r["windows"]["baseline"], r["windows"]["storm"]
            wh = r["webhooks"]
            cpu = r.get("cpu") or {}
            oc = "/".join(f"{cpu[w]['other_cpu_pct']:.0f}" if cpu.get(w) else "-"
                          for w in ("baseline", "storm"))
            oc += " (" + "/".join(f"{cpu[w].get('steal_pct', 0):.0f}" if cpu.get(w) else "-"
                                  for w in ("baseline", "storm")) + ")"
            m = r["p99_1s_median_ms"]
            F = fmtv
            P(f"| {r['run']} | {r['loadavg_before']} -> {r['loadavg_after']} | {oc} | "
              f"{F(b['p50_ms'])} / {F(b['p99_ms'])} / {F(b['max_ms'], '{:.1f}')} | "
              f"{F(st['p50_ms'])} / {F(st['p99_ms'])} / {F(st['max_ms'], '{:.1f}')} | "
              f"{F(r['p99_change_pct'], '{:+.0f}%')} | {F(r['p99_change_eq_pct'], '{:+.0f}%')} | "
              f"{F(m['baseline'])} -> {F(m['storm'])} ({F(r['p99_1s_change_pct'], '{:+.0f}%')}) | "
              f"{F(st['above_baseline_p99_pct'], '{:.2f}%')} | "
              f"{b['errors'] + b['non_2xx']}/{st['errors'] + st['non_2xx']} | "
              f"{r['storm']['accept_s']:.2f} | {wh['all_delivered_s']:.2f} | "
              f"{ctl_cpu_s(r):.2f} | "
              f"{wh['received']} ({wh['distinct_alerts']}, {wh['lost']}, "
              f"{wh['distinct_delivery_ids']}) |")
        P(f"| **median (min-max)** | | "
          f"| p99 {med_spread(g(rs, lambda r: r['windows']['baseline']['p99_ms']))} "
          f"| p99 {med_spread(g(rs, lambda r: r['windows']['storm']['p99_ms']))} "
          f"| {med_spread(g(rs, lambda r: r['p99_change_pct']), '{:+.0f}%')} "
          f"| {med_spread(g(rs, lambda r: r['p99_change_eq_pct']), '{:+.0f}%')} "
          f"| {med_spread(g(rs, lambda r: r['p99_1s_change_pct']), '{:+.0f}%')} "
          f"| {med_spread(g(rs, lambda r: r['windows']['storm']['above_baseline_p99_pct']), '{:.2f}%')} | "
          f"| {med_spread(g(rs, lambda r: r['storm']['accept_s']))} "
          f"| {med_spread(g(rs, lambda r: r['webhooks']['all_delivered_s']))} "
          f"| {med_spread(g(rs, ctl_cpu_s))} | |")
        P("")

    table(storms, f"Storm runs ({len(storms)}): {storms[0]['storm']['alerts'] if storms else 0} "
                  f"alerts each; {storms[0]['label'] if storms else ''}")
    table(niceds, f"Storm runs with the control process reniced ({len(niceds)}): "
                  f"{niceds[0]['label'] if niceds else ''}")
    table(quiets, f"Quiet control runs ({len(quiets)}): the same procedure without alerts "
                  "(intake window 4 s, delivery 2 s): the p99 change that noise alone makes")
    P("")
    for grp, title in ((storms, "storm runs"), (niceds, "storm runs, control reniced"),
                       (quiets, "quiet runs")):
        if grp is not quiets:
            cpu_table(grp, title, P)
        sched_table(grp, title, P)
    print("\n".join(lines))


def sched_table(runs, title, P):
    rs = [r for r in runs if r.get("sched_delay")]
    if not rs:
        return
    P(f"Scheduling delay (wake-up to on-CPU, perf sched), {title}; per run: p99 / max ms, "
      f"and total ms delayed per second:")
    P("")
    P("| run | task | before the storm: p99 / max ms, ms/s | storm: p99 / max ms, ms/s |")
    P("|---:|---|---|---|")
    for r in rs:
        for name, ws in sorted(r["sched_delay"]["tasks"].items()):
            cells = []
            for w in ("baseline", "storm"):
                x = ws.get(w)
                cells.append(f"{x['p99_ms']:.3f} / {x['max_ms']:.3f}, {x['total_ms_per_s']:.1f}"
                             if x else "-")
            P(f"| {r['run']} | {name} | {cells[0]} | {cells[1]} |")
    P("")


def cpu_table(runs, title, P):
    """CPU picture of a group of runs, medians over runs."""
    names = []
    for r in runs:
        for w in ("baseline", "intake", "delivery"):
            c = (r.get("cpu") or {}).get(w)
            if c:
                for n in c["procs"]:
                    if n not in names:
                        names.append(n)
    if names:
        P(f"CPU (% of one CPU) and run-queue wait (ms waited per second, summed over the "
          f"process's threads), {title}, median over runs, per window:")
        P("")
        P("| process | baseline CPU % | intake CPU % | delivery CPU % | baseline run-queue wait "
          "| intake run-queue wait | delivery run-queue wait |")
        P("|---|---:|---:|---:|---:|---:|---:|")

        def m(n, w, k):
            v = [((r.get("cpu") or {}).get(w) or {}).get("procs", {}).get(n, {}).get(k)
                 for r in runs]
            v = [x for x in v if x is not None]
            return f"{statistics.median(v):.1f}" if v else "-"
        for n in names:
            P(f"| {n} | {m(n, 'baseline', 'cpu_pct')} | {m(n, 'intake', 'cpu_pct')} | "
              f"{m(n, 'delivery', 'cpu_pct')} | {m(n, 'baseline', 'runq_wait_ms_per_s')} | "
              f"{m(n, 'intake', 'runq_wait_ms_per_s')} | {m(n, 'delivery', 'runq_wait_ms_per_s')} |")

        def mm(w, f):
            v = [f(r["cpu"][w]) for r in runs if (r.get("cpu") or {}).get(w)]
            return f"{statistics.median(v):.0f}" if v else "-"
        P(f"| machine busy (all CPUs, % of one) | {mm('baseline', lambda c: c['machine']['cpu']['busy_pct'])} "
          f"| {mm('intake', lambda c: c['machine']['cpu']['busy_pct'])} "
          f"| {mm('delivery', lambda c: c['machine']['cpu']['busy_pct'])} | | | |")
        P(f"| irq + softirq (mostly our loopback TCP) | {mm('baseline', lambda c: c.get('irq_pct', 0))} "
          f"| {mm('intake', lambda c: c.get('irq_pct', 0))} "
          f"| {mm('delivery', lambda c: c.get('irq_pct', 0))} | | | |")
        P(f"| steal (hypervisor gave the CPU to other guests) | {mm('baseline', lambda c: c.get('steal_pct', 0))} "
          f"| {mm('intake', lambda c: c.get('steal_pct', 0))} "
          f"| {mm('delivery', lambda c: c.get('steal_pct', 0))} | | | |")
        P(f"| not ours (other engineers' processes) | {mm('baseline', lambda c: c['other_cpu_pct'])} "
          f"| {mm('intake', lambda c: c['other_cpu_pct'])} "
          f"| {mm('delivery', lambda c: c['other_cpu_pct'])} | | | |")
        P("")


def main(argv):
    p = argparse.ArgumentParser(description="helpers for bench/alert_storm.sh")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("storm")
    s.add_argument("--admin", required=True)
    s.add_argument("--n", type=int, default=10000)
    s.add_argument("--batch", type=int, default=100)
    s.add_argument("--conns", type=int, default=1)
    s.add_argument("--tier", default="P2")
    s.add_argument("--run", required=True)
    s.add_argument("--max-seconds", type=float, default=300)
    s.add_argument("--bodies", help="file written by `bodies` (one body per line)")
    s.add_argument("--quiet-intake", type=float, default=4.0,
                   help="--n 0: length of the pretend intake window (s)")
    s.add_argument("--quiet-delivery", type=float, default=2.0,
                   help="--n 0: length of the pretend delivery window (s)")
    s.add_argument("--out", required=True)
    s = sub.add_parser("bodies")
    s.add_argument("--n", type=int, default=10000)
    s.add_argument("--batch", type=int, default=100)
    s.add_argument("--tier", default="P2")
    s.add_argument("--run", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("latency")
    s.add_argument("--admin", required=True)
    s.add_argument("--sink", help="webhook_sink.py HOST:PORT")
    s.add_argument("--sink-out", help="where the sink dumps (its --out)")
    s.add_argument("--log", help="instead of the sink: tests/integration/receiver.py's --log")
    s.add_argument("--load-before", default="")
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--interval-ms", type=float, default=50)
    s.add_argument("--tier", default="P1")
    s.add_argument("--run", required=True)
    s.add_argument("--wait-seconds", type=float, default=30)
    s.add_argument("--out", required=True)
    s = sub.add_parser("wait")
    s.add_argument("--sink")
    s.add_argument("--log")
    s.add_argument("--expect", type=int, required=True)
    s.add_argument("--idle", type=float, default=15)
    s.add_argument("--timeout", type=float, default=300)
    s = sub.add_parser("sample")
    s.add_argument("--pids", required=True, help="name=pid,name=pid,...")
    s.add_argument("--interval", type=float, default=0.2)
    s.add_argument("--out", required=True)
    s = sub.add_parser("analyze")
    s.add_argument("--csv", required=True)
    s.add_argument("--storm", required=True)
    s.add_argument("--sink-dump", required=True)
    s.add_argument("--samples")
    s.add_argument("--run", required=True)
    s.add_argument("--label", default="")
    s.add_argument("--variant", default="storm", help="storm | quiet | niced")
    s.add_argument("--warm", type=float, default=2.0)
    s.add_argument("--load-before", default="")
    s.add_argument("--out", required=True)
    s = sub.add_parser("schedlat")
    s.add_argument("--timehist", required=True)
    s.add_argument("--analysis", required=True, help="analysis.json (updated in place)")
    s.add_argument("--storm", required=True)
    s.add_argument("--pids", required=True, help="name=pid,...")
    s = sub.add_parser("summary")
    s.add_argument("--kind", choices=("storm", "latency"), default="storm")
    s.add_argument("files", nargs="+")
    a = p.parse_args(argv)
    {"storm": cmd_storm, "bodies": cmd_bodies, "latency": cmd_latency, "wait": cmd_wait, "sample": cmd_sample,
     "analyze": cmd_analyze, "schedlat": cmd_schedlat, "summary": cmd_summary}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
