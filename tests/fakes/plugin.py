"""pytest fixtures for the shared fakes: `fake_github` and the session-wide OpenAPI description."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.github import FakeGitHub
from tests.fakes.openapi import Spec, load_spec


@pytest.fixture(scope="session")
def github_openapi() -> Spec:
    """GitHub's REST description, loaded and indexed once per test session."""
    return load_spec()


@pytest.fixture
def fake_github(github_openapi: Spec) -> Iterator[FakeGitHub]:
    """A started FakeGitHub; the test fails at teardown if the fake saw any violation."""
    fake = FakeGitHub(spec=github_openapi)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
    fake.assert_clean()
