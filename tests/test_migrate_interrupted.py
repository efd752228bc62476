"""Migration from v1 when things go wrong on the way: a run killed before it set the
branch heads or while it wrote the messages, and text holding half of an emoji (a lone
UTF-16 surrogate).

The kill is real: a child process migrates through a FileStore subclass whose
``set_branch_head`` (or ``append_message``) ends the process with ``os._exit(9)`` (no
cleanup of any kind, as ``kill -9`` or the OOM killer at that moment); the next run is
the installed CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from cli_process import cli

from cm_notebook.migrate import ContextStatus, migrate, parse_v1
from cm_notebook.model import Message
from cm_notebook.store import FileStore

FIXTURES = Path(__file__).parent / "fixtures" / "v1"

KILLED_AT_HEAD = """
import os, sys
import anyio
from cm_notebook.migrate import migrate
from cm_notebook.store import FileStore

source, data, survive = sys.argv[1], sys.argv[2], int(sys.argv[3])


class KilledAtHead(FileStore):
    calls = 0

    async def set_branch_head(self, *args, **kwargs):
        KilledAtHead.calls += 1
        if KilledAtHead.calls > survive:
            os._exit(9)  # killed here: no except, no finally, no atexit
        return await super().set_branch_head(*args, **kwargs)

    if os.environ.get("KILL_AT") == "message":
        async def append_message(self, *args, **kwargs):
            KilledAtHead.calls += 1
            if KilledAtHead.calls > survive:
                os._exit(9)
            return await super().append_message(*args, **kwargs)

        async def set_branch_head(self, *args, **kwargs):
            return await FileStore.set_branch_head(self, *args, **kwargs)


async def main():
    await migrate(source, KilledAtHead(data), progress=False, backup=False)


anyio.run(main)
"""


def killed_migration(
    source: Path, data_dir: Path, heads_set: int = 0, *, messages_written: int | None = None
) -> None:
    """Migrate ``source`` in a child process killed after ``heads_set`` head moves, or,
    with ``messages_written``, after writing that many messages."""
    survive = heads_set if messages_written is None else messages_written
    at = "head" if messages_written is None else "message"
    done = subprocess.run(
        [sys.executable, "-c", KILLED_AT_HEAD, str(source), str(data_dir), str(survive)],
        env={**os.environ, "KILL_AT": at},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 9, done.stderr


def tree(data_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Context id -> branch -> its path, and ``"<messages>"`` -> every message id."""

    async def read() -> dict[str, dict[str, list[str]]]:
        out: dict[str, dict[str, list[str]]] = {}
        async with FileStore(data_dir) as store:
            for meta in await store.list_contexts():
                paths = {name: await store.path(meta.id, name) for name in meta.branches}
                out[meta.id] = {**paths, "<messages>": sorted(await store.index(meta.id))}
        return out

    return anyio.run(read)


def heads(data_dir: Path, cid: str) -> dict[str, str | None]:
    async def read() -> dict[str, str | None]:
        async with FileStore(data_dir) as store:
            meta = await store.get_metadata(cid)
        return {name: branch.head for name, branch in meta.branches.items()}

    return anyio.run(read)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """v1 data with branches: ctx-branches (main, alt) is the first context written."""
    folder = tmp_path / "src"
    folder.mkdir()
    return Path(shutil.copy2(FIXTURES / "branches.json", folder / "contexts.json"))


