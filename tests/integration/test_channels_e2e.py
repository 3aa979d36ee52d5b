"""Alert channels end to end (issue 7): a real `breakwater` delivering a P0 alert to DingTalk,
PagerDuty and Twilio as played by tests/integration/fake_providers.py (a separate process that
checks every request the way the provider does: DingTalk's signature recomputed from the shared
secret and its keyword, PagerDuty's routing key and Events v2 schema, Twilio's basic auth, E.164
numbers and a well-formed TwiML document), and the signed ack link (GET /ack/TOKEN on the
public listener) closing the loop.

Covered:
  * a P0 alert reaches all three providers with valid signatures/auth and the right shape, the
    DingTalk message and the Twilio <Gather> carry the signed ack link, PagerDuty's dedup_key is
    the alert's; the P0 repeats on every channel after `repeat`; forged and expired links get
    403 and acknowledge nothing; the genuine link acknowledges (lineage: by "ack-link") and no
    channel hears from the alert again during 2 x repeat;
  * the Twilio key press: Twilio requests the <Gather action> (the ack link) with Digits=N;
    only "1" acknowledges, every answer is TwiML saying what happened, bad tokens get 403, for
    the GET the TwiML asks for and for a POST with a form body (Twilio's default method);
  * resolve (admin API and external `status: resolved`): PagerDuty gets `resolve` with the same
    dedup_key, DingTalk a RESOLVED message without an ack link, Twilio no call;
  * (expected failure, strict) PagerDuty hearing `acknowledge` when the alert is acknowledged:
    the channel can send it, but the engine writes no notification on ack (docs/channels.md).

Waiting is always polling with a deadline; bounds on timing are generous (2-core machine, ASan
builds 2-3x slower). Helpers shared with the other alert tests (fake providers, admin API) are
in conftest.py; those about these channels live here.
"""

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import socket
import sqlite3
import time
import urllib.parse
import xml.etree.ElementTree as ET

import pytest

import conftest
from conftest import alert_detail, post_json, request

DING_TOKEN = "e2e-ding-token"
DING_SECRET = "SEC0e2e1d1ngsecret5a7b9c"
DING_KEYWORD = "Breakwater"
PD_KEY = "R0e2eR0e2eR0e2eR0e2eR0e2eR0e2eAA"  # 32 characters, as PagerDuty's integration keys
TW_SID = "AC" + "e2e0" * 8
TW_TOKEN = "e2e-twilio-auth-token"
TW_FROM = "+15550000000"
TW_TO = ["+15550001111", "+15550002222"]

REPEAT_S = 2  # the P0 tier's `repeat` (the config takes any duration; 2 s keeps the test short)
ACK_PATH = re.compile(r"^/ack/(\d+)\.(\d+)\.([0-9a-f]{32})$")
SOURCE = "breakwater@" + socket.gethostname()[:127]

wait_for = functools.partial(conftest.wait_for, interval=0.05)  # polls every 50 ms


# ---- the fake providers and the gateway ------------------------------------------------------

FAKE_ARGS = ("--dingtalk-token", DING_TOKEN, "--dingtalk-secret", DING_SECRET,
             "--dingtalk-keyword", DING_KEYWORD, "--dingtalk-limit", "200",
             "--pagerduty-key", PD_KEY, "--twilio-sid", TW_SID, "--twilio-token", TW_TOKEN)


@pytest.fixture
def gw(strict_gateway):
    """Every gateway must also stop on SIGTERM with exit status 0 (conftest's strict_gateway)."""
    return strict_gateway


# ---- config ------------------------------------------------------------------------------------

