"""The shape of an installation's GitHub client as every other layer sees it: gidgethub's calls, paced and
allow-listed behind the one door (`bot.github.client.InstallationClient` is the one implementation)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from bot.github.pacing import Priority

UrlVars = Mapping[str, Any]


class GitHubReader(Protocol):
    """Reads as one installation: all a handler is given (handlers write nothing; see `ReadsOnly`)."""

    async def getitem(self, url: str, url_vars: UrlVars = ..., **kwargs: Any) -> Any: ...

    async def getstatus(self, url: str, url_vars: UrlVars = ..., **kwargs: Any) -> int: ...

    def getiter(self, url: str, url_vars: UrlVars = ..., **kwargs: Any) -> AsyncIterator[Any]: ...


class GitHub(GitHubReader, Protocol):
    """Reads and writes as one installation. Writes take a `priority` for the installation's write gate."""

    async def post(self, url: str, url_vars: UrlVars = ..., *, data: Any,
                   priority: Priority | None = None, **kwargs: Any) -> Any: ...

    async def patch(self, url: str, url_vars: UrlVars = ..., *, data: Any,
                    priority: Priority | None = None, **kwargs: Any) -> Any: ...

    async def put(self, url: str, url_vars: UrlVars = ..., *, data: Any = b"",
                  priority: Priority | None = None, **kwargs: Any) -> Any: ...

    async def delete(self, url: str, url_vars: UrlVars = ..., *, data: Any = b"",
                     priority: Priority | None = None, **kwargs: Any) -> None: ...


class ReadsOnly:
    """An installation's client with its writes taken away: what the handlers are handed, so that every
    write a person sees on GitHub leaves through the engine's Publisher or another runtime service, never
    from a handler (README "How it is built"). A write through it is an AttributeError, and mypy refuses it
    before that."""

    def __init__(self, gh: GitHubReader) -> None:
        self._gh = gh

    async def getitem(self, url: str, url_vars: UrlVars = {}, **kwargs: Any) -> Any:
        return await self._gh.getitem(url, url_vars, **kwargs)

    async def getstatus(self, url: str, url_vars: UrlVars = {}, **kwargs: Any) -> int:
        return await self._gh.getstatus(url, url_vars, **kwargs)

    def getiter(self, url: str, url_vars: UrlVars = {}, **kwargs: Any) -> AsyncIterator[Any]:
        return self._gh.getiter(url, url_vars, **kwargs)
