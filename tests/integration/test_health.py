"""Active health checks (SPEC section 2 `health_check`, section 3 host pick) with real upstreams.

The prober (gateway/health.c, docs/health.md) runs in the control process; workers skip hosts it
marked down. Each test flips a real bw_upstream's /health with `--unhealthy-file` (503 while the
file exists) or black-holes a host, then checks what clients see (which host answers, from
`X-Upstream`), what the admin API reports (`/api/v1/upstreams` host `health`), and the 503
`no_healthy_upstream` with `X-Breakwater-Reason: no_host` when no host is left. One test checks
that a restarted control process resumes from the verdicts in shared memory, one that 320
black-holed hosts never hold more than GW_HEALTH_MAX_INFLIGHT probe sockets at once.

Every test needs the control process to run the prober and the request path to skip down hosts
(the lead's wiring): until then they are skipped unless BW_HEALTH_WIRED=1.
"""

import os
import signal
import socket
import time

import pytest



MAX_INFLIGHT = 64  # GW_HEALTH_MAX_INFLIGHT in gateway/health.h
HC = "{ path: /health, interval: 200ms, timeout: 100ms, healthy_threshold: 2, unhealthy_threshold: 2 }"
# Two failures 200 ms apart, plus up to one interval until the first of them, plus a timeout:
# about 0.5 s. Leave room for a loaded machine and a sanitizer build.
VERDICT_WITHIN_S = 1.5


@pytest.fixture
def gateway(strict_gateway):
    """Every gateway a test here starts must stop with exit 0 (conftest's strict_gateway)."""
    return strict_gateway


@pytest.fixture
def blackholes():
    """Listeners that never accept, each with its accept queue (backlog 0) filled by one
    connection: further SYNs are dropped, so connects hang until the prober's timeout."""
    socks = []

    def make():
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        filler = socket.create_connection(lst.getsockname(), timeout=2)
        socks.extend((lst, filler))
        return lst.getsockname()[1]

    yield make
    for s in socks:
        s.close()


# ---- helpers ----------------------------------------------------------------------------------


def yaml_escape(text):
    """conftest formats the config with str.format: double the braces of YAML flow maps."""
    return text.replace("{", "{{").replace("}", "}}")


def config(hosts, upstream="users", extra_upstreams=""):
    hosts = ", ".join(f'"{h}"' for h in hosts)
    return yaml_escape(
        f"""
workers: 2
upstreams:
  {upstream}:
    hosts: [{hosts}]
    connect_timeout: 300ms
    health_check: {HC}
{extra_upstreams}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: {upstream} }}
"""
    )


def health(g, upstream="users"):
    """{address: health} from the admin API."""
    for u in g.admin("/api/v1/upstreams", timeout=5).json()["upstreams"]:
        if u["name"] == upstream:
            return {h["address"]: h["health"] for h in u["hosts"]}
    raise AssertionError(f"no upstream {upstream}")


def wait_for(predicate, timeout, what, interval=0.02):
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def answered_by(g, n=20):
    """Sends n requests (fresh connections); returns the list of X-Upstream names of the 200s and
    fails on anything else."""
    names = []
    for _ in range(n):
        r = g.get("/api/x", timeout=5)
        assert r.status == 200, r
        names.append(r.headers["x-upstream"])
    return names


def unhealthy_file(tmp_path, name):
    return str(tmp_path / f"{name}.unhealthy")


def checked_upstream(upstreams, tmp_path, name):
    return upstreams(name, extra=("--unhealthy-file", unhealthy_file(tmp_path, name)))


def pids_from_logs(g):
    out = {}
    for line in g.log_lines():
        if line.get("msg") == "admin API ready":
            out["control"] = line["pid"]
    return out


# ---- tests ------------------------------------------------------------------------------------


def test_unhealthy_host_leaves_the_rotation_and_comes_back(gateway, upstreams, tmp_path):
    a = checked_upstream(upstreams, tmp_path, "a")
    b = checked_upstream(upstreams, tmp_path, "b")
    g = gateway(config([a.addr, b.addr]))
    wait_for(lambda: health(g) == {a.addr: "up", b.addr: "up"}, 5, "both hosts probed up")
    assert set(answered_by(g)) == {"a", "b"}
    assert a.stats()["health_checks"] >= 1 and b.stats()["health_checks"] >= 1

    open(unhealthy_file(tmp_path, "a"), "w").close()
    took = wait_for(lambda: health(g)[a.addr] == "down", 5, "a marked down")
    print(f"a marked down {took:.3f}s after its /health turned 503")
    assert took < VERDICT_WITHIN_S, f"a marked down only after {took:.2f}s"
    assert health(g)[b.addr] == "up"
    before = a.stats()["requests"]
    assert set(answered_by(g, 30)) == {"b"}
    assert a.stats()["requests"] == before  # not even tried
    # the prober keeps probing a down host, so that it can come back
    checks = a.stats()["health_checks"]
    time.sleep(0.5)
    assert a.stats()["health_checks"] > checks

    os.unlink(unhealthy_file(tmp_path, "a"))
    took = wait_for(lambda: health(g)[a.addr] == "up", 5, "a marked up again")
    print(f"a marked up {took:.3f}s after its /health turned 200")
    assert took < VERDICT_WITHIN_S, f"a back only after {took:.2f}s"
    assert set(answered_by(g)) == {"a", "b"}


