"""A large generated git repository for benchmarks, built once with `git fast-import` and cached.

`cached_repo(files, commits)` returns a bare repository under `bench/.cache/` (gitignored) whose
`main` branch holds `files` source-like files written over `commits` commits: each commit adds the
next few files and edits two older ones, so the history has real deltas, as a project's would.
The folder name carries every parameter and the generator's version, so changing either builds a
new one and a cached copy is never stale.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# The developer's git configuration must not shape the benchmark's repository.
from tests.fakes.git_remote import plain_env

CACHE = Path(__file__).resolve().parent / ".cache"
# Bump when the generated content changes, so older caches are not reused.
GENERATOR_VERSION = 1
BRANCH = "main"
AUTHOR = "Bench Author <bench@example.com>"
EPOCH = 1_700_000_000
EDITS_PER_COMMIT = 2


def file_path(number: int) -> str:
    """Files spread over nested packages, at most 50 per folder, as in a real source tree."""
    return f"src/pkg{number // 2000:02d}/mod{(number // 50) % 40:02d}/file_{number:05d}.py"


def file_text(number: int, revision: int) -> bytes:
    """A small Python module; `revision` changes one constant, so edits delta well."""
    lines = [
        f'"""Generated module {number}."""',
        "",
        "from __future__ import annotations",
        "",
        f"REVISION = {revision}",
        f"LIMIT = {number % 97 + 3}",
        "",
        "",
        f"def compute_{number}(values: list[int]) -> int:",
        f'    """Sum what is below the limit, scaled by {number % 13 + 1}."""',
        "    total = 0",
        "    for value in values:",
        "        if value < LIMIT:",
        f"            total += value * {number % 13 + 1}",
        "    return total + REVISION",
        "",
        "",
        f"class Thing{number}:",
        f'    name = "thing-{number}"',
        "",
        "    def describe(self) -> str:",
        f'        return f"{{self.name}} at revision {{REVISION}} of {number}"',
        "",
    ]
    return "\n".join(lines).encode()


def _data(out: io.BufferedWriter, payload: bytes) -> None:
    out.write(b"data %d\n" % len(payload))
    out.write(payload)
    out.write(b"\n")


def write_stream(out: io.BufferedWriter, files: int, commits: int) -> None:
    """The fast-import stream: commit k adds the k-th slice of files and edits two older ones."""
    per_commit = math.ceil(files / commits)
    revisions: dict[int, int] = {}
    for k in range(commits):
        when = EPOCH + k * 600
        out.write(b"commit refs/heads/%s\n" % BRANCH.encode())
        out.write(b"mark :%d\n" % (k + 1))
        out.write(b"author %s %d +0000\n" % (AUTHOR.encode(), when))
        out.write(b"committer %s %d +0000\n" % (AUTHOR.encode(), when))
        _data(out, f"Change {k + 1}: add modules, adjust two limits".encode())
        added = range(k * per_commit, min(files, (k + 1) * per_commit))
        for number in added:
            revisions[number] = 0
            out.write(b"M 100644 inline %s\n" % file_path(number).encode())
            _data(out, file_text(number, 0))
        older = k * per_commit
        if older:
            for salt in (7919, 104_729)[:EDITS_PER_COMMIT]:
                number = (k * salt) % older
                revisions[number] += 1
                out.write(b"M 100644 inline %s\n" % file_path(number).encode())
                _data(out, file_text(number, revisions[number]))
        out.write(b"\n")
    out.write(b"done\n")


def build_repo(target: Path, files: int, commits: int) -> None:
    """Create the bare repository at `target` from a generated fast-import stream."""
    env = plain_env()
    subprocess.run(
        ["git", "init", "--quiet", "--bare", f"--initial-branch={BRANCH}", str(target)],
        env=env, check=True,
    )
    importer = subprocess.Popen(
        ["git", "--git-dir", str(target), "fast-import", "--quiet", "--done"],
        env=env, stdin=subprocess.PIPE,
    )
    assert importer.stdin is not None
    with io.BufferedWriter(importer.stdin, buffer_size=1 << 20) as stream:  # type: ignore[arg-type]
        write_stream(stream, files, commits)
    if importer.wait() != 0:
        raise RuntimeError(f"git fast-import failed with {importer.returncode}")
    # A served repository is normally packed with deltas found across paths, not fast-import's own.
    subprocess.run(
        ["git", "--git-dir", str(target), "repack", "-a", "-d", "-f", "-q", "--window=10", "--depth=50"],
        env=env, check=True,
    )
    subprocess.run(["git", "--git-dir", str(target), "prune-packed"], env=env, check=True)


def cached_repo(files: int, commits: int) -> Path:
    """The generated bare repository for these parameters, built on first use."""
    if files < 1 or commits < 1:
        raise ValueError("files and commits must be positive")
    target = CACHE / f"repo-v{GENERATOR_VERSION}-f{files}-c{commits}.git"
    if (target / "HEAD").is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE))
    try:
        build_repo(building / "repo.git", files, commits)
        # Rename last: an interrupted build leaves no half-made repository under the final name.
        os.replace(building / "repo.git", target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def describe(repo: Path) -> tuple[int, int]:
    """(files at the tip, commits on the branch) of a generated repository."""
    env = plain_env()
    listed = subprocess.run(
        ["git", "--git-dir", str(repo), "ls-tree", "-r", "--name-only", BRANCH],
        env=env, check=True, capture_output=True,
    ).stdout
    counted = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-list", "--count", BRANCH],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return listed.count(b"\n"), int(counted.strip())
