#!/usr/bin/python3
"""reload_partition.py: SIGHUP reload under load while an upstream is partitioned.

World: as partition.py (chaos/netns.sh, prefix bwc-reload): the gateway (2 workers) and two
bw_load runs in PREFIX-gw; upstream A in PREFIX-up, upstream B in PREFIX-rx; routes /a -> A and
/b -> B; open loop at RATE_A and RATE_B, every request in a CSV.

Timeline: cut A's link (nft reject: refused at once), wait for breaker_open, rewrite the config
(a new route /c -> B and a longer timeout for B; A unchanged) and send SIGHUP to the supervisor,
wait for the `reload` event, heal A at HEAL_AFTER_OPEN_S after the open, wait for
breaker_closed, steady load, stop.

Pass criteria (timing bounds x2.5 on an ASan build):
  - the reload happens: a `reload` event (generation 2) within RELOAD_MAX_S of the SIGHUP, and
    /c answers 200 afterwards;
  - zero failed requests beyond the partition's own: every B request of the whole run succeeds;
    every A request that started after breaker_open + SETTLE_MS and before the heal is a 503
    (never a lost connection or another error, the reload included);
  - A's breaker is kept by the reload (its upstream did not change): no breaker event between
    the open and the half-open, and half-open comes open_duration after the open (-50 ms /
    +OPEN_SLACK_S), not earlier (a reset) or later;
  - after the heal, closed within open_duration + 1 s of it and within CLOSE_LAG_MS of the open
    period's end (the trials run at open_until), and every A request after it succeeds.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (Fail, Gateway, LatencyFail, Load, Scenario, Upstream, fmt_s,  # noqa: E402
                      need_root, need_tools, now_ms, ok, wait_for, window)

OPEN_DURATION_S = 4
HEAL_AFTER_OPEN_S = 2.5
RELOAD_AFTER_OPEN_S = 0.5
RATE_A = 200
RATE_B = 200
RELOAD_MAX_S = 3.0
OPEN_SLACK_S = 0.5
SETTLE_MS = 20
CLOSE_LAG_MS = 250  # closed after the open period's end (healed before it, load running)
TIME_BOUND_S = 60


def config(state_dir, b_timeout_ms, extra_route=False):
    route_c = """
  - name: c
    match: { path_prefix: /c }
    upstream: b""" if extra_route else ""
    return f"""
listen: ["127.0.0.1:8080"]
admin: {{ listen: "127.0.0.1:9901" }}
workers: 2
shutdown_timeout: 3s
state_dir: {state_dir}
upstreams:
  a:
    hosts: ["10.77.0.2:8000"]
    connect_timeout: 500ms
    timeout: 500ms
    outlier: {{ consecutive_failures: 0 }}
    breaker: {{ consecutive_failures: 5, open_duration: {OPEN_DURATION_S}s }}
  b:
    hosts: ["10.77.0.6:8000"]
    connect_timeout: 500ms
    timeout: {b_timeout_ms}ms
    outlier: {{ consecutive_failures: 0 }}
routes:
  - name: a
    match: {{ path_prefix: /a }}
    upstream: a
  - name: b
    match: {{ path_prefix: /b }}
    upstream: b{route_c}
