"""chaoslib.py - what every chaos scenario shares (stdlib only, /usr/bin/python3).

A scenario is a script that builds a small world (gateway, upstreams, receiver, fault proxy,
namespaces, mounts), breaks one thing, measures what clients and the admin API saw, and prints
exactly one line:

    RESULT <name>: PASS|FAIL|SKIP|KNOWN-BUG <key=value ...> [reason]

Exit status: 0 PASS (and KNOWN-BUG, see chaos/README.md), 1 FAIL, 77 SKIP (ctest
SKIP_RETURN_CODE). Everything the scenario creates is registered with `Scenario.cleanup()` the
moment it exists and removed in reverse order in a `finally`, also on an exception, SIGTERM,
SIGINT, SIGHUP or the scenario's own time bound (SIGALRM). Child processes also get
PR_SET_PDEATHSIG(SIGKILL), so even a SIGKILL of the scenario does not leave them running;
namespaces left by a killed run are removed by the next run of the same scenario (fixed prefix
per scenario), and mounts are made inside a private mount namespace (see `private_mounts()`),
which the kernel discards with the last process in it.

Processes are only ever signalled by the PIDs this module started (or the gateway's children,
read from /proc/PID/task/PID/children), never by name.

Environment (set by ctest, see chaos/CMakeLists.txt): BW_BINARY, BW_UPSTREAM, BW_FAULTPROXY,
BW_LOAD, BW_SOURCE_DIR. Without them the binaries are looked up in BW_SOURCE_DIR/build.
CHAOS_KEEP=DIR copies each scenario's artefacts (CSV, events, logs, PNG) to DIR/<name>/.
CHAOS_VERBOSE=1 prints progress lines on stderr.
"""

import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("BW_SOURCE_DIR") or os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD_DIR = os.path.join(SOURCE_DIR, "build")
BINARY = os.environ.get("BW_BINARY") or os.path.join(BUILD_DIR, "breakwater")
TOOLS_DIR = os.path.dirname(BINARY)
UPSTREAM = os.environ.get("BW_UPSTREAM") or os.path.join(TOOLS_DIR, "bw_upstream")
FAULTPROXY = os.environ.get("BW_FAULTPROXY") or os.path.join(TOOLS_DIR, "bw_faultproxy")
LOAD = os.environ.get("BW_LOAD") or os.path.join(TOOLS_DIR, "bw_load")
RECEIVER = os.path.join(SOURCE_DIR, "tests", "integration", "receiver.py")
NETNS_SH = os.path.join(SOURCE_DIR, "chaos", "netns.sh")
PLOT_SH = os.path.join(SOURCE_DIR, "chaos", "plot.sh")
PYTHON = "/usr/bin/python3"

SKIP_CODE = 77
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
VERBOSE = os.environ.get("CHAOS_VERBOSE") not in (None, "", "0")

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
CLONE_NEWNET = 0x40000000


class Skip(Exception):
    """The scenario cannot run here (missing tool, not root): SKIP, exit 77."""


class Fail(Exception):
    """A pass criterion was not met: FAIL, exit 1."""


class LatencyFail(Fail):
    """A latency bound (a p99, a gap) was missed. On this shared 2-core machine a scheduling
    hiccup of 100-200 ms (another process's burst) can hit any single run, so the scenario is
    run once more from scratch; it fails only if the second run fails too (the result line then
    says attempts=2 and why the first one failed). Functional criteria (counts, states, lost
    notifications, crashes) are never retried."""


class KnownBug(Exception):
    """The scenario found a gateway bug that is reported (README, issue): KNOWN-BUG, exit 0."""


class TimeBound(Exception):
    """The scenario's own time bound passed."""


def log(msg):
    if VERBOSE:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now_ms():
    return time.time() * 1000.0


