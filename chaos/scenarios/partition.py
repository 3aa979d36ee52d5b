#!/usr/bin/python3
"""partition.py --mode drop|reject|down: an upstream cut off by the network, then healed.

World (chaos/netns.sh, prefix bwc-<mode>): the gateway (2 workers) and both load clients in
PREFIX-gw; upstream A (bw_upstream) in PREFIX-up at 10.77.0.2:8000; upstream B in PREFIX-rx at
10.77.0.6:8000, over its own veth, so cutting A's link leaves B's path alone. Routes /a -> A,
/b -> B. Two bw_load runs (open loop, every request in a CSV): A at RATE_A, B at RATE_B.

Timeline: warm-up, baseline, cut A's link (nft drop, nft reject with TCP reset, or the gateway's
end of the veth set down), wait for breaker_open, keep the cut HEAL_AFTER_OPEN_S, heal, wait for
breaker_half_open and breaker_closed, a little steady load, stop.

Pass criteria (constants below; timing bounds x2.5 on an ASan build):
  1. The breaker opens by consecutive failures: at most OPEN_LAG_MS after the 5th failed request
     completed (as the client saw it), and at most one request deadline (max of connect_timeout
     and the route timeout: a new connection meets the connect timeout, a pooled one the
     deadline) + OPEN_LAG_MS after the cut.
  2. Every A request that started between breaker_open + SETTLE_MS and the heal is answered 503
     (the gateway's circuit_open: checked on a probe's body and reason header, and the 503 count
     must not exceed the breaker_rejected counter's increase), p99 < REJECT_P99_MS.
  3. B (the other upstream) has no failure during the partition, and its p99 is unaffected
     (+-20%): p99 over the B requests that started between the cut and breaker_closed (window
     length L, about 3.1-3.6 s) against p99 over those that started in the L just before the
     cut. Both are measured the same way: same length, same open-loop load at RATE_B (>= 1500
     samples each). It fails when the rise beyond 20% is larger than what the two p99s can
     resolve: p99_during > 1.2 x p99_before + 1.645 x sqrt(se_during^2 + (1.2 x se_before)^2),
     where se is a p99's standard error from its own samples (distribution-free: the spread of
     the order statistics around rank 0.99 n, a 95% interval / 3.92). That term is the only
     absolute allowance, and it is the measurement's resolution, not a chosen number: with
     ~1500-1800 samples a p99 is only known to within about its p98.5-p99.5 band, 1-6 ms wide
     on B's tail in the runs here, so +20% of a 2-4 ms p99 (0.4-0.8 ms) cannot be resolved by
     itself (a higher B rate would narrow the band, at the cost of CPU on this 2-core machine;
     the term added 1.2-3.2 ms to the 20% in the README's runs). The previous rule (+20% "or
     +5 ms") never used its 20%: with B's p99 at 1-5 ms it allowed +100% to +500%. Only a rise
     fails: a faster B during the partition is not harm (A's requests are refused by the
     breaker instead of proxied, so the gateway does less work); the signed change is
     reported. Noise and sensitivity, measured with this world and no cut (chaos/README.md
     "The other upstream's p99"): in quiet periods the rule failed 5 of 43 adjacent no-fault
     window pairs and caught a doubling of the second window's latencies in 31 of 43; with
     other test suites saturating both cores, 50-200 ms CPU stalls catch ~1.5% of a window's
     requests and so set its p99, and it failed 19 of 89 pairs. A miss is therefore a
     LatencyFail (run again once), and the line shows both p99s, the bound and the sample
     counts. The judgement does not scale with ASan: the bound comes from the samples.
  4. After the heal: breaker_half_open no earlier than open_duration after breaker_open (-50 ms),
     breaker_closed at most open_duration + 1 s after the heal and at most CLOSE_LAG_MS after the
     open period's end (the heal comes before it and the load runs, so the trials are the first
     requests after open_until), and every A request that started after breaker_closed +
     SETTLE_MS succeeds.
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (Fail, Gateway, LatencyFail, Load, Scenario, Upstream, fmt_ms, fmt_s,  # noqa: E402
                      need_root, need_tools, now_ms, ok, percentile, wait_for, window)

CONNECT_TIMEOUT_MS = 500
ROUTE_TIMEOUT_MS = 500
OPEN_DURATION_S = 3
HEAL_AFTER_OPEN_S = 2.0
RATE_A = 200  # req/s to the partitioned upstream
RATE_B = 500  # req/s to the other upstream (samples for its p99, criterion 3)
WARMUP_S = 1.0
BASELINE_S = 4.5  # >= the partition window (cut -> closed, about 3.1-3.7 s): see criterion 3
OPEN_LAG_MS = 150  # breaker_open after the 5th failure the client saw
SETTLE_MS = 20  # requests starting this soon after a transition are not judged
REJECT_P99_MS = 10.0
OTHER_P99_REL = 0.20
OTHER_P99_Z = 1.645  # one-sided 95%: the rise beyond 20% must exceed the p99s' sampling error
CLOSE_AFTER_HEAL_S = OPEN_DURATION_S + 1
CLOSE_LAG_MS = 250  # closed after the open period's end (healed before it, load running)
TIME_BOUND_S = 60

CONFIG = f"""
listen: ["127.0.0.1:8080"]
admin: {{ listen: "127.0.0.1:9901" }}
workers: 2
upstreams:
  a:
    hosts: ["10.77.0.2:8000"]
    connect_timeout: {CONNECT_TIMEOUT_MS}ms
    timeout: {ROUTE_TIMEOUT_MS}ms
    outlier: {{ consecutive_failures: 0 }}
    breaker: {{ consecutive_failures: 5, open_duration: {OPEN_DURATION_S}s, half_open_requests: 2 }}
  b:
    hosts: ["10.77.0.6:8000"]
    connect_timeout: {CONNECT_TIMEOUT_MS}ms
    timeout: {ROUTE_TIMEOUT_MS}ms
    outlier: {{ consecutive_failures: 0 }}
