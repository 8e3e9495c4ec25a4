"""What an agent can see and change: no Shepherd secret in its environment, git config or process list,
and a repository config it tampered with neither leaks a token nor runs a hook on the next push."""

from __future__ import annotations

import socket
import time

import pytest

from bot.core.session import State
from tests.fakes.git_remote import git_remote  # noqa: F401 - fixture
from tests.runtime_support import add_go_label, FAST_POLICY, REPO, agent_script, build_harness, issue_ref, prepare_repo, wait_for

pytestmark = pytest.mark.timeout(120)


async def _run(fake, tmp_path, script: str, issues: list[int], **env: str):
    harness = await build_harness(fake, tmp_path / "data", SHEPHERD_AGENT="command",
                                  SHEPHERD_AGENT_COMMAND=script, **env)
    try:
        await harness.engine.start()
        for number in issues:
            await add_go_label(harness, issue_ref(fake, number))
        ended = (State.COMPLETE, State.FAILED, State.CANCELLED)
        await wait_for(lambda: all(harness.engine.last_session(REPO, n).state in ended for n in issues), timeout=90)
        await harness.engine.idle()
        return {n: harness.engine.last_session(REPO, n) for n in issues}, harness
    finally:
        await harness.close()


async def test_no_secret_reaches_the_agent_even_while_a_push_runs(fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY)
    plain = git_remote.authorize
    pushing: list[tuple[float, float]] = []  # when a push's git processes were alive, on the host's clock

    def slow_writes(token: str, repo: str, write: bool) -> bool:
        if write:
            start = time.time()
            time.sleep(1.0)  # keeps the push's git processes alive while the other agent looks
            pushing.append((start, time.time()))
        return plain(token, repo, write)

    git_remote.authorize = slow_writes
    fake_github.add_issue(REPO, title="Observer")
    fake_github.add_issue(REPO, title="Pusher")
    # The agent runs in its box as its own uid: the operator shows it this folder (SHEPHERD_SANDBOX_PATHS).
    seen = tmp_path / "seen"
    seen.mkdir()
    seen.chmod(0o777)
    script = agent_script(tmp_path, f"""
if [ "$SHEPHERD_ISSUE" = 1 ]; then
  env > {seen}/env.txt
  git config --list > {seen}/gitconfig.txt
  end=$(( $(date +%s) + 20 ))
  while [ ! -e {seen}/pushed ] && [ $(date +%s) -lt $end ]; do
    date +%s.%N >> {seen}/looked.txt
    ps -eo args >> {seen}/ps.txt
    sleep 0.02
  done
  ps -eo args >> {seen}/ps.txt
else
  sleep 0.5
fi
echo "$SHEPHERD_ISSUE" > "file-$SHEPHERD_ISSUE.txt"
git add . && git commit -q -m "Work $SHEPHERD_ISSUE"
shepherd done "done $SHEPHERD_ISSUE"
""")
    harness_env = {"SHEPHERD_MAX_WORKERS": "2", "SHEPHERD_SANDBOX_PATHS": f"{seen}:rw"}
    # The pushed marker is written by the finisher of issue 2, after its push.
    from tests import runtime_support

    original = runtime_support.PushingFinisher.finish

    async def finish_and_mark(self, session, command, context):
        events = await original(self, session, command, context)
        if session.issue_number == 2:
            (seen / "pushed").write_text("yes")
        return events

    runtime_support.PushingFinisher.finish = finish_and_mark
    try:
        sessions, _ = await _run(fake_github, tmp_path, script, [1, 2], **harness_env)
    finally:
        runtime_support.PushingFinisher.finish = original
    assert {s.state for s in sessions.values()} == {State.COMPLETE}
    # The observer looked while a push ran. Inside its box it cannot see the push's processes (nor any
    # other process of Shepherd's), so the overlap is checked on the host's clock.
    looked = [float(line) for line in (seen / "looked.txt").read_text().split()]
    assert pushing, "no push was observed"
    assert any(start <= moment <= end for start, end in pushing for moment in looked), "no look during a push"
    ps = (seen / "ps.txt").read_text()
    assert "ps -eo args" in ps  # the listing worked: it shows the observer's own processes
    assert not any("git" in line and "push" in line for line in ps.splitlines()), "the agent saw Shepherd's push"
    secrets = [fake_github.webhook_secret, "test-dashboard-token"]
    secrets += [line for line in fake_github.private_key_pem.splitlines() if "-----" not in line][:3]
    secrets += [token.token for token in fake_github.tokens()]
    assert len(fake_github.tokens()) >= 2
    for name in ("env.txt", "gitconfig.txt", "ps.txt"):
        text = (seen / name).read_text()
        for secret in secrets:
            assert secret not in text, f"{name} shows a secret"
    env_names = {line.split("=", 1)[0] for line in (seen / "env.txt").read_text().splitlines() if "=" in line}
    assert not any(name.startswith(("GITHUB_", "GH_")) for name in env_names)


async def test_tampered_repo_config_gains_no_token_and_runs_no_hook(fake_github, git_remote, tmp_path):
    prepare_repo(fake_github, git_remote, policy=FAST_POLICY)
    fake_github.add_issue(REPO, title="Tamper")
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(8)
    proxy.setblocking(False)
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in ("pre-push", "post-checkout", "reference-transaction", "pre-commit", "post-commit"):
        path = hooks / hook
        path.write_text(f"#!/bin/sh\ntouch {evidence}/{hook}\n")
        path.chmod(0o755)
    script = agent_script(tmp_path, f"""
git config http.proxy http://127.0.0.1:{proxy.getsockname()[1]}
git config core.hooksPath {hooks}
git config credential.helper '!f() {{ env > {evidence}/credential; cat >> {evidence}/credential; }}; f'
echo tampered > tampered.txt
git add tampered.txt && git -c core.hooksPath=/dev/null commit -q -m "Tamper"
shepherd done "tampered"
""")
    try:
        sessions, harness = await _run(fake_github, tmp_path, script, [1])
        session = sessions[1]
        assert session.state == State.COMPLETE
        # The push still landed, straight to the remote...
        assert git_remote.show(REPO, f"refs/heads/{session.branch}", "tampered.txt") == "tampered\n"
        # ...with no hook run, no credential helper asked, and nothing sent through the proxy.
        assert sorted(p.name for p in evidence.iterdir()) == []
        with pytest.raises(BlockingIOError):
            proxy.accept()
    finally:
        proxy.close()
