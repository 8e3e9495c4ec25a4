"""Webhook handlers, one module per behaviour, each with its own Router, composed here in one place.

A handler turns a webhook into a domain event and returns: it never runs git, never waits on an agent,
never reads the environment and never builds a client. Signature: ``async def on_x(event, gh, **deps)``,
where ``gh`` is the installation's client from the one door to GitHub and ``deps`` are the keyword
arguments the consumer dispatches with (``github``, ``store``, ``clock``, ...).
"""

from gidgethub import routing

from handlers import comments, dashboard, dependencies, installation, pull_requests, triggers


def compose_router() -> routing.Router:
    """The one router the consumer dispatches through."""
    return routing.Router(
        installation.router, triggers.router, comments.router, pull_requests.router, dashboard.router,
        dependencies.router,
    )