routes:
  - name: a
    match: {{ path_prefix: /a }}
    upstream: a
  - name: b
    match: {{ path_prefix: /b }}
    upstream: b
"""


def breaker_rejected(g, name):
    st, body = g.admin("/api/v1/upstreams")
    for u in body["upstreams"]:
        if u["name"] == name:
            return u["counters"]["breaker_rejected"]
    return None


def p99_se(values):
    """(p99, its standard error) of a sample, distribution-free: the p99 is the nearest-rank
    order statistic, and rank 0.99 n +- 1.96 sqrt(n 0.99 0.01) bounds a 95% confidence interval
    for it; se = the interval's width / (2 x 1.96)."""
    v = sorted(values)
    n = len(v)
    half = 1.96 * math.sqrt(n * 0.99 * 0.01)
    lo = v[max(0, math.floor(n * 0.99 - half) - 1)]
    hi = v[min(n - 1, math.ceil(n * 0.99 + half) - 1)]
    return percentile(v, 99), (hi - lo) / (2 * 1.96)


def other_p99(rows_b, t_cut, length_ms):
    """Criterion 3's measurement: ((p99, n) before, (p99, n) during, the largest p99 allowed
    during). Before: B requests that started in [t_cut - length, t_cut); during: in [t_cut,
    t_cut + length). Same length, same load: the two p99s are measured the same way."""
    before = [r[1] for r in window(rows_b, t_cut - length_ms, t_cut)]
    during = [r[1] for r in window(rows_b, t_cut, t_cut + length_ms)]
    if len(before) < 100 or len(during) < 100:
        raise Fail(f"too few B requests to compare ({len(before)} before the cut, "
                   f"{len(during)} after)")
    (p_before, se_before), (p_during, se_during) = p99_se(before), p99_se(during)
    allowed = (p_before * (1 + OTHER_P99_REL)
               + OTHER_P99_Z * math.sqrt(se_during ** 2 + ((1 + OTHER_P99_REL) * se_before) ** 2))
    return (p_before, len(before)), (p_during, len(during)), allowed


