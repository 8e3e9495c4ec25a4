"""A scripted model server on loopback, for driving the real agent CLIs in tests.

It speaks two wire formats from one set of scenarios:
- ``POST /v1/messages``: the Anthropic Messages API, for Claude Code (agent_cli.md §2.4);
- ``POST /v1/responses``: the OpenAI Responses API, streamed, for the Codex CLI (agent_cli.md §3.4).
  Claude Code's tool blocks are mapped onto Codex's tools: ``bash`` and ``read`` become an
  ``exec_command`` function call, ``write`` an ``apply_patch`` custom tool call adding the file,
  ``text`` an assistant message.

Scripting is stateless, because both CLIs resend the whole conversation with every request:
- the scenario is the registered one whose marker occurs in the first real user prompt (a user
  message without a ``tool_result``; for Codex, one that is not a ``<...>`` context block);
- the exchange is the number of real user messages minus one (0 for the first turn, 1 for the
  reply that resumed it, ...);
- the step is the number of model responses since the last real user message (assistant messages
  for Claude; for Codex, runs of tool calls, since each non-final response carries at least one).
Requests without tools (side requests, such as Claude Code's title generation) get a short text.
Every request is recorded for assertions. The harness supplies the working directory, which is
substituted for ``{cwd}`` in tool inputs, so nothing depends on how the CLI lays out its prompt;
for Codex without one, the last ``<cwd>`` of the conversation's environment context is used.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shlex
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

MODEL = "shepherd-test-model"
SIDE_REPLY = "Shepherd test"
DEFAULT_FINAL_TEXT = "Finished."
NO_SCENARIO = "no scripted scenario matches this conversation"
# The history items of Codex's tool calls (each is answered by a matching ``*_output`` item).
CODEX_CALLS = frozenset({"function_call", "custom_tool_call", "local_shell_call"})
_CWD = re.compile(r"<cwd>(.*?)</cwd>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Block:
    """One content block of a scripted assistant message."""

    kind: str  # "text" or "tool_use"
    text: str = ""
    name: str = ""
    input: dict = dataclasses.field(default_factory=dict)


def text(content: str) -> Block:
    return Block("text", text=content)


def tool(name: str, **tool_input: Any) -> Block:
    return Block("tool_use", name=name, input=tool_input)


def write(path: str, content: str) -> Block:
    """Claude Code's Write tool; ``path`` may use ``{cwd}``."""
    return tool("Write", file_path=path, content=content)


def bash(command: str, description: str = "Run a command") -> Block:
    return tool("Bash", command=command, description=description)


def read(path: str) -> Block:
    return tool("Read", file_path=path)


def edit(path: str, old: str, new: str) -> Block:
    return tool("Edit", file_path=path, old_string=old, new_string=new)


# A scenario: for each exchange (real user message), the assistant messages to send in order.
Exchange = Sequence[Sequence[Block]]


@dataclasses.dataclass
class Scenario:
    marker: str
    exchanges: Sequence[Exchange]
    cwd: str = ""


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    scenario: str | None = None
    exchange: int | None = None
    step: int | None = None
    status: int = 200


