#!/usr/bin/python3
"""fake_providers.py - one loopback server that answers as each alert provider would (issue 7).

Breakwater's channels (alerts/channel_*.c) are tested against it: every request is checked the
way the real provider checks it (DingTalk and Feishu signatures recomputed here from the shared
secret, Opsgenie's GenieKey, Twilio's basic auth, PagerDuty's event schema), answered with the
provider's real success and error shapes (HTTP 200 + errcode for DingTalk/WeCom, code for
Feishu, plain "ok" for Slack, 202 for PagerDuty/Opsgenie, 201 for Twilio), and recorded.
A second listener speaks enough SMTP (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) for the
email channel.

Endpoints (paths as the channel URLs in a test config should name them):
  POST /slack/<anything>                          Slack incoming webhook      -> 200 "ok"
  POST /dingtalk/robot/send?access_token=T[&timestamp=MS&sign=S]            -> {"errcode":0,..}
  POST /feishu/open-apis/bot/v2/hook/<token>      (body timestamp/sign)      -> {"code":0,..}
  POST /wecom/cgi-bin/webhook/send?key=K                                      -> {"errcode":0,..}
  POST /teams/<anything>                          Workflows webhook          -> 202
  POST /pagerduty/v2/enqueue                      Events API v2              -> 202 success
  POST /opsgenie/v2/alerts                        create (GenieKey)          -> 202
  POST /opsgenie/v2/alerts/<alias>/close|acknowledge?identifierType=alias    -> 202
  POST /twilio/2010-04-01/Accounts/<sid>/Calls.json  (basic auth, form)     -> 201 queued
  POST /alertmanager/<anything>                   webhook v4 body            -> 200
How each checks its request (the way the provider does):
  dingtalk  access_token must equal --dingtalk-token (else 300001); with --dingtalk-secret the
            query must carry timestamp (ms, within an hour) and sign = urlencode(base64(
            HMAC-SHA256(key=secret, msg=timestamp+"\\n"+secret))) (else 310000 "sign not
            match"); with --dingtalk-keyword the text must contain it (else 310000); more than
            --dingtalk-limit (20) messages in 60 s -> 130101.
  feishu    with --feishu-secret the body must carry timestamp (s, within an hour) and
            sign = base64(HMAC-SHA256(key=timestamp+"\\n"+secret, msg="")) (else 19021); a
            msg_type other than text/post/interactive/share_chat/image -> 9499.
  wecom     key must equal --wecom-key (else 93000); content over 2048 (text) / 4096 (markdown)
            bytes -> 40058; over --wecom-limit (20) in 60 s -> 45009.
  slack     JSON with "text" or "blocks" (else 400 no_text).
  pagerduty routing_key must equal --pagerduty-key (else 400 invalid event); trigger needs
            payload.summary/source/severity; acknowledge/resolve need dedup_key; incidents are
            tracked by dedup_key (GET /_state).
  opsgenie  Authorization: GenieKey --opsgenie-key (else 401); create needs message (<= 130);
            alerts tracked by alias (GET /_state).
  twilio    HTTP basic auth --twilio-sid:--twilio-token (else 401 code 20003); To must be E.164
            (else 400 code 21211); Twiml must be a well-formed <Response> document of at most
            4000 characters (else 400 code 21220); the call is tracked with its TwiML, what it
            says and its <Gather> (action URL, method, numDigits), so a test can "press a key":
            POST /_twilio/gather makes the fake request the Gather action as Twilio would.
Each request is recorded (provider, method, path, query, headers, body, parsed json/form,
"verified" = what was checked and passed, "answer" = status and body) as a JSON line in --log,
*before* the answer is sent.

Control endpoints (not recorded):
  GET  /_requests            {"requests":[...]}
  GET  /_state               {"pagerduty":{dedup_key: state}, "opsgenie":{alias: state},
                              "calls":[...], "mail":[...]}
  POST /_clear               forget requests, state and mail
  POST /_mode {"provider": P, "mode": M, ...}   the next answers of provider P (or "*"):
       "ok"        normal behaviour (the default)
       "status"    answer "status" with "body" (and "headers"), no checks
       "throttle"  the provider's own rate-limit answer (dingtalk 130101, feishu 11232,
                   wecom 45009, slack 429 + Retry-After, pagerduty 429, opsgenie 429,
                   twilio 429 code 20429; smtp 451)
       "reject"    smtp only: 550 for RCPT TO
     "count": N applies the mode to the next N requests only, then back to "ok".
  POST /_twilio/gather {"call": INDEX|SID (default: the last call), "digits": "1",
                        "method": "GET"|"POST" (default: the Gather's method, Twilio's default
                        POST when it has none), "url": URL (default: the Gather's action)}
       a key pressed during the call: the fake requests the action URL the way Twilio does
       (GET: Digits and the call's parameters appended to the query; POST: the same as a
       form body; both with X-Twilio-Signature) and answers {"method", "url", "status",
       "content_type", "body", "twiml_ok" (the answer parsed as a <Response> document),
       "say": [texts]}. The press is also recorded in the call's "presses".
  GET  /_health

CLI: fake_providers.py [--log FILE] [--host 127.0.0.1] [--port 0] [--smtp-port 0]
       [--dingtalk-token T] [--dingtalk-secret S] [--dingtalk-keyword K] [--dingtalk-limit 20]
       [--feishu-secret S] [--wecom-key K] [--wecom-limit 20] [--pagerduty-key K]
       [--opsgenie-key K] [--twilio-sid SID] [--twilio-token T]
     fake_providers.py --self-test      runs the checks below against itself and exits 0/1.
Prints "PORT n" then "SMTP n" on stdout once both listen. SIGTERM/SIGINT stop it.
"""

