#!/usr/bin/python3
"""db_eio.py: the SQLite database returns I/O errors (EIO) while traffic flows and alerts fire.

World: breakwater (2 workers) on loopback with LD_PRELOAD=libbw_eio.so (chaos/eio_inject.c), a
shim that fails pwrite64/pwrite/write (mode `write`) or fdatasync/fsync (mode `fsync`) with EIO
on state_dir/breakwater.db, -wal and -journal while a control file exists; upstreams `u`
(healthy, under load), `bad1` and `bad2` (answer 500 on demand); alerts to the recording webhook
receiver; bw_load on /u at RATE, every request in a CSV. No root and no mounts: the fault is in
the gateway's own libc calls (on an ASan build libasan is preloaded before the shim).

Two fault cycles, one per mode, each: the control file is written; the breaker of `bad1` (then
`bad2`) opens (5 answers 500) and an external alert is POSTed; FAULT_S later the file is removed
and the flush is measured before the next cycle starts.
  - `write`: every commit fails at the WAL write, SQLITE_IOERR_WRITE (778);
  - `fsync`: the WAL frames are written but the commit's fdatasync fails, SQLITE_IOERR_FSYNC
    (1034), the case where SQLite must forget frames that are already in the file.

Pass criteria (timing bounds x2.5 on an ASan build):
  - the faults happened in the gateway: the shim counted injected write (cycle 1) and fsync
    (cycle 2) failures, and the shim is mapped in the control process;
  - proxying is untouched: every /u request that started during a fault (up to 500 ms after it)
    succeeded;
  - nothing crashed: the supervisor, control and worker PIDs are the same before and after, no
    worker_crash event, no sanitizer report, and the graceful stop exits 0;
  - the breaker still opens during the fault (its state lives in shared memory, not SQLite);
  - the POST during the fault is held, not refused: 200/201/202 (the API answers 202
    {"status":"queued"} when the alert waits in the engine's memory queue);
  - GET /metrics shows breakwater_alert_queue_depth > 0 during the fault (the held alert);
  - the store recovers on the same connection: after the file is removed, the breaker_open alert
    and the external alert of that cycle are in GET /api/v1/alerts within FLUSH_MAX_S, and their
    notifications reach the receiver within FLUSH_MAX_S;
  - the database is intact and has all four alerts afterwards (gateway stopped; PRAGMA
    integrity_check = ok through python's sqlite3).
Figures per cycle (w_ = write, f_ = fsync, a_ = all): injected failures, requests during the fault and
failed ones, the POST's status, the highest queue depth seen, whether the alert was invisible
during the fault (held=yes), whether its breaker_open event was already in the audit trail
(event_stored=no: it waited in the events channel), alert/notification times after recovery,
the shim's count of store errors in the gateway log, and degraded= the number of
`alert_store_degraded` notifications the receiver got during the fault (at least one per cycle:
the store watcher pages after 2 s of failure, without the store).
Cycle 3 (`all`) also fails reads: SQLite 3.40 reports a read that fails with EIO as
SQLITE_CORRUPT (11; unixRead returns SQLITE_IOERR_CORRUPTFS, which reaches the caller as plain 11,
sqlite3_system_errno 0), so the engine treats AL_DB_ECORRUPT as "store unavailable" too (held, not
refused; a held input is dropped only when it is invalid). Before that fix this cycle failed: the
POST got 503 and an alert already held was dropped when its retry met the read error.

By hand, `db_eio.py --modes M[,M...]` runs other cycles (the shim's modes: write, fsync, read,
all). `read` alone injects nothing in practice: with locking_mode=EXCLUSIVE SQLite serves reads
from its page cache.

Why FLUSH_MAX_S = 15 s: held inputs are retried on the engine's backoff (250 ms doubling, queue.c),
so after a FAULT_S fault the next retry comes at most about FAULT_S + 0.25 s after the recovery;
the rest is delivery (backoff 500 ms) and slack for a loaded machine.
"""

import glob
import os
import re
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (BINARY, TOOLS_DIR, Fail, Gateway, Load, Receiver,  # noqa: E402
                      Scenario, Skip, Upstream, fmt_s, log, now_ms, ok, wait_for, window)

