"""Child process for the Ctrl-C in ``send()`` test (run as a script).

    python send_interrupt_child.py DATA_DIR COUNT [send|regenerate]

Sends COUNT messages from plain code (the turns run on the background loop), or asks
COUNT times for a new reply to the first (``regenerate``), each with a SIGINT delivered
to this process a little later, at a moment that varies from one call to the next, so
that some land inside the call. Prints one JSON line per send:
``{"sent": i, "outcome": "returned" | "interrupted", "said": <the interrupt's text>}``,
then a last one with the branch's messages (``"messages": [[role, status, error,
text]...]``)
and the reply to one more send made after them all.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def main(data_dir: str, count: int, operation: str) -> None:
    fake = ScriptedProvider()
    for _ in range(count + 2):
        fake.reply("alpha beta gamma", chunks="words", delay=0.005)
    session = ContextSession.create("interrupts", provider=fake, data_dir=data_dir)
    session.send("first").result(30)
    for number in range(count):
        # From at once to 6 ms later: a send from a script takes a few milliseconds.
        delay = (number % 13) * 0.0005
        go = threading.Event()
        timer = threading.Thread(target=_interrupt_after, args=(go, delay))
        timer.start()
        outcome, said = "returned", ""
        try:
            go.set()
            if operation == "send":
                session.send(f"question {number}")
            else:
                session.regenerate()
            time.sleep(0.05)  # where the interrupt lands when the send was quicker
        except KeyboardInterrupt as exc:
            if _inside(exc, operation):
                outcome, said = "interrupted", str(exc)
        while True:  # the interrupt has landed before the next send starts
            try:
                timer.join()
                time.sleep(0.01)
                break
            except KeyboardInterrupt:
                continue
        running = session.turn()
        if running is not None:
            running.result(30)
        print(json.dumps({"sent": number, "outcome": outcome, "said": said}), flush=True)
    last = session.send("after them all").result(30)
    messages = [[m.role, m.status.value, m.metadata.error, m.content] for m in session.history()]
    print(json.dumps({"messages": messages, "last": last.content}), flush=True)
    session.close()


def _interrupt_after(go: threading.Event, delay: float) -> None:
    go.wait()
    if delay:
        time.sleep(delay)
    os.kill(os.getpid(), signal.SIGINT)


def _inside(exc: KeyboardInterrupt, operation: str) -> bool:
    # A KeyboardInterrupt raised inside the call (not in the sleep after it).
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == operation:
            return True
        tb = tb.tb_next
    return False


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "send")
