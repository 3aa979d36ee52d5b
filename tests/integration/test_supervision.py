"""Supervised workers and guarded handlers (issue 3), against the real binary under steady load.

A worker killed by `X-Breakwater-Fault: crash` or by `kill -9`, or stalled by `stall=MS` past
`watchdog.stall_after`, is replaced while the other worker keeps serving; only the requests in
flight on the dead worker fail; each death leaves an event (signal, route, request id, backtrace)
in GET /api/v1/events and a count in breakwater_worker_restarts_total. A crash loop backs off and
raises `crash_loop`. Fault injection (headers and route `fault:`), the events API's paging, and
SIGTERM with slow requests in flight are covered too.

Every request of the background load is logged (loadclient.py), so failures around a death are
counted exactly and checked one by one. Which worker process answered a request is read from the
gateway-generated X-Request-Id: its first 16 hex digits are random per worker process. Timing
targets from the issue (crash -> replacement serving p99 < 100 ms) are printed, not asserted:
the assertions use generous bounds because this runs on a small, noisy machine.
"""

import http.client
import os
import signal
import time

import pytest

from conftest import (children, events, metric, readyz, request, wait_events, wait_for,
                      worker_pids)
from loadclient import BROKEN_PIPE, DISCONNECTED, INCOMPLETE, RESET, LoadClient

LOST = (RESET, DISCONNECTED, BROKEN_PIPE, INCOMPLETE)  # how a request dies with its worker


@pytest.fixture
def gateway(strict_gateway):
    """Every gateway a test here starts must stop with exit 0 (conftest's strict_gateway)."""
    return strict_gateway


# ---- helpers ----------------------------------------------------------------------------------


def config(upstream_addr, workers=2, fault_headers=True, stall_after="10s"):
    return f"""
workers: {workers}
watchdog:
  stall_after: {stall_after}
debug:
  fault_headers: {"true" if fault_headers else "false"}
upstreams:
  u:
    hosts: ["{upstream_addr}"]
    timeout: 30s
routes:
  - name: main
    match:
      path_prefix: /
    upstream: u
"""


class OneConnection:
    """A keep-alive connection: first a normal request tells which worker holds it (the tag of
    the generated request id), then a fault request is sent on that same connection."""

    def __init__(self, port, timeout=10):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", "/whoami")
        r = self.conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        self.tag = r.getheader("X-Request-Id")[:16]

    def send(self, path, headers):
        """Returns (status or exception, monotonic time the outcome was known)."""
        try:
            self.conn.request("GET", path, headers=headers)
            r = self.conn.getresponse()
            body = r.read()
            result = (r.status, body)
        except Exception as e:  # noqa: BLE001
            result = e
        t = time.monotonic()
        self.conn.close()
        return result, t


def wait_both_workers_seen(lc, timeout=10):
    """Both workers appear in the load log (the load really is spread over them)."""
    return wait_for(lambda: len({e.worker_tag for e in lc.successes()}) >= 2 and
                    {e.worker_tag for e in lc.successes()}, timeout, "answers from both workers")


def wait_replacement(g, victim_pid, timeout=10):
    """Polls quickly until the victim is gone, a new worker runs and /readyz says 2 ready.
    Returns (monotonic time, the new worker pid)."""
    before = children(g.proc.pid)

    def replaced():
        now = children(g.proc.pid)
        if victim_pid in now:
            return None
        r = readyz(g)
        if not r or r["workers_ready"] != 2:
            return None
        return now

    now = wait_for(replaced, timeout, "the replacement worker and /readyz 200", interval=0.005)
    t = time.monotonic()
    new = now - before - {victim_pid}
    # the replacement may already have been in `before` if it started very fast
    new = new or now - set(worker_pids(g).values()).difference(now) - {victim_pid}
    return t, new


def check_failures_only_on_victim(lc, victim_tag, t_dead, max_failures):
    """Every failure in the load log was in flight on the dead worker: a lost connection (never an
    HTTP error), either on a reused connection whose previous answer came from the victim, or on
    a fresh connection opened before the death (one the victim had accepted)."""
    by_conn = {}
    for e in lc.entries():
        by_conn.setdefault(e.conn, []).append(e)
    failures = lc.failures()
    for f in failures:
        assert f.kind in LOST, f"not a request lost with its worker: {f}"
        earlier = [e for e in by_conn[f.conn] if e.conn_req < f.conn_req and e.ok]
        if earlier:
            assert earlier[-1].worker_tag == victim_tag, \
                f"failed on another worker's connection: {f}"
        else:
            assert f.start <= t_dead, f"a connection opened after the death failed: {f}"
    assert len(failures) <= max_failures, failures
    return failures