import argparse
import base64
import hashlib
import hmac
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY_MAX = 4 * 1024 * 1024
HOUR_S = 3600


# ---- signatures, computed the way the providers document them ----

def dingtalk_sign(secret, timestamp_ms):
    """urlencode is the caller's: this is base64(HMAC-SHA256(secret, ts + "\\n" + secret))."""
    msg = f"{timestamp_ms}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), msg, hashlib.sha256).digest()).decode()


def feishu_sign(secret, timestamp_s):
    """base64(HMAC-SHA256(key = ts + "\\n" + secret, msg = "")): key and message swapped."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


class Window:
    """Counts events in a sliding 60 s window (provider rate limits)."""

    def __init__(self, limit):
        self.limit = limit
        self.times = []

    def hit(self, now):
        self.times = [t for t in self.times if now - t < 60]
        self.times.append(now)
        return len(self.times) > self.limit


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None
        self.modes = {}
        self.clear()

    def clear(self):
        with self.lock:
            self.requests = []
            self.pagerduty = {}
            self.opsgenie = {}
            self.calls = []
            self.mail = []
            self.ding_window = Window(self.args.dingtalk_limit)
            self.wecom_window = Window(self.args.wecom_limit)
            if self.log:
                self.log.truncate(0)
                self.log.seek(0)

    def set_mode(self, obj):
        with self.lock:
            provider = obj.get("provider", "*")
            self.modes[provider] = dict(obj)
            return {"modes": self.modes}

    def take_mode(self, provider):
        with self.lock:
            m = self.modes.get(provider) or self.modes.get("*")
            if m is None or m.get("mode", "ok") == "ok":
                return {"mode": "ok"}
            if "count" in m:
                m["count"] -= 1
                if m["count"] <= 0:
                    self.modes.pop(provider if provider in self.modes else "*", None)
            return m

    def record(self, entry):
        with self.lock:
            entry["seq"] = len(self.requests) + 1
            self.requests.append(entry)
            if self.log:
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()

    def snapshot(self):
        with self.lock:
            return {"pagerduty": dict(self.pagerduty), "opsgenie": dict(self.opsgenie),
                    "calls": list(self.calls), "mail": list(self.mail)}


# ---- one function per provider: (entry) -> (status, headers, body) ----

def json_answer(status, obj, headers=None):
    return status, dict(headers or {}, **{"Content-Type": "application/json"}), json.dumps(obj)


def ding(st, e):
    a, q, j = st.args, e["query"], e["json"]
    if q.get("access_token") != a.dingtalk_token:
        return json_answer(200, {"errcode": 300001, "errmsg": "token is not exist"})
    if a.dingtalk_secret:
        ts, sign = q.get("timestamp", ""), q.get("sign", "")
        fresh = ts.isdigit() and abs(time.time() * 1000 - int(ts)) < HOUR_S * 1000
        want = dingtalk_sign(a.dingtalk_secret, ts) if ts.isdigit() else None
        if not fresh or not hmac.compare_digest(sign, want or ""):
            return json_answer(200, {"errcode": 310000,
                                     "errmsg": "sign not match, more: [https://ding-doc]"})
        e["verified"].append("dingtalk_sign")
    if not isinstance(j, dict) or j.get("msgtype") not in ("text", "markdown", "link",
                                                           "actionCard", "feedCard"):
        return json_answer(200, {"errcode": 40035, "errmsg": "缺少参数 json"})
    if a.dingtalk_keyword and a.dingtalk_keyword not in e["body"]:
        return json_answer(200, {"errcode": 310000, "errmsg": "keywords not in content"})
    if st.ding_window.hit(time.time()):
        return json_answer(200, {"errcode": 130101,
                                 "errmsg": "send too fast, exceed 20 times per minute"})
    return json_answer(200, {"errcode": 0, "errmsg": "ok"})


def feishu(st, e):
    a, j = st.args, e["json"]
    if not isinstance(j, dict):
        return json_answer(400, {"code": 9499, "msg": "Bad Request", "data": {}})
    if a.feishu_secret:
        ts, sign = str(j.get("timestamp", "")), j.get("sign", "")
        fresh = ts.isdigit() and abs(time.time() - int(ts)) < HOUR_S
        want = feishu_sign(a.feishu_secret, ts) if ts.isdigit() else ""
        if not fresh or not isinstance(sign, str) or not hmac.compare_digest(sign, want):
            return json_answer(200, {"code": 19021, "data": {},
                                     "msg": "sign match fail or timestamp is not within one "
                                            "hour from current time"})
        e["verified"].append("feishu_sign")
    if j.get("msg_type") not in ("text", "post", "interactive", "share_chat", "image"):
        return json_answer(200, {"code": 9499, "msg": "Bad Request", "data": {}})
    if len(e["body"].encode()) > 20 * 1024:
        return json_answer(200, {"code": 9499, "msg": "request body too large", "data": {}})
    return json_answer(200, {"code": 0, "data": {}, "msg": "success"})


def wecom(st, e):
    a, q, j = st.args, e["query"], e["json"]
    if a.wecom_key and q.get("key") != a.wecom_key:
        return json_answer(200, {"errcode": 93000, "errmsg": "invalid webhook url, hint: [x]"})
    kind = j.get("msgtype") if isinstance(j, dict) else None
    if kind not in ("text", "markdown"):
        return json_answer(200, {"errcode": 40008, "errmsg": "invalid message type"})
    content = (j.get(kind) or {}).get("content", "")
    if not content:
        return json_answer(200, {"errcode": 44004, "errmsg": "empty content"})
    if len(content.encode()) > (2048 if kind == "text" else 4096):
        return json_answer(200, {"errcode": 40058, "errmsg": "content exceed max length"})
    if st.wecom_window.hit(time.time()):
        return json_answer(200, {"errcode": 45009, "errmsg": "api freq out of limit"})
    return json_answer(200, {"errcode": 0, "errmsg": "ok"})


def slack(st, e):
    j = e["json"]
    if not isinstance(j, dict) or not (j.get("text") or j.get("blocks")):
        return 400, {"Content-Type": "text/plain"}, "no_text"
    if len(j.get("blocks") or []) > 50:
        return 400, {"Content-Type": "text/plain"}, "invalid_blocks"
    return 200, {"Content-Type": "text/plain"}, "ok"


def teams(st, e):
    j = e["json"]
    att = (j or {}).get("attachments") if isinstance(j, dict) else None
    if not att or att[0].get("contentType") != "application/vnd.microsoft.card.adaptive":
        return json_answer(400, {"error": {"code": "InvalidRequestContent"}})
    return 202, {}, ""


def pagerduty(st, e):
    a, j = st.args, e["json"]
    bad = lambda *errs: json_answer(400, {"status": "invalid event",
                                          "message": "Event object is invalid",
                                          "errors": list(errs)})
    if not isinstance(j, dict):
        return bad("Invalid JSON")
    if a.pagerduty_key and j.get("routing_key") != a.pagerduty_key:
        return bad("'routing_key' is invalid")
    action, key = j.get("event_action"), j.get("dedup_key")
    if action not in ("trigger", "acknowledge", "resolve"):
        return bad("'event_action' is invalid")
    if key is not None and (not isinstance(key, str) or len(key) > 255):
        return bad("'dedup_key' is invalid")
    if action == "trigger":
        p = j.get("payload") or {}
        missing = [f for f in ("summary", "source", "severity") if not p.get(f)]
        if missing:
            return bad(*[f"'payload.{f}' is missing or blank" for f in missing])
        if p["severity"] not in ("critical", "error", "warning", "info"):
            return bad("'payload.severity' is invalid")
        key = key or uuid.uuid4().hex
    elif not key:
        return bad("'dedup_key' is missing or blank")
    with st.lock:
        st.pagerduty[key] = {"trigger": "triggered", "acknowledge": "acknowledged",
                             "resolve": "resolved"}[action]
    e["verified"].append("pagerduty_event")
    return json_answer(202, {"status": "success", "message": "Event processed",
                             "dedup_key": key})


def opsgenie(st, e):
    a, j = st.args, e["json"]
    if e["headers"].get("authorization", "") != f"GenieKey {a.opsgenie_key}":
        return json_answer(401, {"message": "Could not authenticate", "took": 0.0,
                                 "requestId": str(uuid.uuid4())})
    e["verified"].append("opsgenie_key")
    parts = e["path"].split("/")  # ['', 'opsgenie', 'v2', 'alerts', ALIAS, VERB]
    ok = {"result": "Request will be processed", "took": 0.01, "requestId": str(uuid.uuid4())}
    if len(parts) == 4:
        if not isinstance(j, dict) or not j.get("message") or len(j["message"]) > 130:
            return json_answer(422, {"message": "Request body is not processable. Please check "
                                                "the errors.", "took": 0.0})
        with st.lock:
            st.opsgenie[j.get("alias") or str(uuid.uuid4())] = "open"
        return json_answer(202, ok)
    if len(parts) == 6 and parts[5] in ("close", "acknowledge"):
        if e["query"].get("identifierType") != "alias":
            return json_answer(422, {"message": "identifierType must be alias here"})
        alias = urllib.parse.unquote(parts[4])
        with st.lock:
            st.opsgenie[alias] = "closed" if parts[5] == "close" else "acknowledged"
        return json_answer(202, ok)
    return json_answer(404, {"message": "Not found"})


def parse_twiml(text):
    """The <Response> element of a TwiML document, or None when it is not one."""
    try:
        doc = ET.fromstring(text.encode() if isinstance(text, str) else text)
    except ET.ParseError:
        return None
    return doc if doc.tag == "Response" else None


def twilio_signature(token, url, params):
    """X-Twilio-Signature: base64(HMAC-SHA1(auth token, URL + each POST parameter's name and
    value, sorted by name)); for a GET the parameters are in the URL already."""
    data = url + "".join(k + v for k, v in sorted(params.items()))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def twilio_gather(st, obj):
    """A key pressed on a call: requests the call's <Gather action> as Twilio does."""
    a = st.args
    with st.lock:
        calls = list(st.calls)
    which = obj.get("call", -1)
    call = next((c for c in calls if c["sid"] == which), None) if isinstance(which, str) else (
        calls[which] if calls and -len(calls) <= which < len(calls) else None)
    if call is None:
        return 404, {"error": "no such call"}
    gather = call.get("gather") or {}
    url = obj.get("url") or call.get("gather_action")
    if not url:
        return 409, {"error": "the call has no <Gather action>"}
    method = (obj.get("method") or gather.get("method") or "POST").upper()
    params = {"AccountSid": a.twilio_sid, "ApiVersion": "2010-04-01", "CallSid": call["sid"],
              "CallStatus": "in-progress", "Called": call["to"], "Caller": call["from"] or "",
              "Digits": str(obj.get("digits", "1")), "Direction": "outbound-api",
              "FinishedOnKey": "", "From": call["from"] or "", "To": call["to"],
              "msg": "Gather End"}
    headers = {"User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}
    data = None
    if method == "GET":
        url = url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        headers["X-Twilio-Signature"] = twilio_signature(a.twilio_token, url, {})
    else:
        data = urllib.parse.urlencode(params).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        headers["X-Twilio-Signature"] = twilio_signature(a.twilio_token, url, params)
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, ctype, body = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as err:
        status, ctype, body = err.code, err.headers.get("Content-Type", ""), err.read()
    except OSError as err:
        return 502, {"error": f"cannot reach the Gather action: {err}"}
    doc = parse_twiml(body) if status == 200 else None
    press = {"method": method, "url": url, "digits": params["Digits"], "status": status,
             "content_type": ctype, "body": body.decode("utf-8", "replace"),
             "twiml_ok": doc is not None and "xml" in ctype,
             "say": [s.text or "" for s in doc.iter("Say")] if doc is not None else []}
    with st.lock:
        call.setdefault("presses", []).append(press)
    return 200, press


def twilio(st, e):
    a = st.args
    auth = e["headers"].get("authorization", "")
    want = "Basic " + base64.b64encode(f"{a.twilio_sid}:{a.twilio_token}".encode()).decode()
    m = re.fullmatch(r"/twilio/2010-04-01/Accounts/([^/]+)/Calls\.json", e["path"])
    if not hmac.compare_digest(auth, want) or m is None or m.group(1) != a.twilio_sid:
        return json_answer(401, {"code": 20003, "message": "Authenticate",
                                 "more_info": "https://www.twilio.com/docs/errors/20003",
                                 "status": 401})
    e["verified"].append("twilio_basic_auth")
    f = e["form"] or {}
    to, twiml = f.get("To", ""), f.get("Twiml", "")
    if not re.fullmatch(r"\+[1-9][0-9]{6,14}", to):
        return json_answer(400, {"code": 21211, "status": 400,
                                 "message": f"The 'To' number {to} is not a valid phone number.",
                                 "more_info": "https://www.twilio.com/docs/errors/21211"})
    doc = parse_twiml(twiml)
    if not twiml.lstrip().startswith(("<?xml", "<Response")) or len(twiml) > 4000 or doc is None:
        return json_answer(400, {"code": 21220, "status": 400, "message": "Invalid TwiML"})
    e["verified"].append("twiml")
    gather = doc.find(".//Gather")
    sid = "CA" + uuid.uuid4().hex
    call = {"sid": sid, "to": to, "from": f.get("From"), "twiml": twiml,
            "gather_action": gather.get("action") if gather is not None else None,
            "gather": dict(gather.attrib) if gather is not None else None,
            "say": [s.text or "" for s in doc.iter("Say")], "presses": []}
    with st.lock:
        st.calls.append(call)
    return json_answer(201, {"sid": sid, "status": "queued", "to": to, "from": f.get("From"),
                             "account_sid": a.twilio_sid})


def alertmanager(st, e):
    j = e["json"]
    if not isinstance(j, dict) or j.get("version") != "4" or not isinstance(j.get("alerts"),
                                                                            list):
        return 400, {}, "not an Alertmanager webhook v4 body"
    return 200, {}, ""


PROVIDERS = {"slack": slack, "dingtalk": ding, "feishu": feishu, "wecom": wecom,
             "teams": teams, "pagerduty": pagerduty, "opsgenie": opsgenie, "twilio": twilio,
             "alertmanager": alertmanager}

THROTTLE = {
    "dingtalk": lambda: json_answer(200, {"errcode": 130101,
                                          "errmsg": "send too fast, exceed 20 times per minute"}),
    "feishu": lambda: json_answer(200, {"code": 11232, "msg": "frequency limited", "data": {}}),
    "wecom": lambda: json_answer(200, {"errcode": 45009, "errmsg": "api freq out of limit"}),
    "slack": lambda: (429, {"Retry-After": "1", "Content-Type": "text/plain"}, "rate_limited"),
    "pagerduty": lambda: json_answer(429, {"status": "throttle event",
                                           "message": "Requests for this service are arriving "
                                                      "too quickly."}),
    "opsgenie": lambda: json_answer(429, {"message": "Too many requests"}),
    "twilio": lambda: json_answer(429, {"code": 20429, "message": "Too Many Requests",
                                        "status": 429}),
    "teams": lambda: (429, {"Retry-After": "1"}, ""),
    "alertmanager": lambda: (429, {"Retry-After": "1"}, ""),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-providers/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def answer(self, status, headers, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(n, BODY_MAX)).decode("utf-8", "replace")

    def do_GET(self):
        st = self.server.state
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_requests":
            with st.lock:
                return self.answer(*json_answer(200, {"requests": st.requests}))
        if path == "/_state":
            return self.answer(*json_answer(200, st.snapshot()))
        if path == "/_health":
            return self.answer(*json_answer(200, {"ok": True}))
        return self.answer(404, {}, "")

    def do_POST(self):
        st = self.server.state
        split = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if split.path == "/_mode":
            return self.answer(*json_answer(200, st.set_mode(json.loads(body or "{}"))))
        if split.path == "/_clear":
            st.clear()
            return self.answer(*json_answer(200, {"ok": True}))
        if split.path == "/_twilio/gather":
            return self.answer(*json_answer(*twilio_gather(st, json.loads(body or "{}"))))
        provider = split.path.split("/")[1] if split.path.count("/") >= 1 else ""
        handler = PROVIDERS.get(provider)
        entry = {"provider": provider, "method": "POST", "path": split.path,
                 "query": dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True)),
                 "headers": {k.lower(): v for k, v in self.headers.items()},
                 "body": body, "json": None, "form": None, "verified": [], "time": time.time()}
        try:
            entry["json"] = json.loads(body) if body else None
        except ValueError:
            pass
        if "x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
            entry["form"] = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        mode = st.take_mode(provider)
        if handler is None:
            answer = (404, {}, "no such provider")
        elif mode.get("mode") == "status":
            answer = (int(mode.get("status", 500)), mode.get("headers", {}),
                      mode.get("body", ""))
        elif mode.get("mode") == "throttle":
            answer = THROTTLE[provider]()
        else:
            answer = handler(st, entry)
        entry["answer"] = {"status": answer[0], "body": answer[2]}
        st.record(entry)
        self.answer(*answer)