RATE = 200
FAULT_S = 4.0  # each cycle: longer than the store watcher's 2 s grace, with slack
FLUSH_MAX_S = 15.0
TIME_BOUND_S = 90
SHIM = os.environ.get("BW_EIO_SHIM") or os.path.join(TOOLS_DIR, "libbw_eio.so")
# --modes M,M...: the fault cycles, each a content of the shim's control file (eio_inject.c:
# write, fsync, read, all); by hand, e.g. `db_eio.py --modes read` (see the docstring).
MODES = ["write", "fsync", "all"]
DEGRADED = "alert_store_degraded"


def config(u, bads, hook):
    """bads: [(name, addr)], one upstream that answers 500 on demand per fault cycle."""
    ups = "".join(f"""
  {name}:
    hosts: ["{addr}"]
    outlier: {{ consecutive_failures: 0 }}
    breaker: {{ consecutive_failures: 5, open_duration: 2m }}""" for name, addr in bads)
    routes = "".join(f"""
  - name: {name}
    match: {{ path_prefix: /{name}/ }}
    upstream: {name}""" for name, _ in bads)
    return f"""
workers: 2
upstreams:
  u:
    hosts: ["{u}"]
    outlier: {{ consecutive_failures: 0 }}{ups}
routes:
  - name: u
    match: {{ path_prefix: /u }}
    upstream: u{routes}
alerts:
  channels:
    hook: {{ type: webhook, url: "{hook}" }}
  tiers:
    P0: {{ channels: [hook] }}
    P1: {{ channels: [hook] }}
    P2: {{ channels: [hook] }}
  delivery: {{ backoff: 500ms, max_backoff: 2s }}
"""


def preload():
    """LD_PRELOAD for the gateway: the shim, after libasan on an ASan build (ASan refuses to
    run unless its runtime comes first in the library list)."""
    libs = [SHIM]
    out = subprocess.run(["ldd", BINARY], capture_output=True, text=True, timeout=10).stdout
    m = re.search(r"(\S*libasan\.so\S*) => (\S+)", out)
    if m:
        libs.insert(0, m.group(2))
    return " ".join(libs)


def set_flag(path, content):
    """Writes the control file atomically (the shim never reads half of it)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(content + "\n")
    os.rename(tmp, path)


def shim_stats(prefix):
    """Sums the shim's per-process counters: {"injected", "write", "fsync", "read"}."""
    tot = {"injected": 0, "write": 0, "fsync": 0, "read": 0}
    for p in glob.glob(prefix + ".*"):
        try:
            with open(p) as f:
                fields = dict(kv.split("=", 1) for kv in f.read().split())
        except (OSError, ValueError):
            continue
        for k in tot:
            tot[k] += int(fields.get(k, 0))
    return tot


def queue_depth(g):
    st, body = g.admin("/metrics")
    text = body.decode() if isinstance(body, bytes) else str(body)
    m = re.search(r"^breakwater_alert_queue_depth (\d+)", text, re.M)
    return int(m.group(1)) if st == 200 and m else None


def notified_keys(rx):
    return {r["json"].get("dedup_key") for r in rx.requests() if isinstance(r.get("json"), dict)}


def events_at_rx(rx, event, t_from_ms=0, t_to_ms=float("inf"), status=None):
    n = 0
    for r in rx.requests():
        j = r.get("json")
        ts = r.get("ts", 0) * 1000  # receiver.py: arrival, unix seconds
        if isinstance(j, dict) and j.get("event") == event and t_from_ms <= ts < t_to_ms and \
                status in (None, j.get("status")):
            n += 1
    return n


