"""A small load client for the integration tests that logs EVERY request.

wrk and hey report aggregate numbers and hide individual failures; tests about crashes and
reloads need to know exactly which requests failed, when, on which connection and how. Each
thread here keeps one `http.client` keep-alive connection (optionally re-opened every N requests
so that new connections keep spreading over the gateway's workers), sends requests back to back
(or paced), and appends one `Entry` per request: start time (monotonic and wall clock), latency,
status or error kind/string, the connection it went on, and the response's X-Request-Id and
X-Upstream. After an error the connection is dropped and the next request opens a new one; the
error is counted, never retried. Runs are bounded by duration and by request count.

    with LoadClient(port, threads=4, duration=30) as lc:
        ...                       # do something nasty to the gateway
    print(lc.summary())           # {'total': N, 'ok': N, 'failed': N, 'by_kind': {...}, ...}
    lc.failures()                 # the failed entries, in start order

or in one call: `log, summary = run_load(port, duration=5)`.
"""

import http.client
import itertools
import socket
import threading
import time
from dataclasses import dataclass, field

# error kinds (Entry.kind); "ok" and "http_NNN" are the others
REFUSED, RESET, DISCONNECTED, BROKEN_PIPE, TIMEOUT, INCOMPLETE, PROTOCOL, OSERROR = (
    "refused", "reset", "disconnected", "broken_pipe", "timeout", "incomplete", "protocol",
    "oserror")

MAX_DURATION = 300.0  # hard caps: a test can never run this client forever
MAX_REQUESTS = 5_000_000


@dataclass
class Entry:
    thread: int
    seq: int  # per-thread request number
    conn: int  # connection number (unique over the run); requests on one connection share it
    conn_req: int  # 0 = first request on a freshly opened connection
    start: float  # time.monotonic() when the request began (connect included for conn_req 0)
    wall: float  # time.time() at the same moment (to compare with the gateway's ts_ms)
    latency: float  # seconds until the whole response was read, or until the error
    kind: str  # "ok", "http_NNN" (a status not in ok_statuses), or an error kind
    status: int = None  # HTTP status when a response head arrived
    error: str = None  # repr of the exception, when there was one
    phase: str = None  # where an error happened: "connect", "send", "recv"
    request_id: str = None  # X-Request-Id of the response
    upstream: str = None  # X-Upstream of the response (bw_upstream's name)
    path: str = None
    headers: dict = field(default_factory=dict)  # response headers, lower-cased (when kept)

    @property
    def ok(self):
        return self.kind == "ok"

    @property
    def end(self):
        return self.start + self.latency

    @property
    def wall_end(self):
        return self.wall + self.latency

    @property
    def worker_tag(self):
        """The first 16 hex digits of a gateway-generated request id: random per worker process,
        so it tells which worker process answered (None for caller-chosen ids)."""
        rid = self.request_id
        return rid[:16] if rid and len(rid) == 32 else None


def classify(exc):
    """An exception from http.client/socket -> error kind."""
    if isinstance(exc, http.client.RemoteDisconnected):  # before ConnectionResetError: subclass
        return DISCONNECTED
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED
    if isinstance(exc, ConnectionResetError):
        return RESET
    if isinstance(exc, BrokenPipeError):
        return BROKEN_PIPE
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TIMEOUT
    if isinstance(exc, http.client.IncompleteRead):
        return INCOMPLETE
    if isinstance(exc, http.client.HTTPException):
        return PROTOCOL
    return OSERROR


