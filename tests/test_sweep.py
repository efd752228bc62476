"""Sweeps: prompts x inputs x variants x repeats, each cell a labelled branch, run
concurrently within a limit, resumable (here and in a new process after SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE, close_all

from cm_notebook.errors import (
    BranchExistsError,
    BusyError,
    InvalidInputError,
    PermanentProviderError,
)
from cm_notebook.events import Event, StateChanged
from cm_notebook.fsm import State
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.sweep import plan_sweep
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool


def last_user(fake: ScriptedProvider) -> list[str]:
    return [request.messages[-1].content for request in fake.requests]


def test_every_cell_is_a_labelled_branch_with_its_variant(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider()  # echoes
    session = new_session(provider=fake, system="Be brief.")
    sweep = session.sweep(
        ["Q1", "Q2"],
        [{"temperature": 0.0}, {"temperature": 1.0, "system": "Be a pirate.", "seed": 7}],
        repeat=2,
        name="s1",
        progress=False,
    ).run(DEADLINE)
    assert sweep.counts() == {"pending": 0, "running": 0, "done": 8, "failed": 0}
    assert len(fake.requests) == 8
    assert sorted(sweep.branches) == sorted(b for b in session.branches if b.startswith("s1-"))
    cell = sweep.cell("p1-v1-r1")
    assert cell.branch == "s1-p1-v1-r1"
    assert cell.reply == "echo: Q2"
    labels = session.branches[cell.branch].labels
    assert (labels["sweep"], labels["cell"]) == ("s1", "p1-v1-r1")
    assert (labels["repeat"], labels["input"], labels["prompt"]) == ("1", "", "1")
    assert sweep.variant_labels == [
        "context-system-temperature-0.0",
        "be-a-pirate-temperature-1.0-seed-7",
    ]
    assert labels["variant"] == "be-a-pirate-temperature-1.0-seed-7"
    # Each cell starts at the root, under its variant's prompt and parameters.
    history = session.history(cell.branch)
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[0].parent_id is None
    pirate = [r for r in fake.requests if r.params.get("seed") == 7]
    assert len(pirate) == 4
    assert all(r.messages[0].content == "Be a pirate." for r in pirate)
    plain = [r for r in fake.requests if r.params.get("temperature") == 0.0]
    assert all(r.messages[0].content == "Be brief." for r in plain)
    # Repeats without a seed of their own are sampled with seed = repeat index.
    assert sorted(r.params["seed"] for r in plain) == [0, 0, 1, 1]
    assert repr(sweep) == "<Sweep 's1' 8 cells: 8 done>"
    assert "echo: Q2" in sweep._repr_html_()


def test_no_seed_is_added_for_a_provider_that_takes_none(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(parameters={"temperature"})
    session = new_session(provider=fake)
    session.sweep("Q", [{"temperature": 1.0}], repeat=2, progress=False).run(DEADLINE)
    assert [r.params for r in fake.requests] == [{"temperature": 1.0}] * 2


def test_a_variants_seed_none_asks_for_the_providers_default(
    new_session: Callable[..., ContextSession],
) -> None:
    # As a fan-out arm's: no seed is sent, none recorded, though the provider takes one.
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    sweep = session.sweep(
        "Q", [{"seed": None, "temperature": 0.9}], repeat=3, progress=False, name="unseeded"
    ).run(DEADLINE)
    assert [r.params for r in fake.requests] == [{"temperature": 0.9}] * 3
    assert [record["seed"] for record in sweep.to_records()] == [None] * 3


def test_a_template_over_input_rows(new_session: Callable[..., ContextSession]) -> None:
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    rows = [{"city": "Paris", "n": 2}, {"city": "Rome", "n": 3}]
    sweep = session.sweep(
        "Name {n} sights of {city}.", [{}], inputs=rows, progress=False, name="tpl"
    ).run(DEADLINE)
    assert sorted(last_user(fake)) == ["Name 2 sights of Paris.", "Name 3 sights of Rome."]
    cell = sweep.cell("p0-i1-v0-r0")
    assert cell.row == {"city": "Rome", "n": 3}
    assert session.branches[cell.branch].labels["input"] == "1"
    user = session.history(cell.branch)[0]
    assert user.metadata.model_dump()["variables"] == {"city": "Rome", "n": "3"}


@pytest.mark.parametrize(
    ("prompt", "inputs", "words"),
    [
        ("About {town}.", [{"city": "Paris"}], "no 'town'"),
        ("About {city.upper}.", [{"city": "Paris"}], "plain {name} fields"),
        ("About {0}.", [{"city": "Paris"}], "plain {name} fields"),
        ("About {city", [{"city": "Paris"}], "literal braces"),
        ("About {city}.", [], "inputs is empty"),
        ("About {city}.", ["Paris"], "not a mapping"),
        ("About {city}.", "Paris", "list of mappings"),
        ("{city}", [{"city": "Rome"}, {"city": " "}], "prompt 0 filled with input row 1: .* empty"),
    ],
)
def test_bad_templates_and_inputs_are_refused(prompt: str, inputs: object, words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        plan_sweep(prompt, [{}], inputs=inputs)


@pytest.mark.parametrize("prompts", [None, 5, b"Hi", {"Hi": 1}])
def test_prompts_that_are_no_text_are_refused(prompts: object) -> None:
    with pytest.raises(InvalidInputError, match="prompts must be a string or a list of strings"):
        plan_sweep(prompts, [{}])  # type: ignore[arg-type]
    # Any iterable of strings will do (a generator, a pandas column).
    plan = plan_sweep((p for p in ["A", "B"]), [{}])
    assert [cell.text for cell in plan.cells] == ["A", "B"]


@pytest.mark.parametrize("kind", [set, frozenset])
def test_prompts_in_a_set_are_refused_as_their_order_changes_between_processes(
    kind: type,
) -> None:
    prompts = kind({"What is 2+2?", "Name a colour.", "Capital of Peru?"})
    with pytest.raises(InvalidInputError, match=r"got a .*set.*sorted\(prompts\)"):
        plan_sweep(prompts, [{}])
    # In an order of their own they are taken, a dict's keys too.
    assert plan_sweep(sorted(prompts), [{}]).cells[0].text == "Capital of Peru?"
    assert plan_sweep(dict.fromkeys(["B", "A"]).keys(), [{}]).cells[0].text == "B"


def test_bad_definitions_are_refused_before_anything_is_written(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    before = set(session.branches)
    for prompts, variants, options, words in [
        ([], [{}], {}, "at least one prompt"),
        (["Q"], [], {}, "at least one variant"),
        (["Q"], {"temperature": 1}, {}, "must be a list"),
        (["Q"], [3], {}, "variant 0 must be a mapping"),
        (["Q"], [{}], {"repeat": 0}, "repeat must be a positive"),
        (["Q"], [{}], {"concurrency": 0}, "concurrency must be"),
        (["Q"], [{"not_a_param": 1}], {}, "not_a_param"),
        (["Q"], [{}], {"name": "x" * 61}, "at most 60"),
        (["Q"], [{"system": 3}], {}, "system must be a string"),
        (["Q", "R"], [{}], {"repeat": 10**8}, "200,000,000 cells .* the limit is 10,000"),
    ]:
        with pytest.raises(InvalidInputError, match=words):
            session.sweep(prompts, variants, progress=False, **options)
    assert set(session.branches) == before


def test_the_default_name_is_derived_from_the_definition() -> None:
    one = plan_sweep(["Q"], [{"temperature": 0}], repeat=2)
    two = plan_sweep(["Q"], [{"temperature": 0}], repeat=5)
    other = plan_sweep(["Q"], [{"temperature": 1}])
    assert one.name == two.name != other.name
    assert one.name.startswith("sweep-")
    # Labels name what differs; a variant's own label wins; duplicates are numbered.
    plan = plan_sweep("Q", [{"label": "cold", "temperature": 0}, {"temperature": 1}, {}])
    assert plan.labels[0] == "cold"
    assert len(set(plan.labels)) == 3
    # A numbered duplicate never takes a label a variant was given.
    given = plan_sweep("Q", [{"label": x, "seed": n} for n, x in enumerate(["a", "a", "a-2"])])
    assert given.labels == ["a", "a-3", "a-2"]
    nested = plan_sweep("Q", [{"params": {"temperature": 0.5}}, {"temperature": 0.7}])
    assert nested.labels == ["temperature-0.5", "temperature-0.7"]


def test_at_most_concurrency_cells_run_at_once(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(delay=0.002)
    session = new_session(provider=fake)
    busy: set[str] = set()
    peak = [0]

    def watch(event: Event) -> None:
        if isinstance(event, StateChanged):
            if event.new is State.IDLE:
                busy.discard(event.branch or "")
            else:
                busy.add(event.branch or "")
            peak[0] = max(peak[0], len(busy))

    session.subscribe(watch, kinds={"StateChanged"})
    sweep = session.sweep(
        [f"word {n} " * 5 for n in range(4)],
        [{}, {"temperature": 1}],
        concurrency=2,
        progress=False,
    ).run(DEADLINE)
    assert sweep.counts()["done"] == 8
    assert 1 <= peak[0] <= 2


def test_running_it_again_skips_done_cells_and_reruns_failed_ones(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).reply("a")
    fake.error("permanent", after_chunks=1, text="half an ").reply("c")
    session = new_session(provider=fake)
    first = session.sweep(["Q1", "Q2", "Q3"], [{}], concurrency=1, name="again", progress=False)
    first.run(DEADLINE)
    assert [c.status for c in first.cells] == ["done", "failed", "done"]
    assert first.cells[1].error
    # The failed cell shows the partial text its reply was stored with.
    assert first.cells[1].reply == session.get(first.cells[1].message_id or "").content != ""
    assert len(fake.requests) == 3
    fake.reply("b")
    second = session.sweep(
        ["Q1", "Q2", "Q3"], [{}], concurrency=1, name="again", progress=False
    ).run(DEADLINE)
    assert [c.status for c in second.cells] == ["done", "done", "done"]
    assert [c.reply for c in second.cells] == ["a", "b", "c"]
    assert last_user(fake)[3:] == ["Q2"]  # only the failed cell was asked again
    # The failed reply stays in the tree as a sibling of the new one.
    assert len(session.siblings(second.cells[1].message_id or "")) == 2
    # More repeats extend the same sweep.
    third = session.sweep(
        ["Q1", "Q2", "Q3"], [{}], repeat=2, concurrency=1, name="again", progress=False
    )
    fake.reply("a2").reply("b2").reply("c2")
    third.run(DEADLINE)
    assert [c.reply for c in third.cells if c.repeat == 1] == ["a2", "b2", "c2"]
    assert len(fake.requests) == 7


def test_a_cell_stopped_at_the_tool_round_limit_is_run_again_from_its_prompt(
    new_session: Callable[..., ContextSession],
) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    fake = ScriptedProvider(strict=True)
    for _ in range(3):
        fake.tool_call("add", {"a": 1, "b": 2})
    session = new_session(provider=fake, tools=[add], approval="auto", max_tool_rounds=2)
    first = session.sweep("1 + 2?", [{}], name="limit", progress=False).run(DEADLINE)
    assert first.cells[0].status == "failed"
    assert "tool rounds" in (first.cells[0].error or "")
    branch = first.cells[0].branch
    prompt = session.history(branch)[0]
    asked = len(fake.requests)

    fake.tool_call("add", {"a": 1, "b": 2}).reply("3")
    second = session.sweep("1 + 2?", [{}], name="limit", progress=False).run(DEADLINE)
    assert (second.cells[0].status, second.cells[0].reply) == ("done", "3")
    # The new reply starts from the prompt alone: no round of the failed attempt.
    assert [m.role for m in fake.requests[asked].messages] == ["user"]
    assert [m.role for m in session.history(branch)] == ["user", "assistant", "tool", "assistant"]
    # The failed attempt stays in the tree, a sibling of the new reply.
    assert len(session.siblings(session.history(branch)[1].id)) == 2
    assert session.history(branch)[0].id == prompt.id


def test_a_name_taken_by_another_definition_or_branch_is_refused(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.sweep("Q", [{}], name="taken", progress=False).run(DEADLINE)
    with pytest.raises(InvalidInputError, match="another name"):
        session.sweep("Other", [{}], name="taken", progress=False)
    session.branch("mine-p0-v0-r0", switch=False)
    with pytest.raises(BranchExistsError, match="not cell p0-v0-r0"):
        session.sweep("Q", [{}], name="mine", progress=False)


def test_a_name_taken_by_another_definition_whose_cells_differ_is_refused(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.sweep("What is {x}?", [{}], inputs=[{"x": "A"}], name="study", progress=False).run(
        DEADLINE
    )
    before = set(session.branches)
    # Its only cell, p0-v0-r0, is none of the first sweep's (p0-i0-v0-r0).
    with pytest.raises(InvalidInputError, match="sweep named 'study' with other prompts"):
        session.sweep("Something else", [{"temperature": 1}], name="study", progress=False)
    assert set(session.branches) == before  # nothing written


def test_a_running_sweep_cannot_be_started_twice_and_can_be_cancelled(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().hang(after_chunks=1, text="partial text")
    session = new_session(provider=fake)
    sweep = session.sweep(["Q", "Q2"], [{}], name="slow", concurrency=1, progress=False)
    deadline = time.monotonic() + DEADLINE
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the request, with a deadline
    with pytest.raises(BusyError, match="still running"):
        session.sweep("Q", [{}], name="slow", progress=False)
    sweep.cancel()
    assert sweep.run(DEADLINE) is sweep
    assert [c.status for c in sweep.cells] == ["failed", "pending"]
    assert sweep.cells[0].reply == "partial text"
    assert "cancelled" in (sweep.cells[0].error or "")
    assert len(fake.requests) == 1
    # Every cell's branch was made when the sweep started (in one write), labelled and
    # with its settings; the cell that never ran has an empty one, which a re-run uses.
    unstarted = session.branches["slow-p1-v0-r0"]
    assert unstarted.head is None
    assert (unstarted.labels["sweep"], unstarted.labels["cell"]) == ("slow", "p1-v0-r0")
    assert unstarted.params == {"seed": 0}
    fake.reply("again").reply("second")
    again = session.sweep(["Q", "Q2"], [{}], name="slow", concurrency=1, progress=False)
    assert [c.reply for c in again.run(DEADLINE).cells] == ["again", "second"]
    assert [m.content for m in session.history("slow-p1-v0-r0")] == ["Q2", "second"]


def test_progress_bar_in_a_script_goes_to_stderr(
    new_session: Callable[..., ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.sweep(["Q1", "Q2"], [{}], name="bar").run(DEADLINE)
    assert "2/2" in capsys.readouterr().err


def test_a_provider_error_in_one_cell_does_not_stop_the_others(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).error(PermanentProviderError("nope")).reply("fine")
    session = new_session(provider=fake)
    sweep = session.sweep(["Q1", "Q2"], [{}], concurrency=1, progress=False).run(DEADLINE)
    assert [c.status for c in sweep.cells] == ["failed", "done"]
    assert "nope" in (sweep.cells[0].error or "")


# -- resuming in a new process after the first was killed ----------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider
    data_dir, context_id, mode = sys.argv[1:4]
    if mode == "first":
        fake = ScriptedProvider(strict=True).reply("r0").reply("r1").hang()
    else:
        fake = ScriptedProvider()  # echoes: counts what it is asked
    session = ContextSession.open(context_id, data_dir=data_dir, provider=fake)
    sweep = session.sweep(["q0", "q1", "q2", "q3"], [{"temperature": 0}], concurrency=1,
                          name="resume", progress=False)
    sweep.run(60)
    print(json.dumps({"asked": [r.messages[-1].content for r in fake.requests],
                      "counts": sweep.counts(),
                      "replies": [c.reply for c in sweep.cells]}), flush=True)
    session.close()
    """
)


