"""Circuit breaker and outlier ejection (issue 4, SPEC 2/3/6) against real processes.

A real `breakwater` in front of real `bw_upstream` processes. The upstream's /_stats request
counter proves what reached it: a breaker rejection must never move it. Covered: consecutive
failures (exactly N reach the upstream, then 503 circuit_open with Retry-After and the JSON body),
4xx is success, failure_rate with min_calls, timeouts / connect refused / blackholed hosts as
failures, slow_call_rate, half-open admitting exactly half_open_requests trials under concurrent
load, re-open doubling the wait up to max_open_duration, admin overrides, state surviving a worker
kill -9, a control-process kill -9 and a reload that keeps the upstream, a reset by a reload that
changes it, four workers sharing one breaker, outlier ejection (max_ejected, restore,
no_healthy_upstream/outlier), the breaker metrics, and the trip lag (printed: run with -s).

Three regression tests guard bugs these tests found (the trip recorded late or not at all):
successes from another worker reordered after failures, a tripping success (slow call, or the
call that reaches min_calls) not waking the owner, and the owner stalled by the control process's
SQLite fdatasync. Tests that check *which* call tripped the breaker wait for the published state
before the next request, so the documented channel lag cannot make them flaky.

Waiting is always polling with a deadline; timings are generous (a slow, shared 2-core machine).
"""

import http.client
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time

import pytest

from conftest import (children, config_generation, events, free_port, metrics, sample, wait_events,
                      wait_for, worker_pids)

SVC = "svc"


@pytest.fixture
def gateway(strict_gateway):
    """Every gateway a test here starts must stop with exit 0 (conftest's strict_gateway)."""
    return strict_gateway


# ---- config ------------------------------------------------------------------------------------

# Fast breaker settings; every test states what it relies on.
FAST = {
    "consecutive_failures": 5,
    "failure_rate": "0%",
    "window": "10s",
    "min_calls": 20,
    "slow_call_duration": "0s",
    "slow_call_rate": "0%",
    "open_duration": "30s",    # tests of the open period set their own, short one
    "max_open_duration": "60s",
    "half_open_requests": 2,
}
NO_OUTLIER = {"consecutive_failures": 0}
BREAKER_OFF = {"consecutive_failures": 0, "failure_rate": "0%", "slow_call_rate": "0%",
               "slow_call_duration": "0s"}


def block(d, indent):
    return "".join(f"{' ' * indent}{k}: {v}\n" for k, v in d.items())


def config(hosts, breaker=None, outlier=None, workers=1, route_timeout="5s",
           connect_timeout="1s", extra_routes="", extra_upstreams="", fault_headers=False):
    """One upstream `svc` behind a catch-all route `api`. Block-style YAML only (conftest runs
    str.format over the text, so no braces)."""
    b = dict(FAST)
    b.update(breaker or {})
    o = dict(NO_OUTLIER if outlier is None else outlier)
    hl = ", ".join(f'"{h}"' for h in hosts)
    return (
        f"workers: {workers}\n"
        "watchdog:\n  stall_after: 10s\n"
        f"debug:\n  fault_headers: {'true' if fault_headers else 'false'}\n"
        "upstreams:\n"
        f"  {SVC}:\n"
        f"    hosts: [{hl}]\n"
        f"    connect_timeout: {connect_timeout}\n"
        "    outlier:\n" + block(o, 6) +
        "    breaker:\n" + block(b, 6) +
        extra_upstreams +
        "routes:\n" + extra_routes +
        "  - name: api\n"
        "    match:\n"
        "      path_prefix: /\n"
        f"    upstream: {SVC}\n"
        f"    timeout: {route_timeout}\n"
    )


# ---- helpers -------------------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body, t_sent, t_done):
        self.status, self.headers, self.body = status, headers, body
        self.t_sent, self.t_done = t_sent, t_done

    def json(self):
        return json.loads(self.body)

    @property
    def circuit_open(self):
        return self.status == 503 and self.headers.get("x-breakwater-reason") == "breaker"

    @property
    def from_upstream(self):
        return "x-upstream" in self.headers

    def __repr__(self):
        return f"<Resp {self.status} {self.headers} {self.body[:300]!r}>"


class Client:
    """One keep-alive client connection to the gateway (reconnects if the gateway closed it)."""

    def __init__(self, port, timeout=15):
        self.port, self.timeout = port, timeout
        self.conn = None
        self.connect()

    def connect(self):
        self.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        self.conn.connect()
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def local_port(self):
        return self.conn.sock.getsockname()[1]

    def get(self, path, headers=None):
        for attempt in range(2):
            if self.conn is None or self.conn.sock is None:
                self.connect()
            t0 = time.monotonic()
            try:
                self.conn.request("GET", path, headers=headers or {})
                r = self.conn.getresponse()
                body = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt == 1:
                    raise
                self.connect()
                continue
            t1 = time.monotonic()
            if r.will_close:
                self.close()
            return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, body, t0, t1)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def upstream_entry(g, name=SVC):
    r = g.admin("/api/v1/upstreams", timeout=5)
    assert r.status == 200, r
    for u in r.json()["upstreams"]:
        if u["name"] == name:
            return u
    raise AssertionError(f"upstream {name!r} missing: {r.body!r}")


def breaker_state(g, name=SVC):
    return upstream_entry(g, name)["breaker"]


def drain(g):
    """GET /metrics makes the owner drain every pending outcome record first."""
    assert g.admin("/metrics", timeout=5).status == 200


def breaker_state_metric(g, name=SVC):
    """The state whose breakwater_breaker_state sample is 1 (and checks exactly one is)."""
    m = metrics(g)
    on = [s for s in ("closed", "open", "half_open", "forced_open", "forced_closed")
          if sample(m, "breakwater_breaker_state", upstream=name, state=s) == 1]
    assert len(on) == 1, on
    return on[0]


def upstream_requests(u):
    return u.stats()["requests"]


