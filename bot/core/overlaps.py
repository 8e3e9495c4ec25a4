"""Parallel sessions of one repository that change the same files (SPEC §1): which ones, and which files."""

from __future__ import annotations

from collections.abc import Mapping


def find_overlaps(changes: Mapping[str, set[str]]) -> dict[str, dict[str, tuple[str, ...]]]:
    """For each session, the other sessions it shares files with, and those files (sorted)."""
    overlaps: dict[str, dict[str, tuple[str, ...]]] = {}
    names = sorted(changes)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = tuple(sorted(changes[first] & changes[second]))
            if shared:
                overlaps.setdefault(first, {})[second] = shared
                overlaps.setdefault(second, {})[first] = shared
    return overlaps