def _child(data_dir: Path, context_id: str, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir), context_id, mode], stdout=subprocess.PIPE
    )


def test_a_sweep_killed_mid_way_resumes_in_a_new_process_without_resending(
    data_dir: Path,
) -> None:
    made = ContextSession.create(data_dir=data_dir, provider=ScriptedProvider())
    cid = made.id
    close_all([made])
    first = _child(data_dir, cid, "first")
    try:
        # With one cell at a time, the third cell's prompt is stored only after the
        # first two replies are complete; the third request then hangs.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            branches = ContextSession.list(data_dir)[0].branches
            third = branches.get("resume-p2-v0-r0")
            if third is not None and third.head is not None:
                break
            time.sleep(0.02)  # poll the store, with a deadline
        else:
            pytest.fail("the first process never reached the third cell")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(DEADLINE)
        assert first.stdout is not None
        first.stdout.close()

    second = _child(data_dir, cid, "second")
    out, _ = second.communicate(timeout=120)
    result = json.loads(out.decode())
    # Finished cells were not asked again; the interrupted one and the unstarted one were.
    assert result["asked"] == ["q2", "q3"]
    assert result["counts"]["done"] == 4
    assert result["replies"] == ["r0", "r1", "echo: q2", "echo: q3"]
    reopened = ContextSession.open(cid, data_dir=data_dir)
    try:
        history = reopened.history("resume-p2-v0-r0")
        assert [m.content for m in history] == ["q2", "echo: q2"]
        assert [m.content for m in reopened.history("resume-p0-v0-r0")] == ["q0", "r0"]
    finally:
        close_all([reopened])


