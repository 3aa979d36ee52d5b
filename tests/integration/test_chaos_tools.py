"""Self-tests of the chaos toolkit (chaos/README.md): bw_faultproxy, bw_load and netns.sh.

The chaos scenarios trust these tools to inject exactly the fault they ask for and to count
every request, so each fault kind is checked against a real bw_upstream with a raw socket
(bytes received, then EOF / reset / silence), and bw_load's CSV and summary are checked against
known answers (all ok, all refused, all timed out, a given status). The netns test runs only as
root with `ip` and `nft` available, and removes everything it created in a `finally`.

Binaries: $BW_FAULTPROXY / $BW_LOAD when set, else bw_faultproxy / bw_load next to $BW_BINARY
(the build root), else they are compiled from chaos/*.c into a temporary directory so the tests
still run before the build wires them in. Every process is tracked by PID and stopped at teardown.
"""

import http.client
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import BINARY, SOURCE_DIR, UPSTREAM, free_port, request

PATTERN = b"0123456789abcdef"  # bw_upstream's size= body: this, repeated
CHAOS = os.path.join(SOURCE_DIR, "chaos")


# ---- locating or building the tools ------------------------------------------------------


def _build(name, src, libs, outdir):
    out = os.path.join(outdir, name)
    cmd = ["cc", "-std=gnu11", "-O2", "-D_GNU_SOURCE", os.path.join(CHAOS, src), "-o", out]
    subprocess.run(cmd + libs, check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def tools():
    found = {}
    tmp = None
    for key, env, name, src, libs in (
        ("proxy", "BW_FAULTPROXY", "bw_faultproxy", "faultproxy.c", ["-luv", "-lh2o", "-ljansson"]),
        ("load", "BW_LOAD", "bw_load", "bw_load.c", ["-luv", "-lh2o", "-ljansson", "-lm"]),
    ):
        path = os.environ.get(env) or os.path.join(os.path.dirname(BINARY), name)
        if not os.access(path, os.X_OK):
            tmp = tmp or tempfile.mkdtemp(prefix="bw-chaos-tools-")
            path = _build(name, src, libs, tmp)
        found[key] = path
    yield found
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_lines(proc, n, timeout=10):
    """The first n lines of proc's stdout (opened unbuffered, binary), or RuntimeError if they
    do not arrive within timeout. Reads the fd directly: a buffered readline could swallow the
    second line while select() waits for it."""
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(f"expected {n} lines on stdout, got {buf!r}")
            data = os.read(fd, 4096)
            if not data:
                raise RuntimeError(f"stdout closed after {buf!r}")
            buf += data
    return buf.decode().splitlines()[:n]


def _stop(proc, timeout=5):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


class FaultProxy:
    def __init__(self, path, target_port, extra=()):
        self.proc = subprocess.Popen(
            [path, "--target", f"127.0.0.1:{target_port}", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        try:
            nproxies = 1 + sum(1 for arg in extra if arg == "--target")
            lines = _read_lines(self.proc, nproxies + 1)
            assert all(line.startswith("PORT ") for line in lines[:-1]), lines
            assert lines[-1].startswith("CONTROL "), lines
            self.ports = [int(line.split()[1]) for line in lines[:-1]]
            self.port = self.ports[0]
            self.control = int(lines[-1].split()[1])
        except Exception:
            _stop(self.proc)
            raise

    def api(self, method, path, body=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.control, timeout=5)
        try:
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            conn.request(method, path, body=data)
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"null")
        finally:
            conn.close()

    def add(self, **fault):
        status, reply = self.api("POST", "/faults", fault)
        assert status == 201, reply
        return reply["id"]

    def clear(self):
        assert self.api("DELETE", "/faults")[0] == 200

    def stats(self):
        return self.api("GET", "/stats")[1]

    def stop(self):
        return _stop(self.proc)


@pytest.fixture
def upstream(upstreams):
    return upstreams("chaos")


@pytest.fixture
def proxy(tools, upstream):
    started = []

    def start(target=None, extra=()):
        fp = FaultProxy(tools["proxy"], target or upstream.port, extra)
        started.append(fp)
        return fp

    yield start
    for fp in started:
        assert fp.stop() == 0  # a clean exit: every handle closed, uv_loop_close() == 0


def raw_get(port, path, timeout=2.0, wait_total=None):
    """Sends one GET on a fresh connection and reads until EOF, reset or `timeout` of silence.

    Returns (bytes received, how it ended: "eof" | "reset" | "timeout").
    """
    got = b""
    try:
        # A reset right after accept can already be reported by connect() on loopback.
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionResetError:
        return got, "reset"
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while True:
            data = s.recv(65536)
            if not data:
                return got, "eof"
            got += data
            if wait_total is not None and len(got) >= wait_total:
                return got, "complete"
    except ConnectionResetError:
        return got, "reset"
    except socket.timeout:
        return got, "timeout"
    finally:
        s.close()


def timed_get(port, path="/x", timeout=5, conn=None):
    t0 = time.monotonic()
    if conn is None:
        r = request(port, path=path, timeout=timeout)
        status = r.status
    else:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    return status, time.monotonic() - t0


# ---- bw_faultproxy -----------------------------------------------------------------------


def test_proxy_passes_traffic_and_counts_it(proxy):
    fp = proxy()
    r = request(fp.port, path="/hello?size=1000")
    assert r.status == 200 and r.body == (PATTERN * 63)[:1000]
    st = fp.stats()
    assert st["connections"] == 1
    assert st["bytes_upstream"] > 0 and st["bytes_downstream"] > 1000
    assert st["proxies"][0]["listening"] is True


# Baselines are only checked against the injected delay: on a shared 2-core machine a plain
# request can take tens of milliseconds, so an absolute bound would be flaky.
def test_latency_downstream_adds_at_least_the_delay(proxy):
    fp = proxy()
    assert timed_get(fp.port)[1] < 0.3
    fid = fp.add(kind="latency", direction="downstream", ms=300, jitter_ms=0)
    status, elapsed = timed_get(fp.port)
    assert status == 200 and 0.3 <= elapsed < 3
    assert fp.api("DELETE", f"/faults/{fid}") == (200, {"deleted": fid})
    assert timed_get(fp.port)[1] < 0.3


def test_latency_applies_to_open_keepalive_connections(proxy):
    fp = proxy()
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=5)
    try:
        assert timed_get(fp.port, conn=conn)[1] < 0.3
        fp.add(kind="latency", direction="upstream", ms=300, jitter_ms=100)
        status, elapsed = timed_get(fp.port, conn=conn)
        assert status == 200 and elapsed >= 0.2
    finally:
        conn.close()
    assert fp.stats()["connections"] == 1  # the same connection both times


def test_reset_at_accept(proxy, upstream):
    fp = proxy()
    before = upstream.stats()["requests"]
    fp.add(kind="reset")
    got, how = raw_get(fp.port, "/x")
    assert (got, how) == (b"", "reset")
    assert fp.stats()["proxies"][0]["resets"] == 1
    assert upstream.stats()["requests"] == before  # never connected to the target


@pytest.mark.parametrize("kind,how", [("reset", "reset"), ("close", "eof")])
def test_cut_after_n_bytes_delivers_exactly_n(proxy, kind, how):
    fp = proxy()
    fp.add(kind=kind, direction="downstream", after_bytes=1000)
    got, ended = raw_get(fp.port, "/x?size=100000")
    assert (len(got), ended) == (1000, how)
    assert got.startswith(b"HTTP/1.1 200")


def test_close_after_n_bytes_counted_both_ways(proxy):
    fp = proxy()
    fp.add(kind="close", direction="both", after_bytes=500)
    request_len = len(b"GET /x?size=100000 HTTP/1.1\r\nHost: x\r\n\r\n")
    got, ended = raw_get(fp.port, "/x?size=100000")
    assert (len(got), ended) == (500 - request_len, "eof")


def test_stall_holds_bytes_then_heals_intact(proxy):
    fp = proxy()
    fid = fp.add(kind="stall", direction="downstream", after_bytes=300)
    s = socket.create_connection(("127.0.0.1", fp.port), timeout=0.5)
    try:
        s.sendall(b"GET /x?size=20000&keepalive=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        with pytest.raises(socket.timeout):
            while True:
                data = s.recv(65536)
                assert data, "the connection must stay open while stalled"
                got += data
        assert len(got) == 300
        assert fp.api("GET", "/faults")[1]["faults"][0]["applied"] == 1
        fp.api("DELETE", f"/faults/{fid}")  # the held bytes flow again, in order
        s.settimeout(5)
        while True:
            data = s.recv(65536)
            if not data:
                break
            got += data
    finally:
        s.close()
    head, body = got.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 20000" in head
    assert body == (PATTERN * 1250)[:20000]


def test_stall_also_holds_the_fin(proxy):
    fp = proxy()
    whole, how = raw_get(fp.port, "/x?size=100&keepalive=0")
    assert how == "eof"
    fp.add(kind="stall", direction="downstream", after_bytes=len(whole))
    got, how = raw_get(fp.port, "/x?size=100&keepalive=0", timeout=0.5)
    assert (len(got), how) == (len(whole), "timeout")  # every byte, but no EOF


def test_stall_applies_to_open_connections(proxy):
    fp = proxy()
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=0.5)
    try:
        assert timed_get(fp.port, conn=conn)[0] == 200
        fp.add(kind="stall", direction="downstream", after_bytes=0)
        with pytest.raises(socket.timeout):
            timed_get(fp.port, conn=conn)
    finally:
        conn.close()


def test_blackhole_never_forwards_and_client_times_out(proxy, upstream):
    fp = proxy()
    before = upstream.stats()["requests"]
    fp.add(kind="blackhole")
    got, how = raw_get(fp.port, "/x", timeout=0.5)
    assert (got, how) == (b"", "timeout")
    st = fp.stats()["proxies"][0]
    assert st["blackholed"] == 1 and st["dropped_upstream"] > 0
    assert upstream.stats()["requests"] == before


def test_blackhole_downstream_forwards_request_drops_answer(proxy, upstream):
    fp = proxy()
    before = upstream.stats()["requests"]
    fp.add(kind="blackhole", direction="downstream")
    got, how = raw_get(fp.port, "/x", timeout=0.5)
    assert (got, how) == (b"", "timeout")
    assert upstream.stats()["requests"] == before + 1
    assert fp.stats()["proxies"][0]["dropped_downstream"] > 0


def test_refuse_closes_the_listener_until_removed(proxy):
    fp = proxy()
    fid = fp.add(kind="refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", fp.port), timeout=2).close()
    assert fp.stats()["proxies"][0]["listening"] is False
    fp.api("DELETE", f"/faults/{fid}")
    assert request(fp.port, path="/x").status == 200  # same port again


