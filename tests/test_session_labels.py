"""Branch labels and the pinned baseline: validated, stored, shown, and kept across reopen."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE, close_all

from cm_notebook.errors import BranchNotFoundError, InvalidInputError
from cm_notebook.export import export_context, import_document, parse_export, to_json
from cm_notebook.model import Branch
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider


def test_labels_are_stored_and_survive_reopen(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("hi").result(DEADLINE)
    updated = session.label("main", {"run.id": "r-1"}, model="small")
    assert updated.labels == {"run.id": "r-1", "model": "small"}
    session.label("main", model=None, seed="3")  # None removes a label
    cid = session.id
    close_all([session])
    reopened = ContextSession.open(cid, data_dir=data_dir)
    try:
        assert reopened.branches["main"].labels == {"run.id": "r-1", "seed": "3"}
        assert reopened.tree().labels == {"main": {"run.id": "r-1", "seed": "3"}}
        assert "labels=run.id=r-1,seed=3" in repr(reopened.branches["main"])
    finally:
        close_all([reopened])


@pytest.mark.parametrize(
    ("labels", "words"),
    [
        ({"bad key": "x"}, "label key"),
        ({"k": "two\nlines"}, "one line"),
        ({"k": "x" * 201}, "at most 200"),
        ({"k": 3}, "must be a string"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32"),
    ],
)
def test_bad_labels_are_refused_with_what_to_do(
    new_session: Callable[..., ContextSession], labels: dict[str, object], words: str
) -> None:
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(InvalidInputError, match=words):
        session.label("main", labels)  # type: ignore[arg-type]
    assert session.branches["main"].labels == {}


def test_a_secret_in_a_label_is_refused_without_quoting_it(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    key = "sk-" + "a1B2c3D4" * 5
    with pytest.raises(InvalidInputError) as caught:
        session.label("main", note=key)
    assert key not in str(caught.value)


def test_model_validation_of_labels() -> None:
    assert Branch(name="b", labels={"a": "1"}).labels == {"a": "1"}
    with pytest.raises(ValueError, match="mapping"):
        Branch(name="b", labels=["a"])  # type: ignore[arg-type]


def test_pin_baseline_moves_the_label(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider())
    assert session.baseline is None
    session.branch("other", switch=False)
    session.label("main", keep="yes")
    assert session.pin_baseline("main") == "main"
    assert session.baseline == "main"
    session.pin_baseline("other")
    assert session.baseline == "other"
    assert session.branches["main"].labels == {"keep": "yes"}
    assert session.branches["other"].labels == {"baseline": "true"}
    with pytest.raises(BranchNotFoundError):
        session.pin_baseline("nope")
    cid = session.id
    close_all([session])
    reopened = ContextSession.open(cid, data_dir=data_dir)
    try:
        assert reopened.baseline == "other"
        reopened.pin_baseline(None)
        assert reopened.baseline is None
    finally:
        close_all([reopened])


def test_the_baseline_label_is_not_set_by_label_but_by_pin_baseline(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.branch("b", switch=False)
    session.pin_baseline("main")
    for value in ("true", None):
        with pytest.raises(InvalidInputError, match=r"session.pin_baseline\('b'\)"):
            session.label("b", baseline=value)
    with pytest.raises(InvalidInputError, match="pin_baseline"):
        session.label("b", {"baseline": "true"}, run="3")
    assert session.branches["b"].labels == {}  # nothing written, not even run=3
    assert [n for n, b in session.branches.items() if b.labels.get("baseline")] == ["main"]


@pytest.mark.anyio
async def test_labels_round_trip_through_export(tmp_path: Path, data_dir: Path) -> None:
    async with ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir) as session:
        await session.send("hi")
        session.branch("arm", switch=False)
        session.label("arm", variant="t0")
        cid = session.id
    async with FileStore(data_dir) as source, FileStore(tmp_path / "other") as target:
        document = parse_export(to_json(await export_context(source, cid)))
        await import_document(target, document)
        assert (await target.get_metadata(cid)).branches["arm"].labels == {"variant": "t0"}


_LABELLER = """
import sys, time
from pathlib import Path
from cm_notebook.session import ContextSession
context, data_dir, prefix, start = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
session = ContextSession.open(context, data_dir=data_dir)
time.sleep(max(0.0, start - time.time()))
for n in range(12):
    session.label("main", **{f"{prefix}{n}": "v"})
session.pin_baseline("main" if prefix == "p" else "other")
session.close()
"""


def test_two_processes_labelling_at_once_lose_no_label(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("hi").result(DEADLINE)
    session.branch("other", switch=False)
    cid = session.id
    close_all([session])
    start = time.time() + 1.5  # both started and waiting, then both at once
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _LABELLER, cid, str(data_dir), prefix, str(start)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for prefix in "pq"
    ]
    for child in children:
        _, errors = child.communicate(timeout=60)
        assert child.returncode == 0, errors
    reopened = ContextSession.open(cid, data_dir=data_dir)
    try:
        labels = {**reopened.branches["main"].labels, **reopened.branches["other"].labels}
        assert {f"{p}{n}" for p in "pq" for n in range(12)} <= set(labels)
        pinned = [b for b in reopened.branches.values() if "baseline" in b.labels]
        assert len(pinned) == 1  # two pins at once: exactly one baseline
    finally:
        close_all([reopened])