def config(fp, tiers, external_url=True, delivery=None, state_dir=None):
    """The three provider channels pointing at the fakes; `tiers`: name -> (channels, repeat).
    {port} (the gateway's public listener) is left for conftest to fill in."""
    ding = f"{fp.url('/dingtalk/robot/send')}?access_token={DING_TOKEN}"
    t = f"state_dir: {state_dir}\n" if state_dir else ""
    t += ("shutdown_timeout: 5s\nwatchdog:\n  stall_after: 10s\n"
         "upstreams:\n  svc:\n    hosts: [\"127.0.0.1:1\"]\n"
         "routes:\n  - name: r-svc\n    match:\n      path_prefix: /svc\n    upstream: svc\n"
         "alerts:\n")
    if external_url:
        t += '  external_url: "http://127.0.0.1:{port}"\n'
    t += ("  channels:\n"
          f"    ding:\n      type: dingtalk\n      url: \"{ding}\"\n"
          f"      secret: \"{DING_SECRET}\"\n"
          f"    pager:\n      type: pagerduty\n      routing_key: \"{PD_KEY}\"\n"
          f"      url: \"{fp.url('/pagerduty/v2/enqueue')}\"\n"
          f"    phone:\n      type: twilio\n      url: \"{fp.url('/twilio')}\"\n"
          f"      account_sid: \"{TW_SID}\"\n      auth_token: \"{TW_TOKEN}\"\n"
          f"      from: \"{TW_FROM}\"\n      to: [{', '.join(f'{n!r}' for n in TW_TO)}]\n"
          "  tiers:\n")
    for name, (channels, repeat) in tiers.items():
        t += f"    {name}:\n      channels: [{', '.join(channels)}]\n"
        if repeat:
            t += f"      repeat: {repeat}\n"
    t += "  delivery:\n" + "".join(f"    {k}: {v}\n" for k, v in
                                   (delivery or {"backoff": "200ms", "max_backoff": "1s"}).items())
    return t.replace("'", '"')


ALL_THREE = ["ding", "pager", "phone"]


# ---- admin API ---------------------------------------------------------------------------------

def raise_alert(g, **body):
    r = post_json(g, "/api/v1/alerts", body)
    assert r.status == 201, r
    assert len(r.json()["ids"]) == 1, r
    return str(r.json()["ids"][0])


def alert_status(g, aid):
    return alert_detail(g, aid)["alert"]["status"]


def outbox_settled(g, aid):
    """Every delivery row of the alert is final (nothing pending or being sent)."""
    d = alert_detail(g, aid)
    return d if all(x["status"] not in ("pending", "sending") for x in d["deliveries"]) else None


def audit_events(g, kind):
    out, since = [], 0
    while True:
        r = g.admin(f"/api/v1/events?since={since}&limit=1000", timeout=10)
        assert r.status == 200, r
        page = r.json()["events"]
        out += page
        if len(page) < 1000:
            break
        since = r.json()["next_since"]
    evs = [e for e in out if e["kind"] == kind]
    for e in evs:
        if isinstance(e["fields"], str):
            e["fields"] = json.loads(e["fields"])
    return evs


def ack_requests(g, aid):
    return [e["fields"] for e in audit_events(g, "ack_request")
            if str(e["fields"].get("alert_id")) == str(aid)]


# ---- ack links ---------------------------------------------------------------------------------

def ack_secret(state_dir):
    """The installation's ack-link secret, from the state database's meta table (the test plays
    someone who could forge links only if they had it). The gateway holds the database with an
    exclusive lock while it runs: read it while no gateway is running."""
    db = sqlite3.connect(f"file:{os.path.join(state_dir, 'breakwater.db')}?mode=ro", uri=True,
                         timeout=10)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'ack_secret'").fetchone()
    finally:
        db.close()
    assert row is not None and len(row[0]) == 64, row
    return bytes.fromhex(row[0])


def make_token(secret, alert_id, expiry_s):
    """acklink.h: <id>.<expiry>.<first 16 bytes of HMAC-SHA256(secret, "<id>.<expiry>"), hex>."""
    msg = f"{alert_id}.{expiry_s}"
    return msg + "." + hmac.new(secret, msg.encode(), hashlib.sha256).hexdigest()[:32]


def gateway_with_secret(gw, cfg, state_dir):
    """A gateway on `state_dir`, and the ack secret it signs with: a first start creates the
    database and the secret, which is read while nothing holds the database; the second start
    on the same state_dir uses that secret (links survive restarts)."""
    first = gw(cfg)
    assert first.stop() == 0, first.final_log[-3000:]
    secret = ack_secret(state_dir)
    return gw(cfg), secret


def link_path(g, link, aid):
    """Checks that `link` is this gateway's signed ack link for alert `aid`; returns its path."""
    u = urllib.parse.urlsplit(link)
    assert (u.scheme, u.hostname, u.port) == ("http", "127.0.0.1", g.port), link
    m = ACK_PATH.match(u.path)
    assert m and m.group(1) == str(aid) and not u.query, link
    expiry = int(m.group(2))
    assert 23.5 * 3600 < expiry - time.time() <= 24 * 3600 + 60, (link, expiry - time.time())
    return u.path


