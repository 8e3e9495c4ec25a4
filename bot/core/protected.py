"""Protected paths (SPEC §3): which changed files match the policy's `protected_paths` patterns.

Pattern language, anchored at the repository root (a leading `/` is refused by the policy):

- `*` matches within one path segment, `?` one character, `[abc]` a character class;
- `**` as a whole segment matches zero or more segments, so `.github/workflows/**` covers every
  file below that folder and `**/secrets.yml` covers that name anywhere;
- a pattern that names a folder (`.github/workflows` or `.github/workflows/`) covers everything
  inside it, because a person writing a folder name means its contents.

Matching is case-sensitive, as git is on the platforms Shepherd runs on. fnmatch is used per segment
rather than on the whole path because its `*` would cross `/`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from functools import lru_cache


def _segments(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.strip("/").split("/") if part not in ("", "."))


@lru_cache(maxsize=256)
def _pattern_segments(pattern: str) -> tuple[str, ...]:
    return _segments(pattern)


def _match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether `pattern` matches `path` or one of its leading folders."""
    if not pattern:
        return True  # the pattern is used up: it named this file or a folder above it
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        # Zero segments, or swallow one and try again.
        return _match(rest, path) or (bool(path) and _match(pattern, path[1:]))
    if not path:
        return False
    return fnmatch.fnmatchcase(path[0], head) and _match(rest, path[1:])


def is_protected(path: str, patterns: Iterable[str]) -> bool:
    """Whether one repository-relative `path` falls under any of `patterns`."""
    segments = _segments(path)
    if not segments:
        return False
    return any(_match(_pattern_segments(pattern), segments) for pattern in patterns if _pattern_segments(pattern))


def touched_protected_paths(changed_paths: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The changed paths that fall under a protected pattern, sorted and without repeats."""
    patterns = tuple(patterns)
    if not patterns:
        return []
    return sorted({path for path in changed_paths if is_protected(path, patterns)})