# -- results -----------------------------------------------------------------------------


def test_records_and_dataframe_of_a_sweep(new_session: Callable[..., ContextSession]) -> None:
    pd = pytest.importorskip("pandas")
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    session.send("not part of the sweep").result(DEADLINE)
    sweep = session.sweep(
        "Capital of {country}?",
        [{"label": "cold", "temperature": 0}, {"label": "warm", "temperature": 1}],
        inputs=[{"country": "France"}, {"country": "Italy"}],
        repeat=2,
        name="caps",
        progress=False,
    ).run(DEADLINE)
    rows = sweep.to_records()
    assert len(rows) == 8
    row = next(r for r in rows if r["cell"] == "p0-i1-v1-r1")
    assert row["variant"] == "warm"
    assert (row["sweep"], row["repeat"], row["input"]) == ("caps", 1, 1)
    assert row["input_country"] == "Italy"
    assert row["prompt"] == "Capital of Italy?"
    assert row["output"] == "echo: Capital of Italy?"
    assert row["param_temperature"] == 1
    assert row["label_sweep"] == "caps"
    frame = sweep.to_dataframe()
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == 8
    assert {"variant", "repeat", "input", "input_country", "ttft_ms"} <= set(frame.columns)
    assert frame.groupby("variant").size().to_dict() == {"cold": 4, "warm": 4}