class LoadClient:
    """Threads sending requests to 127.0.0.1:port and logging each one.

    path: a string, or a callable (thread, seq) -> path.
    headers: a dict, or a callable (thread, seq) -> dict.
    reconnect_every: open a new connection after this many requests on one (0: keep it).
    rate: requests per second per thread (None: back to back).
    ok_statuses: statuses counted as success (default: 2xx).
    keep_headers: keep each response's headers in Entry.headers (memory!).
    error_pause: seconds a thread waits after an error before its next request (so that a
        gateway that is down is not hammered with thousands of refused connects).
    """

    def __init__(self, port, path="/", threads=4, duration=30.0, max_requests=None,
                 timeout=5.0, reconnect_every=0, rate=None, headers=None, method="GET",
                 ok_statuses=None, host="127.0.0.1", keep_headers=False, error_pause=0.005):
        self.port, self.host, self.method = port, host, method
        self.path, self.headers = path, headers
        self.nthreads = threads
        self.duration = min(float(duration), MAX_DURATION)
        self.max_requests = min(max_requests or MAX_REQUESTS, MAX_REQUESTS)
        self.timeout = timeout
        self.reconnect_every = reconnect_every
        self.rate = rate
        self.ok_statuses = set(ok_statuses) if ok_statuses else set(range(200, 300))
        self.keep_headers = keep_headers
        self.error_pause = error_pause
        self.log = []  # list.append is atomic under the GIL
        self._count = itertools.count()
        self._conn_ids = itertools.count()
        self._stop = threading.Event()
        self._threads = []
        self.t_start = self.t_stop = None

    # ---- running ------------------------------------------------------------------------------

    def start(self):
        self.t_start = time.monotonic()
        self._deadline = self.t_start + self.duration
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True,
                                          name=f"load-{i}") for i in range(self.nthreads)]
        for t in self._threads:
            t.start()
        return self

    def stop(self):
        """Stops sending and waits for the requests in flight (bounded by the timeout)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)
        self.t_stop = time.monotonic()
        self.log.sort(key=lambda e: e.start)
        return self

    def wait(self):
        """Waits until the duration or request count is used up."""
        for t in self._threads:
            t.join(timeout=max(0.0, self._deadline - time.monotonic()) + self.timeout + 5)
        return self.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _value(self, v, thread, seq):
        return v(thread, seq) if callable(v) else v

    def _run(self, ti):
        conn, conn_id, conn_req = None, None, 0
        interval = 1.0 / self.rate if self.rate else 0.0
        next_at = time.monotonic()
        seq = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            if next(self._count) >= self.max_requests:
                break
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at = max(next_at + interval, time.monotonic() - interval)
            path = self._value(self.path, ti, seq)
            hdrs = dict(self._value(self.headers, ti, seq) or {})
            if conn is None or (self.reconnect_every and conn_req >= self.reconnect_every):
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                conn_id, conn_req = next(self._conn_ids), 0
            t0, w0 = time.monotonic(), time.time()
            entry = Entry(thread=ti, seq=seq, conn=conn_id, conn_req=conn_req, start=t0, wall=w0,
                          latency=0.0, kind="ok", path=path)
            phase = "connect"
            try:
                if conn.sock is None:
                    conn.connect()
                phase = "send"
                conn.request(self.method, path, headers=hdrs)
                phase = "recv"
                r = conn.getresponse()
                entry.status = r.status
                entry.request_id = r.getheader("X-Request-Id")
                entry.upstream = r.getheader("X-Upstream")
                if self.keep_headers:
                    entry.headers = {k.lower(): v for k, v in r.getheaders()}
                r.read()
                entry.kind = "ok" if r.status in self.ok_statuses else f"http_{r.status}"
                if r.will_close:  # Connection: close: http.client reopens on the next request
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is a data point
                entry.kind, entry.error, entry.phase = classify(e), repr(e), phase
                conn.close()
                conn = None
            entry.latency = time.monotonic() - t0
            self.log.append(entry)
            conn_req += 1
            seq += 1
            if not entry.ok and entry.status is None and self.error_pause:
                self._stop.wait(self.error_pause)
        if conn is not None:
            conn.close()

    # ---- results ------------------------------------------------------------------------------

    def entries(self):
        return sorted(self.log, key=lambda e: e.start)

    def failures(self):
        return [e for e in self.entries() if not e.ok]

    def successes(self):
        return [e for e in self.entries() if e.ok]

    def ok_after(self, t):
        """Successful requests that started at or after monotonic time t."""
        return [e for e in self.entries() if e.ok and e.start >= t]

    def max_ok_gap(self, t0=None, t1=None):
        """The longest time without any successful completion within [t0, t1] (monotonic)."""
        t0 = self.t_start if t0 is None else t0
        t1 = (self.t_stop or time.monotonic()) if t1 is None else t1
        ends = sorted(e.end for e in self.log if e.ok and t0 <= e.end <= t1)
        points = [t0, *ends, t1]
        return max(b - a for a, b in zip(points, points[1:]))

    def summary(self):
        log = self.entries()
        by_kind = {}
        for e in log:
            by_kind[e.kind] = by_kind.get(e.kind, 0) + 1
        ok = by_kind.get("ok", 0)
        span = (log[-1].end - log[0].start) if log else 0.0
        lat = sorted(e.latency for e in log if e.ok)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

        return {
            "total": len(log),
            "ok": ok,
            "failed": len(log) - ok,
            "by_kind": by_kind,
            "connections": len({e.conn for e in log}),
            "seconds": round(span, 3),
            "rps": round(len(log) / span, 1) if span > 0 else 0.0,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 2) if lat else None,
        }


def run_load(port, **kw):
    """Runs a LoadClient to completion (its duration or max_requests); returns (log, summary)."""
    lc = LoadClient(port, **kw).start().wait()
    return lc.entries(), lc.summary()
