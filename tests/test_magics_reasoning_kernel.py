"""A ``%%cm`` reply shows a thinking model's reasoning as it streams, in a real kernel.

The cell ends at once; the reply's output is then replaced in place through its
display id (tests/widget_frontend.py records every display and update).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("jupyter_client")

from widget_frontend import FrontEnd, front_end

pytestmark = pytest.mark.slow

PLAIN = "<cm_notebook reply (HTML)>"


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("magics-reasoning")) as frontend:
        frontend.run("%load_ext cm_notebook")
        yield frontend


def _reply_output(fe: FrontEnd, code: str) -> str:
    before = set(fe.displays)
    fe.run(code)
    [display_id] = [key for key in fe.displays if key not in before]
    assert fe.displays[display_id]["text/plain"] == PLAIN
    return display_id


def _shown(fe: FrontEnd, display_id: str) -> list[str]:
    # Every version of the output, in the order the front end got them.
    return [str(data["text/html"]) for _cell, key, data in fe.display_log if key == display_id]


def test_a_model_still_thinking_shows_how_far_it_got_then_its_reasoning_block(
    fe: FrontEnd,
) -> None:
    fe.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.testing import ScriptedProvider
        s = ContextSession.create(
            "thinking", provider=ScriptedProvider().hang(reasoning="Weighing <every> option.")
        )
        %cm use s
        """
    )
    reply = _reply_output(fe, "%%cm\nHard question?")
    # While it still thinks (no word of answer yet): the reasoning so far, escaped.
    fe.wait_for(
        lambda: "Thinking… (3 words)" in str(fe.displays[reply]["text/html"]),
        what="the reasoning shown while the model thinks",
    )
    live = str(fe.displays[reply]["text/html"])
    assert "Weighing &lt;every&gt; option." in live
    assert "<every>" not in live
    # Stopped: the saved output shows the reasoning as the reply's collapsed block.
    fe.run("%cm stop")
    fe.wait_for(
        lambda: "Reasoning (3 words)" in str(fe.displays[reply]["text/html"]),
        what="the stopped reply's reasoning block",
    )
    final = str(fe.displays[reply]["text/html"])
    assert "Thinking…" not in final
    assert "<details" in final
    assert "<details open" not in final


def test_the_reasoning_grows_in_the_output_before_the_answer_comes(fe: FrontEnd) -> None:
    thought = "".join(f"step{i} " for i in range(30))
    fe.run(
        f"""
        s2 = ContextSession.create(
            "thinks then answers",
            provider=ScriptedProvider().reply(
                "It is 4.", reasoning={thought!r}, chunks="words", delay=0.03
            ),
        )
        %cm use s2
        """
    )
    reply = _reply_output(fe, "%%cm\n2+2?")
    fe.run("await _")
    versions = _shown(fe, reply)
    # Shown while the model thought, before any word of the answer was.
    before = [page for page in versions if "Thinking…" in page and "It is" not in page]
    assert before
    assert versions.index(before[0]) < min(
        i for i, page in enumerate(versions) if "It is 4." in page
    )
    assert "Reasoning (30 words)" in versions[-1]
    assert "Thinking…" not in versions[-1]