def assert_circuit_open(r, max_retry_s, name=SVC):
    """SPEC 3: 503 circuit_open, X-Breakwater-Reason: breaker, Retry-After = whole seconds
    (>= 1), JSON body with upstream and retry_after_s; never from the upstream."""
    assert r.status == 503, r
    assert not r.from_upstream, r
    assert r.headers.get("x-breakwater-reason") == "breaker", r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    body = r.json()
    assert body["error"] == "circuit_open", body
    assert body["upstream"] == name, body
    assert body.get("request_id") == r.headers.get("x-request-id"), (body, r.headers)
    ra = r.headers.get("retry-after")
    assert ra is not None and ra.isdigit(), r
    ra = int(ra)
    assert 1 <= ra <= max_retry_s, (ra, max_retry_s, r)
    assert body["retry_after_s"] == ra, body
    return ra


def fail_n(client, n, status=500, extra=""):
    """n upstream failures in a row on one connection; each must come from the upstream."""
    for i in range(n):
        r = client.get(f"/fail?status={status}{extra}")
        assert r.status == status and r.from_upstream, (i, r)


def wait_open(g, timeout=5, name=SVC):
    """Waits until the published breaker state is open. Tripping lags the outcome channel
    (docs/breaker.md "Lag expectations"; measured in test_trip_lag_...), so a test that checks
    *which* call tripped it waits for the state instead of racing the next request."""
    return wait_for(lambda: breaker_state(g, name)["state"] == "open" and breaker_state(g, name),
                    timeout, "the breaker to open", interval=0.005)


def _socket_inode(server_port, client_port):
    """The inode of the gateway's accepted socket for our connection (from /proc/net/tcp)."""
    want_local = f"0100007F:{server_port:04X}"
    want_remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            p = line.split()
            if p[1] == want_local and p[2] == want_remote and p[9] != "0":
                return p[9]
    return None


def conn_owner(g, client, pids):
    """Which of `pids` holds the gateway side of `client`'s connection (None until accepted)."""
    inode = _socket_inode(g.port, client.local_port())
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                pass
    return None


def connections_per_worker(g, want, tries=200):
    """Opens connections until each worker index in `want` holds one. Returns {index: Client}."""
    pids = worker_pids(g)
    by_pid = {pid: i for i, pid in pids.items()}
    got, spare = {}, []
    for _ in range(tries):
        c = Client(g.port)
        owner = wait_for(lambda: conn_owner(g, c, list(by_pid)), 5, "the connection's worker",
                         interval=0.002)
        idx = by_pid[owner]
        if idx in want and idx not in got:
            got[idx] = c
        else:
            spare.append(c)
        if set(got) == set(want):
            break
    for c in spare:
        c.close()
    assert set(got) == set(want), f"connections landed only on workers {sorted(got)}"
    return got


# ---- consecutive failures ---------------------------------------------------------------------

def test_opens_at_the_5th_failure_and_rejects_without_touching_the_upstream(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"open_duration": "2500ms", "max_open_duration": "10s"}))
    c = Client(g.port)
    assert c.get("/ok").status == 200
    fail_n(c, 5)
    wait_open(g)
    assert upstream_requests(u) == 6
    t_open = time.monotonic()
    retry = []
    for _ in range(10):
        r = c.get("/fail?status=500")
        retry.append(assert_circuit_open(r, max_retry_s=math.ceil(2.5)))
        assert c.get("/ok").circuit_open  # successes are refused too
    assert retry[0] == 3 or time.monotonic() - t_open > 0.4, retry
    assert upstream_requests(u) == 6, "a rejected request reached the upstream"

    ev = wait_events(g, "breaker_open")
    assert len(ev) == 1, ev
    f = ev[0]["fields"]
    assert (f["upstream"], f["from"], f["to"], f["reason"], f["open_ms"]) == \
        (SVC, "closed", "open", "consecutive_failures", 2500), f
    m = metrics(g)
    assert sample(m, "breakwater_breaker_rejected_total", upstream=SVC) == 20, m
    assert upstream_entry(g)["counters"]["breaker_rejected"] == 20
    st = breaker_state(g)
    assert st["state"] == "open" and 0 < st["retry_after_ms"] <= 2500, st


def test_4xx_is_success_and_never_opens(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"consecutive_failures": 3, "failure_rate": "50%",
                                  "min_calls": 5},
                       extra_upstreams=""))
    c = Client(g.port)
    for status in (404, 400, 429, 499, 501, 404, 418, 404, 409, 410, 404, 422):
        r = c.get(f"/x?status={status}")
        assert r.status == status and r.from_upstream, r
    drain(g)
    st = breaker_state(g)
    assert st["state"] == "closed", st
    assert st["consecutive_failures"] == 0 and st["window_failures"] == 0, st
    # 501 is not in the default failure_statuses either: 12 calls, all successes
    assert st["window_calls"] == 12, st
    assert upstream_requests(u) == 12
    assert events(g, "breaker_open") == []


def test_a_4xx_listed_in_failure_statuses_is_still_a_success(gateway, upstreams):
    u = upstreams("u")
    text = config([u.addr], {"consecutive_failures": 3}).replace(
        "    connect_timeout:", "    failure_statuses: [429, 500]\n    connect_timeout:", 1)
    g = gateway(text)
    c = Client(g.port)
    for _ in range(6):
        r = c.get("/x?status=429")
        assert r.status == 429 and r.from_upstream, r
    fail_n(c, 3)  # 500 is a failure: the third opens it
    wait_open(g)
    assert_circuit_open(c.get("/x"), 30)
    assert upstream_requests(u) == 9


def test_a_success_resets_the_consecutive_count(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"consecutive_failures": 3}))
    c = Client(g.port)
    for _ in range(5):
        fail_n(c, 2)
        assert c.get("/ok").status == 200
        drain(g)
        assert breaker_state(g)["state"] == "closed"
    fail_n(c, 3)
    wait_open(g)
    assert_circuit_open(c.get("/ok"), 30)
    assert upstream_requests(u) == 18


# ---- failure rate, timeouts, refused, slow calls -------------------------------------------------

