"""What people read on GitHub renders right on GitHub (issue 16): the README, every template rendered with
sample data, and docs/examples/, through cmarkgfm (GitHub's own cmark-gfm), checked for structure.

The structure a text means is read from its lines (headings, fences, table rows, list items); the
structure GitHub shows is read from cmark-gfm's HTML. They must agree: a fence that swallows the rest of
the document, a paragraph glued onto the last list item or a table that is not one shows as a difference.
A code block that holds a fenced block of its own in a fence as long as its own is flagged even when both
readings agree: the inner block's closing fence ends the outer one, which is never what was meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options

from bot.core.effects import ChangedFile, SessionContext
from bot.core.policy import OperatorLimits, Problem, default_policy
from bot.core.responses import BAKEOFF_NOT_ON_TEMPORAL
from bot.core.session import Detail, Mode, PullRequestState, State, Trigger, decide_trigger
from bot.views import render

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CONTEXT = SessionContext(
    installation_id=1, owner="octo-org", repo="widgets", clone_url="https://github.com/octo-org/widgets.git",
    default_branch="main", policy=default_policy(OperatorLimits(), "main"),
    changed_files=(ChangedFile("src/export.py", 48, 0), ChangedFile("README.md", 6, 1)),
    notes=("Re-run after a restart.",),
)
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?: |$)")
HEADING = re.compile(r"^ {0,3}(#{1,6})(?: +(.*?))?(?: +#+)? *$")
TABLE_DELIMITER = re.compile(r"^ {0,3}\|?(?: *:?-+:? *\|)+(?: *:?-+:? *)?\|? *$")


@dataclass
class Shape:
    headings: list[str] = field(default_factory=list)
    code_blocks: list[str] = field(default_factory=list)
    tables: int = 0
    glued: list[str] = field(default_factory=list)  # lines that GitHub would glue onto a list item
    # Lines inside a code block that open a fenced block of their own (an info string, ```yaml) with a fence
    # at least as long as the open one: that block's closing fence would end the outer block on GitHub.
    nested: list[str] = field(default_factory=list)


def intended(markdown: str) -> Shape:
    """The structure the lines of `markdown` say, read without a Markdown library."""
    shape = Shape()
    fence: tuple[str, int, int] | None = None  # character, length, indentation
    code: list[str] = []
    after_item = False
    quoted_fence = False  # a fence opened inside a block quote: its lines carry the quote's `>` too
    for raw in markdown.splitlines():
        unquoted = re.sub(r"^(?: {0,3}> ?)+", "", raw)  # inside a block quote, the same structure holds
        line = unquoted if fence is None or quoted_fence else raw
        match = FENCE.match(line) or re.match(r"^ {0,6}(`{3,}|~{3,})(.*)$", line)
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= fence[1] and not match.group(2).strip():
                shape.code_blocks.append("\n".join(code))
                fence, code = None, []
            else:
                if (match and match.group(1)[0] == fence[0] and len(match.group(1)) >= fence[1]
                        and match.group(2).strip() and not (fence[0] == "`" and "`" in match.group(2))):
                    shape.nested.append(line.strip())  # a fence indented in a list item takes that much indentation off its lines
                code.append(re.sub(rf"^ {{0,{fence[2]}}}", "", line))
            continue
        if match and not (match.group(1)[0] == "`" and "`" in match.group(2)):
            indent = len(line) - len(line.lstrip(" "))
            fence, code, after_item = (match.group(1)[0], len(match.group(1)), indent), [], False
            quoted_fence = unquoted != raw
            continue
        heading = HEADING.match(line)
        if heading:
            shape.headings.append(_plain(heading.group(2) or ""))
        if TABLE_DELIMITER.match(line) and "|" in line:
            shape.tables += 1
        if LIST_ITEM.match(line):
            after_item = True
        elif not line.strip():
            after_item = False
        elif after_item and not line.startswith((" ", "\t")) and not heading and not line.lstrip().startswith("<"):
            shape.glued.append(line.strip())
    assert fence is None, f"a code fence is never closed: {code[:3]}"
    return shape


def _plain(text: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[`*_]", "", text).strip()


class Shown(HTMLParser):
    """What GitHub shows: headings, code blocks, tables, and the text of each list item."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.shape = Shape()
        self.items: list[str] = []
        self._heading: list[str] | None = None
        self._code: list[str] | None = None
        self._items: list[list[str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if re.fullmatch(r"h[1-6]", tag):
            self._heading = []
        elif tag == "pre":
            self._code = []
        elif tag == "table":
            self.shape.tables += 1
        elif tag == "li":
            self._items.append([])

    def handle_endtag(self, tag):
        if re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.shape.headings.append(_plain("".join(self._heading)))
            self._heading = None
        elif tag == "pre" and self._code is not None:
            self.shape.code_blocks.append("".join(self._code).rstrip("\n"))
            self._code = None
        elif tag == "li" and self._items:
            self.items.append("".join(self._items.pop()))

    def handle_data(self, data):
        for part in (self._heading, self._code, *self._items):
            if part is not None:
                part.append(data)


def github_html(markdown: str) -> str:
    return cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE)


def assert_renders_as_written(markdown: str) -> Shown:
    meant = intended(markdown)
    shown = Shown(github_html(markdown))
    assert shown.shape.headings == meant.headings
    assert shown.shape.code_blocks == meant.code_blocks
    assert shown.shape.tables == meant.tables
    assert meant.glued == [], f"glued onto the list item before them: {meant.glued}"
    assert meant.nested == [], (f"opens a fence inside a code block whose fence is no longer than its own (make the "
                                f"outer fence longer than the inner one): {meant.nested}")
    return shown


# -- the documents --------------------------------------------------------------------------------------


DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "docs" / "examples").glob("*.md")])


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_render_as_written(path: Path) -> None:
    assert_renders_as_written(path.read_text(encoding="utf-8"))


