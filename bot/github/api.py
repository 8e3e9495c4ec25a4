"""The shape of an installation's GitHub client as every other layer sees it: gidgethub's calls, paced and
allow-listed behind the one door (`bot.github.client.InstallationClient` is the one implementation)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from bot.github.pacing import Priority

UrlVars = Mapping[str, Any]


class GitHub(Protocol):
    """Reads and writes as one installation. Writes take a `priority` for the installation's write gate."""

    async def getitem(self, url: str, url_vars: UrlVars = ..., **kwargs: Any) -> Any: ...

    async def getstatus(self, url: str, url_vars: UrlVars = ..., **kwargs: Any) -> int: ...

    def getiter(self, url: str, url_vars: UrlVars = ..., **kwargs: Any) -> AsyncIterator[Any]: ...

    async def post(self, url: str, url_vars: UrlVars = ..., *, data: Any,
                   priority: Priority | None = None, **kwargs: Any) -> Any: ...

    async def patch(self, url: str, url_vars: UrlVars = ..., *, data: Any,
                    priority: Priority | None = None, **kwargs: Any) -> Any: ...

    async def put(self, url: str, url_vars: UrlVars = ..., *, data: Any = b"",
                  priority: Priority | None = None, **kwargs: Any) -> Any: ...

    async def delete(self, url: str, url_vars: UrlVars = ..., *, data: Any = b"",
                     priority: Priority | None = None, **kwargs: Any) -> None: ...