def get_public(g, path, method="GET", body=None, headers=None):
    return request(g.port, method, path, body=body, headers=headers, timeout=10)


def error_of(r):
    try:
        return r.json().get("error")
    except ValueError:
        return None


def twiml_says(r):
    """The <Say> texts of a TwiML answer (asserting it is one)."""
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("text/xml"), r.headers
    doc = ET.fromstring(r.body)
    assert doc.tag == "Response", r.body
    return [s.text or "" for s in doc.iter("Say")]


# ---- what the providers received ---------------------------------------------------------------

DING_LINK = re.compile(r"\[Acknowledge\]\((http://[^)\s]+)\)")


def dings(fp):
    return [q for q in fp.requests("dingtalk")]


def pd_events(fp, action=None, dedup=None):
    return [q for q in fp.requests("pagerduty")
            if (action is None or q["json"].get("event_action") == action)
            and (dedup is None or q["json"].get("dedup_key") == dedup)]


def calls(fp):
    return [q for q in fp.requests("twilio")]


def check_ding(q, *, word, summary, dedup, with_link):
    """One DingTalk robot request as DingTalk checks it; returns the markdown text."""
    assert q["method"] == "POST" and q["path"] == "/dingtalk/robot/send", q
    assert q["query"]["access_token"] == DING_TOKEN, q["query"]
    # the fake recomputed HMAC-SHA256(secret, timestamp + "\n" + secret) and checked freshness
    assert "dingtalk_sign" in q["verified"], q
    assert abs(int(q["query"]["timestamp"]) / 1000 - q["time"]) < 60, q["query"]
    assert json.loads(q["answer"]["body"])["errcode"] == 0, q["answer"]
    assert q["headers"]["content-type"].startswith("application/json"), q["headers"]
    j = q["json"]
    assert j["msgtype"] == "markdown", j
    assert j["markdown"]["title"] == f"[P0] {word}: {summary}", j["markdown"]["title"]
    text = j["markdown"]["text"]
    assert text.startswith(f"### [P0] {word}: {summary}"), text
    assert dedup in text and DING_KEYWORD in text and SOURCE in text, text
    links = DING_LINK.findall(text)
    assert len(links) == (1 if with_link else 0), text
    return text


def check_pd_trigger(q, *, aid, dedup, summary):
    assert q["method"] == "POST" and q["path"] == "/pagerduty/v2/enqueue", q
    assert "pagerduty_event" in q["verified"] and q["answer"]["status"] == 202, q
    j = q["json"]
    assert j["routing_key"] == PD_KEY and j["event_action"] == "trigger", j
    assert j["dedup_key"] == dedup, j
    p = j["payload"]
    assert p["summary"] == summary and p["severity"] == "critical", p
    assert p["source"] == SOURCE and p["class"] == "external", p
    assert p["custom_details"]["alert_id"] == aid and p["custom_details"]["tier"] == "P0", p
    assert p["custom_details"]["dedup_key"] == dedup, p
    assert j["client"] == "Breakwater", j
    assert len(j["links"]) == 1 and j["links"][0]["text"] == "Acknowledge in Breakwater", j
    return j["links"][0]["href"]


def check_call(q, *, summary):
    """One Twilio Calls.json request; returns (To, the parsed TwiML)."""
    assert q["method"] == "POST", q
    assert q["path"] == f"/twilio/2010-04-01/Accounts/{TW_SID}/Calls.json", q
    basic = base64.b64encode(f"{TW_SID}:{TW_TOKEN}".encode()).decode()
    assert q["headers"]["authorization"] == f"Basic {basic}", q["headers"]
    assert q["headers"]["content-type"].startswith("application/x-www-form-urlencoded"), q
    assert {"twilio_basic_auth", "twiml"} <= set(q["verified"]), q
    assert q["answer"]["status"] == 201, q["answer"]
    f = q["form"]
    assert set(f) == {"To", "From", "Twiml"}, f
    assert f["From"] == TW_FROM and f["To"] in TW_TO, f
    doc = ET.fromstring(f["Twiml"])
    assert doc.tag == "Response", f["Twiml"]
    says = [s.text or "" for s in doc.iter("Say")]
    assert any(summary in s and "priority P 0" in s for s in says), says
    return f["To"], doc


