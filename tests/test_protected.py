"""Protected-path matching: `**` across folders, `*` within one, folders cover their contents."""

from __future__ import annotations

import pytest

from bot.core.protected import is_protected, touched_protected_paths

DEFAULT = [".github/workflows/**"]


@pytest.mark.parametrize(
    "path",
    [
        ".github/workflows/ci.yml",
        ".github/workflows/nested/deeper/release.yaml",
    ],
)
def test_the_default_pattern_covers_every_workflow_file(path):
    assert is_protected(path, DEFAULT)


@pytest.mark.parametrize(
    "path",
    [
        ".github/shepherd.yml",
        ".github/workflowsx/ci.yml",
        "docs/.github/workflows/ci.yml",  # anchored at the root
        "src/app.py",
        "",
    ],
)
def test_the_default_pattern_leaves_other_files_alone(path):
    assert not is_protected(path, DEFAULT)


def test_a_single_star_stays_within_one_folder():
    assert is_protected("config/prod.yml", ["config/*.yml"])
    assert not is_protected("config/eu/prod.yml", ["config/*.yml"])


def test_a_leading_double_star_matches_a_name_anywhere():
    assert is_protected("secrets.yml", ["**/secrets.yml"])
    assert is_protected("a/b/c/secrets.yml", ["**/secrets.yml"])
    assert not is_protected("a/b/c/secrets.yml.bak", ["**/secrets.yml"])


def test_a_double_star_in_the_middle_matches_zero_or_more_folders():
    patterns = ["infra/**/main.tf"]
    assert is_protected("infra/main.tf", patterns)
    assert is_protected("infra/eu/west/main.tf", patterns)
    assert not is_protected("infra/eu/west/vars.tf", patterns)


@pytest.mark.parametrize("pattern", [".github/workflows", ".github/workflows/"])
def test_a_folder_name_covers_its_contents(pattern):
    assert is_protected(".github/workflows/ci.yml", [pattern])
    assert not is_protected(".github/dependabot.yml", [pattern])


def test_matching_is_case_sensitive_like_git():
    assert not is_protected(".GitHub/Workflows/ci.yml", DEFAULT)


def test_touched_paths_are_sorted_unique_and_only_the_protected_ones():
    changed = ["src/a.py", ".github/workflows/b.yml", ".github/workflows/a.yml", ".github/workflows/a.yml"]
    assert touched_protected_paths(changed, DEFAULT) == [".github/workflows/a.yml", ".github/workflows/b.yml"]
    assert touched_protected_paths(changed, []) == []
