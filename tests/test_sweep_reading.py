"""Reading a sweep: a handle that has ended reads its cells as the store has them (a
later run may have answered them), every record says why its reply failed, and Ctrl-C
in a script's ``run()`` says that the sweep goes on."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest
from test_session_support import DEADLINE, close_all

from cm_notebook.errors import PermanentProviderError
from cm_notebook.session import ContextSession
from cm_notebook.sweep import Sweep
from cm_notebook.testing import ScriptedProvider


def _readings(sweep: Sweep) -> dict[str, object]:
    # Everything a handle answers about its cells, read through its public methods.
    return {
        "counts": sweep.counts(),
        "repr": repr(sweep),
        "statuses": [cell.status for cell in sweep.cells],
        "replies": [cell.reply for cell in sweep.cells],
        "errors": [cell.error for cell in sweep.cells],
        "records": [(r["cell"], r["status"], r["output"]) for r in sweep.to_records()],
        "agreement": [g.agreement for g in sweep.stability().groups],
        "stability": repr(sweep.stability()),
        "grid_failed": sweep._repr_html_().count("failed"),
    }


def test_an_ended_handle_reads_a_cell_answered_by_a_later_run_as_done(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).reply("r0").error(PermanentProviderError("quota exceeded"))
    session = new_session(provider=fake)
    first = session.sweep(["q0", "q1"], [{}], name="stale", concurrency=1, progress=False)
    first.run(DEADLINE)
    assert first.counts()["failed"] == 1
    assert first.cell("p1-v0-r0").error == "quota exceeded"
    fake.reply("r1")
    again = session.sweep(["q0", "q1"], [{}], name="stale", concurrency=1, progress=False)
    again.run(DEADLINE)
    # The old handle agrees with the new one, and with its own records, in every reading.
    assert _readings(first) == _readings(again)
    assert first.counts() == {"pending": 0, "running": 0, "done": 2, "failed": 0}
    assert repr(first) == "<Sweep 'stale' 2 cells: 2 done>"
    assert first.cell("p1-v0-r0").message_id == again.cell("p1-v0-r0").message_id
    assert [cell.reply for cell in first.cells] == ["r0", "r1"]
    assert [cell.error for cell in first.cells] == [None, None]
    assert [g.agreement for g in first.stability().groups] == [1.0, 1.0]
    assert repr(first.stability()) == "<SweepStability 'stale' 2 groups, mean agreement 100%>"
    assert len(fake.requests) == 3


def test_an_ended_handle_reads_cells_it_left_pending_as_a_later_run_finished_them(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().hang(after_chunks=1, text="partial")
    session = new_session(provider=fake)
    first = session.sweep(["q0", "q1"], [{}], name="cut", concurrency=1, progress=False)
    deadline = time.monotonic() + DEADLINE
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the first request, with a deadline
    first.cancel()
    first.run(DEADLINE)
    assert [cell.status for cell in first.cells] == ["failed", "pending"]
    fake.error(PermanentProviderError("quota exceeded")).reply("r1")
    again = session.sweep(["q0", "q1"], [{}], name="cut", concurrency=1, progress=False)
    again.run(DEADLINE)
    # The stopped cell's new reply failed too, with another reason: the old handle says
    # the store's reason; the cell it never started reads as answered.
    assert [cell.status for cell in first.cells] == ["failed", "done"]
    assert [cell.error for cell in first.cells] == ["quota exceeded", None]
    assert _readings(first) == _readings(again)


def test_an_ended_handle_reads_a_done_cell_regenerated_or_deleted_as_the_store_has_it(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(["Paris."] * 3)
    session = new_session(provider=fake)
    first = session.sweep("Capital?", [{}], repeat=3, name="regen", progress=False)
    first.run(DEADLINE)
    assert [g.agreement for g in first.stability().groups] == [1.0]
    regenerated, failed, deleted = first.cells
    fake.reply("Lyon.")
    new = session.regenerate(branch=regenerated.branch).result(DEADLINE)
    # The replaced "Paris." is on no branch: the handle reads the new reply, as its
    # records and a new handle (which asks nothing) do.
    assert (first.cell(regenerated.key).message_id, regenerated.reply) == (new.id, "Lyon.")
    assert [g.agreement for g in first.stability().groups] == [pytest.approx(2 / 3)]
    again = session.sweep("Capital?", [{}], repeat=3, name="regen", progress=False)
    again.run(DEADLINE)
    assert len(fake.requests) == 4
    assert _readings(first) == _readings(again)
    # A regenerated reply that fails makes the cell failed, with its reason.
    fake.error(PermanentProviderError("quota exceeded"))
    with pytest.raises(PermanentProviderError):
        session.regenerate(branch=failed.branch).result(DEADLINE)
    assert first.cell(failed.key).status == "failed"
    assert failed.error == "quota exceeded"
    # A deleted cell has no answer and no record: pending, as a cell not run.
    session.delete_branch(deleted.branch)
    assert first.counts() == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    assert (deleted.status, deleted.message_id, deleted.reply) == ("pending", None, "")
    assert [r["cell"] for r in first.to_records()] == ["p0-v0-r0", "p0-v0-r1"]
    assert first.stability().groups[0].stability.total == 1
    assert _readings(first) == _readings(again)
    # The next run asks the failed and the deleted cell again; the handle reads both.
    fake.reply("Paris.").reply("Paris.")
    third = session.sweep("Capital?", [{}], repeat=3, name="regen", progress=False)
    third.run(DEADLINE)
    assert [cell.reply for cell in first.cells] == ["Lyon.", "Paris.", "Paris."]
    assert _readings(first) == _readings(third)


_RERUN = textwrap.dedent(
    """
    import sys
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider
    data_dir, context_id = sys.argv[1:3]
    session = ContextSession.open(context_id, data_dir=data_dir,
                                  provider=ScriptedProvider(["r1"]))
    session.sweep(["q0", "q1"], [{}], name="elsewhere", progress=False).run(60)
    session.close()
    """
)


def test_an_ended_handle_reads_a_cell_another_process_answered(data_dir: Path) -> None:
    fake = ScriptedProvider(strict=True).reply("r0").error(PermanentProviderError("quota exceeded"))
    session = ContextSession.create(data_dir=data_dir, provider=fake)
    try:
        first = session.sweep(["q0", "q1"], [{}], name="elsewhere", concurrency=1, progress=False)
        first.run(DEADLINE)
        assert first.counts()["failed"] == 1
        subprocess.run(
            [sys.executable, "-c", _RERUN, str(data_dir), session.id], check=True, timeout=120
        )
        assert first.counts() == {"pending": 0, "running": 0, "done": 2, "failed": 0}
        assert [cell.reply for cell in first.cells] == ["r0", "r1"]
        assert [g.agreement for g in first.stability().groups] == [1.0, 1.0]
        assert [r["status"] for r in first.to_records()] == ["complete", "complete"]
    finally:
        close_all([session])


def test_records_say_why_a_reply_failed(new_session: Callable[..., ContextSession]) -> None:
    fake = ScriptedProvider(strict=True).reply("r0").error(PermanentProviderError("quota exceeded"))
    fake.hang(after_chunks=1, text="partial")
    session = new_session(provider=fake)
    sweep = session.sweep(["q0", "q1", "q2"], [{}], name="why", concurrency=1, progress=False)
    deadline = time.monotonic() + DEADLINE
    while len(fake.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the third request, with a deadline
    sweep.cancel()
    sweep.run(DEADLINE)
    rows = sweep.to_records()
    assert [(r["cell"], r["status"]) for r in rows] == [
        ("p0-v0-r0", "complete"),
        ("p1-v0-r0", "error"),
        ("p2-v0-r0", "interrupted"),
    ]
    failures = [r["failure"] for r in rows]
    assert failures[:2] == [None, "quota exceeded"]
    assert failures[2] is not None
    assert "cancel" in failures[2]
    # As the cells say it; ``error`` stays for files that cannot be read.
    assert failures == [cell.error for cell in sweep.cells]
    assert [r["error"] for r in rows] == [None, None, None]
    columns = list(rows[0])
    assert columns.index("failure") == columns.index("error") + 1


def test_the_dataframe_of_a_sweep_has_the_failure_column(
    new_session: Callable[..., ContextSession],
) -> None:
    pytest.importorskip("pandas")
    fake = ScriptedProvider(strict=True).reply("r0").error(PermanentProviderError("quota exceeded"))
    session = new_session(provider=fake)
    sweep = session.sweep(["q0", "q1"], [{}], name="frame", concurrency=1, progress=False)
    frame = sweep.run(DEADLINE).to_dataframe()
    assert frame["failure"].isna().tolist() == [True, False]
    assert frame["failure"].iloc[1] == "quota exceeded"
    assert list(frame.columns) == list(sweep.to_records()[0])
    # A sweep with no replies yet has the column too.
    empty = session.sweep(["q9"], [{}], name="none", progress=False)
    empty.cancel()
    assert "failure" in empty.run(DEADLINE).to_dataframe().columns


def _waiting_in_result(frame: FrameType | None) -> bool:
    # Whether a thread's stack is blocked in a handle's result() (a wait in threading).
    if frame is None or not frame.f_code.co_filename.endswith("threading.py"):
        return False
    while frame is not None:
        if frame.f_code.co_name == "result" and frame.f_code.co_filename.endswith("turn.py"):
            return True
        frame = frame.f_back
    return False


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="SIGINT")
def test_ctrl_c_in_a_scripts_run_says_the_sweep_goes_on(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().hang(after_chunks=1, text="partial")
    session = new_session(provider=fake)
    sweep = session.sweep(["q0"], [{}], name="ctrlc", progress=False)
    main = threading.main_thread()

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if _waiting_in_result(sys._current_frames().get(main.ident or 0)):
                signal.pthread_kill(main.ident or 0, signal.SIGINT)
                return
            time.sleep(0.01)  # poll the main thread's stack, with a deadline

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            sweep.run(DEADLINE)
    finally:
        presser.join(DEADLINE)
    notes = " ".join(getattr(caught.value, "__notes__", []))
    assert "the work goes on" in notes
    assert ".cancel()" in notes
    assert not sweep.done()  # as the note says
    sweep.cancel()
    assert sweep.run(DEADLINE).counts()["failed"] == 1
