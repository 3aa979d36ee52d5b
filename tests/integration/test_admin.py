"""The admin API (SPEC section 6) against a real gateway with two workers and real traffic.

Covers /healthz and /readyz, the Prometheus text of /metrics (request counts summed over both
workers, the latency histogram, upstream connection and buffer-pool counters, alerts firing and
acknowledged by tier), the
/api/v1/upstreams JSON and its counters against what the upstreams themselves saw, the Bearer
token (401 + WWW-Authenticate without it, /healthz open, the token never logged), and the
answers for unknown paths (404), wrong methods (405) and endpoints not built yet (501).
"""

import os
import signal

import pytest

from conftest import metrics, post_json, request, sample, wait_for, worker_pids

N_REQUESTS = 24
TOKEN = "bw-test-token-6c1f0e9a27d4"


@pytest.fixture
def gateway(strict_gateway):
    """Every gateway a test here starts must stop with exit 0 (conftest's strict_gateway)."""
    return strict_gateway


# ---- helpers ----------------------------------------------------------------------------------

def upstream_entry(gw, name, headers=None):
    r = gw.admin("/api/v1/upstreams", headers=headers)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("application/json")
    for u in r.json()["upstreams"]:
        if u["name"] == name:
            return u
    raise AssertionError(f"upstream {name!r} missing: {r.body!r}")


def counted(gw, n, route="users-api"):
    """The parsed metrics once breakwater_requests_total{route,code="200"} is n, else None."""
    m = metrics(gw)
    return m if sample(m, "breakwater_requests_total", route=route, code="200") == n else None


def assert_json_error(r, status, code=None):
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("message"), str), body
    if code is not None:
        assert body["error"] == code, body
    return body


@pytest.fixture
def traffic_gateway(gateway, upstreams):
    """Two workers, upstream `users` with two hosts, upstream `idle` that gets no traffic."""
    a = upstreams("users-a")
    b = upstreams("users-b")
    idle = upstreams("idle")
    g = gateway(
        f"""
        workers: 2
        watchdog:
          stall_after: 30s
        upstreams:
          users:
            hosts: ["{a.addr}", "{b.addr}"]
          idle:
            hosts: ["{idle.addr}"]
        routes:
          - name: users-api
            match:
              path_prefix: /api/users
            upstream: users
          - name: idle-api
            match:
              path_prefix: /idle
            upstream: idle
        """
    )
    return g, a, b, idle


# ---- health -----------------------------------------------------------------------------------


def test_healthz_and_readyz(traffic_gateway):
    g, *_ = traffic_gateway
    r = g.admin("/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}, r
    assert r.headers["content-type"].startswith("application/json")
    r = g.admin("/readyz")
    assert r.status == 200, r
    body = r.json()
    assert body["workers"] == 2 and body["workers_ready"] == 2, body


# ---- metrics and counters ---------------------------------------------------------------------


def test_metrics_and_upstream_counters_match_traffic(traffic_gateway):
    g, a, b, idle = traffic_gateway
    workers = worker_pids(g)
    assert len(workers) == 2, workers
    # Half the traffic to each worker: the other one is stopped meanwhile (SIGSTOP), so the one
    # running accepts every connection. The counters must be summed over both workers' slots.
    half = N_REQUESTS // 2
    for phase, (running, stopped) in enumerate([(workers[0], workers[1]),
                                                (workers[1], workers[0])]):
        os.kill(stopped, signal.SIGSTOP)
        try:
            for i in range(half):
                r = g.get(f"/api/users/{phase}/{i}")
                assert r.status == 200, r
        finally:
            os.kill(stopped, signal.SIGCONT)
        n = half * (phase + 1)
        wait_for(lambda: counted(g, n), what=f"{n} requests in /metrics")
    for _ in range(3):
        assert g.get("/no/such/route").status == 404
    m = wait_for(lambda: counted(g, N_REQUESTS), what=f"{N_REQUESTS} requests in /metrics")

    # 404s are counted too, under some route label, and nothing else is
    not_found = sum(v for (name, labels), v in m.items()
                    if name == "breakwater_requests_total" and ("code", "404") in labels)
    assert not_found == 3
    total = sum(v for (name, _), v in m.items() if name == "breakwater_requests_total")
    assert total == N_REQUESTS + 3

    # the latency histogram of the route
    buckets = sorted(
        ((float(dict(labels)["le"]), v) for (name, labels), v in m.items()
         if name == "breakwater_request_duration_seconds_bucket"
         and dict(labels).get("route") == "users-api"),
    )
    assert len(buckets) >= 5, buckets
    assert buckets[-1][0] == float("inf") and buckets[-1][1] == N_REQUESTS, buckets
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), f"buckets not cumulative: {buckets}"
    assert sample(m, "breakwater_request_duration_seconds_count", route="users-api") == N_REQUESTS
    duration_sum = sample(m, "breakwater_request_duration_seconds_sum", route="users-api")
    assert duration_sum is not None and 0 < duration_sum < N_REQUESTS * 5

    # upstream counters in /metrics
    opened = sample(m, "breakwater_upstream_connections_opened_total", upstream="users")
    # each worker keeps its own keep-alive pool and took turns over both hosts: 2 x 2
    assert opened == 4, opened
    assert sample(m, "breakwater_upstream_connections_opened_total", upstream="idle") == 0
    assert sample(m, "breakwater_upstream_requests_total", upstream="users") == N_REQUESTS
    assert sample(m, "breakwater_upstream_outcomes_total", upstream="users",
                  outcome="response") == N_REQUESTS
    hits = sample(m, "breakwater_bufpool_hits_total")
    misses = sample(m, "breakwater_bufpool_misses_total")
    assert hits is not None and misses is not None
    print(f"bufpool hits={hits:.0f} misses={misses:.0f}, connections opened={opened:.0f}")
    assert hits + misses >= N_REQUESTS and 2 <= misses <= 4, (hits, misses)
    assert sample(m, "breakwater_workers", state="ready") == 2

    # /api/v1/upstreams agrees with the traffic and with what the upstreams saw
    seen_by_hosts = a.stats()["requests"] + b.stats()["requests"]
    assert seen_by_hosts == N_REQUESTS
    assert a.stats()["requests"] > 0 and b.stats()["requests"] > 0, "no round robin over hosts"
    users = upstream_entry(g, "users")
    assert sorted(h["address"] for h in users["hosts"]) == sorted([a.addr, b.addr])
    c = users["counters"]
    assert c["requests"] == N_REQUESTS, c
    assert c["outcomes"]["response"] == N_REQUESTS, c
    assert sum(c["outcomes"].values()) == N_REQUESTS, c
    assert c["connections_opened"] == opened, c
    assert c["connections_opened"] + c["connections_reused"] == N_REQUESTS, c
    assert c["connections_opened"] <= a.stats()["connections"] + b.stats()["connections"]
    assert c["inflight"] == 0 and c["connect_failures"] == 0 and c["bulkhead_rejected"] == 0, c
    idle_entry = upstream_entry(g, "idle")
    assert [h["address"] for h in idle_entry["hosts"]] == [idle.addr]
    assert idle_entry["counters"]["requests"] == 0
    assert sum(idle_entry["counters"]["outcomes"].values()) == 0
    assert idle.stats()["requests"] == 0