def test_failure_rate_waits_for_min_calls_and_trips_at_exactly_the_rate(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"consecutive_failures": 0, "failure_rate": "50%",
                                  "min_calls": 10, "window": "30s", "open_duration": "30s",
                                  "max_open_duration": "60s"}))
    c = Client(g.port)
    # 9 failures in a row: below min_calls, consecutive trigger disabled -> still closed
    fail_n(c, 9)
    drain(g)
    st = breaker_state(g)
    assert st["state"] == "closed" and st["window_calls"] == 9, st
    fail_n(c, 1)  # the 10th call: 10/10 failed
    wait_open(g)
    assert_circuit_open(c.get("/ok"), 30)
    assert upstream_requests(u) == 10
    f = wait_events(g, "breaker_open")[0]["fields"]
    assert f["reason"] == "failure_rate", f

    # inclusive threshold: S F S F ... reaches 5/10 = 50% exactly at the 10th call
    r = g.admin(f"/api/v1/upstreams/{SVC}/breaker", method="POST", body='{"action":"reset"}')
    assert r.status == 200 and r.json()["breaker"]["state"] == "closed", r
    base = upstream_requests(u)
    for i in range(5):
        assert c.get("/ok").status == 200
        if i < 4:
            fail_n(c, 1)
    drain(g)
    st = breaker_state(g)
    assert st["state"] == "closed" and st["window_calls"] == 9 and st["window_failures"] == 4, st
    fail_n(c, 1)
    wait_open(g)
    assert_circuit_open(c.get("/ok"), 30)
    assert upstream_requests(u) == base + 10


@pytest.mark.parametrize("kind", ["timeout", "refused", "blackhole", "reset"])
def test_timeouts_refusals_and_resets_count_as_failures(gateway, upstreams, kind):
    path, code = "/x", None
    if kind == "timeout":
        u = upstreams("u")
        host, path, code = u.addr, "/x?delay=1000", (504, "upstream_timeout")
    elif kind == "reset":
        u = upstreams("u")
        host, path, code = u.addr, "/x?reset=1", (502, "upstream_unavailable")
    elif kind == "refused":
        u = None
        host, code = f"127.0.0.1:{free_port()}", (502, "upstream_unavailable")
    else:
        u = upstreams("u", extra=("--blackhole",))
        host, code = u.addr, (504, "upstream_timeout")
    g = gateway(config([host], {"consecutive_failures": 5}, route_timeout="200ms",
                       connect_timeout="200ms"))
    c = Client(g.port)
    for i in range(5):
        r = c.get(path)
        assert r.status in (502, 504) and not r.from_upstream, (i, r)
        assert r.json()["error"] in ("upstream_timeout", "upstream_unavailable"), r
        if kind != "blackhole":
            assert (r.status, r.json()["error"]) == code, r
    if u is not None and kind != "blackhole":
        assert upstream_requests(u) == 5
    wait_open(g)
    assert_circuit_open(c.get(path), 30)
    if u is not None and kind != "blackhole":
        assert upstream_requests(u) == 5
    f = wait_events(g, "breaker_open")[0]["fields"]
    assert f["reason"] == "consecutive_failures", f


def test_a_hung_upstream_opens_the_breaker_by_slow_call_rate(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"consecutive_failures": 5, "slow_call_duration": "100ms",
                                  "slow_call_rate": "100%", "min_calls": 5, "window": "30s",
                                  "open_duration": "30s", "max_open_duration": "60s"},
                       route_timeout="2s"))
    c = Client(g.port)
    # one fast call in the window keeps the slow share below 100% ...
    assert c.get("/x").status == 200
    for _ in range(5):
        r = c.get("/x?delay=200")
        assert r.status == 200 and r.from_upstream, r
    drain(g)
    st = breaker_state(g)
    assert st["state"] == "closed" and st["window_slow"] == 5 and st["window_calls"] == 6, st
    # ... until a reset empties the window: then 5 slow calls (min_calls) of 5 trip it
    r = g.admin(f"/api/v1/upstreams/{SVC}/breaker", method="POST", body='{"action":"reset"}')
    assert r.status == 200
    for _ in range(5):
        r = c.get("/x?delay=200")
        assert r.status == 200 and r.from_upstream, r  # slow successes are still answered
    # (a slow success does not wake the owner: it opens at the next 10 ms poll; see
    # test_a_success_that_trips_the_breaker_opens_it_before_the_next_request)
    wait_for(lambda: breaker_state(g)["state"] == "open", 2, "the breaker to open")
    r = c.get("/x?delay=200")
    assert_circuit_open(r, 30)
    assert upstream_requests(u) == 11
    ev = wait_events(g, "breaker_open")
    assert [e["fields"]["reason"] for e in ev] == ["slow_call_rate"], ev


# ---- half-open --------------------------------------------------------------------------------

class Hammer:
    """`n` threads sending GET `path` on keep-alive connections as fast as they can."""

    def __init__(self, port, n, path):
        self.port, self.path = port, path
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results = []  # (t_sent, t_done, status, circuit_open, from_upstream)
        self.errors = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self):
        c = Client(self.port)
        try:
            while not self.stop.is_set():
                try:
                    r = c.get(self.path)
                except Exception as e:  # noqa: BLE001
                    with self.lock:
                        self.errors.append(repr(e))
                    c.connect()
                    continue
                with self.lock:
                    self.results.append((r.t_sent, r.t_done, r.status, r.circuit_open,
                                         r.from_upstream))
        finally:
            c.close()

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def finish(self, timeout=30):
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a load thread hung"


