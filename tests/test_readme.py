"""The README shows what the test suite produced: real example comments, the write count and the flows."""

from __future__ import annotations

import re
from pathlib import Path

from bot.views.render import fence

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"


def _block(readme: str, name: str) -> str:
    match = re.search(rf"<!-- {name} -->\n(.*?)<!-- /{name} -->", readme, re.DOTALL)
    assert match, f"README has no {name} block"
    return match.group(1)


def expected_blocks() -> dict[str, str]:
    blocks = {}
    # Every example comment the suite writes is shown in the README.
    for path in sorted(EXAMPLES.glob("*.md")):
        name, text = path.stem, path.read_text()
        # The examples hold fenced blocks of their own: the outer fence must be longer than any inside.
        outer = fence(text)
        blocks[f"example:{name}"] = f"{outer}markdown\n" + text.rstrip("\n") + f"\n{outer}\n"
    blocks["example:write_count"] = f"**{(EXAMPLES / 'write_count.txt').read_text().strip()}**\n"
    blocks["example:outcomes_metrics"] = f"```text\n{(EXAMPLES / 'outcomes_metrics.txt').read_text()}```\n"
    flows = (ROOT / "docs" / "flows.md").read_text()
    # One heading level deeper inside the README.
    blocks["flows"] = "\n".join("#" + line if line.startswith("#") else line for line in flows.rstrip("\n").splitlines()) + "\n"
    return blocks


def refresh(readme: str) -> str:
    for name, body in expected_blocks().items():
        readme = re.sub(
            rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)",
            lambda m, body=body: m.group(1) + body + m.group(2),
            readme,
            flags=re.DOTALL,
        )
    return readme


def test_readme_shows_the_examples_and_flows_the_suite_produced():
    readme = (ROOT / "README.md").read_text()
    for name, body in expected_blocks().items():
        assert _block(readme, name) == body, f"README block {name} is stale: run python -m tests.test_readme"


def test_the_first_steps_say_that_github_must_reach_the_server():
    """A newcomer who reads only the top of the README learns, before `scripts/serve`, that GitHub must reach
    the server (SHEPHERD_PUBLIC_URL, a relay) and where the step-by-step guide is (issue 16)."""
    readme = (ROOT / "README.md").read_text()
    top = readme[: readme.index("\n## ")]
    assert "SHEPHERD_PUBLIC_URL" in top, "the quick start does not name SHEPHERD_PUBLIC_URL"
    assert "relay" in top, "the quick start does not say a laptop needs a relay"
    assert "(docs/setup.md)" in top, "the quick start does not link docs/setup.md"
    running = readme[readme.index("## Running it"):]
    running = running[: running.index("\n## ", 1)]
    assert "SHEPHERD_PUBLIC_URL" in running.split("| variable |")[0], "Running it does not say GitHub must reach the server"


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(refresh(path.read_text()))
