"""What the research tools cost: a rating, the request hash per turn, the table of replies.

* ``rate()``: one rating (read, merge, atomic write, signal) against a store read of
  the same message (``get()``), the baseline of a call that touches one file;
* the request hash of one turn on a conversation of N messages, against building the
  request's messages list (what the turn does anyway);
* ``to_records()`` over N replies, and ``stability()`` over N answers.

Run: ``.venv/bin/python benchmarks/bench_research.py [replies]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable

from cm_notebook.provenance import request_hash
from cm_notebook.providers.base import ChatRequest
from cm_notebook.session import ContextSession
from cm_notebook.stability import stability
from cm_notebook.testing import ScriptedProvider

REPLIES = 100


def _each(fn: Callable[[], object], count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


def main() -> None:
    """Print the costs and their ratios against the baselines."""
    replies = int(sys.argv[1]) if len(sys.argv) > 1 else REPLIES
    with tempfile.TemporaryDirectory() as folder:
        session = ContextSession.create("bench", data_dir=folder, provider=ScriptedProvider())
        for n in range(replies):
            session.send(f"question {n} " + "word " * 20).result(60)
        reply = session.history()[-1].id
        read = _each(lambda: session.get(reply), 50)
        rate = _each(lambda: session.rate(reply, thumbs="up", tags=["x"]), 50)
        print(f"rate(): {rate * 1e3:.2f} ms, get(): {read * 1e3:.2f} ms ({rate / read:.1f}x)")

        history = session.history()
        build = _each(lambda: ChatRequest(messages=list(history)), 200)
        request = ChatRequest(messages=history, params={"temperature": 0.2})
        hashed = _each(lambda: request_hash(request, "local", "m"), 200)
        print(
            f"request hash of {len(history)} messages: {hashed * 1e3:.2f} ms "
            f"({hashed / build:.0f}x building the request)"
        )

        records = _each(session.to_records, 5)
        print(f"to_records() of {replies} replies: {records * 1e3:.1f} ms")
        answers = [m.content for m in history if m.role == "assistant"]
        grouped = _each(lambda: stability(answers), 5)
        print(f"stability() of {len(answers)} answers: {grouped * 1e3:.1f} ms")
        session.close()


if __name__ == "__main__":
    main()