def test_refuse_rst_with_percent_hits_some_connections(proxy):
    fp = proxy(extra=("--seed", "42"))
    fp.add(kind="refuse", mode="rst", percent=50)
    outcomes = [raw_get(fp.port, "/x?keepalive=0", timeout=2)[1] for _ in range(40)]
    resets = outcomes.count("reset")
    assert 5 <= resets <= 35 and outcomes.count("eof") == 40 - resets
    assert fp.stats()["proxies"][0]["refused"] == resets


def test_bandwidth_limits_throughput(proxy):
    fp = proxy()
    fp.add(kind="bandwidth", direction="downstream", bytes_per_sec=50000)
    status, elapsed = timed_get(fp.port, "/x?size=30000")
    assert status == 200 and 0.45 <= elapsed < 3


def test_control_api_rejects_bad_faults_and_lists_good_ones(proxy):
    fp = proxy()
    for bad in (
        {"kind": "nope"},
        {"kind": "latency"},  # ms is required
        {"kind": "reset", "ms": 5},  # a field that does not apply
        {"kind": "latency", "ms": 5, "percent": 101},
        {"kind": "stall", "direction": "sideways"},
        {"kind": "bandwidth", "bytes_per_sec": 0},
        {"kind": "refuse", "percent": 50},  # listener mode is all or nothing
        {"kind": "close", "proxy": "nosuch"},
    ):
        status, reply = fp.api("POST", "/faults", bad)
        assert status == 400 and reply["error"], bad
    assert fp.api("POST", "/faults", raw="{not json")[0] == 400
    a = fp.add(kind="latency", ms=10, jitter_ms=5, percent=25, direction="down")
    b = fp.add(kind="close", after_bytes=7, proxy=0)
    faults = fp.api("GET", "/faults")[1]["faults"]
    assert [f["id"] for f in faults] == [a, b]
    assert faults[0] == {"id": a, "kind": "latency", "direction": "downstream", "percent": 25.0,
                         "applied": 0, "proxy": None, "ms": 10, "jitter_ms": 5}
    assert faults[1]["proxy"] == "0" and faults[1]["after_bytes"] == 7
    assert fp.api("GET", f"/faults/{b}")[1]["kind"] == "close"
    assert fp.api("DELETE", "/faults/999")[0] == 404
    assert fp.api("DELETE", "/faults") == (200, {"deleted": 2})
    assert fp.api("GET", "/faults") == (200, {"faults": []})
    assert fp.api("GET", "/nope")[0] == 404


