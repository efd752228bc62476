"""The replies as a table: records, a pandas DataFrame, CSV, and the error without pandas."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook import tool
from cm_notebook.providers.base import (
    ChatRequest,
    Finish,
    RefusalDelta,
    StreamChunk,
    TextDelta,
)
from cm_notebook.records import COLUMNS
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _study(new_session: Callable[..., ContextSession]) -> ContextSession:
    fake = (
        ScriptedProvider()
        .reply("Blue.", usage=(5, 2))
        .tool_call("add", {"a": 1, "b": 2}, usage=(7, 4))
        .reply("It is 3.", usage=(9, 3))
        .reply("Green.", usage=(5, 2))
    )
    session = new_session("study", provider=fake, system="Be brief.", tools=[add], approval="auto")
    session.send("Sky colour?", temperature=0.5, seed=3).result(DEADLINE)
    session.send("Add 1 and 2").result(DEADLINE)
    first_reply = session.history()[1].id
    session.branch("other", first_reply, switch=False)
    session.send("Grass colour?", branch="other").result(DEADLINE)
    return session


def test_one_row_per_turns_reply_with_every_column(
    new_session: Callable[..., ContextSession],
) -> None:
    session = _study(new_session)
    main = session.history("main")
    session.rate(main[1].id, thumbs="up", score=5, tags=["short"], note="good", by="ann")
    session.score(lambda m: len(m.content), name="chars", progress=False)

    rows = session.to_records()
    # The turn's step that only asks for the tool is no answer: no row of its own.
    roles = ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert [m.role for m in main] == roles
    assert [row["output"] for row in rows] == ["Blue.", "It is 3.", "Green."]
    assert [row["branch"] for row in rows] == ["main", "main", "other"]
    assert [row["turn"] for row in rows] == [1, 2, 2]  # turns of its own branch
    assert [row["prompt"] for row in rows] == ["Sky colour?", "Add 1 and 2", "Grass colour?"]
    assert list(rows[0]) == [*COLUMNS, "param_seed", "param_temperature", "metric_chars"]
    first = rows[0]
    assert first["context_id"] == session.id
    assert first["message_id"] == main[1].id
    assert (first["provider"], first["model"]) == ("scripted", "scripted")
    assert first["parameters"] == {"temperature": 0.5, "seed": 3}
    assert (first["param_temperature"], first["param_seed"], first["seed"]) == (0.5, 3, 3)
    assert first["system_prompt"] == "Be brief."
    assert first["finish_reason"] == "stop"
    assert (first["thumbs"], first["score"], first["tags"], first["note"]) == (
        "up",
        5,
        ["short"],
        "good",
    )
    assert (first["input_tokens"], first["output_tokens"]) == (5, 2)
    assert first["latency_ms"] is not None
    assert first["ttft_ms"] is not None
    assert first["tool_calls"] == 0
    assert (first["turn_input_tokens"], first["turn_output_tokens"]) == (5, 2)
    assert first["request_id"] == "scripted-1"
    assert first["request_hash"].startswith("sha256:")
    assert isinstance(first["created_at"], datetime)
    assert first["created_at"].tzinfo is not None
    assert first["status"] == "complete"
    assert first["variant"] is None
    assert first["metric_chars"] == 5
    # The answer's own tokens; the turn's tool calls and tokens (its step's with them).
    assert (rows[1]["input_tokens"], rows[1]["output_tokens"]) == (9, 3)
    assert (rows[1]["turn_input_tokens"], rows[1]["turn_output_tokens"]) == (16, 7)
    assert rows[1]["tool_calls"] == 1
    assert rows[1]["param_seed"] is None  # every row has every column
    # Asking for one branch: its replies only.
    assert [row["output"] for row in session.to_records("other")] == ["Blue.", "Green."]


def test_a_reply_edited_by_hand_is_marked_with_the_reply_it_was_edited_from(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(["Paris.", "The Eiffel Tower."])
    session = new_session(provider=fake)
    session.send("Capital of France?").result(DEADLINE)
    session.send("Famous for?").result(DEADLINE)
    original = session.history()[1]
    fake.reply("Its wall.")
    comparison = session.counterfactual(original.id, "Berlin.").result(DEADLINE)
    rows = session.to_records(comparison.other)
    assert [(r["output"], r["edited_from"]) for r in rows] == [
        ("Berlin.", original.id),  # written by hand, not by the model
        ("Its wall.", None),
    ]
    assert [r["edited_from"] for r in session.to_records("main")] == [None, None]
    pytest.importorskip("pandas")
    frame = session.to_dataframe(comparison.other)
    assert frame["edited_from"].iloc[0] == original.id
    assert frame["edited_from"].isna().iloc[1]


def test_a_reply_made_before_a_fork_takes_none_of_the_arms_labels(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session("arms", provider=ScriptedProvider(["Sure.", "Hot.", "Cold."]))
    session.send("Warm-up question").result(DEADLINE)
    session.fan_out(
        "Real question",
        [{"branch": "hot", "temperature": 1.0}, {"branch": "cold", "temperature": 0.0}],
    ).result(DEADLINE)
    session.label("hot", variant="hot", run="1")
    session.label("cold", variant="cold", run="2")
    session.label("main", variant="base")
    rows = session.to_records(["hot", "cold"])
    # The warm-up, answered on main, is one row on the first branch asked for, but it
    # is not the "hot" arm's reply: no variant, no labels.
    warm_up = rows[0]
    assert (warm_up["branch"], warm_up["prompt"]) == ("hot", "Warm-up question")
    assert (warm_up["variant"], warm_up["label_variant"], warm_up["label_run"]) == (None,) * 3
    assert [(row["branch"], row["variant"], row["label_run"]) for row in rows[1:]] == [
        ("hot", "hot", "1"),
        ("cold", "cold", "2"),
    ]
    # With main asked for first, the warm-up is main's, with main's labels.
    assert session.to_records()[0]["variant"] == "base"


def test_dataframe_and_csv_hold_the_same_table(
    new_session: Callable[..., ContextSession], tmp_path: Path
) -> None:
    import pandas as pd

    session = _study(new_session)
    session.rate(session.history()[1].id, tags=["a", "b"])
    rows = session.to_records()
    frame = session.to_dataframe()
    assert list(frame.columns) == list(rows[0])
    assert len(frame) == 3
    assert isinstance(frame["created_at"].dtype, pd.DatetimeTZDtype)
    assert frame.loc[0, "output"] == "Blue."
    assert frame.loc[0, "tags"] == ["a", "b"]

    path = session.to_csv(tmp_path / "study.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == list(rows[0])
    assert [row["output"] for row in read] == ["Blue.", "It is 3.", "Green."]
    assert json.loads(read[0]["tags"]) == ["a", "b"]
    assert json.loads(read[0]["parameters"]) == {"seed": 3, "temperature": 0.5}
    assert datetime.fromisoformat(read[0]["created_at"]) == rows[0]["created_at"]
    assert read[0]["score"] == ""  # None is an empty cell


def test_line_breaks_of_every_kind_stay_inside_their_cell(tmp_path: Path) -> None:
    from cm_notebook.records import write_csv

    texts = ["progress 10%\rprogress 100%", "one\ntwo", "dos\r\nline", "plain"]
    path = write_csv(tmp_path / "breaks.csv", [{"output": text, "n": 1} for text in texts])
    with path.open(newline="", encoding="utf-8") as handle:
        assert [row["output"] for row in csv.DictReader(handle)] == texts
    pd = pytest.importorskip("pandas")
    frame = pd.read_csv(path, keep_default_na=False)
    assert list(frame["output"]) == texts


def test_an_empty_context_gives_the_columns_and_no_rows(
    new_session: Callable[..., ContextSession], tmp_path: Path
) -> None:
    session = new_session("empty", provider=ScriptedProvider())
    assert session.to_records() == []
    assert list(session.to_dataframe().columns) == list(COLUMNS)
    text = session.to_csv(tmp_path / "empty.csv").read_text(encoding="utf-8")
    assert text == ",".join(COLUMNS) + "\n"


def test_bad_targets_are_clear_errors(
    new_session: Callable[..., ContextSession], tmp_path: Path
) -> None:
    from cm_notebook.errors import InvalidInputError, StoreIOError

    session = _study(new_session)
    with pytest.raises(InvalidInputError, match="no branch 'nope'"):
        session.to_records(["nope"])
    with pytest.raises(StoreIOError, match="missing"):
        session.to_csv(tmp_path / "missing" / "x.csv")
    with pytest.raises(InvalidInputError, match="file path"):
        session.to_csv(3)  # type: ignore[arg-type]


def test_without_pandas_the_dataframe_names_the_extra_and_csv_still_works(
    new_session: Callable[..., ContextSession], data_dir: Path, tmp_path: Path
) -> None:
    session = _study(new_session)
    out = tmp_path / "no-pandas.csv"
    # A child interpreter where ``import pandas`` fails, as it does when it is not
    # installed (a None entry in sys.modules makes the import raise ImportError).
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["pandas"] = None
        from cm_notebook.errors import ExtraNotInstalledError
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider
        s = ContextSession.open({session.id!r}, data_dir={str(data_dir)!r},
                                provider=ScriptedProvider())
        try:
            s.to_dataframe()
        except ExtraNotInstalledError as exc:
            assert isinstance(exc, ImportError)
            print("refused:", exc)
        print(len(s.to_records()), s.to_csv({str(out)!r}).name)
        s.close()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "refused: to_dataframe() needs pandas" in result.stdout
    assert "pip install 'cm_notebook[data]'" in result.stdout
    assert "3 no-pandas.csv" in result.stdout
    assert out.read_text(encoding="utf-8").startswith("context_id,branch,message_id")


def test_a_name_that_is_not_utf8_is_written_as_a_replacement_not_a_lost_file(
    tmp_path: Path,
) -> None:
    from cm_notebook.records import write_csv

    path = tmp_path / "study.csv"
    path.write_text("the earlier table\n", encoding="utf-8")
    # E.g. a variant label taken from a file name with os.fsdecode: a lone surrogate.
    write_csv(path, [{"variant": "caf\udce9", "output": "Blue."}])
    assert path.read_text(encoding="utf-8") == "variant,output\ncaf\ufffd,Blue.\n"


def test_a_path_that_names_no_file_is_an_input_error_saying_what_to_do(
    new_session: Callable[..., ContextSession], tmp_path: Path
) -> None:
    # Not the store's damage advice ("restore from a backup"), nor an OS error's bare
    # words ("Device or resource busy", "embedded null byte").
    from cm_notebook.errors import InvalidInputError

    session = _study(new_session)
    out = tmp_path / "out"
    folder = out / "results"
    folder.mkdir(parents=True)
    cases = [
        (folder, r"is a folder, not a file; give a file in it, e\.g\. '.*results\.csv'"),
        (str(folder) + "/", r"names a folder \(it ends with a slash\); give a file in it"),
        ("", r"the CSV path is empty: give the file to write, e\.g\. 'results\.csv'"),
        ("   ", r"the CSV path is empty"),
        (str(out / "bad\x00name.csv"), r"not a valid file path: it holds a NUL character"),
        (out / "study.csv" / "x.csv", r"is a file, not a folder\. Give a path in a folder"),
    ]
    (out / "study.csv").write_text("kept")
    for path, words in cases:
        with pytest.raises(InvalidInputError, match=words) as caught:
            session.to_csv(path)
        assert "backup" not in str(caught.value)
    assert sorted(p.name for p in out.iterdir()) == ["results", "study.csv"]
    assert list(folder.iterdir()) == []
    assert (out / "study.csv").read_text() == "kept"


class _Refuser:
    """A refusal flagged in the stream (OpenAI's, ending "stop"), one ended by a
    ``refusal`` finish (Anthropic's), then an answer."""

    name = "refuser"
    model = "refuser-1"

    def __init__(self) -> None:
        self.replies = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        self.replies += 1
        if self.replies == 1:
            yield RefusalDelta("I can't help with that.")
            yield Finish("stop")
        elif self.replies == 2:
            yield TextDelta("I won't.")
            yield Finish("refusal")
        else:
            yield TextDelta("Sure.")
            yield Finish("stop")

    async def aclose(self) -> None:
        pass


def test_a_refusal_is_told_apart_in_its_own_column(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=_Refuser())
    for prompt in ("Rob a bank?", "Rob it anyway?", "Hello?"):
        session.send(prompt).result(DEADLINE)
    rows = session.to_records()
    assert [(r["finish_reason"], r["refusal"]) for r in rows] == [
        ("stop", True),
        ("refusal", True),
        ("stop", False),
    ]
    assert "refusal" in COLUMNS
