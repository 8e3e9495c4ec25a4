"""The Finisher against the strict fake and a real git remote: one pushed branch, one PR, a verified body."""

from __future__ import annotations

from bot.runtime.finisher import LEFTOVER_COMMIT_MESSAGE, Finisher
from bot.workspace.workspaces import session_folder
from bot.views.render import fence
from bot.core.sanitize import find_marker
from bot.core.session import (
    FinishWork,
    PullRequestClosed,
    PullRequestOpened,
    PullRequestState,
    PullRequestUpdated,
    PushFailed,
    ReviewFeedback,
    SlotGranted,
    State,
    TurnStarted,
    TurnKind,
)
from bot.store.database import Store
from tests.finishing_bed import (  # noqa: F401 - the fixture
    ACTOR,
    REPO,
    agent_commit,
    bed,
    prepare_worktree,
    triggered,
    turn_done,
)

SUMMARY = "Added the export button. Fixes #1 and pings @bob. <!-- shepherd:status session=x -->"


async def _finish(bed, session, **policy):
    command = bed.finish_command()
    return list(await bed.finisher.finish(session, command, bed.context(session, **policy)))


def _pushed(bed, branch):
    return bed.remote.refs(REPO).get(f"refs/heads/{branch}")


async def test_done_pushes_the_branch_with_a_token_and_opens_one_pr_with_a_verified_body(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    sha = await agent_commit(bed, tree, {"src/export.py": "def export():\n    return 1\n"}, "Add export")
    (tree / "notes.txt").write_text("left behind\n")  # uncommitted: Shepherd commits it as the bot
    session = turn_done(bed, session, SUMMARY)

    events = await _finish(bed, session)

    assert len(events) == 1 and isinstance(events[0], PullRequestOpened), events
    opened = events[0]
    head = _pushed(bed, session.branch)
    assert head == opened.head_sha and head != sha
    assert bed.remote.messages(REPO, session.branch)[:2] == [LEFTOVER_COMMIT_MESSAGE, "Add export"]
    author = bed.remote.git(REPO, "log", "-1", "--format=%an <%ae>", session.branch).strip()
    assert author == f"{bed.fake.bot_login} <{bed.fake.bot_id}+{bed.fake.bot_login}@users.noreply.github.com>"
    assert bed.remote.show(REPO, session.branch, "notes.txt") == "left behind\n"
    assert bed.remote.refs(REPO)["refs/heads/main"] == bed.remote.log(REPO, "main")[0]  # main untouched
    pushes = [r for r in bed.remote.requests_for(REPO) if r.write and r.authorised]
    assert pushes and all(r.user == "x-access-token" for r in pushes)

    pulls = bed.fake.pulls(REPO)
    assert len(pulls) == 1
    pull = pulls[0]
    assert (pull["number"], pull["html_url"]) == (opened.number, opened.url)
    assert pull["head"]["ref"] == session.branch and pull["base"]["ref"] == "main"
    assert pull["title"] == "Add an export button" and pull["draft"] is False
    body = pull["body"]
    assert body.startswith(f"Closes #{session.issue_number}\n")
    assert "Add export" in body and LEFTOVER_COMMIT_MESSAGE in body
    assert "src/export.py" in body and "notes.txt" in body and "2 files changed" in body
    assert "no `test` command is configured" in body
    agent_part = body.split("### The agent's own summary", 1)[1]
    assert "Added the export button." in agent_part
    assert "@bob" not in body.replace("@\u200dbob", "")  # the mention is defused
    assert "Fixes #1" not in body and "Fixes issue #1" in agent_part
    assert "shepherd:status" not in body
    assert find_marker(body, "pr") == {"session": session.id}
    assert bed.fake.review_requests(REPO, opened.number) == [ACTOR]

    # The push token was minted for this repository only, with contents and pull requests.
    minted = [c for c in bed.fake.calls_to("apps/create-installation-access-token") if c.body]
    assert minted and minted[-1].body["repositories"] == ["web"]
    assert minted[-1].body["permissions"] == {"contents": "write", "pull_requests": "write"}

    # The core takes it: complete, with the PR recorded.
    session = bed.apply(session, opened)
    assert session.state == State.COMPLETE and session.pr_number == opened.number


async def test_failing_tests_open_a_draft_with_the_exit_code_and_the_tail(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"src/export.py": "broken\n"}, "Add export")
    session = turn_done(bed, session, "Done.")
    test = "echo running in $PWD; echo FAILED test_export >&2; test -z \"$GITHUB_TOKEN\" && exit 3"

    events = await _finish(bed, session, test=test)

    assert isinstance(events[0], PullRequestOpened), events
    pull = bed.fake.pull(REPO, events[0].number)
    assert pull["draft"] is True
    assert f"`{test}` exited with code 3, so this pull request is a draft." in pull["body"]
    assert "FAILED test_export" in pull["body"]
    assert f"running in {tree}" in pull["body"]  # it ran in the worktree
    assert (bed.data_dir / "sessions" / "s1" / "test.log").read_text().count("FAILED test_export") == 1