def test_delete_connections_resets_open_ones(proxy):
    fp = proxy()
    conn = http.client.HTTPConnection("127.0.0.1", fp.port, timeout=5)
    try:
        assert timed_get(fp.port, conn=conn)[0] == 200
        assert fp.api("DELETE", "/connections") == (200, {"reset": 1})
        with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
            timed_get(fp.port, conn=conn)
    finally:
        conn.close()
    assert fp.stats()["active"] == 0


def test_faults_can_target_one_proxy_by_name(proxy, upstream):
    fp = proxy(extra=("--name", "a", "--target", f"127.0.0.1:{upstream.port}", "--name", "b"))
    assert len(fp.ports) == 2
    fp.add(kind="reset", proxy="b")
    assert request(fp.ports[0], path="/x").status == 200
    assert raw_get(fp.ports[1], "/x") == (b"", "reset")
    st = fp.stats()["proxies"]
    assert [(p["name"], p["resets"]) for p in st] == [("a", 0), ("b", 1)]


def test_connect_failure_becomes_a_reset(proxy):
    fp = proxy(target=free_port())  # nothing listens there
    got, how = raw_get(fp.port, "/x")
    assert (got, how) == (b"", "reset")
    assert fp.stats()["proxies"][0]["connect_failed"] == 1