def gather_of(doc):
    g = doc.find("Gather")
    assert g is not None, ET.tostring(doc)
    assert g.get("numDigits") == "1" and g.get("method") == "GET", g.attrib
    says = [s.text or "" for s in g.iter("Say")]
    assert says and all("Press 1 to acknowledge." in s for s in says), says
    return g.get("action")


# ---- 1. P0 through DingTalk + PagerDuty + Twilio, repeat, ack by link ---------------------------

def test_p0_through_dingtalk_pagerduty_twilio_repeats_until_the_ack_link(gw, fake_providers,
                                                                          tmp_path):
    """The whole loop, through real processes: firing on all three providers (signatures, auth,
    shapes, the ack link in the DingTalk markdown, the PagerDuty links and the Twilio Gather),
    a repeat on each after ~`repeat`, forged/expired links refused (403, nothing acknowledged),
    the genuine link from DingTalk acknowledges (lineage), then silence on every channel for
    more than 2 x repeat."""
    fp = fake_providers(*FAKE_ARGS)
    g, secret = gateway_with_secret(gw, config(
        fp, {"P0": (ALL_THREE, f"{REPEAT_S}s"), "P1": (["ding"], None), "P2": (["ding"], None)},
        state_dir=str(tmp_path / "state")), str(tmp_path / "state"))
    summary = "checkout is down"
    t0 = time.time()
    aid = raise_alert(g, summary=summary, tier="P0", labels={"service": "checkout"})
    dedup = 'external{service="checkout"}'
    detail = alert_detail(g, aid)
    assert detail["alert"]["dedup_key"] == dedup and detail["alert"]["tier"] == "P0", detail
    link_path(g, detail["ack_link"], aid)  # the admin API shows the link too

    # -- firing: every provider, first notification ----------------------------------------
    wait_for(lambda: dings(fp) and pd_events(fp) and len(calls(fp)) >= len(TW_TO), 15,
             "the firing notification on all three providers")
    d0 = dings(fp)[0]
    text = check_ding(d0, word="FIRING", summary=summary, dedup=dedup, with_link=True)
    ding_link = DING_LINK.findall(text)[0]
    ack = link_path(g, ding_link, aid)
    pd0 = pd_events(fp)[0]
    link_path(g, check_pd_trigger(pd0, aid=aid, dedup=dedup, summary=summary), aid)
    first_calls = calls(fp)[:len(TW_TO)]
    assert sorted(c["form"]["To"] for c in first_calls) == sorted(TW_TO), first_calls
    for c in first_calls:
        _, doc = check_call(c, summary=summary)
        link_path(g, gather_of(doc), aid)
    # one delivery row per channel; Idempotency-Key = its delivery_id (Twilio: one per number)
    firing = {x["channel"]: x["delivery_id"] for x in alert_detail(g, aid)["deliveries"]
              if x["kind"] == "firing"}
    assert sorted(firing) == ["ding", "pager", "phone"], firing
    assert d0["headers"]["idempotency-key"] == firing["ding"], d0["headers"]
    assert pd0["headers"]["idempotency-key"] == firing["pager"], pd0["headers"]
    assert sorted(c["headers"]["idempotency-key"] for c in first_calls) == [
        f"{firing['phone']}:call{i}" for i in range(len(TW_TO))], first_calls
    state = fp.state()
    assert state["pagerduty"] == {dedup: "triggered"}, state["pagerduty"]
    assert [c["gather"]["method"] for c in state["calls"]] == ["GET"] * len(TW_TO), state["calls"]
    assert d0["time"] - t0 < 10, d0["time"] - t0

    # -- the P0 repeats on every channel -------------------------------------------------------
    wait_for(lambda: len(dings(fp)) >= 2 and len(pd_events(fp)) >= 2 and
             len(calls(fp)) >= 2 * len(TW_TO), 6 * REPEAT_S + 10, "a repeat on every channel")
    d1, pd1 = dings(fp)[1], pd_events(fp)[1]
    check_ding(d1, word="REPEAT", summary=summary, dedup=dedup, with_link=True)
    check_pd_trigger(pd1, aid=aid, dedup=dedup, summary=summary)  # same incident (dedup_key)
    for c in calls(fp)[len(TW_TO):2 * len(TW_TO)]:
        check_call(c, summary=summary)
    for first, second in ((d0, d1), (pd0, pd1), (first_calls[0], calls(fp)[len(TW_TO)])):
        # the repeat is due `repeat` after the raise (never earlier); late only by the machine
        assert REPEAT_S - 0.05 <= second["time"] - t0 <= REPEAT_S + 8, (
            first["provider"], second["time"] - t0)
        # a new notification (its own delivery row and key)
        assert second["headers"]["idempotency-key"].split(":")[0] not in firing.values()
    repeats = [x for x in alert_detail(g, aid)["deliveries"] if x["kind"] == "repeat"]
    assert {"ding", "pager", "phone"} <= {x["channel"] for x in repeats}, repeats
    assert alert_status(g, aid) == "firing"

    # -- forged and expired links: 403, nothing acknowledged ------------------------------------
    _, exp, sig = ack.split("/")[-1].split(".")
    other = str(int(aid) + 1)
    forged = {
        "another alert id under this signature": f"/ack/{other}.{exp}.{sig}",
        "a later expiry under this signature": f"/ack/{aid}.{int(exp) + 3600}.{sig}",
        "one signature digit changed": ack[:-1] + ("0" if ack[-1] != "0" else "1"),
        "signature in upper case": f"/ack/{aid}.{exp}.{sig.upper()}",
        "signature cut short": ack[:-2],
        "extra byte": ack + "0",
        "signed with another secret": "/ack/" + make_token(b"x" * 32, aid, int(exp)),
        "not a token": "/ack/hello",
        "empty token": "/ack/",
    }
    for what, path in forged.items():
        r = get_public(g, path)
        if path == "/ack/":  # nothing to verify: not an ack link at all (no route matches)
            assert r.status == 404, (what, r)
            continue
        assert r.status == 403 and error_of(r) == "invalid_ack_link", (what, path, r)
    assert make_token(secret, aid, int(exp)) == ack.split("/")[-1]  # we sign as the gateway
    expired = "/ack/" + make_token(secret, aid, int(time.time()) - 5)
    r = get_public(g, expired)
    assert r.status == 403 and error_of(r) == "ack_link_expired", r
    r = get_public(g, expired + "?Digits=1")  # the phone path is checked the same way
    assert r.status == 403 and error_of(r) == "ack_link_expired", r

    # -- the genuine link, as a person clicking it in DingTalk ---------------------------------
    t_ack = time.time()
    r = get_public(g, ack)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    assert r.body == f"Acknowledgement of alert {aid} received.\n".encode(), r.body
    a = wait_for(lambda: (lambda d: d if d["alert"]["status"] == "acknowledged" else None)(
        alert_detail(g, aid)), 10, "the alert acknowledged through the link")
    assert a["alert"]["acked_by"] == "ack-link" and a["alert"]["acked_at"], a["alert"]
    assert a["alert"]["next_repeat_at"] is None, a["alert"]
    acks = [h["detail"] for h in a["history"] if h["kind"] == "acknowledged"]
    assert len(acks) == 1 and acks[0]["by"] == "ack-link", a["history"]
    # the audit trail has exactly the genuine request: no forged or expired one got through
    assert ack_requests(g, aid) == [{"alert_id": int(aid), "via": "link"}], ack_requests(g, aid)
    # clicking again is harmless (acking an acknowledged alert is a no-op)
    assert get_public(g, ack).status == 200
    wait_for(lambda: len(ack_requests(g, aid)) == 2, 10, "the second click recorded")
    again = alert_detail(g, aid)
    assert again["alert"]["status"] == "acknowledged", again["alert"]
    assert len([h for h in again["history"] if h["kind"] == "acknowledged"]) == 1

    # -- nothing more on any channel for well over 2 x repeat -----------------------------------
    settled = wait_for(lambda: outbox_settled(g, aid), 15, "the alert's deliveries to settle")
    rows = len(settled["deliveries"])
    seen = (len(dings(fp)), len(pd_events(fp)), len(calls(fp)))
    # a notification the sender had already started when the ack committed may still land; the
    # outbox is settled now, so from here on nothing may arrive
    late = [q for q in fp.requests() if q["time"] > t_ack]
    assert len(late) <= 2 + len(TW_TO), late
    time.sleep(2 * REPEAT_S + 1.5)
    assert (len(dings(fp)), len(pd_events(fp)), len(calls(fp))) == seen, fp.requests()
    final = alert_detail(g, aid)
    assert len(final["deliveries"]) == rows, final["deliveries"]
    assert final["alert"]["status"] == "acknowledged", final["alert"]
    assert all(x["status"] in ("sent", "cancelled") for x in final["deliveries"]), \
        final["deliveries"]
    print(f"\n[channels e2e] firing -> {len(dings(fp))} DingTalk, {len(pd_events(fp))} PagerDuty, "
          f"{len(calls(fp))} Twilio requests; first page {d0['time'] - t0:.2f} s, repeat "
          f"{d1['time'] - t0:.2f} s after the raise; "
          f"{len(late)} request(s) after the ack (sent before it committed)")


