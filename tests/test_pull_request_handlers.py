"""PR webhooks (real example payloads) through handlers/pull_requests.py into the core's rounds."""

from __future__ import annotations

from dataclasses import replace

from gidgethub import sansio

from bot.workspace.cleanup import remove_session_worktree
from bot.runtime.rounds import InlineCollector, post_needs_human
from bot.store.database import Store
from bot.core.sanitize import find_marker
from bot.core.session import (
    CIFailed,
    CleanupWorkspace,
    Detail,
    Limits,
    PullRequestClosed,
    PullRequestState,
    ReviewFeedback,
    State,
    TurnKind,
)
from handlers.pull_requests import router
from tests.fakes import payloads
from tests.finishing_bed import (  # noqa: F401 - the fixture
    INSTALLATION,
    REPO,
    MemoryEngine,
    bed,
    dispatch,
    opened_session,
)


def _event(name: str, payload: dict) -> sansio.Event:
    return sansio.Event(payload, event=name, delivery_id="d-" + name)


async def _run(bed, engine, name, payload, **deps):
    gh = bed.github.installation(INSTALLATION)
    deps.setdefault("github", bed.github)
    await dispatch(router, _event(name, payload), gh, engine=engine, store=bed.store, **deps)


async def test_changes_requested_review_with_inline_comments_is_one_review_round(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    payload = payloads.pull_request_review_submitted(bed.fake, REPO, session.pr_number, body="Two things.")
    review_id = payload["review"]["id"]
    bed.fake.add_review_comment(REPO, session.pr_number, "Rename this", path="a.txt", line=1, review_id=review_id)
    bed.fake.add_review_comment(REPO, session.pr_number, "And this", path="src/app.py", line=7, review_id=review_id)
    bed.fake.add_review_comment(REPO, session.pr_number, "Unrelated older note", path="a.txt", line=1)

    await _run(bed, engine, "pull_request_review", payload)

    assert len(engine.events) == 1
    feedback = engine.events[0]
    assert isinstance(feedback, ReviewFeedback)
    assert feedback.feedback_id == f"review:{review_id}" and feedback.author == "alice"
    assert "Two things." in feedback.text
    assert "`a.txt` line 1:\n  Rename this" in feedback.text
    assert "`src/app.py` line 7:\n  And this" in feedback.text
    assert "Unrelated older note" not in feedback.text
    after = engine.sessions[session.id]
    assert after.state == State.QUEUED and after.pending_turn.kind == TurnKind.REVIEW

    await _run(bed, engine, "pull_request_review", payload)  # redelivered: the core counts it once
    assert engine.sessions[session.id].review_rounds_used == 1


async def test_reviews_that_do_not_count(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    bed.fake.set_permission(REPO, "reader", "read")
    approved = payloads.pull_request_review_submitted(bed.fake, REPO, session.pr_number, state="approved")
    stranger = payloads.pull_request_review_submitted(bed.fake, REPO, session.pr_number, sender="reader")
    bot = payloads.pull_request_review_submitted(bed.fake, REPO, session.pr_number, sender=bed.fake.bot_login)

    for payload in (approved, stranger, bot):
        await _run(bed, engine, "pull_request_review", payload)

    assert engine.events == []
    assert engine.sessions[session.id].state == State.COMPLETE


async def test_a_pr_conversation_comment_is_a_round_but_a_slash_command_is_not(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    command = bed.fake.add_comment(REPO, session.pr_number, "/agent status", user="alice")
    comment = bed.fake.add_comment(REPO, session.pr_number, "Please also update the docs.", user="alice")

    await _run(bed, engine, "issue_comment", payloads.issue_comment_created(bed.fake, REPO, session.pr_number, command))
    assert engine.events == []
    await _run(bed, engine, "issue_comment", payloads.issue_comment_created(bed.fake, REPO, session.pr_number, comment))

    assert engine.events == [ReviewFeedback(f"comment:{comment['id']}", "alice", engine.events[0].text)]
    assert "Please also update the docs." in engine.events[0].text


async def test_inline_comments_outside_a_review_are_collected_into_one_round(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    now = [1000.0]
    collector = InlineCollector(bed.store, engine, window=30, clock=lambda: now[0])
    first = payloads.pull_request_review_comment_created(bed.fake, REPO, session.pr_number, "Typo here",
                                                         path="a.txt", line=1)
    second = payloads.pull_request_review_comment_created(bed.fake, REPO, session.pr_number, "And a nit",
                                                          path="a.txt", line=2)

    await _run(bed, engine, "pull_request_review_comment", first, inline_collector=collector)
    now[0] += 10
    await _run(bed, engine, "pull_request_review_comment", second, inline_collector=collector)
    await _run(bed, engine, "pull_request_review_comment", second, inline_collector=collector)  # redelivery
    assert await collector.flush_due() == []  # the window is still open
    assert engine.events == []

    # A restart inside the window loses nothing: the comments wait in the database.
    collector = InlineCollector(bed.store, engine, window=30, clock=lambda: now[0])
    now[0] += 21
    flushed = await collector.flush_due()

    assert len(flushed) == 1 and engine.events == flushed
    feedback = flushed[0]
    assert feedback.feedback_id == f"inline:{first['comment']['id']}"
    assert feedback.text.count("Typo here") == 1 and feedback.text.count("And a nit") == 1
    assert "`a.txt` line 2:" in feedback.text
    assert collector.pending() == []
    assert engine.sessions[session.id].pending_turn.kind == TurnKind.REVIEW


async def test_failing_suites_and_runs_on_one_head_are_one_ci_round(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    head = session.pr_head_sha
    deliveries = [
        ("check_suite", payloads.check_suite_completed(bed.fake, REPO, head_sha=head, head_branch=session.branch)),
        ("check_run", payloads.check_run_completed(bed.fake, REPO, head_sha=head, name="lint")),
        ("check_run", payloads.check_run_completed(bed.fake, REPO, head_sha=head, name="tests",
                                                   conclusion="timed_out")),
        ("check_run", payloads.check_run_completed(bed.fake, REPO, head_sha=head, name="docs", conclusion="cancelled")),
    ]
    for name, payload in deliveries:
        await _run(bed, engine, name, payload)

    rounds = [e for e in engine.events if isinstance(e, CIFailed)]
    assert len(rounds) == 1 and rounds[0].head_sha == head
    assert "- lint: failure" in rounds[0].summary and "- tests: timed_out" in rounds[0].summary
    assert "docs" not in rounds[0].summary  # cancelled does not fail a head
    after = engine.sessions[session.id]
    assert after.ci_rounds_used == 1 and after.pending_turn.kind == TurnKind.CI
    assert len(bed.fake.calls_to("checks/list-for-ref")) == 1  # later deliveries stop at the dedupe


async def test_a_stale_head_or_a_passing_check_starts_nothing(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    ok = payloads.check_suite_completed(bed.fake, REPO, head_sha=session.pr_head_sha, conclusion="success",
                                        head_branch=session.branch)
    stale = payloads.check_suite_completed(bed.fake, REPO, head_sha="0" * 40, head_branch=session.branch)
    for payload in (ok, stale):
        await _run(bed, engine, "check_suite", payload)
    assert engine.events == []


async def test_at_the_ci_cap_the_session_needs_a_human_and_the_pr_says_why_once(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine, limits=Limits(ci_rounds=0))
    payload = payloads.check_suite_completed(bed.fake, REPO, head_sha=session.pr_head_sha, head_branch=session.branch)

    await _run(bed, engine, "check_suite", payload)
    await _run(bed, engine, "check_suite", payload)

    after = engine.sessions[session.id]
    assert after.state == State.STUCK and after.detail == Detail.NEEDS_HUMAN
    explained = [c for c in bed.fake.comments(REPO, session.pr_number) if find_marker(c["body"], "needs-human")]
    assert len(explained) == 1
    assert "the limit of 0 CI rounds is reached" in explained[0]["body"]
    assert explained[0]["user"]["login"] == bed.fake.bot_login


async def test_a_needs_human_marker_from_another_bot_or_a_person_is_not_adopted(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine, limits=Limits(ci_rounds=0))
    forged = f"<!-- shepherd:needs-human session={session.id} -->\nnot Shepherd's"
    foreign = [bed.fake.add_comment(REPO, session.pr_number, forged, user=login)
               for login in ("other-app[bot]", "mallory")]
    payload = payloads.check_suite_completed(bed.fake, REPO, head_sha=session.pr_head_sha, head_branch=session.branch)

    await _run(bed, engine, "check_suite", payload)

    explained = [c for c in bed.fake.comments(REPO, session.pr_number) if find_marker(c["body"], "needs-human")]
    assert [c["user"]["login"] for c in explained] == ["other-app[bot]", "mallory", bed.fake.bot_login]
    assert [c["body"] for c in explained[:2]] == [forged, forged]  # untouched
    assert {c["id"] for c in explained[:2]} == {c["id"] for c in foreign}


async def test_the_needs_human_comment_is_written_once_even_after_the_store_is_lost(bed, tmp_path):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    stuck = replace(session, state=State.STUCK, detail=Detail.NEEDS_HUMAN, stuck_reason="the limit is reached")
    gh = bed.github.installation(INSTALLATION)
    owner, repo = REPO.split("/")
    first = await post_needs_human(gh, owner, repo, session.pr_number, stuck, store=bed.store,
                                   bot_login=bed.fake.bot_login)
    again = await post_needs_human(gh, owner, repo, session.pr_number, stuck, store=bed.store,
                                   bot_login=bed.fake.bot_login)  # a replayed delivery
    amnesiac = Store.open(tmp_path / "lost.db")
    try:
        after_restart = await post_needs_human(gh, owner, repo, session.pr_number, stuck, store=amnesiac,
                                               bot_login=bed.fake.bot_login)
    finally:
        amnesiac.close()

    assert first == again == after_restart
    explained = [c for c in bed.fake.comments(REPO, session.pr_number) if find_marker(c["body"], "needs-human")]
    assert [c["id"] for c in explained] == [first]
    assert "the limit is reached" in explained[0]["body"]


async def test_review_cap_needs_a_human(bed):
    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine, limits=Limits(review_rounds=0))
    comment = bed.fake.add_comment(REPO, session.pr_number, "One more thing", user="alice")

    await _run(bed, engine, "issue_comment", payloads.issue_comment_created(bed.fake, REPO, session.pr_number, comment))

    assert engine.sessions[session.id].detail == Detail.NEEDS_HUMAN
    bodies = [c["body"] for c in bed.fake.comments(REPO, session.pr_number)]
    assert sum("the limit of 0 review rounds is reached" in body for body in bodies) == 1


async def test_a_merged_pr_ends_the_work_and_the_worktree_goes(bed):
    engine = MemoryEngine(bed)
    session, tree = await opened_session(bed, engine)

    await _run(bed, engine, "pull_request", payloads.pull_request_closed(bed.fake, REPO, session.pr_number, merged=True))

    assert engine.events == [PullRequestClosed(merged=True, number=session.pr_number)]
    after = engine.sessions[session.id]
    assert after.pr_state == PullRequestState.MERGED and CleanupWorkspace() in engine.commands
    outcome = await remove_session_worktree(bed.workspaces, after)
    assert outcome.removed and not tree.exists()
    branches = await bed.workspaces.git.run("branch", "--list", mirror=bed.workspaces.mirror(REPO))
    assert session.branch not in branches


async def test_a_closed_pr_with_unpushed_work_keeps_its_worktree(bed):
    engine = MemoryEngine(bed)
    session, tree = await opened_session(bed, engine)
    (tree / "late.txt").write_text("not pushed\n")
    await bed.workspaces.commit_all(tree, "Late change", "agent", "agent@example.invalid")

    await _run(bed, engine, "pull_request", payloads.pull_request_closed(bed.fake, REPO, session.pr_number))

    after = engine.sessions[session.id]
    assert after.pr_state == PullRequestState.CLOSED
    outcome = await remove_session_worktree(bed.workspaces, after)
    assert not outcome.removed and "never pushed" in outcome.reason
    assert (tree / "late.txt").read_text() == "not pushed\n"


async def test_prs_on_other_branches_are_ignored(bed):
    engine = MemoryEngine(bed)
    await opened_session(bed, engine)
    pull = bed.fake.add_pull(REPO, head="feature/human", title="A human's PR")
    comment = bed.fake.add_comment(REPO, pull["number"], "Looks good", user="alice")

    await _run(bed, engine, "pull_request_review",
               payloads.pull_request_review_submitted(bed.fake, REPO, pull["number"]))
    await _run(bed, engine, "issue_comment", payloads.issue_comment_created(bed.fake, REPO, pull["number"], comment))
    await _run(bed, engine, "pull_request", payloads.pull_request_closed(bed.fake, REPO, pull["number"], merged=True))

    assert engine.events == []


async def test_the_repository_policy_can_raise_who_may_start_a_round(bed):
    from bot.github.labels import RepoPolicies

    engine = MemoryEngine(bed)
    session, _ = await opened_session(bed, engine)
    bed.fake.set_file(REPO, ".github/shepherd.yml", "min_permission: maintain\n")
    bed.fake.set_permission(REPO, "lead", "maintain")
    writer = payloads.pull_request_review_submitted(bed.fake, REPO, session.pr_number, sender="alice")
    lead = payloads.pull_request_review_submitted(bed.fake, REPO, session.pr_number, sender="lead")

    for payload in (writer, lead):
        await _run(bed, engine, "pull_request_review", payload, policies=RepoPolicies())

    assert [e.author for e in engine.events] == ["lead"]


async def test_comments_on_a_pr_shepherd_did_not_open_cost_no_github_call(bed):
    # Anyone can comment on a public repository's PRs: the cheap check (is this one of Shepherd's
    # PRs, by its own records) comes before any call on the installation's budget.
    engine = MemoryEngine(bed)
    await opened_session(bed, engine)
    pull = bed.fake.add_pull(REPO, head="feature/human", title="A human's PR")
    before = len(bed.fake.calls)
    for n in range(20):
        comment = bed.fake.add_comment(REPO, pull["number"], f"spam {n}", user="mallory")
        await _run(bed, engine, "issue_comment", payloads.issue_comment_created(bed.fake, REPO, pull["number"], comment))
    assert bed.fake.calls[before:] == []
    assert engine.events == []
