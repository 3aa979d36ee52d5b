"""Process behaviour of a real gateway: graceful stop, and surviving the death of its children.

SIGTERM while a slow request is in flight (it completes; new connections are refused once the
listeners close; exit 0), SIGTERM with a request slower than shutdown_timeout (exit 0 anyway,
on time), kill -9 of a worker under a steady client loop (replaced, /readyz back to 200, only the
killed worker's in-flight requests lost), and kill -9 of the control process (the admin API comes
back in a new process while the public listener serves throughout). Every request of the client
loops is logged with its time and result, so the failures around a kill are counted exactly.
"""

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import readyz, request, wait_for


@pytest.fixture
def gateway(strict_gateway):
    """Every gateway a test here starts must stop with exit 0 (conftest's strict_gateway)."""
    return strict_gateway


# ---- helpers ----------------------------------------------------------------------------------


def children(pid):
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=10
    ).stdout
    return set(int(x) for x in out.split())


def config(upstream_addr, workers=2, shutdown_timeout="5s"):
    # a long watchdog: tests that SIGSTOP a worker for a moment must not have it replaced
    return f"""
workers: {workers}
shutdown_timeout: {shutdown_timeout}
watchdog:
  stall_after: 30s
upstreams:
  u:
    hosts: ["{upstream_addr}"]
    timeout: 30s
routes:
  - name: all
    match:
      path_prefix: /
    upstream: u
"""


def pids_from_logs(g):
    """{'control': pid, 0: pid of worker 0, ...}: the latest start of each child, from its logs."""
    out = {}
    for line in g.log_lines():
        if line.get("msg") == "worker ready":
            out[line["worker"]] = line["pid"]
        elif line.get("msg") == "admin API ready":
            out["control"] = line["pid"]
    return out


class ClientLoop:
    """Threads sending GETs on fresh connections back to back; every request is logged."""

    def __init__(self, port, path="/steady", threads=2, timeout=5):
        self.port, self.path, self.timeout = port, path, timeout
        self.log = []  # (start, end, ok, detail)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                r = request(self.port, path=self.path, timeout=self.timeout)
                ok, detail = r.status == 200, r.status
            except Exception as e:  # noqa: BLE001 - every failure is a data point
                ok, detail = False, repr(e)
            self.log.append((t0, time.monotonic(), ok, detail))

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 5)

    def failures(self):
        return [e for e in self.log if not e[2]]

    def successes_after(self, t):
        return sum(1 for e in self.log if e[2] and e[0] >= t)


class SlowCall(threading.Thread):
    """One request in a thread; result is a Response or the exception."""

    def __init__(self, port, path, timeout=30):
        super().__init__(daemon=True)
        self.port, self.path, self.timeout = port, path, timeout
        self.result = None
        self.elapsed = None
        self.start()

    def run(self):
        t0 = time.monotonic()
        try:
            self.result = request(self.port, path=self.path, timeout=self.timeout)
        except Exception as e:  # noqa: BLE001
            self.result = e
        self.elapsed = time.monotonic() - t0