# ---- SMTP ----

class SmtpHandler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write((line + "\r\n").encode())

    def handle(self):
        st = self.server.state
        self.reply("220 fake-providers ESMTP")
        mail_from, rcpts = None, []
        while True:
            raw = self.rfile.readline(65536)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                if verb == "EHLO":
                    self.wfile.write(b"250-fake-providers\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n")
                else:
                    self.reply("250 fake-providers")
            elif verb == "MAIL":
                mail_from, rcpts = line[10:].strip().strip("<>").split(">")[0], []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                mode = st.take_mode("smtp")
                if mode.get("mode") == "reject":
                    self.reply("550 5.1.1 Recipient address rejected: User unknown")
                elif mode.get("mode") == "throttle":
                    self.reply("451 4.7.1 Try again later")
                else:
                    rcpts.append(line[8:].strip().strip("<>").split(">")[0])
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if not rcpts:
                    self.reply("554 5.5.1 No valid recipients")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                data = []
                while True:
                    raw = self.rfile.readline(1 << 20)
                    if not raw or raw == b".\r\n":
                        break
                    data.append(raw[1:] if raw.startswith(b"..") else raw)
                msg = b"".join(data).decode("utf-8", "replace")
                entry = {"provider": "smtp", "mail_from": mail_from, "rcpt": rcpts,
                         "message": msg, "time": time.time(), "verified": [],
                         "answer": {"status": 250}}
                if "\r\n\r\n" in msg and all(l.endswith(b"\r\n") for l in data):
                    entry["verified"].append("smtp_crlf")
                with st.lock:
                    st.mail.append({"from": mail_from, "rcpt": rcpts, "message": msg})
                st.record(entry)
                self.reply("250 2.0.0 Ok: queued as FAKE")
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


class SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def parse_args(argv):
    p = argparse.ArgumentParser(description="fake alert providers for Breakwater's tests")
    p.add_argument("--log")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--smtp-port", type=int, default=0)
    p.add_argument("--dingtalk-token", default="ding-token")
    p.add_argument("--dingtalk-secret", default="")
    p.add_argument("--dingtalk-keyword", default="")
    p.add_argument("--dingtalk-limit", type=int, default=20)
    p.add_argument("--feishu-secret", default="")
    p.add_argument("--wecom-key", default="")
    p.add_argument("--wecom-limit", type=int, default=20)
    p.add_argument("--pagerduty-key", default="")
    p.add_argument("--opsgenie-key", default="genie-key")
    p.add_argument("--twilio-sid", default="AC00000000000000000000000000000000")
    p.add_argument("--twilio-token", default="twilio-token")
    p.add_argument("--self-test", action="store_true")
    return p.parse_args(argv)


def start(args):
    state = State(args)
    http = HttpServer((args.host, args.port), Handler)
    http.state = state
    smtp = SmtpServer((args.host, args.smtp_port), SmtpHandler)
    smtp.state = state
    for srv in (http, smtp):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    return state, http, smtp


# ---- self-test: the server's checks, driven the way a channel would ----

def self_test():
    args = parse_args(["--dingtalk-secret", "SECd1ng", "--feishu-secret", "fs3cret",
                       "--wecom-key", "wk", "--pagerduty-key", "R" * 32, "--dingtalk-limit", "3"])
    state, http, smtp = start(args)
    base = f"http://127.0.0.1:{http.server_address[1]}"
    failures = []

    def post(path, body, headers=None, form=False):
        data = urllib.parse.urlencode(body).encode() if form else json.dumps(body).encode()
        h = {"Content-Type": "application/x-www-form-urlencoded" if form else "application/json"}
        req = urllib.request.Request(base + path, data=data, headers=dict(h, **(headers or {})))
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def check(name, got, want):
        if got != want:
            failures.append(f"{name}: got {got!r}, want {want!r}")

    md = {"msgtype": "markdown", "markdown": {"title": "t", "text": "Breakwater"}}
    now_ms = int(time.time() * 1000)
    sign = urllib.parse.quote_plus(dingtalk_sign("SECd1ng", now_ms))
    ok = f"/dingtalk/robot/send?access_token=ding-token&timestamp={now_ms}&sign={sign}"
    check("dingtalk signed", post(ok, md), (200, '{"errcode": 0, "errmsg": "ok"}'))
    bad = f"/dingtalk/robot/send?access_token=ding-token&timestamp={now_ms}&sign=AAAA"
    check("dingtalk bad sign", json.loads(post(bad, md)[1])["errcode"], 310000)
    old = now_ms - 2 * HOUR_S * 1000
    stale = (f"/dingtalk/robot/send?access_token=ding-token&timestamp={old}"
             f"&sign={urllib.parse.quote_plus(dingtalk_sign('SECd1ng', old))}")
    check("dingtalk stale", json.loads(post(stale, md)[1])["errcode"], 310000)
    check("dingtalk token", json.loads(post("/dingtalk/robot/send?access_token=x", md)[1])
          ["errcode"], 300001)
    for _ in range(2):
        post(ok, md)
    check("dingtalk throttle", json.loads(post(ok, md)[1])["errcode"], 130101)

    ts = int(time.time())
    card = {"msg_type": "interactive", "card": {}, "timestamp": str(ts),
            "sign": feishu_sign("fs3cret", ts)}
    check("feishu signed", json.loads(post("/feishu/open-apis/bot/v2/hook/x", card)[1])["code"],
          0)
    check("feishu bad sign", json.loads(post("/feishu/open-apis/bot/v2/hook/x",
                                             dict(card, sign="x"))[1])["code"], 19021)
    # DingTalk's order (key=secret, msg=ts\nsecret) must not pass Feishu's check
    swapped = base64.b64encode(hmac.new(b"fs3cret", f"{ts}\nfs3cret".encode(),
                                        hashlib.sha256).digest()).decode()
    check("feishu swapped", json.loads(post("/feishu/open-apis/bot/v2/hook/x",
                                            dict(card, sign=swapped))[1])["code"], 19021)

    wmd = {"msgtype": "markdown", "markdown": {"content": "**x**"}}
    check("wecom ok", json.loads(post("/wecom/cgi-bin/webhook/send?key=wk", wmd)[1])["errcode"],
          0)
    check("wecom key", json.loads(post("/wecom/cgi-bin/webhook/send?key=no", wmd)[1])["errcode"],
          93000)
    check("wecom too long", json.loads(post("/wecom/cgi-bin/webhook/send?key=wk",
                                            {"msgtype": "text", "text": {"content": "x" * 2049}})
                                       [1])["errcode"], 40058)
    check("slack", post("/slack/T/B/X", {"text": "hi"}), (200, "ok"))
    ev = {"routing_key": "R" * 32, "event_action": "trigger", "dedup_key": "k",
          "payload": {"summary": "s", "source": "x", "severity": "critical"}}
    check("pagerduty trigger", post("/pagerduty/v2/enqueue", ev)[0], 202)
    check("pagerduty resolve", post("/pagerduty/v2/enqueue",
                                    {"routing_key": "R" * 32, "event_action": "resolve",
                                     "dedup_key": "k"})[0], 202)
    check("pagerduty state", state.snapshot()["pagerduty"], {"k": "resolved"})
    check("pagerduty invalid", post("/pagerduty/v2/enqueue", dict(ev, payload={}))[0], 400)
    g = {"Authorization": "GenieKey genie-key"}
    check("opsgenie create", post("/opsgenie/v2/alerts", {"message": "m", "alias": "a{b}"},
                                  g)[0], 202)
    check("opsgenie close", post("/opsgenie/v2/alerts/a%7Bb%7D/close?identifierType=alias", {},
                                 g)[0], 202)
    check("opsgenie state", state.snapshot()["opsgenie"], {"a{b}": "closed"})
    check("opsgenie key", post("/opsgenie/v2/alerts", {"message": "m"},
                               {"Authorization": "GenieKey no"})[0], 401)
    basic = "Basic " + base64.b64encode(f"{args.twilio_sid}:{args.twilio_token}".encode()).decode()
    calls = f"/twilio/2010-04-01/Accounts/{args.twilio_sid}/Calls.json"
    twiml = '<Response><Gather action="http://gw/ack/T"><Say>x</Say></Gather></Response>'
    check("twilio call", post(calls, {"To": "+15550001111", "From": "+15550000000",
                                      "Twiml": twiml}, {"Authorization": basic}, form=True)[0],
          201)
    check("twilio gather", state.snapshot()["calls"][0]["gather_action"], "http://gw/ack/T")
    check("twilio say", state.snapshot()["calls"][0]["say"], ["x"])
    pressed = json.loads(post("/_twilio/gather", {"digits": "1", "method": "GET",
                                                  "url": base + "/_health"})[1])
    check("twilio press", (pressed["method"], pressed["status"], pressed["twiml_ok"],
                           "Digits=1" in pressed["url"]), ("GET", 200, False, True))
    check("twilio bad twiml", json.loads(post(calls, {"To": "+15550001111", "Twiml":
                                                      "<Response><Say>x</Response>"},
                                              {"Authorization": basic}, form=True)[1])["code"],
          21220)
    check("twilio auth", json.loads(post(calls, {"To": "+15550001111"},
                                         {"Authorization": "Basic eA=="}, form=True)[1])["code"],
          20003)
    check("twilio to", json.loads(post(calls, {"To": "555", "Twiml": twiml},
                                       {"Authorization": basic}, form=True)[1])["code"], 21211)
    post("/_mode", {"provider": "wecom", "mode": "throttle", "count": 1})
    check("mode throttle", json.loads(post("/wecom/cgi-bin/webhook/send?key=wk", wmd)[1])
          ["errcode"], 45009)
    check("mode back to ok", json.loads(post("/wecom/cgi-bin/webhook/send?key=wk", wmd)[1])
          ["errcode"], 0)

    with socket.create_connection(("127.0.0.1", smtp.server_address[1]), timeout=5) as s:
        f = s.makefile("rwb")
        for cmd in (None, b"EHLO t", b"MAIL FROM:<a@x>", b"RCPT TO:<b@x>", b"DATA",
                    b"Subject: s\r\n\r\n..dot\r\n.", b"QUIT"):
            if cmd is not None:
                f.write(cmd + b"\r\n")
                f.flush()
            while True:
                line = f.readline()
                if not line or line[3:4] != b"-":
                    break
    check("smtp mail", [(m["from"], m["rcpt"], m["message"]) for m in state.snapshot()["mail"]],
          [("a@x", ["b@x"], "Subject: s\r\n\r\n.dot\r\n")])

    http.shutdown()
    smtp.shutdown()
    for f in failures:
        print("FAIL", f)
    print("self-test:", "ok" if not failures else f"{len(failures)} failed")
    return 0 if not failures else 1


def main(argv):
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    _, http, smtp = start(args)
    print(f"PORT {http.server_address[1]}", flush=True)
    print(f"SMTP {smtp.server_address[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    while not stop.wait(0.5):
        pass
    http.shutdown()
    smtp.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