async def _compact(data_dir: Path, context_id: str) -> None:
    # The journal keeps copies of recent messages (and restores damaged files from
    # them); fold it, so that a damaged message file stays damaged.
    async with FileStore(data_dir) as store:
        await store.compact(context_id)


@pytest.mark.parametrize("damage", ["garbled", "deleted"])
def test_records_of_a_sweep_keep_every_cell_when_one_message_file_is_unreadable(
    new_session: Callable[..., ContextSession], data_dir: Path, damage: str
) -> None:
    session = new_session(provider=ScriptedProvider())
    sweep = session.sweep(
        ["Q1", "Q2"],
        [{"label": "cold", "temperature": 0}, {"label": "warm", "temperature": 1}],
        name="big",
        progress=False,
    ).run(DEADLINE)
    asyncio.run(_compact(data_dir, session.id))
    bad = sweep.cell("p1-v0-r0")
    assert bad.message_id is not None
    path = data_dir / "contexts" / session.id / "messages" / f"{bad.message_id}.json"
    if damage == "garbled":
        path.write_text("{garbled")
    else:
        path.unlink()
    with pytest.warns(StoreWarning, match=r"sweep 'big': cell 'p1-v0-r0'") as caught:
        rows = sweep.to_records()
    assert [r["cell"] for r in rows] == [c.key for c in sweep.cells]  # every cell, in order
    marked = rows[[c.key for c in sweep.cells].index("p1-v0-r0")]
    assert str(path) in marked["error"]
    assert "Restore" in marked["error"]  # and what to do
    assert (marked["branch"], marked["message_id"], marked["variant"]) == (
        bad.branch,
        bad.message_id,
        "cold",
    )
    assert (marked["input"], marked["repeat"], marked["label_cell"]) == (None, 0, "p1-v0-r0")
    assert (marked["output"], marked["status"]) == (None, None)
    assert list(marked) == list(rows[0])  # the same columns as the others
    assert any(getattr(w.message, "path", None) == path for w in caught)
    good = [r for r in rows if r is not marked]
    assert [r["error"] for r in good] == [None, None, None]
    assert sorted(r["output"] for r in good) == ["echo: Q1", "echo: Q1", "echo: Q2"]


