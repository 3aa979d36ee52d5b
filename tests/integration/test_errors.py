"""Breakwater's own errors (SPEC section 3's error table) under real upstream failures.

Each test makes one real bad condition - nothing listening, a black-holed connect, a slow, resetting,
stalling or closing upstream (bw_upstream knobs), a full bulkhead, a spent deadline, an upstream
speaking garbage - and checks what the client gets: status, the JSON body (`error`, `message`,
`request_id` equal to the `X-Request-Id` response header), `X-Breakwater-Reason`, and the outcome
counted in the admin API's `/api/v1/upstreams`. Once the response has started, a failure can only
cut the stream: those tests check that the client sees a truncated response. After every failure
the gateway must still serve a good upstream on another route from the same worker processes.
"""

import http.client
import socket
import subprocess
import threading
import time

import pytest

from conftest import Response, free_port

BODY_SIZE = 100000


@pytest.fixture
def gateway(strict_gateway):
    """Every gateway a test here starts must stop with exit 0 (conftest's strict_gateway)."""
    return strict_gateway


# ---- helpers ----------------------------------------------------------------------------------


def children(pid):
    """PIDs of the direct children of pid (the gateway's control process and workers)."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=10
    ).stdout
    return sorted(int(x) for x in out.split())


def make_config(bad_addr, good_addr, *, route_timeout="5s", connect_timeout="1s",
                max_concurrent=1000, workers=1):
    # No braces here: Gateway runs str.format over the text.
    return f"""
workers: {workers}
upstreams:
  good:
    hosts: ["{good_addr}"]
  bad:
    hosts: ["{bad_addr}"]
    connect_timeout: {connect_timeout}
    timeout: 10s
    max_concurrent: {max_concurrent}
routes:
  - name: good
    match:
      path_prefix: /good
    upstream: good
  - name: bad
    match:
      path_prefix: /bad
    upstream: bad
    timeout: {route_timeout}
"""


class Rig:
    """A good upstream, a bad one (or a given address) and a gateway routing /good and /bad."""

    def __init__(self, gateway, upstreams, bad_addr=None, bad_args=(), **cfg):
        self.good = upstreams("good")
        self.bad = None
        if bad_addr is None:
            self.bad = upstreams("bad", extra=tuple(bad_args))
            bad_addr = self.bad.addr
        self.gw = gateway(make_config(bad_addr, self.good.addr, **cfg))
        self.pids = children(self.gw.proc.pid)
        assert len(self.pids) == cfg.get("workers", 1) + 1, self.pids

    def counters(self, upstream="bad"):
        r = self.gw.admin("/api/v1/upstreams")
        assert r.status == 200, r
        for u in r.json()["upstreams"]:
            if u["name"] == upstream:
                return u["counters"]
        raise AssertionError(f"upstream {upstream!r} not listed: {r.body!r}")

    def wait_outcome(self, kind, expected, upstream="bad", timeout=5):
        """Waits until outcome `kind` reaches `expected`, then checks it is exactly that."""
        deadline = time.monotonic() + timeout
        while True:
            outcomes = self.counters(upstream)["outcomes"]
            if outcomes[kind] >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert outcomes[kind] == expected, outcomes
        return outcomes

    def upstream_requests(self):
        return self.bad.stats()["requests"]

    def check_still_serving(self):
        """The gateway answers a good route, and no worker was replaced meanwhile."""
        r = self.gw.get("/good/after")
        assert r.status == 200, r
        assert r.json()["upstream"] == "good"
        assert self.gw.proc.poll() is None
        assert children(self.gw.proc.pid) == self.pids, "a child process was replaced"


def assert_error(resp, status, code, reason, request_id=None):
    assert resp.status == status, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp
    body = resp.json()
    assert body["error"] == code, body
    assert isinstance(body.get("message"), str) and body["message"], body
    rid = resp.headers.get("x-request-id")
    assert rid, resp
    assert body["request_id"] == rid, (body, rid)
    if request_id is not None:
        assert rid == request_id
    assert resp.headers.get("x-breakwater-reason") == reason, resp


def timed_get(port, path, **kw):
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=kw.pop("timeout", 15))
    try:
        conn.request(kw.pop("method", "GET"), path, body=kw.pop("body", None),
                     headers=kw.pop("headers", {}))
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    resp = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    return resp, time.monotonic() - t0


def fetch_cut(port, path, timeout=15):
    """GET whose body may break off. Returns (status, headers, body bytes, error, seconds)."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    status, headers, body, error = None, {}, b"", None
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        status = r.status
        headers = {k.lower(): v for k, v in r.getheaders()}
        try:
            body = r.read()
        except http.client.IncompleteRead as e:
            body, error = e.partial, e
        except (ConnectionError, socket.timeout) as e:
            error = e
    except (ConnectionError, http.client.HTTPException) as e:
        error = e
    finally:
        conn.close()
    return status, headers, body, error, time.monotonic() - t0


# ---- no route, connect failures ---------------------------------------------------------------


