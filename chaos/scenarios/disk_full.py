#!/usr/bin/python3
"""disk_full.py: the file system under state_dir fills up while traffic flows and alerts fire.

World (root: the script re-executes itself in a private mount namespace, `unshare -m`, and mounts
a TMPFS_SIZE tmpfs there; the kernel drops the mount with the namespace even if the scenario is
killed, and the `finally` unmounts it anyway): state_dir on the tmpfs; breakwater (2 workers) on
loopback with upstreams `u` (healthy, under load) and `bad` (answers 500 on demand); alerts to the
recording webhook receiver; bw_load on /u at RATE, every request in a CSV.

Steps: load runs; a filler file takes every free byte of the tmpfs (ENOSPC); the breaker of `bad`
opens (5 answers 500) and an external alert is POSTed; FULL_FOR_S later the filler is deleted.

Pass criteria (timing bounds x2.5 on an ASan build):
  - proxying is untouched: every /u request that started while the disk was full succeeded;
  - nothing crashed: the supervisor, control and worker PIDs are the same before and after, no
    worker_crash event, no SIGBUS in the log, and the graceful stop exits 0;
  - the alerts raised while full are held and flushed: after the filler is deleted, the
    breaker_open alert and the external alert are in GET /api/v1/alerts within FLUSH_MAX_S and
    their notifications reach the receiver within FLUSH_MAX_S;
  - people are told: an alert_store_degraded "firing" notice reaches the receiver while the disk
    is still full (the store watcher pages after 2 s of failure, without the store), and a
    "resolved" one after space returns; the episode is then in the alert history, resolved;
  - the database is intact afterwards (PRAGMA integrity_check = ok, gateway stopped).
Figures: whether the alert was already visible while full (held_while_full=yes means it was
not: it waited in memory), the POST's status while full, how long the flush took.
"""

import errno
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (Fail, Gateway, Load, Receiver, Scenario, Upstream, fmt_s, need_root,  # noqa: E402
                      need_tools, now_ms, ok, private_mounts, wait_for, window)

TMPFS_SIZE = "2m"
RATE = 200
FULL_FOR_S = 4.0
FLUSH_MAX_S = 15.0  # the engine's retry backoff doubles from 250 ms while the disk is full
TIME_BOUND_S = 90


def config(u, bad, hook):
    return f"""
workers: 2
upstreams:
  u:
    hosts: ["{u}"]
    outlier: {{ consecutive_failures: 0 }}
  bad:
    hosts: ["{bad}"]
    outlier: {{ consecutive_failures: 0 }}
    breaker: {{ consecutive_failures: 5, open_duration: 2m }}
routes:
  - name: u
    match: {{ path_prefix: /u }}
    upstream: u
  - name: bad
    match: {{ path_prefix: /bad }}
    upstream: bad
alerts:
  channels:
    hook: {{ type: webhook, url: "{hook}" }}
  tiers:
    P0: {{ channels: [hook] }}
    P1: {{ channels: [hook] }}
    P2: {{ channels: [hook] }}
  delivery: {{ backoff: 500ms, max_backoff: 2s }}
"""


def fill(path):
    """Writes zeros until ENOSPC; returns the bytes written."""
    n = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        # the last partial page: single bytes until nothing fits
        while True:
            try:
                f.write(b"\0")
                n += 1
            except OSError:
                break
    return n