def test_stability_groups_the_repeats_of_each_cell(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True)
    for text in ["Paris.", "Paris.", "Paris, France.", "Lyon.", "Rome.", "Rome.", "Rome.", "Rome."]:
        fake.reply(text)
    session = new_session(provider=fake)
    sweep = session.sweep(
        ["Capital of France?", "Capital of Italy?"],
        [{}],
        repeat=4,
        concurrency=1,
        name="stab",
        progress=False,
    ).run(DEADLINE)
    found = sweep.stability()
    assert [g.prompt for g in found.groups] == ["Capital of France?", "Capital of Italy?"]
    france, italy = (g.stability for g in found.groups)
    assert (france.total, france.distinct, france.agreement) == (4, 3, 0.5)
    assert france.top is not None
    assert france.top.text == "Paris."
    assert italy.agreement == 1.0
    assert repr(found) == "<SweepStability 'stab' 2 groups, mean agreement 75%>"
    assert found.to_records()[0]["distinct"] == 3
    assert "Capital of Italy?" in found._repr_html_()
    assert "Paris, France." in str(found)


def test_the_name_of_a_sweep_is_the_same_in_every_process() -> None:
    # A re-run after a kernel restart must find the sweep's cells: its name may not
    # depend on the process (string hashing, memory addresses).
    code = (
        "from cm_notebook.sweep import plan_sweep; "
        "print(plan_sweep('Q {x}', [{}], inputs=[{'x': {'b', 'a', 'c'}}]).name)"
    )
    names = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(names) == 1

    class Opaque:
        pass

    with pytest.raises(InvalidInputError, match="no stable form"):
        plan_sweep("Q {x}", [{}], inputs=[{"x": Opaque()}])


