"""What the research tools cost: a rating, the request hash per turn, the table of replies.

* ``rate()``: one rating (read, merge, atomic write, signal) against a store read of
  the same message (``get()``), the baseline of a call that touches one file;
* the request hash of one turn on a conversation of N messages, against building the
  request's messages list (what the turn does anyway);
* ``to_records()`` over N replies, and ``stability()`` over N answers;
* the word diff of two long answers (what the compare view, replays and stability
  show), against difflib's ``SequenceMatcher`` on the same words.

Run: ``.venv/bin/python benchmarks/bench_research.py [replies]``.
"""

from __future__ import annotations

import difflib
import random
import sys
import tempfile
import time
from collections.abc import Callable

from cm_notebook._word_diff import _TOKEN
from cm_notebook.compare import word_diff
from cm_notebook.provenance import request_hash
from cm_notebook.providers.base import ChatRequest
from cm_notebook.session import ContextSession
from cm_notebook.stability import stability
from cm_notebook.testing import ScriptedProvider

REPLIES = 100
LONG_ANSWER_WORDS = 1500


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
    _long_diff(LONG_ANSWER_WORDS)


def _long_diff(words: int) -> None:
    # Two answers of ``words`` words from one vocabulary with prose's word frequencies
    # (a few words very common), the second with every 20th word changed.
    generator = random.Random(7)
    vocabulary = [f"word{n}" for n in range(2000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    first = generator.choices(vocabulary, weights, k=words)
    second = [w if n % 20 else "changed" for n, w in enumerate(first)]
    a, b = " ".join(first), " ".join(second)
    ours = _each(lambda: word_diff(a, b), 3)
    tokens_a, tokens_b = _TOKEN.findall(a), _TOKEN.findall(b)
    start = time.perf_counter()
    difflib.SequenceMatcher(a=tokens_a, b=tokens_b, autojunk=False).get_opcodes()
    baseline = time.perf_counter() - start
    print(
        f"word_diff() of two {words:,}-word answers: {ours * 1e3:.1f} ms "
        f"(difflib: {baseline * 1e3:.0f} ms, {baseline / ours:.0f}x)"
    )


if __name__ == "__main__":
    main()