def first_answer_from_new_worker(lc, tags_before, t):
    """The first successful request that started after t and was answered by a worker process
    not seen before t."""
    new = [e for e in lc.successes() if e.start >= t and e.worker_tag not in tags_before]
    return min(new, key=lambda e: e.end) if new else None


# ---- crash ------------------------------------------------------------------------------------


def test_crash_fault_under_load_replaces_the_worker_and_records_the_crash(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr))
    threads = 4
    with LoadClient(g.port, path="/steady", threads=threads, duration=60,
                    reconnect_every=5) as lc:
        tags_before = wait_both_workers_seen(lc)
        crasher = OneConnection(g.port)
        victim_tag = crasher.tag
        pids = worker_pids(g)
        rid = "crash-test-0001"
        t_sent = time.monotonic()
        result, t_dead = crasher.send("/boom", {"X-Breakwater-Fault": "crash",
                                                "X-Request-Id": rid})
        assert isinstance(result, Exception), f"the crashing request was answered: {result}"
        ev = wait_events(g, "worker_crash")[0]
        victim_pid = ev["fields"]["pid"]
        t_ready, new_pids = wait_replacement(g, victim_pid)
        # keep the load going until the replacement has answered some of it
        wait_for(lambda: first_answer_from_new_worker(lc, tags_before, t_sent), 10,
                 "an answer from the replacement worker")
        time.sleep(0.3)  # a little steady load on the new set of workers
    summary = lc.summary()

    f = ev["fields"]
    assert f["signal"] == 11 and f["signal_name"] == "SEGV", f
    assert f["route"] == "main", f
    assert f["request_id"] == rid, f
    bt = f.get("backtrace")
    assert isinstance(bt, list) and len(bt) >= 3 and all(isinstance(x, str) and x for x in bt), f
    assert any("breakwater" in x for x in bt), bt
    assert victim_pid in pids.values(), (victim_pid, pids)
    assert ev["worker"] == f["worker"] and pids[ev["worker"]] == victim_pid
    new_pid = worker_pids(g)[ev["worker"]]
    assert new_pid != victim_pid and new_pid in new_pids | children(g.proc.pid)
    assert victim_pid not in children(g.proc.pid)
    assert readyz(g)["workers_ready"] == 2
    assert metric(g, 'breakwater_worker_restarts_total{reason="crash"}') == 1
    assert metric(g, 'breakwater_worker_restarts_total{reason="stall"}') == 0
    assert len(events(g, "worker_crash")) == 1

    failures = check_failures_only_on_victim(lc, victim_tag, t_dead, max_failures=threads)
    first_new = first_answer_from_new_worker(lc, tags_before, t_sent)
    serving_ms = (first_new.end - t_dead) * 1000
    event_to_serving_ms = (first_new.wall_end - ev["ts_ms"] / 1000) * 1000
    ready_ms = (t_ready - t_dead) * 1000
    print(f"\ncrash: {len(failures)} failed of {summary['total']} load requests "
          f"({summary['by_kind']}); crash seen by client -> replacement answered "
          f"{serving_ms:.1f} ms (event -> answered {event_to_serving_ms:.1f} ms, "
          f"-> /readyz 2 ready {ready_ms:.1f} ms); load {summary['rps']} req/s")
    assert serving_ms < 3000, serving_ms  # generous: ASan fork/exit on a busy 2-core box
    assert lc.ok_after(t_dead), "no successful request after the crash"