"""


def scenario(sc):
    need_root()
    need_tools("ip", "nft")
    s = sc.scale
    net = sc.netns("bwc-reload")
    Upstream(sc, "a", listen="10.77.0.2:8000", netns=net.up)
    Upstream(sc, "b", listen="10.77.0.6:8000", netns=net.rx)
    g = Gateway(sc, config(sc.path("var"), 500), fixed_ports=True)
    total = 2 + HEAL_AFTER_OPEN_S + OPEN_DURATION_S + 6
    la = Load(sc, "http://127.0.0.1:8080/a/x", "load-a.csv", rate=RATE_A, duration=total * s,
              connections=100, timeout_ms=3000)
    lb = Load(sc, "http://127.0.0.1:8080/b/x", "load-b.csv", rate=RATE_B, duration=total * s,
              connections=50, timeout_ms=3000)
    time.sleep(1.5)

    t_cut = now_ms()
    net.cut("upstream", mode="reject")
    sc.mark("fault_injected", ts_ms=t_cut, what="cut reject")
    ev_open = g.wait_event("breaker_open", 5)
    t_open = ev_open["ts_ms"]
    wait_for(lambda: now_ms() >= t_open + RELOAD_AFTER_OPEN_S * 1000, 5, "the reload time")
    with open(g.config_path, "w") as f:
        f.write(config(g.state_dir, 1000, extra_route=True))
    t_hup = now_ms()
    os.kill(g.proc.pid, signal.SIGHUP)
    sc.mark("reload_sent", ts_ms=t_hup)
    ev_reload = g.wait_event("reload", RELOAD_MAX_S + 5)
    reload_s = (ev_reload["ts_ms"] - t_hup) / 1000
    st_c = g.get("/c/x")[0]
    wait_for(lambda: now_ms() >= t_open + HEAL_AFTER_OPEN_S * 1000, 10, "the heal time")
    t_heal = now_ms()
    net.heal("upstream")
    sc.mark("fault_healed", ts_ms=t_heal, what="heal")
    ev_half = g.wait_event("breaker_half_open", OPEN_DURATION_S + 5)
    ev_closed = g.wait_event("breaker_closed", OPEN_DURATION_S + 5)
    time.sleep(1.5)
    rows_a, rows_b = la.stop(), lb.stop()
    events = g.events()
    sc.plot(la.csv, "SIGHUP reload during a partition: upstream A", events)
    rc = g.stop()

    t_half, t_closed = ev_half["ts_ms"], ev_closed["ts_ms"]
    b_fail = [r for r in rows_b if not ok(r)]
    during = window(rows_a, t_open + SETTLE_MS, t_heal)
    a_bad = [r for r in during if not (r[3] == "" and r[2] == 503)]
    after = window(rows_a, t_closed + SETTLE_MS, now_ms())
    after_fail = [r for r in after if not ok(r)]
    between = [e["kind"] for e in events
               if e["kind"].startswith("breaker_") and t_open < e["ts_ms"] < t_half]
    half_after_open = (t_half - t_open) / 1000
    sc.fig(reload_after_hup=fmt_s(reload_s), generation=ev_reload["fields"].get("generation"),
           new_route_status=st_c, other_failed=f"{len(b_fail)}/{len(rows_b)}",
           partitioned_non_503=f"{len(a_bad)}/{len(during)}",
           half_open_after_open=fmt_s(half_after_open),
           closed_after_heal=fmt_s((t_closed - t_heal) / 1000), failed_after_close=len(after_fail))
    if ev_reload["fields"].get("generation") != 2 or st_c != 200:
        raise Fail(f"the reload did not take effect: {ev_reload}, /c answered {st_c}")
    if b_fail:
        raise Fail(f"{len(b_fail)} requests to the healthy upstream failed: {b_fail[:5]}")
    if not during or a_bad:
        raise Fail(f"{len(a_bad)} partitioned requests were not a 503: {a_bad[:5]}")
    if between or half_after_open < OPEN_DURATION_S - 0.05:
        raise Fail(f"the reload touched A's breaker: {between}, half-open after {half_after_open:.2f}s")
    if half_after_open > OPEN_DURATION_S + OPEN_SLACK_S * s:
        raise LatencyFail(f"half-open {half_after_open:.2f}s after the open")
    if reload_s > RELOAD_MAX_S * s:
        raise LatencyFail(f"reload took {reload_s:.2f}s")
    close_lag = t_closed - (t_open + OPEN_DURATION_S * 1000)
    sc.fig(closed_after_open_end=f"{close_lag:.0f}ms")
    if close_lag > CLOSE_LAG_MS * s:
        raise LatencyFail(f"closed {close_lag:.0f} ms after the open period ended")
    if (t_closed - t_heal) / 1000 > OPEN_DURATION_S + 1 + (s - 1):
        raise LatencyFail(f"closed {(t_closed - t_heal) / 1000:.2f}s after the heal")
    if not after or after_fail:
        raise Fail(f"A requests after the close: {len(after)}, failed: {after_fail[:5]}")
    if rc != 0:
        raise Fail(f"breakwater did not exit 0 (rc {rc})")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")


if __name__ == "__main__":
    sys.exit(Scenario("reload_partition", TIME_BOUND_S).run(scenario))
