"""A real git remote on loopback: bare repositories served over smart HTTP by `git http-backend`."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

import pytest

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
TEST_TOKEN = "ghs_TestInstallationToken0123456789abcdef"
TOKEN_USER = "x-access-token"
AUTHOR = {
    "GIT_AUTHOR_NAME": "Remote Human",
    "GIT_AUTHOR_EMAIL": "human@example.com",
    "GIT_COMMITTER_NAME": "Remote Human",
    "GIT_COMMITTER_EMAIL": "human@example.com",
}

Authorize = Callable[[str, str, bool], bool]


@dataclass(frozen=True)
class RemoteRequest:
    """One HTTP request the remote received."""

    method: str
    path: str
    query: str
    repo: str | None
    user: str | None
    authorised: bool
    write: bool


def accept_test_token(token: str, repo: str, write: bool) -> bool:
    """The default policy: the fixed test token may read and write every repository."""
    return token == TEST_TOKEN


def plain_env() -> dict[str, str]:
    """An environment for git that sees none of the developer's configuration (hooks, gc settings)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "LANG": "C.UTF-8",
        **AUTHOR,
    }


class GitRemote:
    """Serves `<root>/<owner>/<name>.git` at `http://127.0.0.1:<port>/<owner>/<name>.git`."""

    def __init__(self, root: Path, authorize: Authorize | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.authorize = authorize or accept_test_token
        self.requests: list[RemoteRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # -- serving ---------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        remote = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                remote._serve(self)

            def do_POST(self) -> None:  # noqa: N802
                remote._serve(self)

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        repo = _repo_of(path)
        write = "git-receive-pack" in path or "service=git-receive-pack" in parts.query
        user, token = _basic_credentials(handler.headers.get("Authorization"))
        authorised = (
            repo is not None
            and user == TOKEN_USER
            and token is not None
            and self.authorize(token, repo, write)
        )
        with self._lock:
            self.requests.append(
                RemoteRequest(handler.command, path, parts.query, repo, user, authorised, write)
            )
        if not authorised:
            _drain_body(handler)
            handler.send_response(401)
            handler.send_header("WWW-Authenticate", 'Basic realm="shepherd-test"')
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        self._run_backend(handler, path, parts.query, user or "")

    def _run_backend(self, handler: BaseHTTPRequestHandler, path: str, query: str, user: str) -> None:
        env = {
            **plain_env(),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "REQUEST_METHOD": handler.command,
            "QUERY_STRING": query,
            "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
            "REMOTE_USER": user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "true",
        }
        if handler.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = handler.headers["Content-Encoding"]
        if handler.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = handler.headers["Git-Protocol"]
        with tempfile.TemporaryFile() as errors:
            backend = subprocess.Popen(
                [HTTP_BACKEND],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
            feeder = threading.Thread(target=_feed_body, args=(handler, backend.stdin), daemon=True)
            feeder.start()
            assert backend.stdout is not None
            status, headers = 200, []
            while True:
                line = backend.stdout.readline().decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                else:
                    headers.append((name, value.strip()))
            handler.send_response(status)
            for name, value in headers:
                handler.send_header(name, value)
            handler.send_header("Connection", "close")
            handler.end_headers()
            shutil.copyfileobj(backend.stdout, handler.wfile, 65536)
            feeder.join()
            backend.wait()
        handler.close_connection = True

    def stop(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # -- repositories ----------------------------------------------------------------------

    def path_of(self, full_name: str) -> Path:
        return self.root / f"{full_name}.git"

    def url_of(self, full_name: str) -> str:
        return f"{self.base_url}/{full_name}.git"

    def git(self, full_name: str, *args: str, env: dict[str, str] | None = None) -> str:
        """Run plain git in the bare repository and return stdout."""
        return subprocess.run(
            ["git", "--git-dir", str(self.path_of(full_name)), *args],
            env={**plain_env(), **(env or {})},
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def create_repo(
        self,
        full_name: str,
        files: dict[str, str],
        default_branch: str = "main",
        commits: int = 1,
    ) -> str:
        """Create a repository whose default branch holds `files`; return its clone URL."""
        path = self.path_of(full_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(path)],
            env=plain_env(),
            check=True,
        )
        self.commit_on(full_name, default_branch, files, message="Initial commit")
        for number in range(2, commits + 1):
            tip = self.git(full_name, "rev-parse", f"refs/heads/{default_branch}").strip()
            tree = self.git(full_name, "rev-parse", f"{tip}^{{tree}}").strip()
            commit = self.git(full_name, "commit-tree", tree, "-p", tip, "-m", f"Commit {number}")
            self.git(full_name, "update-ref", f"refs/heads/{default_branch}", commit.strip(), tip)
        return self.url_of(full_name)

    def commit_on(
        self, full_name: str, branch: str, files: dict[str, str], message: str = "Human change"
    ) -> str:
        """Commit `files` on top of `branch` (created when missing), as a human pushing would."""
        ref = f"refs/heads/{branch}"
        tip = self.git(full_name, "for-each-ref", "--format=%(objectname)", ref).strip()
        with tempfile.TemporaryDirectory() as scratch:
            index_env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            work = Path(scratch) / "work"
            work.mkdir()
            if tip:
                self.git(full_name, "read-tree", tip, env=index_env)
            for name, text in files.items():
                target = work / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
            if files:
                subprocess.run(
                    ["git", "--git-dir", str(self.path_of(full_name)), "--work-tree", str(work),
                     "add", "--", "."],
                    env={**plain_env(), **index_env},
                    check=True,
                    capture_output=True,
                )
            tree = self.git(full_name, "write-tree", env=index_env).strip()
        parents = ["-p", tip] if tip else []
        commit = self.git(full_name, "commit-tree", tree, *parents, "-m", message).strip()
        self.git(full_name, "update-ref", ref, commit, *([tip] if tip else []))
        return commit

    def refs(self, full_name: str) -> dict[str, str]:
        """Every ref of the repository and the object it points to."""
        out = self.git(full_name, "for-each-ref", "--format=%(refname) %(objectname)")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def log(self, full_name: str, ref: str) -> list[str]:
        """The commit ids reachable from `ref`, newest first."""
        return self.git(full_name, "rev-list", ref).split()

    def messages(self, full_name: str, ref: str) -> list[str]:
        """The subject lines of the commits reachable from `ref`, newest first."""
        return self.git(full_name, "log", "--format=%s", ref).splitlines()

    def show(self, full_name: str, ref: str, path: str) -> str | None:
        """The text of `path` at `ref`, or None when it does not exist there."""
        result = subprocess.run(
            ["git", "--git-dir", str(self.path_of(full_name)), "show", f"{ref}:{path}"],
            env=plain_env(),
            capture_output=True,
            text=True,
        )
        return result.stdout if result.returncode == 0 else None

    def requests_for(self, full_name: str) -> list[RemoteRequest]:
        with self._lock:
            return [request for request in self.requests if request.repo == full_name]


def _repo_of(path: str) -> str | None:
    head, sep, _ = path.lstrip("/").partition(".git/")
    if not sep or head.count("/") != 1 or ".." in head.split("/"):
        return None
    return head


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode()
    except (ValueError, UnicodeDecodeError):
        return None, None
    user, sep, password = decoded.partition(":")
    return user, (password if sep else None)


def _body_chunks(handler: BaseHTTPRequestHandler) -> Iterator[bytes]:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline().strip():
                    pass
                return
            yield handler.rfile.read(size)
            handler.rfile.readline()
    remaining = int(handler.headers.get("Content-Length") or 0)
    while remaining > 0:
        chunk = handler.rfile.read(min(remaining, 65536))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def _feed_body(handler: BaseHTTPRequestHandler, stdin) -> None:  # type: ignore[no-untyped-def]
    try:
        for chunk in _body_chunks(handler):
            stdin.write(chunk)
    except (BrokenPipeError, ValueError):
        pass
    finally:
        try:
            stdin.close()
        except BrokenPipeError:
            pass


def _drain_body(handler: BaseHTTPRequestHandler) -> None:
    for _ in _body_chunks(handler):
        pass


@pytest.fixture
def git_remote(tmp_path: Path) -> Iterator[GitRemote]:
    """A smart-HTTP git remote on loopback accepting `TEST_TOKEN`; stopped after the test."""
    remote = GitRemote(tmp_path / "remote")
    try:
        yield remote
    finally:
        remote.stop()
