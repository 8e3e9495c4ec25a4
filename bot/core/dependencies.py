"""Dependencies between issues, decided purely (SPEC §1): `depends on #N` / `blocked by owner/repo#N` parsed,
one issue's dependencies judged from their facts (`resolve`), cycles found (`find_cycle`), and the
texts Shepherd posts about unseen dependencies and cycles.

A dependency is done when its PR is merged, or when its issue was closed as completed. With
`stack: true` a dependency whose PR is open (and only one such) is enough, and the session starts on
that PR's branch. The shell that reads the issues is `bot.runtime.dependencies`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bot.core.sanitize import marker
from bot.core.session import PullRequestState

UNSEEN_KIND = "dependency-unseen"
CYCLE_KIND = "dependency-cycle"
UNSEEN_HEADING = "### ⚠️ Shepherd cannot see some dependencies"
UNSEEN_SENTENCE = (
    "This issue says it depends on {refs}, but Shepherd cannot see {them} (another installation, or the "
    "issue does not exist). Shepherd ignores {them} and does not wait."
)
CYCLE_HEADING = "### ⛔ Dependency cycle"
CYCLE_SENTENCE = (
    "These issues depend on each other in a circle, so none of them can start: {chain}. "
    "Edit one of them to remove a `depends on` line; Shepherd then checks again."
)

_REF = r"(?:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)?#\d+"
_KEYWORDS = re.compile(
    rf"\b(?:depends\s+on|blocked\s+by)\s*:?\s*((?:{_REF})(?:\s*(?:,|and|&)?\s*(?:{_REF}))*)", re.IGNORECASE
)
_ONE_REF = re.compile(r"(?:(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+))?#(?P<number>\d+)")
_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True, order=True)
class IssueKey:
    """One issue anywhere: `owner/repo` (lowercase, as GitHub compares) and its number."""

    repo: str
    number: int

    @property
    def owner(self) -> str:
        return self.repo.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.repo.split("/", 1)[1]

    def ref(self, home: str) -> str:
        """`#12` inside `home`, `owner/repo#12` elsewhere."""
        return f"#{self.number}" if self.repo == home.lower() else f"{self.repo}#{self.number}"


def issue_key(repo: str, number: int) -> IssueKey:
    return IssueKey(repo.lower(), int(number))


def parse_dependencies(body: str | None, home: str) -> list[IssueKey]:
    """Every issue `body` says it depends on or is blocked by, in order, without repeats or itself.

    Code blocks are skipped: an example in a fence is not a dependency."""
    text = _FENCE.sub("", body or "")
    found: list[IssueKey] = []
    for match in _KEYWORDS.finditer(text):
        for ref in _ONE_REF.finditer(match.group(1)):
            key = issue_key(ref.group("repo") or home, int(ref.group("number")))
            if key not in found:
                found.append(key)
    return found


@dataclass(frozen=True)
class DependencyFacts:
    """What Shepherd knows about one dependency."""

    visible: bool = True
    closed_completed: bool = False
    pr_state: PullRequestState | None = None
    branch: str | None = None  # the dependency session's branch (stacking starts there)

    @property
    def done(self) -> bool:
        return self.closed_completed or self.pr_state == PullRequestState.MERGED


@dataclass(frozen=True)
class Resolution:
    """The verdict on one issue's dependencies."""

    waiting: tuple[IssueKey, ...] = ()
    unseen: tuple[IssueKey, ...] = ()
    stack_base: str | None = None

    @property
    def ready(self) -> bool:
        return not self.waiting


def resolve(dependencies: Sequence[IssueKey], facts: Mapping[IssueKey, DependencyFacts], *, stack: bool) -> Resolution:
    """Which dependencies still hold the issue back; in stacked mode, the branch to start from."""
    unseen = tuple(key for key in dependencies if not facts.get(key, DependencyFacts()).visible)
    open_ = [key for key in dependencies if key not in unseen and not facts.get(key, DependencyFacts()).done]
    if stack and len(open_) == 1:
        only = facts.get(open_[0], DependencyFacts())
        if only.pr_state == PullRequestState.OPEN and only.branch:
            return Resolution((), unseen, only.branch)
    return Resolution(tuple(open_), unseen, None)


def find_cycle(start: IssueKey, edges: Mapping[IssueKey, Sequence[IssueKey]]) -> list[IssueKey] | None:
    """A shortest path of dependencies from `start` back to itself (start first), or None."""
    previous: dict[IssueKey, IssueKey] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following: list[IssueKey] = []
        for node in frontier:
            for nxt in edges.get(node, ()):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return list(reversed(path))
                if nxt not in seen:
                    seen.add(nxt)
                    previous[nxt] = node
                    following.append(nxt)
        frontier = following
    return None


def render_unseen(home: str, keys: Iterable[IssueKey]) -> str:
    keys = list(keys)
    refs = ", ".join(f"`{key.ref(home)}`" for key in keys)
    them = "it" if len(keys) == 1 else "them"
    return f"{marker(UNSEEN_KIND, issue=home)}\n{UNSEEN_HEADING}\n\n{UNSEEN_SENTENCE.format(refs=refs, them=them)}\n"


def render_cycle(home: str, cycle: Sequence[IssueKey]) -> str:
    chain = " → ".join([*(key.ref(home) for key in cycle), cycle[0].ref(home)])
    return f"{marker(CYCLE_KIND, cycle=cycle_id(cycle))}\n{CYCLE_HEADING}\n\n{CYCLE_SENTENCE.format(chain=chain)}\n"


def cycle_id(cycle: Sequence[IssueKey]) -> str:
    """The same id for a cycle whichever issue it was found from."""
    return ",".join(f"{key.repo}#{key.number}" for key in sorted(cycle))