def test_no_route_is_404_no_route(gateway, upstreams):
    rig = Rig(gateway, upstreams)
    r = rig.gw.get("/nowhere/at/all", headers={"X-Request-Id": "req-no-route-1"})
    assert_error(r, 404, "no_route", "no_route", request_id="req-no-route-1")
    r = rig.gw.get("/goodness")  # /good matches whole segments only
    assert_error(r, 404, "no_route", "no_route")
    assert rig.upstream_requests() == 0
    assert rig.good.stats()["requests"] == 0
    rig.check_still_serving()


def test_connect_refused_is_502_unavailable_at_once(gateway, upstreams):
    dead = free_port()  # bound, then closed: nothing listens there
    rig = Rig(gateway, upstreams, bad_addr=f"127.0.0.1:{dead}")
    r, elapsed = timed_get(rig.gw.port, "/bad/x", headers={"X-Request-Id": "refused-1"})
    assert_error(r, 502, "upstream_unavailable", "unavailable", request_id="refused-1")
    assert elapsed < 2.0, f"a refused connect took {elapsed:.3f}s"
    rig.wait_outcome("connect_refused", 1)
    assert rig.counters()["connect_failures"] == 1
    rig.check_still_serving()


def test_blackholed_connect_is_502_after_connect_timeout(gateway, upstreams):
    rig = Rig(gateway, upstreams, bad_args=["--blackhole"], connect_timeout="300ms",
              route_timeout="5s")
    # The black hole listens with backlog 0 and never accepts: once one connection sits in its
    # accept queue, the kernel drops further SYNs. Fill it (the second filler makes sure).
    fillers = []
    try:
        s = socket.create_connection(("127.0.0.1", rig.bad.port), timeout=3)
        fillers.append(s)
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", rig.bad.port))
        fillers.append(s)
        probe = socket.socket()
        probe.settimeout(0.3)
        with pytest.raises(OSError):  # the queue really is full: a connect goes unanswered
            probe.connect(("127.0.0.1", rig.bad.port))
        probe.close()

        r, elapsed = timed_get(rig.gw.port, "/bad/x")
        assert_error(r, 502, "upstream_unavailable", "unavailable")
        assert 0.25 <= elapsed < 3.0, f"connect timeout 300ms answered after {elapsed:.3f}s"
        print(f"black-holed connect answered after {elapsed:.3f}s")
        rig.wait_outcome("connect_timeout", 1)
        assert rig.counters()["outcomes"]["timeout"] == 0
    finally:
        for s in fillers:
            s.close()
    rig.check_still_serving()


# ---- timeouts -----------------------------------------------------------------------------------


def test_slow_upstream_is_504_at_route_timeout(gateway, upstreams):
    rig = Rig(gateway, upstreams, route_timeout="500ms")
    r, elapsed = timed_get(rig.gw.port, "/bad/x?delay=3000")
    assert_error(r, 504, "upstream_timeout", "timeout")
    assert 0.4 <= elapsed < 2.5, f"route timeout 500ms answered after {elapsed:.3f}s"
    rig.wait_outcome("timeout", 1)
    assert rig.upstream_requests() == 1
    rig.check_still_serving()


def test_spent_deadline_is_504_without_contacting_upstream(gateway, upstreams):
    rig = Rig(gateway, upstreams)
    r, elapsed = timed_get(rig.gw.port, "/bad/x", headers={"X-Request-Timeout-Ms": "0"})
    assert_error(r, 504, "upstream_timeout", "timeout")
    assert elapsed < 2.0
    stats = rig.bad.stats()
    assert stats["requests"] == 0 and stats["connections"] == 1, stats  # only our /_stats call
    assert rig.counters()["requests"] == 0
    # a caller's short (not spent) deadline still reaches the upstream
    r = rig.gw.get("/bad/x", headers={"X-Request-Timeout-Ms": "3000"})
    assert r.status == 200, r
    assert 0 < int(r.json()["headers"]["x-request-timeout-ms"]) <= 3000
    rig.check_still_serving()


# ---- resets and broken responses ------------------------------------------------------------


def test_reset_before_response_is_502_unavailable(gateway, upstreams):
    rig = Rig(gateway, upstreams)
    r, elapsed = timed_get(rig.gw.port, "/bad/x?reset=1")
    assert_error(r, 502, "upstream_unavailable", "unavailable")
    assert elapsed < 3.0
    rig.wait_outcome("reset", 1)
    rig.check_still_serving()


def test_reset_of_post_is_502_and_not_resent(gateway, upstreams):
    rig = Rig(gateway, upstreams)
    # a pooled keep-alive connection to the upstream exists first: a broken pooled connection is
    # the case where an idempotent request would be re-sent; a POST must never be
    r = rig.gw.get("/bad/warm")
    assert r.status == 200, r
    assert rig.upstream_requests() == 1
    r, _ = timed_get(rig.gw.port, "/bad/x?reset=1", method="POST", body=b'{"order": 1}',
                     headers={"Content-Type": "application/json"})
    assert_error(r, 502, "upstream_unavailable", "unavailable")
    rig.wait_outcome("reset", 1)
    assert rig.upstream_requests() == 2, "the POST reached the upstream more than once"
    assert rig.counters()["requests"] == 2
    rig.check_still_serving()


