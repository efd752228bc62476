"""A migration killed midway leaves its context marked unfinished: ``ls``, ``check`` and
opening it say so, and running the migration again finishes it, keeping whatever the
user did with the context meanwhile (a message sent on a branch that was still empty).

The kill is real (see test_migrate_interrupted: a child process ends itself with
``os._exit(9)`` at that moment); the commands are the CLI in a child process.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import anyio
import pytest
from cli_process import cli
from test_migrate_interrupted import FIXTURES, heads, killed_migration, snapshot, tree

from cm_notebook.migrate import UNFINISHED_MIGRATION, UnfinishedMigrationWarning
from cm_notebook.migrate._lock import MIGRATE_LOCK_NAME
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.store.oslock import OSLock
from cm_notebook.testing import ScriptedProvider


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """v1 data with branches: ctx-branches (main, alt) is the first context written."""
    folder = tmp_path / "src"
    folder.mkdir()
    return Path(shutil.copy2(FIXTURES / "branches.json", folder / "contexts.json"))


@pytest.fixture
def reference(source: Path, tmp_path: Path) -> dict[str, dict[str, list[str]]]:
    done = cli(tmp_path / "reference", "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    return tree(tmp_path / "reference")


def tags(data_dir: Path, cid: str) -> list[str]:
    async def read() -> list[str]:
        async with FileStore(data_dir) as store:
            return (await store.get_metadata(cid)).tags

    return anyio.run(read)


@pytest.mark.parametrize(
    "kill", [{"messages_written": 2}, {"heads_set": 0}], ids=["in-messages", "before-heads"]
)
def test_a_killed_migration_is_shown_unfinished_until_run_again(
    kill: dict[str, int], source: Path, data_dir: Path
) -> None:
    killed_migration(source, data_dir, **kill)
    assert UNFINISHED_MIGRATION in tags(data_dir, "ctx-branches")

    listed = cli(data_dir, "ls")
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("ctx-branches")]
    assert "(migration unfinished)" in row

    checked = cli(data_dir, "check")
    assert checked.returncode == 1, checked.stdout
    assert (
        "ctx-branches: migration unfinished (the process was stopped): run `cm-notebook "
        f"--data-dir {shlex.quote(str(data_dir))} migrate {source}` again to finish it; "
        "what was added to it since is kept"
    ) in checked.stderr

    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert UNFINISHED_MIGRATION not in tags(data_dir, "ctx-branches")
    assert "unfinished" not in cli(data_dir, "ls").stdout
    checked = cli(data_dir, "check")
    assert checked.returncode == 0, checked.stderr
    assert "unfinished" not in checked.stderr


def test_a_context_being_migrated_now_is_not_a_finding(source: Path, data_dir: Path) -> None:
    killed_migration(source, data_dir, messages_written=2)
    held = OSLock(data_dir / MIGRATE_LOCK_NAME)  # as a migration running now holds it
    held.acquire(timeout=0)
    try:
        assert "ctx-branches  Shared prefix (being migrated)" in cli(data_dir, "ls").stdout
        checked = cli(data_dir, "check")
        assert checked.returncode == 0, checked.stderr
        assert "ctx-branches: being migrated from v1 now" in checked.stdout
    finally:
        held.close()


def test_a_finished_migration_leaves_no_mark(source: Path, data_dir: Path) -> None:
    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    for cid in tree(data_dir):
        assert UNFINISHED_MIGRATION not in tags(data_dir, cid)


def test_opening_an_unfinished_migration_warns(source: Path, data_dir: Path) -> None:
    killed_migration(source, data_dir, messages_written=2)
    with (
        pytest.warns(
            UnfinishedMigrationWarning, match=r"cm-notebook --data-dir .* migrate .*contexts\.json"
        ),
        ContextSession.open("ctx-branches", data_dir=data_dir) as session,
    ):
        assert session.history() == []  # the branch is still empty: hence the warning
    assert cli(data_dir, "migrate", str(source), "--no-backup").returncode == 0
    with ContextSession.open("ctx-branches", data_dir=data_dir) as session:  # no warning
        assert session.history()


def test_sent_on_before_the_rerun_keeps_the_users_messages_and_finishes(
    source: Path, data_dir: Path, reference: dict[str, dict[str, list[str]]]
) -> None:
    killed_migration(source, data_dir, messages_written=2)
    provider = ScriptedProvider().reply("hello")
    with pytest.warns(UnfinishedMigrationWarning):
        session = ContextSession.open("ctx-branches", data_dir=data_dir, provider=provider)
    with session:
        active = session.active_branch
        session.send("a question after the interrupted migration").result(10)
    theirs = tree(data_dir)["ctx-branches"][active]
    assert len(theirs) == 2  # the user's question and its answer, on a branch of their own

    dry = cli(data_dir, "migrate", str(source), "--dry-run")
    assert dry.returncode == 0, dry.stdout
    assert f"the v1 branch {active!r} would be the branch '{active}-v1'" in dry.stdout

    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stdout
    assert "Traceback" not in done.stderr
    assert "rm ctx-branches" not in done.stdout
    assert (
        f"branch {active!r} was written on before the migration finished; it is kept as it "
        f"is, and the v1 branch {active!r} is now the branch '{active}-v1'"
    ) in done.stdout
    got = tree(data_dir)["ctx-branches"]
    want = reference["ctx-branches"]
    assert got[active] == theirs  # the user's conversation, untouched
    assert got[f"{active}-v1"] == want[active]  # the v1 branch, whole
    for name in want:
        if name not in (active, "<messages>"):
            assert got[name] == want[name]
    assert set(want["<messages>"]) | set(theirs) == set(got["<messages>"])
    assert UNFINISHED_MIGRATION not in tags(data_dir, "ctx-branches")
    assert cli(data_dir, "check").returncode == 0

    # Finished means finished: the run after that changes nothing.
    before = snapshot(data_dir)
    again = cli(data_dir, "migrate", str(source), "--no-backup")
    assert again.returncode == 0, again.stdout
    assert "0 migrated, 0 partial, 3 skipped, 0 failed" in again.stdout
    assert snapshot(data_dir) == before
    assert heads(data_dir, "ctx-branches")[active] == theirs[-1]
