"""Child process of the two-writers test (run as a script).

    python branch_writer_child.py DATA_DIR CONTEXT BRANCH NAME COUNT

Opens the context in its own session and sends COUNT questions ``NAME-<i>`` on
BRANCH, one after the other. A send refused because the other writer is using the
branch (BusyError) or because it moved the head (StateError) was not acknowledged, and
is tried again. After each acknowledged reply it prints one JSON line: the question,
the user message's id and the reply's id and text. It waits for a line on stdin
before starting, so the parent can start both writers at once.
"""

from __future__ import annotations

import json
import sys
import time

from cm_notebook.errors import BusyError, StateError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def main(data_dir: str, context_id: str, branch: str, name: str, count: int) -> None:
    provider = ScriptedProvider(delay=0.001)  # echoes "echo: <question>", in chunks
    session = ContextSession.open(context_id, data_dir=data_dir, provider=provider)
    sys.stdin.readline()
    for i in range(count):
        question = f"{name}-{i}"
        while True:
            try:
                turn = session.send(question, branch=branch)
            except (BusyError, StateError):
                time.sleep(0.002)  # the other writer holds the branch: try again
                continue
            break
        reply = turn.result(60)
        line = {"q": question, "user": reply.parent_id, "reply": reply.id, "text": reply.content}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
    session.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
