"""Benchmark: how fast a session gets its worktree, with and without the ready-worktree pool.

Run: `.venv/bin/python -m bench.worktree_pool [--files 20000] [--rounds 3]`. It serves a generated
repository from the smart-HTTP test remote and prints the median seconds of each path next to two
baselines: a fresh `git clone` over HTTP and `git archive | tar -x` from the mirror. The target
(SPEC issue): fetch + claim from the pool at least 10x faster than a fresh clone and within 2x of
`git archive | tar -x`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bot.workspace import Workspaces
from tests.fakes.git_remote import TEST_TOKEN, GitRemote

REPO = "bench/big"


def generated_files(count: int) -> dict[str, str]:
    """`count` small source-like files spread over nested folders."""
    return {
        f"pkg{n // 1000:02d}/mod{(n // 50) % 20:02d}/file{n:05d}.py": f"VALUE_{n} = {n}\n" * 8
        for n in range(count)
    }


def timed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


async def atimed(action) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def measure(files: int, rounds: int) -> dict[str, list[float]]:
    scratch = Path(tempfile.mkdtemp(prefix="shepherd-bench-"))
    remote = GitRemote(scratch / "remote")
    results: dict[str, list[float]] = {
        "fresh clone over HTTP": [],
        "git archive | tar -x": [],
        "fetch + worktree add": [],
        "fetch + claim from pool": [],
    }
    try:
        url = remote.create_repo(REPO, generated_files(files))
        spaces = Workspaces(scratch / "data")
        await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
        askpass = scratch / "askpass"
        askpass.write_text(f"#!/bin/sh\necho {TEST_TOKEN}\n")
        askpass.chmod(0o700)
        env = {**os.environ, "GIT_ASKPASS": str(askpass), "GIT_TERMINAL_PROMPT": "0"}
        for number in range(rounds):
            clone = scratch / f"clone-{number}"
            url_with_user = url.replace("http://", "http://x-access-token@")
            results["fresh clone over HTTP"].append(
                timed(lambda: subprocess.run(
                    ["git", "clone", "-q", url_with_user, str(clone)], env=env, check=True
                ))
            )
            shutil.rmtree(clone)
            export = scratch / f"export-{number}"
            export.mkdir()
            mirror_path = spaces.mirror_path(REPO)
            results["git archive | tar -x"].append(
                timed(lambda: subprocess.run(
                    f"git --git-dir='{mirror_path}' archive refs/remotes/origin/main"
                    f" | tar -x -C '{export}'",
                    shell=True, check=True,
                ))
            )
            shutil.rmtree(export)

            async def fresh() -> None:
                await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
                await spaces.create_worktree(REPO, f"agent/issue-{number}-plain", "main")

            results["fetch + worktree add"].append(await atimed(fresh))
            await spaces.fill_pool(REPO, "main", size=1)

            async def pooled() -> None:
                await spaces.ensure_mirror(REPO, url, TEST_TOKEN)
                await spaces.create_worktree(REPO, f"agent/issue-{number}-pooled", "main")

            results["fetch + claim from pool"].append(await atimed(pooled))
    finally:
        remote.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def report(results: dict[str, list[float]], files: int) -> str:
    medians = {name: statistics.median(values) for name, values in results.items()}
    lines = [f"worktree for a session, {files} files (median seconds)"]
    for name, value in medians.items():
        lines.append(f"  {name:<26} {value:8.3f}")
    pooled = medians["fetch + claim from pool"]
    lines.append(f"  pool vs fresh clone: {medians['fresh clone over HTTP'] / pooled:6.1f}x faster (target >= 10x)")
    lines.append(f"  pool vs archive|tar: {pooled / medians['git archive | tar -x']:6.2f}x the time (target <= 2x)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    results = asyncio.run(measure(options.files, options.rounds))
    print(report(results, options.files))  # a benchmark's output is its figures


if __name__ == "__main__":
    main()