class ModelServer:
    """The server plus its scripts and request log; use as a context manager or the fixture."""

    def __init__(self) -> None:
        self._scenarios: list[Scenario] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-model", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ModelServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def add_scenario(self, marker: str, exchanges: Sequence[Exchange], *, cwd: str = "") -> None:
        with self._lock:
            self._scenarios.append(Scenario(marker, exchanges, cwd))

    def main_requests(self, marker: str | None = None) -> list[RecordedRequest]:
        """The scripted (tool-carrying) requests, optionally of one scenario only."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.step is not None and (marker is None or r.scenario == marker)
            ]

    def next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}_{next(self._ids):024d}"

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def choose(self, body: dict) -> tuple[Scenario | None, int, int]:
        """The scenario, exchange and step for a main-loop Messages API request."""
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        real = [i for i, m in enumerate(messages) if m.get("role") == "user" and _is_real_user(m)]
        if not real:
            return None, 0, 0
        first_prompt = _message_text(messages[real[0]])
        step = sum(1 for m in messages[real[-1] :] if m.get("role") == "assistant")
        return self._scenario_for(first_prompt), len(real) - 1, step

    def choose_codex(self, body: dict) -> tuple[Scenario | None, int, int]:
        """The scenario, exchange and step for a Responses API request (the whole history in ``input``)."""
        items = [i for i in body.get("input", []) if isinstance(i, dict)]
        real = [n for n, item in enumerate(items) if _is_real_codex_user(item)]
        if not real:
            return None, 0, 0
        first_prompt = _message_text(items[real[0]])
        since = [item.get("type") for item in items[real[-1] :]]
        # A response's calls sit together in the history, followed by their outputs.
        step = sum(1 for n, kind in enumerate(since) if kind in CODEX_CALLS and (n == 0 or since[n - 1] not in CODEX_CALLS))
        return self._scenario_for(first_prompt), len(real) - 1, step

    def _scenario_for(self, first_prompt: str) -> Scenario | None:
        with self._lock:
            for scenario in self._scenarios:
                if scenario.marker in first_prompt:
                    return scenario
        return None


def _is_real_user(message: dict) -> bool:
    content = message.get("content")
    if isinstance(content, str):
        return True
    return not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content or [])


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


def _is_real_codex_user(item: dict) -> bool:
    """A user message the human (or Shepherd) wrote, not one of Codex's ``<...>`` context blocks."""
    if item.get("type", "message") != "message" or item.get("role") != "user":
        return False
    text = _message_text(item).lstrip()
    return bool(text) and not text.startswith("<") and not text.startswith("# AGENTS.md")


def _codex_cwd(body: dict) -> str:
    """The last ``<cwd>`` of the conversation: Codex appends a new one when resumed elsewhere."""
    found = [m for item in body.get("input", []) if isinstance(item, dict) for m in _CWD.findall(_message_text(item))]
    return found[-1].strip() if found else ""


def _substitute(value: Any, cwd: str) -> Any:
    if isinstance(value, str):
        return value.replace("{cwd}", cwd)
    if isinstance(value, dict):
        return {k: _substitute(v, cwd) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, cwd) for v in value]
    return value


def _handler_for(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # the request log is `server.requests`; stderr noise helps nobody

        def do_HEAD(self) -> None:
            server.record(RecordedRequest("HEAD", self.path, dict(self.headers), None, status=404))
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            server.record(RecordedRequest("GET", self.path, dict(self.headers), None, status=404))
            self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            recorded = RecordedRequest("POST", self.path, dict(self.headers), body)
            if self.path.split("?")[0] == "/v1/responses" and isinstance(body, dict):
                self._responses(body, recorded)
                return
            if self.path.split("?")[0] != "/v1/messages" or not isinstance(body, dict):
                recorded.status = 404
                server.record(recorded)
                self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not found"}})
                return
            if not body.get("tools"):
                server.record(recorded)
                self._reply(body, [text(SIDE_REPLY)], "end_turn")
                return
            scenario, exchange, step = server.choose(body)
            recorded.exchange, recorded.step = exchange, step
            if scenario is None:
                recorded.status = 500
                server.record(recorded)
                self._send_json(500, {"type": "error", "error": {"type": "api_error", "message": NO_SCENARIO}})
                return
            recorded.scenario = scenario.marker
            server.record(recorded)
            steps = scenario.exchanges[exchange] if exchange < len(scenario.exchanges) else []
            if step < len(steps):
                blocks = [dataclasses.replace(b, input=_substitute(b.input, scenario.cwd)) for b in steps[step]]
            else:
                blocks = [text(DEFAULT_FINAL_TEXT)]
            stop = "tool_use" if any(b.kind == "tool_use" for b in blocks) else "end_turn"
            self._reply(body, blocks, stop)

        def _responses(self, body: dict, recorded: RecordedRequest) -> None:
            """Answer one Codex model turn from the script, as a Responses API event stream."""
            if not body.get("tools"):
                server.record(recorded)
                self._stream_response(body, [_codex_item(text(SIDE_REPLY), "", server.next_id)])
                return
            scenario, exchange, step = server.choose_codex(body)
            recorded.exchange, recorded.step = exchange, step
            if scenario is None:
                recorded.status = 500
                server.record(recorded)
                self._send_json(500, {"error": {"type": "server_error", "message": NO_SCENARIO}})
                return
            recorded.scenario = scenario.marker
            server.record(recorded)
            cwd = scenario.cwd or _codex_cwd(body)
            steps = scenario.exchanges[exchange] if exchange < len(scenario.exchanges) else []
            blocks = steps[step] if step < len(steps) else [text(DEFAULT_FINAL_TEXT)]
            try:
                items = [_codex_item(dataclasses.replace(b, input=_substitute(b.input, cwd)), cwd, server.next_id)
                         for b in blocks]
            except ValueError as error:
                recorded.status = 500
                self._send_json(500, {"error": {"type": "server_error", "message": str(error)}})
                return
            self._stream_response(body, items)

        def _stream_response(self, body: dict, items: list[dict]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            for event, data in _codex_events(server.next_id("resp"), body.get("model") or MODEL, items):
                self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

        def _send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _reply(self, body: dict, blocks: Sequence[Block], stop: str) -> None:
            content = [_content(b, server.next_id("toolu")) for b in blocks]
            message = {
                "id": server.next_id("msg"),
                "type": "message",
                "role": "assistant",
                "model": body.get("model") or MODEL,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 10,
                    "output_tokens": 0,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                },
            }
            if not body.get("stream"):
                message.update(content=content, stop_reason=stop)
                message["usage"]["output_tokens"] = 5
                self._send_json(200, message)
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            for event, data in _events(message, content, stop):
                self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
            self.close_connection = True

    return Handler


def _content(block: Block, tool_id: str) -> dict:
    if block.kind == "tool_use":
        return {"type": "tool_use", "id": tool_id, "name": block.name, "input": block.input}
    return {"type": "text", "text": block.text}


def _events(message: dict, content: list[dict], stop: str) -> Iterator[tuple[str, dict]]:
    """The SSE events in the order Claude Code 2.1.197 accepts (agent_cli.md §2.4)."""
    yield "message_start", {"type": "message_start", "message": message}
    for index, block in enumerate(content):
        if block["type"] == "tool_use":
            start = dict(block, input={})
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": None},
        "usage": {"output_tokens": 5},
    }
    yield "message_stop", {"type": "message_stop"}