def _pdeathsig():
    # runs in the child between fork and exec: die with the scenario, whatever kills it
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def asan_build(binary=BINARY):
    """True when the gateway binary is an AddressSanitizer build (links libasan)."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "libasan" in out


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a list; None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def need_tools(*names):
    for n in names:
        if shutil.which(n) is None:
            raise Skip(f"{n} not found (apt-get install it)")


def need_root():
    if os.geteuid() != 0:
        raise Skip("needs root (network namespaces, nft, mounts)")


def wait_for(pred, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Fail(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def free_port(host="127.0.0.1"):
    """A port that is free now, below the ephemeral range (as in tests/integration/conftest.py)."""
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


_REQUEST_LOGS = {}  # port -> CSV file object (see log_requests)


def log_requests(sc, port, csv_name):
    """From now on, every http_request() to `port` is also written to sc.path(csv_name) as a
    bw_load CSV line (t_start_ms,latency_us,status,error), so that a scenario whose load is its
    own sequence of requests (no bw_load run) gets a timeline from plot.sh too. Admin API calls
    go to another port and are not logged. Returns the CSV path."""
    path = sc.path(csv_name)
    f = open(path, "w", buffering=1)
    f.write("t_start_ms,latency_us,status,error\n")
    _REQUEST_LOGS[port] = f

    def close():
        if _REQUEST_LOGS.get(port) is f:
            del _REQUEST_LOGS[port]
        f.close()

    sc.cleanup(close, "request log")
    return path


def _error_kind(e):
    """bw_load's error names (chaos/README.md, bw_load CSV) for an exception of http.client."""
    if isinstance(e, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, http.client.HTTPException):
        return "bad_response"
    return "error"


def http_request(host, port, method="GET", path="/", body=None, headers=None, timeout=5):
    """One request on a fresh connection: (status, headers dict lower-cased, body bytes)."""
    log = _REQUEST_LOGS.get(port)
    if log is not None:
        t_wall, t_mono = now_ms(), time.monotonic()
        try:
            r = _http_request(host, port, method, path, body, headers, timeout)
        except (OSError, http.client.HTTPException) as e:
            log.write(f"{int(t_wall)},{int((time.monotonic() - t_mono) * 1e6)},0,{_error_kind(e)}\n")
            raise
        log.write(f"{int(t_wall)},{int((time.monotonic() - t_mono) * 1e6)},{r[0]},\n")
        return r
    return _http_request(host, port, method, path, body, headers, timeout)