def test_half_open_lets_exactly_n_trials_through_under_concurrent_load(gateway, upstreams):
    n_trials = 3
    u = upstreams("u")
    # trials take 4 s, so the half-open phase is long enough to count what reaches the upstream
    g = gateway(config([u.addr], {"half_open_requests": n_trials, "open_duration": "1s",
                                  "slow_call_duration": "0s"},
                       route_timeout="10s", workers=2))
    c = Client(g.port)
    fail_n(c, 5)
    wait_open(g)
    assert_circuit_open(c.get("/x"), 1)
    base = upstream_requests(u)
    assert base == 5

    h = Hammer(g.port, 20, "/trial?delay=4000")
    try:
        t_full = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            n = upstream_requests(u) - base
            assert n <= n_trials, f"{n} trials reached the upstream (half_open_requests={n_trials})"
            if n == n_trials and t_full is None:
                t_full = time.monotonic()
            if t_full is not None and time.monotonic() - t_full > 1.0:
                break
            time.sleep(0.01)
        assert t_full is not None, "no trial reached the upstream"
        during = upstream_requests(u) - base
        res = h.snapshot()
        ok_before = [x for x in res if x[2] == 200]
        # still inside the half-open phase: no trial has answered yet
        assert not ok_before, "a trial answered before the count was taken; cannot judge"
        rejected_in_phase = [x for x in res if x[3] and x[0] >= t_full - 0.5]
        assert during == n_trials, during
        st = breaker_state(g)
        assert st["state"] == "half_open" and st["trial_permits_left"] == 0, st
        assert len(rejected_in_phase) > 50, "the load did not really press on the half-open phase"
        for x in rejected_in_phase:
            assert x[2] == 503 and not x[4]

        ev = wait_events(g, "breaker_closed", timeout=15)
        f = ev[0]["fields"]
        assert (f["from"], f["to"], f["reason"]) == ("half_open", "closed", "trials_succeeded"), f
        # closed again: requests flow
        wait_for(lambda: any(x[2] == 200 and x[0] > time.monotonic() - 30 for x in h.snapshot())
                 and upstream_requests(u) - base > n_trials, 15, "traffic after closing")
    finally:
        h.finish()
    res = h.snapshot()
    assert len([x for x in res if x[2] == 200]) >= n_trials
    assert not h.errors, h.errors[:5]
    kinds = [e["kind"] for e in events(g) if e["kind"].startswith("breaker_")]
    assert kinds == ["breaker_open", "breaker_half_open", "breaker_closed"], kinds
    print(f"\nhalf-open under 20 threads: {during} of {n_trials} trials reached the upstream, "
          f"{len(rejected_in_phase)} requests rejected meanwhile")