def test_a_sweep_answered_by_another_default_model_is_another_sweep(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    # Variants that name no provider are answered by the session's default: a re-run
    # after it changed must not resume the first model's cells with the second model
    # (one stability group would then mix two models).
    first = ScriptedProvider(model="model-a").reply("a0")
    session = new_session(provider=first)
    done = session.sweep(["Q0", "Q1"], [{}], concurrency=1, progress=False)
    first.error("permanent")  # the second cell fails: it is left to a re-run
    done.run(DEADLINE)
    assert [c.status for c in done.cells] == ["done", "failed"]
    close_all([session])

    second = ScriptedProvider(model="model-b").reply("b0").reply("b1")
    again = ContextSession.open(session.id, data_dir=data_dir, provider=second)
    try:
        rerun = again.sweep(["Q0", "Q1"], [{}], concurrency=1, progress=False).run(DEADLINE)
        assert rerun.name != done.name  # a sweep of its own: every cell asked of model-b
        assert [c.reply for c in rerun.cells] == ["b0", "b1"]
        assert [r.messages[-1].content for r in second.requests] == ["Q0", "Q1"]
        # The first sweep's cells are as they were.
        assert [m.content for m in again.history(f"{done.name}-p0-v0-r0")] == ["Q0", "a0"]
        # Named, the same re-run is refused, and the error says why.
        second.reply("b2")
        again.sweep("Q", [{}], name="named", progress=False).run(DEADLINE)
    finally:
        close_all([again])
    third = ContextSession.open(
        session.id, data_dir=data_dir, provider=ScriptedProvider(model="model-c")
    )
    try:
        with pytest.raises(InvalidInputError, match=r"another default provider.*model-c"):
            third.sweep("Q", [{}], name="named", progress=False)
        # A variant that names its provider does not depend on the default.
        pinned = [{"provider": ScriptedProvider(model="pinned").reply("p")}]
        made = third.sweep("P", pinned, name="pinned", progress=False).run(DEADLINE)
        assert [c.reply for c in made.cells] == ["p"]
        assert (
            third.sweep("P", pinned, name="pinned", progress=False).run(DEADLINE).counts()["done"]
            == 1
        )
    finally:
        close_all([third])


def test_a_session_that_ran_a_sweep_is_freed_once_closed_or_dropped(data_dir: Path) -> None:
    import gc
    import weakref

    def swept(close: bool) -> weakref.ref[ContextSession]:
        session = ContextSession.create("freed", provider=ScriptedProvider(), data_dir=data_dir)
        session.sweep("q {t}", [{"system": "a"}], inputs=[{"t": "x"}], progress=False).run(DEADLINE)
        if close:
            session.close()
        return weakref.ref(session)

    closed, dropped = swept(close=True), swept(close=False)
    deadline = time.monotonic() + DEADLINE
    while (closed() is not None or dropped() is not None) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    # The sweep held its session, and a registry of running sweeps held the sweep:
    # every session that ever ran one stayed, with its threads, files and messages.
    assert closed() is None
    assert dropped() is None
