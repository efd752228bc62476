"""An event stream that begins with a UTF-8 byte-order mark, from a real HTTP server.

The SSE specification has a client ignore one leading U+FEFF. Read as part of the
first line instead, it makes that line's field ``\\ufeffdata`` and the first event is
lost: here, the reply's first words.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

import pytest
from fault_server import BOM, ByteOrderMark, FaultServer, Malformed, Reply
from provider_streams import run, text_of
from test_session_support import DEADLINE

from cm_notebook.model import MessageStatus
from cm_notebook.providers._http_client import drop_leading_bom
from cm_notebook.providers.base import Finish, TextDelta, Usage
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession

TEXT = "Hello there, friend."


def provider_for(server: FaultServer) -> OpenAIProvider:
    return OpenAIProvider("gpt-test", base_url=server.url, timeout=5.0)


@pytest.mark.anyio
@pytest.mark.parametrize("split", [False, True], ids=["with-the-first-event", "byte-by-byte"])
async def test_a_stream_that_begins_with_a_bom_keeps_its_first_words(
    fault_server: FaultServer, split: bool
) -> None:
    fault_server.script([ByteOrderMark(Reply(TEXT), split=split)])
    events, error = await run(provider_for(fault_server))
    assert error is None
    assert text_of(events) == TEXT
    assert events[0] == TextDelta("Hello")
    assert events[-2:] == [Usage(input_tokens=7, output_tokens=5), Finish("stop", "chatcmpl-fault")]


@pytest.mark.anyio
async def test_only_one_leading_bom_is_dropped(fault_server: FaultServer) -> None:
    # The second mark is data: the first line's field is then "\ufeffdata", which a
    # client must ignore, as the specification says.
    fault_server.script([ByteOrderMark(Reply(TEXT), mark=BOM * 2)])
    events, error = await run(provider_for(fault_server))
    assert error is None
    assert text_of(events) == " there, friend."


def test_a_session_stores_the_whole_reply(data_dir: Path, fault_server: FaultServer) -> None:
    fault_server.script([ByteOrderMark(Reply(TEXT))])
    session = ContextSession.create(
        provider="openai:fault-model",
        provider_options={"base_url": fault_server.url, "timeout": 5.0},
        data_dir=data_dir,
        retry=RetryPolicy(initial_delay=0.01, max_attempts=1, jitter=0.0),
    )
    try:
        message = session.send("Hi").result(DEADLINE)
    finally:
        session.close()
    assert message.content == TEXT
    assert message.status is MessageStatus.COMPLETE
    assert session.history()[-1].content == TEXT


# -- the response hook, on each HTTP library the SDKs use ------------------------------


@pytest.fixture(params=["httpx2", "httpx"])
def http(request: pytest.FixtureRequest) -> Any:
    return pytest.importorskip(request.param)


async def body(http: Any, server: FaultServer, hooked: bool) -> list[bytes]:
    hooks = {"response": [drop_leading_bom] if hooked else []}
    async with http.AsyncClient(event_hooks=hooks) as client:
        url = f"{server.url}/chat/completions"
        async with client.stream("POST", url, json={"stream": True}) as response:
            return [chunk async for chunk in response.aiter_bytes()]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("behaviour", "dropped"),
    [
        (ByteOrderMark(Reply(TEXT)), BOM),
        (ByteOrderMark(Reply(TEXT), split=True), BOM),
        (ByteOrderMark(Reply(TEXT), mark=BOM * 2), BOM),
        (ByteOrderMark(Reply(TEXT), mark=BOM[:2], split=True), b""),  # not a whole BOM
        (Reply(TEXT), b""),
        (Malformed(["Hel"], raw=BOM + b'"lo"'), b""),  # a BOM past the start is data
    ],
    ids=["bom", "split-bom", "two-boms", "part-of-a-bom", "no-bom", "bom-later"],
)
async def test_the_hook_drops_one_bom_at_the_start_and_nothing_else(
    http: Any, fault_server: FaultServer, behaviour: Any, dropped: bytes
) -> None:
    fault_server.script([behaviour, behaviour])
    plain = b"".join(await body(http, fault_server, hooked=False))
    chunks = await body(http, fault_server, hooked=True)
    assert plain.startswith(dropped)
    assert b"".join(chunks) == plain[len(dropped) :]
    assert all(chunks)  # streamed as it came, with no empty chunk for a dropped mark
    assert len(chunks) > 1


@pytest.mark.anyio
async def test_a_response_closed_early_closes_its_reading_at_once(
    http: Any, fault_server: FaultServer
) -> None:
    # An SDK that stops reading closes the response, which closes the body: the
    # iteration that was reading it must end then too, not whenever the garbage
    # collector finds it (its clean-up then runs inside some other task).
    started: list[Any] = []
    hooks = sys.get_asyncgen_hooks()

    def first_iteration(generator: Any) -> None:
        started.append(generator)
        if hooks.firstiter is not None:
            hooks.firstiter(generator)

    fault_server.script([ByteOrderMark(Reply(TEXT), split=True)])
    gc.disable()
    sys.set_asyncgen_hooks(firstiter=first_iteration, finalizer=hooks.finalizer)
    try:
        hooked = {"response": [drop_leading_bom]}
        async with http.AsyncClient(event_hooks=hooked) as client:
            url = f"{fault_server.url}/chat/completions"
            async with client.stream("POST", url, json={"stream": True}) as response:
                async for _chunk in response.aiter_raw():
                    break
            ours = [g for g in started if g.__qualname__ == "_LeadingBomDropped._without_bom"]
            assert len(ours) == 1
            assert ours[0].ag_frame is None  # closed, with the response
    finally:
        sys.set_asyncgen_hooks(*hooks)
        gc.enable()
