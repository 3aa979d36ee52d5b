#!/usr/bin/python3
"""webhook_sink.py - a lean webhook receiver for bench/alert_storm.sh.

tests/integration/receiver.py records every request as a JSON line (parsed body, all headers,
one write + flush per request) from a thread per connection: right for tests, but at 10k
webhooks it costs about 0.4 ms of CPU per request, and on a 2-core machine that CPU comes out of
the same cores the gateway runs on. This one is a single-threaded asyncio server that keeps, per
request, only what the benchmark needs, in memory:

    arrival time (time.time(), taken when the whole request has been read), the
    Idempotency-Key header, and the body (raw bytes, parsed only when dumped)

and answers `200 {"ok":true}` at once (keep-alive, HTTP/1.1, Content-Length or chunked bodies).

Control endpoints (not recorded):
  GET  /_count   {"count": N}                 requests recorded so far
  POST /_dump    writes every record as one JSON line {"ts","key","json"} to --out, answers
                 {"count": N, "out": PATH}
  POST /_clear   forgets the records
A SIGTERM/SIGINT also dumps to --out before exiting.

usage: webhook_sink.py --out FILE [--host 127.0.0.1] [--port 0]     prints "PORT n" when ready
"""

import argparse
import asyncio
import json
import signal
import sys
import time

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
HEAD_MAX = 64 * 1024
BODY_MAX = 16 * 1024 * 1024


class Sink:
    def __init__(self, out):
        self.out = out
        self.records = []  # (ts, idempotency_key, body bytes)

    def dump(self):
        with open(self.out, "w", encoding="utf-8") as f:
            for ts, key, body in self.records:
                try:
                    obj = json.loads(body) if body else None
                except ValueError:
                    obj = None
                f.write(json.dumps({"ts": ts, "key": key, "json": obj}) + "\n")
        return len(self.records)


def reply(status, obj):
    data = json.dumps(obj).encode()
    reason = {200: "OK", 404: "Not Found", 400: "Bad Request"}.get(status, "OK")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


async def read_chunked(reader):
    parts, total = [], 0
    while True:
        line = await reader.readline()
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        total += size
        if total > BODY_MAX:
            raise ValueError("body too large")
        parts.append(await reader.readexactly(size))
        await reader.readline()


async def handle(sink, reader, writer):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            hdrs = {}
            for ln in lines[1:]:
                if ":" in ln:
                    k, v = ln.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            if hdrs.get("transfer-encoding", "").lower() == "chunked":
                body = await read_chunked(reader)
            else:
                n = int(hdrs.get("content-length") or 0)
                if n > BODY_MAX:
                    return
                body = await reader.readexactly(n) if n > 0 else b""
            ts = time.time()
            if path.startswith("/_"):
                p = path.split("?")[0]
                if p == "/_count":
                    writer.write(reply(200, {"count": len(sink.records)}))
                elif p == "/_dump":
                    writer.write(reply(200, {"count": sink.dump(), "out": sink.out}))
                elif p == "/_clear":
                    sink.records.clear()
                    writer.write(reply(200, {"ok": True}))
                else:
                    writer.write(reply(404, {"error": "no such control endpoint"}))
            else:
                sink.records.append((ts, hdrs.get("idempotency-key"), body))
                writer.write(OK)
            if hdrs.get("connection", "").lower() == "close":
                await writer.drain()
                return
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        return
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - closing a broken socket
            pass


async def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    sink = Sink(a.out)
    server = await asyncio.start_server(
        lambda r, w: handle(sink, r, w), a.host, a.port, backlog=512, limit=HEAD_MAX
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    server.close()
    sink.dump()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
