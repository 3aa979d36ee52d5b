#!/usr/bin/python3
"""clock_jump.py: the wall clock jumps an hour forward and back; breaker and limiter timing must
not move (they use only the monotonic clock, README "Rate limits", docs/breaker.md).

How: libfaketime (Debian package `faketime`) is preloaded into breakwater with
FAKETIME_TIMESTAMP_FILE (the offset, re-read on every call: FAKETIME_NO_CACHE=1) and
FAKETIME_DONT_FAKE_MONOTONIC=1, so only CLOCK_REALTIME (time(), gettimeofday, clock_gettime
REALTIME) moves when the scenario rewrites the file; CLOCK_MONOTONIC stays real. The scenario
itself is not preloaded: its own clock (time.monotonic) is the referee.

Before anything is judged, the jump is shown to work: with the file at +1h, the gateway's Date
header and log timestamps read one hour ahead; at +0 they read the real time. If not, SKIP
("cannot shift the gateway's wall clock reliably"). Missing libfaketime: SKIP.

Pass criteria (x2.5 on an ASan build for the upper slack):
  - breaker: opened by 5 answers 500, the clock jumped +1h right after: the first request
    admitted again (a trial) comes OPEN_DURATION_S after the open, -50 ms / +OPEN_SLACK_S; the
    same with a jump of -1h during the next open period;
  - rate limit (RATE_PER_S, burst BURST, key global), hammered at HAMMER_RATE req/s from an
    empty bucket for WINDOW_S: the number admitted in a window with a +1h jump at its start, and
    in one with a -1h jump, each equals the number admitted in a window without a jump, +-
    ADMIT_SLACK (a wall-clock limiter would admit a whole burst more after +1h, and nothing after
    -1h);
  - no worker_stall or worker_crash event (the watchdog must not read a jump as a stall), and
    the graceful stop exits 0.
"""

import os
import subprocess
import sys
import time
from email.utils import parsedate_to_datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaoslib import (BINARY, Fail, Gateway, LatencyFail, Scenario, Skip, Upstream, fmt_s,  # noqa: E402
                      http_request, log_requests, now_ms, wait_for)

FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/faketime/libfaketimeMT.so.1")
JUMP_S = 3600
OPEN_DURATION_S = 3
OPEN_SLACK_S = 0.5
RATE_PER_S = 2
BURST = 10
HAMMER_RATE = 25
WINDOW_S = 3.0
ADMIT_SLACK = 1
TIME_BOUND_S = 90


def config(u):
    return f"""
workers: 2
watchdog: {{ stall_after: 1s }}
upstreams:
  u:
    hosts: ["{u}"]
    outlier: {{ consecutive_failures: 0 }}
    breaker: {{ consecutive_failures: 5, open_duration: {OPEN_DURATION_S}s, half_open_requests: 1 }}
routes:
  - name: rl
    match: {{ path_prefix: /rl }}
    upstream: u
    rate_limit: {{ rate: {RATE_PER_S}/s, burst: {BURST}, key: global }}
  - name: u
    match: {{ path_prefix: / }}
    upstream: u
"""


class Clock:
    def __init__(self, path, sc=None):
        self.path = path
        self.sc = sc  # for the timeline's markers
        self.set(0)

    def set(self, offset_s):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{offset_s:+d}\n")
        os.replace(tmp, self.path)  # atomic: libfaketime never reads half a file
        if self.sc is not None:
            self.sc.mark("fault_injected", what=f"clock {offset_s // 3600:+d}h" if offset_s
                         else "clock real")


def real_time_events(events):
    """For the timeline only: the gateway stamps its events with its own CLOCK_REALTIME, which
    is the clock the scenario moves, so the events it wrote while at +1h are an hour ahead.
    They are put back on the real time line and say so ("ts -1h")."""
    out = []
    for e in events:
        if e["ts_ms"] > now_ms() + JUMP_S * 500:
            e = {**e, "ts_ms": e["ts_ms"] - JUMP_S * 1000,
                 "fields": {**e.get("fields", {}), "what": "ts -1h"}}
        out.append(e)
    return out


def gateway_offset(g):
    """The gateway worker's wall clock minus ours, in seconds, from its Date header."""
    st, hdrs, _ = g.get("/x")
    date = parsedate_to_datetime(hdrs["date"]).timestamp()
    return date - time.time()


def sc_scale(g):
    return g.sc.scale


def open_breaker(g):
    for _ in range(5):
        g.get("/x?status=500")


