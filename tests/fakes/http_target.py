"""A tiny HTTP server on 127.0.0.1 that records what reached it: the host an agent may or may not reach."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HttpTarget:
    """GET answers `<greeting><path>`, POST echoes its body; every request is kept in `requests`."""

    def __init__(self, greeting: str = "hello from target ") -> None:
        self.greeting = greeting
        self.requests: list[dict] = []
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.reply(f"{target.greeting}{self.path}".encode())

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.reply(b"echo " + body)

            def reply(self, body: bytes) -> None:
                target.requests.append({"line": self.requestline, "headers": dict(self.headers.items())})
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # noqa: ANN002 - silence the per-request lines
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
