#!/usr/bin/python3
"""worker_faults.py: kill -9 of a worker, SIGSTOP of a worker, a crash loop; all under load.

World (loopback, no root needed): bw_upstream (answers after UPSTREAM_DELAY_MS, so requests are
really in flight), breakwater with 2 workers, watchdog.stall_after STALL_AFTER_MS and
debug.fault_headers on; bw_load in open loop at RATE over CONNS keep-alive connections, every
request in a CSV.

Phase kill9: kill -9 of worker 1 (by the PID its "worker ready" log line gives).
  - every failed request was in flight at the kill (started before it, still running at it), and
    failed as a lost connection (status 0), never as an HTTP error; at most the requests that
    were in flight then fail (the dead worker's share of them, in fact);
  - a worker_crash event with signal 9 for that worker; a new worker ready within REPLACE_MAX_S;
  - every request that started KA_RACE_MS after the kill succeeded (the grace is the keep-alive
    race: a request the client sent on an idle connection of the dead worker just before the
    kernel's FIN reached it).
Phase stop: SIGSTOP of worker 0.
  - a worker_stall event for that PID within stall_after + STALL_EVENT_SLACK_S; the stopped
    process is gone and a new worker took its index;
  - the other worker kept serving: requests succeeded while the victim was stopped, and no gap
    between two successes is longer than stall_after + STALL_EVENT_SLACK_S;
  - failures are lost connections only, at most one per load connection (a connection held by
    the stopped worker loses its request, then reconnects to a live worker).
Phase crashloop (a fresh gateway): requests with `X-Breakwater-Fault: crash`, one after another,
until the crash_loop event ("over 5 in 60 s").
  - crash_loop after exactly 6 crashes, with a respawn delay; 6 worker_crash events (SEGV);
  - the other worker kept serving: no gap between successes longer than MAX_GAP_S, failures only
    lost connections, at most CONNS per crash; both workers ready again after the back-off.
Timing bounds x2.5 on an ASan build.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (Fail, Gateway, LatencyFail, Load, Scenario, Upstream, fmt_s, http_request,  # noqa: E402
                      now_ms, ok, proc_state, wait_for, window)

STALL_AFTER_MS = 1000
UPSTREAM_DELAY_MS = 10
RATE = 300
CONNS = 32
REPLACE_MAX_S = 1.0
KA_RACE_MS = 20
STALL_EVENT_SLACK_S = 1.0
MAX_GAP_S = 1.0
CRASHES_FOR_LOOP = 6
TIME_BOUND_S = 90

LOST = ("reset", "closed", "error")


def config(upstream_addr):
    return f"""
workers: 2
watchdog: {{ stall_after: {STALL_AFTER_MS}ms }}
debug: {{ fault_headers: true }}
upstreams:
  u:
    hosts: ["{upstream_addr}"]
    timeout: 10s
    outlier: {{ consecutive_failures: 0 }}
routes:
  - name: main
    match: {{ path_prefix: / }}
    upstream: u