def cycle(sc, g, rx, flag, stats, mode, upstream, key, p):
    """One fault cycle; fills figures with prefix p and returns what the checks need."""
    s = sc.scale
    before = shim_stats(stats)
    t_fault = now_ms()
    set_flag(flag, f"{mode} EIO")
    sc.mark("fault_injected", ts_ms=t_fault, what=f"EIO {mode}")
    time.sleep(0.05)  # the shim looks at the file every 2 ms
    for _ in range(5):
        g.get(f"/{upstream}/x?status=500")
    wait_for(lambda: g.breaker_state(upstream) == "open", 3 * s,
                      f"the breaker of {upstream} to open")
    st_post, body_post = g.admin("/api/v1/alerts", "POST",
                                 {"summary": f"raised while the database fails ({mode})",
                                  "tier": "P1", "labels": {"scenario": "db_eio", "mode": mode},
                                  "dedup_key": key})
    log(f"{mode}: POST -> {st_post} {body_post}")
    depth_max, list_codes = 0, set()
    t_end = time.monotonic() + FAULT_S
    while time.monotonic() < t_end:
        d = queue_depth(g)
        depth_max = max(depth_max, d or 0)
        list_codes.add(g.admin("/api/v1/alerts")[0])
        time.sleep(0.1)
    visible = [a for a in g.alerts() if a.get("dedup_key") == key]
    stored_events = [e for e in g.events("breaker_open")
                     if (e.get("fields") or {}).get("upstream") == upstream]
    during = shim_stats(stats)
    t_heal = now_ms()
    os.unlink(flag)
    sc.mark("fault_healed", ts_ms=t_heal, what=f"EIO {mode} off")
    log(f"{mode}: healed; shim {during}")

    def alerts_in():
        al = g.alerts()
        ext = [a for a in al if a.get("dedup_key") == key]
        brk = [a for a in al if a.get("event") == "breaker_open"
               and (a.get("labels") or {}).get("upstream") == upstream]
        return (ext[0], brk[0]) if ext and brk else None

    flushed, flush_s, notified, notify_s = None, None, False, None
    try:
        flushed = wait_for(alerts_in, FLUSH_MAX_S * s, f"the alerts raised during {mode}",
                           interval=0.05)
        flush_s = (now_ms() - t_heal) / 1000
    except Fail:
        pass
    if flushed:
        keys = {flushed[0]["dedup_key"], flushed[1]["dedup_key"]}
        try:
            wait_for(lambda: keys <= notified_keys(rx), FLUSH_MAX_S * s,
                     f"the notifications of the {mode} alerts", interval=0.05)
            notified, notify_s = True, (now_ms() - t_heal) / 1000
        except Fail:
            pass
    inj = {k: during[k] - before[k] for k in during}
    sc.fig(**{f"{p}injected": inj["injected"],
              f"{p}{mode}_failures": inj.get(mode, inj["injected"]),
              f"{p}post": st_post,
              f"{p}queue_depth_max": depth_max,
              f"{p}held": "no" if visible else "yes",
              f"{p}event_stored": "yes" if stored_events else "no",
              f"{p}list_while_failing": "/".join(str(c) for c in sorted(list_codes)),
              f"{p}alerts_after": fmt_s(flush_s) if flushed else "never",
              f"{p}notified_after": fmt_s(notify_s) if notified else "never",
              f"{p}degraded": events_at_rx(rx, DEGRADED, t_fault, t_heal + 500)})
    return {"mode": mode, "t_fault": t_fault, "t_heal": t_heal, "inj": inj,
            "post": (st_post, body_post), "depth_max": depth_max, "flushed": flushed,
            "notified": notified,
            "degraded": events_at_rx(rx, DEGRADED, t_fault, t_heal, "firing")}