def next_trial(c, path, max_wait=10):
    """Polls until a request gets past the breaker (a trial); returns it."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        r = c.get(path)
        if not r.circuit_open:
            return r
        time.sleep(0.02)
    raise AssertionError("no trial admitted")


def test_a_failed_trial_reopens_with_the_wait_doubled_up_to_max_open_duration(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"half_open_requests": 1, "open_duration": "1s",
                                  "max_open_duration": "3s"}))
    c = Client(g.port)
    fail_n(c, 5)
    wait_open(g)
    assert assert_circuit_open(c.get("/x"), 1) == 1
    seen_ra = []
    for expect_open_ms in (2000, 3000, 3000):
        n0 = upstream_requests(u)
        r = next_trial(c, "/x?status=500", max_wait=expect_open_ms / 1000 + 5)
        assert r.status == 500 and r.from_upstream, r
        assert upstream_requests(u) == n0 + 1
        # until the owner has drained the failed trial, "half_open, no permit left" answers
        # Retry-After: 1; the re-open's open period starts when it does, so the first answer
        # after it shows the whole (doubled) period
        def reopened():
            r = c.get("/x")
            ra = assert_circuit_open(r, math.ceil(expect_open_ms / 1000))
            return ra if ra > 1 else None
        seen_ra.append(wait_for(reopened, 5, f"Retry-After of a {expect_open_ms} ms open"))
        assert seen_ra[-1] == expect_open_ms // 1000, seen_ra
        assert upstream_requests(u) == n0 + 1
    # a successful trial closes it and puts the wait back to open_duration
    r = next_trial(c, "/x", max_wait=8)
    assert r.status == 200 and r.from_upstream, r
    wait_events(g, "breaker_closed")
    fail_n(c, 5)
    wait_open(g)
    assert_circuit_open(c.get("/x"), 1)
    opens = wait_events(g, "breaker_open", n=5)
    got = [(e["fields"]["reason"], e["fields"]["open_ms"]) for e in opens]
    assert got == [("consecutive_failures", 1000), ("trial_failed", 2000), ("trial_failed", 3000),
                   ("trial_failed", 3000), ("consecutive_failures", 1000)], got
    print(f"\nre-open Retry-After sequence: 1 -> {' -> '.join(map(str, seen_ra))}")


def test_slow_trials_reopen_a_breaker_opened_by_slowness(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"consecutive_failures": 0, "slow_call_duration": "100ms",
                                  "slow_call_rate": "100%", "min_calls": 3, "window": "30s",
                                  "open_duration": "1s", "max_open_duration": "10s",
                                  "half_open_requests": 1}, route_timeout="2s"))
    c = Client(g.port)
    for _ in range(3):
        assert c.get("/x?delay=200").status == 200
    wait_for(lambda: breaker_state(g)["state"] == "open", 2, "the breaker to open")
    assert_circuit_open(c.get("/x"), 1)
    r = next_trial(c, "/x?delay=200")
    assert r.status == 200, r
    ev = wait_events(g, "breaker_open", n=2)
    f = ev[1]["fields"]
    assert (f["from"], f["reason"], f["open_ms"]) == ("half_open", "slow_call_rate", 2000), f


# ---- admin overrides ----------------------------------------------------------------------------

def post_breaker(g, body, name=SVC):
    return g.admin(f"/api/v1/upstreams/{name}/breaker", method="POST", body=body,
                   headers={"Content-Type": "application/json"})


def test_admin_force_open_force_close_and_reset(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"consecutive_failures": 3, "open_duration": "2s"}))
    c = Client(g.port)
    assert c.get("/x").status == 200

    r = post_breaker(g, '{"action":"force_open"}')
    assert r.status == 200, r
    assert r.json()["breaker"]["state"] == "forced_open", r
    n0 = upstream_requests(u)
    for _ in range(10):
        assert_circuit_open(c.get("/x"), 1)
    assert upstream_requests(u) == n0
    assert breaker_state_metric(g) == "forced_open"
    # no timer: still refusing after open_duration has passed
    time.sleep(2.5)  # (a negative check: nothing to poll for)
    assert_circuit_open(c.get("/x"), 1)
    assert upstream_requests(u) == n0

    r = post_breaker(g, '{"action":"force_close"}')
    assert r.status == 200 and r.json()["breaker"]["state"] == "forced_closed", r
    fail_n(c, 12)  # never trips
    drain(g)
    assert breaker_state(g)["state"] == "forced_closed"
    assert upstream_requests(u) == n0 + 12

    r = post_breaker(g, '{"action":"reset"}')
    assert r.status == 200, r
    st = r.json()["breaker"]
    assert st["state"] == "closed" and st["consecutive_failures"] == 0, st
    fail_n(c, 3)
    wait_open(g)
    assert_circuit_open(c.get("/x"), 2)
    assert upstream_requests(u) == n0 + 15

    overrides = wait_events(g, "breaker_override", n=3)
    assert [e["fields"]["action"] for e in overrides] == ["force_open", "force_close", "reset"]
    assert all(e["fields"]["upstream"] == SVC for e in overrides)
    fo = wait_events(g, "breaker_forced_open")[0]["fields"]
    assert (fo["from"], fo["reason"]) == ("closed", "forced"), fo
    fc = wait_events(g, "breaker_forced_closed")[0]["fields"]
    assert (fc["from"], fc["reason"]) == ("forced_open", "forced"), fc
    cl = wait_events(g, "breaker_closed", pred=lambda f: f["reason"] == "reset")[0]["fields"]
    assert cl["from"] == "forced_closed", cl
    wait_events(g, "breaker_open", pred=lambda f: f["reason"] == "consecutive_failures")


def test_admin_breaker_bad_action_is_400_and_unknown_upstream_404(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr]))
    for body in ('{"action":"explode"}', '{"action":1}', '{}', 'not json', '',
                 '{"action":"FORCE_OPEN"}'):
        r = post_breaker(g, body)
        assert r.status == 400, (body, r)
        assert r.json()["error"], r
    r = post_breaker(g, '{"action":"force_open"}', name="nope")
    assert r.status == 404, r
    assert r.json()["error"] == "unknown_upstream", r
    r = post_breaker(g, '{"action":"force_open"}', name=SVC + "x")
    assert r.status == 404, r
    assert breaker_state(g)["state"] == "closed"
    assert events(g, "breaker_override") == []


# ---- shared state: workers, crashes, reloads ---------------------------------------------------

def test_four_workers_share_one_breaker(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"open_duration": "30s", "max_open_duration": "60s"},
                       workers=4))
    wait_for(lambda: len(worker_pids(g)) == 4, 10, "4 workers ready")
    conns = connections_per_worker(g, {0, 1, 2, 3})
    order = [0, 1, 2, 3, 0]  # 5 failures spread over all four workers
    for i in order:
        r = conns[i].get("/fail?status=500")
        assert r.status == 500 and r.from_upstream, (i, r)
    wait_open(g)
    for i in (1, 2, 3, 0, 1, 2, 3):
        assert_circuit_open(conns[i].get("/fail?status=500"), 30)
    assert upstream_requests(u) == 5, "the workers did not count as one breaker"
    f = wait_events(g, "breaker_open")[0]["fields"]
    assert f["reason"] == "consecutive_failures", f
    for c in conns.values():
        c.close()


def test_open_breaker_survives_a_worker_kill_9(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"open_duration": "60s", "max_open_duration": "120s"},
                       workers=2))
    wait_for(lambda: len(worker_pids(g)) == 2, 10, "2 workers ready")
    c = Client(g.port)
    fail_n(c, 5)
    wait_open(g)
    assert_circuit_open(c.get("/x"), 60)
    c.close()
    pids = worker_pids(g)
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)

    def replaced():
        now = worker_pids(g)
        return now if now.get(0) not in (None, victim) and now[0] in children(g.proc.pid) else None
    new = wait_for(replaced, 15, "a replacement for worker 0")
    conns = connections_per_worker(g, {0, 1})
    assert conn_owner(g, conns[0], [new[0]]) == new[0]
    for i in (0, 1, 0, 1):
        assert_circuit_open(conns[i].get("/x"), 60)
    assert upstream_requests(u) == 5
    assert breaker_state(g)["state"] == "open"
    for cc in conns.values():
        cc.close()


def test_open_breaker_survives_a_control_process_kill_9(gateway, upstreams):
    """The owner restarts from the published state (br_breaker_adopt): still open, and it still
    works afterwards (half-open, trials, close)."""
    u = upstreams("u")
    g = gateway(config([u.addr], {"open_duration": "6s", "max_open_duration": "10s",
                                  "half_open_requests": 1}))
    c = Client(g.port)
    fail_n(c, 5)
    wait_open(g)
    t_open = time.monotonic()
    assert_circuit_open(c.get("/x"), 6)
    workers = set(worker_pids(g).values())
    control = [p for p in children(g.proc.pid) if p not in workers]
    assert len(control) == 1, (control, workers)
    os.kill(control[0], signal.SIGKILL)
    wait_for(lambda: [p for p in children(g.proc.pid) if p not in workers and p != control[0]],
             15, "a new control process")
    wait_for(lambda: g.admin("/readyz", timeout=2).status == 200, 15, "/readyz after restart")
    st = breaker_state(g)
    if time.monotonic() - t_open < 5:
        assert st["state"] == "open", st
        assert_circuit_open(c.get("/x"), 6)
    assert st["state"] in ("open", "half_open"), st
    r = next_trial(c, "/x", max_wait=10)
    assert r.status == 200 and r.from_upstream, r
    wait_for(lambda: breaker_state(g)["state"] == "closed", 10, "closed after the trial")
    assert upstream_requests(u) == 6


def write_config(g, text):
    """Replaces the config (keeping the listen/admin/state_dir lines conftest put before ours)."""
    with open(g.config_path) as f:
        current = f.read()
    text = current[:current.index("workers:")] + text
    tmp = g.config_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, g.config_path)


def reload_and_wait(g):
    gen0 = config_generation(g)
    old = children(g.proc.pid)
    g.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: config_generation(g) == gen0 + 1, 20, "the new config generation")

    def drained():
        try:
            return not (children(g.proc.pid) & old) and g.admin("/readyz").status == 200
        except OSError:
            return False
    wait_for(drained, 20, "the old generation to drain")


def test_reload_keeps_an_unchanged_upstreams_open_breaker_and_resets_a_changed_one(
        gateway, upstreams):
    u = upstreams("u")
    other = upstreams("other")
    b = {"open_duration": "30s", "max_open_duration": "60s"}
    text = config([u.addr], b, workers=2)
    g = gateway(text)
    c = Client(g.port)
    fail_n(c, 5)
    wait_open(g)
    assert_circuit_open(c.get("/x"), 30)
    gen = breaker_state(g)["generation"]

    # an unrelated route and upstream: the breaker stays open, same generation
    extra_up = f"  other:\n    hosts: [\"{other.addr}\"]\n"
    extra_route = "  - name: other\n    match:\n      path_prefix: /other\n    upstream: other\n"
    write_config(g, config([u.addr], b, workers=2, extra_upstreams=extra_up,
                           extra_routes=extra_route))
    reload_and_wait(g)
    c = Client(g.port)
    assert c.get("/other/y").status == 200  # the new route is live
    ra = assert_circuit_open(c.get("/x"), 30)
    assert ra > 1, ra  # the same open period goes on, not a fresh 1 s one
    st = breaker_state(g)
    assert st["state"] == "open" and st["generation"] == gen, st
    assert upstream_requests(u) == 5

    # the breaker's settings change: a fresh closed breaker
    b2 = dict(b, open_duration="20s")
    write_config(g, config([u.addr], b2, workers=2, extra_upstreams=extra_up,
                           extra_routes=extra_route))
    reload_and_wait(g)
    c = Client(g.port)
    r = c.get("/x")
    assert r.status == 200 and r.from_upstream, r
    assert breaker_state(g)["state"] == "closed"
    fail_n(c, 5)
    wait_open(g)
    assert_circuit_open(c.get("/x"), 20)
    c.close()


# ---- outlier ejection ---------------------------------------------------------------------------

def hosts_by_addr(g):
    return {h["address"]: h for h in upstream_entry(g)["hosts"]}


def test_outlier_ejects_a_failing_host_and_restores_it(gateway, upstreams):
    a = upstreams("a")
    b = upstreams("b")
    g = gateway(config([a.addr, b.addr], BREAKER_OFF,
                       outlier={"consecutive_failures": 3, "ejection": "4s",
                                "max_ejected": "50%"}))
    c = Client(g.port)
    seen = {c.get("/x").headers.get("x-upstream") for _ in range(4)}
    assert seen == {"a", "b"}, seen
    a.stop()  # host a now refuses connections
    answers = []
    for _ in range(6):
        r = c.get("/x")
        answers.append(r.headers.get("x-upstream") or r.status)
    assert answers.count(502) == 3 and answers.count("b") == 3, answers
    t_eject = time.monotonic()
    for _ in range(10):
        r = c.get("/x")
        assert r.status == 200 and r.headers["x-upstream"] == "b", r
    hosts = hosts_by_addr(g)
    assert hosts[a.addr]["ejected"] and not hosts[a.addr]["usable"], hosts
    assert hosts[a.addr]["ejections"] == 1 and 0 < hosts[a.addr]["ejected_for_ms"] <= 4000, hosts
    assert not hosts[b.addr]["ejected"], hosts
    m = metrics(g)
    assert sample(m, "breakwater_host_usable", upstream=SVC, host=a.addr) == 0
    assert sample(m, "breakwater_host_usable", upstream=SVC, host=b.addr) == 1
    ej = wait_events(g, "host_ejected")
    assert len(ej) == 1 and ej[0]["fields"]["host"] == a.addr, ej
    assert ej[0]["fields"]["ejection_ms"] == 4000, ej

    rs = wait_events(g, "host_restored", timeout=10)
    assert rs[0]["fields"]["host"] == a.addr, rs
    assert time.monotonic() - t_eject > 3.5
    assert hosts_by_addr(g)[a.addr]["usable"]
    # a takes traffic again (and fails again)
    got = [c.get("/x").status for _ in range(4)]
    assert 502 in got, got
    assert events(g, "no_healthy_hosts") == []


def test_outlier_respects_max_ejected(gateway, upstreams):
    a = upstreams("a")
    b = upstreams("b")
    g = gateway(config([a.addr, b.addr], BREAKER_OFF,
                       outlier={"consecutive_failures": 3, "ejection": "30s",
                                "max_ejected": "50%"}))
    c = Client(g.port)
    a.stop()
    b.stop()
    for _ in range(20):
        r = c.get("/x")
        assert r.status == 502, r  # always a host to try: never all ejected
    hosts = hosts_by_addr(g)
    assert sum(h["ejected"] for h in hosts.values()) == 1, hosts
    # every ejection was decided during the 20 requests; the events of a drain are stored
    # together, so once the first is visible a second one would be too
    drain(g)
    ej = wait_events(g, "host_ejected")
    assert len(ej) == 1, ej
    assert events(g, "no_healthy_hosts") == []


def test_all_hosts_ejected_answers_503_no_healthy_upstream_with_reason_outlier(
        gateway, upstreams):
    a = upstreams("a")
    b = upstreams("b")
    g = gateway(config([a.addr, b.addr], BREAKER_OFF,
                       outlier={"consecutive_failures": 2, "ejection": "2s",
                                "max_ejected": "100%"}))
    c = Client(g.port)
    a.stop()
    b.stop()
    for _ in range(4):
        assert c.get("/x").status == 502
    r = wait_for(lambda: (lambda r: r if r.status == 503 else None)(c.get("/x")), 2,
                 "all hosts ejected")
    assert r.headers.get("x-breakwater-reason") == "outlier", r
    assert r.json()["error"] == "no_healthy_upstream", r
    assert not r.from_upstream
    assert all(h["ejected"] for h in hosts_by_addr(g).values())
    nh = wait_events(g, "no_healthy_hosts")[0]["fields"]
    assert nh["upstream"] == SVC and nh["hosts_ejected"] == 2, nh
    wait_events(g, "no_healthy_hosts_cleared", timeout=10)
    assert len(wait_events(g, "host_restored", n=2)) == 2


# ---- metrics ------------------------------------------------------------------------------------

def test_breaker_state_and_transition_metrics(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"open_duration": "1s", "half_open_requests": 1}))
    c = Client(g.port)
    assert breaker_state_metric(g) == "closed"
    fail_n(c, 5)
    assert breaker_state_metric(g) == "open"
    wait_for(lambda: breaker_state_metric(g) == "half_open", 10, "half_open in the metric")
    r = next_trial(c, "/x")
    assert r.status == 200
    wait_for(lambda: breaker_state_metric(g) == "closed", 10, "closed in the metric")
    assert post_breaker(g, '{"action":"force_open"}').status == 200
    assert breaker_state_metric(g) == "forced_open"
    assert post_breaker(g, '{"action":"force_close"}').status == 200
    assert breaker_state_metric(g) == "forced_closed"
    m = metrics(g)

    def tr(a, b):
        return sample(m, "breakwater_breaker_transitions_total", upstream=SVC, **{"from": a},
                      to=b)
    assert tr("closed", "open") == 1
    assert tr("open", "half_open") == 1
    assert tr("half_open", "closed") == 1
    assert tr("closed", "forced_open") == 1
    assert tr("forced_open", "forced_closed") == 1
    total = sum(v for (n, _), v in m.items() if n == "breakwater_breaker_transitions_total")
    assert total == 5, total


# ---- bugs: tripping outcomes that do not reach the owner in time ---------------------------------

def test_a_success_on_another_worker_before_the_failures_does_not_delay_the_trip(
        gateway, upstreams):
    u = upstreams("u")
    g = gateway(config([u.addr], {"open_duration": "30s", "max_open_duration": "60s"},
                       workers=2))
    wait_for(lambda: len(worker_pids(g)) == 2, 10, "2 workers ready")
    conns = connections_per_worker(g, {0, 1})
    rounds = []
    for _ in range(5):
        assert post_breaker(g, '{"action":"reset"}').status == 200
        drain(g)
        n0 = upstream_requests(u)
        assert conns[1].get("/ok").status == 200  # worker 1: a success, answered
        fail_n(conns[0], 5)                       # then worker 0: five failures in a row
        drain(g)                                  # every record is with the owner now
        st = breaker_state(g)
        rounds.append((st["state"], st["consecutive_failures"], upstream_requests(u) - n0))
    for c in conns.values():
        c.close()
    assert all(r[0] == "open" for r in rounds), (
        f"(state, consecutive_failures, upstream requests) after S(w1) + 5 x F(w0): {rounds}")


@pytest.mark.parametrize("trigger", ["slow_call_rate", "failure_rate"])
def test_a_success_that_trips_the_breaker_opens_it_before_the_next_request(
        gateway, upstreams, trigger):
    u = upstreams("u")
    if trigger == "slow_call_rate":
        b = {"consecutive_failures": 0, "slow_call_duration": "50ms", "slow_call_rate": "100%",
             "min_calls": 3}
        calls = ["/x?delay=80"] * 3                               # the 3rd slow call trips it
    else:
        b = {"consecutive_failures": 0, "failure_rate": "50%", "min_calls": 4}
        calls = ["/x?status=500", "/x?status=500", "/x", "/x"]    # 2 of 4 at the 4th (a success)
    b.update({"window": "30s", "open_duration": "30s", "max_open_duration": "60s"})
    g = gateway(config([u.addr], b, route_timeout="2s"))
    c = Client(g.port)
    rounds = []
    for _ in range(5):
        assert post_breaker(g, '{"action":"reset"}').status == 200
        drain(g)
        n0 = upstream_requests(u)
        for path in calls:
            assert c.get(path).from_upstream
        r = c.get("/x")  # sent as soon as the tripping call was answered
        rounds.append((r.status, upstream_requests(u) - n0))
        wait_open(g)  # it does open
        f = wait_events(g, "breaker_open", n=len(rounds))[-1]["fields"]
        assert f["reason"] == trigger, f
    # The tripping success wakes the owner at once (it used to wait for the 10 ms poll, and then
    # the next request slipped through in every round). The owner thread still races the
    # client's next request, which a loaded 2-core machine (an ASan build under a parallel
    # suite: 2 of 5) sometimes loses: some round must be refused at once, and no round may let
    # more than that one request through. How often the race is won is a latency figure, not a
    # test criterion.
    refused = sum(1 for status, n in rounds if status == 503 and n == len(calls))
    print(f"{trigger}: rounds refused at once {refused}/5: {rounds}")
    assert refused >= 1, f"(status, upstream requests) per round: {rounds}"
    assert all(n <= len(calls) + 1 for _, n in rounds), rounds


SLOW_SYNC_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
/* Test-only: every fsync/fdatasync first sleeps BW_TEST_SYNC_DELAY_MS (a slow or busy disk). */
static void pause_ms(void)
{
    const char *s = getenv("BW_TEST_SYNC_DELAY_MS");
    long ms = s != NULL ? atol(s) : 0;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&ts, &ts) != 0)
        ;
}
int fdatasync(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    pause_ms();
    return real(fd);
}
int fsync(int fd)
{
    static int (*real)(int);
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    pause_ms();
    return real(fd);
}
"""