# A code block whose text holds a fenced block of its own, fenced as long as the outer one: on GitHub the
# inner block's closing fence ends the outer block, and everything after shifts in or out of code.
NESTED = """Intro

```markdown
<details>

```yaml
a: 1
```

</details>

```

Then:

```sh
echo hi
```
"""

# The README before 62e1a07, cut short: its status example held the effective policy's fenced YAML in a
# fence of the same length, so on GitHub the rest of the README from the question example on was code.
README_BEFORE_62E1A07 = """The status comment, edited in place, the single source of truth:

<!-- example:status -->
```markdown
<!-- shepherd:status session=octo-org/widgets#1/1 -->
### 🔨 Shepherd: Working

The agent is working on this issue.

<details><summary>Effective policy</summary>

```yaml
labels:
  go: agent:go
sandbox: bwrap
```

</details>

<sub>Shepherd edits this comment as the session goes on. Commands: `/agent status`, `/agent stop`.</sub>
```
<!-- /example:status -->

A question from the agent:

<!-- example:question -->
```markdown
<!-- shepherd:question session=octo-org/widgets#1/1 id=octo-org/widgets#1/1/q1 -->
### ❓ The agent has a question

@alice, the agent working on this issue needs an answer before it can go on.
```
<!-- /example:question -->
"""


@pytest.mark.parametrize("markdown", [NESTED, README_BEFORE_62E1A07], ids=["nested", "readme-before-62e1a07"])
def test_a_fence_nested_in_a_code_block_of_the_same_length_is_flagged(markdown: str) -> None:
    with pytest.raises(AssertionError, match="opens a fence inside a code block"):
        assert_renders_as_written(markdown)


def test_a_longer_outer_fence_may_hold_a_fenced_block() -> None:
    fixed = NESTED.replace("```markdown", "````markdown").replace("</details>\n\n```", "</details>\n````")
    shown = assert_renders_as_written(fixed)
    assert shown.shape.code_blocks[0] == "<details>\n\n```yaml\na: 1\n```\n\n</details>"


def test_the_readme_shows_each_example_comment_whole_in_one_code_block() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = Shown(github_html(readme))
    for name in ("status", "question", "question_answered"):
        example = (ROOT / "docs" / "examples" / f"{name}.md").read_text(encoding="utf-8").rstrip("\n")
        assert example in shown.shape.code_blocks, f"the {name} example is not one whole code block"
    assert shown.shape.headings[-1] == "Benchmarks"  # nothing after the examples fell into a code block


# -- the templates, rendered with sample data --------------------------------------------------------


def _session(**changes):
    trigger = Trigger(repo="octo-org/widgets", issue_number=4, issue_title="Add export", mode=Mode.GO,
                      actor="alice", base_branch="main")
    return replace(decide_trigger(None, trigger, NOW).session, **changes)


