#!/usr/bin/python3
"""receiver.py - a real webhook receiver for the alert delivery tests (issues 6 and 7).

A Python stdlib HTTP/1.1 server (keep-alive, one thread per connection) on loopback. It prints
`PORT n` on stdout once it listens, records every request it reads (method, path, headers, body,
arrival time, the mode that answered it) as one JSON line in the --log file *before* answering, so
a request that is never answered (hang, close) is still on record, and answers according to its
current mode. Control endpoints under /_ are not recorded.

Modes (start with --mode and friends, switch at run time with POST /_mode):
  ok       status (default 200) with body (default {"ok":true}) and extra headers
  fail     status (default 500) with body (default {"error":"injected"})
  status   any status, body, headers; "retry_after" adds a Retry-After header
  delay    wait delay_ms, then answer as "ok" would (status/body/headers apply)
  hang     read the request, never answer (until the client closes or the server stops)
  close    read the request, close the connection without answering
  reset    read the request, reset the connection (RST) without answering
A "sequence" (list of mode objects) is consumed one per request before the mode applies, e.g.
POST /_mode {"mode":"ok","sequence":[{"mode":"fail"},{"mode":"status","status":503,
"retry_after":"1"}]} answers 500, then 503 with Retry-After, then 200 forever.

Control endpoints:
  POST /_mode      JSON as above; replaces the mode and the sequence; answers the new state
  GET  /_mode      the current state
  GET  /_requests  {"requests":[...]} everything recorded so far (same objects as the log)
  POST /_clear     forget the recorded requests (the log file is truncated too)
  GET  /_health    200 {"ok":true}

CLI: receiver.py --log FILE [--host 127.0.0.1] [--port 0] [--mode ok] [--status N]
     [--body TEXT] [--delay-ms N] [--retry-after V] [--header NAME:VALUE]...
     [--sequence MODE[,MODE...]]   (each MODE is a mode name or a status code, e.g. 500,200)
SIGTERM/SIGINT stop it (hanging connections are released first).

Usage from pytest: start it with subprocess.Popen([sys.executable, receiver.py, "--log", path],
stdout=PIPE), read the first line ("PORT n"), and end it by PID at teardown.
"""

import argparse
import base64
import json
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "fail", "status", "delay", "hang", "close", "reset")
BODY_MAX = 16 * 1024 * 1024  # bytes of one request body we read


def mode_from_arg(text):
    """'500' -> a status mode, 'hang' -> that mode."""
    if text.isdigit():
        code = int(text)
        return {"mode": "ok" if code < 300 else "status", "status": code}
    if text not in MODES:
        raise ValueError(f"unknown mode {text!r}")
    return {"mode": text}


def check_mode(m):
    if not isinstance(m, dict) or m.get("mode", "ok") not in MODES:
        raise ValueError(f"not a mode object: {m!r}")
    return m


class State:
    def __init__(self, log_path, default):
        self.lock = threading.Lock()
        self.log_path = log_path
        self.log = open(log_path, "a", encoding="utf-8")
        self.mode = default
        self.sequence = []
        self.requests = []
        self.stopping = threading.Event()

    def set_mode(self, obj):
        with self.lock:
            seq = obj.get("sequence", [])
            if not isinstance(seq, list):
                raise ValueError("sequence must be a list")
            mode = {k: v for k, v in obj.items() if k != "sequence"}
            self.mode = check_mode(mode)
            self.sequence = [check_mode(m) for m in seq]
            return self.snapshot_locked()

    def snapshot_locked(self):
        return {"mode": self.mode, "sequence": self.sequence, "recorded": len(self.requests)}

    def next_mode(self):
        with self.lock:
            if self.sequence:
                return self.sequence.pop(0)
            return self.mode

    def record(self, entry):
        with self.lock:
            entry["seq"] = len(self.requests) + 1
            self.requests.append(entry)
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    def clear(self):
        with self.lock:
            self.requests = []
            self.log.truncate(0)
            self.log.seek(0)
            self.log.flush()


