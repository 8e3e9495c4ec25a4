"""The egress proxy (bot/agent/egress.py), run as Shepherd runs it: real `proxy` and `forward` processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bot.agent import egress
from tests.fakes.http_target import HttpTarget
from tests.fakes.ports import free_port

EGRESS_SCRIPT = Path(egress.__file__)
NOT_LISTED = "is not in the egress allow-list (SHEPHERD_EGRESS / the repository's network.allow)"
ZERO_STATS = {"allowed": 0, "refused": 0, "refused_hosts": {}}


@pytest.fixture
def target():
    server = HttpTarget()
    yield server
    server.close()


def wait_until(check, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _connects(family: int, address) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(address)
        except OSError:
            return False
        return True


class Egress:
    """Starts proxy and forwarder processes in a folder; the fixture kills whatever is left."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[subprocess.Popen] = []
        self.socket = str(folder / "egress.sock")
        self.stats = folder / "stats.json"
        self.proxy_log = folder / "proxy.log"
        self.proxy: subprocess.Popen | None = None

    def spawn(self, *args: str, log: Path) -> subprocess.Popen:
        with open(log, "ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", str(EGRESS_SCRIPT), *args],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.folder,
            )
        self.processes.append(process)
        return process

    def start_proxy(self, *allow: str, extra: tuple[str, ...] = ()) -> subprocess.Popen:
        args = ["proxy", "--socket", self.socket, "--stats", str(self.stats), *extra]
        for pattern in allow:
            args += ["--allow", pattern]
        self.proxy = self.spawn(*args, log=self.proxy_log)
        wait_until(lambda: _connects(socket.AF_UNIX, self.socket) or self.proxy.poll() is not None, what="proxy")
        assert self.proxy.poll() is None, self.proxy_log.read_text()
        return self.proxy

    def start_forwarder(self, *tunnels: str) -> int:
        port = free_port()
        args = ["forward", "--socket", self.socket, "--listen-port", str(port)]
        for tunnel in tunnels:
            args += ["--tunnel", tunnel]
        process = self.spawn(*args, log=self.folder / "forward.log")
        # The proxy port opens after the tunnels; probing a tunnel would make it CONNECT and be counted.
        wait_until(
            lambda: _connects(socket.AF_INET, ("127.0.0.1", port)) or process.poll() is not None, what="forwarder"
        )
        assert process.poll() is None, (self.folder / "forward.log").read_text()
        return port

    def stop_proxy(self) -> dict:
        """SIGTERM the proxy and return the stats it wrote on the way out."""
        assert self.proxy is not None
        self.proxy.send_signal(signal.SIGTERM)
        assert self.proxy.wait(timeout=10) == 0, self.proxy_log.read_text()
        return json.loads(self.stats.read_text())

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def egress_env(tmp_path: Path):
    folder = tmp_path / "eg"
    folder.mkdir()
    running = Egress(folder)
    yield running
    running.kill_all()


def recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def recv_head(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def connect_request(host_port: str) -> bytes:
    return f"CONNECT {host_port} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode()


def proxied_get(forward_port: int, url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{forward_port}"}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(autouse=True)
def _no_proxy_bypass(monkeypatch):
    # urllib would skip the proxy for hosts in the runner's no_proxy, and the tests would pass without it.
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------------------------
# End to end, through real processes.


def test_get_through_forwarder(egress_env, target):
    egress_env.start_proxy(f"127.0.0.1:{target.port}")
    forward = egress_env.start_forwarder()

    status, body = proxied_get(forward, f"http://127.0.0.1:{target.port}/hello?x=1")

    assert (status, body) == (200, b"hello from target /hello?x=1")
    assert target.requests[0]["line"] == "GET /hello?x=1 HTTP/1.1"
    assert target.requests[0]["headers"]["Connection"] == "close"
    assert egress_env.stop_proxy() == {"allowed": 1, "refused": 0, "refused_hosts": {}}


def test_post_body_is_forwarded(egress_env, target):
    egress_env.start_proxy(f"127.0.0.1:{target.port}")
    with unix(egress_env.socket) as sock:
        sock.sendall(
            f"POST http://127.0.0.1:{target.port}/echo HTTP/1.1\r\nHost: elsewhere\r\n"
            f"Proxy-Connection: keep-alive\r\nContent-Length: 11\r\n\r\nhello world".encode()
        )
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.0 200")
    assert response.endswith(b"\r\n\r\necho hello world")
    headers = target.requests[0]["headers"]
    assert headers["Host"] == f"127.0.0.1:{target.port}"
    assert "Proxy-Connection" not in headers


def test_connect_tunnel_through_forwarder(egress_env, target):
    egress_env.start_proxy(f"127.0.0.1:{target.port}")
    forward = egress_env.start_forwarder()
    with tcp(forward) as sock:
        sock.sendall(connect_request(f"127.0.0.1:{target.port}"))
        assert recv_head(sock) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        sock.sendall(b"GET /tunnelled HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.0 200")
    assert response.endswith(b"hello from target /tunnelled")


def test_tunnel_mode_is_a_plain_local_port(egress_env, target):
    egress_env.start_proxy(f"127.0.0.1:{target.port}")
    local, refused_local = free_port(), free_port()
    unlisted = free_port()
    egress_env.start_forwarder(f"{local}:127.0.0.1:{target.port}", f"{refused_local}:127.0.0.1:{unlisted}")

    with urllib.request.urlopen(f"http://127.0.0.1:{local}/v1/messages", timeout=10) as response:
        assert response.read() == b"hello from target /v1/messages"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{refused_local}/", timeout=10)
    assert refused.value.code == 403
    assert f"127.0.0.1:{unlisted} {NOT_LISTED}" in refused.value.read().decode()

    stats = egress_env.stop_proxy()
    assert stats == {"allowed": 1, "refused": 1, "refused_hosts": {f"127.0.0.1:{unlisted}": 1}}


def test_unlisted_host_refused_and_counted(egress_env, target):
    egress_env.start_proxy("example.org")
    forward = egress_env.start_forwarder()
    wait_until(lambda: egress_env.stats.exists(), what="stats at start")
    assert egress.read_stats(egress_env.stats) == ZERO_STATS

    status, body = proxied_get(forward, f"http://127.0.0.1:{target.port}/secret")

    assert status == 403
    assert body.decode() == f"Egress refused: 127.0.0.1:{target.port} {NOT_LISTED}.\n"
    assert target.requests == []
    # Written within a second or so, without waiting for the proxy to stop.
    expected = {"allowed": 0, "refused": 1, "refused_hosts": {f"127.0.0.1:{target.port}": 1}}
    wait_until(lambda: egress.read_stats(egress_env.stats) == expected, timeout=5, what="stats update")
    assert egress_env.stop_proxy() == expected
    log_lines = egress_env.proxy_log.read_text().splitlines()
    assert len(log_lines) == 1
    assert f"refused 127.0.0.1:{target.port}" in log_lines[0]


def test_no_rules_refuse_everything(egress_env, target):
    egress_env.start_proxy()
    with unix(egress_env.socket) as sock:
        sock.sendall(connect_request(f"127.0.0.1:{target.port}"))
        assert recv_all(sock).startswith(b"HTTP/1.1 403 Forbidden\r\n")


def test_star_does_not_reach_loopback(egress_env, target):
    egress_env.start_proxy("*")
    for host in ("127.0.0.1", "localhost", "[::1]", "127.1"):
        with unix(egress_env.socket) as sock:
            sock.sendall(connect_request(f"{host}:{target.port}"))
            response = recv_all(sock).decode()
        assert response.startswith("HTTP/1.1 403 Forbidden\r\n"), host
        assert "its internal address" in response
    assert target.requests == []
    assert egress_env.stop_proxy()["refused"] == 4


def test_exact_localhost_entry_reaches_only_that_port(egress_env, target):
    other = free_port()
    egress_env.start_proxy("*", f"localhost:{target.port}")
    with unix(egress_env.socket) as sock:
        sock.sendall(connect_request(f"LOCALHOST.:{target.port}"))
        assert recv_head(sock) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        sock.sendall(b"GET /local HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert recv_all(sock).endswith(b"hello from target /local")
    with unix(egress_env.socket) as sock:
        sock.sendall(connect_request(f"localhost:{other}"))
        assert recv_all(sock).startswith(b"HTTP/1.1 403 Forbidden\r\n")
    # The exact entry names localhost, not the address it resolves to.
    with unix(egress_env.socket) as sock:
        sock.sendall(connect_request(f"127.0.0.1:{target.port}"))
        assert recv_all(sock).startswith(b"HTTP/1.1 403 Forbidden\r\n")
    stats = egress_env.stop_proxy()
    assert stats == {
        "allowed": 1,
        "refused": 2,
        "refused_hosts": {f"localhost:{other}": 1, f"127.0.0.1:{target.port}": 1},
    }


@pytest.mark.parametrize(
    "head",
    [
        b"GET /origin-form HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET https://127.0.0.1/ HTTP/1.1\r\n\r\n",
        b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n",
        b"GET http://user:pw@127.0.0.1/ HTTP/1.1\r\n\r\n",
        b"GET http://127.0.0.1/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"NONSENSE\r\n\r\n",
    ],
)
def test_anything_else_is_a_bad_request(egress_env, head):
    egress_env.start_proxy("*", "127.0.0.1")
    with unix(egress_env.socket) as sock:
        sock.sendall(head)
        assert recv_all(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert egress_env.stop_proxy() == ZERO_STATS


def test_oversized_head_is_refused_and_proxy_keeps_serving(egress_env, target):
    egress_env.start_proxy(f"127.0.0.1:{target.port}")
    forward = egress_env.start_forwarder()
    with tcp(forward) as sock:
        head = f"GET http://127.0.0.1:{target.port}/ HTTP/1.1\r\nX-Big: {'a' * 70 * 1024}\r\n\r\n".encode()
        sock.sendall(head)
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"over 65536 bytes" in response
    assert target.requests == []

    assert proxied_get(forward, f"http://127.0.0.1:{target.port}/after") == (200, b"hello from target /after")


def test_silent_client_is_cut_after_head_timeout(egress_env):
    egress_env.start_proxy("*", extra=("--head-timeout", "0.5"))
    with unix(egress_env.socket) as sock:
        started = time.monotonic()
        response = recv_all(sock)
        elapsed = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert 0.4 <= elapsed < 5


def test_socket_path_that_is_a_symlink_is_refused(egress_env, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    os.symlink(victim, egress_env.socket)
    process = egress_env.spawn(
        "proxy", "--socket", egress_env.socket, "--stats", str(egress_env.stats), log=egress_env.proxy_log
    )
    assert process.wait(timeout=10) == 1
    assert "symbolic link" in egress_env.proxy_log.read_text()
    assert victim.read_text() == "keep me"
    assert os.path.islink(egress_env.socket)


def test_stale_socket_is_replaced_and_mode_is_private(egress_env, target):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(egress_env.socket)
    stale.close()
    egress_env.start_proxy(f"127.0.0.1:{target.port}")
    assert os.stat(egress_env.socket).st_mode & 0o777 == 0o600


def test_forwarder_waits_for_a_late_proxy(egress_env, target):
    forward = egress_env.start_forwarder()
    with tcp(forward) as sock:
        sock.sendall(connect_request(f"127.0.0.1:{target.port}"))
        time.sleep(0.5)
        egress_env.start_proxy(f"127.0.0.1:{target.port}")
        assert recv_head(sock) == b"HTTP/1.1 200 Connection established\r\n\r\n"


def test_bad_allow_pattern_is_a_usage_error(egress_env):
    process = egress_env.spawn(
        "proxy", "--socket", egress_env.socket, "--stats", str(egress_env.stats), "--allow", "::1",
        log=egress_env.proxy_log,
    )
    assert process.wait(timeout=10) == 2
    assert "in brackets" in egress_env.proxy_log.read_text()


# ---------------------------------------------------------------------------------------------
# The pure parts.


def test_wildcard_subdomains():
    rules = egress.parse_allow(["*.example.com"])
    assert egress.host_matches(rules, "a.example.com", 443)
    assert egress.host_matches(rules, "A.B.Example.COM.", 80)
    assert not egress.host_matches(rules, "example.com", 443)
    assert not egress.host_matches(rules, "badexample.com", 443)
    assert not egress.host_matches(rules, "example.com.evil.net", 443)


def test_port_rules():
    rules = egress.parse_allow(["registry.npmjs.org:443", "pypi.org", "*.example.com:8443", "[::1]:8080"])
    assert egress.host_matches(rules, "registry.npmjs.org", 443)
    assert not egress.host_matches(rules, "registry.npmjs.org", 80)
    assert egress.host_matches(rules, "pypi.org", 1234)
    assert egress.host_matches(rules, "x.example.com", 8443)
    assert not egress.host_matches(rules, "x.example.com", 443)
    assert egress.host_matches(rules, "::1", 8080)
    assert egress.host_matches(rules, "[0:0:0:0:0:0:0:1]", 8080)
    assert not egress.host_matches(rules, "::1", 8081)
    assert egress.host_matches(egress.parse_allow(["*:443"]), "anything.net", 443)
    assert not egress.host_matches(egress.parse_allow(["*:443"]), "anything.net", 80)
    assert not egress.host_matches((), "pypi.org", 443)


@pytest.mark.parametrize("pattern", ["", "::1", "host:0", "host:99999", "host:abc", "a b", "[::1", "exa/mple.com"])
def test_bad_patterns(pattern):
    with pytest.raises(ValueError):
        egress.parse_allow([pattern])


def test_decide_public_and_internal_addresses():
    star = egress.parse_allow(["*"])
    assert egress.decide(star, "example.com", 443, ["93.184.216.34"]) == (True, egress.REASON_LISTED)
    for address in ("10.0.0.1", "169.254.169.254", "::1", "127.0.0.1", "192.168.1.1", "100.100.100.200",
                    "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1", "fe80::1%eth0", "not-an-ip"):
        allowed, reason = egress.decide(star, "example.com", 443, [address])
        assert not allowed, address
        assert address in reason
    # One internal address among public ones is enough to refuse: the connection could land on any.
    assert not egress.decide(star, "example.com", 443, ["93.184.216.34", "10.0.0.1"])[0]
    assert egress.decide(star, "example.com", 443, []) == (False, egress.REASON_UNRESOLVED)


def test_decide_internal_needs_exact_host_and_port():
    rules = egress.parse_allow(["*", "127.0.0.1:8123", "localhost", "*.internal.test:9000"])
    assert egress.decide(rules, "127.0.0.1", 8123, ["127.0.0.1"]) == (True, egress.REASON_EXACT_INTERNAL)
    assert not egress.decide(rules, "127.0.0.1", 8124, ["127.0.0.1"])[0]
    assert not egress.decide(rules, "localhost", 8123, ["127.0.0.1"])[0]
    assert not egress.decide(rules, "db.internal.test", 9000, ["10.1.2.3"])[0]
    assert egress.decide(egress.parse_allow(["example.com"]), "other.com", 443, ["93.184.216.34"]) == (
        False,
        egress.REASON_NOT_LISTED,
    )


def test_parse_request_head():
    request = egress.parse_request_head(b"CONNECT [::1]:8080 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (request.method, request.host, request.port, request.target) == ("CONNECT", "::1", 8080, "[::1]:8080")
    request = egress.parse_request_head(b"GET http://Example.com./a/b?c=d#frag HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert (request.host, request.port, request.origin_target) == ("example.com", 80, "/a/b?c=d")
    assert request.headers == (("Accept", "*/*"),)
    head = egress.origin_request_head(
        egress.parse_request_head(
            b"GET http://example.com:8080 HTTP/1.1\r\nHost: evil\r\nConnection: keep-alive, X-Hop\r\n"
            b"X-Hop: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    )
    assert head == (
        b"GET / HTTP/1.1\r\nHost: example.com:8080\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with pytest.raises(egress.RequestError):
        egress.parse_request_head(b"CONNECT " + b"a" * 300 + b".com:443 HTTP/1.1\r\n\r\n")


# ---------------------------------------------------------------------------------------------
# For Shepherd's own process.


def test_read_stats_valid(tmp_path):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"allowed": 3, "refused": 2, "refused_hosts": {"evil.com:443": 2}}))
    assert egress.read_stats(path) == {"allowed": 3, "refused": 2, "refused_hosts": {"evil.com:443": 2}}
    path.write_text(json.dumps({"allowed": True, "refused": 0, "refused_hosts": {}}))
    assert egress.read_stats(path) == ZERO_STATS
    assert egress.read_stats(tmp_path / "missing.json") == ZERO_STATS


@pytest.mark.timeout(10)
def test_read_stats_refuses_symlink_fifo_and_huge_file(tmp_path):
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"allowed": 5, "refused": 1, "refused_hosts": {}}))
    assert egress.read_stats(real)["allowed"] == 5
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert egress.read_stats(link) == ZERO_STATS

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert egress.read_stats(fifo) == ZERO_STATS

    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"allowed": 7, "refused": 0, "refused_hosts": {}}) + " " * (2 * 1024 * 1024))
    assert egress.read_stats(huge) == ZERO_STATS
    assert egress.read_stats(huge, limit=4 * 1024 * 1024)["allowed"] == 7


def test_proxy_environment():
    assert egress.proxy_environment() == {
        "HTTP_PROXY": "http://127.0.0.1:3128",
        "HTTPS_PROXY": "http://127.0.0.1:3128",
        "http_proxy": "http://127.0.0.1:3128",
        "https_proxy": "http://127.0.0.1:3128",
        "ALL_PROXY": "http://127.0.0.1:3128",
        "NO_PROXY": "",
        "no_proxy": "",
    }
    assert egress.proxy_environment(4000)["HTTPS_PROXY"] == "http://127.0.0.1:4000"


def test_model_endpoints():
    assert egress.model_endpoints({}, None) == ["api.anthropic.com:443", "api.openai.com:443"]
    env = {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8123/v1", "OPENAI_BASE_URL": "https://Gateway.Example.com"}
    assert egress.model_endpoints(env, None) == ["127.0.0.1:8123", "gateway.example.com:443"]
    codex = '[model_providers.local]\nname = "local"\nbase_url = "http://[::1]:11434/v1"\n'
    assert egress.model_endpoints({}, codex) == ["api.anthropic.com:443", "[::1]:11434"]
    assert egress.model_endpoints({"ANTHROPIC_BASE_URL": "not a url"}, "not = [toml") == [
        "api.anthropic.com:443",
        "api.openai.com:443",
    ]


def test_counts_are_the_sessions_and_each_connection_is_written_at_once(egress_env, target):
    # Each turn starts its own proxy, and the proxy dies with its turn (SIGKILL, no goodbye): the
    # counts carry on from the last turn's and a connection is on disk as soon as it is let through.
    egress_env.stats.write_text(json.dumps({"allowed": 2, "refused": 1, "refused_hosts": {"a.example:443": 1}}))
    egress_env.start_proxy(f"127.0.0.1:{target.port}")
    forward = egress_env.start_forwarder()
    status, _ = proxied_get(forward, f"http://127.0.0.1:{target.port}/hello")
    assert status == 200
    egress_env.proxy.kill()
    egress_env.proxy.wait(timeout=10)
    assert egress.read_stats(egress_env.stats) == {"allowed": 3, "refused": 1, "refused_hosts": {"a.example:443": 1}}