def test_reset_of_pooled_get_is_retried_once_then_502(gateway, upstreams):
    """README: a pooled connection that breaks before any response byte is retried once on a
    new connection, for idempotent methods only. One request, one outcome."""
    rig = Rig(gateway, upstreams)
    assert rig.gw.get("/bad/warm").status == 200  # leaves a pooled connection
    r, _ = timed_get(rig.gw.port, "/bad/x?reset=1")
    assert_error(r, 502, "upstream_unavailable", "unavailable")
    rig.wait_outcome("reset", 1)
    assert rig.upstream_requests() == 1 + 2, "expected exactly one retry"
    m = rig.gw.admin("/metrics").body.decode()
    assert 'breakwater_upstream_retries_total{upstream="bad"} 1' in m
    c = rig.counters()
    assert c["requests"] == 2 and sum(c["outcomes"].values()) == 2, c
    rig.check_still_serving()


def test_reset_mid_response_truncates_and_gateway_keeps_serving(gateway, upstreams):
    rig = Rig(gateway, upstreams)
    status, headers, body, error, _ = fetch_cut(
        rig.gw.port, f"/bad/x?reset_after=1000&size={BODY_SIZE}")
    assert status == 200
    assert headers.get("content-length") == str(BODY_SIZE)
    assert len(body) < BODY_SIZE and error is not None, (len(body), error)
    rig.wait_outcome("reset", 1)
    r = rig.gw.get(f"/bad/x?size={BODY_SIZE}")  # the same upstream, whole this time
    assert r.status == 200 and len(r.body) == BODY_SIZE
    rig.check_still_serving()


def test_stall_mid_body_is_cut_at_deadline(gateway, upstreams):
    rig = Rig(gateway, upstreams, route_timeout="500ms")
    status, _, body, error, elapsed = fetch_cut(
        rig.gw.port, f"/bad/x?stall_after=1000&size={BODY_SIZE}")
    assert status == 200
    assert len(body) < BODY_SIZE and error is not None, (len(body), error)
    assert 0.4 <= elapsed < 3.0, f"a stalled body was cut after {elapsed:.3f}s"
    rig.wait_outcome("timeout", 1)
    rig.check_still_serving()


def test_close_mid_body_truncates(gateway, upstreams):
    rig = Rig(gateway, upstreams)
    status, _, body, error, elapsed = fetch_cut(
        rig.gw.port, f"/bad/x?close_after=1000&size={BODY_SIZE}")
    assert status == 200
    assert len(body) < BODY_SIZE and error is not None, (len(body), error)
    assert elapsed < 3.0
    rig.wait_outcome("reset", 1)
    rig.check_still_serving()


class GarbageServer:
    """A TCP server that reads a request head and answers bytes that are not HTTP."""

    def __init__(self, answer=b"HELLO\r\n\r\n"):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.requests = 0
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with c:
                c.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = c.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    if data:
                        self.requests += 1
                        c.sendall(self.answer)
                except OSError:
                    pass

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()


GARBAGE = {
    "not_http": b"HELLO\r\n\r\n",
    "closed_silently": b"",
    "conflicting_lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    "negative_length": b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    "bad_header_line": b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    "head_over_64k": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_malformed_upstream_response_is_502(gateway, upstreams, kind):
    garbage = GarbageServer(GARBAGE[kind])
    try:
        rig = Rig(gateway, upstreams, bad_addr=garbage.addr)
        r, elapsed = timed_get(rig.gw.port, "/bad/x")
        assert_error(r, 502, "upstream_unavailable", "unavailable")
        assert elapsed < 3.0
        assert garbage.requests == 1, "the request was sent more than once"
        rig.wait_outcome("reset", 1)
        rig.check_still_serving()
    finally:
        garbage.stop()


# ---- bulkhead -------------------------------------------------------------------------------


def test_bulkhead_full_is_503_and_never_reaches_upstream(gateway, upstreams):
    rig = Rig(gateway, upstreams, max_concurrent=2, route_timeout="10s")
    results = [None] * 3
    barrier = threading.Barrier(3)

    def call(i):
        barrier.wait()
        try:
            results[i] = timed_get(rig.gw.port, "/bad/x?delay=1500")[0]
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(r is None or isinstance(r, Exception) for r in results), results
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 503], results
    rejected = next(r for r in results if r.status == 503)
    assert_error(rejected, 503, "upstream_overloaded", "bulkhead")
    assert rig.upstream_requests() == 2, "the rejected request reached the upstream"
    c = rig.counters()
    assert c["bulkhead_rejected"] == 1 and c["requests"] == 2, c
    assert c["inflight"] == 0, c
    # capacity comes back once the slow calls are done
    r = rig.gw.get("/bad/x")
    assert r.status == 200, r
    rig.check_still_serving()
