#!/usr/bin/python3
"""slow_upstream.py: an upstream that answers too slowly, then one that stalls mid-body.

World (loopback, no root needed): bw_upstream <- bw_faultproxy <- breakwater (2 workers), one
upstream `u` reached only through the proxy, route timeout ROUTE_TIMEOUT_MS. bw_load drives the
gateway in open loop and logs every request.

Phase "slow": the proxy delays every chunk from the upstream by LATENCY_MS (> the route timeout).
Phase "stall": after the breaker has closed again, bodies of BODY_BYTES; the proxy forwards
STALL_AFTER bytes of each connection and then holds the rest (the connection stays open): the
head and the start of the body reach the client, then nothing.

Pass criteria (constants below; timing bounds x2.5 on an ASan build):
  slow:  every request that started after the fault and before breaker_open is a 504 (the
         gateway's upstream_timeout, checked on a probe), answered between ROUTE_TIMEOUT_MS and
         ROUTE_TIMEOUT_MS + LATE_MS; the breaker opens by consecutive failures with at least 5
         more `timeout` outcomes counted; afterwards 100% 503 in < REJECT_P99_MS (p99); once the
         fault is removed, breaker_closed within open_duration + 1 s (+ the slow calls' timeout).
  stall: every request between the fault and breaker_open is either a 504 (head stalled) or a
         response cut short (bw_load error closed/reset/bad_response, never a complete 200),
         ended between ROUTE_TIMEOUT_MS and ROUTE_TIMEOUT_MS + LATE_MS after it began (the
         body's idle timeout); at least one is a cut body; the breaker opens on those timeouts
         (consecutive_failures, `timeout` outcomes); afterwards 100% 503 in < REJECT_P99_MS.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (Fail, FaultProxy, Gateway, LatencyFail, Load, Scenario, Upstream,  # noqa: E402
                      fmt_ms, fmt_s, now_ms, ok, percentile, window)

ROUTE_TIMEOUT_MS = 300
LATENCY_MS = 1000  # > ROUTE_TIMEOUT_MS
OPEN_DURATION_S = 2
RATE = 100
BODY_BYTES = 200000
STALL_AFTER = 20000
LATE_MS = 150  # a timeout fires within this of the deadline
OPEN_LAG_MS = 150
SETTLE_MS = 20
REJECT_P99_MS = 10.0
TIME_BOUND_S = 60


def config(upstream_addr):
    return f"""
workers: 2
upstreams:
  u:
    hosts: ["{upstream_addr}"]
    connect_timeout: 500ms
    timeout: {ROUTE_TIMEOUT_MS}ms
    outlier: {{ consecutive_failures: 0 }}
    breaker: {{ consecutive_failures: 5, open_duration: {OPEN_DURATION_S}s }}
routes:
  - name: u
    match: {{ path_prefix: / }}
    upstream: u
