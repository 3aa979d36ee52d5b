#!/usr/bin/python3
"""alert_partition.py: the webhook receiver is partitioned while alerts fire; then the whole
gateway is killed with kill -9 during a partition, restarted on the same state_dir, and healed.

World (chaos/netns.sh, prefix bwc-alerts): breakwater (2 workers) in PREFIX-gw, upstream `a`
(bw_upstream) in PREFIX-up, the recording webhook receiver (tests/integration/receiver.py) in
PREFIX-rx at 10.77.0.6:9000. Alerts: one webhook channel to it; P1 escalates to P0 after
ESCALATE_AFTER_S; retries back off from 500 ms to 2 s. The receiver's JSONL log is read from the
disk, so what it received is known while its link is cut; a delivery is counted by the body's
delivery_id (retries of an ambiguous send repeat the id: duplicates are fine, missing ids not).
A light bw_load (PLOT_LOAD_RATE on /) runs from the breaker_open on, only so that the PNG
timeline shows what clients saw; nothing judges it, and it starts after the breaker opened.

Phase partition: cut the receiver's link (nft drop), open the breaker of `a` (5 answers 500).
  - the breaker_open alert is in GET /api/v1/alerts within ALERT_RECORDED_MAX_S of the event;
  - it escalates to P0 (escalation_level 1) ESCALATE_AFTER_S after it started, +- ESCALATE_SLACK_S;
  - nothing reaches the receiver while cut (the partition is real);
  - after the heal, every notification of the alert (firing P1 + escalated P0) is received
    within DELIVER_AFTER_HEAL_MAX_S.
Phase kill9: cut the link again, raise EXTERNAL_ALERTS external alerts (P0 and P1), let the
sender try (rows in `sending` and `pending`), note every delivery the database holds (the
accepted notifications), kill -9 every gateway process, restart on the same state_dir while
still cut, heal.
  - lost = accepted P0/P1 delivery ids never received = 0, within DELIVER_AFTER_HEAL_MAX_S of the
    heal; no P0/P1 delivery left pending, sending or failed;
  - the graceful stop exits 0 and `sqlite3 breakwater.db 'PRAGMA integrity_check'` says ok.
  One P2 alert is raised in the same partition too: a notification in flight at a crash is sent
  again after the restart on every tier (docs/alerts.md, leases), so it counts in `lost` like
  the others; p2_lost shows it separately.
Timing bounds x2.5 on an ASan build.
"""

import datetime
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (Fail, Gateway, LatencyFail, Load, Receiver, Scenario, Upstream, fmt_s,  # noqa: E402
                      need_root, need_tools, now_ms, wait_for)

ESCALATE_AFTER_S = 2
ESCALATE_SLACK_S = 1.0
ALERT_RECORDED_MAX_S = 1.0
DELIVER_AFTER_HEAL_MAX_S = 10.0  # curl's 3 s connect timeout + max_backoff 2 s + slack
EXTERNAL_ALERTS = 6  # half P0, half P1
TRY_BEFORE_KILL_S = 1.5
PLOT_LOAD_RATE = 20  # req/s of the light load drawn in the timeline (not judged)
TIME_BOUND_S = 120

CONFIG = f"""
listen: ["127.0.0.1:8080"]
admin: {{ listen: "127.0.0.1:9901" }}
workers: 2
upstreams:
  a:
    hosts: ["10.77.0.2:8000"]
    outlier: {{ consecutive_failures: 0 }}
    breaker: {{ consecutive_failures: 5, open_duration: 2m }}
routes:
  - name: a
    match: {{ path_prefix: / }}
    upstream: a
alerts:
  channels:
    hook: {{ type: webhook, url: "http://10.77.0.6:9000/hook" }}
  tiers:
    P0: {{ channels: [hook] }}
    P1: {{ channels: [hook], escalate_after: {ESCALATE_AFTER_S}s }}
    P2: {{ channels: [hook] }}
  delivery: {{ backoff: 500ms, max_backoff: 2s }}
"""


