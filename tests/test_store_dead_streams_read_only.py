"""Replies whose writer died, read where the folder cannot be written: as a writable open.

A writable open marks such a reply (store/dead_streams.py): its file's final state where
the writer got that far and only the journal's completion line is missing (cut off
mid-line by the kill), else ``interrupted`` with the text the signal log holds after its
last checkpoint. A reader of a read-only copy (a colleague's folder on a read-only
mount) cannot write that, but reads the same (store/unmarked_streams.py): no warning
and a clean ``check`` for the first; for the second the text, shown interrupted, with a
warning that nothing could be written. And it writes nothing.

The folder is made read-only for real (the fixture of test_store_journal_cut_read_only)
and the killed writer is a real process, killed with SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import anyio
import pytest
from test_store_journal_cut_read_only import (  # noqa: F401 (the fixture)
    _files,
    _make_read_only,
    read_only,
)
from test_stream_tail import _killed_mid_reply

from cm_notebook.cli import main
from cm_notebook.fsm import State
from cm_notebook.model import Message, MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.dead_streams import WRITER_DIED
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL and flock")


def _journal(data_dir: Path, context_id: str) -> Path:
    return data_dir / "contexts" / context_id / "message_index.journal"


def _reply_with_its_completion_line_cut(data_dir: Path) -> tuple[str, str]:
    """A turn whose reply finished, the journal's last line (the reply's completion)
    then cut short as a writer killed mid-line leaves it: (context id, reply id)."""
    session = ContextSession.create(provider=ScriptedProvider(["the answer"]), data_dir=data_dir)
    try:
        reply = session.send("hello").result(30)
    finally:
        session.close()
    journal = _journal(data_dir, session.id)
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    assert reply.id.encode() in last
    assert b'"status":"complete"' in last
    journal.write_bytes(data[:-40])  # cut inside that line
    return session.id, reply.id


def _read(data_dir: Path, context_id: str) -> tuple[Message, MessageStatus, str]:
    """The last message of the context's main branch, its status in the index, and
    what ``check`` (without repair) reports."""

    async def read() -> tuple[Message, MessageStatus, str]:
        async with FileStore(data_dir) as store:
            last = (await store.page(context_id))[-1]
            status = (await store.index(context_id))[last.id].status
            return last, status, str(await store.check(context_id))

    return anyio.run(read)


def _cli_check(data_dir: Path, context_id: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["--data-dir", str(data_dir), "check", context_id])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert err == ""  # no warning either
    return out


def test_a_completion_line_cut_off_reads_and_checks_read_only_as_written(
    read_only: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir, view = read_only
    context_id, reply_id = _reply_with_its_completion_line_cut(data_dir)
    writable = tmp_path / "writable"
    shutil.copytree(data_dir, writable)
    _make_read_only(data_dir, view)
    before = _files(view)

    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        as_read = _read(view, context_id)
        said = _cli_check(view, context_id, capsys)
        session = ContextSession.open(context_id, data_dir=view)
        try:
            shown = session.history()[-1]
            records = session.to_records()
        finally:
            session.close()

    reply, status, report = as_read
    assert reply.id == reply_id
    assert (reply.status, reply.content) == (MessageStatus.COMPLETE, "the answer")
    assert status is MessageStatus.COMPLETE  # the index's, as the marking journals it
    assert report.endswith("message(s), ok"), report
    assert (shown.status, shown.content) == (MessageStatus.COMPLETE, "the answer")
    assert [(r["status"], r["output"]) for r in records] == [("complete", "the answer")]
    # What a writable copy of the same bytes reads and reports, after marking the reply.
    assert _read(writable, context_id) == as_read
    assert _cli_check(writable, context_id, capsys) == said
    assert _files(view) == before  # nothing written


def test_a_reply_killed_mid_stream_reads_read_only_with_the_text_the_log_holds(
    read_only: tuple[Path, Path],  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    data_dir, view = read_only
    text = "one two three four"
    # The text after the last checkpoint is only in the signal log.
    context_id = _killed_mid_reply(data_dir, [{"hang": True, "after_chunks": 4, "text": text}], 18)
    writable = tmp_path / "writable"
    shutil.copytree(data_dir, writable)
    _make_read_only(data_dir, view)
    before = _files(view)

    with pytest.warns(StoreWarning) as caught:
        reply, status, report = _read(view, context_id)
    assert (reply.status, reply.content) == (MessageStatus.INTERRUPTED, text)
    assert reply.metadata.error == WRITER_DIED  # its process died, not "still generating"
    assert status is MessageStatus.INTERRUPTED
    assert report.endswith("message(s), ok"), report
    said = [str(w.message) for w in caught if isinstance(w.message, StoreWarning)]
    assert len(said) == 1, said  # once, not once per read
    assert "reads as interrupted" in said[0]
    assert "nothing was written" in said[0]
    assert "as it was left" not in said[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        session = ContextSession.open(context_id, data_dir=view)
        try:
            shown = session.history()[-1]
            records = session.to_records()
            state = session.state_of(session.active_branch)
        finally:
            session.close()
    assert shown.model_dump() == reply.model_dump()
    assert [(r["status"], r["output"]) for r in records][-1] == ("interrupted", text)
    assert state is State.IDLE

    # What a writable open of the same bytes reads once it has marked the reply.
    assert _read(writable, context_id) == (reply, status, report)
    assert _files(view) == before  # nothing written
