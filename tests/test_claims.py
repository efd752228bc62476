"""A branch's claim says why it is held: a send refused while the branch is being
deleted is told so, not to wait for a reply that does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from cm_notebook._claims import BranchClaims
from cm_notebook.errors import BusyError


def _claims(tmp_path: Path) -> BranchClaims:
    return BranchClaims(lambda branch: tmp_path / f"{branch}.claim")


def test_a_send_on_a_branch_being_deleted_here_is_told_so(tmp_path: Path) -> None:
    claims = _claims(tmp_path)
    deleting = claims.take("b1", deleting=True)
    with pytest.raises(
        BusyError,
        match=r"branch 'b1' is being deleted, so nothing can be sent on it; send on another",
    ):
        claims.take("b1")
    deleting.release()
    claims.take("b1").release()  # free again


def test_a_send_on_a_branch_another_writer_deletes_is_told_so(tmp_path: Path) -> None:
    # Two claim sets on one folder: two sessions (or processes) of one context.
    deleter, sender = _claims(tmp_path), _claims(tmp_path)
    deleting = deleter.take("b1", deleting=True)
    with pytest.raises(BusyError, match=r"'b1' is being deleted by another writer \(pid \d+"):
        sender.take("b1")
    deleting.release()
    turn = deleter.take("b1")  # the same owner, now for a reply: the file says so again
    with pytest.raises(BusyError, match="a reply is being generated there"):
        sender.take("b1")
    turn.release()


def test_a_reply_in_progress_is_still_named(tmp_path: Path) -> None:
    claims = _claims(tmp_path)
    claims.take("main")
    with pytest.raises(BusyError, match="a reply is still being generated on branch 'main'"):
        claims.take("main")


def test_a_claim_counts_as_taken_only_once_granted(tmp_path: Path) -> None:
    # A take refused because another writer holds the branch leaves it not taken here
    # (a follower must not hide that writer's waiting calls); a granted one is taken
    # until it is given back.
    owner, asker = _claims(tmp_path), _claims(tmp_path)
    turn = owner.take("main")
    with pytest.raises(BusyError):
        asker.take("main")
    assert asker.held() == asker.taken() == frozenset()
    assert owner.taken() == frozenset({"main"})
    turn.release()
    assert owner.taken() == frozenset()
    asker.take("main")
    assert asker.taken() == frozenset({"main"})