def iso_ms(text):
    dt = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000.0


def deliveries(g):
    """{delivery_id: delivery} over every alert in the database."""
    out = {}
    for a in g.alerts():
        detail = g.alert(a["id"])
        for d in (detail or {}).get("deliveries", []):
            d["alert_tier"] = a["tier"]
            out[d["delivery_id"]] = d
    return out


def scenario(sc):
    need_root()
    need_tools("ip", "nft", "sqlite3")
    s = sc.scale
    net = sc.netns("bwc-alerts")
    Upstream(sc, "a", listen="10.77.0.2:8000", netns=net.up)
    rx = Receiver(sc, host="10.77.0.6", port=9000, netns=net.rx)
    g = Gateway(sc, CONFIG, fixed_ports=True)

    # ---- phase partition: the receiver is cut off while a breaker opens ----
    t_cut1 = now_ms()
    net.cut("receiver", mode="drop")
    sc.mark("fault_injected", ts_ms=t_cut1, what="receiver cut")
    for _ in range(5):
        g.get("/x?status=500")
    ev = g.wait_event("breaker_open", 5)
    t_open = ev["ts_ms"]
    alert = wait_for(lambda: [a for a in g.alerts() if a.get("event") == "breaker_open"],
                     5 * s, "the breaker_open alert", interval=0.01)[0]
    recorded_s = (now_ms() - t_open) / 1000
    # A light load, only so that the PNG timeline shows what clients saw (503 while the breaker
    # is open, refused during the kill -9, served after the restart). It starts once the breaker
    # is open and the alert recorded, so it takes no part in either; nothing judges it.
    load = Load(sc, "http://127.0.0.1:8080/x", "load.csv", rate=PLOT_LOAD_RATE, duration=60 * s,
                connections=4, timeout_ms=2000)
    esc = wait_for(lambda: (g.alert(alert["id"])["alert"].get("escalation_level", 0) >= 1
                            and g.alert(alert["id"])),
                   ESCALATE_AFTER_S + 5 * s, "the escalation to P0", interval=0.05)
    started = iso_ms(esc["alert"]["started_at"])
    escalated = [d for d in esc["deliveries"] if d["kind"] == "escalated"]
    esc_after = (iso_ms(escalated[0]["created_at"]) - started) / 1000 if escalated else None
    got_while_cut = len(rx.delivery_ids())
    want = {d["delivery_id"] for d in esc["deliveries"]}
    attempts = sum(d["attempts"] for d in esc["deliveries"])
    t_heal = now_ms()
    net.heal("receiver")
    sc.mark("fault_healed", ts_ms=t_heal, what="receiver healed")
    wait_for(lambda: want <= rx.delivery_ids(), DELIVER_AFTER_HEAL_MAX_S * s,
             "the alert's notifications at the receiver", interval=0.05)
    delivered_s = (now_ms() - t_heal) / 1000
    sc.fig(alert_recorded_after=fmt_s(recorded_s), escalated_after=fmt_s(esc_after),
           attempts_while_cut=attempts, notifications=len(want),
           delivered_after_heal=fmt_s(delivered_s))
    if recorded_s > ALERT_RECORDED_MAX_S * s:
        raise LatencyFail(f"the alert was recorded {recorded_s:.2f}s after breaker_open")
    if esc["alert"]["tier"] != "P0" or esc_after is None or \
            abs(esc_after - ESCALATE_AFTER_S) > ESCALATE_SLACK_S * s:
        raise Fail(f"escalation: tier {esc['alert']['tier']}, after {esc_after}s")
    if got_while_cut:
        raise Fail(f"the receiver got {got_while_cut} notifications through the cut")
    if len(want) < 2:
        raise Fail(f"expected firing + escalated notifications, got {len(want)}")

    # ---- phase kill9: the whole gateway dies during a partition ----
    net.cut("receiver", mode="drop")
    t_cut2 = now_ms()
    sc.mark("fault_injected", ts_ms=t_cut2, what="receiver cut again")
    raised = []
    for i in range(EXTERNAL_ALERTS + 1):
        tier = "P2" if i == EXTERNAL_ALERTS else ("P0" if i % 2 == 0 else "P1")
        st, body = g.admin("/api/v1/alerts", "POST",
                           {"summary": f"chaos external {i}", "tier": tier,
                            "labels": {"scenario": "alert_partition", "n": str(i)},
                            "dedup_key": f"chaos-ext-{i}"})
        if st not in (200, 201):
            raise Fail(f"POST /api/v1/alerts answered {st}: {body}")
        raised += body["ids"]
    time.sleep(TRY_BEFORE_KILL_S)
    accepted = deliveries(g)
    sending = sum(1 for d in accepted.values() if d["status"] == "sending")
    t_kill = now_ms()
    g.kill9_all()
    sc.mark("fault_injected", ts_ms=t_kill, what="kill -9 gateway")
    g.start()
    sc.mark("restarted")
    time.sleep(1.0)
    t_heal2 = now_ms()
    net.heal("receiver")
    sc.mark("fault_healed", ts_ms=t_heal2, what="receiver healed")

    def pages(ids):
        return {k: d for k, d in ids.items() if d["tier"] in ("P0", "P1")}

    must = set(accepted)  # every tier: an in-flight P2 is re-sent after the restart too

    def all_in():
        got = rx.delivery_ids()
        return must <= got and got

    try:
        wait_for(all_in, DELIVER_AFTER_HEAL_MAX_S * s, "every accepted notification",
                 interval=0.05)
    except Fail:
        pass
    got = rx.delivery_ids()
    lost = must - got
    delivered2_s = (now_ms() - t_heal2) / 1000
    # what the database says once things settle
    wait_for(lambda: not [d for d in deliveries(g).values()
                          if d["status"] in ("pending", "sending")],
             DELIVER_AFTER_HEAL_MAX_S * s, "no delivery pending", interval=0.1)
    final = deliveries(g)
    unfinished = [(k, d["status"]) for k, d in pages(final).items() if d["status"] != "sent"]
    p2 = [k for k, d in accepted.items() if d["tier"] == "P2"]
    p2_lost = len([k for k in p2 if k not in got])
    time.sleep(0.3)  # so that the last deliveries are not at the timeline's very edge
    load.stop()
    sc.plot(load.csv, "webhook receiver partitioned; kill -9 + restart while cut "
            "(load from the open on)", g.events(), since_ms=t_cut1 - 500)
    rc = g.stop()
    integrity = subprocess.run(["sqlite3", os.path.join(g.state_dir, "breakwater.db"),
                                "PRAGMA integrity_check"], capture_output=True, text=True,
                               timeout=30)
    integrity_out = (integrity.stdout.strip() or integrity.stderr.strip())
    sc.fig(accepted=len(must), sending_at_kill=sending, lost=len(lost),
           delivered_after_restart_heal=fmt_s(delivered2_s), p2_lost=p2_lost,
           integrity=integrity_out.replace(" ", "_")[:40])
    if lost:
        raise Fail(f"{len(lost)} accepted notifications never reached the receiver: "
                   f"{[(k, accepted[k]['tier'], accepted[k]['status']) for k in lost][:5]}")
    if unfinished:
        raise Fail(f"P0/P1 deliveries not sent: {unfinished[:5]}")
    if rc != 0:
        raise Fail(f"breakwater did not exit 0 after the restart (rc {rc})")
    if integrity_out != "ok":
        raise Fail(f"integrity_check: {integrity_out}")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")


if __name__ == "__main__":
    sys.exit(Scenario("alert_partition", TIME_BOUND_S).run(scenario))