def test_a_slow_disk_sync_in_the_control_process_does_not_hold_back_a_trip(
        gateway, upstreams, tmp_path):
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler for the fsync shim")
    src = tmp_path / "slowsync.c"
    src.write_text(SLOW_SYNC_SHIM)
    so = tmp_path / "slowsync.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(so), str(src), "-ldl"], check=True,
                   timeout=60)
    asan = os.environ.get("ASAN_OPTIONS", "")
    env = {"LD_PRELOAD": str(so), "BW_TEST_SYNC_DELAY_MS": "250",
           "ASAN_OPTIONS": (asan + ":" if asan else "") + "verify_asan_link_order=0"}
    u = upstreams("u")
    g = gateway(config([u.addr], {"open_duration": "60s", "max_open_duration": "120s"}), env=env)
    c = Client(g.port)
    assert c.get("/ok").status == 200
    wal = os.path.join(g.state_dir, "breakwater.db-wal")

    def wal_stat():
        try:
            st = os.stat(wal)
            return (st.st_size, st.st_mtime_ns)
        except OSError:
            return None

    before = wal_stat()
    # an event (the reset's breaker_override/breaker_closed) for the control process to commit
    assert post_breaker(g, '{"action":"reset"}').status == 200
    wait_for(lambda: wal_stat() != before, 5, "the event commit to write the WAL", interval=0.0005)
    # the commit's fdatasync is running now: trip the breaker meanwhile
    n0 = upstream_requests(u)
    fail_n(c, 5)
    slipped, t_end = 0, time.monotonic() + 0.1
    while time.monotonic() < t_end:
        if c.get("/fail?status=500").circuit_open:
            break
        slipped += 1
    print(f"\nslow sync (250 ms): {slipped} failing calls reached the upstream after the 5th")
    assert upstream_requests(u) - n0 == 5 + slipped
    wait_open(g)
    # with the owner behind the sync, everything in the 100 ms window slipped (122-427 calls);
    # with its own thread only scheduling noise remains (0-2 here, a few more under CI load)
    assert slipped <= 10, (
        f"{slipped} requests sent after the 5th failure was answered reached the upstream "
        f"while the control process was in fdatasync")