def measure_open(g, jump_to, clock):
    """Opens the breaker, jumps the clock, returns the seconds until a request is admitted."""
    open_breaker(g)
    t0 = time.monotonic()
    # (asked through the admin API: a probe request could be a success that resets the count)
    wait_for(lambda: g.breaker_state("u") == "open", 2 * sc_scale(g), "the breaker to open",
             interval=0.005)
    clock.set(jump_to)
    while time.monotonic() - t0 < OPEN_DURATION_S + 10:
        st, _, _ = g.get("/x")
        if st == 200:
            admitted = time.monotonic() - t0
            # let the trial close it again
            for _ in range(50):
                if g.breaker_state("u") == "closed":
                    break
                time.sleep(0.02)
            return admitted
        time.sleep(0.01)
    return None


def hammer(g, seconds):
    """Requests to the limited route at HAMMER_RATE for `seconds`; returns how many got 200."""
    admitted = 0
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i / HAMMER_RATE
        now = time.monotonic()
        if due - t0 >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        st, _, _ = http_request(g.host, g.port, path="/rl/x", timeout=5)
        if st == 200:
            admitted += 1
        elif st != 429:
            raise Fail(f"the limited route answered {st}")
        i += 1
    return admitted


def scenario(sc):
    lib = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)
    if lib is None:
        raise Skip("libfaketime not installed (apt-get install faketime)")
    preload = lib
    if sc.asan:
        # ASan must come first in the initial library list
        out = subprocess.run(["ldd", BINARY], capture_output=True, text=True).stdout
        asan = [l.split("=>")[1].split()[0] for l in out.splitlines() if "libasan" in l and "=>" in l]
        if not asan:
            raise Skip("ASan build, but libasan's path is unknown: cannot preload libfaketime")
        preload = f"{asan[0]}:{lib}"
    clock = Clock(sc.path("faketime"), sc)
    env = {"LD_PRELOAD": preload, "FAKETIME_TIMESTAMP_FILE": clock.path, "FAKETIME_NO_CACHE": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_RESET": "1"}
    u = Upstream(sc, "u")
    try:
        g = Gateway(sc, config(u.addr), env=env)
    except RuntimeError as e:
        raise Skip(f"breakwater does not start under libfaketime: {str(e)[:200]}")
    # the scenario's own requests are its load: logged as a bw_load CSV for the timeline
    requests_csv = log_requests(sc, g.port, "requests.csv")

    # does the jump reach the gateway (and only its wall clock)?
    clock.set(JUMP_S)
    fwd = gateway_offset(g)
    clock.set(0)
    back = gateway_offset(g)
    if abs(fwd - JUMP_S) > 5 or abs(back) > 5:
        raise Skip(f"cannot shift the gateway's wall clock reliably (offsets {fwd:.0f}s, {back:.0f}s)")

    # breaker: open_duration under a forward then a backward jump
    open_fwd = measure_open(g, JUMP_S, clock)
    open_back = measure_open(g, 0, clock)
    sc.fig(open_duration=f"{OPEN_DURATION_S}s", open_with_jump_fwd=fmt_s(open_fwd),
           open_with_jump_back=fmt_s(open_back))

    # rate limit: admitted per window without and with a jump
    hammer(g, 1.0)  # empty the bucket
    base = hammer(g, WINDOW_S)
    clock.set(JUMP_S)
    fwd_n = hammer(g, WINDOW_S)
    clock.set(0)
    back_n = hammer(g, WINDOW_S)
    sc.fig(admitted_base=base, admitted_jump_fwd=fwd_n, admitted_jump_back=back_n)
    stalls = g.events("worker_stall") + g.events("worker_crash")
    sc.plot(requests_csv, "wall clock +1h / -1h: breaker (/x) and rate limit (/rl)",
            real_time_events(g.events()))
    rc = g.stop()

    s = sc.scale
    for label, v in (("+1h", open_fwd), ("-1h", open_back)):
        if v is None or v < OPEN_DURATION_S - 0.05:
            raise Fail(f"breaker open for {v}s with a {label} jump (open_duration {OPEN_DURATION_S}s)")
        if v > OPEN_DURATION_S + OPEN_SLACK_S * s:
            raise LatencyFail(f"breaker open for {v:.2f}s with a {label} jump "
                              f"(open_duration {OPEN_DURATION_S}s)")
    if abs(base - RATE_PER_S * WINDOW_S) > ADMIT_SLACK + 1:
        raise Fail(f"{base} admitted in {WINDOW_S}s at {RATE_PER_S}/s without a jump")
    if abs(fwd_n - base) > ADMIT_SLACK or abs(back_n - base) > ADMIT_SLACK:
        raise Fail(f"admitted {base} without a jump, {fwd_n} with +1h, {back_n} with -1h")
    if stalls:
        raise Fail(f"the jump was taken for a stall or crash: {stalls[:3]}")
    if rc != 0:
        raise Fail(f"breakwater did not exit 0 (rc {rc})")
    if g.sanitizer_reports():
        raise Fail(f"sanitizer report in the gateway log: {g.sanitizer_reports()}")


if __name__ == "__main__":
    sys.exit(Scenario("clock_jump", TIME_BOUND_S).run(scenario))