# ---- 2. Twilio: a key pressed during the call -------------------------------------------------

def test_twilio_gather_digits_only_1_acknowledges(gw, fake_providers, tmp_path):
    """The call's <Gather numDigits=1 method=GET action=ACK_LINK>: Twilio requests the action with
    Digits=N and the call's parameters. Anything but "1" (GET or POST, "2", "9", "*", empty)
    answers TwiML "Not acknowledged" and acknowledges nothing; a bad or expired token is 403
    whatever the digits; "1" answers TwiML "Acknowledged" and acknowledges (by GET as the TwiML
    asks, and by POST with a form body, Twilio's default method for <Gather>)."""
    fp = fake_providers(*FAKE_ARGS)
    g, secret = gateway_with_secret(gw, config(
        fp, {"P0": (["phone"], None), "P1": (["ding"], None), "P2": (["ding"], None)},
        state_dir=str(tmp_path / "state")), str(tmp_path / "state"))
    a1 = raise_alert(g, summary="database primary unreachable", tier="P0",
                     labels={"service": "db", "case": "gather-get"})
    wait_for(lambda: len(fp.state()["calls"]) >= len(TW_TO), 15, "the calls for alert 1")
    c1 = fp.state()["calls"][0]
    assert c1["gather"]["numDigits"] == "1" and c1["gather"]["method"] == "GET", c1["gather"]
    action = c1["gather_action"]
    path1 = link_path(g, action, a1)
    assert any("Press 1 to acknowledge." in s for s in c1["say"]), c1["say"]

    def not_acked(press):
        assert press["status"] == 200 and press["twiml_ok"], press
        assert press["content_type"].startswith("text/xml"), press
        assert press["say"] == ["Not acknowledged. Goodbye."], press

    # wrong keys, as Twilio sends them: GET as the TwiML asks, then POST (form body)
    for digits, method in (("2", None), ("9", "POST"), ("*", None), ("0", "POST")):
        p = fp.press(digits, call=c1["sid"], method=method)
        assert p["method"] == (method or "GET"), p
        if p["method"] == "GET":
            assert "Digits=" + urllib.parse.quote_plus(digits) in p["url"], p
        not_acked(p)
    # an empty Digits in the query (Gather timed out with actionOnEmptyResult) is not a "1"
    assert twiml_says(get_public(g, path1 + "?Digits=")) == ["Not acknowledged. Goodbye."]
    # Digits elsewhere in the query is still read; a longer value is not "1", nor is one too
    # long for the handler's buffer (it was once taken for "no Digits", i.e. a click: acked)
    for query in ("?CallSid=CA1&Digits=11&To=%2B1", "?Digits=1111111111111111"):
        assert twiml_says(get_public(g, path1 + query)) == ["Not acknowledged. Goodbye."], query
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert twiml_says(get_public(g, path1, "POST", b"Digits=1111111111111111", form)) == [
        "Not acknowledged. Goodbye."]
    # a bad token is 403 whatever the key: forged, expired, another alert's id
    exp = int(path1.split(".")[1])
    bad = {"forged": path1[:-1] + ("0" if path1[-1] != "0" else "1"),
           "expired": "/ack/" + make_token(secret, a1, int(time.time()) - 1),
           "other id": f"/ack/{int(a1) + 1}.{exp}.{path1.split('.')[-1]}"}
    for what, path in bad.items():
        for method in ("GET", "POST"):
            p = fp.press("1", call=c1["sid"], method=method,
                         url=f"http://127.0.0.1:{g.port}{path}")
            assert p["status"] == 403 and not p["twiml_ok"], (what, method, p)
    # nothing was acknowledged; the decisive check is below: once "1" is pressed, the audit
    # trail (in order, one worker) must hold exactly that one ack_request for this alert
    time.sleep(1.0)
    assert alert_status(g, a1) == "firing"
    assert ack_requests(g, a1) == [], ack_requests(g, a1)

    # "1", as Twilio sends it for our TwiML (GET, Digits in the query)
    p = fp.press("1", call=c1["sid"])
    assert p["method"] == "GET" and p["status"] == 200 and p["twiml_ok"], p
    assert p["say"] == ["Acknowledged. Thank you."], p
    a = wait_for(lambda: (lambda d: d if d["alert"]["status"] == "acknowledged" else None)(
        alert_detail(g, a1)), 10, "alert 1 acknowledged by the key press")
    assert a["alert"]["acked_by"] == "ack-link (phone)", a["alert"]
    assert [h["detail"]["by"] for h in a["history"] if h["kind"] == "acknowledged"] == [
        "ack-link (phone)"], a["history"]
    assert ack_requests(g, a1) == [{"alert_id": int(a1), "via": "phone"}], ack_requests(g, a1)

    # "1" by POST with a form body (a Gather without method="GET" would do this)
    a2 = raise_alert(g, summary="disk full on db2", tier="P0",
                     labels={"service": "db", "case": "gather-post"})
    wait_for(lambda: len(fp.state()["calls"]) >= 2 * len(TW_TO), 15, "the calls for alert 2")
    c2 = fp.state()["calls"][len(TW_TO)]
    link_path(g, c2["gather_action"], a2)
    p = fp.press("2", call=c2["sid"], method="POST")
    not_acked(p)
    p = fp.press("1", call=c2["sid"], method="POST")
    assert p["method"] == "POST" and p["status"] == 200 and p["twiml_ok"], p
    assert p["say"] == ["Acknowledged. Thank you."], p
    wait_for(lambda: alert_status(g, a2) == "acknowledged", 10,
             "alert 2 acknowledged by the POSTed key press")
    assert ack_requests(g, a2) == [{"alert_id": int(a2), "via": "phone"}], ack_requests(g, a2)
    # a click in a chat or an email (no Digits at all) still acknowledges with a plain answer
    a3 = raise_alert(g, summary="queue stuck", tier="P0", labels={"case": "gather-none"})
    wait_for(lambda: len(fp.state()["calls"]) >= 3 * len(TW_TO), 15, "the calls for alert 3")
    path3 = link_path(g, fp.state()["calls"][2 * len(TW_TO)]["gather_action"], a3)
    r = get_public(g, path3)
    assert r.status == 200 and r.body == f"Acknowledgement of alert {a3} received.\n".encode(), r
    wait_for(lambda: alert_status(g, a3) == "acknowledged", 10, "alert 3 acknowledged")
    assert ack_requests(g, a3) == [{"alert_id": int(a3), "via": "link"}]


