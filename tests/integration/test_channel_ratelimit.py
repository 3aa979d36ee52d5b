"""Per-channel rate limits with folding, end to end (issue 7: "Provider rate limits per target
(DingTalk 20/min, ...): excess folds into one 'N more alerts' message instead of being dropped;
P0 has reserved capacity"): a real `breakwater` with a DingTalk channel limited to 12/m, played by
tests/integration/fake_providers.py with DingTalk's own per-minute limit set to the same 12.

Covered:
  * 16 distinct P2 alerts raised quickly: the first 9 go out one message each (12 tokens less the
    P0 reserve of 3), the other 7 wait (pending, no attempt) and go out as ONE message when the
    next token is there (5 s later at 12/m): "[P2] FIRING: 7 alerts", five of them spelled out and
    "...and 2 more alerts"; the provider never answers "too fast";
  * nothing lost, nothing twice: every alert is in exactly one sent delivery, whose delivery id is
    the Idempotency-Key of exactly one DingTalk request; the waiting notifications are recorded as
    folded into it (admin API: status "folded", lineage "folded into delivery <id> (channel rate
    limit)");
  * P0 reserve: right after that, with 3 tokens left, a P0 goes out at once while a P2 raised just
    before it waits for a token (pending, no attempt).

Waiting is polling with a deadline; timing bounds are generous (2-core machine, sanitizer builds).
"""

import functools
import json
import re
import time

import pytest

import conftest
from conftest import alert_detail, post_json

DING_TOKEN = "rl-ding-token"
RATE = "12/m"    # 12 tokens, one more every 5 s
TOKEN_S = 5.0
RESERVE = 3      # ceil(12 / 4): kept for P0
BURST = 12 - RESERVE
WAITING = 7
SHOWN = 5        # alerts a grouped message spells out
MORE = re.compile(r"and (\d+) more alerts?\b")
FAKE_ARGS = ("--dingtalk-token", DING_TOKEN, "--dingtalk-limit", "12")  # DingTalk's own 12/min

wait_for = functools.partial(conftest.wait_for, interval=0.05)  # polls every 50 ms


@pytest.fixture
def gw(strict_gateway):
    """Every gateway must also stop on SIGTERM with exit status 0 (conftest's strict_gateway)."""
    return strict_gateway


def messages(fp):
    """The DingTalk requests the fakes received, oldest first."""
    return fp.requests("dingtalk")


def config(fp):
    url = f"{fp.url('/dingtalk/robot/send')}?access_token={DING_TOKEN}"
    t = ("shutdown_timeout: 5s\nwatchdog:\n  stall_after: 10s\n"
         "upstreams:\n  svc:\n    hosts: [\"127.0.0.1:1\"]\n"
         "routes:\n  - name: r-svc\n    match:\n      path_prefix: /svc\n    upstream: svc\n"
         "alerts:\n  channels:\n"
         f"    ding:\n      type: dingtalk\n      url: \"{url}\"\n      rate_limit: {RATE}\n"
         "  tiers:\n")
    for tier in ("P0", "P1", "P2"):
        t += f"    {tier}:\n      channels: [ding]\n"
    return t


def raise_alert(g, summary, tier):
    labels = {"case": "ratelimit", "name": summary.split()[0]}
    r = post_json(g, "/api/v1/alerts", {"summary": summary, "tier": tier, "labels": labels})
    assert r.status == 201, r
    return str(r.json()["ids"][0])


def text(q):
    return q["json"]["markdown"]["text"]


def title(q):
    return q["json"]["markdown"]["title"]


