"""Shared fixtures for the integration suite: real processes on loopback.

Every test starts what it needs itself: `bw_upstream` processes (tests/upstream/README.md lists
their knobs) and a real `breakwater` with a config written for the test. Ports are picked free at
start. Every process started here is tracked by PID and ended at teardown (never by name).

Environment (set by ctest): BW_BINARY, BW_UPSTREAM, BW_SOURCE_DIR.
"""

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("BW_SOURCE_DIR", os.path.abspath(os.path.join(HERE, "..", "..")))
BINARY = os.environ.get("BW_BINARY", os.path.join(SOURCE_DIR, "build", "breakwater"))
UPSTREAM = os.environ.get("BW_UPSTREAM", os.path.join(SOURCE_DIR, "build", "bw_upstream"))


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


class Upstream:
    """A bw_upstream process."""

    def __init__(self, name="upstream", listen="127.0.0.1:0", extra=()):
        self.name = name
        self.proc = subprocess.Popen(
            [UPSTREAM, "--listen", listen, "--name", name, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"bw_upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.addr = f"127.0.0.1:{self.port}"

    def stats(self):
        return request(self.port, path="/_stats").json()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with open(self.log_path, errors="replace") as f:
            self.final_log = f.read()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode


@pytest.fixture
def upstreams():
    started = []

    def start(name="upstream", **kw):
        u = Upstream(name, **kw)
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


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
