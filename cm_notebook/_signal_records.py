"""One signal as a line of the signal log, and back (see :mod:`cm_notebook.signal_log`).

A record is ``{"w": <writer>, "e": <the signal's JSON>}`` on a line of its own. Text
deltas, one per streamed chunk, are written by hand here (about twice as fast as
pydantic's writer, the same JSON: tests/test_signal_log_batches.py checks it); a
reader can take a record's number from its start without decoding the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from pydantic_core import PydanticSerializationError

from ._open_calls import Calls, track_calls
from .fsm import State
from .signals import ContentDelta, Event, StateChanged, ToolApprovalRequested, parse_event

__all__ = [
    "decode_record",
    "encode_record",
    "encode_records",
    "last_record_seq",
    "record_start",
    "skipped_seq",
]

_json_string = json.encoder.encode_basestring_ascii  # a str as a JSON string (C, escaped)


def encode_record(writer: str, event: Event) -> bytes:
    """``event`` as written by ``writer``: one line of the log, newline included."""
    return encode_records(writer, (event,))


def encode_records(writer: str, events: Sequence[Event]) -> bytes:
    """The lines of ``events`` as written by ``writer``, joined: the bytes of one batch.

    Every record begins as :func:`record_start` says. A text delta is written for every
    chunk a model streams, so its JSON is spelled out here, in one loop for the whole
    batch, about twice as fast as pydantic's writer; the same JSON object (fields,
    values, "Z" for UTC), which tests/test_signal_log_batches.py checks.
    """
    begin = f'{{"w":"{writer}","e":'
    lines: list[str] = []
    for event in events:
        if type(event) is not ContentDelta:
            lines.append(f"{begin}{_event_json(event)}}}\n")
            continue
        around_at, after_at = _delta_parts(event.context_id, event.branch, event.message_id)
        lines.append(
            f'{begin}{{"seq":{event.seq}{around_at}{_utc_text(event.at)}{after_at}'
            f'{_json_string(event.text)},"offset":{event.offset}}}}}\n'
        )
    return "".join(lines).encode()


def _event_json(event: Event) -> str:
    try:
        return event.model_dump_json()
    except PydanticSerializationError:
        # Pydantic refuses unpaired surrogates (a model's text cut mid-character);
        # json.dumps escapes them.
        return json.dumps(event.model_dump(mode="json"), separators=(",", ":"))


class _DeltaParts:
    # The parts of a delta's JSON that are the same for every chunk of one reply (its
    # context, branch and message), made once per reply instead of once per chunk.
    def __init__(self) -> None:
        self._last: tuple[tuple[str, str | None, str], tuple[str, str]] | None = None

    def __call__(self, context_id: str, branch: str | None, message_id: str) -> tuple[str, str]:
        key = (context_id, branch, message_id)
        last = self._last  # one tuple: safe to share between threads
        if last is not None and last[0] == key:
            return last[1]
        branch_json = "null" if branch is None else _json_string(branch)
        parts = (
            f',"context_id":{_json_string(context_id)},"branch":{branch_json},"at":"',
            f'","type":"ContentDelta","message_id":{_json_string(message_id)},"text":',
        )
        self._last = (key, parts)
        return parts


_delta_parts = _DeltaParts()


def record_start(writer: str) -> bytes:
    """How every record :func:`encode_record` writes for ``writer`` begins; its number
    comes next."""
    return f'{{"w":"{writer}","e":{{"seq":'.encode()


def skipped_seq(line: bytes, start: bytes) -> int | None:
    # The number of a whole record that begins with ``start``, read without decoding
    # the record; None for any other line (it is then decoded as usual). A record cut
    # short by a crash (or a full disk) does not end with the two closing braces.
    if not (line.startswith(start) and line.endswith(b"}}")):
        return None
    end = line.find(b",", len(start))
    try:
        return int(line[len(start) : end])
    except ValueError:
        return None


def decode_record(line: bytes) -> tuple[str, dict[str, Any]] | None:
    # None for a line that is not a record (a torn write, damage): it is skipped.
    try:
        record = json.loads(line)
        writer, event = record["w"], record["e"]
        if isinstance(writer, str) and isinstance(event, dict) and isinstance(event["seq"], int):
            return writer, event
    except (ValueError, KeyError, TypeError):
        pass
    return None


class _UtcText:
    # A time as pydantic writes it ("...T12:00:00.123456Z" in UTC). isoformat() takes
    # about a microsecond, as long as all the rest of a delta's record, so the part up
    # to the second is formatted once per second and kept.
    def __init__(self) -> None:
        self._second: tuple[tuple[int, ...], str] = ((), "")

    def __call__(self, at: datetime) -> str:
        if at.tzinfo is not timezone.utc:
            text = at.isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        whole = (at.second, at.minute, at.hour, at.day, at.month, at.year)
        second, prefix = self._second  # one tuple: safe to share between threads
        if second != whole:
            prefix = at.replace(microsecond=0, tzinfo=None).isoformat()
            self._second = (whole, prefix)
        return f"{prefix}.{at.microsecond:06d}Z" if at.microsecond else f"{prefix}Z"


_utc_text = _UtcText()


def last_record_seq(data: bytes) -> int | None:
    """The number of the last whole record in ``data`` (None: there is none)."""
    for line in reversed(data.split(b"\n")):
        decoded = decode_record(line)
        if decoded is not None:
            return int(decoded[1]["seq"])
    return None


#: What a record's type looks like in a line as :func:`encode_records` writes it: lines
#: of other types are passed over without being decoded.
_STATE, _ASKED, _RESOLVED = (
    b'"type":"StateChanged"',
    b'"type":"ToolApprovalRequested"',
    b'"type":"ToolCallResolved"',
)
#: How a record carried forward by a compaction ends (see :func:`mark_carried`).
_CARRIED_END = b',"c":1}'


def mark_carried(line: bytes) -> bytes:
    """``line`` (a whole record) marked as carried forward: older than the records after
    it by more than one number, which a reader must then say with a Resync."""
    if is_carried(line) or not line.endswith(b"}"):
        return line
    return line[:-1] + _CARRIED_END


def is_carried(line: bytes) -> bool:
    """Whether ``line`` is a record a compaction carried forward."""
    return line.endswith(_CARRIED_END)


def still_true(dropped: Sequence[bytes], kept: Sequence[bytes]) -> list[bytes]:
    """The records among ``dropped`` (older than every line of ``kept``) that a
    compaction must carry forward, in their order and with their numbers.

    A process that opens the context later learns from the log which turns other
    processes are running and which of their tool calls wait for a decision (so it can
    list, approve or stop them, and refuses to fork at a reply still streaming). So a
    branch's last state change is kept when it is not Idle and ``kept`` has none after
    it, and so is an approval request with a call still waiting (:mod:`._open_calls`).
    """
    later = set()
    for line in kept:
        if _STATE in line and (decoded := decode_record(line)) is not None:
            later.add(decoded[1].get("branch"))
    states: dict[str, int] = {}  # branch -> its last state change, while not Idle
    calls: Calls = {}
    asked_at: dict[tuple[str, str], int] = {}  # a call -> the line that asked for it
    for index, line in enumerate(dropped):
        if not (_STATE in line or _ASKED in line or _RESOLVED in line):
            continue
        decoded = decode_record(line)
        try:
            event = parse_event(decoded[1]) if decoded is not None else None
        except ValueError:
            continue  # a signal this version does not know
        if isinstance(event, StateChanged) and event.branch is not None:
            if event.new is State.IDLE:
                states.pop(event.branch, None)
            else:
                states[event.branch] = index
        elif isinstance(event, ToolApprovalRequested):
            asked_at.update({(call, event.message_id): index for call in event.tool_call_ids})
        if event is not None:
            track_calls(calls, event)
    keep = {index for on, index in states.items() if on not in later}
    keep |= {asked_at[key] for key in calls}
    return [dropped[index] for index in sorted(keep)]
