"""Installing the App creates the trigger labels (issue 16): `agent:go` and `agent:plan`, with a colour and a
description, in every repository of a new installation and in every repository added later."""

from __future__ import annotations

from bot.core.policy import Labels
from bot.github.labels import LOOKS
from tests.conversation_support import INSTALLATION, REPO, Bed, bed  # noqa: F401 - fixture
from tests.fakes import payloads

pytest_plugins = ["tests.fakes.plugin"]

TRIGGERS = {Labels().go: LOOKS["go"], Labels().plan: LOOKS["plan"]}


def looks(bed: Bed, full_name: str) -> dict[str, tuple[str, str | None]]:
    labels = bed.fake._repo(full_name).labels.values()  # noqa: SLF001 - the fake's view of the repository
    return {label["name"]: (label["color"], label.get("description")) for label in labels}


async def test_a_new_installation_gets_the_trigger_labels(bed: Bed) -> None:
    await bed.deliver("installation", payloads.installation_event(bed.fake, "created", INSTALLATION))
    assert looks(bed, REPO) == {name: (look.color, look.description) for name, look in TRIGGERS.items()}


async def test_added_repositories_get_them_and_existing_labels_are_left_alone(bed: Bed) -> None:
    bed.fake.add_repo("octo-org/gadgets")
    bed.fake.add_label("octo-org/gadgets", "agent:go", color="123456", description="ours")
    added = payloads.installation_repositories_event(bed.fake, "added", INSTALLATION, ["octo-org/gadgets"])
    await bed.deliver("installation_repositories", added)
    assert looks(bed, "octo-org/gadgets") == {
        "agent:go": ("123456", "ours"),
        "agent:plan": (LOOKS["plan"].color, LOOKS["plan"].description),
    }
    assert looks(bed, REPO) == {}  # only the added repository


async def test_a_repository_s_own_label_names_are_the_ones_created(bed: Bed) -> None:
    # The policy on the default branch renames the go label: that name is the one people will use.
    bed.fake.set_file(REPO, ".github/shepherd.yml", "labels:\n  go: shepherd-go\n")
    await bed.deliver("installation", payloads.installation_event(bed.fake, "created", INSTALLATION))
    assert looks(bed, REPO) == {
        "shepherd-go": (LOOKS["go"].color, LOOKS["go"].description),
        "agent:plan": (LOOKS["plan"].color, LOOKS["plan"].description),
    }


async def test_a_policy_that_is_not_valid_gets_the_default_names(bed: Bed) -> None:
    bed.fake.add_repo("octo-org/gadgets")
    bed.fake.set_file("octo-org/gadgets", ".github/shepherd.yml", "labels:\n  go: shepherd-go\nmax_turns: many\n")
    added = payloads.installation_repositories_event(bed.fake, "added", INSTALLATION, ["octo-org/gadgets"])
    await bed.deliver("installation_repositories", added)
    assert set(looks(bed, "octo-org/gadgets")) == set(TRIGGERS)


async def test_a_handler_is_handed_a_client_that_cannot_write() -> None:
    """The router hands every handler the installation's client with its writes taken away: a handler that
    tried to post would fail, and nothing would reach GitHub."""
    from gidgethub import routing, sansio

    from handlers import ShapedRouter

    sent: list[str] = []

    class Client:
        async def getitem(self, url, url_vars={}, **kwargs):
            return {"read": url}

        async def post(self, url, url_vars={}, *, data, **kwargs):  # what a handler must never reach
            sent.append(url)

    seen: list[object] = []
    inner = routing.Router()

    @inner.register("issues", action="opened")
    async def writer(event, gh, **_):
        seen.append(await gh.getitem("/repos/o/r"))
        await gh.post("/repos/o/r/issues/1/comments", data={"body": "hi"})

    payload = {"action": "opened", "issue": {"number": 1, "title": "t", "user": {"login": "a"}, "labels": []},
               "repository": {"full_name": "o/r", "name": "r", "owner": {"login": "o"}},
               "sender": {"login": "a"}, "installation": {"id": 1}}
    event = sansio.Event(payload, event="issues", delivery_id="d1")
    try:
        await ShapedRouter(inner).dispatch(event, Client())
    except AttributeError as error:
        assert "post" in str(error)
    else:
        raise AssertionError("the handler's post went through")
    assert seen == [{"read": "/repos/o/r"}] and sent == []