def test_kill_9_of_a_worker_under_load_is_replaced_with_a_signal_9_event(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr))
    threads = 4
    with LoadClient(g.port, path="/steady", threads=threads, duration=60,
                    reconnect_every=5) as lc:
        tags_before = wait_both_workers_seen(lc)
        pids = worker_pids(g)
        assert set(pids) == {0, 1}, pids
        victim_pid = pids[1]
        os.kill(victim_pid, signal.SIGKILL)
        t_kill = time.monotonic()
        t_ready, new_pids = wait_replacement(g, victim_pid)
        ev = wait_events(g, "worker_crash")[0]
        wait_for(lambda: first_answer_from_new_worker(lc, tags_before, t_kill), 10,
                 "an answer from the replacement worker")
        time.sleep(0.3)
    summary = lc.summary()

    f = ev["fields"]
    assert ev["worker"] == 1 and f["worker"] == 1, ev
    assert f["signal"] == 9 and f["signal_name"] == "KILL", f
    assert not f.get("backtrace"), f"a backtrace for an outside kill: {f}"
    assert "request_id" not in f and "route" not in f, f
    assert worker_pids(g)[1] != victim_pid and worker_pids(g)[0] == pids[0]
    assert victim_pid not in children(g.proc.pid)
    assert metric(g, 'breakwater_worker_restarts_total{reason="crash"}') == 1

    tags_after = {e.worker_tag for e in lc.successes() if e.start > t_kill + 0.05}
    gone = tags_before - tags_after
    assert len(gone) == 1, (tags_before, tags_after)
    failures = check_failures_only_on_victim(lc, gone.pop(), t_kill + 0.05, max_failures=threads)
    first_new = first_answer_from_new_worker(lc, tags_before, t_kill)
    serving_ms = (first_new.end - t_kill) * 1000
    print(f"\nkill -9: {len(failures)} failed of {summary['total']} load requests "
          f"({summary['by_kind']}); kill -> replacement answered {serving_ms:.1f} ms, "
          f"-> /readyz 2 ready {(t_ready - t_kill) * 1000:.1f} ms; load {summary['rps']} req/s")
    assert serving_ms < 3000, serving_ms  # generous: ASan fork/exit on a busy 2-core box


# ---- stall ------------------------------------------------------------------------------------


def test_stalled_worker_is_killed_after_stall_after_and_the_other_keeps_serving(
        gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr, stall_after="500ms"))
    # a fresh connection per request: while one worker is blocked, every new connection is taken
    # by the other, so only requests already on the stalled worker can wait for it
    threads = 6
    with LoadClient(g.port, path="/steady", threads=threads, duration=60, timeout=10,
                    reconnect_every=1) as lc:
        wait_both_workers_seen(lc)
        staller = OneConnection(g.port)
        pids = worker_pids(g)
        t_sent = time.monotonic()
        result, t_dead = staller.send("/stall", {"X-Breakwater-Fault": "stall=3000",
                                                 "X-Request-Id": "stall-test-1"})
        stalled_for = t_dead - t_sent
        assert isinstance(result, Exception), f"the stalled request was answered: {result}"
        ev = wait_events(g, "worker_stall")[0]
        victim_pid = ev["fields"]["pid"]
        t_ready, _ = wait_replacement(g, victim_pid)
        time.sleep(0.3)
    summary = lc.summary()

    f = ev["fields"]
    assert victim_pid == pids[ev["worker"]], (ev, pids)
    assert f["stall_after_ms"] == 500 and f["blocked_ms"] >= 500, f
    assert worker_pids(g)[ev["worker"]] != victim_pid
    assert victim_pid not in children(g.proc.pid)
    assert metric(g, 'breakwater_worker_restarts_total{reason="stall"}') == 1
    assert metric(g, 'breakwater_worker_restarts_total{reason="crash"}') == 0
    assert not events(g, "worker_crash"), "a stall kill was reported as a crash"
    # killed well before the 3 s stall would have ended on its own
    assert stalled_for < 2.5, stalled_for
    assert t_ready - t_sent < 2.8, t_ready - t_sent
    # the other worker kept serving while this one was blocked
    during = [e for e in lc.successes() if t_sent + 0.05 < e.start and e.end < t_dead]
    assert during, "nothing was served while one worker was stalled"
    assert all(e.worker_tag != staller.tag for e in during)
    failures = check_failures_only_on_victim(lc, staller.tag, t_dead, max_failures=threads)
    print(f"\nstall: request cut after {stalled_for * 1000:.0f} ms (stall_after 500 ms), worker "
          f"ready again {(t_ready - t_sent) * 1000:.0f} ms after the stall began; "
          f"{len(during)} requests served meanwhile by the other worker; {len(failures)} failed "
          f"of {summary['total']} ({summary['by_kind']})")


