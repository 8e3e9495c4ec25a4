"""Shepherd's egress proxy (SPEC §4.1 Network): the only road from an agent's sandbox to the network.

This file is self-contained and uses the standard library only, because it runs as a script by path
(``python -I egress.py <subcommand>``) in two places and must never import ``bot``:

* ``proxy`` runs outside the sandbox, as its own process in the turn's process group, so a turn's
  network keeps working while Shepherd restarts. It listens on a Unix socket (mode 0600) and speaks
  HTTP proxy: ``CONNECT host:port`` tunnels and absolute-form plain HTTP requests. Each request is
  checked against the allow rules (``--allow``) by name first, so an unlisted name is never even
  resolved; the name is then resolved once and, when any of its addresses is internal (loopback,
  private, link-local, ...), only an allow rule naming exactly that ``host:port`` lets it through.
  The connection goes to the very address that was checked, so DNS rebinding gains nothing.
  Refusals get a 403, one line on stderr and a count in the ``--stats`` JSON file.
* ``forward`` runs inside the sandbox, whose network namespace has only loopback. It listens on
  ``127.0.0.1:3128`` and pipes every connection to the proxy's Unix socket (bound into the sandbox),
  so ``HTTPS_PROXY=http://127.0.0.1:3128`` works. ``--tunnel LPORT:HOST:RPORT`` listens on another
  loopback port and opens a ``CONNECT HOST:RPORT`` tunnel for each connection, for tools that talk to
  a loopback model endpoint directly instead of through a proxy.

Shepherd itself imports ``read_stats``, ``proxy_environment`` and ``model_endpoints`` from here.
Exit codes: 0 after a clean stop, 2 bad usage, 1 the proxy or forwarder could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

DEFAULT_LISTEN_PORT = 3128
HEAD_LIMIT_BYTES = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0
MAX_CLIENTS = 256
CONNECT_TIMEOUT_SECONDS = 15.0
IDLE_TIMEOUT_SECONDS = 600.0
# The forwarder waits for the proxy's answer to its CONNECT, which may itself take a full connect timeout.
TUNNEL_ANSWER_TIMEOUT_SECONDS = CONNECT_TIMEOUT_SECONDS + HEAD_TIMEOUT_SECONDS
SOCKET_WAIT_SECONDS = 5.0
SOCKET_RETRY_SECONDS = 0.05
STATS_INTERVAL_SECONDS = 0.2
STATS_MAX_HOSTS = 50
STATS_READ_LIMIT = 64 * 1024
RELAY_CHUNK_BYTES = 64 * 1024
CLOSE_WAIT_SECONDS = 5.0
# After an error answer the client may still be sending; reading a little more before closing keeps
# the kernel from resetting the connection and destroying the answer before the client reads it.
DRAIN_LIMIT_BYTES = 1024 * 1024
DRAIN_SECONDS = 1.0
MAX_HOST_LENGTH = 253
HTTP_DEFAULT_PORT = 80
SCHEME_PORTS = {"http": 80, "https": 443}
ANTHROPIC_DEFAULT_ENDPOINT = "api.anthropic.com:443"
OPENAI_DEFAULT_ENDPOINT = "api.openai.com:443"
ANTHROPIC_URL_VARIABLE = "ANTHROPIC_BASE_URL"
OPENAI_URL_VARIABLE = "OPENAI_BASE_URL"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")

ALLOW_LIST_NAME = "the egress allow-list (SHEPHERD_EGRESS / the repository's network.allow)"
REASON_NOT_LISTED = f"not in {ALLOW_LIST_NAME}"
REASON_INTERNAL = (
    f"not in {ALLOW_LIST_NAME} as that exact host:port, which its internal address {{address}} needs"
)
REASON_UNRESOLVED = "it has no address"
REASON_LISTED = "allowed by the allow-list"
REASON_EXACT_INTERNAL = "internal address allowed by an exact host:port entry"
REASON_NO_ADDRESS = "no address to connect to"
REASON_TIMED_OUT = "timed out"
REASON_NO_ANSWER = "no answer"

BODY_REFUSED = "Egress refused: {target} is {reason}.\n"
BODY_UNRESOLVED = "Egress failed: {target} does not resolve.\n"
BODY_UNREACHABLE = "Egress failed: cannot connect to {target}: {reason}\n"
BODY_CONNECT_TIMEOUT = "Egress failed: {target} did not accept a connection within {seconds:g} seconds.\n"
BODY_BAD_REQUEST = "Bad request: {reason}\n"
BODY_HEAD_TOO_LARGE = f"Bad request: the request head is over {HEAD_LIMIT_BYTES} bytes.\n"
BODY_HEAD_TIMEOUT = "Request timeout: the request head did not arrive in time.\n"

STATUS_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
STATUS_BAD_REQUEST = "400 Bad Request"
STATUS_FORBIDDEN = "403 Forbidden"
STATUS_TIMEOUT = "408 Request Timeout"
STATUS_BAD_GATEWAY = "502 Bad Gateway"
STATUS_GATEWAY_TIMEOUT = "504 Gateway Timeout"

LOG_PREFIX = "shepherd-egress: "
LOG_REFUSED = "refused {target}: {reason}"
LOG_UNREACHABLE = "cannot connect to {target}: {reason}"
LOG_UNRESOLVED = "cannot resolve {target}: {reason}"
LOG_CLIENT_ERROR = "connection failed: {reason}"
LOG_STATS_FAILED = "cannot write the stats file {path}: {reason}"
LOG_SOCKET_UNAVAILABLE = "the proxy socket {path} is not reachable: {reason}"
LOG_TUNNEL_REFUSED = "the proxy refused the tunnel to {target}: {status}"

ERROR_SOCKET_SYMLINK = "refusing to use {path}: it is a symbolic link"
ERROR_SOCKET_OCCUPIED = "refusing to use {path}: something other than a socket is there"
ERROR_START = "cannot start: {reason}"
ERROR_RULE_EMPTY = "an empty allow pattern"
ERROR_RULE_HOST = "{pattern!r} is not a valid host[:port] pattern"
ERROR_RULE_IPV6 = "{pattern!r}: write an IPv6 address in brackets, e.g. [::1]:8080"
ERROR_PORT = "{port!r} is not a port number (1-65535)"
ERROR_TUNNEL = "{spec!r} is not LPORT:HOST:RPORT"
ERROR_SECONDS = "{text!r} is not a positive number of seconds"
ERROR_REQUEST_LINE = "the request line is not METHOD TARGET HTTP/1.x"
ERROR_HEADER = "a malformed header line"
ERROR_NOT_PROXY_FORM = "only CONNECT host:port and absolute http:// URLs are proxied"
ERROR_USERINFO = "credentials in the URL are not proxied"
ERROR_AUTHORITY = "{authority!r} is not a valid host[:port]"

_HOSTNAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A NAT64 address carries an IPv4 address in its last 32 bits, which may be an internal one.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Connection-level headers meant for the proxy; the server gets the request without them.
_PROXY_ONLY_HEADERS = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authorization"})
# Never dropped even when a client lists them in Connection: they frame the body that is relayed raw.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


class RequestError(ValueError):
    """A request head the proxy answers with 400; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """One allow pattern: ``any`` public host, any subdomain of ``host`` (``suffix``), or ``exact``."""

    kind: str
    host: str
    port: int | None
    pattern: str