def scenario(sc):
    if not os.path.exists(SHIM):
        raise Skip(f"{SHIM} not built (cmake --build BUILD --target bw_eio)")
    s = sc.scale
    state_dir = sc.path("var")
    flag = sc.path("eio.flag")
    stats = sc.path("eio-stats")
    env = {"LD_PRELOAD": preload(), "BW_EIO_FLAG": flag,
           "BW_EIO_MATCH": os.path.join(state_dir, "breakwater.db"), "BW_EIO_STATS": stats}

    rx = Receiver(sc)
    u = Upstream(sc, "u")
    bads = [(f"bad{i + 1}", Upstream(sc, f"bad{i + 1}").addr) for i in range(len(MODES))]
    g = Gateway(sc, config(u.addr, bads, rx.url), state_dir=state_dir, env=env)
    load = Load(sc, f"http://127.0.0.1:{g.port}/u/x", "load.csv", rate=RATE, duration=60 * s,
                connections=20, timeout_ms=3000)
    time.sleep(1.0)
    pids_before = (g.proc.pid, g.control_pid(), tuple(sorted(g.worker_pids().values())))
    ctl = pids_before[1]
    try:
        with open(f"/proc/{ctl}/maps") as f:
            shim_loaded = os.path.basename(SHIM) in f.read()
    except (OSError, TypeError):
        shim_loaded = False
    sc.fig(asan="yes" if sc.asan else "no", shim_loaded="yes" if shim_loaded else "no")

    results = [cycle(sc, g, rx, flag, stats, mode, name, f"chaos-eio-{mode}", mode[0] + "_")
               for mode, (name, _) in zip(MODES, bads)]

    time.sleep(0.3)
    rows = load.stop()
    pids_after = (g.proc.pid, g.control_pid(), tuple(sorted(g.worker_pids().values())))
    crashes = g.events("worker_crash")
    events = g.events()
    alerts_final = sorted((a.get("event"), a.get("dedup_key")) for a in g.alerts())
    store_errors = sum(1 for l in g.log_lines()
                       if "I/O error" in str(l.get("error", "")) or "I/O" in l.get("msg", ""))
    sanitizer = g.sanitizer_reports()
    sc.plot(load.csv, f"EIO on the database ({', then '.join(MODES)})", events)
    rc = g.stop()
    keys = [r["flushed"][i]["dedup_key"] for r in results if r["flushed"] for i in (0, 1)]
    db_path = os.path.join(state_dir, "breakwater.db")
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            stored = con.execute(
                f"SELECT count(*) FROM alerts WHERE dedup_key IN ({','.join('?' * len(keys))})",
                keys).fetchone()[0] if keys else 0
        finally:
            con.close()
    except sqlite3.Error as e:
        integrity, stored = f"error: {e}", 0

    fail_counts = []
    for r in results:
        during = window(rows, r["t_fault"], r["t_heal"] + 500)
        failed = [x for x in during if not ok(x)]
        p = r["mode"][0] + "_"
        sc.fig(**{f"{p}proxied": len(during), f"{p}failed": len(failed)})
        fail_counts.append((r["mode"], during, failed))
    sc.fig(store_error_logs=store_errors, pids_same=pids_before == pids_after, exit=rc,
           stored=f"{stored}/{2 * len(results)}", integrity=str(integrity).replace(" ", "_")[:40])

    if not shim_loaded:
        raise Fail(f"libbw_eio.so is not mapped in the control process {ctl}")
    for r in results:
        if r["inj"]["injected"] == 0:
            raise Fail(f"{r['mode']}: the shim injected no {r['mode']} failure (shim: {r['inj']})")
    for mode, during, failed in fail_counts:
        if not during or failed:
            raise Fail(f"{mode}: {len(failed)} of {len(during)} proxied requests failed while the "
                       f"database failed: {failed[:5]}")
    if crashes or pids_before != pids_after:
        raise Fail(f"processes changed: {pids_before} -> {pids_after}, crashes {crashes[:3]}")
    if sanitizer:
        raise Fail(f"sanitizer report in the gateway log: {sanitizer}")
    for r in results:
        st, body = r["post"]
        if st not in (200, 201, 202):
            raise Fail(f"{r['mode']}: POST /api/v1/alerts during the fault answered {st} {body}: "
                       f"the alert was refused, not held")
        if r["depth_max"] <= 0:
            raise Fail(f"{r['mode']}: breakwater_alert_queue_depth stayed 0 during the fault")
        if not r["flushed"]:
            raise Fail(f"{r['mode']}: the alerts raised during the fault never appeared "
                       f"(alerts: {alerts_final})")
        if not r["notified"]:
            raise Fail(f"{r['mode']}: their notifications never reached the receiver")
        if r["degraded"] < 1:
            raise Fail(f"{r['mode']}: no alert_store_degraded notice reached the receiver during "
                       f"the fault")
    if rc != 0:
        raise Fail(f"breakwater did not exit 0 (rc {rc})")
    if integrity != "ok":
        raise Fail(f"integrity_check: {integrity}")
    if stored != 2 * len(results):
        raise Fail(f"only {stored} of the {2 * len(results)} alerts raised during the faults are "
                   f"in the database")


if __name__ == "__main__":
    if "--modes" in sys.argv:
        MODES = sys.argv[sys.argv.index("--modes") + 1].split(",")
    sys.exit(Scenario("db_eio", TIME_BOUND_S).run(scenario))
