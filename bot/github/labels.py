"""Shepherd's labels: their names from the repository policy (read briefly cached), colours and descriptions, created on first use.

The policy file is read here (`load_policy`, `RepoPolicies`); its schema and parsing are the core's
(`bot/core/policy.py`), and so is which name each label has (`label_name`, `trigger_label`).

The trigger labels (go, plan) are created, under the names the repository's policy gives them, when the
App is installed on a repository (so people find them in the label picker), and otherwise only read: people add and remove them. The needs-input and
needs-human labels are Shepherd's to add and remove; each is created with a colour and a description
the first time Shepherd needs it in a repository (SPEC §1: "Shepherd creates its labels on first use").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gidgethub
from cachetools import TTLCache

from bot.github.api import GitHub, GitHubReader
from bot.core.policy import (
    CONTENTS_URL, KIND_FIELDS, MODE_FIELDS, POLICY_PATH, Labels, LoadedPolicy, OperatorLimits, has_label, label_name,
    policy_from_contents,
)
from bot.core.session import LabelKind

log = logging.getLogger(__name__)

# A policy change on the default branch should show within a minute, without reading the file per event.
POLICY_TTL_SECONDS = 60.0

LABEL_URL = "/repos/{owner}/{repo}/labels"
ISSUE_LABELS_URL = "/repos/{owner}/{repo}/issues/{issue_number}/labels"
ISSUE_LABEL_URL = "/repos/{owner}/{repo}/issues/{issue_number}/labels/{name}"


@dataclass(frozen=True)
class LabelLook:
    """How one of Shepherd's labels looks when Shepherd creates it."""

    color: str
    description: str


LOOKS: dict[str, LabelLook] = {
    "go": LabelLook("0e8a16", "Shepherd: an AI agent works on this issue and opens a pull request"),
    "plan": LabelLook("1d76db", "Shepherd: an AI agent proposes a plan for approval, then implements it"),
    "needs_input": LabelLook("d93f0b", "Shepherd: the agent is waiting for an answer in this thread"),
    "needs_human": LabelLook("b60205", "Shepherd: a person needs to step in (a round or turn limit was reached)"),
}


async def load_policy(
    gh: GitHubReader, owner: str, repo: str, default_branch: str | None, operator: OperatorLimits
) -> LoadedPolicy:
    """Read `.github/shepherd.yml` from the default branch through the contents API and parse it
    (`default_branch` None: whichever branch is the default, when the caller does not know its name)."""
    try:
        item = await gh.getitem(
            CONTENTS_URL,
            {"owner": owner, "repo": repo, "path": POLICY_PATH, "ref": default_branch},
        )
    except gidgethub.BadRequest as error:
        if error.status_code != 404:
            raise
        item = None
    return policy_from_contents(item, operator, default_branch)


class RepoPolicies:
    """Each repository's `.github/shepherd.yml`, read from the default branch and kept a minute."""

    def __init__(
        self,
        operator: OperatorLimits | None = None,
        *,
        ttl: float = POLICY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        maxsize: int = 1024,
    ) -> None:
        self.operator = operator or OperatorLimits()
        self._cache: TTLCache[tuple[str, str], LoadedPolicy] = TTLCache(maxsize, ttl, timer=clock)

    async def get(self, gh: GitHubReader, owner: str, repo: str, default_branch: str) -> LoadedPolicy:
        key = (f"{owner}/{repo}".lower(), default_branch)
        loaded = self._cache.get(key)
        if loaded is None:
            loaded = await load_policy(gh, owner, repo, default_branch, self.operator)
            self._cache[key] = loaded
        return loaded

    def forget(self, owner: str, repo: str) -> None:
        for key in [k for k in self._cache if k[0] == f"{owner}/{repo}".lower()]:
            self._cache.pop(key, None)


class LabelMaker:
    """Creates Shepherd's labels once per repository and process (a 422 "already exists" is success)."""

    def __init__(self) -> None:
        self._known: set[tuple[str, str]] = set()

    async def ensure(self, gh: GitHub, owner: str, repo: str, name: str, field_name: str) -> None:
        key = (f"{owner}/{repo}".lower(), name.lower())
        if key in self._known:
            return
        look = LOOKS[field_name]
        try:
            await gh.post(
                LABEL_URL,
                {"owner": owner, "repo": repo},
                data={"name": name, "color": look.color, "description": look.description},
            )
            log.info("created label %r in %s/%s", name, owner, repo)
        except gidgethub.BadRequest as exc:
            if int(exc.status_code) != 422:
                raise
        self._known.add(key)


async def create_trigger_labels(gh: GitHub, full_name: str, labels: Labels = Labels()) -> list[str]:
    """Create the go and plan labels (colour, description) in a newly installed repository; return the names
    created. A label that exists already is left as the maintainers made it."""
    owner, _, repo = full_name.partition("/")
    created = []
    for field_name in MODE_FIELDS.values():
        name = getattr(labels, field_name)
        look = LOOKS[field_name]
        try:
            await gh.post(LABEL_URL, {"owner": owner, "repo": repo},
                          data={"name": name, "color": look.color, "description": look.description})
        except gidgethub.BadRequest as exc:
            if int(exc.status_code) != 422:  # 422: it exists already
                raise
            continue
        created.append(name)
    if created:
        log.info("created labels %s in %s", ", ".join(created), full_name)
    return created


async def label_new_repository(gh: GitHub, full_name: str, operator: OperatorLimits | None = None) -> list[str]:
    """Create the go and plan labels in a newly installed repository under the names its policy gives them
    (one read of `.github/shepherd.yml`; the default names when there is none, it is not valid, or it
    cannot be read: the labels are a convenience, not worth failing the installation for)."""
    owner, _, repo = full_name.partition("/")
    try:
        labels = (await load_policy(gh, owner, repo, None, operator or OperatorLimits())).policy.labels
    except gidgethub.GitHubException as error:
        log.warning("could not read the policy of %s; creating the default labels: %s", full_name, error)
        labels = Labels()
    return await create_trigger_labels(gh, full_name, labels)


async def add_label(gh: GitHub, maker: LabelMaker, owner: str, repo: str, number: int, labels: Labels,
                    kind: LabelKind, **write: Any) -> str:
    """Put Shepherd's `kind` label on the issue, creating the label in the repository first if needed."""
    name = label_name(labels, kind)
    await maker.ensure(gh, owner, repo, name, KIND_FIELDS[kind])
    await gh.post(ISSUE_LABELS_URL, {"owner": owner, "repo": repo, "issue_number": number},
                  data={"labels": [name]}, **write)
    return name


async def remove_label(gh: GitHub, owner: str, repo: str, number: int, labels: Labels, kind: LabelKind,
                       **write: Any) -> bool:
    """Take Shepherd's `kind` label off the issue when it is there; True when a label was removed.

    The issue's labels are read first: a read is cheap, while every write counts against GitHub's
    content limits."""
    name = label_name(labels, kind)
    present = [
        label["name"]
        async for label in gh.getiter(ISSUE_LABELS_URL, {"owner": owner, "repo": repo, "issue_number": number})
    ]
    if not has_label(present, name):
        return False
    try:
        await gh.delete(ISSUE_LABEL_URL, {"owner": owner, "repo": repo, "issue_number": number, "name": name},
                        **write)
    except gidgethub.BadRequest as exc:
        if int(exc.status_code) != 404:  # someone took it off in the meantime
            raise
        return False
    return True
