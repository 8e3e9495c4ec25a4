"""A Shepherd stand-in process for restart tests: the engine on the fakes, killed with -9 by the test.

`python -m tests.runtime_driver <config.json>`; the config names the settings environment, the files
the recording publisher and finisher append to, and (first run only) the issue to trigger. It runs
until the issue's session ends, then exits 0.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bot.core.effects import IssueRef
from bot.core.session import State
from bot.settings import load_settings
from tests.runtime_support import add_go_label, build_harness

ENDED = (State.COMPLETE, State.FAILED, State.CANCELLED)


async def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    settings = load_settings(config["environ"], env_file=None)
    harness = await build_harness(None, settings.data_dir, settings=settings, parent_env=config["parent_env"])
    harness.publisher.log_file = Path(config["publisher_log"])
    harness.finisher.log_file = Path(config["finisher_log"])
    try:
        await harness.engine.start()
        issue = config["issue"]
        if config.get("trigger"):
            ref = IssueRef(**issue)
            await add_go_label(harness, ref)
        full_name = f"{issue['owner']}/{issue['repo']}"
        while True:
            session = harness.engine.last_session(full_name, issue["number"])
            if session is not None and session.state in ENDED:
                await harness.engine.idle()
                return 0
            await asyncio.sleep(0.05)
    finally:
        await harness.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