def scenario(sc):
    need_root()
    need_tools("mount", "umount", "sqlite3")
    if os.environ.get("BW_CHAOS_MNTNS") != "1":
        raise Fail("not in a private mount namespace (unshare missing?)")
    s = sc.scale
    mnt = sc.path("mnt")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", mnt],
                   check=True, timeout=10)
    sc.cleanup(lambda: subprocess.run(["umount", "-l", mnt], timeout=10), "umount tmpfs")
    state_dir = os.path.join(mnt, "var")

    rx = Receiver(sc)
    u = Upstream(sc, "u")
    bad = Upstream(sc, "bad")
    g = Gateway(sc, config(u.addr, bad.addr, rx.url), state_dir=state_dir)
    load = Load(sc, f"http://127.0.0.1:{g.port}/u/x", "load.csv", rate=RATE, duration=60 * s,
                connections=20, timeout_ms=3000)
    time.sleep(1.0)
    pids_before = (g.proc.pid, g.control_pid(), tuple(sorted(g.worker_pids().values())))

    filler = os.path.join(mnt, "filler")
    t_full = now_ms()
    filled = fill(filler)
    sc.mark("fault_injected", ts_ms=t_full, what="disk full")
    for _ in range(5):
        g.get("/bad/x?status=500")
    st_post, body_post = g.admin("/api/v1/alerts", "POST",
                                 {"summary": "raised while the disk is full", "tier": "P1",
                                  "labels": {"scenario": "disk_full"}, "dedup_key": "chaos-disk"})
    time.sleep(FULL_FOR_S)
    visible_while_full = [a["event"] for a in g.alerts()]
    statvfs = os.statvfs(mnt)
    still_full = statvfs.f_bavail == 0
    t_free = now_ms()
    os.unlink(filler)
    sc.mark("fault_healed", ts_ms=t_free, what="space freed")

    def alerts_in():
        events = {a["event"] for a in g.alerts()}
        return {"breaker_open", "external"} <= events and events

    flushed = True
    try:
        wait_for(alerts_in, FLUSH_MAX_S * s, "the alerts raised while full", interval=0.05)
    except Fail:
        flushed = False
    alert_flush_s = (now_ms() - t_free) / 1000
    want_events = {"breaker_open", "external"}

    def notified():
        got = {r["json"].get("event") for r in rx.requests() if isinstance(r.get("json"), dict)}
        return want_events <= got

    delivered = True
    try:
        wait_for(notified, FLUSH_MAX_S * s, "their notifications at the receiver", interval=0.05)
    except Fail:
        delivered = False
    deliver_s = (now_ms() - t_free) / 1000
    time.sleep(0.3)
    rows = load.stop()
    pids_after = (g.proc.pid, g.control_pid(), tuple(sorted(g.worker_pids().values())))
    crashes = g.events("worker_crash")
    logs = g.logs()
    events = g.events()
    alerts_final = sorted({a["event"] for a in g.alerts()})
    store_alerts = [a["status"] for a in g.alerts() if a["event"] == "alert_store_degraded"]
    notices = [(r["ts"] * 1000, r["json"].get("status")) for r in rx.requests()
               if isinstance(r.get("json"), dict)
               and r["json"].get("event") == "alert_store_degraded"]
    paged_while_full = [t for t, st in notices if st == "firing" and t_full <= t < t_free]
    told_recovered = [t for t, st in notices if st == "resolved" and t >= t_free]
    sc.plot(load.csv, "disk full under state_dir", events)
    rc = g.stop()
    integrity = subprocess.run(["sqlite3", os.path.join(state_dir, "breakwater.db"),
                                "PRAGMA integrity_check"], capture_output=True, text=True,
                               timeout=30)
    integrity_out = integrity.stdout.strip() or integrity.stderr.strip()

    during = window(rows, t_full, t_free + 500)
    failed = [r for r in during if not ok(r)]
    sc.fig(filler_bytes=filled, proxied_while_full=len(during), failed_while_full=len(failed),
           post_while_full=st_post, held_while_full="no" if want_events & set(visible_while_full)
           else "yes", alerts_after_free=fmt_s(alert_flush_s) if flushed else "never",
           notified_after_free=fmt_s(deliver_s) if delivered else "never",
           degraded_notice=fmt_s((paged_while_full[0] - t_full) / 1000) if paged_while_full
           else "never", recovered_notice=fmt_s((told_recovered[0] - t_free) / 1000)
           if told_recovered else "never",
           pids_same=pids_before == pids_after, integrity=integrity_out.replace(" ", "_")[:40])
    if not still_full:
        raise Fail("the tmpfs was not full at the end of the full period (filler too small?)")
    if not during or failed:
        raise Fail(f"{len(failed)} of {len(during)} proxied requests failed while the disk was "
                   f"full: {failed[:5]}")
    if "SIGBUS" in logs or "BUS" in str([c["fields"].get("signal_name") for c in crashes]):
        raise Fail("SIGBUS")
    if crashes or pids_before != pids_after:
        raise Fail(f"processes changed: {pids_before} -> {pids_after}, crashes {crashes[:3]}")
    if st_post not in (200, 201, 202):
        raise Fail(f"POST /api/v1/alerts while full answered {st_post} {body_post}: the alert "
                   f"was refused, not held")
    if not flushed:
        raise Fail(f"the alerts raised while full never appeared (alerts: {alerts_final})")
    if not delivered:
        raise Fail("the notifications of the alerts raised while full never reached the receiver")
    if not paged_while_full:
        raise Fail(f"no alert_store_degraded notice while the disk was full (notices: {notices})")
    if not told_recovered:
        raise Fail(f"no resolved alert_store_degraded notice after space returned ({notices})")
    if store_alerts != ["resolved"]:
        raise Fail(f"alert history of the episode: {store_alerts} (want one, resolved)")
    if rc != 0:
        raise Fail(f"breakwater did not exit 0 (rc {rc})")
    if integrity_out != "ok":
        raise Fail(f"integrity_check: {integrity_out}")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")


if __name__ == "__main__":
    private_mounts()
    sys.exit(Scenario("disk_full", TIME_BOUND_S).run(scenario))
