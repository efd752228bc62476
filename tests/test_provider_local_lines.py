"""The local provider's event stream split into lines at CR LF, CR and LF only.

llama.cpp writes non-ASCII characters raw inside its JSON, so a reply holding U+2028,
U+2029 or U+0085 sends them unescaped; split there (as ``str.splitlines`` splits), one
chunk reads as two lines of broken JSON and the reply fails as a malformed response,
again on every retry.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from wire_server import WireHandler, WireServer, chunk

from cm_notebook.model import Message
from cm_notebook.providers._sse_lines import LineSplitter, sse_lines
from cm_notebook.providers.base import ChatRequest, Finish, StreamChunk, TextDelta
from cm_notebook.providers.local import LocalProvider, _ChunkReader, _events

pytestmark = pytest.mark.anyio

# Not line endings in an event stream, though str.splitlines breaks at each; JSON
# escapes the control characters among them, but not these three.
RAW_IN_JSON = ["\u2028", "\u2029", "\u0085"]
NOT_LINE_ENDS = [*RAW_IN_JSON, "\x1c", "\x1d", "\x1e", "\x0b", "\x0c"]


def split_in_pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def lines_of(pieces: list[str]) -> list[str]:
    splitter = LineSplitter()
    lines = [line for piece in pieces for line in splitter.feed(piece)]
    return lines + splitter.finish()


STREAM = "\ufeffdata: a\u2028b\r\n\r\ndata: c\rdata: d\x85e\n\nlast"
LINES = ["data: a\u2028b", "", "data: c", "data: d\x85e", "", "last"]


def test_lines_end_only_at_cr_lf_cr_or_lf() -> None:
    assert lines_of([STREAM]) == LINES
    kept = "".join(NOT_LINE_ENDS)
    assert lines_of([f"a{kept}b\n"]) == [f"a{kept}b"]


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_line_ending_cut_between_pieces_is_one_ending(cut: int) -> None:
    # Includes a CR at the end of one piece with its LF starting the next.
    assert lines_of(split_in_pieces(STREAM, [cut])) == LINES


def test_one_character_at_a_time_and_empty_pieces() -> None:
    pieces = [piece for ch in STREAM for piece in (ch, "")]
    assert lines_of(pieces) == LINES


def test_cr_then_cr_is_two_endings_and_a_later_bom_is_text() -> None:
    assert lines_of(["a\r", "\r", "\n", "b\ufeff"]) == ["a", "", "b\ufeff"]
    assert lines_of(["\ufeff", "\ufeffx\n"]) == ["\ufeffx"]


async def test_sse_lines_flushes_a_last_line_without_ending() -> None:
    async def pieces() -> AsyncIterator[str]:
        for piece in ["one\r", "\ntwo\r", "\nthree"]:
            yield piece

    assert [line async for line in sse_lines(pieces())] == ["one", "two", "three"]


# -- a real server: the chunks as llama.cpp writes them -------------------------------


def llama_stream(text: str, *, byte_by_byte: bool) -> Any:
    """``text`` in one chunk, non-ASCII raw in the JSON as llama.cpp writes it."""
    events = [chunk({"content": text}), chunk({}, "stop")]
    body = b"".join(
        b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\r\n\r\n" for e in events
    )
    body += b"data: [DONE]\r\n\r\n"

    def behave(handler: WireHandler, request: dict[str, Any]) -> None:
        handler.start_stream()
        for piece in [body[i : i + 1] for i in range(len(body))] if byte_by_byte else [body]:
            handler.raw(piece)
        handler.end_stream()

    return behave


async def read_local_stream(server: WireServer) -> list[StreamChunk]:
    async with httpx.AsyncClient(trust_env=False) as client:
        url = f"{server.url}/v1/chat/completions"
        async with client.stream("POST", url, json={"stream": True}) as response:
            return [event async for event in _events(_ChunkReader().chunks(response))]


@pytest.mark.parametrize("byte_by_byte", [False, True])
@pytest.mark.parametrize("separator", [*RAW_IN_JSON, "é"])
async def test_a_reply_holding_a_unicode_line_separator_is_read_whole(
    wire: WireServer, separator: str, byte_by_byte: bool
) -> None:
    text = f"line one{separator}line two"
    wire.default = llama_stream(text, byte_by_byte=byte_by_byte)
    events = await read_local_stream(wire)
    assert events == [TextDelta(text), Finish("stop", "chatcmpl-wire")]


@pytest.mark.local_model
async def test_the_bundled_model_may_answer_with_a_line_separator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CM_LOCAL_MODEL", raising=False)
    # A grammar makes the model answer with the characters, raw in llama.cpp's JSON.
    grammar = 'root ::= "Hi\\u2028there\\u0085friend"'
    request = ChatRequest([Message(role="user", content="Say hi")], params={"grammar": grammar})
    provider = LocalProvider(n_ctx=2048)  # the server the other local tests use
    events = [event async for event in provider.stream(request)]
    await provider.aclose()
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Hi\u2028there\u0085friend"
    assert isinstance(events[-1], Finish)
