"""Shared fixtures for the integration suite: real processes on loopback.

Every test starts what it needs itself: `bw_upstream` processes (tests/upstream/README.md lists
their knobs) and a real `breakwater` with a config written for the test. Ports are picked free at
start. Every process started here is tracked by PID and ended at teardown (never by name).

Environment (set by ctest): BW_BINARY, BW_UPSTREAM, BW_SOURCE_DIR.
"""

import http.client
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("BW_SOURCE_DIR", os.path.abspath(os.path.join(HERE, "..", "..")))
# absolute: the gateway runs in its own temporary directory
BINARY = os.path.abspath(
    os.environ.get("BW_BINARY", os.path.join(SOURCE_DIR, "build", "breakwater")))
UPSTREAM = os.path.abspath(
    os.environ.get("BW_UPSTREAM", os.path.join(SOURCE_DIR, "build", "bw_upstream")))
FAKE_PROVIDERS = os.path.join(HERE, "fake_providers.py")


def _links_asan(binary):
    """Whether binary is an AddressSanitizer build (its memory figures are not the product's)."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "libasan" in out


ASAN_BUILD = _links_asan(BINARY)


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def free_port(host="127.0.0.1"):
    """A port that is free now, chosen below the kernel's ephemeral range (32768 and up by
    default) so that no outgoing connection can take it before the gateway binds it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-cased names -> value (last one wins)
        self.header_list = []  # [(name, value)] as received
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