def scenario(sc, mode):
    need_root()
    need_tools("ip", "nft")
    s = sc.scale
    net = sc.netns(f"bwc-{mode}")
    Upstream(sc, "a", listen="10.77.0.2:8000", netns=net.up)
    Upstream(sc, "b", listen="10.77.0.6:8000", netns=net.rx)
    g = Gateway(sc, CONFIG, fixed_ports=True)
    total = WARMUP_S + BASELINE_S + 1 + HEAL_AFTER_OPEN_S + OPEN_DURATION_S + 6
    la = Load(sc, "http://127.0.0.1:8080/a/x", "load-a.csv", rate=RATE_A, duration=total * s,
              connections=200, timeout_ms=3000)
    lb = Load(sc, "http://127.0.0.1:8080/b/x", "load-b.csv", rate=RATE_B, duration=total * s,
              connections=20, timeout_ms=3000)
    time.sleep(WARMUP_S + BASELINE_S)

    t_cut = now_ms()
    net.cut("upstream", mode=mode)
    sc.mark("fault_injected", ts_ms=t_cut, what=f"cut {mode}")
    ev_open = g.wait_event("breaker_open", 5)
    t_open = ev_open["ts_ms"]
    rejected0 = breaker_rejected(g, "a")
    time.sleep(0.3)
    st, hdrs, body = g.get("/a/probe")
    probe = (st, hdrs.get("x-breakwater-reason"), body[:200])
    wait_for(lambda: now_ms() >= t_open + HEAL_AFTER_OPEN_S * 1000, 10, "the heal time")
    t_heal = now_ms()
    net.heal("upstream")
    sc.mark("fault_healed", ts_ms=t_heal, what="heal")
    rejected1 = breaker_rejected(g, "a")
    ev_half = g.wait_event("breaker_half_open", OPEN_DURATION_S + 5)
    ev_closed = g.wait_event("breaker_closed", OPEN_DURATION_S + 5)
    t_half, t_closed = ev_half["ts_ms"], ev_closed["ts_ms"]
    time.sleep(1.5)
    rows_a, rows_b = la.stop(), lb.stop()
    events = g.events()
    sc.plot(la.csv, f"partition {mode}: upstream A (its link cut, breaker a)", events)
    length = min(t_closed - t_cut, BASELINE_S * 1000)  # criterion 3's windows
    sc.plot(lb.csv, f"partition {mode}: upstream B (the other link; criterion 3)",
            events + [{"ts_ms": t_cut - length, "kind": "p99_window", "fields": {"what": "before"}},
                      {"ts_ms": t_cut + length, "kind": "p99_window", "fields": {"what": "end"}}])
    if g.stop() != 0:
        raise Fail(f"breakwater did not exit 0:\n{g.logs()[-2000:]}")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")

    # 1. time to open
    fails = sorted((r[0] + r[1], r) for r in rows_a if r[0] >= t_cut - 1000 and not ok(r))
    if len(fails) < 5:
        raise Fail(f"only {len(fails)} failed A requests before the breaker opened")
    t5 = fails[4][0]
    failures_before_open = sum(1 for t, r in fails if r[0] < t_open)
    open_after_cut = (t_open - t_cut) / 1000
    open_vs_5th = t_open - t5
    sc.fig(open_after_cut=fmt_s(open_after_cut), open_vs_5th_failure=f"{open_vs_5th:+.0f}ms",
           failed_before_open=failures_before_open)
    if ev_open["fields"].get("reason") != "consecutive_failures":
        raise Fail(f"breaker opened for {ev_open['fields'].get('reason')}, not consecutive_failures")
    if open_vs_5th > OPEN_LAG_MS * s:
        raise LatencyFail(f"breaker opened {open_vs_5th:.0f} ms after the 5th failure (max {OPEN_LAG_MS * s:.0f})")
    bound = (max(CONNECT_TIMEOUT_MS, ROUTE_TIMEOUT_MS) + OPEN_LAG_MS * s) / 1000
    if open_after_cut > bound:
        raise LatencyFail(f"breaker opened {open_after_cut:.2f}s after the cut (max {bound:.2f}s)")

    # 2. open: everything refused fast
    during = window(rows_a, t_open + SETTLE_MS, t_heal)
    refused = [r for r in during if r[3] == "" and r[2] == 503]
    p99 = percentile([r[1] for r in during], 99)
    share = 100.0 * len(refused) / len(during) if during else 0.0
    sc.fig(circuit_open=f"{share:.1f}%({len(refused)}/{len(during)})", circuit_open_p99=fmt_ms(p99))
    if probe[0] != 503 or probe[1] != "breaker" or b'"circuit_open"' not in probe[2]:
        raise Fail(f"a request while open was not a circuit_open refusal: {probe}")
    if len(during) < RATE_A * HEAL_AFTER_OPEN_S * 0.5:
        raise Fail(f"only {len(during)} A requests while open: the load did not run")
    if len(refused) != len(during):
        bad = [r for r in during if r not in refused][:5]
        raise Fail(f"{len(during) - len(refused)} A requests while open were not 503: {bad}")
    if rejected1 - rejected0 < len(window(rows_a, t_open + 300, t_heal - 300)):
        raise Fail("fewer breaker rejections counted by the gateway than 503s seen")
    if p99 > REJECT_P99_MS * s:
        raise LatencyFail(f"circuit_open p99 {p99:.1f} ms >= {REJECT_P99_MS * s:.0f} ms")

    # 3. the other upstream: no failure from the cut to the close, and its p99 in that window
    # against its p99 in an equally long window just before the cut
    b_fail = [r for r in window(rows_b, t_cut, t_closed) if not ok(r)]
    base, part, allowed = other_p99(rows_b, t_cut, length)
    p_base, p_part = base[0], part[0]
    delta = 100.0 * (p_part - p_base) / p_base if p_base else 0.0
    sc.fig(other_p99=f"{p_base:.2f}->{p_part:.2f}ms", other_p99_delta=f"{delta:+.0f}%",
           other_p99_max=f"{allowed:.2f}ms", other_samples=f"{base[1]}/{part[1]}",
           other_failed=len(b_fail))
    if b_fail:
        raise Fail(f"{len(b_fail)} requests to the other upstream failed: {b_fail[:5]}")
    if min(base[1], part[1]) < RATE_B * length / 1000 * 0.8:
        raise Fail(f"too few B requests to judge its p99 ({base[1]} before, {part[1]} during)")
    if p_part > allowed:
        raise LatencyFail(f"other upstream's p99 went {p_base:.2f} -> {p_part:.2f} ms over "
                          f"{length / 1000:.2f} s windows (max {allowed:.2f} ms)")

    # 4. heal
    half_after_open = (t_half - t_open) / 1000
    closed_after_heal = (t_closed - t_heal) / 1000
    after = window(rows_a, t_closed + SETTLE_MS, now_ms())
    after_fail = [r for r in after if not ok(r)]
    sc.fig(half_open_after_open=fmt_s(half_after_open), closed_after_heal=fmt_s(closed_after_heal),
           failed_after_close=len(after_fail))
    if half_after_open < OPEN_DURATION_S - 0.05:
        raise Fail(f"half-open {half_after_open:.2f}s after open, before open_duration")
    close_lag = t_closed - (t_open + OPEN_DURATION_S * 1000)
    sc.fig(closed_after_open_end=f"{close_lag:.0f}ms")
    if close_lag > CLOSE_LAG_MS * s:
        # healed before the open period ended and under load: the trials run at open_until
        raise LatencyFail(f"closed {close_lag:.0f} ms after the open period ended")
    if closed_after_heal > CLOSE_AFTER_HEAL_S + (s - 1):
        raise LatencyFail(f"closed {closed_after_heal:.2f}s after the heal (max {CLOSE_AFTER_HEAL_S}s)")
    if not after or after_fail:
        raise Fail(f"A requests after the close: {len(after)}, failed: {after_fail[:5]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("drop", "reject", "down"), required=True)
    mode = ap.parse_args().mode
    name = {"drop": "partition_drop", "reject": "partition_reject", "down": "link_down"}[mode]
    # Two more runs on a latency miss (not on a correctness one): its p99 criteria (circuit_open
    # < 10 ms, the other upstream's p99) are judged on a 2-core VM that other work shares, where a
    # 50-200 ms CPU stall lands in one run in a few (chaos/README.md, "The other upstream's p99").
    return Scenario(name, TIME_BOUND_S).run(lambda sc: scenario(sc, mode), retries=2)


if __name__ == "__main__":
    sys.exit(main())