"""


def max_ok_gap(rows, t_from, t_to):
    """Longest time (ms) in [t_from, t_to] without a successful completion."""
    ends = sorted(r[0] + r[1] for r in rows if ok(r) and t_from <= r[0] + r[1] <= t_to)
    points = [t_from] + ends + [t_to]
    return max(b - a for a, b in zip(points, points[1:]))


def new_worker(g, index, old_pid, timeout):
    return wait_for(lambda: (g.worker_pids().get(index) not in (None, old_pid)
                             and g.worker_pids()[index]), timeout, f"a new worker {index}",
                    interval=0.005)


def check_lost_only(rows, label):
    bad = [r for r in rows if not ok(r) and not (r[2] == 0 and r[3] in LOST)]
    if bad:
        raise Fail(f"{label}: failures that are not lost connections: {bad[:5]}")


def phase_kill9(sc, g, rows_fn):
    s = sc.scale
    victim = g.worker_pids()[1]
    t_kill = now_ms()
    os.kill(victim, signal.SIGKILL)
    sc.mark("fault_injected", ts_ms=t_kill, what="kill -9 worker 1")
    new_pid = new_worker(g, 1, victim, 10 * s)
    replaced_s = (now_ms() - t_kill) / 1000
    ev = g.wait_event("worker_crash", 5)
    return t_kill, victim, new_pid, replaced_s, ev


def scenario(sc):
    s = sc.scale
    up = Upstream(sc, "u")
    g = Gateway(sc, config(up.addr))
    url = f"http://127.0.0.1:{g.port}/x?delay={UPSTREAM_DELAY_MS}"
    load = Load(sc, url, "load.csv", rate=RATE, duration=60 * s, connections=CONNS,
                timeout_ms=5000)
    time.sleep(1.5)

    # ---- kill -9 of a worker ----
    t_kill, victim, new_pid, replaced_s, ev = phase_kill9(sc, g, None)
    time.sleep(1.5)

    # ---- SIGSTOP of a worker ----
    victim2 = g.worker_pids()[0]
    t_stop = now_ms()
    os.kill(victim2, signal.SIGSTOP)
    sc.mark("fault_injected", ts_ms=t_stop, what="SIGSTOP worker 0")
    ev_stall = g.wait_event("worker_stall", STALL_AFTER_MS / 1000 + 5)
    t_stall = ev_stall["ts_ms"]
    new_pid2 = new_worker(g, 0, victim2, 10 * s)
    gone = wait_for(lambda: proc_state(victim2) in (None, "Z") or None, 5 * s,
                    "the stopped worker to be gone") is not None
    time.sleep(1.5)
    rows = load.stop()
    events = g.events()
    sc.plot(load.csv, "worker kill -9 and SIGSTOP under load", events)

    # kill9 verdict
    kill_rows = window(rows, t_kill - 10000, t_kill + 1000)
    failed = [r for r in kill_rows if not ok(r)]
    # in flight at the kill (bw_load's start times are whole ms: 2 ms of slack)
    inflight = [r for r in kill_rows if r[0] - 2 <= t_kill <= r[0] + r[1] + 2]
    late = [r for r in failed if r[0] > t_kill + KA_RACE_MS * s]
    sc.fig(kill9_failed=len(failed), kill9_inflight=len(inflight),
           kill9_replaced=fmt_s(replaced_s))
    f = ev["fields"]
    if f.get("signal") != 9 or ev.get("worker") != 1:
        raise Fail(f"kill9: unexpected worker_crash event {ev}")
    check_lost_only(kill_rows, "kill9")
    if late:
        raise Fail(f"kill9: {len(late)} requests that started after the kill failed: {late[:5]}")
    not_inflight = [r for r in failed if r[0] + r[1] + 2 < t_kill]
    if not_inflight or len(failed) > len(inflight) + 2:
        raise Fail(f"kill9: {len(failed)} failed, {len(inflight)} in flight at the kill; "
                   f"not in flight: {not_inflight[:5]}")
    if replaced_s > REPLACE_MAX_S * s:
        raise LatencyFail(f"kill9: worker replaced after {replaced_s:.2f}s")

    # stop verdict
    stall_s = (t_stall - t_stop) / 1000
    stop_rows = window(rows, t_stop - 1000, now_ms())
    stop_failed = [r for r in stop_rows if not ok(r)]
    served = [r for r in rows if ok(r) and t_stop + 50 < r[0] and r[0] + r[1] < t_stall]
    gap = max_ok_gap(rows, t_stop, t_stall + 500)
    sc.fig(stop_stall_event_after=fmt_s(stall_s), stop_served_meanwhile=len(served),
           stop_failed=len(stop_failed), stop_max_gap=f"{gap:.0f}ms")
    if ev_stall["fields"].get("pid") != victim2 or ev_stall.get("worker") != 0:
        raise Fail(f"stop: worker_stall is not about the stopped worker: {ev_stall}")
    if stall_s > STALL_AFTER_MS / 1000 + STALL_EVENT_SLACK_S * s:
        raise LatencyFail(f"stop: worker_stall {stall_s:.2f}s after SIGSTOP")
    if stall_s < STALL_AFTER_MS / 1000 - 0.05:
        raise Fail(f"stop: worker_stall after {stall_s:.2f}s, before stall_after")
    if not gone or new_pid2 == victim2:
        raise Fail("stop: the stopped worker was not replaced")
    if not served:
        raise Fail("stop: nothing was served while a worker was stopped")
    check_lost_only(stop_rows, "stop")
    if len(stop_failed) > CONNS:
        raise Fail(f"stop: {len(stop_failed)} failed, more than one per connection ({CONNS})")
    if gap > (STALL_AFTER_MS / 1000 + STALL_EVENT_SLACK_S * s) * 1000:
        raise LatencyFail(f"stop: {gap:.0f} ms without a successful request")
    if g.stop() != 0:
        raise Fail(f"breakwater did not exit 0:\n{g.logs()[-2000:]}")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")

    # ---- crash loop (a fresh gateway: the loop state lasts a minute) ----
    g = Gateway(sc, config(up.addr), tag="gw-crashloop", state_dir=sc.path("var-crashloop"))
    load = Load(sc, f"http://127.0.0.1:{g.port}/x?delay={UPSTREAM_DELAY_MS}", "crashloop.csv",
                rate=RATE, duration=60 * s, connections=CONNS, timeout_ms=5000)
    time.sleep(1.0)
    t0 = now_ms()
    crashes = 0
    loop_ev = None
    while crashes < CRASHES_FOR_LOOP + 3:
        try:
            r = http_request("127.0.0.1", g.port, path=f"/boom{crashes}",
                             headers={"X-Breakwater-Fault": "crash"}, timeout=20)
            raise Fail(f"crashloop: a crash request was answered: {r[0]}")
        except OSError:
            crashes += 1
        sc.mark("fault_injected", what=f"crash {crashes}")
        found = g.events("crash_loop")
        if found:
            loop_ev = found[0]
            break
        # the crash_loop event may take a moment: look again before crashing more
        if crashes >= CRASHES_FOR_LOOP:
            try:
                loop_ev = g.wait_event("crash_loop", 1)
                break
            except Fail:
                pass
    if loop_ev is None:
        raise Fail(f"crashloop: no crash_loop event after {crashes} crashes")
    t_loop = loop_ev["ts_ms"]
    wait_for(lambda: (g.admin("/readyz")[0] == 200
                      and g.admin("/readyz")[1].get("workers_ready") == 2),
             30 * s, "both workers ready after the back-off", interval=0.02)
    t_back = now_ms()
    time.sleep(0.5)
    rows = load.stop()
    events = g.events()
    sc.plot(load.csv, "crash loop under load", events)
    n_crash = len([e for e in events if e["kind"] == "worker_crash"])
    failed = [r for r in rows if not ok(r)]
    gap = max_ok_gap(rows, t0, t_back)
    sc.fig(crashloop_crashes=crashes, crashloop_respawn_delay_ms=loop_ev["fields"].get(
        "respawn_delay_ms"), crashloop_failed=len(failed), crashloop_max_gap=f"{gap:.0f}ms",
        crashloop_back_after=fmt_s((t_back - t_loop) / 1000))
    if crashes != CRASHES_FOR_LOOP or n_crash != CRASHES_FOR_LOOP:
        raise Fail(f"crashloop: crash_loop after {crashes} crashes ({n_crash} worker_crash events)")
    if not loop_ev["fields"].get("respawn_delay_ms"):
        raise Fail(f"crashloop: no respawn delay in {loop_ev}")
    check_lost_only(rows, "crashloop")
    if len(failed) > crashes * CONNS:
        raise Fail(f"crashloop: {len(failed)} failed requests")
    if gap > MAX_GAP_S * s * 1000:
        raise LatencyFail(f"crashloop: {gap:.0f} ms without a successful request")
    if g.stop() != 0:
        raise Fail(f"breakwater did not exit 0:\n{g.logs()[-2000:]}")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")


if __name__ == "__main__":
    sys.exit(Scenario("worker_faults", TIME_BOUND_S).run(scenario))