# ---- alert metrics -----------------------------------------------------------------------------

ALERTS_CONFIG = """
upstreams:
  u:
    hosts: ["127.0.0.1:1"]
routes:
  - name: r
    match:
      path_prefix: /
    upstream: u
alerts:
  channels:
    log:
      type: console
  tiers:
    P0:
      channels: [log]
    P1:
      channels: [log]
    P2:
      channels: [log]
"""

TIERS = ("P0", "P1", "P2")


def by_tier(m, name):
    return {t: sample(m, name, tier=t) for t in TIERS}


def test_alerts_firing_counts_unacknowledged_alerts_by_tier(gateway):
    """breakwater_alerts_firing{tier}: alerts firing and not acknowledged, every tier printed
    (zeros too); acknowledged ones move to breakwater_alerts_acknowledged{tier}; resolved ones
    leave both; a deduplicated raise is not counted twice."""
    g = gateway(ALERTS_CONFIG)
    m = metrics(g)
    assert by_tier(m, "breakwater_alerts_firing") == {"P0": 0, "P1": 0, "P2": 0}, m
    assert by_tier(m, "breakwater_alerts_acknowledged") == {"P0": 0, "P1": 0, "P2": 0}, m
    text = g.admin("/metrics").body.decode()
    for name in ("breakwater_alerts_firing", "breakwater_alerts_acknowledged"):
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge\n" in text, text

    ids = {}
    for tier, service in (("P0", "db"), ("P0", "cache"), ("P2", "cert")):
        r = post_json(g, "/api/v1/alerts", {"summary": f"{service} is unwell", "tier": tier,
                                            "labels": {"service": service}})
        assert r.status == 201, r
        assert r.json()["raised"] == 1, r
        ids[service] = r.json()["ids"][0]
    r = post_json(g, "/api/v1/alerts", {"summary": "db is unwell", "tier": "P0",
                                        "labels": {"service": "db"}})
    assert r.status == 201 and r.json()["updated"] == 1, r
    m = metrics(g)
    assert by_tier(m, "breakwater_alerts_firing") == {"P0": 2, "P1": 0, "P2": 1}, m
    assert by_tier(m, "breakwater_alerts_acknowledged") == {"P0": 0, "P1": 0, "P2": 0}, m

    r = post_json(g, f"/api/v1/alerts/{ids['db']}/ack", {})
    assert r.status == 200 and r.json()["alert"]["status"] == "acknowledged", r
    m = metrics(g)
    assert by_tier(m, "breakwater_alerts_firing") == {"P0": 1, "P1": 0, "P2": 1}, m
    assert by_tier(m, "breakwater_alerts_acknowledged") == {"P0": 1, "P1": 0, "P2": 0}, m

    for service in ("db", "cert"):
        r = post_json(g, f"/api/v1/alerts/{ids[service]}/resolve", {})
        assert r.status == 200, r
    m = metrics(g)
    assert by_tier(m, "breakwater_alerts_firing") == {"P0": 1, "P1": 0, "P2": 0}, m
    assert by_tier(m, "breakwater_alerts_acknowledged") == {"P0": 0, "P1": 0, "P2": 0}, m
    # the firing counts agree with the alert list
    listed = g.admin("/api/v1/alerts?status=firing").json()["alerts"]
    assert [a["tier"] for a in listed] == ["P0"], listed