def test_a_stall_shorter_than_stall_after_is_left_alone(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr, stall_after="1s"))
    pids = worker_pids(g)
    t0 = time.monotonic()
    r = g.get("/short", headers={"X-Breakwater-Fault": "stall=300"})
    took = time.monotonic() - t0
    assert r.status == 200, r  # after the stall the request goes on to the upstream
    assert 0.3 <= took < 3.0, took
    time.sleep(0.3)  # a few more watchdog ticks after the stall ended
    assert worker_pids(g) == pids and set(pids.values()) <= children(g.proc.pid)
    assert metric(g, 'breakwater_worker_restarts_total{reason="stall"}') == 0
    assert not events(g, "worker_stall")


# ---- crash loop -------------------------------------------------------------------------------


def crash_n(g, n):
    """Sends n crash requests one after the other (each on a new connection); returns the times
    at which each was seen to fail."""
    times = []
    for i in range(n):
        try:
            r = request(g.port, path="/boom", headers={"X-Breakwater-Fault": "crash",
                                                       "X-Request-Id": f"loop-{i}"}, timeout=20)
            raise AssertionError(f"crash request {i} was answered: {r}")
        except (OSError, http.client.HTTPException):
            times.append(time.monotonic())
    return times


def test_crash_loop_backs_off_raises_crash_loop_and_the_other_worker_keeps_serving(
        gateway, upstreams):
    """Six crashes within 60 s ("over 5"): the sixth worker death enters the crash loop. Its
    respawn is delayed (500 ms) while the other worker serves the load alone."""
    u = upstreams("u")
    g = gateway(config(u.addr))
    threads = 4
    with LoadClient(g.port, path="/steady", threads=threads, duration=60,
                    reconnect_every=5) as lc:
        wait_both_workers_seen(lc)
        t0 = time.monotonic()
        times = crash_n(g, 6)
        t_loop = times[-1]
        # the delayed worker: /readyz says 1 of 2 until the backoff is over (the other worker
        # may itself be restarting from the previous crash for a few ms: wait for it)
        def one_ready():
            body = request(g.admin_port, path="/readyz").json()
            return body if body["workers_ready"] == 1 else None

        not_ready = wait_for(one_ready, 0.4, "one of two workers ready", interval=0.005)
        t_back = wait_for(lambda: readyz(g) and time.monotonic(), 15,
                          "the delayed worker to come back", interval=0.005)
        ev = wait_events(g, "crash_loop")[0]
        gauge = metric(g, "breakwater_crash_loop")
        time.sleep(0.3)
    summary = lc.summary()

    crashes = events(g, "worker_crash")
    assert len(crashes) == 6, [e["fields"].get("request_id") for e in crashes]
    assert {e["fields"]["request_id"] for e in crashes} == {f"loop-{i}" for i in range(6)}
    assert len(events(g, "crash_loop")) == 1
    assert ev["fields"]["crashes"] == 6 and ev["fields"]["respawn_delay_ms"] >= 500, ev
    assert gauge == 1
    assert metric(g, "breakwater_crash_loop") == 1  # stays on until a quiet window (60 s)
    assert metric(g, 'breakwater_worker_restarts_total{reason="crash"}') == 6
    assert not_ready["workers_ready"] == 1, not_ready
    backoff = t_back - t_loop
    # The respawn is delayed unless the crash left no other live worker: the supervisor never
    # holds back the last one (seen once under ASan, 0.001 s). The delay policy itself is tested
    # exactly in tests/unit/test_gateway_crashloop.c; here it is checked whenever it applied.
    delayed = backoff >= 0.3
    # the other worker served throughout, the backoff included
    gap = lc.max_ok_gap(t0, t_back + 0.3)
    served_in_backoff = [e for e in lc.successes() if t_loop < e.start and e.end < t_back]
    print(f"\ncrash loop: 6 crashes in {(t_loop - t0) * 1000:.0f} ms, respawn delayed "
          f"{backoff * 1000:.0f} ms, {len(served_in_backoff)} requests served during the backoff, "
          f"longest gap without a success {gap * 1000:.0f} ms; {summary['failed']} of "
          f"{summary['total']} load requests failed ({summary['by_kind']})")
    assert served_in_backoff or not delayed, "nothing served while the crashed worker was held back"
    assert gap < 1.0, gap
    assert summary["failed"] <= 6 * threads
    assert all(f.kind in LOST for f in lc.failures()), lc.failures()