# ---- bw_load -----------------------------------------------------------------------------


def run_load(tools, url, *args, timeout=20):
    d = tempfile.mkdtemp(prefix="bw-load-")
    csv_path, json_path = os.path.join(d, "load.csv"), os.path.join(d, "summary.json")
    try:
        t0 = time.time() * 1000
        p = subprocess.run(
            [tools["load"], "-q", "-o", csv_path, "--json", json_path, *args, url],
            capture_output=True, text=True, timeout=timeout,
        )
        t1 = time.time() * 1000
        assert p.returncode == 0, p.stderr
        with open(csv_path) as f:
            lines = f.read().splitlines()
        with open(json_path) as f:
            summary = json.load(f)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert lines[0] == "t_start_ms,latency_us,status,error"
    rows = []
    for line in lines[1:]:
        t, lat, status, err = line.split(",")
        rows.append((int(t), int(lat), int(status), err))
        assert t0 - 5 <= int(t) <= t1 + 5
    return rows, summary


def test_load_logs_one_line_per_request(tools, upstream):
    rows, s = run_load(tools, f"http://127.0.0.1:{upstream.port}/x", "-c", "4", "-n", "500")
    assert len(rows) == 500 == s["requests"] == s["ok"]
    assert all(status == 200 and err == "" for _, _, status, err in rows)
    assert s["errors_total"] == 0 and s["non_2xx"] == 0
    assert s["latency_us"]["max"] == max(lat for _, lat, _, _ in rows)
    assert 0 < s["latency_us"]["p50"] <= s["latency_us"]["p99"] <= s["latency_us"]["max"]


