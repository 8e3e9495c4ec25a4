"""Clean-up of closed work: worktrees go unless they hold unpushed or uncommitted work; `shepherd prune`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from bot.workspace.cleanup import prune, remove_session_worktree
from bot.views.cli import main
from bot.core.session import PullRequestState
from tests.finishing_bed import MemoryEngine, bed, opened_session  # noqa: F401 - the fixture


async def test_prune_removes_merged_work_keeps_unpushed_and_dirty_work_and_leaves_open_prs(bed):
    engine = MemoryEngine(bed)
    merged, merged_tree = await opened_session(bed, engine)
    dirty, dirty_tree = await opened_session(bed, engine)
    open_pr, open_tree = await opened_session(bed, engine)
    (dirty_tree / "scratch.txt").write_text("uncommitted\n")
    sessions = [
        replace(merged, pr_state=PullRequestState.MERGED),
        replace(dirty, pr_state=PullRequestState.CLOSED),
        open_pr,
    ]

    preview = await prune(bed.workspaces, sessions, dry_run=True)
    # The dry run lists exactly what the real run does: the dirty worktree is kept there, so here too.
    assert [o.path for o in preview.removed] == [merged_tree] and merged_tree.exists()
    assert preview.lines() == [
        f"would remove {merged_tree} ({merged.id})",
        f"would keep {dirty_tree} ({dirty.id}): the worktree has uncommitted changes",
    ]

    report = await prune(bed.workspaces, sessions)

    assert [o.path for o in report.removed] == [merged_tree]
    assert [(o.path, o.reason) for o in report.kept] == [(dirty_tree, "the worktree has uncommitted changes")]
    assert not merged_tree.exists() and dirty_tree.exists() and open_tree.exists()
    assert (dirty_tree / "scratch.txt").read_text() == "uncommitted\n"
    assert report.lines() == [
        f"removed {merged_tree} ({merged.id})",
        f"kept {dirty_tree} ({dirty.id}): the worktree has uncommitted changes",
    ]
    again = await prune(bed.workspaces, sessions)
    assert again.removed == [] and len(again.kept) == 1


async def test_removing_an_already_removed_worktree_is_fine(bed):
    engine = MemoryEngine(bed)
    session, tree = await opened_session(bed, engine)
    assert (await remove_session_worktree(bed.workspaces, session)).removed
    assert (await remove_session_worktree(bed.workspaces, session)).removed and not tree.exists()


async def test_shepherd_prune_reads_the_stored_sessions(bed, monkeypatch, tmp_path, capsys):
    engine = MemoryEngine(bed)
    session, tree = await opened_session(bed, engine)
    merged = replace(session, pr_state=PullRequestState.MERGED)
    bed.store.db.execute(
        "INSERT INTO sessions (id, repo, issue_number, installation_id, branch, state, data, context, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (merged.id, merged.repo, merged.issue_number, 77, merged.branch, str(merged.state),
         json.dumps(merged.to_dict()), "{}", 0.0, 0.0),
    )
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_PRIVATE_KEY_PATH", "GITHUB_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SHEPHERD_DATA_DIR", str(bed.data_dir))

    # The command runs its own event loop, as it does in a terminal: give it a thread.
    code = await asyncio.to_thread(main, ["prune"])

    assert code == 0
    assert capsys.readouterr().out.strip() == f"removed {tree} ({merged.id})"
    assert not tree.exists()
