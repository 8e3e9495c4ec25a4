"""Loopback ports for servers the tests and benchmarks start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picked it; it is free until someone binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