def test_excess_folds_into_one_message_and_p0_keeps_its_reserve(gw, fake_providers):
    fp = fake_providers(*FAKE_ARGS)
    g = gw(config(fp))
    names = [f"rl-{i:02d}" for i in range(BURST + WAITING)]
    ids = {}
    started = time.monotonic()
    for name in names:
        ids[name] = raise_alert(g, f"{name} is down", "P2")
    raised_in = time.monotonic() - started
    assert raised_in < TOKEN_S - 1, f"raising took {raised_in:.1f} s: the test needs < {TOKEN_S} s"

    msgs = wait_for(lambda: (lambda m: m if len(m) >= BURST + 1 else None)(messages(fp)),
                    TOKEN_S * 3, "the individual messages and the folded one")
    time.sleep(0.5)  # anything more that would arrive now is wrong
    msgs = messages(fp)
    assert len(msgs) == BURST + 1, [title(q) for q in msgs]
    first, folded = msgs[:BURST], msgs[BURST]

    # the first window: one message per alert, at once
    for q in first:
        assert title(q).startswith("[P2] FIRING: rl-"), title(q)
        assert not MORE.search(text(q)), text(q)
    assert first[-1]["time"] - first[0]["time"] < TOKEN_S - 1, [q["time"] for q in first]
    # then, a token later, one message for the 7 that waited
    gap = folded["time"] - first[-1]["time"]
    assert gap > TOKEN_S - 1.5, f"folded message {gap:.2f} s after the burst"
    assert title(folded) == f"[P2] FIRING: {WAITING} alerts", title(folded)
    shown = [n for n in names if f"{n} is down" in text(folded)]
    assert len(shown) == SHOWN, (shown, text(folded))
    assert f"and {WAITING - SHOWN} more alerts" in text(folded), text(folded)
    print(f"\n[ratelimit] {BURST} messages in {first[-1]['time'] - first[0]['time']:.2f} s, "
          f"then after {gap:.2f} s: {text(folded)!r}")
    # the provider never had to say "too fast"
    assert all(json.loads(q["answer"]["body"])["errcode"] == 0 for q in msgs), \
        [q["answer"] for q in msgs]

    # every alert in exactly one message: named in it or counted in its "N more alerts"
    named = {n: [i for i, q in enumerate(msgs) if f"{n} is down" in text(q)] for n in names}
    assert all(len(v) <= 1 for v in named.values()), named
    counted = sum(sum(1 for n in names if f"{n} is down" in text(q)) +
                  sum(int(x) for x in MORE.findall(text(q))) for q in msgs)
    assert counted == len(names), counted
    # ... and in exactly one sent delivery, which is exactly one DingTalk request
    keys = [q["headers"].get("idempotency-key") for q in msgs]
    carrier = keys[BURST]
    for name in names:
        d = wait_for(lambda: (lambda d: d if all(x["status"] not in ("pending", "sending")
                                                 for x in d["deliveries"]) else None)(
            alert_detail(g, ids[name])), 10, f"{name}'s deliveries to settle")
        sent = [x for x in d["deliveries"] if x["status"] == "sent"]
        assert len(sent) == 1, d["deliveries"]
        assert keys.count(sent[0]["delivery_id"]) == 1, (sent, keys)
        if sent[0]["delivery_id"] == carrier and not any(
                x["status"] == "folded" for x in d["deliveries"]):
            continue  # the carrier's own alert
        if sent[0]["delivery_id"] == carrier:
            own = [x for x in d["deliveries"] if x["status"] == "folded"]
            assert len(own) == 1 and own[0]["attempts"] == 0, d["deliveries"]
            reasons = [h["detail"].get("reason") for h in d["history"]
                       if h["kind"] == "delivery"]
            assert f"folded into delivery {carrier} (channel rate limit)" in reasons, reasons
    assert sum(1 for n in names
               if any(x["status"] == "folded" for x in alert_detail(g, ids[n])["deliveries"])) \
        == WAITING - 1

    # P0 reserve: 3 tokens are left; a P2 has to wait for a 4th, a P0 goes at once
    late = raise_alert(g, "rl-late is down", "P2")
    urgent = raise_alert(g, "rl-urgent is down", "P0")
    t0 = time.monotonic()
    got = wait_for(lambda: [q for q in messages(fp) if "rl-urgent" in title(q)], TOKEN_S - 1,
                   "the P0 message")
    assert title(got[0]) == "[P0] FIRING: rl-urgent is down", title(got[0])
    assert time.monotonic() - t0 < TOKEN_S - 1
    assert not [q for q in messages(fp) if "rl-late" in text(q)]
    d = alert_detail(g, late)["deliveries"]
    assert len(d) == 1 and d[0]["status"] == "pending" and d[0]["attempts"] == 0, d
    assert alert_detail(g, urgent)["deliveries"][0]["status"] == "sent"