def test_crash_loop_never_leaves_the_gateway_without_a_worker(gateway, upstreams):
    """Crash requests keep coming after the loop started (9 in all): at least one worker must be
    alive at any time, so the load sees successes throughout (no long gap)."""
    u = upstreams("u")
    g = gateway(config(u.addr))
    threads = 4
    with LoadClient(g.port, path="/steady", threads=threads, duration=60, timeout=20,
                    reconnect_every=5) as lc:
        wait_both_workers_seen(lc)
        t0 = time.monotonic()
        times = crash_n(g, 9)
        wait_events(g, "crash_loop")[0]
        t_end = times[-1] + 2.0
        while time.monotonic() < t_end:
            time.sleep(0.05)
    summary = lc.summary()
    gap = lc.max_ok_gap(t0, t_end)
    print(f"\ncrash loop, 9 crashes: longest gap without a successful request "
          f"{gap * 1000:.0f} ms; {summary['failed']} of {summary['total']} failed "
          f"({summary['by_kind']})")
    assert len(events(g, "crash_loop")) == 1
    assert gap < 1.0, f"no request served for {gap:.3f}s: no worker was alive"


# ---- fault injection --------------------------------------------------------------------------


def test_abort_fault_header_answers_the_status_as_json_without_the_upstream(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr))
    r = g.get("/x", headers={"X-Breakwater-Fault": "abort=418", "X-Request-Id": "abort-1"})
    assert r.status == 418, r
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["error"] == "fault_injected" and body["request_id"] == "abort-1", body
    assert r.headers["x-request-id"] == "abort-1"
    assert u.stats()["requests"] == 0
    # a bad value is the caller's error, not a fault
    r = g.get("/x", headers={"X-Breakwater-Fault": "explode"})
    assert r.status == 400 and r.json()["error"] == "bad_fault_header", r
    assert u.stats()["requests"] == 0
    assert metric(g, 'breakwater_worker_restarts_total{reason="crash"}') == 0


def test_fault_headers_are_ignored_without_debug_fault_headers(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr, fault_headers=False))
    pids = worker_pids(g)
    for value in ("abort=418", "crash", "stall=3000"):
        t0 = time.monotonic()
        r = g.get("/x", headers={"X-Breakwater-Fault": value})
        assert r.status == 200, (value, r)
        assert time.monotonic() - t0 < 2.0, value
        # proxied, and the fault header is not passed on
        assert "x-breakwater-fault" not in r.json()["headers"], r.json()
    assert u.stats()["requests"] == 3
    assert worker_pids(g) == pids and set(pids.values()) <= children(g.proc.pid)
    assert metric(g, 'breakwater_worker_restarts_total{reason="crash"}') == 0


def test_route_abort_fault_answers_503_and_never_reaches_the_upstream(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr).replace("    upstream: u\n", """    upstream: u
    fault:
      abort:
        status: 503
        percent: 100
""", 1))
    for i in range(20):
        r = g.get(f"/x{i}")
        assert r.status == 503, r
        body = r.json()
        assert body["error"] == "fault_injected", body
        assert r.headers.get("x-request-id") == body["request_id"]
    assert u.stats()["requests"] == 0


def test_route_delay_fault_holds_the_request_for_its_duration(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr).replace("    upstream: u\n", """    upstream: u
    fault:
      delay:
        duration: 300ms
        percent: 100
""", 1))
    for _ in range(3):
        t0 = time.monotonic()
        r = g.get("/slowed")
        took = time.monotonic() - t0
        assert r.status == 200, r
        assert took >= 0.3, took
        assert took < 3.0, took
    assert u.stats()["requests"] == 3


# ---- events API -------------------------------------------------------------------------------


