"""Never merge, proven (SPEC §2): every way to merge or to write outside `agent/` is refused inside
Shepherd, before the network. The strict fake records no such request; the git remote no such push."""

from __future__ import annotations

import re

import pytest

from bot.github.operations import OperationRefused, resolve
from bot.workspace.push import PushRefused, push_branch
from bot.core.session import FinishWork, PushFailed
from tests.finishing_bed import (  # noqa: F401 - the fixture
    INSTALLATION,
    NAME,
    OWNER,
    REPO,
    agent_commit,
    bed,
    prepare_worktree,
    triggered,
    turn_done,
)

AUTO_MERGE = (
    "mutation($id: ID!) { enablePullRequestAutoMerge(input: {pullRequestId: $id, mergeMethod: SQUASH}) "
    "{ clientMutationId } }"
)
OTHER_MUTATIONS = [
    "mutation { mergePullRequest(input: {pullRequestId: \"PR_1\"}) { clientMutationId } }",
    "mutation { mergeBranch(input: {repositoryId: \"R_1\", base: \"main\", head: \"agent/x\"}) { clientMutationId } }",
    "mutation { updateRef(input: {refId: \"REF_1\", oid: \"0000\"}) { clientMutationId } }",
    "mutation { createCommitOnBranch(input: {branch: {branchName: \"main\"}}) { clientMutationId } }",
    "mutation { enqueuePullRequest(input: {pullRequestId: \"PR_1\"}) { clientMutationId } }",
]
U = {"owner": OWNER, "repo": NAME}

REST_WRITES = [
    ("put", "/repos/{owner}/{repo}/pulls/{pull_number}/merge", {**U, "pull_number": 1}, {"merge_method": "squash"}),
    ("post", "/repos/{owner}/{repo}/merges", U, {"base": "main", "head": "agent/issue-1-x"}),
    ("put", "/repos/{owner}/{repo}/pulls/{pull_number}/update-branch", {**U, "pull_number": 1}, {}),
    ("put", "/repos/{owner}/{repo}/contents/{path}", {**U, "path": "README.md"},
     {"message": "m", "content": "eA==", "branch": "agent/issue-1-x"}),
    ("delete", "/repos/{owner}/{repo}/contents/{path}", {**U, "path": "README.md"}, {"message": "m", "sha": "0" * 40}),
    ("patch", "/repos/{owner}/{repo}/git/refs/{ref}", {**U, "ref": "heads/main"}, {"sha": "0" * 40, "force": True}),
    ("delete", "/repos/{owner}/{repo}/git/refs/{ref}", {**U, "ref": "heads/main"}, b""),
    ("post", "/repos/{owner}/{repo}/git/refs", U, {"ref": "refs/heads/main", "sha": "0" * 40}),
    ("post", "/repos/{owner}/{repo}/git/refs", U, {"ref": "refs/tags/v1", "sha": "0" * 40}),
    ("post", "/repos/{owner}/{repo}/git/refs", U, {"ref": "refs/heads/agent/../main", "sha": "0" * 40}),
    ("patch", "/repos/{owner}/{repo}/git/refs/{ref}", {**U, "ref": "heads/release"}, {"sha": "0" * 40}),
    ("post", "/graphql", {}, {"query": AUTO_MERGE, "variables": {"id": "PR_1"}}),
    ("post", "/api/graphql", {}, {"query": AUTO_MERGE}),
]


@pytest.mark.parametrize("method, url, url_vars, data", REST_WRITES, ids=[f"{m} {u}" for m, u, _, _ in REST_WRITES])
async def test_merges_and_writes_outside_agent_are_refused_before_the_network(bed, method, url, url_vars, data):
    gh = bed.github.installation(INSTALLATION)
    before = len(bed.fake.calls)

    with pytest.raises(OperationRefused):
        await getattr(gh, method)(url, url_vars, data=data)

    assert len(bed.fake.calls) == before  # not even a token was minted for it
    assert not [c for c in bed.fake.calls if c.operation_id in ("pulls/merge", "repos/merge")]


@pytest.mark.parametrize("query", [AUTO_MERGE, *OTHER_MUTATIONS])
async def test_every_graphql_mutation_is_refused_on_every_client(bed, query):
    before = len(bed.fake.calls)
    with pytest.raises(OperationRefused):
        await bed.github.installation(INSTALLATION).graphql(query, id="PR_1")
    with pytest.raises(OperationRefused):
        await bed.github._app_client.graphql(query)  # noqa: SLF001 - the App-level client too
    assert len(bed.fake.calls) == before


def test_no_merge_operation_of_githubs_whole_rest_description_is_allowed(bed):
    merging = [op for op in bed.fake.spec.operations.values()
               if re.search(r"merge|auto-merge|update-branch", op.operation_id)]
    assert len(merging) >= 3  # pulls/merge, repos/merge, pulls/update-branch at least
    for op in merging:
        if op.method == "GET":
            continue  # reading whether a PR is merged is harmless
        path = re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1).endswith(("number", "id")) else "x", op.template)
        with pytest.raises(OperationRefused):
            resolve(op.method, f"{bed.fake.url}{path}", {}, base_url=bed.fake.url)


def test_every_write_shepherd_may_send_is_listed_and_none_is_a_merge():
    from bot.github.operations import ALLOWED

    for operation in ALLOWED:
        assert "merge" not in operation.operation_id and "merge" not in operation.template
        if operation.method != "GET" and "/git/refs" in operation.template:
            assert operation.guard is not None  # ref writes are guarded to agent/


@pytest.mark.parametrize("ref", ["main", "refs/heads/main", "release", "refs/tags/v1", "agent/../main", "+agent/x"])
async def test_a_push_of_any_ref_outside_agent_never_reaches_the_remote(bed, ref):
    session = triggered(bed)
    tree = await prepare_worktree(bed, session)
    await agent_commit(bed, tree, {"a.txt": "a\n"}, "Add a")
    refs = bed.remote.refs(REPO)
    before = list(bed.remote.requests)

    with pytest.raises(PushRefused):
        await push_branch(bed.workspaces.git, bed.workspaces.mirror(REPO), ref, "unused-token", created_by_shepherd=True)
    turn_done(bed, session, "Done.")
    events = list(await bed.finisher.finish(session, FinishWork(ref, "x", None), bed.context(session)))

    assert isinstance(events[0], PushFailed)
    assert bed.remote.requests == before and bed.remote.refs(REPO) == refs
    assert not bed.fake.writes()
