"""Child process of the metadata-writes-beside-a-stream test (run as a script).

    python streaming_writer_child.py DATA_DIR CONTEXT COUNT

Opens the context in its own session (a second kernel, say) and sends COUNT questions
on ``main``, one after the other, each answered by ten words streamed 20 ms apart, so
that the context has a reply being streamed most of the time. After each acknowledged
reply it prints the reply's id, one per line.
"""

from __future__ import annotations

import sys

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def main(data_dir: str, context_id: str, count: int) -> None:
    provider = ScriptedProvider()
    for turn in range(count):
        words = " ".join(f"w{turn}_{word}" for word in range(10))
        provider.reply(words, chunks="words", delay=0.02)
    session = ContextSession.open(context_id, data_dir=data_dir, provider=provider)
    for turn in range(count):
        reply = session.send(f"q{turn}").result(60)
        sys.stdout.write(reply.id + "\n")
        sys.stdout.flush()
    session.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