def _pr_bodies() -> list[str]:
    from bot.runtime.finisher import Commit, Finisher, TestRun, shown_diffstat

    # What `git diff --stat` prints: every line indented by one space.
    diffstat = " src/export.py   | 48 ++++++++++++++++\n README.md       |  7 ++++--\n 2 files changed, 53 insertions(+), 2 deletions(-)"
    commits = [Commit("abc1234", "Add the exporter"), Commit("def5678", "Test quoting")]
    bodies = []
    for count, test, closing in (
        (2, None, []),
        (3, TestRun("pytest -q", 1, None, "F.\nFAILED test_export.py::test_quotes"), ["Commit `abc1234` closes #9."]),
    ):
        body = Finisher._body(  # noqa: SLF001 - the PR body exactly as the finisher writes it
            None, _session(done_summary="Adds CSV export."), "agent/issue-4-add-export", "main",
            commits, count, shown_diffstat(diffstat + "\n"), test, closing,
        )
        shown = Shown(github_html(body))
        assert diffstat in shown.shape.code_blocks, "the diffstat is shown line for line"
        assert not any("Diff stat" in item for item in shown.items), "Diff stat is glued onto a commit"
        assert "The agent's own summary" in shown.shape.headings
        bodies.append(body)
    return bodies


def _rendered_templates() -> dict[str, str]:
    from bot.agent.prompt import render_prompt, render_turn_message
    from bot.core.session import TurnKind
    from bot.runtime.coordination import render_coordination
    from bot.runtime.dashboard_issue import render_dashboard_issue

    failed = _session(state=State.FAILED, detail=Detail.EXIT_CODE, failure_reason="The agent exited with code 2.")
    question = render.render_question("octo-org/widgets#4/1", "q1", "Quote every field?", ["Yes", "No"],
                                      "Excel opens both.", "@alice")
    section = render.question_section(question)
    return {
        "status.md.j2": render.render_status(_session(checkpoint="Exporter written"), CONTEXT),
        "status.md.j2 (failed)": render.render_status(failed, CONTEXT, log_tail="Traceback\n```\nboom"),
        "question.md.j2": question,
        "question_answered.md.j2": render.render_question_answered("octo-org/widgets#4/1", "q1", section, "bob"),
        "question_cancelled.md.j2": render.render_question_cancelled("octo-org/widgets#4/1", "q1", section,
                                                                     withdrawn=True),
        "refusal.md.j2": render.render_refusal("mallory", "agent:go", "write"),
        "help.md.j2": render.render_help(12, "frobnicate"),
        "not_offered.md.j2": render.render_not_offered("agent:bakeoff", BAKEOFF_NOT_ON_TEMPORAL),
        "plan.md.j2": render.render_plan("octo-org/widgets#4/1", "1. Add the exporter\n2. Test it", 1, "@alice"),
        "pointer.md.j2": render.render_pointer("octo-org/widgets#4/1", 7, "https://github.com/octo-org/widgets/pull/7"),
        "policy_problems.md.j2": render.render_policy_problems(
            "octo-org/widgets#4/1", [Problem("max_turns", "must be at least 1")], ".github/shepherd.yml"),
        "pr_body.md.j2": _pr_bodies()[0],
        "pr_body.md.j2 (tests failed)": _pr_bodies()[1],
        "needs_human.md.j2": render.environment().get_template("needs_human.md.j2").render(
            marker="<!-- shepherd:needs-human -->", actor="alice", branch="agent/issue-4", reason="3 review rounds"),
        "coordination.md.j2": render_coordination("octo-org/widgets#4/1", [
            {"issue": "#5", "link": "https://github.com/octo-org/widgets/issues/5", "paths": ["src/export.py"]}]),
        "dashboard_issue.md.j2": render_dashboard_issue("octo-org/widgets", [
            _session(state=State.STUCK, stuck_reason="Which port?"),
            replace(_session(state=State.COMPLETE, pr_state=PullRequestState.OPEN, pr_number=7,
                             pr_url="https://github.com/octo-org/widgets/pull/7"), issue_number=5,
                    id="octo-org/widgets#5/1"),
            replace(failed, issue_number=6, id="octo-org/widgets#6/1"),
        ]),
        "prompt.md.j2": render_prompt(repo="octo-org/widgets", issue_number=4, title="Add export",
                                      body="Export the table.\n\n- as CSV\n- quoted", comments=[],
                                      branch="agent/issue-4", base_branch="main", worktree="/w", mode="go"),
        "turn.md.j2": render_turn_message(TurnKind.REPLY, "Quote every field."),
    }


def test_every_markdown_template_is_covered() -> None:
    covered = {name.split(" ")[0] for name in _rendered_templates()}
    assert covered == {path.name for path in (ROOT / "templates").glob("*.md.j2")}


def test_the_dashboard_issue_sample_shows_every_section() -> None:
    shown = Shown(github_html(_rendered_templates()["dashboard_issue.md.j2"]))
    assert "Failed sessions" in shown.shape.headings
    assert any(item.startswith("#6 Add export: The agent exited with code 2") for item in shown.items)


def test_templates_render_as_written() -> None:
    for title, text in _rendered_templates().items():
        try:
            assert_renders_as_written(text)
        except AssertionError as error:
            raise AssertionError(f"{title}: {error}") from None