# ---- token ------------------------------------------------------------------------------------


def test_admin_token_required_except_healthz_and_never_logged(gateway, upstreams):
    u = upstreams("u")
    g = gateway(
        f"""
        admin:
          listen: "127.0.0.1:{{admin_port}}"
          token: "${{{{BW_TEST_TOKEN}}}}"
        upstreams:
          u:
            hosts: ["{u.addr}"]
        routes:
          - name: all
            match:
              path_prefix: /
            upstream: u
        """,
        env={"BW_TEST_TOKEN": TOKEN},
        wait_ready=False,
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def ready():
        if g.proc.poll() is not None:
            raise AssertionError(f"breakwater exited {g.proc.returncode}:\n{g.logs()}")
        try:
            return request(g.admin_port, path="/readyz", headers=auth, timeout=1).status == 200
        except OSError:
            return False

    wait_for(ready, timeout=15, what="readyz with the token")

    r = g.admin("/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}
    for path in ("/readyz", "/metrics", "/api/v1/upstreams", "/no/such/path"):
        for headers in ({}, {"Authorization": "Bearer wrong-token"},
                        {"Authorization": f"Bearer {TOKEN}x"},
                        {"Authorization": f"Bearer {TOKEN[:-1]}"},
                        {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": TOKEN}):
            r = g.admin(path, headers=headers)
            assert_json_error(r, 401)
            assert r.headers.get("www-authenticate", "").startswith("Bearer"), r
            assert TOKEN not in r.body.decode()
    r = g.admin("/readyz", headers=auth)
    assert r.status == 200 and r.json()["workers_ready"] == 1, r
    r = g.admin("/metrics", headers=auth)
    assert r.status == 200 and b"breakwater_requests_total" in r.body
    assert TOKEN.encode() not in r.body
    r = g.admin("/api/v1/upstreams", headers=auth)
    assert r.status == 200 and r.json()["upstreams"][0]["name"] == "u"
    assert TOKEN.encode() not in r.body
    # the public listener needs no admin token
    assert g.get("/x").status == 200

    assert g.stop() == 0
    logs = g.full_log()
    assert logs.strip(), "no logs at all"
    assert TOKEN not in logs, "the admin token appears in the gateway's logs"


# ---- paths and methods ------------------------------------------------------------------------

# SPEC section 6's /api/v1 endpoints (POST bodies are invalid on purpose: no side effects once built)
SPEC_API = [  # (method, path, body, expected status)
    ("GET", "/api/v1/alerts?status=firing", None, 200),
    ("POST", "/api/v1/alerts", b'{"tier": "P9"}', 400),
    ("GET", "/api/v1/alerts/999999", None, 404),
    ("POST", "/api/v1/alerts/999999/ack", b"{}", 404),
    ("POST", "/api/v1/alerts/999999/resolve", b"{}", 404),
    ("GET", "/api/v1/silences", None, 200),
    ("DELETE", "/api/v1/silences/999999", None, 404),
    ("GET", "/api/v1/events?since=0", None, 200),
    ("POST", "/api/v1/upstreams/users/breaker", b'{"action": "no-such-action"}', 400),
]


def test_unknown_path_404_wrong_method_405(traffic_gateway):
    g, *_ = traffic_gateway
    for path in ("/", "/nope", "/api/v2/upstreams", "/metricsx", "/api/v1", "/healthz/x"):
        assert_json_error(g.admin(path), 404, "not_found")
    for method, path in (("POST", "/metrics"), ("POST", "/readyz"),
                         ("DELETE", "/api/v1/upstreams"), ("PUT", "/metrics")):
        assert_json_error(g.admin(path, method=method, body=b"{}"), 405)
    assert g.admin("/readyz").status == 200


def test_every_spec_endpoint_answers_json_with_the_right_status(traffic_gateway):
    """Each SPEC /api/v1 endpoint is built: valid requests get 200, unknown ids 404 with a JSON
    error, bad bodies 400; never a crash (the control process stays up)."""
    g, *_ = traffic_gateway
    for method, path, body, status in SPEC_API:
        r = g.admin(path, method=method, body=body)
        assert r.headers.get("content-type", "").startswith("application/json"), (path, r)
        r.json()
        assert r.status == status, (method, path, r)
        if status >= 400:
            assert r.json()["error"] and r.json()["message"], (method, path, r)
    assert g.admin("/readyz").status == 200


def test_unknown_path_under_api_v1_is_404(traffic_gateway):
    g, *_ = traffic_gateway
    for path in ("/api/v1/upstream", "/api/v1/no-such-thing", "/api/v1/upstreams/users/nope"):
        assert_json_error(g.admin(path), 404, "not_found")
