"""The command line (SPEC section 1): --version, -h, bad flags, `-t` config checking with
`FILE:LINE:COL: message` diagnostics (every problem, exact lines), the ./breakwater.yaml and
embedded-default fallbacks, start-up failures (invalid config, port in use) and a clean SIGTERM /
SIGINT stop of an idle gateway.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from conftest import BINARY, free_port, request, run_breakwater

DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<msg>.+)$")


def diagnostics(stderr, file=None):
    """[(file, line, col, message)] of the FILE:LINE:COL lines in stderr."""
    out = []
    for line in stderr.splitlines():
        m = DIAG.match(line)
        if m and (file is None or m["file"] == file):
            out.append((m["file"], int(m["line"]), int(m["col"]), m["msg"]))
    return out


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def good_config(port=None, admin_port=None, state_dir="./var"):
    port = port or free_port()
    admin_port = admin_port or free_port()
    return f"""\
listen: ["127.0.0.1:{port}"]
workers: 1
shutdown_timeout: 5s
state_dir: {state_dir}
admin:
  listen: "127.0.0.1:{admin_port}"
upstreams:
  users:
    hosts: ["127.0.0.1:9"]
    connect_timeout: 1s
    timeout: 5s
routes:
  - name: users
    match:
      path_prefix: /api/users
    upstream: users
    timeout: 2s
"""


# Four (five) different problems, each on a known line.
BAD_CONFIG = """\
listen: ["127.0.0.1:8080"]
workers: two
shutdown_timeout: 10parsecs
admin:
  listen: "127.0.0.1:9901"
upstreams:
  users:
    hosts: ["127.0.0.1:9001"]
    bogus_key: 1
routes:
  - name: r
    match:
      path_prefix: /api
    upstream: nosuch
    timeout: -5s