def test_no_healthy_host_is_503_no_healthy_upstream(gateway, upstreams, tmp_path):
    a = checked_upstream(upstreams, tmp_path, "a")
    b = checked_upstream(upstreams, tmp_path, "b")
    g = gateway(config([a.addr, b.addr]))
    wait_for(lambda: health(g) == {a.addr: "up", b.addr: "up"}, 5, "both hosts probed up")

    for name in ("a", "b"):
        open(unhealthy_file(tmp_path, name), "w").close()
    wait_for(lambda: health(g) == {a.addr: "down", b.addr: "down"}, 5, "both hosts down")
    before = (a.stats()["requests"], b.stats()["requests"])
    for _ in range(5):
        r = g.get("/api/x", headers={"X-Request-Id": "hc-none-1"})
        assert r.status == 503, r
        assert r.headers["x-breakwater-reason"] == "no_host"
        body = r.json()
        assert body["error"] == "no_healthy_upstream"
        assert body["request_id"] == "hc-none-1"
    assert (a.stats()["requests"], b.stats()["requests"]) == before

    # one host healthy again is enough
    os.unlink(unhealthy_file(tmp_path, "b"))
    wait_for(lambda: health(g)[b.addr] == "up", 5, "b marked up again")
    assert set(answered_by(g)) == {"b"}


def test_blackholed_host_is_marked_down_by_probe_timeouts(gateway, upstreams, tmp_path):
    good = checked_upstream(upstreams, tmp_path, "good")
    hole = upstreams("hole", extra=("--blackhole",))
    # fill its accept queue (backlog 0): later connects get no SYN-ACK
    filler = socket.create_connection(("127.0.0.1", hole.port), timeout=2)
    try:
        g = gateway(config([good.addr, hole.addr]))
        took = wait_for(lambda: health(g)[hole.addr] == "down", 5, "the black hole marked down")
        print(f"black hole marked down {took:.3f}s after start")
        assert health(g)[good.addr] == "up"
        # timeouts, not refusals: the connects were left hanging and cut by the probe timeout
        assert set(answered_by(g, 20)) == {"good"}
        started = time.monotonic()
        answered_by(g, 10)
        assert time.monotonic() - started < 2  # nobody waits for the black hole's connect
    finally:
        filler.close()


def test_restarted_control_process_keeps_the_verdicts(gateway, upstreams, tmp_path):
    a = checked_upstream(upstreams, tmp_path, "a")
    b = checked_upstream(upstreams, tmp_path, "b")
    g = gateway(config([a.addr, b.addr]))
    wait_for(lambda: health(g) == {a.addr: "up", b.addr: "up"}, 5, "both hosts probed up")
    open(unhealthy_file(tmp_path, "a"), "w").close()
    wait_for(lambda: health(g)[a.addr] == "down", 5, "a marked down")

    control = pids_from_logs(g)["control"]
    os.kill(control, signal.SIGKILL)
    # workers read the verdict from shared memory: no control process needed to keep a out
    assert set(answered_by(g, 10)) == {"b"}

    def new_control_serving():
        pid = pids_from_logs(g).get("control")
        if pid in (None, control):
            return False
        try:
            return health(g)
        except OSError:
            return False

    wait_for(new_control_serving, 10, "a new control process")
    # resumed, not reset to "unknown" (which would count as usable)
    assert health(g)[a.addr] == "down"
    assert set(answered_by(g, 10)) == {"b"}
    os.unlink(unhealthy_file(tmp_path, "a"))
    wait_for(lambda: health(g)[a.addr] == "up", 5, "a marked up by the new prober")
    assert set(answered_by(g)) == {"a", "b"}


def socket_inodes(pid):
    """Inodes of the sockets process `pid` has open now."""
    out = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            out.add(target)
    return out


def probe_sockets(pid, long_lived, reads=3):
    """Sockets of the control process other than `long_lived` ones (listeners, ...): its probes.

    Walking a process's fd table is not an atomic snapshot: a probe that closes during the walk
    and its replacement can both be counted. So this takes the least of a few back-to-back
    walks: a real excess lasts as long as a probe (up to its timeout, 200 ms here) and shows in
    every walk; a double count does not survive the next. (/proc/net/tcp is no better: on a busy
    machine one read of it takes tens of milliseconds.)"""
    return min(len(socket_inodes(pid) - long_lived) for _ in range(reads))


def test_many_blackholed_hosts_never_use_more_than_max_inflight_sockets(
    gateway, upstreams, blackholes
):
    ports = [blackholes() for _ in range(64)]
    hosts = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    hc = "{ interval: 500ms, timeout: 200ms, unhealthy_threshold: 1 }"
    extra = "".join(f"  fleet{k}:\n    hosts: [{hosts}]\n    health_check: {hc}\n" for k in range(5))
    good = upstreams("good")
    g = gateway(config([good.addr], extra_upstreams=extra))
    control = pids_from_logs(g)["control"]
    # sockets open both now and 300 ms later outlive any probe (timeout 200 ms): not probes
    first = socket_inodes(control)
    time.sleep(0.3)
    long_lived = first & socket_inodes(control)
    assert len(long_lived) < 16, long_lived
    peak = 0
    deadline = time.monotonic() + 3  # 320 probes of 200 ms through 64 slots: 1 s per round
    while time.monotonic() < deadline:
        peak = max(peak, probe_sockets(control, long_lived))
        time.sleep(0.005)
    print(f"at most {peak} probe sockets open at once (bound {MAX_INFLIGHT})")
    assert peak <= MAX_INFLIGHT, f"{peak} probe sockets open at once"
    assert peak >= MAX_INFLIGHT // 2, f"only {peak} seen: the sampling missed the load"

    def fleet_down():
        ups = g.admin("/api/v1/upstreams", timeout=5).json()["upstreams"]
        return all(
            h["health"] == "down" for u in ups if u["name"].startswith("fleet") for h in u["hosts"]
        )

    wait_for(fleet_down, 10, "all 320 black-holed hosts marked down")
    # the good upstream was probed and served all along
    assert set(answered_by(g, 5)) == {"good"}