@dataclasses.dataclass(frozen=True)
class Request:
    """A parsed proxy request head. ``origin_target`` is empty for CONNECT."""

    method: str
    version: str
    headers: tuple[tuple[str, str], ...]
    host: str
    port: int
    origin_target: str

    @property
    def is_connect(self) -> bool:
        return self.method == "CONNECT"

    @property
    def target(self) -> str:
        return format_target(self.host, self.port)


# ---------------------------------------------------------------------------------------------
# Pure parts: rules, decisions, request heads.


def normalize_host(host: str) -> str:
    """Case folded, one trailing dot dropped, brackets dropped and IPv6 in its compressed form."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith("."):
        host = host[:-1]
    if ":" in host:
        with contextlib.suppress(ValueError):
            return ipaddress.IPv6Address(host).compressed
    return host


def format_target(host: str, port: int) -> str:
    """``host:port`` with an IPv6 host in brackets, as the stats file and messages show it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(ERROR_PORT.format(port=text))
    return int(text)


def _valid_hostname(host: str) -> bool:
    return 0 < len(host) <= MAX_HOST_LENGTH and _HOSTNAME.fullmatch(host) is not None


def _split_authority(text: str) -> tuple[str, str | None]:
    """``host`` and the port text (or None) of ``host[:port]`` / ``[v6][:port]``; raises ValueError."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(text)
        host, remainder = text[1:end], text[end + 1 :]
        ipaddress.IPv6Address(host)  # zone ids (%eth0) are refused here too
        if not remainder:
            return host, None
        if not remainder.startswith(":"):
            raise ValueError(text)
        return host, remainder[1:]
    host, colon, port = text.rpartition(":")
    if not colon:
        return text, None
    if ":" in host:
        raise ValueError(text)
    return host, port


def parse_allow(patterns: Iterable[str]) -> tuple[Rule, ...]:
    """Allow rules from ``host``, ``host:port``, ``*.domain[:port]``, ``[v6][:port]`` and ``*[:port]``.

    Raises ValueError naming the first bad pattern. No pattern at all means nothing is allowed.
    """
    rules = []
    for raw in patterns:
        pattern = raw.strip()
        if not pattern:
            raise ValueError(ERROR_RULE_EMPTY)
        if not pattern.startswith("[") and pattern.count(":") > 1:
            raise ValueError(ERROR_RULE_IPV6.format(pattern=pattern))
        try:
            host_text, port_text = _split_authority(pattern)
        except ValueError:
            raise ValueError(ERROR_RULE_HOST.format(pattern=pattern)) from None
        port = None if port_text is None else _parse_port(port_text)
        host = normalize_host(host_text)
        if host == "*":
            rules.append(Rule("any", "", port, pattern))
            continue
        kind = "exact"
        if host.startswith("*."):
            kind, host = "suffix", host[2:]
        if ":" not in host and not _valid_hostname(host):
            raise ValueError(ERROR_RULE_HOST.format(pattern=pattern))
        rules.append(Rule(kind, host, port, pattern))
    return tuple(rules)


def host_matches(rules: Iterable[Rule], host: str, port: int) -> bool:
    """Whether any rule names this host and port (addresses are ``decide``'s business)."""
    host = normalize_host(host)
    for rule in rules:
        if rule.port is not None and rule.port != port:
            continue
        if rule.kind == "any":
            return True
        if rule.kind == "exact" and host == rule.host:
            return True
        if rule.kind == "suffix" and host.endswith("." + rule.host):
            return True
    return False


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_internal_address(text: str) -> bool:
    """Loopback, private, link-local, multicast, reserved, unspecified or otherwise not global.

    Anything unparsable counts as internal: when in doubt, the stricter rule applies.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return True
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
    return any(
        item.is_loopback
        or item.is_private
        or item.is_link_local
        or item.is_multicast
        or item.is_reserved
        or item.is_unspecified
        # Shared address space (100.64.0.0/10) is none of the above yet holds some clouds' metadata services.
        or not item.is_global
        for item in candidates
    )


def decide(rules: Sequence[Rule], host: str, port: int, addresses: Iterable[str]) -> tuple[bool, str]:
    """Whether ``host:port``, resolved to ``addresses``, may be reached, and why (for logs and bodies)."""
    host = normalize_host(host)
    if not host_matches(rules, host, port):
        return False, REASON_NOT_LISTED
    addresses = list(addresses)
    if not addresses:
        return False, REASON_UNRESOLVED
    internal = [address for address in addresses if is_internal_address(address)]
    if not internal:
        return True, REASON_LISTED
    exact = any(rule.kind == "exact" and rule.host == host and rule.port == port for rule in rules)
    if exact:
        return True, REASON_EXACT_INTERNAL
    return False, REASON_INTERNAL.format(address=internal[0])


def _parse_target_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    try:
        host_text, port_text = _split_authority(authority)
        if port_text is None:
            if default_port is None:
                raise ValueError(authority)
            port = default_port
        else:
            port = _parse_port(port_text)
    except ValueError:
        raise RequestError(ERROR_AUTHORITY.format(authority=authority)) from None
    host = normalize_host(host_text)
    if ":" not in host and not _valid_hostname(host):
        raise RequestError(ERROR_AUTHORITY.format(authority=authority))
    return host, port


def parse_request_head(head: bytes) -> Request:
    """Parse a proxy request head (the bytes up to and including the blank line); raises RequestError."""
    text = head.decode("latin-1")
    if text.endswith("\r\n\r\n"):
        text = text[:-4]
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise RequestError(ERROR_REQUEST_LINE)
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # A folded continuation line (leading whitespace) is obsolete and a classic smuggling device.
        if not colon or not _TOKEN.fullmatch(name):
            raise RequestError(ERROR_HEADER)
        headers.append((name, value.strip(" \t")))
    if method == "CONNECT":
        host, port = _parse_target_authority(target, None)
        return Request(method, version, tuple(headers), host, port, "")
    if not target[:7].lower() == "http://":
        raise RequestError(ERROR_NOT_PROXY_FORM)
    try:
        url = urlsplit(target)
    except ValueError:
        raise RequestError(ERROR_AUTHORITY.format(authority=target)) from None
    if "@" in url.netloc:
        raise RequestError(ERROR_USERINFO)
    host, port = _parse_target_authority(url.netloc, HTTP_DEFAULT_PORT)
    origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return Request(method, version, tuple(headers), host, port, origin)


def origin_request_head(request: Request) -> bytes:
    """The head sent to the server: origin-form target, Host from the URL, ``Connection: close``.

    Closing after one response keeps the proxy from having to frame responses, and means a client
    cannot send a second request for another host down a connection already checked for this one.
    """
    named_by_connection = {
        token.strip().lower()
        for name, value in request.headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    # Host is dropped too: it is rewritten from the URL, the one thing the allow-list checked.
    dropped = ((_PROXY_ONLY_HEADERS | named_by_connection) - _FRAMING_HEADERS) | {"host"}
    host = f"[{request.host}]" if ":" in request.host else request.host
    authority = host if request.port == HTTP_DEFAULT_PORT else f"{host}:{request.port}"
    lines = [f"{request.method} {request.origin_target} {request.version}", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in request.headers if name.lower() not in dropped]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_response(status: str, body: str) -> bytes:
    payload = body.encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + payload


# ---------------------------------------------------------------------------------------------
# For Shepherd's own process.


def _zero_stats() -> dict:
    return {"allowed": 0, "refused": 0, "refused_hosts": {}}


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_stats(path: str | os.PathLike[str], limit: int = STATS_READ_LIMIT) -> dict:
    """The proxy's stats file, or zeros if it is missing, odd or malformed.

    The folder is writable by the agent's uid, so the file may have been swapped for a symlink, a
    FIFO (a plain open would block) or something huge; none of those is followed, waited on or read whole.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return _zero_stats()
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return _zero_stats()
        chunks, remaining = [], limit
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = json.loads(b"".join(chunks))
    except (OSError, ValueError):
        return _zero_stats()
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        return _zero_stats()
    allowed, refused, hosts = data.get("allowed"), data.get("refused"), data.get("refused_hosts")
    if not (_count(allowed) and _count(refused) and isinstance(hosts, dict) and len(hosts) <= STATS_MAX_HOSTS):
        return _zero_stats()
    if not all(isinstance(key, str) and _count(value) for key, value in hosts.items()):
        return _zero_stats()
    return {"allowed": allowed, "refused": refused, "refused_hosts": dict(hosts)}


def proxy_environment(port: int = DEFAULT_LISTEN_PORT) -> dict[str, str]:
    """Variables that point HTTP clients in the sandbox at the forwarder; no host bypasses it."""
    url = f"http://127.0.0.1:{port}"
    environment = {name: url for name in PROXY_VARIABLES}
    environment.update({name: "" for name in NO_PROXY_VARIABLES})
    return environment


def _endpoint(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_PORTS or not parts.hostname:
        return None
    return format_target(normalize_host(parts.hostname), port or SCHEME_PORTS[scheme])


def _codex_base_urls(config_text: str | None) -> list[str]:
    if not config_text:
        return []
    import tomllib

    try:
        config = tomllib.loads(config_text)
    except (tomllib.TOMLDecodeError, ValueError):
        return []
    urls = []
    for key in ("base_url", "openai_base_url"):
        if isinstance(config.get(key), str):
            urls.append(config[key])
    providers = config.get("model_providers")
    if isinstance(providers, dict):
        for provider in providers.values():
            if isinstance(provider, dict) and isinstance(provider.get("base_url"), str):
                urls.append(provider["base_url"])
    return urls


def model_endpoints(env: Mapping[str, str], codex_config_text: str | None) -> list[str]:
    """``host:port`` of the agents' model endpoints, each vendor's default when it configures none.

    Per vendor rather than overall: an operator's OPENAI_BASE_URL must not cut Claude Code off its
    default endpoint. Loopback endpoints come back as they are; the proxy allows them exactly.
    """
    endpoints: list[str] = []

    def add_vendor(urls: Iterable[str | None], default: str) -> None:
        found = [endpoint for endpoint in map(_endpoint, filter(None, urls)) if endpoint]
        for endpoint in found or [default]:
            if endpoint not in endpoints:
                endpoints.append(endpoint)

    add_vendor([env.get(ANTHROPIC_URL_VARIABLE)], ANTHROPIC_DEFAULT_ENDPOINT)
    add_vendor([env.get(OPENAI_URL_VARIABLE), *_codex_base_urls(codex_config_text)], OPENAI_DEFAULT_ENDPOINT)
    return endpoints


# ---------------------------------------------------------------------------------------------
# Plumbing shared by both subcommands.


def log(message: str) -> None:
    # Shepherd may be gone and its end of stderr with it; the proxy must outlive that.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(LOG_PREFIX + message + "\n")
        sys.stderr.flush()


class HeadTooLarge(Exception):
    pass


async def read_head(reader: asyncio.StreamReader, limit: int, timeout: float) -> tuple[bytes, bytes] | None:
    """The head up to its blank line and whatever came after it; None when the peer left first.

    Raises HeadTooLarge past ``limit`` bytes and TimeoutError after ``timeout`` seconds in all.
    """
    buffer = bytearray()
    searched = 0
    async with asyncio.timeout(timeout):
        while True:
            end = buffer.find(b"\r\n\r\n", max(0, searched - 3))
            searched = len(buffer)
            if end >= 0:
                if end + 4 > limit:
                    raise HeadTooLarge
                return bytes(buffer[: end + 4]), bytes(buffer[end + 4 :])
            if len(buffer) > limit:
                raise HeadTooLarge
            chunk = await reader.read(RELAY_CHUNK_BYTES)
            if not chunk:
                return None
            buffer += chunk


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        # A peer that stops reading would hold a graceful close open forever.
        await asyncio.wait_for(writer.wait_closed(), CLOSE_WAIT_SECONDS)
    except (OSError, asyncio.TimeoutError):
        writer.transport.abort()


async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes) -> None:
    with contextlib.suppress(OSError):
        writer.write(response)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                drained = 0
                while drained < DRAIN_LIMIT_BYTES:
                    chunk = await reader.read(RELAY_CHUNK_BYTES)
                    if not chunk:
                        break
                    drained += len(chunk)


async def relay(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream_writer: asyncio.StreamWriter,
    idle_timeout: float,
) -> None:
    """Copy bytes both ways until the upstream side finishes, an error, or ``idle_timeout`` of silence.

    The client finishing only half-closes the upstream side, so a request sent with shutdown(SHUT_WR)
    still gets its answer; the upstream finishing ends the exchange.
    """
    last_activity = time.monotonic()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal last_activity
        while chunk := await reader.read(RELAY_CHUNK_BYTES):
            last_activity = time.monotonic()
            writer.write(chunk)
            await writer.drain()

    upward = asyncio.create_task(pump(client_reader, upstream_writer))
    downward = asyncio.create_task(pump(upstream_reader, client_writer))
    pending = {upward, downward}
    try:
        while pending:
            remaining = last_activity + idle_timeout - time.monotonic()
            if remaining <= 0:
                return
            done, pending = await asyncio.wait(pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if downward in done or any(task.cancelled() or task.exception() for task in done):
                return
            if upward in done:
                with contextlib.suppress(OSError):
                    if upstream_writer.can_write_eof():
                        upstream_writer.write_eof()
    finally:
        for task in (upward, downward):
            task.cancel()
        await asyncio.gather(upward, downward, return_exceptions=True)


class ClientLimit:
    """Counts live connections so a flood of them cannot exhaust the process's file descriptors."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def wrap(self, handler):
        async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if self.active >= self.limit:
                writer.transport.abort()
                return
            self.active += 1
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                # Only at shutdown. Ending normally keeps Python 3.11's stream callback from logging
                # a traceback per open connection; aborting skips waiting for peers to read.
                writer.transport.abort()
            except Exception as error:  # one broken connection must never stop the others
                log(LOG_CLIENT_ERROR.format(reason=f"{type(error).__name__}: {error}"))
            finally:
                self.active -= 1
                await close_writer(writer)

        return limited


# ---------------------------------------------------------------------------------------------
# The proxy.


class Stats:
    """Counts for Shepherd's status comment, written atomically so a reader never sees half a file."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        # Each turn starts its own proxy; the counts are the session's, so carry on from the last turn's.
        earlier = read_stats(self.path)
        self.allowed = int(earlier["allowed"])
        self.refused = int(earlier["refused"])
        self.refused_hosts: dict[str, int] = dict(earlier["refused_hosts"])
        self.dirty = True
        self._failed = False

    def count_allowed(self) -> None:
        self.allowed += 1
        # At once, like a refusal: the proxy is killed with its turn, and a turn's last connection
        # must be counted too. Connections are few (a model's requests), so the writes are too.
        self.write()

    def count_refused(self, target: str) -> None:
        self.refused += 1
        if target in self.refused_hosts or len(self.refused_hosts) < STATS_MAX_HOSTS:
            self.refused_hosts[target] = self.refused_hosts.get(target, 0) + 1
        # Written at once, not at the next tick: the proxy is killed with its turn, and a refusal
        # in a turn's last moments must still reach the status comment.
        self.write()

    def snapshot(self) -> dict:
        return {"allowed": self.allowed, "refused": self.refused, "refused_hosts": dict(self.refused_hosts)}

    def write(self) -> None:
        self.dirty = False
        data = json.dumps(self.snapshot(), sort_keys=True).encode()
        temporary = None
        try:
            # mkstemp creates with O_EXCL, and rename replaces a planted symlink instead of following it.
            fd, temporary = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".egress-stats-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, self.path)
            temporary = None
            self._failed = False
        except OSError as error:
            if not self._failed:
                log(LOG_STATS_FAILED.format(path=self.path, reason=error))
            self._failed = True
            self.dirty = True
        finally:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    async def keep_written(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_SECONDS)
            if self.dirty:
                self.write()


def bind_unix_socket(path: str) -> socket.socket:
    """A listening socket at ``path``, mode 0600, replacing only a stale socket and never a symlink."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise OSError(ERROR_SOCKET_SYMLINK.format(path=path))
        if not stat.S_ISSOCK(info.st_mode):
            raise OSError(ERROR_SOCKET_OCCUPIED.format(path=path))
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the socket 0600 from birth, so there is no moment when others could connect.
    previous = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(previous)
    if stat.S_ISSOCK(os.lstat(path).st_mode):
        os.chmod(path, 0o600)
    sock.listen(MAX_CLIENTS)
    sock.setblocking(False)
    return sock


class EgressProxy:
    def __init__(self, rules: Sequence[Rule], stats: Stats, head_timeout: float) -> None:
        self.rules = tuple(rules)
        self.stats = stats
        self.head_timeout = head_timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received = await read_head(reader, HEAD_LIMIT_BYTES, self.head_timeout)
        except HeadTooLarge:
            await answer_and_close(reader, writer, http_response(STATUS_BAD_REQUEST, BODY_HEAD_TOO_LARGE))
            return
        except TimeoutError:
            await answer_and_close(reader, writer, http_response(STATUS_TIMEOUT, BODY_HEAD_TIMEOUT))
            return
        if received is None:
            return
        head, early_data = received
        try:
            request = parse_request_head(head)
        except RequestError as error:
            body = BODY_BAD_REQUEST.format(reason=error)
            await answer_and_close(reader, writer, http_response(STATUS_BAD_REQUEST, body))
            return
        upstream = await self.open_upstream(reader, writer, request)
        if upstream is None:
            return
        upstream_reader, upstream_writer = upstream
        try:
            if request.is_connect:
                writer.write(STATUS_ESTABLISHED)
            else:
                upstream_writer.write(origin_request_head(request))
            upstream_writer.write(early_data)
            await asyncio.gather(writer.drain(), upstream_writer.drain())
            await relay(reader, writer, upstream_reader, upstream_writer, IDLE_TIMEOUT_SECONDS)
        finally:
            await close_writer(upstream_writer)

    async def refuse(self, reader, writer, request: Request, reason: str) -> None:
        self.stats.count_refused(request.target)
        log(LOG_REFUSED.format(target=request.target, reason=reason))
        body = BODY_REFUSED.format(target=request.target, reason=reason)
        await answer_and_close(reader, writer, http_response(STATUS_FORBIDDEN, body))

    async def open_upstream(self, reader, writer, request: Request):
        """The checked connection to the request's host, or None after answering the client."""
        # Checking the name before resolving it keeps unlisted names out of DNS, itself a way out.
        if not host_matches(self.rules, request.host, request.port):
            await self.refuse(reader, writer, request, REASON_NOT_LISTED)
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT_SECONDS
        try:
            async with asyncio.timeout_at(deadline):
                infos = await loop.getaddrinfo(request.host, request.port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as error:
            log(LOG_UNRESOLVED.format(target=request.target, reason=error))
            body = BODY_UNRESOLVED.format(target=request.target)
            await answer_and_close(reader, writer, http_response(STATUS_BAD_GATEWAY, body))
            return None
        candidates = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
        allowed, reason = decide(self.rules, request.host, request.port, [address[0] for _, address in candidates])
        if not allowed:
            await self.refuse(reader, writer, request, reason)
            return None
        self.stats.count_allowed()
        failure = REASON_NO_ADDRESS
        try:
            async with asyncio.timeout_at(deadline):
                for family, sockaddr in candidates:
                    try:
                        return await connect_to(family, sockaddr)
                    except OSError as error:
                        failure = error.strerror or str(error)
        except TimeoutError:
            log(LOG_UNREACHABLE.format(target=request.target, reason=REASON_TIMED_OUT))
            body = BODY_CONNECT_TIMEOUT.format(target=request.target, seconds=CONNECT_TIMEOUT_SECONDS)
            await answer_and_close(reader, writer, http_response(STATUS_GATEWAY_TIMEOUT, body))
            return None
        log(LOG_UNREACHABLE.format(target=request.target, reason=failure))
        body = BODY_UNREACHABLE.format(target=request.target, reason=failure)
        await answer_and_close(reader, writer, http_response(STATUS_BAD_GATEWAY, body))
        return None


async def connect_to(family: int, sockaddr: tuple) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to exactly this resolved address: handing a name to asyncio would resolve it again."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def run_proxy(socket_path: str, rules: Sequence[Rule], stats_path: str, head_timeout: float) -> int:
    stats = Stats(stats_path)
    try:
        sock = bind_unix_socket(socket_path)
    except OSError as error:
        log(ERROR_START.format(reason=error.strerror if error.strerror else error))
        return 1
    bound = os.lstat(socket_path)
    proxy = EgressProxy(rules, stats, head_timeout)
    server = await asyncio.start_unix_server(ClientLimit(MAX_CLIENTS).wrap(proxy.handle), sock=sock)
    stats.write()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    writer_task = asyncio.create_task(stats.keep_written())
    try:
        await stop.wait()
    finally:
        writer_task.cancel()
        server.close()
        stats.write()
        # Remove the socket only if it is still the one bound here, not something planted since.
        with contextlib.suppress(OSError):
            now = os.lstat(socket_path)
            if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
                os.unlink(socket_path)
    return 0


# ---------------------------------------------------------------------------------------------
# The forwarder, inside the sandbox.


def parse_tunnel(spec: str) -> tuple[int, str]:
    """``LPORT:HOST:RPORT`` as the local port and the ``HOST:RPORT`` to CONNECT to."""
    local, colon, remote = spec.partition(":")
    try:
        if not colon:
            raise ValueError(spec)
        port = _parse_port(local)
        host, remote_port = _split_authority(remote)
        if remote_port is None or not host:
            raise ValueError(spec)
        _parse_port(remote_port)
    except ValueError:
        raise ValueError(ERROR_TUNNEL.format(spec=spec)) from None
    return port, remote


async def open_proxy_socket(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the proxy, waiting a little for it: both are started at the same moment."""
    deadline = time.monotonic() + SOCKET_WAIT_SECONDS
    while True:
        try:
            return await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(SOCKET_RETRY_SECONDS)


class Forwarder:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    async def connect_proxy(self):
        try:
            return await open_proxy_socket(self.socket_path)
        except OSError as error:
            log(LOG_SOCKET_UNAVAILABLE.format(path=self.socket_path, reason=error.strerror or error))
            return None

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self.connect_proxy()
        if upstream is None:
            return
        try:
            await relay(reader, writer, *upstream, IDLE_TIMEOUT_SECONDS)
        finally:
            await close_writer(upstream[1])

    def tunnel(self, target: str):
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream = await self.connect_proxy()
            if upstream is None:
                return
            upstream_reader, upstream_writer = upstream
            try:
                upstream_writer.write(request)
                await upstream_writer.drain()
                try:
                    answer = await read_head(upstream_reader, HEAD_LIMIT_BYTES, TUNNEL_ANSWER_TIMEOUT_SECONDS)
                except (HeadTooLarge, TimeoutError):
                    answer = None
                if answer is None:
                    log(LOG_TUNNEL_REFUSED.format(target=target, status=REASON_NO_ANSWER))
                    return
                head, early_data = answer
                status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                if status_line.split(" ")[1:2] != ["200"]:
                    # The client gets the proxy's own answer (a 403 names the host); the proxy then closes.
                    log(LOG_TUNNEL_REFUSED.format(target=target, status=status_line))
                    writer.write(head)
                writer.write(early_data)
                await writer.drain()
                await relay(reader, writer, upstream_reader, upstream_writer, IDLE_TIMEOUT_SECONDS)
            finally:
                await close_writer(upstream_writer)

        return handle


async def run_forwarder(socket_path: str, listen_port: int, tunnels: Sequence[tuple[int, str]]) -> int:
    forwarder = Forwarder(socket_path)
    limit = ClientLimit(MAX_CLIENTS)
    servers = []
    try:
        for port, target in tunnels:
            servers.append(await asyncio.start_server(limit.wrap(forwarder.tunnel(target)), "127.0.0.1", port))
        # The proxy port opens last, so once it answers, every tunnel is listening too.
        servers.append(await asyncio.start_server(limit.wrap(forwarder.pipe), "127.0.0.1", listen_port))
    except OSError as error:
        log(ERROR_START.format(reason=error.strerror or error))
        for server in servers:
            server.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    return 0


# ---------------------------------------------------------------------------------------------
# Command line.


def _allow_pattern(text: str) -> Rule:
    try:
        return parse_allow([text])[0]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _tunnel_spec(text: str) -> tuple[int, str]:
    try:
        return parse_tunnel(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _port(text: str) -> int:
    try:
        return _parse_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(ERROR_SECONDS.format(text=text))
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egress.py", description="Shepherd's egress proxy for agent sandboxes.")
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser("proxy", help="the checking proxy, outside the sandbox, on a Unix socket")
    proxy.add_argument("--socket", required=True, help="the Unix socket to listen on")
    proxy.add_argument(
        "--allow", action="append", default=[], type=_allow_pattern, help="host[:port] pattern; repeatable"
    )
    proxy.add_argument("--stats", required=True, help="the JSON file the counts are written to")
    # Hidden: lets tests see the head timeout without waiting half a minute.
    proxy.add_argument("--head-timeout", type=_positive_seconds, default=HEAD_TIMEOUT_SECONDS, help=argparse.SUPPRESS)
    forward = commands.add_parser("forward", help="the forwarder inside the sandbox, from loopback to the socket")
    forward.add_argument("--socket", required=True, help="the proxy's Unix socket")
    forward.add_argument("--listen-port", type=_port, default=DEFAULT_LISTEN_PORT, help="loopback proxy port")
    forward.add_argument(
        "--tunnel", action="append", default=[], type=_tunnel_spec, help="LPORT:HOST:RPORT; repeatable"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    # The turn's process group outlives Shepherd; a hangup from a lost terminal must not end the proxy.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if arguments.command == "proxy":
        return asyncio.run(run_proxy(arguments.socket, arguments.allow, arguments.stats, arguments.head_timeout))
    return asyncio.run(run_forwarder(arguments.socket, arguments.listen_port, arguments.tunnel))


if __name__ == "__main__":
    sys.exit(main())
