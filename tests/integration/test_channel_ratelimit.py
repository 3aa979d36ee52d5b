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

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import conftest
from conftest import request

HERE = os.path.dirname(os.path.abspath(__file__))
# conftest starts breakwater with cwd = the gateway's temp dir: anchor a relative BW_BINARY here.
conftest.BINARY = os.path.abspath(conftest.BINARY)
conftest.UPSTREAM = os.path.abspath(conftest.UPSTREAM)
FAKE = os.path.join(HERE, "fake_providers.py")

DING_TOKEN = "rl-ding-token"
RATE = "12/m"    # 12 tokens, one more every 5 s
TOKEN_S = 5.0
RESERVE = 3      # ceil(12 / 4): kept for P0
BURST = 12 - RESERVE
WAITING = 7
SHOWN = 5        # alerts a grouped message spells out
MORE = re.compile(r"and (\d+) more alerts?\b")


def wait_for(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Fakes:
    """A fake_providers.py process (ended by PID at teardown)."""

    def __init__(self, log_path):
        self.proc = subprocess.Popen(
            [sys.executable, FAKE, "--log", log_path, "--dingtalk-token", DING_TOKEN,
             "--dingtalk-limit", "12"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"fake_providers did not start: {line!r}")
        self.port = int(line.split()[1])
        self.proc.stdout.readline()  # SMTP n

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def messages(self):
        r = request(self.port, "GET", "/_requests", timeout=15)
        assert r.status == 200, r
        return [q for q in r.json()["requests"] if q["provider"] == "dingtalk"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def fakes(tmp_path):
    started = []

    def start():
        f = Fakes(str(tmp_path / f"fakes-{len(started)}.jsonl"))
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


@pytest.fixture
def gw(gateway):
    """conftest's `gateway`; each gateway must also stop on SIGTERM with exit status 0."""
    started = []

    def start(config, **kw):
        g = gateway(config, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        rc = g.stop()
        assert rc == 0, f"breakwater exited {rc}:\n{g.final_log[-4000:]}"


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


def post(g, path, obj):
    return g.admin(path, method="POST", body=json.dumps(obj).encode(),
                   headers={"Content-Type": "application/json"}, timeout=10)


def raise_alert(g, summary, tier):
    r = post(g, "/api/v1/alerts", {"summary": summary, "tier": tier,
                                   "labels": {"case": "ratelimit", "name": summary.split()[0]}})
    assert r.status == 201, r
    return str(r.json()["ids"][0])


def alert_detail(g, aid):
    r = g.admin(f"/api/v1/alerts/{aid}", timeout=10)
    assert r.status == 200, r
    return r.json()


def text(q):
    return q["json"]["markdown"]["text"]


def title(q):
    return q["json"]["markdown"]["title"]


def test_excess_folds_into_one_message_and_p0_keeps_its_reserve(gw, fakes):
    fp = fakes()
    g = gw(config(fp))
    names = [f"rl-{i:02d}" for i in range(BURST + WAITING)]
    ids = {}
    started = time.monotonic()
    for name in names:
        ids[name] = raise_alert(g, f"{name} is down", "P2")
    raised_in = time.monotonic() - started
    assert raised_in < TOKEN_S - 1, f"raising took {raised_in:.1f} s: the test needs < {TOKEN_S} s"

    msgs = wait_for(lambda: (lambda m: m if len(m) >= BURST + 1 else None)(fp.messages()),
                    TOKEN_S * 3, "the individual messages and the folded one")
    time.sleep(0.5)  # anything more that would arrive now is wrong
    msgs = fp.messages()
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
    got = wait_for(lambda: [q for q in fp.messages() if "rl-urgent" in title(q)], TOKEN_S - 1,
                   "the P0 message")
    assert title(got[0]) == "[P0] FIRING: rl-urgent is down", title(got[0])
    assert time.monotonic() - t0 < TOKEN_S - 1
    assert not [q for q in fp.messages() if "rl-late" in text(q)]
    d = alert_detail(g, late)["deliveries"]
    assert len(d) == 1 and d[0]["status"] == "pending" and d[0]["attempts"] == 0, d
    assert alert_detail(g, urgent)["deliveries"][0]["status"] == "sent"