def test_events_api_pages_with_since_and_limit_and_rejects_bad_parameters(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr))
    # five audit events without killing anything: refused reloads (SIGHUP with a bad file)
    with open(g.config_path) as f:
        good = f.read()
    with open(g.config_path, "w") as f:
        f.write(good + "no_such_key: 1\n")
    for i in range(5):
        g.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(events(g) or []) >= i + 1, 10, f"event {i + 1}")
    with open(g.config_path, "w") as f:
        f.write(good)
    every = events(g)
    assert len(every) == 5 and all(e["kind"] == "reload_failed" for e in every), every
    ids = [e["id"] for e in every]
    assert ids == sorted(ids) and len(set(ids)) == 5
    for e in every:
        assert set(e) >= {"id", "ts_ms", "kind", "worker", "fields"}, e
        assert e["worker"] is None
        assert abs(e["ts_ms"] / 1000 - time.time()) < 120, e

    # paging by two: since=next_since walks the whole list, each event once
    seen, since, pages = [], 0, 0
    while True:
        r = g.admin(f"/api/v1/events?since={since}&limit=2")
        assert r.status == 200, r
        page = r.json()
        assert len(page["events"]) <= 2
        pages += 1
        if not page["events"]:
            assert page["next_since"] == since, page
            break
        assert page["next_since"] == page["events"][-1]["id"], page
        seen += page["events"]
        since = page["next_since"]
        assert pages < 10
    assert [e["id"] for e in seen] == ids and pages == 4
    assert g.admin(f"/api/v1/events?since={ids[2]}").json()["events"] == every[3:]
    assert len(g.admin("/api/v1/events?limit=1").json()["events"]) == 1
    assert len(g.admin("/api/v1/events?limit=1000").json()["events"]) == 5
    big = g.admin(f"/api/v1/events?since={ids[-1] + 100}").json()
    assert big["events"] == [] and big["next_since"] == ids[-1] + 100, big

    for query in ("limit=0", "limit=1001", "limit=-1", "limit=abc", "since=-1", "since=x",
                  "since=", "limit=", "since=1.5"):
        r = g.admin(f"/api/v1/events?{query}")
        assert r.status == 400, (query, r)
        assert r.json()["error"] == "bad_request", (query, r)
    assert g.admin("/api/v1/events", method="POST").status == 405


# ---- SIGTERM ----------------------------------------------------------------------------------


def test_sigterm_under_load_lets_slow_inflight_requests_complete_and_exits_0(gateway, upstreams):
    u, s = upstreams("u"), upstreams("s")
    # the slow requests go to their own upstream, so that its request count tells when all of
    # them are in flight
    g = gateway(config(u.addr).replace("routes:\n", f"""  s:
    hosts: ["{s.addr}"]
routes:
  - name: slow
    match:
      path_prefix: /slow
    upstream: s
""", 1))
    slow = LoadClient(g.port, path="/slow?delay=1500", threads=4, max_requests=4, timeout=15,
                      duration=30)
    with LoadClient(g.port, path="/steady", threads=4, duration=30, timeout=10) as lc:
        wait_for(lambda: len(lc.successes()) > 50, 10, "steady load")
        slow.start()
        wait_for(lambda: s.stats()["requests"] >= 4, 10, "the slow requests at their upstream")
        t_sig = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        try:
            rc = g.proc.wait(timeout=5 + 5)
        finally:
            t_exit = time.monotonic()
    slow.wait()
    slow_log = slow.entries()
    before = [e for e in lc.entries() if e.start < t_sig]
    print(f"\nSIGTERM: exit {rc} {t_exit - t_sig:.3f}s after the signal; slow requests: "
          f"{[(e.kind, round(e.latency, 3)) for e in slow_log]}; load sent before the signal: "
          f"{len(before)} requests, {sum(1 for e in before if not e.ok)} failed")
    assert rc == 0, g.logs()[-3000:]
    assert len(slow_log) == 4
    for e in slow_log:
        assert e.kind == "ok" and e.status == 200, e
        assert e.start < t_sig < e.end, e  # really in flight at the signal
    # every load request sent before the signal was answered
    assert before and all(e.ok for e in before), [e for e in before if not e.ok]
    assert t_exit - t_sig < 5 + 3
    assert t_exit >= max(e.end for e in slow_log) - 0.05, "exited before the slow requests ended"
    stopped = [l for l in g.log_lines() if l.get("msg") == "worker exiting"]
    assert len(stopped) == 2 and all(l["abandoned_requests"] == 0 for l in stopped), stopped