# ---- trip lag (measured and printed) -------------------------------------------------------------

@pytest.fixture
def shm_dir():
    """A directory on tmpfs (for a state_dir whose syncs cost nothing); removed at the end
    (requested before `gateway`, so after the gateway has stopped)."""
    import tempfile
    d = tempfile.mkdtemp(prefix="bw-breaker-", dir="/dev/shm")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("state_on", ["disk", "tmpfs"])
def test_trip_lag_sequential_and_concurrent(shm_dir, gateway, upstreams, state_on):
    """The lag from the 5th failure to the first circuit_open answer.

    Sequential: on one keep-alive connection, 5 x status=500, then keep sending status=500 and
    note for each whether it got circuit_open; lag in requests = how many still reached the
    upstream, in microseconds = 5th failure answered -> first circuit_open answered.
    Concurrent: 8 clients send status=500 flat out; slipped = upstream requests - 5 (requests
    already in flight when the 5th failed are counted too).
    With the state database on disk the control process's fdatasyncs stall the owner (see the
    regression test above), so only the tmpfs run asserts on the lag itself; both print it.
    """
    u = upstreams("u")
    text = config([u.addr], {"open_duration": "60s", "max_open_duration": "120s"}, workers=2)
    if state_on == "tmpfs":
        text = f"state_dir: {shm_dir}\n" + text
    g = gateway(text)
    rounds, seq = 40, []
    c = Client(g.port)
    for _ in range(rounds):
        assert post_breaker(g, '{"action":"reset"}').status == 200
        n0 = upstream_requests(u)
        last = None
        for i in range(5):
            last = c.get("/fail?status=500")
            assert last.status == 500 and last.from_upstream, (i, last)
        slipped = 0
        while True:
            r = c.get("/fail?status=500")
            if r.circuit_open:
                break
            assert r.status == 500 and r.from_upstream, r
            slipped += 1
            assert slipped < 20000, "the breaker never opened"
        assert upstream_requests(u) - n0 == 5 + slipped
        seq.append((slipped, (r.t_done - last.t_done) * 1e6, (r.t_done - r.t_sent) * 1e6))
    c.close()
    lag_req = [s[0] for s in seq]
    lag_us = [s[1] for s in seq]
    rtt_us = [s[2] for s in seq]

    conc = []
    for _ in range(5):
        assert post_breaker(g, '{"action":"reset"}').status == 200
        drain(g)
        n0 = upstream_requests(u)
        h = Hammer(g.port, 8, "/fail?status=500")
        try:
            wait_for(lambda: sum(1 for x in h.snapshot() if x[3]) >= 8 * 5, 15,
                     "circuit_open answers")
        finally:
            h.finish()
        assert not h.errors, h.errors[:5]
        res = sorted(h.snapshot(), key=lambda x: x[1])
        passed = [x for x in res if x[4]]
        first_open = next(x for x in res if x[3])
        assert len(passed) >= 5, passed
        # once any client has been told circuit_open, nothing sent later may reach the upstream
        late = [x for x in passed if x[0] > first_open[1]]
        assert not late, f"{len(late)} requests sent after a circuit_open answer reached upstream"
        t5 = passed[4][1]  # the 5th failure answered (by completion time)
        conc.append((upstream_requests(u) - n0 - 5, sum(1 for x in passed if x[0] > t5),
                     (first_open[1] - t5) * 1e6))

    def pct(v, q):
        v = sorted(v)
        return v[min(len(v) - 1, int(q * len(v)))]
    print(f"\n[state_dir on {state_on}] "
          f"trip lag, sequential (1 keep-alive connection, 2 workers, {rounds} rounds): requests "
          f"that still reached the upstream after the 5th failure: median "
          f"{statistics.median(lag_req):g}, max {max(lag_req)}, rounds with any "
          f"{sum(1 for x in lag_req if x)}/{rounds}; 5th failure answered -> first circuit_open "
          f"answered: median {statistics.median(lag_us):.0f} us, p90 {pct(lag_us, 0.9):.0f} us, "
          f"max {max(lag_us):.0f} us (one request round trip: median "
          f"{statistics.median(rtt_us):.0f} us)")
    print(f"[state_dir on {state_on}] trip lag, 8 concurrent clients, 2 workers (5 rounds): "
          f"upstream requests beyond the 5th failure (in flight at the trip included): "
          f"{[x[0] for x in conc]}; of them sent after the 5th failure was answered: "
          f"{[x[1] for x in conc]}; 5th failure answered -> "
          f"first circuit_open answered: {[round(x[2]) for x in conc]} us (negative: a rejection "
          f"was answered before the 5th failure's answer reached its client)")
    if state_on == "tmpfs":
        # normally the breaker is open before the next request arrives
        assert statistics.median(lag_req) == 0, seq