# ---- 3. resolve ----------------------------------------------------------------------------------

def test_resolve_reaches_pagerduty_and_dingtalk_not_twilio(gw, fake_providers):
    """A fresh P0 alert resolved through the admin API, and another through an external
    `status: resolved`: PagerDuty gets event_action "resolve" with the alert's dedup_key (the
    incident resolves), DingTalk a RESOLVED message without an ack link, Twilio no call; no
    repeat after the resolve; the old ack link then changes nothing."""
    fp = fake_providers(*FAKE_ARGS)
    g = gw(config(fp, {"P0": (ALL_THREE, f"{REPEAT_S}s"), "P1": (["ding"], None),
                       "P2": (["ding"], None)}))
    cases = []
    for how in ("admin", "external"):
        summary = f"payments degraded ({how})"
        key = f"payments-{how}"
        aid = raise_alert(g, summary=summary, tier="P0", dedup_key=key,
                          labels={"service": "payments", "how": how})
        cases.append((how, aid, key, summary))
    for how, aid, key, summary in cases:
        wait_for(lambda: pd_events(fp, "trigger", key) and
                 [q for q in dings(fp) if key in q["json"]["markdown"]["text"]], 15,
                 f"the firing notifications of {how}")
    r = post_json(g, f"/api/v1/alerts/{cases[0][1]}/resolve")
    assert r.status == 200 and r.json()["alert"]["status"] == "resolved", r
    r = post_json(g, "/api/v1/alerts", {"status": "resolved", "dedup_key": cases[1][2]})
    assert r.status == 201 and r.json()["resolved"] == 1, r

    for how, aid, key, summary in cases:
        res = wait_for(lambda: pd_events(fp, "resolve", key), 15, f"PagerDuty resolve ({how})")
        assert len(res) == 1, res
        j = res[0]["json"]
        assert j == {"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": key}, j
        assert res[0]["answer"]["status"] == 202 and "pagerduty_event" in res[0]["verified"]
        rd = wait_for(lambda: [q for q in dings(fp) if q["json"]["markdown"]["title"] ==
                               f"[P0] RESOLVED: {summary}"], 15, f"DingTalk resolved ({how})")
        assert len(rd) == 1, rd
        check_ding(rd[0], word="RESOLVED", summary=summary, dedup=key, with_link=False)
        assert "/ack/" not in rd[0]["body"], rd[0]["body"]
        d = wait_for(lambda: outbox_settled(g, aid), 15, f"{how}: deliveries settled")
        assert d["alert"]["status"] == "resolved", d["alert"]
        resolved_rows = [(x["channel"], x["status"]) for x in d["deliveries"]
                         if x["kind"] == "resolved"]
        # Twilio's resolved notification is recorded as sent without a call
        assert sorted(resolved_rows) == [("ding", "sent"), ("pager", "sent"), ("phone", "sent")], \
            d["deliveries"]
        kinds = [h["kind"] for h in d["history"]]
        assert "resolved" in kinds, kinds
    assert fp.state()["pagerduty"] == {c[2]: "resolved" for c in cases}, fp.state()
    # Twilio: one call per number for each firing/repeat notification sent, none for resolved
    phone_sent = sum(1 for _, aid, _, _ in cases for x in alert_detail(g, aid)["deliveries"]
                     if x["channel"] == "phone" and x["kind"] != "resolved"
                     and x["status"] == "sent")
    assert phone_sent >= 2 and len(calls(fp)) == len(TW_TO) * phone_sent, (phone_sent,
                                                                            calls(fp))
    assert all(c["answer"]["status"] == 201 for c in calls(fp)), calls(fp)
    # and no repeat after the resolve on any channel
    seen = len(fp.requests())
    time.sleep(2 * REPEAT_S + 1)
    assert len(fp.requests()) == seen, fp.requests()[seen:]
    # the firing message's ack link now changes nothing (the page answers, the alert stays
    # resolved: ack after resolve is refused by the engine)
    how, aid, key, summary = cases[0]
    link = DING_LINK.findall([q for q in dings(fp) if key in q["body"]][0]["json"]["markdown"]
                             ["text"])[0]
    assert get_public(g, link_path(g, link, aid)).status == 200
    wait_for(lambda: ack_requests(g, aid), 10, "the click recorded")
    assert alert_detail(g, aid)["alert"]["status"] == "resolved"
    assert not pd_events(fp, "acknowledge"), pd_events(fp, "acknowledge")


# ---- 4. acknowledge on PagerDuty --------------------------------------------------------------

def test_ack_by_link_acknowledges_the_pagerduty_incident(gw, fake_providers):
    fp = fake_providers(*FAKE_ARGS)
    g = gw(config(fp, {"P0": (["pager"], None), "P1": (["pager"], None),
                       "P2": (["pager"], None)}))
    aid = raise_alert(g, summary="search is down", tier="P0", labels={"service": "search"})
    dedup = 'external{service="search"}'
    trig = wait_for(lambda: pd_events(fp, "trigger", dedup), 15, "the PagerDuty trigger")[0]
    link = trig["json"]["links"][0]["href"]
    assert get_public(g, link_path(g, link, aid)).status == 200
    wait_for(lambda: alert_status(g, aid) == "acknowledged", 10, "acknowledged")
    ev = wait_for(lambda: pd_events(fp, "acknowledge", dedup), 2 * REPEAT_S + 5,
                  "PagerDuty event_action acknowledge")
    assert ev[0]["json"] == {"routing_key": PD_KEY, "event_action": "acknowledge",
                             "dedup_key": dedup}, ev[0]["json"]
    assert fp.state()["pagerduty"][dedup] == "acknowledged"
