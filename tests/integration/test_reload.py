"""Hot reload (SIGHUP and POST /api/v1/reload) of a real gateway, under load.

A reload starts a new generation of workers on the new config and drains the old ones: no request
may fail during or after it (every request of the background load is logged, see loadclient.py),
and the changed route must be live once the old workers are gone. A bad config is refused with
its errors as FILE:LINE:COL, the old config keeps serving, and a `reload_failed` event is
recorded; changing state_dir or admin.listen needs a restart and is refused. One test drives
wrk at full speed with three SIGHUPs and requires no socket error and no non-2xx answer.
"""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import (SANITIZER_MARKS, Gateway, children, config_generation, events, free_port,
                      metric, request, wait_events, wait_for)
from loadclient import LoadClient


@pytest.fixture
def gateway(strict_gateway):
    """Every gateway a test here starts must stop with exit 0 (conftest's strict_gateway)."""
    return strict_gateway


# ---- helpers ----------------------------------------------------------------------------------

V2_ROUTE = """  - name: v2
    match:
      path_prefix: /v2
    upstream: b
"""


def config(a_addr, b_addr, extra_routes="", workers=2):
    """Upstreams a and b; the catch-all route goes to a. `extra_routes` are put first."""
    return f"""
workers: {workers}
upstreams:
  a:
    hosts: ["{a_addr}"]
  b:
    hosts: ["{b_addr}"]
routes:
{extra_routes}  - name: main
    match:
      path_prefix: /
    upstream: a
"""


def read_config(g):
    with open(g.config_path) as f:
        return f.read()


def write_config(g, text):
    tmp = g.config_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, g.config_path)  # the gateway never sees half a file


def add_v2_route(g):
    write_config(g, read_config(g).replace("routes:\n", "routes:\n" + V2_ROUTE, 1))


def wait_drained(g, old_children, count=3, timeout=15):
    """The old generation's processes are all gone and `count` new ones (control + workers) run."""
    def done():
        now = children(g.proc.pid)
        return now if not (now & old_children) and len(now) == count else None
    return wait_for(done, timeout, "the old generation to drain", interval=0.005)


def post_reload(g, drained=True, count=3):
    """POST /api/v1/reload. After a 200, by default also waits until the old generation is gone:
    the 200 can come before the old workers have stopped accepting (see
    test_post_reload_answers_only_once_the_old_workers_stopped_accepting), and the next reload
    is refused as busy until then."""
    old = children(g.proc.pid)
    r = g.admin("/api/v1/reload", method="POST", timeout=30)
    if r.status == 200 and drained:
        wait_drained(g, old, count)
    return r