def _codex_item(block: Block, cwd: str, next_id: Any) -> dict:
    """One Responses API output item for a scripted block, on Codex's tools (agent_cli.md §3.3)."""
    if block.kind == "text":
        return {
            "type": "message", "role": "assistant", "id": next_id("msg"), "status": "completed",
            "content": [{"type": "output_text", "text": block.text, "annotations": []}],
        }
    if block.name == "Write":
        return {
            "type": "custom_tool_call", "id": next_id("ctc"), "call_id": next_id("call"), "status": "completed",
            "name": "apply_patch", "input": _add_file_patch(block.input["file_path"], block.input["content"]),
        }
    if block.name in ("Bash", "Read"):
        command = block.input["command"] if block.name == "Bash" else f"cat {shlex.quote(block.input['file_path'])}"
        return {
            "type": "function_call", "id": next_id("fc"), "call_id": next_id("call"), "status": "completed",
            "name": "exec_command", "arguments": json.dumps({"cmd": command, "workdir": cwd}),
        }
    raise ValueError(f"the Codex side of the model server has no mapping for the {block.name} tool")


def _add_file_patch(path: str, content: str) -> str:
    """An ``apply_patch`` patch writing ``content`` to ``path``, like Claude Code's Write.

    Codex 0.169.0 overwrites an existing file on ``Add File``; every line it writes ends in a newline.
    """
    lines = "".join(f"+{line}\n" for line in content.splitlines())
    return f"*** Begin Patch\n*** Add File: {path}\n{lines}*** End Patch\n"


def _codex_events(response_id: str, model: str, items: list[dict]) -> Iterator[tuple[str, dict]]:
    """The Responses API stream Codex 0.169.0 accepts (agent_cli.md §3.4); it acts on ``output_item.done``."""
    response = {
        "id": response_id, "object": "response", "created_at": int(time.time()), "model": model,
        "status": "in_progress", "output": [],
    }
    yield "response.created", {"type": "response.created", "response": response}
    for index, item in enumerate(items):
        yield "response.output_item.added", {"type": "response.output_item.added", "output_index": index, "item": item}
        yield "response.output_item.done", {"type": "response.output_item.done", "output_index": index, "item": item}
    usage = {
        "input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15,
    }
    completed = dict(response, status="completed", output=items, usage=usage)
    yield "response.completed", {"type": "response.completed", "response": completed}


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    """A running scripted model server, stopped after the test."""
    with ModelServer() as server:
        yield server