def _http_request(host, port, method, path, body, headers, timeout):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = json.dumps(body) if isinstance(body, (dict, list)) else body
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def read_lines(proc, n, timeout=15):
    """The first n lines of proc's stdout (unbuffered binary pipe)."""
    import selectors

    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise RuntimeError(f"expected {n} lines on stdout, got {buf!r}")
            data = os.read(fd, 4096)
            if not data:
                raise RuntimeError(f"stdout closed after {buf!r}")
            buf += data
    return buf.decode().splitlines()[:n]


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def proc_state(pid):
    """The one-letter state of a process (R, S, T, Z, ...) or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _remove_stale_dirs(name):
    """Temp dirs of this scenario left by a run that was killed with SIGKILL (its PID is in the
    name and no longer exists)."""
    tmp = tempfile.gettempdir()
    prefix = f"bw-chaos-{name}-"
    for entry in os.listdir(tmp):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)


class Scenario:
    """One run: temp dir, cleanups, timing scale, result line."""

    def __init__(self, name, time_bound_s):
        self.name = name
        self.time_bound_s = time_bound_s
        self.t0 = time.monotonic()
        _remove_stale_dirs(name)
        self.dir = tempfile.mkdtemp(prefix=f"bw-chaos-{name}-{os.getpid()}-")
        self._cleanups = []
        self.asan = asan_build()
        if os.geteuid() == 0:
            # a latency measurement should not compete on equal terms with unrelated jobs on
            # the machine (builds, other test suites); children inherit the priority
            try:
                os.nice(-5)
            except OSError:
                pass
        # timing bounds are multiplied by this: the ASan build is 2-3x slower on a busy 2-core box
        self.scale = 2.5 if self.asan else 1.0
        self.figures = {}
        self.events_extra = []  # markers for plot.sh: {"ts_ms", "kind", "fields"}
        self._orig_netns = None
        self.retry_reason = None

    # ---- cleanup ----
    def cleanup(self, fn, what=""):
        self._cleanups.append((fn, what))

    def _run_cleanups(self):
        while self._cleanups:
            fn, what = self._cleanups.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - cleanup must go on
                print(f"chaos {self.name}: cleanup {what} failed: {e}", file=sys.stderr)

    def mark(self, kind, ts_ms=None, **fields):
        ts = int(now_ms() if ts_ms is None else ts_ms)
        self.events_extra.append({"ts_ms": ts, "kind": kind, "fields": fields})

    def fig(self, **kw):
        self.figures.update(kw)

    def path(self, name):
        return os.path.join(self.dir, name)

    # ---- processes ----
    def spawn(self, argv, netns=None, stdout=None, stderr=None, env=None, what=None, cwd=None,
              stop_signal=signal.SIGTERM, stop=None):
        """Starts argv (inside a named network namespace when netns is given, via `ip netns
        exec`, which execs so the PID is the program's own) and registers its stop."""
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        p = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                             preexec_fn=_pdeathsig, bufsize=0)
        if stop is None:
            self.cleanup(lambda: stop_process(p, stop_signal), what or argv[0])
        else:
            self.cleanup(lambda: stop(p), what or argv[0])
        return p

    # ---- network namespaces ----
    def netns(self, prefix, receiver=True):
        """netns.sh up with a fixed prefix (a leftover of a killed run is removed first), then
        moves this process into PREFIX-gw, so every socket it opens, and every process it starts
        afterwards, lives there. Registers: back to the original namespace, then netns.sh down."""
        need_root()
        need_tools("ip", "nft")
        ns = [NETNS_SH, "--prefix", prefix]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        if any(line.split()[0].startswith(prefix + "-") for line in listed.splitlines() if line):
            log(f"removing namespaces left by an earlier run ({prefix})")
            subprocess.run([*ns, "down"], timeout=60)
        subprocess.run([*ns, "up"] + ([] if receiver else ["--no-receiver"]), check=True,
                       timeout=60)
        self._orig_netns = os.open("/proc/self/ns/net", os.O_RDONLY)

        def down():
            self.leave_netns()
            subprocess.run([*ns, "down"], timeout=60)

        self.cleanup(down, "netns down")
        fd = os.open(f"/run/netns/{prefix}-gw", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise RuntimeError(f"setns: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)
        return Netns(prefix)

    def leave_netns(self):
        if self._orig_netns is not None:
            _libc.setns(self._orig_netns, CLONE_NEWNET)
            os.close(self._orig_netns)
            self._orig_netns = None

    # ---- artefacts ----
    def delivery_marks(self):
        """One alert_delivered marker per notification request that the scenario's webhook
        receiver recorded (Receiver writes sc.path("receiver.jsonl")), at its arrival time.
        Deliveries are not among the gateway's events (GET /api/v1/events has breaker, worker,
        reload... kinds), so plot.sh gets them from the receiver's side: retries of one delivery
        show as several marks."""
        out = []
        try:
            with open(self.path("receiver.jsonl")) as f:
                lines = f.readlines()
        except OSError:
            return out
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line being written
            body = r.get("json") if isinstance(r.get("json"), dict) else {}
            what = " ".join(str(body[k]) for k in ("tier", "event") if body.get(k))
            if body.get("status") == "resolved":
                what += " resolved"
            out.append({"ts_ms": int(float(r.get("ts", 0)) * 1000), "kind": "alert_delivered",
                        "fields": {"what": what or r.get("path", "")}})
        return out

    def plot(self, csv, title, events=None, since_ms=None):
        """Writes CSV's PNG timeline with chaos/plot.sh (events: the gateway's event list plus
        this scenario's markers plus the receiver's deliveries). The subtitle records when and
        under what load average it was measured. since_ms starts the time axis earlier than the
        first request. Returns the PNG path or None (no gnuplot: not a failure)."""
        if shutil.which("gnuplot") is None:
            return None
        ev = list(events or []) + self.events_extra + self.delivery_marks()
        ev_path = self.path(os.path.basename(csv).replace(".csv", "") + "-events.json")
        with open(ev_path, "w") as f:
            json.dump({"events": ev}, f)
        png = csv.replace(".csv", ".png")
        load = " ".join(f"{v:.2f}" for v in os.getloadavg())
        sub = (f"{self.name}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
               f"load average {load} on {os.cpu_count()} CPUs"
               + (", ASan build" if self.asan else "")
               + (f", attempt {self.figures.get('attempts')}" if "attempts" in self.figures else ""))
        since = ["-x", str(int(since_ms))] if since_ms else []
        r = subprocess.run([PLOT_SH, "-o", png, "-e", ev_path, "-t", title, "-s", sub, *since, csv],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            print(f"chaos {self.name}: plot.sh failed: {r.stderr.strip()}", file=sys.stderr)
            return None
        return png

    def keep(self):
        dest_root = os.environ.get("CHAOS_KEEP")
        if not dest_root:
            return None
        dest = os.path.join(dest_root, self.name)
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest_root, exist_ok=True)
        shutil.copytree(self.dir, dest, ignore=shutil.ignore_patterns("var", "*.db*", "mnt"),
                        symlinks=True, ignore_dangling_symlinks=True)
        return dest

    # ---- the run ----
    def run(self, body, retries=1):
        """Runs body(self) and prints the RESULT line. body returns None (PASS) or raises.
        A LatencyFail gets `retries` more runs from scratch (cleanups in between)."""

        def on_signal(signum, frame):
            raise SystemExit(128 + signum)

        def on_alarm(signum, frame):
            raise TimeBound(f"time bound of {self.time_bound_s}s passed")

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, on_signal)
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(int(self.time_bound_s))
        verdict, reason, code = "PASS", "", 0
        try:
            try:
                for attempt in range(retries + 1):
                    try:
                        body(self)
                        break
                    except LatencyFail as e:
                        if attempt == retries:
                            raise
                        print(f"chaos {self.name}: attempt {attempt + 1}: {e}; running again",
                              file=sys.stderr, flush=True)
                        self._run_cleanups()
                        shutil.rmtree(self.dir, ignore_errors=True)  # a fresh state_dir too
                        self.dir = tempfile.mkdtemp(prefix=f"bw-chaos-{self.name}-{os.getpid()}-")
                        self.figures = {"attempts": attempt + 2}
                        self.events_extra = []
                        self.retry_reason = str(e)
            finally:
                signal.alarm(0)
        except Skip as e:
            verdict, reason, code = "SKIP", str(e), SKIP_CODE
        except KnownBug as e:
            verdict, reason, code = "KNOWN-BUG", str(e), 0
        except (Fail, TimeBound) as e:
            verdict, reason, code = "FAIL", str(e), 1
        except SystemExit as e:
            verdict, reason, code = "FAIL", f"interrupted ({e.code})", 1
        except Exception as e:  # noqa: BLE001 - a broken scenario is a failure, with its cause
            import traceback

            traceback.print_exc()
            verdict, reason, code = "FAIL", f"{type(e).__name__}: {e}", 1
        finally:
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, signal.SIG_IGN)  # a second signal must not cut the cleanup
            self._run_cleanups()
        kept = None
        try:
            kept = self.keep()
        except OSError as e:
            print(f"chaos {self.name}: CHAOS_KEEP copy failed: {e}", file=sys.stderr)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.fig(time=f"{time.monotonic() - self.t0:.1f}s")
        if self.asan:
            self.fig(asan="yes")
        figs = " ".join(f"{k}={v}" for k, v in self.figures.items())
        line = f"RESULT {self.name}: {verdict} {figs}".rstrip()
        if reason:
            line += f" -- {reason}"
        if self.retry_reason:
            line += f" (first attempt: {self.retry_reason})"
        if kept:
            line += f" (artefacts: {kept})"
        print(line, flush=True)
        return code


