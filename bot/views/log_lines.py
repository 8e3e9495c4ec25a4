"""The operator's log on stderr: `text` lines or JSON lines, each carrying the context a record was given.

A record's `extra` fields (`repository`, `issue`, `session`, `delivery`, `pid`, `log_path`, ...) are
what makes a line followable; the standard formatter drops them, so both formats here print them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from bot import redaction

# The attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# Context first, in this order, so a person scanning the lines finds them in the same place.
CONTEXT_ORDER = ("repository", "issue", "session", "delivery", "state", "reason")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra` fields, the known ones first."""
    extra = {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}
    ordered = {key: extra.pop(key) for key in CONTEXT_ORDER if key in extra}
    return {**ordered, **dict(sorted(extra.items()))}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`; a value with spaces is quoted."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        head, _, rest = line.partition("\n")  # a traceback stays below the line it belongs to
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in context_of(record).items())
        head = f"{head} {pairs}" if pairs else head
        return redaction.redact(f"{head}\n{rest}" if rest else head)


def _text_value(value: Any) -> str:
    text = str(_plain(value))
    return json.dumps(text) if (not text or any(c.isspace() or c in "\"=" for c in text)) else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields, and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in context_of(record).items():
            entry.setdefault(key, _plain(value))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return redaction.redact(json.dumps(entry, ensure_ascii=False))


def configure_logging(log_format: str, stream: Any) -> None:
    """Send every log record to `stream` in the chosen format (`text` or `json`), level INFO and up."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