def try_new_connection(port):
    """'refused', 'served' (answered), 'closed' (accepted, then closed/reset), or 'hung'."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.3)
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "hung"
    with s:
        try:
            s.sendall(b"GET /new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = s.recv(64)
        except socket.timeout:
            return "hung"
        except OSError:
            return "closed"
    return "served" if data.startswith(b"HTTP/1.1 ") else "closed"


# ---- SIGTERM ----------------------------------------------------------------------------------


def test_sigterm_lets_inflight_request_finish_and_exits_0(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr, shutdown_timeout="5s"))
    call = SlowCall(g.port, "/slow?delay=1500")
    wait_for(lambda: u.stats()["requests"] >= 1, 10, "the slow request to reach the upstream")
    t_sig = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    call.join(timeout=15)
    assert not call.is_alive()
    assert not isinstance(call.result, Exception), call.result
    assert call.result.status == 200, call.result
    assert call.result.json()["path"] == "/slow?delay=1500"
    rc = g.proc.wait(timeout=15)
    stopped = time.monotonic() - t_sig
    print(f"in-flight request took {call.elapsed:.3f}s; gateway exited {rc} "
          f"{stopped:.3f}s after SIGTERM")
    assert rc == 0, g.logs()
    assert stopped < 5 + 3
    assert try_new_connection(g.port) == "refused"
    assert u.stats()["requests"] == 1


def test_sigterm_refuses_new_connections_while_draining(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr, shutdown_timeout="5s"))
    call = SlowCall(g.port, "/slow?delay=3000")
    wait_for(lambda: u.stats()["requests"] >= 1, 10, "the slow request to reach the upstream")
    g.proc.send_signal(signal.SIGTERM)
    # every listener copy (workers' and the supervisor's) closes at once: new clients are
    # refused and can go elsewhere, instead of hanging until the gateway exits
    outcome = wait_for(lambda: try_new_connection(g.port) == "refused", 3,
                       "new connections to be refused during the drain")
    assert outcome
    call.join(timeout=15)
    assert not isinstance(call.result, Exception), call.result
    assert call.result.status == 200
    assert g.proc.wait(timeout=15) == 0


def test_sigterm_with_a_request_slower_than_shutdown_timeout_exits_on_time(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr, shutdown_timeout="1s"))
    call = SlowCall(g.port, "/slow?delay=10000")
    wait_for(lambda: u.stats()["requests"] >= 1, 10, "the slow request to reach the upstream")
    t_sig = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    rc = g.proc.wait(timeout=15)
    stopped = time.monotonic() - t_sig
    print(f"gateway exited {rc} {stopped:.3f}s after SIGTERM (shutdown_timeout 1s)")
    assert rc == 0
    assert stopped < 1 + 3
    call.join(timeout=15)
    assert isinstance(call.result, Exception), "the abandoned request cannot have succeeded"


# ---- kill -9 ----------------------------------------------------------------------------------


def test_kill_9_of_a_worker_replaces_it_and_loses_only_its_inflight(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr))
    before = pids_from_logs(g)
    loop = ClientLoop(g.port, threads=2)
    try:
        time.sleep(1.0)
        t_kill = time.monotonic()
        os.kill(before[0], signal.SIGKILL)

        def replaced():
            now = pids_from_logs(g)
            if now.get(0) in (None, before[0]):
                return None
            r = readyz(g)
            return now if r is not None and r["workers_ready"] == 2 else None

        now = wait_for(replaced, 10, "a replacement worker")
        t_ready = time.monotonic()
        time.sleep(0.5)
    finally:
        loop.stop()
    failures = loop.failures()
    print(f"kill -9 worker {before[0]}: replacement {now[0]} ready {t_ready - t_kill:.3f}s later; "
          f"requests {len(loop.log)}, failed {len(failures)}")
    assert now[1] == before[1], "the other worker was not touched"
    # only requests in flight on the killed worker can fail: with 2 client threads, at most 2
    assert len(failures) <= 2, failures
    assert loop.successes_after(t_ready) > 0
    events = g.admin("/api/v1/events").json()["events"]
    crash = [e for e in events if e["kind"] == "worker_crash"]
    assert crash and crash[0]["fields"]["signal"] == 9


def test_a_killed_worker_frees_its_bulkhead_slots_and_counters_survive(gateway, upstreams):
    u = upstreams("u")
    cfg = config(u.addr).replace("    timeout: 30s", "    timeout: 30s\n    max_concurrent: 2")
    g = gateway(cfg)
    pids = pids_from_logs(g)
    served = sum(g.get("/x").status == 200 for _ in range(6))
    assert served == 6
    # two slow requests fill the bulkhead; kill every worker that may hold them
    calls = [SlowCall(g.port, "/slow?delay=20000") for _ in range(2)]
    wait_for(lambda: u.stats()["requests"] >= 8, 10, "the slow requests to reach the upstream")
    assert g.get("/x").status == 503
    for w in (0, 1):
        os.kill(pids[w], signal.SIGKILL)

    def both_replaced():
        now = pids_from_logs(g)
        r = readyz(g)
        fresh = now.get(0) != pids[0] and now.get(1) != pids[1]
        return fresh and r is not None and r["workers_ready"] == 2

    wait_for(both_replaced, 10, "both workers to be replaced")
    # the dead workers' in-flight counts were released: the bulkhead admits again
    assert g.get("/x").status == 200
    ups = g.admin("/api/v1/upstreams").json()["upstreams"][0]
    assert ups["counters"]["inflight"] == 0
    assert ups["counters"]["requests"] >= 9  # counters carried on in the workers' slots
    for c in calls:
        c.join(timeout=5)


def test_kill_9_of_the_control_process_brings_the_admin_api_back(gateway, upstreams):
    u = upstreams("u")
    g = gateway(config(u.addr))
    before = pids_from_logs(g)
    control = before["control"]

    loop = ClientLoop(g.port, threads=2)
    try:
        time.sleep(1.2)
        metric_before = g.admin("/metrics").body.decode()
        served_before = _requests_200(metric_before)
        assert served_before > 0
        t_kill = time.monotonic()
        os.kill(control, signal.SIGKILL)

        def admin_back():
            now = pids_from_logs(g)
            if now.get("control") in (None, control):
                return None
            try:
                r = request(g.admin_port, path="/healthz", timeout=2)
            except OSError:
                return None
            return now if r.status == 200 else None

        now = wait_for(admin_back, 10, "the admin API in a new control process")
        t_back = time.monotonic()
        time.sleep(0.5)
    finally:
        loop.stop()

    new_control = now["control"]
    assert new_control in children(g.proc.pid) and control not in children(g.proc.pid)
    assert now[0] == before[0] and now[1] == before[1], "a worker was replaced"
    failures = loop.failures()
    print(f"kill -9 control {control}: admin back in {new_control} {t_back - t_kill:.3f}s later; "
          f"public requests: {len(loop.log)}, failed {len(failures)}")
    assert not failures, failures[:5]
    assert loop.successes_after(t_kill) > 0
    # the counters live in shared memory, not in the control process: they carry on
    r = g.admin("/metrics")
    assert r.status == 200
    assert _requests_200(r.body.decode()) >= served_before
    assert readyz(g) is not None


def _requests_200(metrics_text):
    for line in metrics_text.splitlines():
        if line.startswith('breakwater_requests_total{route="all",code="200"}'):
            return int(line.split()[-1])
    return 0
