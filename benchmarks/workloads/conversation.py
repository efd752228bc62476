"""Workloads 1 and 6: a long conversation through one session, then a fork of it.

1. ``conversation_messages`` messages (half user messages, half scripted replies, one
   delta each: streaming has its own workload) through ``ContextSession.send`` on a
   durable ``FileStore``, against the floor of writing the same messages' bytes as
   as many atomic, durable files. Also the time per 50 turns at the start and at
   the end: flat means the cost of a turn does not grow with the conversation.
   And the same messages appended to a ``FileStore`` directly, with no session: what
   the store alone costs against that floor, so the table tells the store's share of
   a turn from the session's.
6. A fork at message ``fork_at`` of that conversation and ``fork_turns`` turns on it:
   time, and bytes written (what the process passed to ``write()``, and what the
   data folder grew by) against the new messages' own bytes. And ``branch_turns``
   turns in a context with ``many_branches`` branches (a sweep makes one per cell)
   against the same turns in a context with one: a turn's cost must not grow with
   the number of branches.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from cm_notebook import ContextSession
from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

from ..common import (
    Bench,
    durable_floor,
    folder_bytes,
    reply_text,
    user_text,
    written_bytes,
)
from ..report import Limit, Row

NAME = "conversation"
FORK = "fork"


async def drive(session: ContextSession, turns: range, branch: str | None = None) -> list[float]:
    """Send one user message per turn (awaiting each reply); the seconds of each."""
    times = []
    for turn in turns:
        started = time.perf_counter()
        await session.send(user_text(turn), branch=branch)
        times.append(time.perf_counter() - started)
    return times


def scripted(turns: range) -> ScriptedProvider:
    """A fake model that answers each turn with its reply text, in one delta."""
    provider = ScriptedProvider(strict=True)
    for turn in turns:
        provider.reply(reply_text(turn))
    return provider


def payloads(session: ContextSession, branch: str | None = None, start: int = 0) -> list[bytes]:
    """The stored messages of a branch from ``start`` on, as the JSON bytes they are."""
    return [m.model_dump_json().encode() for m in session.history(branch)[start:]]


async def store_alone(data_dir: Path, messages: list[Message]) -> float:
    """Seconds to append ``messages`` (a branch's path, in order) to a new context of a
    ``FileStore`` on ``data_dir``, moving ``main`` each time: the store's own cost."""
    async with FileStore(data_dir) as store:
        context = await store.create_context(ContextMetadata(title="store alone"))
        started = time.perf_counter()
        for message in messages:
            await store.append_message(context.id, message, branch="main")
        return time.perf_counter() - started


async def _run(bench: Bench, data_dir: Path) -> list[Row]:
    sizes = bench.sizes
    turns = sizes.conversation_messages // 2
    fork_turns = range(turns, turns + sizes.fork_turns)
    provider = scripted(range(turns + sizes.fork_turns))
    session = ContextSession.create("long", provider=provider, data_dir=data_dir)
    try:
        started = time.perf_counter()
        per_turn = await drive(session, range(turns))
        total = time.perf_counter() - started
        stored = payloads(session)
        floor = durable_floor(bench.folder("conversation-floor"), stored)
        alone = await store_alone(bench.folder("store-alone"), session.history())

        # 6: the fork, measured by what it writes.
        fork_from = session.history()[sizes.fork_at - 1].id
        disk_before, write_before = folder_bytes(data_dir), written_bytes()
        started = time.perf_counter()
        session.branch(FORK, from_message=fork_from, switch=False)
        await drive(session, fork_turns, branch=FORK)
        fork_seconds = time.perf_counter() - started
        write_after, disk_after = written_bytes(), folder_bytes(data_dir)
        added = payloads(session, FORK, start=sizes.fork_at)
        fork_floor = durable_floor(bench.folder("fork-floor"), added)
    finally:
        await session.aclose()

    window = sizes.turns_per_window
    first, last = sum(per_turn[:window]), sum(per_turn[-window:])
    count = len(stored)
    added_bytes = sum(len(p) for p in added)
    rows = [
        Row(
            "1 long conversation",
            f"{count:,} messages through ContextSession (durable store)",
            total,
            "s",
            baseline=floor,
            baseline_label=f"{count:,} atomic durable file writes",
            seed=Limit("value", 5.0, "< 5 s"),
            goal=Limit("ratio", 1.5, "<= 1.5x floor", inclusive=True),
        ),
        Row(
            "1 long conversation",
            f"the same {count:,} messages appended to a FileStore directly (no session)",
            alone,
            "s",
            baseline=floor,
            baseline_label=f"{count:,} atomic durable file writes",
        ),
        Row(
            "1 long conversation",
            f"time per {window} turns: last {window} vs first",
            last,
            "s",
            baseline=first,
            baseline_label=f"first {window} turns",
            goal=Limit("ratio", 1.25, "<= 1.25x (flat)", inclusive=True),
        ),
        Row(
            "1 long conversation",
            "bytes on disk after the conversation",
            float(disk_before),
            "B",
            baseline=float(sum(len(p) for p in stored)),
            baseline_label="the messages' JSON",
        ),
        Row(
            "6 branching",
            f"fork at message {sizes.fork_at:,} + {sizes.fork_turns} turns: time",
            fork_seconds,
            "s",
            baseline=fork_floor,
            baseline_label=f"{len(added)} atomic durable file writes",
        ),
    ]
    if write_before is not None and write_after is not None:
        rows.append(
            Row(
                "6 branching",
                "fork + turns: bytes passed to write()",
                float(write_after - write_before),
                "B",
                baseline=float(added_bytes),
                baseline_label=f"the {len(added)} new messages' JSON",
            )
        )
    rows.append(
        Row(
            "6 branching",
            "fork + turns: bytes the data folder grew by",
            float(disk_after - disk_before),
            "B",
            baseline=float(added_bytes),
            baseline_label=f"the {len(added)} new messages' JSON",
        )
    )
    return rows


async def _turns_beside_branches(data_dir: Path, branches: int, turns: int) -> float:
    """Seconds of ``turns`` turns on main in a context that has ``branches`` branches."""
    session = ContextSession.create(
        f"{branches} branches", provider=scripted(range(turns + 1)), data_dir=data_dir
    )
    try:
        await session.send(user_text(0))
        for number in range(1, branches):
            session.branch(f"arm-{number}", switch=False)
        started = time.perf_counter()
        await drive(session, range(1, turns + 1))
        return time.perf_counter() - started
    finally:
        await session.aclose()


# Each side is measured this many times, alternating which goes first, and the medians
# are compared: one run of 50 turns each moved the ratio between 0.8x and 1.3x.
_BRANCH_RUNS = 3


def _branches_row(bench: Bench) -> Row:
    sizes = bench.sizes
    seconds: dict[int, list[float]] = {1: [], sizes.many_branches: []}
    for run_number in range(_BRANCH_RUNS):
        order = sorted(seconds, reverse=run_number % 2 == 1)
        for branches in order:
            folder = bench.folder(f"branches-{branches}-{run_number}")
            seconds[branches].append(
                asyncio.run(_turns_beside_branches(folder, branches, sizes.branch_turns))
            )
    one, many = (statistics.median(seconds[n]) for n in (1, sizes.many_branches))
    return Row(
        "6 branching",
        f"{sizes.branch_turns} turns in a context with {sizes.many_branches} branches "
        f"(median of {_BRANCH_RUNS})",
        many,
        "s",
        baseline=one,
        baseline_label="the same turns with 1 branch",
        goal=Limit("ratio", 1.25, "<= 1.25x (flat)", inclusive=True),
    )


def run(bench: Bench) -> list[Row]:
    """Workloads 1 and 6 (see the module docstring)."""
    rows = asyncio.run(_run(bench, bench.folder("conversation")))
    return [*rows, _branches_row(bench)]