def test_load_open_loop_keeps_the_schedule(tools, upstream):
    rows, s = run_load(tools, f"127.0.0.1:{upstream.port}/x", "-c", "4", "-r", "200", "-d", "1")
    assert len(rows) == 200 == s["requests"] == s["ok"]
    starts = sorted(t for t, _, _, _ in rows)
    assert 985 <= starts[-1] - starts[0] <= 1000  # intended starts: every 5 ms for 1 s
    assert s["target_rate"] == 200


def test_load_counts_errors_when_the_target_is_down(tools):
    rows, s = run_load(tools, f"127.0.0.1:{free_port()}/x", "-c", "3", "-n", "50")
    assert len(rows) == 50 == s["requests"] == s["errors"]["connect_refused"]
    assert all(status == 0 and err == "connect_refused" for _, _, status, err in rows)
    assert s["ok"] == 0


def test_load_times_out_and_reconnects(tools, upstream):
    rows, s = run_load(tools, f"127.0.0.1:{upstream.port}/x?delay=2000", "-c", "2", "-n", "4",
                       "-t", "200")
    assert len(rows) == 4 == s["errors"]["timeout"]
    assert all(190_000 <= lat < 1_500_000 and err == "timeout" for _, lat, _, err in rows)


def test_load_counts_non_2xx_by_status(tools, upstream):
    rows, s = run_load(tools, f"127.0.0.1:{upstream.port}/x?status=503", "-c", "2", "-n", "30")
    assert s["non_2xx"] == 30 and s["status"] == {"503": 30} and s["ok"] == 0
    assert all(status == 503 and err == "" for _, _, status, err in rows)


def test_load_sees_proxy_faults_as_errors(tools, proxy):
    fp = proxy()
    fp.add(kind="close")  # every connection closed at accept: the request gets no answer
    _, s = run_load(tools, f"127.0.0.1:{fp.port}/x", "-c", "2", "-n", "20")
    assert s["requests"] == 20 and s["errors"]["closed"] + s["errors"]["reset"] == 20


# ---- netns.sh ----------------------------------------------------------------------------


def _netns_usable():
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.mark.skipif(_netns_usable() is not None, reason=str(_netns_usable()))
def test_netns_cut_and_heal(tools):
    script = os.path.join(CHAOS, "netns.sh")
    prefix = f"bwt{os.getpid()}"
    ns = [script, "--prefix", prefix]

    def load_from_gw(*args):
        p = subprocess.run(
            [*ns, "exec", "gw", tools["load"], "-q", "--json", "-", *args,
             "http://10.77.0.2:8000/x"],
            capture_output=True, text=True, timeout=15,
        )
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    subprocess.run([*ns, "up", "--no-receiver"], check=True, timeout=20)
    up = None
    try:
        up = subprocess.Popen([*ns, "exec", "up", UPSTREAM, "--listen", "10.77.0.2:8000"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        assert _read_lines(up, 1) == ["PORT 8000"]
        assert load_from_gw("-n", "5", "-c", "1")["ok"] == 5

        subprocess.run([*ns, "cut", "upstream", "--mode", "reject"], check=True, timeout=10)
        assert load_from_gw("-n", "3", "-c", "1")["errors"]["connect_refused"] == 3

        subprocess.run([*ns, "heal", "upstream"], check=True, timeout=10)
        subprocess.run([*ns, "cut", "upstream", "--mode", "drop"], check=True, timeout=10)
        assert load_from_gw("-n", "2", "-c", "2", "-t", "300")["errors"]["connect_timeout"] == 2

        subprocess.run([*ns, "heal", "upstream"], check=True, timeout=10)
        assert load_from_gw("-n", "5", "-c", "1", "-t", "3000")["ok"] == 5
    finally:
        subprocess.run([*ns, "down"], timeout=30)
        if up is not None:
            up.wait(timeout=10)  # down stopped it: it ran inside the namespace
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed
