"""Cleans text on its way between people and agents: what an agent reads, and what Shepherd re-posts.

Two directions, two jobs:
- `clean_for_agent`: issue text and human replies lose hidden HTML (comments, `<details>` stays but
  invisible markup goes), invisible and bidirectional-control characters, and Shepherd's own markers,
  so nobody can hide instructions from the maintainer who vouches for the text.
- `neutralise_for_github`: text an agent wrote and Shepherd re-posts cannot @mention people, close
  issues through closing keywords, or forge a Shepherd marker.

It is also the one home of escaping for where that text lands: `code_span` for a name in Markdown
(file names), `terminal_line` for the operator's terminal (`shepherd status`).
"""

from __future__ import annotations

import re
import unicodedata

MARKER_PREFIX = "shepherd:"

# <!-- ... --> comments, including unterminated ones (GitHub hides those to the end of the text).
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
# Markup GitHub renders invisibly or that can hide text from a reader.
_HIDDEN_TAGS = re.compile(
    r"<(?P<tag>script|style|template|noscript|iframe|object)\b[^>]*>.*?(?:</(?P=tag)\s*>|\Z)",
    re.DOTALL | re.IGNORECASE,
)
_HIDDEN_ATTRIBUTE_ELEMENT = re.compile(
    r"<(?P<tag>[a-z][a-z0-9]*)\b[^>]*\b(?:hidden|style\s*=\s*[\"'][^\"']*display\s*:\s*none)[^>]*>"
    r".*?(?:</(?P=tag)\s*>|\Z)",
    re.DOTALL | re.IGNORECASE,
)
_MARKER = re.compile(r"shepherd\s*:\s*[a-z-]+(?:\s+[a-z_]+=\S*)*", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w`/])@(?=[A-Za-z0-9][A-Za-z0-9-]*)")
# Every way GitHub reads "this closes that": a closing keyword, a colon and/or spaces, then an issue
# reference in any of its spellings: `#2`, `owner/repo#2`, `GH-2`, an issue or pull URL, a Markdown link
# (`[#2](url)`), or `#` written as an HTML entity. The reference is kept; "issue " goes between them.
_REFERENCE = (
    r"(?:[\w.-]+/[\w.-]+)?#\d+"
    r"|GH-\d+"
    r"|https?://\S+/(?:issues|pull)/\d+"
    r"|\[[^\]\n]*\]\("
    r"|&(?:#0*35|#[xX]0*23|num);\d+"
)
_CLOSING = re.compile(
    rf"\b(close[sd]?|fix(?:e[sd])?|resolve[sd]?)(\s*:\s*|\s+)(?=(?:{_REFERENCE}))",
    re.IGNORECASE,
)
_CLOSED_REFERENCE = re.compile(
    rf"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)(?:\s*:\s*|\s+)({_REFERENCE})", re.IGNORECASE
)
_ZERO_WIDTH_JOINER = "\u200d"


def _visible(char: str) -> bool:
    if char in "\n\t":
        return True
    category = unicodedata.category(char)
    # Cf: format characters (zero-width spaces and joiners, bidi controls, tag characters);
    # Co/Cn: private use and unassigned; Cc: control characters other than newline and tab.
    return category not in {"Cf", "Co", "Cn", "Cc"}


def remove_invisible(text: str) -> str:
    return "".join(char for char in text if _visible(char))


def clean_for_agent(text: str | None) -> str:
    """Issue or comment text as a person sees it: no hidden HTML, no invisible characters, no markers."""
    if not text:
        return ""
    text = text.replace("\r\n", "\n")
    text = _HTML_COMMENT.sub("", text)
    text = _HIDDEN_TAGS.sub("", text)
    text = _HIDDEN_ATTRIBUTE_ELEMENT.sub("", text)
    text = remove_invisible(text)
    text = _MARKER.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def neutralise_for_github(text: str | None) -> str:
    """Agent-written text made safe to re-post: no pings, no closing keywords, no Shepherd markers."""
    if not text:
        return ""
    text = remove_invisible(text.replace("\r\n", "\n"))
    text = _HTML_COMMENT.sub("", text)
    text = _MARKER.sub("(marker removed)", text)
    text = _MENTION.sub("@" + _ZERO_WIDTH_JOINER, text)  # renders as "@name" but notifies nobody
    text = _CLOSING.sub(lambda m: f"{m.group(1)}{m.group(2)}issue ", text)
    return text.strip()


def closing_references(text: str | None) -> list[str]:
    """The issue references `text` would close on GitHub (`#2`, `GH-2`, a URL, ...), in order."""
    return [match.group(1) for match in _CLOSED_REFERENCE.finditer(text or "")]


def marker(kind: str, **fields: object) -> str:
    """The hidden marker Shepherd puts in every comment it writes, e.g. `<!-- shepherd:status session=x -->`."""
    parts = " ".join(f"{key}={value}" for key, value in fields.items())
    return f"<!-- {MARKER_PREFIX}{kind}{(' ' + parts) if parts else ''} -->"


def find_marker(body: str | None, kind: str) -> dict[str, str] | None:
    """The fields of a Shepherd marker of `kind` in `body`, or None. Trust it only in the bot's comments."""
    if not body:
        return None
    match = re.search(rf"<!-- {re.escape(MARKER_PREFIX)}{re.escape(kind)}((?: [a-z_]+=\S+)*) -->", body)
    if match is None:
        return None
    fields = {}
    for part in match.group(1).split():
        key, _, value = part.partition("=")
        fields[key] = value
    return fields


def code_span(text: str) -> str:
    """`text` as one inline code span whatever it holds: a backtick run longer than any inside it,
    padded when it starts or ends with one, and line breaks and control characters shown, not kept
    (a file name with a backtick, a `](url)` or a newline must not become a link or a new line)."""
    flat = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


# Text from strangers and agents on the operator's terminal: an escape sequence must be shown, never
# obeyed (C0 and C1 controls, DEL; whitespace runs become single spaces).
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_line(text: str, limit: int = 160) -> str:
    """`text` as one terminal line: controls written as \\xNN, cut at `limit` characters."""
    shown = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", " ".join(text.split()))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