"""


def outcomes(g):
    st, body = g.admin("/api/v1/upstreams")
    return body["upstreams"][0]["counters"]["outcomes"]


def judge_open_phase(sc, g, rows, t_fault, ev_open, t_end, label, timeouts0):
    """Shared checks: the breaker opened by consecutive timeouts soon enough, and refused
    everything fast afterwards. Returns the rows failed before the open."""
    s = sc.scale
    t_open = ev_open["ts_ms"]
    if ev_open["fields"].get("reason") != "consecutive_failures":
        raise Fail(f"{label}: breaker opened for {ev_open['fields'].get('reason')}")
    added = outcomes(g)["timeout"] - timeouts0
    if added < 5:
        raise Fail(f"{label}: only {added} timeout outcomes counted")
    # requests that started after the fault and before the open: admitted, so they must time
    # out; only those that started within OPEN_LAG_MS of the open may already have been refused
    before = [r for r in window(rows, t_fault, t_open)
              if not (r[3] == "" and r[2] == 503 and r[0] >= t_open - OPEN_LAG_MS * s)]
    fails = sorted(r[0] + r[1] for r in rows if r[0] >= t_fault and not ok(r))
    if len(fails) < 5:
        raise Fail(f"{label}: only {len(fails)} failed requests")
    lag = t_open - fails[4]
    bound = ROUTE_TIMEOUT_MS + (LATE_MS + OPEN_LAG_MS) * s
    if t_open - t_fault > bound or lag > OPEN_LAG_MS * s:
        raise LatencyFail(f"{label}: breaker opened {t_open - t_fault:.0f} ms after the fault "
                   f"({lag:+.0f} ms after the 5th failure)")
    after = window(rows, t_open + SETTLE_MS, t_end)
    refused = [r for r in after if r[3] == "" and r[2] == 503]
    p99 = percentile([r[1] for r in after], 99)
    if not after or len(refused) != len(after):
        raise Fail(f"{label}: {len(after) - len(refused)} of {len(after)} requests after the "
                   f"open were not 503: {[r for r in after if r not in refused][:5]}")
    if p99 > REJECT_P99_MS * s:
        raise LatencyFail(f"{label}: circuit_open p99 {p99:.1f} ms")
    sc.fig(**{f"{label}_open_after_fault": fmt_s((t_open - t_fault) / 1000),
              f"{label}_circuit_open_p99": fmt_ms(p99)})
    return before


def scenario(sc):
    s = sc.scale
    up = Upstream(sc, "u")
    fp = FaultProxy(sc, up.addr)
    g = Gateway(sc, config(fp.addr))

    # ---- slow ----
    load = Load(sc, f"http://127.0.0.1:{g.port}/slow/x", "slow.csv", rate=RATE, duration=30 * s,
                connections=100, timeout_ms=3000)
    time.sleep(1.0)
    timeouts0 = outcomes(g)["timeout"]
    t_fault = now_ms()
    fp.add(kind="latency", direction="downstream", ms=LATENCY_MS)
    sc.mark("fault_injected", ts_ms=t_fault, what=f"latency {LATENCY_MS}ms")
    st, hdrs, body = g.get("/slow/probe", timeout=5)
    probe = (st, hdrs.get("x-breakwater-reason"), body[:120])
    ev_open = g.wait_event("breaker_open", 5)
    time.sleep(1.0)
    t_clear = now_ms()
    fp.clear()
    sc.mark("fault_healed", ts_ms=t_clear, what="latency removed")
    ev_closed = g.wait_event("breaker_closed", OPEN_DURATION_S + 5)
    time.sleep(0.5)
    rows = load.stop()
    events = g.events()
    sc.plot(load.csv, "slow upstream: latency > timeout", events)

    if probe[0] != 504 or probe[1] != "timeout" or b"upstream_timeout" not in probe[2]:
        raise Fail(f"slow: a request during the fault was not a 504 upstream_timeout: {probe}")
    before = judge_open_phase(sc, g, rows, t_fault + SETTLE_MS, ev_open, t_clear, "slow", timeouts0)
    late = [r for r in before
            if not (r[3] == "" and r[2] == 504
                    and ROUTE_TIMEOUT_MS - 5 <= r[1] <= ROUTE_TIMEOUT_MS + LATE_MS * s)]
    sc.fig(slow_504=len(before) - len(late))
    if len(before) - len(late) < 5:
        raise Fail(f"slow: only {len(before) - len(late)} requests timed out before the open")
    if late:
        raise LatencyFail(f"slow: {len(late)} of {len(before)} requests before the open were not a 504 "
                   f"at the deadline: {late[:5]}")
    closed_after = (ev_closed["ts_ms"] - t_clear) / 1000
    sc.fig(slow_closed_after_heal=fmt_s(closed_after))
    if closed_after > OPEN_DURATION_S + 1 + ROUTE_TIMEOUT_MS / 1000 + (s - 1):
        raise LatencyFail(f"slow: closed {closed_after:.2f}s after the fault was removed")

    # ---- stall mid-body ----
    since = max(e["id"] for e in events)
    load = Load(sc, f"http://127.0.0.1:{g.port}/stall/x?size={BODY_BYTES}", "stall.csv",
                rate=RATE // 2, duration=30 * s, connections=100, timeout_ms=3000)
    time.sleep(1.0)
    timeouts0 = outcomes(g)["timeout"]
    t_fault = now_ms()
    fp.add(kind="stall", direction="downstream", after_bytes=STALL_AFTER)
    sc.mark("fault_injected", ts_ms=t_fault, what=f"stall after {STALL_AFTER}B")
    ev_open = g.wait_event("breaker_open", 5, since=since)
    time.sleep(1.0)
    t_end = now_ms()
    rows = load.stop()
    fp.clear()
    events = g.events()
    stall_timeouts = outcomes(g)["timeout"] - timeouts0
    if g.stop() != 0:
        raise Fail(f"breakwater did not exit 0:\n{g.logs()[-2000:]}")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")
    sc.plot(load.csv, "upstream stalled mid-body", events)
    sc.fig(stall_timeout_outcomes=stall_timeouts)
    if stall_timeouts < 5:
        raise Fail(f"stall: only {stall_timeouts} timeout outcomes counted")
    t_open = ev_open["ts_ms"]
    if ev_open["fields"].get("reason") != "consecutive_failures":
        raise Fail(f"stall: breaker opened for {ev_open['fields'].get('reason')}")
    before = [r for r in window(rows, t_fault + SETTLE_MS, t_open)
              if not (r[3] == "" and r[2] == 503 and r[0] >= t_open - OPEN_LAG_MS * s)]
    cut = [r for r in before if r[3] in ("closed", "reset", "bad_response")]
    head_504 = [r for r in before if r[3] == "" and r[2] == 504]
    wrong = [r for r in before if r not in cut and r not in head_504]
    off_time = [r for r in cut + head_504
                if not ROUTE_TIMEOUT_MS - 5 <= r[1] <= ROUTE_TIMEOUT_MS + LATE_MS * s]
    sc.fig(stall_cut=len(cut), stall_504=len(head_504))
    if wrong:
        raise Fail(f"stall: {len(wrong)} requests were neither cut nor 504: {wrong[:5]}")
    if not cut:
        raise Fail("stall: no response was cut mid-body")
    if off_time:
        raise LatencyFail(f"stall: {len(off_time)} cut/504 responses not at the deadline: {off_time[:5]}")
    after = window(rows, t_open + SETTLE_MS, t_end)
    refused = [r for r in after if r[3] == "" and r[2] == 503]
    p99 = percentile([r[1] for r in after], 99)
    sc.fig(stall_open_after_fault=fmt_s((t_open - t_fault) / 1000),
           stall_circuit_open_p99=fmt_ms(p99))
    if t_open - t_fault > ROUTE_TIMEOUT_MS + (LATE_MS + OPEN_LAG_MS) * s + 1000 / (RATE // 2) * 5:
        raise LatencyFail(f"stall: breaker opened {t_open - t_fault:.0f} ms after the fault")
    if not after or len(refused) != len(after) or p99 > REJECT_P99_MS * s:
        raise Fail(f"stall: after the open {len(refused)}/{len(after)} were 503, p99 {p99}")


if __name__ == "__main__":
    sys.exit(Scenario("slow_upstream", TIME_BOUND_S).run(scenario))