def default_body(mode, status):
    if mode == "fail" or status >= 400:
        return '{"error":"injected"}'
    return '{"ok":true}'


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bw-receiver/1"

    def log_message(self, fmt, *args):  # quiet: the JSONL log is the record
        pass

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > BODY_MAX:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        if n > BODY_MAX:
            raise ValueError("body too large")
        return self.rfile.read(n) if n > 0 else b""

    def reply(self, status, body, headers=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if not any(k.lower() == "content-type" for k in (headers or {})):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def control(self, body):
        st = self.server.state
        path = self.path.split("?")[0]
        if path == "/_health":
            return self.reply(200, '{"ok":true}')
        if path == "/_mode" and self.command == "GET":
            with st.lock:
                return self.reply(200, json.dumps(st.snapshot_locked()))
        if path == "/_mode" and self.command == "POST":
            try:
                return self.reply(200, json.dumps(st.set_mode(json.loads(body or b"{}"))))
            except ValueError as e:
                return self.reply(400, json.dumps({"error": str(e)}))
        if path == "/_requests":
            with st.lock:
                return self.reply(200, json.dumps({"requests": st.requests}))
        if path == "/_clear" and self.command == "POST":
            st.clear()
            return self.reply(200, '{"ok":true}')
        return self.reply(404, '{"error":"no such control endpoint"}')

    def handle_any(self):
        st = self.server.state
        try:
            body = self.read_body()
        except ValueError:
            self.close_connection = True
            return self.reply(413, '{"error":"too large"}')
        if self.path.startswith("/_"):
            return self.control(body)
        mode = st.next_mode()
        name = mode.get("mode", "ok")
        try:
            text = body.decode("utf-8")
            body_field = {"body": text}
        except UnicodeDecodeError:
            body_field = {"body_b64": base64.b64encode(body).decode()}
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        st.record(
            {
                "ts": time.time(),
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                **body_field,
                "json": parsed,
                "mode": name,
            }
        )
        self.answer(mode, name)

    def answer(self, mode, name):
        st = self.server.state
        if name == "hang":
            self.close_connection = True
            self.hang()
            return
        if name == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if name == "reset":
            self.close_connection = True
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()  # RST now; the server's own shutdown/close become no-ops
            return
        if name == "delay":
            st.stopping.wait(int(mode.get("delay_ms", 1000)) / 1000.0)
        status = int(mode.get("status", 500 if name == "fail" else 200))
        headers = dict(mode.get("headers") or {})
        if "retry_after" in mode:
            headers["Retry-After"] = str(mode["retry_after"])
        body = mode.get("body")
        if body is None:
            body = default_body(name, status)
        elif not isinstance(body, str):
            body = json.dumps(body)
        self.reply(status, body, headers)

    def hang(self):
        """Never answer: wait until the client goes away or the server stops."""
        sock = self.connection
        sock.settimeout(0.2)
        while not self.server.state.stopping.is_set():
            try:
                if sock.recv(65536) == b"":
                    return  # the client closed; anything else it sends is ignored
            except socket.timeout:
                continue
            except OSError:
                return

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: the stdlib's 5 drops SYNs under a burst of sends


def parse_args(argv):
    p = argparse.ArgumentParser(description="webhook receiver for Breakwater tests")
    p.add_argument("--log", required=True, help="JSONL file that records every request")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", default="ok", choices=MODES)
    p.add_argument("--status", type=int)
    p.add_argument("--body")
    p.add_argument("--delay-ms", type=int)
    p.add_argument("--retry-after")
    p.add_argument("--header", action="append", default=[], help="NAME:VALUE, repeatable")
    p.add_argument("--sequence", help="comma-separated modes or status codes, e.g. 500,200")
    return p.parse_args(argv)


def main(argv):
    a = parse_args(argv)
    mode = {"mode": a.mode}
    if a.status is not None:
        mode["status"] = a.status
    if a.body is not None:
        mode["body"] = a.body
    if a.delay_ms is not None:
        mode["delay_ms"] = a.delay_ms
    if a.retry_after is not None:
        mode["retry_after"] = a.retry_after
    if a.header:
        mode["headers"] = dict(h.split(":", 1) for h in a.header)
    state = State(a.log, mode)
    if a.sequence:
        state.sequence = [mode_from_arg(t.strip()) for t in a.sequence.split(",") if t.strip()]
    srv = Server((a.host, a.port), Handler)
    srv.state = state

    def stop(signum, frame):
        state.stopping.set()
        threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"PORT {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.05)
    finally:
        state.stopping.set()
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
