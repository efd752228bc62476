"""A ``%%cm`` cell records its reply's provenance in the output's metadata, and the
kernel variables that fed the message in the message, in a real kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import front_end

from cm_notebook.provenance import describe_value
from cm_notebook.session import ContextSession


def test_a_cell_output_records_provenance_and_the_variables_that_fed_it(
    tmp_path: Path,
) -> None:
    with front_end(tmp_path) as fe:
        fe.run("%load_ext cm_notebook")
        out = fe.run(
            """
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            s = ContextSession.create("cells", provider=ScriptedProvider(["Paris."]))
            %cm use s
            country = "France"
            print(s.id)
            """
        )
        context_id = out.split()[-1]
        before = set(fe.displays)
        fe.run(
            """
            %%cm --temperature 0.3
            What is the capital of {country}?
            """
        )
        [display_id] = [key for key in fe.displays if key not in before]

        def final() -> dict[str, object] | None:
            recorded = fe.display_metadata[display_id].get("cm_notebook", {})
            return recorded if recorded.get("status") == "complete" else None

        recorded = fe.wait_for(final, what="the reply's provenance in the output metadata")

    stored = ContextSession.open(context_id, data_dir=tmp_path)
    try:
        user, reply = stored.history()
    finally:
        stored.close()
    assert user.metadata.variables == {"country": describe_value("France")}
    assert recorded["context_id"] == context_id
    assert recorded["branch"] == "main"
    assert recorded["message_id"] == reply.id
    assert recorded["provider"] == "scripted"
    assert recorded["parameters"] == {"temperature": 0.3}
    assert recorded["request_id"] == reply.metadata.request_id == "scripted-1"
    assert recorded["request_hash"] == reply.metadata.request_hash
    assert recorded["variables"] == {"country": describe_value("France")}


def test_a_failed_reply_records_that_it_failed_and_why(tmp_path: Path) -> None:
    with front_end(tmp_path) as fe:
        fe.run("%load_ext cm_notebook")
        fe.run(
            """
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            failing = ScriptedProvider().load(
                [{"error": "permanent", "message": "the model is gone"}])
            s = ContextSession.create("fails", provider=failing)
            %cm use s
            """
        )
        before = set(fe.displays)
        fe.run("%%cm\nHello?")
        [display_id] = [key for key in fe.displays if key not in before]
        recorded = fe.wait_for(
            lambda: (
                fe.display_metadata[display_id]["cm_notebook"]
                if fe.display_metadata[display_id]["cm_notebook"]["status"] != "streaming"
                else None
            ),
            what="the failure in the output metadata",
        )
    assert recorded["status"] == "failed"
    assert "the model is gone" in recorded["error"]


def test_an_ab_cell_records_each_arms_provenance_and_the_variables(tmp_path: Path) -> None:
    with front_end(tmp_path) as fe:
        fe.run("%load_ext cm_notebook")
        out = fe.run(
            """
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            s = ContextSession.create("arms", provider=ScriptedProvider(["Paris.", "Arr, Paris."]))
            %cm use s
            country = "France"
            print(s.id)
            """
        )
        context_id = out.split()[-1]
        before = set(fe.displays)
        fe.run('%%cm --ab "Be terse." "Be a pirate." --temperature 0.5\nCapital of {country}?')
        [saved] = [
            key
            for key in fe.displays
            if key not in before
            and fe.displays[key]["text/plain"] == "<cm_notebook comparison (HTML)>"
        ]

        def finished() -> list[dict[str, object]] | None:
            arms: list[dict[str, object]] = (
                fe.display_metadata[saved].get("cm_notebook", {}).get("arms", [])
            )
            done = len(arms) == 2 and all(arm["status"] == "complete" for arm in arms)
            return arms if done else None

        arms = fe.wait_for(finished, what="both arms' provenance in the output metadata")
        recorded = fe.display_metadata[saved]["cm_notebook"]

    stored = ContextSession.open(context_id, data_dir=tmp_path)
    try:
        replies = {arm["branch"]: stored.history(str(arm["branch"]))[-1] for arm in arms}
        users = [stored.history(str(arm["branch"]))[-2] for arm in arms]
    finally:
        stored.close()
    assert recorded["context_id"] == context_id
    fed = {"country": describe_value("France")}
    for arm in arms:
        reply = replies[str(arm["branch"])]
        assert arm["message_id"] == reply.id
        assert arm["provider"] == "scripted"
        assert arm["parameters"] == {"temperature": 0.5}
        assert arm["request_hash"] == reply.metadata.request_hash is not None
        assert arm["variables"] == fed
    # The arms' user messages record the variables too, as a plain %%cm message does.
    assert [user.metadata.variables for user in users] == [fed, fed]


def test_an_ab_arm_records_no_answer_until_its_own_reply_starts(tmp_path: Path) -> None:
    # The arms fork after main's answer: until an arm's own reply starts, its last
    # answer is main's, which the saved copy must not record (nor show) as the arm's.
    with front_end(tmp_path) as fe:
        fe.run("%load_ext cm_notebook")
        fe.run(
            """
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            fake = ScriptedProvider(["Paris.", "Arr, Paris.", "Paris, tersely."])
            s = ContextSession.create("pending arms", provider=fake)
            %cm use s
            """
        )
        fe.run("%%cm\nCapital of France?")
        fe.run("await _")
        # The arms' turns start on the kernel's loop once the cell has run: the
        # comparison is first shown before any arm has begun to reply.
        before = len(fe.metadata_log)
        fe.run('%%cm --ab "Be terse." "Be a pirate."\nWhy that one?')
        [(saved, first)] = [
            (key, metadata)
            for key, metadata in fe.metadata_log[before:]
            if fe.displays[key]["text/plain"] == "<cm_notebook comparison (HTML)>"
        ]
        first_html = next(data for _, key, data in fe.display_log if key == saved)["text/html"]
        # The live comparison, as first drawn: its HTML part's first value.
        [view] = [m for m in fe.models.values() if "cm-compare" in m.get("_dom_classes", [])]
        part = view["children"][0].removeprefix("IPY_MODEL_")
        first_live = next(
            record.content["state"]["value"]
            for record in fe.comms
            if record.comm_id == part
            and record.method in ("open", "update")
            and record.content.get("state", {}).get("value")
        )

        def finished() -> list[dict[str, object]] | None:
            arms: list[dict[str, object]] = (
                fe.display_metadata[saved].get("cm_notebook", {}).get("arms", [])
            )
            done = len(arms) == 2 and all(arm["status"] == "complete" for arm in arms)
            return arms if done else None

        arms = fe.wait_for(finished, what="both arms' provenance in the output metadata")
        out = fe.run("print(s.id)")

    stored = ContextSession.open(out.split()[-1], data_dir=tmp_path)
    try:
        main_answer = stored.history("main")[-1]
        replies = {arm["branch"]: stored.history(str(arm["branch"]))[-1] for arm in arms}
    finally:
        stored.close()
    # First: each arm as not answered yet, with no message or request of main's.
    pending = first["cm_notebook"]["arms"]
    assert [arm["branch"] for arm in pending] == [arm["branch"] for arm in arms]
    assert pending == [{"branch": arm["branch"], "status": None} for arm in arms]
    assert "Paris." not in first_html  # main's answer is no arm's
    assert first_html.count("has not answered yet") == 2
    # The live view shows each arm's question with no answer yet under it.
    assert "Paris." not in first_live
    assert first_live.count("Why that one?") == 2
    assert first_live.count("(no answer yet)") == 2
    assert main_answer.content == "Paris."
    # Then: each arm's own reply.
    for arm in arms:
        reply = replies[str(arm["branch"])]
        assert reply.id != main_answer.id
        assert arm["message_id"] == reply.id
        assert arm["request_id"] == reply.metadata.request_id != main_answer.metadata.request_id