async def test_passing_tests_and_draft_policy(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")

    events = await _finish(bed, session, test="true", draft=True)

    pull = bed.fake.pull(REPO, events[0].number)
    assert "`true` exited with code 0." in pull["body"]
    assert "Last lines of the test output" not in pull["body"]
    assert pull["draft"] is True  # the policy says so


async def test_a_redelivered_done_finds_the_pr_and_opens_no_second_one(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    first = await _finish(bed, session)
    again = await _finish(bed, session)  # same FinishWork run again after a restart

    assert isinstance(again[0], PullRequestOpened) and again[0].number == first[0].number
    assert len(bed.fake.pulls(REPO)) == 1
    assert len(bed.fake.calls_to("pulls/create")) == 1
    assert not bed.fake.calls_to("pulls/update")  # the body was already right


async def test_a_restart_with_an_empty_store_finds_shepherds_own_pr(bed, tmp_path):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    first = await _finish(bed, session)
    amnesiac = Store.open(tmp_path / "lost.db")
    try:
        finisher = Finisher(bed.github, bed.workspaces, bed.workspaces.git, amnesiac, None, clock=lambda: 0.0,
                            parent_env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, poll=0.02)
        again = list(await finisher.finish(session, bed.finish_command(), bed.context(session)))
    finally:
        amnesiac.close()

    assert again[0] == first[0]
    assert len(bed.fake.calls_to("pulls/create")) == 1


async def test_a_pr_whose_creation_answer_was_lost_and_that_was_merged_meanwhile_is_not_opened_twice(bed):
    # Found by the chaos test: GitHub opened the PR but the answer was lost (a 502 after it applied the
    # write, or a kill); a maintainer merged it before Shepherd asked again. The retry opened a second PR.
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    [first] = await _finish(bed, session)
    bed.fake.merge_pull(REPO, first.number)

    events = await _finish(bed, session)  # the outbox runs the FinishWork again

    assert [p["number"] for p in bed.fake.pulls(REPO)] == [first.number]
    assert len(bed.fake.calls_to("pulls/create")) == 1
    assert events == [PullRequestOpened(first.number, first.url, first.head_sha),
                      PullRequestClosed(merged=True, number=first.number)]
    after = session
    for event in events:
        after = bed.apply(after, event)
    assert (after.pr_number, after.pr_state, after.state) == (first.number, PullRequestState.MERGED, State.COMPLETE)


async def test_a_closed_pr_of_an_earlier_session_on_the_same_branch_is_not_taken_for_this_one(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    earlier = bed.fake.add_pull(REPO, head=session.branch, title="Earlier", user=bed.fake.bot_login,
                                body="<!-- shepherd:pr session=%s#earlier -->\nBefore." % session.id)
    bed.fake.close_pull(REPO, earlier["number"])

    [opened] = await _finish(bed, session)

    assert isinstance(opened, PullRequestOpened) and opened.number != earlier["number"]
    assert bed.fake.pull(REPO, earlier["number"])["body"].endswith("Before.")


async def test_a_persons_pr_from_the_agent_branch_is_neither_adopted_nor_edited(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    theirs = bed.fake.add_pull(REPO, head=session.branch, title="Mine now",
                               body="<!-- shepherd:pr session=%s -->\nMy words." % session.id, user="mallory")

    events = await _finish(bed, session)

    assert len(events) == 1 and isinstance(events[0], PushFailed), events
    assert session.branch in events[0].reason and "did not open" in events[0].reason
    assert bed.fake.pull(REPO, theirs["number"])["body"].endswith("My words.")
    assert not bed.fake.calls_to("pulls/update")
    assert [p["number"] for p in bed.fake.pulls(REPO)] == [theirs["number"]]


async def test_a_review_round_pushes_to_the_same_branch_and_keeps_one_pr(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "First version.")
    opened = (await _finish(bed, session))[0]
    session = bed.apply(session, opened)

    session = bed.apply(session, ReviewFeedback("review:1", "alice", "Please rename a.txt"))
    assert session.state == State.QUEUED and session.pending_turn.kind == TurnKind.REVIEW
    session = bed.apply(session, SlotGranted())
    session = bed.apply(session, TurnStarted(None))
    await agent_commit(bed, tree, {"b.txt": "b\n"}, "Rename per review")
    session = turn_done(bed, session, "Renamed.")
    command = bed.finish_command()
    assert command == FinishWork(session.branch, "Renamed.", opened.number)

    events = list(await bed.finisher.finish(session, command, bed.context(session)))

    assert isinstance(events[0], PullRequestUpdated), events
    assert events[0].head_sha == _pushed(bed, session.branch)
    assert bed.remote.messages(REPO, session.branch)[0] == "Rename per review"
    assert len(bed.fake.pulls(REPO)) == 1
    body = bed.fake.pull(REPO, opened.number)["body"]
    assert "Rename per review" in body and "Renamed." in body and "First version." not in body
    session = bed.apply(session, events[0])
    assert session.state == State.COMPLETE and session.review_rounds_used == 1


async def test_protected_paths_still_touched_are_never_pushed(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {".github/workflows/ci.yml": "on: push\n", "a.txt": "a\n"}, "Sneaky")
    session = turn_done(bed, session, "Done.")

    events = await _finish(bed, session)

    assert len(events) == 1 and isinstance(events[0], PushFailed)
    assert ".github/workflows/ci.yml" in events[0].reason
    assert _pushed(bed, session.branch) is None
    assert not [r for r in bed.remote.requests_for(REPO) if r.write]
    assert bed.fake.pulls(REPO) == []


async def test_a_branch_outside_agent_is_refused_before_anything_happens(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    before = bed.remote.refs(REPO)

    events = list(await bed.finisher.finish(session, FinishWork("main", "x", None), bed.context(session)))

    assert isinstance(events[0], PushFailed) and "agent/" in events[0].reason
    assert bed.remote.refs(REPO) == before
    assert not [r for r in bed.remote.requests_for(REPO) if r.write]
    assert not bed.fake.writes()


async def test_no_token_is_left_in_any_file_under_the_data_folder(bed):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "Done.")
    await _finish(bed, session, test="env; exit 1")

    tokens = [t.token for t in bed.fake.tokens()]
    assert len(tokens) >= 3  # the clone token, the installation token, the push token
    bed.store.db.execute("PRAGMA wal_checkpoint(FULL)")
    for path in bed.data_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for token in tokens:
                assert token.encode() not in data, f"{token[:8]}… found in {path}"
    body = bed.fake.pulls(REPO)[0]["body"]
    assert not any(token in body for token in tokens)


def test_fences_outgrow_the_text_they_hold():
    assert fence("plain") == "```"
    assert fence("a ```` b") == "`````"


def test_session_ids_become_safe_folder_names():
    # One name per session id, the same wherever Shepherd makes the session's folder.
    assert session_folder("acme/web#3/1") == "acme__web__3__1"


async def test_a_commit_message_that_would_close_another_issue_is_reported_in_the_pr(bed):
    # GitHub closes the issues a merged commit's message names with a closing keyword; Shepherd does
    # not rewrite the agent's commits, so it tells the reviewer before anyone merges.
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    sha = await agent_commit(bed, tree, {"a.txt": "a\n"}, "Refactor the exporter\n\nFixes #77 and resolves GH-78")
    await agent_commit(bed, tree, {"b.txt": "b\n"}, f"Finish\n\nCloses #{session.issue_number}")
    session = turn_done(bed, session, SUMMARY)

    events = await _finish(bed, session)

    assert isinstance(events[0], PullRequestOpened), events
    body = bed.fake.pulls(REPO)[0]["body"]
    warnings = [line for line in body.splitlines() if "would close" in line]
    assert len(warnings) == 1, body  # its own issue is meant to close: no warning for that commit
    assert sha[:7] in warnings[0] and "#77" in warnings[0] and "GH-78" in warnings[0]
    assert "\n\n**Diff stat:**" in body  # its own paragraph, not swallowed by the last commit's bullet


async def test_a_person_s_commit_on_the_agent_branch_is_never_overwritten(bed):
    """SPEC §2: a maintainer pushes a commit to help between two Shepherd pushes, and another
    session's mirror fetch has since seen it. Shepherd's next push must keep it, and say why it stopped."""
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "First version.")
    opened = (await _finish(bed, session))[0]
    assert isinstance(opened, PullRequestOpened)
    session = bed.apply(session, opened)
    first_push = _pushed(bed, session.branch)

    helped = bed.remote.commit_on(REPO, session.branch, {"human.txt": "from a person\n"}, "Help from a person")
    # Another session of the repository starts: the mirror fetches every branch, this one included.
    await bed.workspaces.ensure_mirror(REPO, bed.clone_url, bed.fake.mint_token(77, repositories=[REPO]))

    session = bed.apply(session, ReviewFeedback("review:1", "alice", "Please rename a.txt"))
    session = bed.apply(session, SlotGranted())
    session = bed.apply(session, TurnStarted(None))
    await agent_commit(bed, tree, {"b.txt": "b\n"}, "Rename per review")
    session = turn_done(bed, session, "Renamed.")
    events = await _finish(bed, session)

    history = bed.remote.log(REPO, f"refs/heads/{session.branch}")
    assert helped in history and first_push in history
    assert _pushed(bed, session.branch) == helped  # nothing of Shepherd's replaced it
    [failed] = events
    assert isinstance(failed, PushFailed)
    assert helped[:7] in failed.reason and "Help from a person" in failed.reason
    assert "did not write" in failed.reason and "never overwrites" in failed.reason
    session = bed.apply(session, failed)
    assert session.state == State.FAILED and "Help from a person" in (session.failure_reason or "")


async def test_an_agent_s_rewritten_history_replaces_only_shepherd_s_own_push(bed):
    """The agent rebases (a merge conflict with the base, say): its own earlier push may be replaced."""
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    session = turn_done(bed, session, "First version.")
    opened = (await _finish(bed, session))[0]
    session = bed.apply(session, opened)
    first_push = _pushed(bed, session.branch)

    session = bed.apply(session, ReviewFeedback("review:1", "alice", "Squash please"))
    session = bed.apply(session, SlotGranted())
    session = bed.apply(session, TurnStarted(None))
    await bed.workspaces._git_in(tree, "reset", "--soft", "HEAD~1")  # noqa: SLF001 - as the agent would
    await agent_commit(bed, tree, {"a.txt": "a, squashed\n"}, "Add a, squashed")
    session = turn_done(bed, session, "Squashed.")
    [updated] = await _finish(bed, session)

    assert isinstance(updated, PullRequestUpdated), updated
    assert _pushed(bed, session.branch) == updated.head_sha
    assert first_push not in bed.remote.log(REPO, f"refs/heads/{session.branch}")
    assert bed.remote.messages(REPO, session.branch)[0] == "Add a, squashed"