def request(port, method="GET", path="/", headers=None, body=None, timeout=10, host="127.0.0.1"):
    """One HTTP/1.1 request on a fresh connection; returns a Response."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        resp = Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        resp.header_list = r.getheaders()
        return resp
    finally:
        conn.close()


def stop_process(proc, timeout=5):
    """SIGTERM to proc if it still runs, SIGKILL if it has not exited after `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PortProcess:
    """A helper process (bw_upstream, receiver.py, ...) that first prints "PORT n" on stdout."""

    def __init__(self, argv, what):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{what} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.addr = f"127.0.0.1:{self.port}"

    def url(self, path):
        """The URL of `path` on this process's listener."""
        return f"http://{self.addr}{path}"

    def stop(self):
        """Ends the process (SIGTERM, then SIGKILL), by PID."""
        stop_process(self.proc)


class Upstream(PortProcess):
    """A bw_upstream process."""

    def __init__(self, name="upstream", listen="127.0.0.1:0", extra=()):
        self.name = name
        super().__init__([UPSTREAM, "--listen", listen, "--name", name, *extra], "bw_upstream")

    def stats(self):
        return request(self.port, path="/_stats").json()


class FakeProviders(PortProcess):
    """A fake_providers.py process; `args` are its command-line options (credentials, limits)."""

    def __init__(self, log_path, args=()):
        super().__init__([sys.executable, FAKE_PROVIDERS, "--log", log_path, *args],
                         "fake_providers")
        self.proc.stdout.readline()  # "SMTP n"

    def _call(self, method, path, obj=None):
        """One request to the fakes' own control API (it must answer 200), parsed."""
        body = None if obj is None else json.dumps(obj).encode()
        r = request(self.port, method, path, body=body, timeout=15,
                    headers={"Content-Type": "application/json"} if body else None)
        assert r.status == 200, r
        return r.json()

    def requests(self, provider=None):
        """The requests the fakes received (oldest first), only those to `provider` when given."""
        reqs = self._call("GET", "/_requests")["requests"]
        return [q for q in reqs if provider is None or q["provider"] == provider]

    def state(self):
        """What the fakes hold now (PagerDuty incidents, Twilio calls, ...)."""
        return self._call("GET", "/_state")

    def press(self, digits, call=-1, method=None, url=None):
        """A key pressed during a call: the fake requests the Gather action as Twilio would."""
        obj = {"call": call, "digits": digits}
        if method:
            obj["method"] = method
        if url:
            obj["url"] = url
        return self._call("POST", "/_twilio/gather", obj)


class Gateway:
    """A breakwater process on a config written for the test.

    `config` is YAML text in which {port}, {admin_port} and {state_dir} are substituted; when it
    has no `listen:`/`admin:`/`state_dir:` keys they are added.
    """

    def __init__(self, config, workers=1, env=None, wait_ready=True):
        self.port = free_port()
        self.admin_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bw-it-")
        self.state_dir = os.path.join(self.dir, "var")
        text = textwrap.dedent(config).format(
            port=self.port, admin_port=self.admin_port, state_dir=self.state_dir
        )
        if "listen:" not in text.split("admin:")[0]:
            text = f'listen: ["127.0.0.1:{self.port}"]\n' + text
        if "admin:" not in text:
            text = f'admin: {{ listen: "127.0.0.1:{self.admin_port}" }}\n' + text
        if "state_dir:" not in text:
            text = f"state_dir: {self.state_dir}\n" + text
        if "workers:" not in text:
            text = f"workers: {workers}\n" + text
        if "shutdown_timeout:" not in text:
            text = "shutdown_timeout: 5s\n" + text
        self.config_path = os.path.join(self.dir, "breakwater.yaml")
        with open(self.config_path, "w") as f:
            f.write(text)
        self.log_path = os.path.join(self.dir, "breakwater.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [BINARY, "-c", self.config_path],
            stdout=self.log,
            stderr=self.log,
            cwd=self.dir,
            env={**os.environ, **(env or {})},
        )
        if wait_ready:
            self.wait_ready()

    def wait_ready(self, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"breakwater exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if request(self.admin_port, path="/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"breakwater not ready after {timeout}s:\n{self.logs()}")

    def get(self, path="/", **kw):
        return request(self.port, "GET", path, **kw)

    def req(self, method, path="/", **kw):
        return request(self.port, method, path, **kw)

    def admin(self, path, method="GET", **kw):
        return request(self.admin_port, method, path, **kw)

    def logs(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def full_log(self):
        """The whole log: kept as final_log once stopped, else read from the file."""
        if hasattr(self, "final_log"):
            return self.final_log
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_lines(self):
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, timeout=15):
        if self.log.closed:  # stopped already
            return self.proc.returncode
        stop_process(self.proc, timeout)
        self.log.close()
        with open(self.log_path, errors="replace") as f:
            self.final_log = f.read()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode


@pytest.fixture
def stop_at_teardown():
    """keep(p) has p (anything with a stop() method) stopped at the test's teardown; returns p."""
    kept = []

    def keep(p):
        kept.append(p)
        return p

    yield keep
    for p in kept:
        p.stop()


@pytest.fixture
def upstreams(stop_at_teardown):
    """start(name, listen=..., extra=...) -> a running Upstream, stopped at teardown."""
    return lambda name="upstream", **kw: stop_at_teardown(Upstream(name, **kw))


@pytest.fixture
def fake_providers(tmp_path, stop_at_teardown):
    """start(*args) -> a running FakeProviders with those options, stopped at teardown."""
    n = itertools.count()
    return lambda *args: stop_at_teardown(
        FakeProviders(str(tmp_path / f"fakes-{next(n)}.jsonl"), args))


@pytest.fixture
def gateway():
    started = []

    def start(config, **kw):
        for attempt in range(3):
            try:
                g = Gateway(config, **kw)
                break
            except RuntimeError as e:  # another test process took a port first: pick again
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()
    for g in started:
        # the ASan/UBSan build writes its reports to the log: any of them fails the test
        hits = [g.final_log.find(m) for m in SANITIZER_MARKS if m in g.final_log]
        # show the report from its first line (the stack that matters), not the log's tail
        assert not hits, g.final_log[max(0, min(hits) - 300) : min(hits) + 8000]


@pytest.fixture
def strict_gateway(gateway):
    """`gateway`, and at teardown every gateway the test started must stop on SIGTERM with exit
    status 0 (for tests that never kill the gateway themselves)."""
    started = []

    def start(config, **kw):
        g = gateway(config, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        rc = g.stop()
        assert rc == 0, f"breakwater exited {rc} at teardown:\n{g.full_log()[-4000:]}"


def run_breakwater(*args, env=None, cwd=None, timeout=10):
    """Runs the binary to completion (for -t, --version, -h)."""
    return subprocess.run(
        [BINARY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


# ---- helpers shared by the test files --------------------------------------------------------


def wait_for(predicate, timeout=10, what="the condition", interval=0.01):
    """Polls predicate() until it returns something true, and returns that; fails the test after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def readyz(g):
    """GET /readyz, parsed, when it answers 200; else None (also when nothing answers)."""
    try:
        r = request(g.admin_port, path="/readyz", timeout=2)
    except OSError:
        return None
    return r.json() if r.status == 200 else None


def post_json(g, path, obj=None):
    """POST obj as JSON to the admin API (an empty body when obj is None); returns the Response."""
    body = b"" if obj is None else json.dumps(obj).encode()
    return g.admin(path, method="POST", body=body, headers={"Content-Type": "application/json"},
                   timeout=10)


def alert_detail(g, alert_id):
    """GET /api/v1/alerts/ID (it must answer 200), parsed: the alert, its deliveries, history."""
    r = g.admin(f"/api/v1/alerts/{alert_id}", timeout=10)
    assert r.status == 200, r
    return r.json()


def children(pid):
    """The PIDs of pid's child processes."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True, timeout=10).stdout
        return {int(x) for x in out.split()}


def worker_pids(g):
    """{worker index: pid} of the latest start of each worker, from the JSON logs."""
    return {l["worker"]: l["pid"] for l in g.log_lines() if l.get("msg") == "worker ready"}


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> {(name, ((label, value), ...)): float}; checks the line syntax."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("# TYPE"):
                assert len(line.split()) == 4, line
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def sample(metrics, name, **labels):
    """One value of parsed metrics (None when there is no such sample)."""
    return metrics.get((name, tuple(sorted(labels.items()))))


def metrics(g, headers=None, timeout=5):
    """GET /metrics, parsed; it must answer 200 with the Prometheus text content type."""
    r = g.admin("/metrics", headers=headers, timeout=timeout)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain"), r
    return parse_metrics(r.body.decode())


def metric(g, series, timeout=5):
    """The value of one sample named as it is printed, e.g.
    'breakwater_worker_restarts_total{reason="crash"}'; None when there is none or the admin API
    does not answer (e.g. a reload is switching control processes)."""
    try:
        text = g.admin("/metrics", timeout=timeout).body.decode()
    except OSError:
        return None
    for line in text.splitlines():
        if not line.startswith("#") and line.rpartition(" ")[0] == series:
            return float(line.rpartition(" ")[2])
    return None


def config_generation(g):
    """breakwater_config_generation, or None while the admin API does not answer."""
    return metric(g, "breakwater_config_generation")


def events(g, kind=None, timeout=5):
    """Every event so far (GET /api/v1/events, paged with next_since), only those of `kind` when
    given; None while the event log is unavailable (the admin API does not answer or answers an
    error, e.g. a reload's new control process still opening the database)."""
    out, since = [], 0
    while True:
        try:
            r = g.admin(f"/api/v1/events?since={since}&limit=1000", timeout=timeout)
        except OSError:
            return None
        if r.status != 200:
            return None
        page = r.json()
        out += page["events"]
        if len(page["events"]) < 1000:
            break
        since = page["next_since"]
    return [e for e in out if kind is None or e["kind"] == kind]


def wait_events(g, kind, n=1, timeout=10, pred=lambda fields: True):
    """Waits for at least n events of `kind` whose fields satisfy pred; returns them all."""
    def found():
        evs = [e for e in events(g, kind) or [] if pred(e["fields"])]
        return evs if len(evs) >= n else None
    return wait_for(found, timeout, f"{n} {kind} event(s)", interval=0.05)