"""
BAD_LINES = {2: "workers", 3: "shutdown_timeout", 9: "bogus_key", 14: "nosuch", 15: "timeout"}


# ---- flags -------------------------------------------------------------------------------------


def test_version_prints_the_version_and_exits_0():
    p = run_breakwater("--version")
    assert p.returncode == 0, p.stderr
    assert re.match(r"^breakwater \d+\.\d+\.\d+", p.stdout), p.stdout


def test_h_prints_usage_and_exits_0():
    p = run_breakwater("-h")
    assert p.returncode == 0, p.stderr
    assert "usage" in p.stdout.lower()
    for flag in ("-c", "-t", "--version"):
        assert flag in p.stdout, p.stdout


@pytest.mark.parametrize("args", [["--no-such-flag"], ["-Z"], ["-t", "stray-argument"]])
def test_unknown_flag_or_stray_argument_exits_2_with_usage(args, tmp_path):
    p = run_breakwater(*args, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "usage" in p.stderr.lower()
    assert not os.path.exists(tmp_path / "var")


def test_c_without_a_file_exits_2(tmp_path):
    p = run_breakwater("-c", cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)


# ---- -t ----------------------------------------------------------------------------------------


def test_check_good_config_exits_0_and_starts_nothing(tmp_path):
    path = write(tmp_path / "good.yaml", good_config())
    p = run_breakwater("-t", "-c", path, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert diagnostics(p.stderr) == []
    assert not os.path.exists(tmp_path / "var")


def test_check_bad_config_reports_every_problem_at_its_line_and_exits_1(tmp_path):
    write(tmp_path / "bad.yaml", BAD_CONFIG)
    p = run_breakwater("-t", "-c", "bad.yaml", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    found = diagnostics(p.stderr, "bad.yaml")
    assert found, p.stderr
    # every diagnostic names bad.yaml with a position that exists in the file
    src = BAD_CONFIG.splitlines()
    for _, line, col, _ in found:
        assert 1 <= line <= len(src) and 1 <= col <= len(src[line - 1]) + 1, (line, col)
    by_line = {}
    for _, line, _, msg in found:
        by_line.setdefault(line, []).append(msg)
    for line, word in BAD_LINES.items():
        assert line in by_line, f"no diagnostic for line {line} ({word}):\n{p.stderr}"
        assert any(word in m for m in by_line[line]), (line, by_line[line])
    # one line per problem, no repeats
    assert len(found) == len(set(found)), p.stderr


def test_check_missing_file_says_cannot_read(tmp_path):
    p = run_breakwater("-t", "-c", "nope.yaml", cwd=tmp_path)
    assert p.returncode == 1
    assert re.search(r"^nope\.yaml:0:0: cannot read", p.stderr, re.M), p.stderr


@pytest.mark.parametrize(
    "text,line",
    [
        ('workers: 1\nshutdown_timeout: 5s\nadmin: [1, 2\nstate_dir: /tmp\n', (3, 4)),
        ('workers: 1\nupstreams:\n  u:\n    hosts: ["127.0.0.1:1"]\n   timeout: 5s\n', (5,)),
        ('workers: 1\nstate_dir: "/tmp\nshutdown_timeout: 5s\n', (2, 3, 4)),
    ],
    ids=["unclosed-flow", "bad-indent", "unclosed-quote"],
)
def test_check_yaml_syntax_error_gives_its_position(tmp_path, text, line):
    write(tmp_path / "syntax.yaml", text)
    p = run_breakwater("-t", "-c", "syntax.yaml", cwd=tmp_path)
    assert p.returncode == 1
    found = diagnostics(p.stderr, "syntax.yaml")
    assert found, p.stderr
    assert found[0][1] in line, p.stderr
    assert found[0][2] >= 1
    assert "yaml" in found[0][3].lower() or "syntax" in found[0][3].lower(), p.stderr


def test_check_reports_an_unset_env_var(tmp_path):
    var = "BW_IT_SURELY_UNSET_TOKEN"
    assert var not in os.environ
    text = good_config().replace(
        'admin:\n  listen: "127.0.0.1:', 'admin:\n  token: "${%s}"\n  listen: "127.0.0.1:' % var
    )
    token_line = text.splitlines().index('  token: "${%s}"' % var) + 1
    write(tmp_path / "env.yaml", text)
    p = run_breakwater("-t", "-c", "env.yaml", cwd=tmp_path)
    assert p.returncode == 1
    found = diagnostics(p.stderr, "env.yaml")
    assert any(line == token_line and var in msg for _, line, _, msg in found), p.stderr

    # set, or with a default, it is fine
    assert run_breakwater("-t", "-c", "env.yaml", cwd=tmp_path, env={var: "s3cret"}).returncode == 0
    write(tmp_path / "env2.yaml", text.replace("${%s}" % var, "${%s:-fallback}" % var))
    p = run_breakwater("-t", "-c", "env2.yaml", cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_check_without_c_validates_the_embedded_default(tmp_path):
    p = run_breakwater("-t", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert diagnostics(p.stderr) == []
    assert os.listdir(tmp_path) == []  # nothing written, nothing started


def test_check_without_c_uses_breakwater_yaml_in_the_directory(tmp_path):
    write(tmp_path / "breakwater.yaml", good_config().replace("workers: 1", "workers: lots"))
    p = run_breakwater("-t", cwd=tmp_path)
    assert p.returncode == 1
    found = diagnostics(p.stderr)
    assert found and all(f == "breakwater.yaml" for f, _, _, _ in found), p.stderr
    assert found[0][1] == 2 and "workers" in found[0][3], p.stderr

    write(tmp_path / "breakwater.yaml", good_config())
    assert run_breakwater("-t", cwd=tmp_path).returncode == 0


# ---- running -----------------------------------------------------------------------------------


def listening(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_running_with_an_invalid_config_exits_1_without_starting_anything(tmp_path):
    port = free_port()
    text = good_config(port=port).replace("timeout: 2s", "timeout: soon")
    bad_line = text.splitlines().index("    timeout: soon") + 1
    write(tmp_path / "run.yaml", text)
    p = run_breakwater("-c", "run.yaml", cwd=tmp_path, timeout=20)
    assert p.returncode == 1, p.stderr
    assert any(line == bad_line for _, line, _, _ in diagnostics(p.stderr, "run.yaml")), p.stderr
    assert not os.path.exists(tmp_path / "var"), "state_dir created for an invalid config"
    assert not listening(port)
    assert "breakwater started" not in p.stderr


def test_port_in_use_fails_startup_with_exit_1_and_a_json_log_naming_the_address(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        write(tmp_path / "busy.yaml", good_config(port=port))
        p = run_breakwater("-c", "busy.yaml", cwd=tmp_path, timeout=20)
    assert p.returncode == 1, p.stderr
    records = []
    for line in p.stderr.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    assert records, p.stderr
    for r in records:
        assert {"ts", "level", "msg"} <= r.keys(), r
    errors = [r for r in records if r["level"] == "error" and f"127.0.0.1:{port}" in json.dumps(r)]
    assert errors, p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_on_an_idle_gateway_exits_0_within_seconds(gateway, upstreams, sig):
    up = upstreams()
    g = gateway(
        "upstreams:\n  u:\n    hosts: [\"%s\"]\nroutes:\n  - name: all\n    match:\n"
        "      path_prefix: /\n    upstream: u\n" % up.addr,
        workers=2,
    )
    assert g.get("/").status == 200
    children = set()
    deadline = time.monotonic() + 10
    while len(children) < 3 and time.monotonic() < deadline:  # control + 2 workers
        with open(f"/proc/{g.proc.pid}/task/{g.proc.pid}/children") as f:
            children = {int(c) for c in f.read().split()}
        time.sleep(0.05)
    assert len(children) >= 3, children
    t0 = time.monotonic()
    g.proc.send_signal(sig)
    rc = g.proc.wait(timeout=10)
    elapsed = time.monotonic() - t0
    logs = g.logs()
    assert rc == 0, logs
    assert elapsed < 5, elapsed
    assert "breakwater stopped" in logs
    assert not any(m in logs for m in ("AddressSanitizer", "LeakSanitizer", "runtime error:")), logs
    assert not listening(g.port)
    assert not listening(g.admin_port)
    for pid in children:  # no child left behind
        deadline = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), f"child {pid} still runs after the supervisor exited"


def _gone(pid):
    """The process has exited (it may linger as a zombie until reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