@pytest.fixture
def reference(source: Path, tmp_path: Path) -> dict[str, dict[str, list[str]]]:
    """What an uninterrupted migration of ``source`` writes."""
    done = cli(tmp_path / "reference", "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    return tree(tmp_path / "reference")


# -- D1: a migration killed before it set the branch heads ----------------------------


def test_killed_before_any_head_is_finished_by_the_next_run(
    source: Path, data_dir: Path, reference: dict[str, dict[str, list[str]]]
) -> None:
    killed_migration(source, data_dir, heads_set=0)
    # The state the kill left: every message of the first context, no head set.
    assert heads(data_dir, "ctx-branches") == {"main": None, "alt": None}
    assert tree(data_dir)["ctx-branches"]["<messages>"] == reference["ctx-branches"]["<messages>"]

    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "3 context(s); 2 migrated, 1 partial, 0 skipped, 0 failed" in done.stdout
    assert "already migrated" not in done.stdout
    assert (
        "an earlier migration was interrupted before it set the head of branches "
        "'alt', 'main'; finished now" in done.stdout
    )
    assert tree(data_dir) == reference

    # Finished means finished: the run after that changes nothing.
    before = snapshot(data_dir)
    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "0 migrated, 0 partial, 3 skipped, 0 failed" in done.stdout
    assert snapshot(data_dir) == before


def test_killed_between_heads_keeps_what_was_done_since(
    source: Path, data_dir: Path, reference: dict[str, dict[str, list[str]]]
) -> None:
    killed_migration(source, data_dir, heads_set=1)
    before = heads(data_dir, "ctx-branches")
    (done_branch,) = [name for name, head in before.items() if head is not None]
    (unset,) = [name for name, head in before.items() if head is None]

    # The user carried on in the branch that was there before migrating again.
    async def carry_on() -> str:
        async with FileStore(data_dir) as store:
            reply = Message(role="user", content="more", parent_id=before[done_branch])
            await store.append_message("ctx-branches", reply, branch=done_branch)
        return reply.id

    added = anyio.run(carry_on)

    async def rerun() -> list[ContextStatus]:
        async with FileStore(data_dir) as store:
            report = await migrate(source, store, progress=False, backup=False)
        first = report.contexts[0]
        assert first.id == "ctx-branches"
        assert first.problems == []
        assert first.notes[-1] == (
            f"an earlier migration was interrupted before it set the head of branch "
            f"{unset!r}; finished now"
        )
        return [c.status for c in report.contexts]

    assert anyio.run(rerun) == [
        ContextStatus.MIGRATED,
        ContextStatus.PARTIAL,
        ContextStatus.MIGRATED,
    ]
    got = tree(data_dir)
    assert got["ctx-branches"][unset] == reference["ctx-branches"][unset]
    assert got["ctx-branches"][done_branch] == [*reference["ctx-branches"][done_branch], added]

    # A complete context whose head was moved back (a regenerated reply does that) is
    # the user's business: it is not "finished" again.
    async def move_back() -> None:
        async with FileStore(data_dir) as store:
            path = await store.path("ctx-inconsistent", "main")
            await store.set_branch_head("ctx-inconsistent", "main", path[-2])

    anyio.run(move_back)
    moved = tree(data_dir)
    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "0 migrated, 0 partial, 3 skipped, 0 failed" in done.stdout
    assert tree(data_dir) == moved


def test_dry_run_says_an_interrupted_migration_would_be_finished(
    source: Path, data_dir: Path
) -> None:
    killed_migration(source, data_dir, heads_set=0)
    before = snapshot(data_dir)
    done = cli(data_dir, "migrate", str(source), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "3 context(s); 2 would be migrated, 1 partial, 0 skipped" in done.stdout
    assert "'alt', 'main'; migrating finishes it" in done.stdout
    assert snapshot(data_dir) == before
    assert heads(data_dir, "ctx-branches") == {"main": None, "alt": None}


def test_an_interrupted_migration_that_cannot_be_finished_says_what_to_do(
    source: Path, data_dir: Path
) -> None:
    killed_migration(source, data_dir, heads_set=0)

    async def damage() -> None:
        async with FileStore(data_dir) as store:
            (first,) = await store.get_messages("ctx-branches", ["b1"])
            changed = first.model_copy(update={"content": "not what v1 said"})
            await store.update_message("ctx-branches", changed)

    anyio.run(damage)
    for _ in range(2):  # and the same again: nothing was changed
        done = cli(data_dir, "migrate", str(source), "--no-backup")
        assert done.returncode == 1, done.stdout
        assert "Traceback" not in done.stderr
        assert "1 failed" in done.stdout
        assert "message contents differ from the source" in done.stdout
        assert (
            "context 'ctx-branches' was left incomplete; remove it "
            f"(`cm-notebook --data-dir {shlex.quote(str(data_dir))} rm ctx-branches`) and "
            "migrate again" in done.stdout
        )
        assert heads(data_dir, "ctx-branches") == {"main": None, "alt": None}


# -- a migration killed while it wrote the messages --------------------------------------


def test_killed_while_writing_messages_is_finished_by_the_next_run(
    source: Path, data_dir: Path, reference: dict[str, dict[str, list[str]]]
) -> None:
    killed_migration(source, data_dir, messages_written=2)
    # The state the kill left: two of the first context's messages, no head set.
    left = tree(data_dir)["ctx-branches"]
    assert len(left["<messages>"]) == 2
    assert heads(data_dir, "ctx-branches") == {"main": None, "alt": None}
    total = len(reference["ctx-branches"]["<messages>"])

    dry = cli(data_dir, "migrate", str(source), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "interrupted after 2 of its messages; migrating finishes it" in dry.stdout
    assert tree(data_dir)["ctx-branches"] == left

    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "3 context(s); 2 migrated, 1 partial, 0 skipped, 0 failed" in done.stdout
    assert f"interrupted after 2 of its messages; the other {total - 2} written now" in (
        done.stdout
    )
    assert tree(data_dir) == reference

    # Finished means finished: the run after that changes nothing.
    before = snapshot(data_dir)
    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "0 migrated, 0 partial, 3 skipped, 0 failed" in done.stdout
    assert snapshot(data_dir) == before


def test_killed_while_writing_messages_then_changed_is_left_for_the_user(
    source: Path, data_dir: Path
) -> None:
    killed_migration(source, data_dir, messages_written=2)

    async def change() -> str:
        async with FileStore(data_dir) as store:
            first_id = sorted(await store.index("ctx-branches"))[0]
            (first,) = await store.get_messages("ctx-branches", [first_id])
            await store.update_message(
                "ctx-branches", first.model_copy(update={"content": "not what v1 said"})
            )
            return first_id

    changed = anyio.run(change)
    before = snapshot(data_dir / "contexts" / "ctx-branches")
    done = cli(data_dir, "migrate", str(source), "--no-backup")
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    assert f"message {changed!r} differs from the source" in done.stdout
    assert (
        f"(`cm-notebook --data-dir {shlex.quote(str(data_dir))} rm ctx-branches`) and "
        "migrate again" in done.stdout
    )
    assert snapshot(data_dir / "contexts" / "ctx-branches") == before


# -- D2: half of an emoji (a lone UTF-16 surrogate) in the v1 text --------------------

CUT = "\\ud83d"  # as v1's JSON holds it: JavaScript cut "Trip to Paris 🗼" in two


def cut_emoji_source(folder: Path) -> Path:
    """A contexts.json: a healthy chat, and one with four half emojis (and a whole one)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "contexts.json"
    path.write_text(
        '[{"id": "ok1", "title": "fine", "messages": [{"role": "user", "content": "hello"}]},'
        f' {{"id": "trip", "title": "Trip to Paris {CUT}", "messages": ['
        f'{{"role": "user", "content": "Plan 5 days {CUT} in Paris \\ud83d\\uddfc"}},'
        f'{{"role": "assistant", "content": "Day 1: the Louvre", "note{CUT}": "x\\udc00"}}]}}]',
        encoding="utf-8",
    )
    return path


def stored_files_are_utf8(data_dir: Path) -> None:
    for path in data_dir.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl"):
            path.read_bytes().decode("utf-8")  # strict: raises on an encoded surrogate


@pytest.mark.parametrize("command", ["migrate", "import"])
def test_half_emojis_are_replaced_and_the_rest_migrates(
    command: str, tmp_path: Path, data_dir: Path
) -> None:
    v1 = cut_emoji_source(tmp_path / "src")
    done = cli(data_dir, command, str(v1), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "2 context(s); 2 migrated, 0 partial, 0 skipped, 0 failed" in done.stdout
    assert (
        "4 characters that were half an emoji were replaced with U+FFFD, the replacement "
        "character" in done.stdout
    )
    stored_files_are_utf8(data_dir)

    async def read() -> tuple[str, list[str], dict[str, object]]:
        async with FileStore(data_dir) as store:
            meta = await store.get_metadata("trip")
            messages = await store.page("trip")
        return meta.title, [m.content for m in messages], messages[1].metadata.model_dump()

    title, contents, metadata = anyio.run(read)
    assert title == "Trip to Paris \ufffd"
    # A whole pair stays the emoji; only the lone half is replaced.
    assert contents == ["Plan 5 days \ufffd in Paris \U0001f5fc", "Day 1: the Louvre"]
    assert "note\ufffd" in json.dumps(metadata, ensure_ascii=False)

    # The same source is recognised on the next run.
    done = cli(data_dir, command, str(v1), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "0 migrated, 0 partial, 2 skipped, 0 failed" in done.stdout


def test_half_emojis_in_per_context_files(tmp_path: Path, data_dir: Path) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "a.json").write_text(
        json.dumps({"id": "ok", "message_pool": {}, "branches": {}}), encoding="utf-8"
    )
    pool = (
        '{"id": "p1", "title": "pool", "message_pool": {"m1": {"id": "m1", "parent_id": null, '
        f'"message": {{"role": "User", "content": [{{"type": "text", "text": "hi {CUT}"}}]}}}}}},'
        ' "branches": {"main": {"name": "main", "message_ids": ["m1"]}}}'
    )
    (folder / "b.json").write_text(pool, encoding="utf-8")
    done = cli(data_dir, "migrate", str(folder), "--no-backup")
    assert done.returncode == 0, done.stderr
    assert "2 context(s); 2 migrated" in done.stdout
    assert "1 character that was half an emoji was replaced" in done.stdout
    stored_files_are_utf8(data_dir)


def test_parse_v1_takes_decoded_data_with_half_emojis() -> None:
    record = {"id": "c", "title": "x\ud83d", "messages": [{"role": "user", "content": "\ud83d"}]}
    (ctx,) = parse_v1([record]).contexts
    (again,) = parse_v1([json.loads(json.dumps(record))]).contexts
    assert ctx.title == "x\ufffd"
    assert ctx.messages[0].content == "\ufffd"
    assert ctx.source_sha256 == again.source_sha256
    assert ctx.notes == [
        "2 characters that were half an emoji were replaced with U+FFFD, the replacement character"
    ]
    # A record without any keeps the hash it always had (migrated folders still match).
    (plain,) = parse_v1([{"id": "c", "messages": []}]).contexts
    assert plain.source_sha256 == hashlib.sha256(b'{"id":"c","messages":[]}').hexdigest()