def stop_process(p, sig=signal.SIGTERM, timeout=8):
    """SIGTERM (or sig) by PID, SIGKILL after timeout; reaps it."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        except ProcessLookupError:
            pass
    if p.stdout:
        p.stdout.close()


class Netns:
    def __init__(self, prefix):
        self.prefix = prefix
        self.gw = f"{prefix}-gw"
        self.up = f"{prefix}-up"
        self.rx = f"{prefix}-rx"
        self.up_addr = "10.77.0.2"
        self.rx_addr = "10.77.0.6"

    def _sh(self, *args):
        r = subprocess.run([NETNS_SH, "--prefix", self.prefix, *args], capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"netns.sh {' '.join(args)}: {r.stderr.strip()}")

    def cut(self, link, mode="drop", direction="both"):
        args = ["cut", link, "--mode", mode]
        if mode in ("drop", "reject"):
            args += ["--dir", direction]
        self._sh(*args)

    def heal(self, link):
        self._sh("heal", link)


# ---- the processes a scenario uses -----------------------------------------------------------


class Upstream:
    """A bw_upstream; `listen` may be an address inside a namespace."""

    def __init__(self, sc, name, listen="127.0.0.1:0", netns=None, extra=()):
        self.p = sc.spawn([UPSTREAM, "--listen", listen, "--name", name, *extra], netns=netns,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, what=f"upstream {name}")
        line = read_lines(self.p, 1)[0]
        if not line.startswith("PORT "):
            raise RuntimeError(f"bw_upstream {name} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.addr = f"{listen.rsplit(':', 1)[0]}:{self.port}"


class Receiver:
    """tests/integration/receiver.py; its JSONL log is read from disk, so it can be checked
    while the link to it is cut."""

    def __init__(self, sc, host="127.0.0.1", port=0, netns=None):
        self.log_path = sc.path("receiver.jsonl")
        self.p = sc.spawn([PYTHON, RECEIVER, "--log", self.log_path, "--host", host, "--port",
                           str(port)], netns=netns, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, what="receiver")
        line = read_lines(self.p, 1)[0]
        self.port = int(line.split()[1])
        self.url = f"http://{host}:{self.port}/hook"

    def requests(self):
        out = []
        try:
            with open(self.log_path) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written
        except FileNotFoundError:
            pass
        return out

    def delivery_ids(self):
        """Delivery ids received (body delivery_id), each once."""
        return {r["json"]["delivery_id"] for r in self.requests()
                if isinstance(r.get("json"), dict) and "delivery_id" in r["json"]}


class FaultProxy:
    def __init__(self, sc, target, extra=()):
        self.p = sc.spawn([FAULTPROXY, "--target", target, *extra], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, what="faultproxy")
        lines = read_lines(self.p, 2)
        self.port = int(lines[0].split()[1])
        self.control = int(lines[1].split()[1])
        self.addr = f"127.0.0.1:{self.port}"

    def api(self, method, path, body=None):
        st, _, data = http_request("127.0.0.1", self.control, method, path, body)
        return st, json.loads(data or b"null")

    def add(self, **fault):
        st, reply = self.api("POST", "/faults", fault)
        if st != 201:
            raise RuntimeError(f"faultproxy refused {fault}: {reply}")
        return reply["id"]

    def clear(self):
        self.api("DELETE", "/faults")


class Gateway:
    """A breakwater process on a config written for the scenario.

    The config text may use {port}, {admin_port}, {state_dir}; listen/admin/state_dir/workers/
    shutdown_timeout are added when missing (as tests/integration/conftest.py does)."""

    def __init__(self, sc, config, state_dir=None, workers=2, env=None, host="127.0.0.1",
                 fixed_ports=False, tag="gw", wait=True, prefix_cmd=()):
        self.sc = sc
        self.host = host
        self.port = 8080 if fixed_ports else free_port()
        self.admin_port = 9901 if fixed_ports else free_port()
        self.state_dir = state_dir or sc.path("var")
        text = (textwrap.dedent(config).replace("{port}", str(self.port))
                .replace("{admin_port}", str(self.admin_port))
                .replace("{state_dir}", self.state_dir))
        head = ""
        if "listen:" not in text.split("admin:")[0]:
            head += f'listen: ["{host}:{self.port}"]\n'
        if "admin:" not in text:
            head += f'admin: {{ listen: "{host}:{self.admin_port}" }}\n'
        if "state_dir:" not in text:
            head += f"state_dir: {self.state_dir}\n"
        if "workers:" not in text:
            head += f"workers: {workers}\n"
        if "shutdown_timeout:" not in text:
            head += "shutdown_timeout: 3s\n"
        self.config_path = sc.path(f"{tag}.yaml")
        with open(self.config_path, "w") as f:
            f.write(head + text)
        self.log_path = sc.path(f"{tag}.log")
        self.env = {**os.environ, **(env or {})}
        self.prefix_cmd = list(prefix_cmd)
        self.tag = tag
        self.proc = None
        self.start(wait=wait)

    def start(self, wait=True):
        self._log = open(self.log_path, "a")
        self.proc = self.sc.spawn([*self.prefix_cmd, BINARY, "-c", self.config_path],
                                  stdout=self._log, stderr=self._log, env=self.env,
                                  cwd=self.sc.dir, what=f"breakwater {self.tag}",
                                  stop=self._cleanup_stop)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout * self.sc.scale
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"breakwater exited {self.proc.returncode}:\n"
                                   f"{self.logs()[-3000:]}")
            try:
                if self.admin("/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"breakwater not ready:\n{self.logs()[-3000:]}")

    def admin(self, path, method="GET", body=None, timeout=5):
        st, _, data = http_request(self.host, self.admin_port, method, path, body,
                                   timeout=timeout)
        try:
            return st, json.loads(data) if data else None
        except ValueError:
            return st, data

    def get(self, path, headers=None, timeout=5):
        return http_request(self.host, self.port, "GET", path, headers=headers, timeout=timeout)

    def events(self, kind=None, since=0):
        out = []
        while True:
            st, page = self.admin(f"/api/v1/events?since={since}&limit=1000")
            if st != 200:
                return out
            out += page["events"]
            if len(page["events"]) < 1000:
                break
            since = page["next_since"]
        return [e for e in out if kind is None or e["kind"] == kind]

    def wait_event(self, kind, timeout, pred=lambda e: True, since=0):
        return wait_for(lambda: [e for e in self.events(kind, since) if pred(e)],
                        timeout * self.sc.scale, f"a {kind} event", interval=0.01)[0]

    def breaker_state(self, upstream):
        st, body = self.admin("/api/v1/upstreams")
        if st != 200:
            return None
        for u in body.get("upstreams", []):
            if u.get("name") == upstream:
                b = u.get("breaker") or {}
                return b.get("state")
        return None

    def alerts(self, status=None):
        st, body = self.admin("/api/v1/alerts" + (f"?status={status}" if status else ""))
        return body.get("alerts", []) if st == 200 and isinstance(body, dict) else []

    def alert(self, alert_id):
        st, body = self.admin(f"/api/v1/alerts/{alert_id}")
        return body if st == 200 else None

    def logs(self):
        try:
            self._log.flush()
        except ValueError:
            pass
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

    def children(self):
        return children_of(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def worker_pids(self):
        """{worker index: pid} of the latest start of each worker, from the JSON logs."""
        return {l["worker"]: l["pid"] for l in self.log_lines()
                if l.get("msg") == "worker ready" and "worker" in l}

    def control_pid(self):
        workers = set(self.worker_pids().values())
        rest = [c for c in self.children() if c not in workers]
        return rest[0] if len(rest) == 1 else None

    def sanitizer_reports(self):
        return [m for m in SANITIZER_MARKS if m in self.logs()]

    def _cleanup_stop(self, p):
        """At cleanup: SIGTERM to the supervisor (a graceful stop), SIGKILL after a while, then
        SIGKILL to any of its children still alive (their PIDs read before the stop)."""
        kids = children_of(p.pid) if p.poll() is None else []
        stop_process(p, signal.SIGTERM, timeout=10 * self.sc.scale)
        for c in kids:
            if proc_state(c) not in (None, "Z"):
                try:
                    os.kill(c, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self._log.close()
        except ValueError:
            pass

    def kill_children(self):
        for c in children_of(self.proc.pid) if self.proc else []:
            try:
                os.kill(c, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill9_all(self):
        """kill -9 of the whole gateway: every child, then the supervisor (by PID)."""
        kids = self.children()
        for pid in kids + [self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        for pid in kids:  # children are reaped by init; wait until they are gone
            wait_for(lambda: proc_state(pid) in (None, "Z"), 10, f"pid {pid} to die")
        self._log.close()

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout * self.sc.scale)
            except subprocess.TimeoutExpired:
                self.kill_children()
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Load:
    """bw_load in the background, every request logged to CSV."""

    def __init__(self, sc, url, csv_name, rate=None, duration=30, connections=20, timeout_ms=5000,
                 connect_timeout_ms=None, headers=(), netns=None):
        self.csv = sc.path(csv_name)
        self.json = self.csv.replace(".csv", ".json")
        argv = [LOAD, "-q", "-c", str(connections), "-d", str(duration), "-t", str(timeout_ms),
                "-o", self.csv, "--json", self.json]
        if rate:
            argv += ["-r", str(rate)]
        if connect_timeout_ms:
            argv += ["--connect-timeout", str(connect_timeout_ms)]
        for h in headers:
            argv += ["-H", h]
        argv.append(url)
        self.t_start_ms = now_ms()
        self.p = sc.spawn(argv, netns=netns, stdout=subprocess.DEVNULL,
                          stderr=open(sc.path(csv_name + ".stderr"), "w"), what="bw_load",
                          stop_signal=signal.SIGINT)

    def stop(self, timeout=30):
        """Stops issuing (SIGINT), waits for the requests in flight, returns the rows."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.send_signal(signal.SIGINT)  # a second one records what is in flight
            self.p.wait(timeout=10)
        return self.rows()

    def wait(self, timeout=120):
        self.p.wait(timeout=timeout)
        return self.rows()

    def rows(self):
        """[(t_start_ms, latency_ms, status, error)] in completion order."""
        out = []
        with open(self.csv) as f:
            next(f, None)
            for line in f:
                parts = line.rstrip("\n").split(",")
                if len(parts) < 4:
                    continue
                out.append((int(parts[0]), int(parts[1]) / 1000.0, int(parts[2]), parts[3]))
        return out

    def summary(self):
        with open(self.json) as f:
            return json.load(f)


def window(rows, t_from_ms, t_to_ms):
    """Rows whose intended start is in [t_from_ms, t_to_ms)."""
    return [r for r in rows if t_from_ms <= r[0] < t_to_ms]


def ok(r):
    return r[3] == "" and 200 <= r[2] < 300


def fmt_ms(v):
    return "n/a" if v is None else f"{v:.1f}ms"


def fmt_s(v):
    return "n/a" if v is None else f"{v:.2f}s"


def private_mounts():
    """Re-executes the running script in a private mount namespace (unshare -m), once. Mounts the
    scenario makes then exist only there: the kernel removes them with the namespace's last
    process, even if the scenario is killed with SIGKILL. Returns normally in the child."""
    if os.environ.get("BW_CHAOS_MNTNS") == "1":
        return
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return  # the caller checks need_root() and reports a SKIP
    env = {**os.environ, "BW_CHAOS_MNTNS": "1"}
    os.execve("/usr/bin/unshare", ["unshare", "--mount", "--propagation", "private",
                                   sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]],
              env)
