"""How Shepherd starts git inside an agent's box, so that nothing the agent wrote runs even there (SPEC §4.1).

    python -I box_git.py <git options...> -- <git arguments...>

Standard library only, never imports `bot`: it runs inside the box with Shepherd's interpreter. The
options switch hooks, the fsmonitor and the pager off by name. Filter drivers cannot be switched off
by name in advance, since the agent chooses the names, so this reads the names the repository's
configuration gives (its includes too) and resets each to nothing before git runs: a
`.gitattributes` line naming one then changes nothing.

Nested repositories read their own configuration, in the git processes git itself starts there
(`git add` asks each embedded repository for its status). Those children are found through git's exec
path and cannot be wrapped, but `-c` options reach them through the environment: so for `add`, the
filter drivers of every repository below the working folder are reset too. Shepherd runs its other
commands with `--ignore-submodules=dirty`, which never enters a nested repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

FILTER_KEYS = r"^filter\..+\.(clean|smudge|process|required)$"


def disabled_filters(git: str, options: list[str]) -> list[str]:
    """`-c` options resetting every filter driver the current repository's configuration names."""
    found = subprocess.run(
        [git, *options, "config", "-z", "--name-only", "--get-regexp", FILTER_KEYS],
        capture_output=True, stdin=subprocess.DEVNULL,
    ).stdout
    resets: list[str] = []
    for name in filter(None, found.split(b"\0")):
        key = os.fsdecode(name)
        resets += ["-c", key + ("=false" if key.endswith(".required") else "=")]
    return resets


def nested_repositories(top: str) -> list[str]:
    """Every folder below `top` (its own `.git` aside) that holds a `.git`, without following links."""
    found = []
    for folder, folders, files in os.walk(top):
        if folder == top and ".git" in folders:
            folders.remove(".git")
        elif ".git" in folders or ".git" in files:
            found.append(folder)
            if ".git" in folders:
                folders.remove(".git")
    return found


def main(argv: list[str]) -> None:
    split = argv.index("--")
    options, arguments = argv[:split], argv[split + 1:]
    git = shutil.which("git") or "git"
    resets = disabled_filters(git, options)
    if arguments[:1] == ["add"]:
        for folder in nested_repositories(os.getcwd()):
            resets += disabled_filters(git, ["-C", folder, *options])
    os.execv(git, [git, *options, *resets, *arguments])


if __name__ == "__main__":
    main(sys.argv[1:])