LOCATED = re.compile(r"^(?P<file>/[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def assert_located(errors, path, *needles):
    """errors are FILE:LINE:COL: message lines naming the config file, one per problem."""
    assert errors, errors
    for e in errors:
        m = LOCATED.match(e)
        assert m, f"not FILE:LINE:COL: message: {e!r}"
        assert m["file"] == path and int(m["line"]) >= 1 and int(m["col"]) >= 1, e
    text = "\n".join(errors)
    for n in needles:
        assert n in text, (n, errors)


# ---- SIGHUP under load ------------------------------------------------------------------------


def test_sighup_under_load_adds_a_route_without_failing_a_request(gateway, upstreams):
    a, b, c = upstreams("a"), upstreams("b"), upstreams("c")
    # /slow goes to upstream c in both configs: its request count tells when the slow request
    # is in flight
    slow_route = """  - name: slow
    match:
      path_prefix: /slow
    upstream: c
"""
    g = gateway(config(a.addr, b.addr, extra_routes=slow_route).replace(
        "routes:\n", f"""  c:
    hosts: ["{c.addr}"]
routes:
""", 1))
    old = children(g.proc.pid)
    path = lambda t, s: "/v2/x" if s % 2 else "/steady"  # noqa: E731
    # keep-alive connections (drained by "Connection: close") and constantly new connections
    # (taken by whichever generation is accepting)
    keep = LoadClient(g.port, path=path, threads=3, duration=60, timeout=10)
    fresh = LoadClient(g.port, path=path, threads=3, duration=60, timeout=10, reconnect_every=2)
    slow = LoadClient(g.port, path="/slow?delay=1500", threads=1, max_requests=1, timeout=15)
    with keep, fresh:
        wait_for(lambda: len(keep.successes()) > 100 and len(fresh.successes()) > 100, 10,
                 "steady load")
        slow.start()
        wait_for(lambda: c.stats()["requests"] == 1, 10, "the slow request at its upstream")
        add_v2_route(g)
        t_hup = time.monotonic()
        g.proc.send_signal(signal.SIGHUP)
        ev = wait_events(g, "reload")[0]
        t_reloaded = time.monotonic()
        wait_drained(g, old)
        t_drained = time.monotonic()
        # after the old workers are gone, keep the load going for a while on the new ones
        wait_for(lambda: len([e for e in keep.entries() + fresh.entries()
                              if e.start > t_drained]) > 200, 10, "load after the drain")
        slow.wait()
    logs = keep.entries() + fresh.entries()
    failures = keep.failures() + fresh.failures()
    v2_before = [e for e in logs if e.path == "/v2/x" and e.end < t_hup]
    v2_after = [e for e in logs if e.path == "/v2/x" and e.start > t_drained]
    first_b = min((e.end for e in logs if e.upstream == "b"), default=None)
    rps = keep.summary()["rps"] + fresh.summary()["rps"]
    print(f"\nSIGHUP under load: {len(logs)} requests ({rps:.0f} req/s), {len(failures)} failed; "
          f"reload event after {(t_reloaded - t_hup) * 1000:.0f} ms, old generation gone after "
          f"{(t_drained - t_hup) * 1000:.0f} ms, first answer from b after "
          f"{(first_b - t_hup) * 1000 if first_b else float('nan'):.0f} ms; slow request: "
          f"{[(e.kind, e.upstream, round(e.latency, 3)) for e in slow.entries()]}")
    assert not failures, failures[:10]
    assert v2_before and all(e.upstream == "a" for e in v2_before)
    assert v2_after and all(e.upstream == "b" for e in v2_after), \
        [e for e in v2_after if e.upstream != "b"][:5]
    assert all(e.upstream == "a" for e in logs if e.path == "/steady")
    # the request in flight across the reload finished (on the old generation)
    (s,) = slow.entries()
    assert s.ok and s.upstream == "c" and s.start < t_hup < s.end, s
    assert ev["fields"]["generation"] == 2 and ev["fields"]["config"] == g.config_path, ev
    assert config_generation(g) == 2
    assert not events(g, "reload_failed")
    assert g.get("/v2/y").headers["x-upstream"] == "b"
    assert g.get("/v3").headers["x-upstream"] == "a"
    assert request(g.admin_port, path="/readyz").status == 200


# ---- POST /api/v1/reload and bad configs ------------------------------------------------------


def test_post_reload_applies_the_new_config_and_reports_the_generation(gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    assert g.get("/v2/x").headers["x-upstream"] == "a"
    add_v2_route(g)
    r = post_reload(g)
    assert r.status == 200, r
    body = r.json()
    assert body["status"] == "reloaded" and body["generation"] == 2, body
    assert g.get("/v2/x").headers["x-upstream"] == "b"
    assert config_generation(g) == 2
    ev = wait_events(g, "reload")[0]
    assert ev["fields"]["generation"] == 2, ev

    # an unchanged file reloads too: a new generation, same behaviour
    r = post_reload(g)
    assert r.status == 200 and r.json()["generation"] == 3, r
    assert g.get("/v2/x").headers["x-upstream"] == "b"


def test_post_reload_with_a_bad_config_is_422_with_located_errors_and_keeps_the_old(
        gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    good = read_config(g)
    bad = good.replace("routes:\n", "routes:\n" + V2_ROUTE, 1) + "no_such_key: 1\n"
    write_config(g, bad)
    r = post_reload(g)
    assert r.status == 422, r
    body = r.json()
    assert body["error"] in ("invalid_config", "reload_failed"), body
    assert_located(body["errors"], g.config_path, "no_such_key")
    line = bad.splitlines().index("no_such_key: 1") + 1
    assert any(f"{g.config_path}:{line}:1:" in e for e in body["errors"]), body["errors"]
    # the old config keeps serving
    assert g.get("/v2/x").headers["x-upstream"] == "a"
    assert config_generation(g) == 1
    ev = wait_events(g, "reload_failed")[0]
    assert_located(ev["fields"]["errors"], g.config_path, "no_such_key")
    assert not events(g, "reload")
    # fixed file: the next reload goes through
    write_config(g, good.replace("routes:\n", "routes:\n" + V2_ROUTE, 1))
    r = post_reload(g)
    assert r.status == 200 and r.json()["generation"] == 2, r
    assert g.get("/v2/x").headers["x-upstream"] == "b"


def test_sighup_with_a_bad_config_keeps_the_old_one_and_records_reload_failed(
        gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    pids = children(g.proc.pid)
    good = read_config(g)
    # two problems: both are reported
    bad = good.replace("routes:\n", "routes:\n" + V2_ROUTE, 1).replace(
        "workers: 2", "workers: 2\nshutdown_timeout: soon") + "no_such_key: 1\n"
    bad = bad.replace("shutdown_timeout: 5s\n", "", 1)
    write_config(g, bad)
    with LoadClient(g.port, path="/v2/x", threads=2, duration=30) as lc:
        wait_for(lambda: len(lc.successes()) > 20, 10, "steady load")
        g.proc.send_signal(signal.SIGHUP)
        ev = wait_events(g, "reload_failed")[0]
        t_ev = time.monotonic()
        wait_for(lambda: len(lc.ok_after(t_ev)) > 20, 10, "load after the refused reload")
    assert not lc.failures(), lc.failures()[:5]
    assert all(e.upstream == "a" for e in lc.entries()), "the bad config's route went live"
    assert_located(ev["fields"]["errors"], g.config_path, "no_such_key", "shutdown_timeout")
    assert len(ev["fields"]["errors"]) >= 2, ev
    assert config_generation(g) == 1
    assert children(g.proc.pid) == pids, "processes were replaced for a refused reload"
    refused = [l for l in g.log_lines() if l.get("level") == "error" and "reload" in l["msg"]]
    assert refused and "no_such_key" in json.dumps(refused), "the refusal was not logged"
    # fixed file: SIGHUP now applies it
    write_config(g, good.replace("routes:\n", "routes:\n" + V2_ROUTE, 1))
    g.proc.send_signal(signal.SIGHUP)
    # the `reload` event, not the generation metric: the generation flips when the new workers
    # are ready, the event once the old ones stopped accepting (a connection made between the
    # two may still reach an old worker)
    wait_events(g, "reload")
    assert config_generation(g) == 2
    assert g.get("/v2/x").headers["x-upstream"] == "b"


def test_post_reload_with_a_bad_config_is_logged(gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    write_config(g, read_config(g) + "no_such_key: 1\n")
    r = post_reload(g)
    assert r.status == 422, r
    wait_events(g, "reload_failed")
    logged = [l for l in g.log_lines() if l.get("level") in ("warn", "error") and
              "no_such_key" in json.dumps(l)]
    assert logged, "the refused reload is not in the log"


def restart_only_changes(g, other_dir):
    """(config text, key) pairs that change state_dir or admin.listen, plus the new admin port."""
    good = read_config(g)
    moved = re.sub(r"(?m)^state_dir: .*$", f"state_dir: {other_dir}", good)
    port2 = free_port()
    readmin = re.sub(r'(?m)^admin: \{ listen: "127\.0\.0\.1:\d+" \}$',
                     f'admin: {{ listen: "127.0.0.1:{port2}" }}', good)
    assert moved != good and readmin != good
    # each also adds the /v2 route, which must not go live
    return [(t.replace("routes:\n", "routes:\n" + V2_ROUTE, 1), k)
            for t, k in ((moved, "state_dir"), (readmin, "admin.listen"))], port2


def test_sighup_refuses_to_change_state_dir_or_admin_listen(gateway, upstreams, tmp_path):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    good = read_config(g)
    other_dir = tmp_path / "other-state"
    other_dir.mkdir()
    changes, port2 = restart_only_changes(g, other_dir)
    for n, (text, key) in enumerate(changes, 1):
        write_config(g, text)
        g.proc.send_signal(signal.SIGHUP)
        ev = wait_events(g, "reload_failed", n)[-1]
        message = f"changing {key} needs a restart"
        assert ev["fields"]["reason"] == message and message in ev["fields"]["errors"], ev
        assert g.get("/v2/x").headers["x-upstream"] == "a", key
        assert config_generation(g) == 1
        logged = [l for l in g.log_lines() if l.get("msg", "").startswith("reload refused")]
        assert len(logged) == n and logged[-1]["reason"] == message, logged
    assert not events(g, "reload")
    assert list(other_dir.iterdir()) == [], "the refused config touched the new state_dir"
    with pytest.raises(OSError):
        request(port2, path="/healthz", timeout=1)
    write_config(g, good)


def _is_asan_build(path):
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


def test_post_reload_refuses_to_change_state_dir_or_admin_listen(upstreams, tmp_path):
    """Manages its own gateway (not the fixture) so that the sanitizer report is a failure of
    this test rather than an error at teardown."""
    a, b = upstreams("a"), upstreams("b")
    g = Gateway(config(a.addr, b.addr))
    try:
        control = [l["pid"] for l in g.log_lines() if l.get("msg") == "admin API ready"]
        other_dir = tmp_path / "other-state"
        other_dir.mkdir()
        changes, port2 = restart_only_changes(g, other_dir)
        for text, key in changes:
            write_config(g, text)
            r = post_reload(g)
            assert r.status == 422, (key, r)
            body = r.json()
            assert body["error"] == "reload_failed", body
            assert f"changing {key} needs a restart" in body["errors"], body
            assert g.get("/v2/x").headers["x-upstream"] == "a", key
            assert config_generation(g) == 1
        # the control process that answered is still the one that started
        time.sleep(0.2)
        assert [l["pid"] for l in g.log_lines() if l.get("msg") == "admin API ready"] == control
        assert request(g.admin_port, path="/readyz").status == 200
    finally:
        rc = g.stop()
    log = g.final_log
    assert not any(m in log for m in SANITIZER_MARKS), log[-5000:]
    assert "control process died" not in log, log[-5000:]
    assert rc == 0


def listener_holders(g, pids):
    """Which of `pids` hold the public listening socket open (by its inode in /proc/net/tcp)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].split(":")[1], 16) == g.port:  # LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    assert inodes, "no listening socket found for the public port"
    holders = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # gone
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    holders.add(pid)
            except OSError:
                pass
    return holders


def test_post_reload_answers_only_once_the_old_workers_stopped_accepting(gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr).replace("workers: 2", "workers: 2\nwatchdog:\n"
                                               "  stall_after: 30s"))
    old_workers = {l["pid"] for l in g.log_lines() if l.get("msg") == "worker ready"}
    assert len(old_workers) == 2 and listener_holders(g, old_workers) == old_workers
    slow = min(old_workers)  # this old worker is slow to act on its SIGTERM (stopped for 1.5 s)
    add_v2_route(g)
    os.kill(slow, signal.SIGSTOP)
    resume = threading.Timer(1.5, os.kill, (slow, signal.SIGCONT))
    resume.start()
    try:
        r = g.admin("/api/v1/reload", method="POST", timeout=30)
        holding = listener_holders(g, old_workers)
        answered_while_stopped = resume.is_alive()
    finally:
        resume.join()
        try:
            os.kill(slow, signal.SIGCONT)
        except ProcessLookupError:
            pass
    print(f"\nreload answered {r.status} while an old worker was stopped: "
          f"{answered_while_stopped}; old workers still holding the listener: {holding}")
    assert r.status == 200, r
    assert not holding, f"answered 200 while old workers {holding} could still accept"


def test_admin_api_requests_survive_reloads(gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    admin = LoadClient(g.admin_port, path="/readyz", threads=2, duration=60, timeout=10,
                       ok_statuses=[200, 503])
    with admin:
        wait_for(lambda: len(admin.successes()) > 50, 10, "admin load")
        for k in range(5):
            old = children(g.proc.pid)
            g.proc.send_signal(signal.SIGHUP)
            wait_drained(g, old)
            t = time.monotonic()
            wait_for(lambda: len(admin.ok_after(t)) > 20, 10, "admin answers after the reload")
    failures = admin.failures()
    print(f"\nadmin API across 5 reloads: {admin.summary()}")
    assert config_generation(g) == 6
    assert not failures, failures[:5]


# ---- wrk ----------------------------------------------------------------------------------------

WRK_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1 end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do n = n + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d non2xx=%d connect=%d read=%d "
    .. "write=%d status=%d timeout=%d\\n", summary.requests, summary.duration, n, e.connect,
    e.read, e.write, e.status, e.timeout))
end
"""


def test_three_sighups_under_wrk_load_fail_no_request(gateway, upstreams, tmp_path):
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    script = tmp_path / "count.lua"
    script.write_text(WRK_SCRIPT)
    duration = 5
    p = subprocess.Popen([wrk, "-t2", "-c32", f"-d{duration}s", "-s", str(script),
                          f"http://127.0.0.1:{g.port}/steady"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.monotonic()
        reload_ms = []
        for k in range(3):
            while time.monotonic() < t0 + 1.0 * (k + 1):
                time.sleep(0.01)
            old = children(g.proc.pid)
            t = time.monotonic()
            g.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: config_generation(g) == k + 2, 10, f"generation {k + 2}")
            reload_ms.append(round((time.monotonic() - t) * 1000))
            wait_drained(g, old)
        assert time.monotonic() < t0 + duration, "the reloads did not fit in the wrk run"
        out, _ = p.communicate(timeout=duration + 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    m = re.search(r"RESULT (.*)", out)
    assert m, out
    res = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    rps = res["requests"] / (res["duration_us"] / 1e6)
    print(f"\nwrk -t2 -c32 {duration}s with 3 SIGHUPs: {rps:.0f} req/s, {res['requests']} "
          f"requests, non-2xx {res['non2xx']}, socket errors connect {res['connect']} read "
          f"{res['read']} write {res['write']} timeout {res['timeout']}; reloads took "
          f"{reload_ms} ms" + ("" if rps >= 5000 else "  [below the 5k req/s target rate]"))
    assert res["requests"] > 0, out
    assert res["non2xx"] == 0 and res["status"] == 0, out
    assert (res["connect"], res["read"], res["write"], res["timeout"]) == (0, 0, 0, 0), out
    assert config_generation(g) == 4
    assert len(wait_events(g, "reload", 3)) == 3
    assert not events(g, "reload_failed")


# ---- after a reload ---------------------------------------------------------------------------


def test_reload_can_change_the_worker_count(gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr))
    assert request(g.admin_port, path="/readyz").json()["workers"] == 2
    for n in (3, 1):
        write_config(g, re.sub(r"(?m)^workers: \d+$", f"workers: {n}", read_config(g)))
        r = post_reload(g, count=n + 1)
        assert r.status == 200, r
        ready = wait_for(lambda: (request(g.admin_port, path="/readyz").json()
                                  if request(g.admin_port, path="/readyz").status == 200
                                  else None), 10, "/readyz 200")
        assert ready["workers"] == n and ready["workers_ready"] == n, ready
        assert metric(g, 'breakwater_workers{state="configured"}') == n
        for i in range(2 * n + 2):
            assert g.get(f"/x{i}").status == 200


def test_a_crash_after_a_reload_is_recorded_against_the_new_config(gateway, upstreams):
    a, b = upstreams("a"), upstreams("b")
    g = gateway(config(a.addr, b.addr).replace("workers: 2",
                                               "workers: 2\ndebug:\n  fault_headers: true"))
    add_v2_route(g)
    assert post_reload(g).status == 200
    try:
        r = g.get("/v2/boom", headers={"X-Breakwater-Fault": "crash",
                                       "X-Request-Id": "after-reload"})
        raise AssertionError(f"the crashing request was answered: {r}")
    except (OSError, http.client.HTTPException):
        pass
    ev = wait_events(g, "worker_crash")[0]
    assert ev["fields"]["route"] == "v2" and ev["fields"]["request_id"] == "after-reload", ev
    assert ev["fields"]["signal"] == 11 and ev["fields"]["backtrace"], ev
    wait_for(lambda: request(g.admin_port, path="/readyz").status == 200, 10, "/readyz 200")
    assert g.get("/v2/x").headers["x-upstream"] == "b"  # the replacement runs the new config
    assert config_generation(g) == 2
    assert metric(g, 'breakwater_worker_restarts_total{reason="crash"}') == 1
