"""A second process with the same context open: runs the operations it is sent.

    python session_ops_child.py DATA_DIR CONTEXT

Opens the context in its own session (a second kernel, say), with a scripted model
that echoes, and prints ``ready``. Then, for each JSON line on stdin, runs one
operation and prints one JSON line: ``{"ok": ...}``, or ``{"err": <error class>,
"msg": <its message>}`` for a refusal. Operations:

* ``{"op": "send", "text": ..., "branch": ...}``: the reply's text;
* ``{"op": "retry", "branch": ...}``: the retried reply's text;
* ``{"op": "edit", "message": <id>, "text": ..., "branch": <name or null>}``: the
  branch written and the reply's text;
* ``{"op": "fan_out", "text": ..., "variants": [...]}``: the arms' branches;
* ``{"op": "replay", "branch": ..., "name": <name or null>}``: the replay's branch;
* ``{"op": "counterfactual", "message": <id>, "text": ..., "name": <name or null>}``:
  the counterfactual's branch;
* ``{"op": "edit_system", "text": ..., "branch": ...}``: the branch the prompt is on;
* ``{"op": "remake", "branch": ..., "provider": <spec>}``: the branch deleted and
  made again (forked at the active branch's head, not switched to) with that
  provider; the new branch's provider spec;
* ``{"op": "rename", "title": ...}``: the title.

A test writes a line to each of several such processes one after the other (a
matter of microseconds): their operations then run at once. The session is closed
at the end of stdin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cm_notebook.errors import CMError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def run(session: ContextSession, command: dict[str, Any]) -> object:
    """What ``command`` returns (see the module docstring)."""
    op = command["op"]
    if op == "send":
        return session.send(command["text"], branch=command.get("branch")).result(60).content
    if op == "retry":
        return session.retry(branch=command.get("branch")).result(60).content
    if op == "edit":
        turn = session.edit(command["message"], command["text"], branch=command.get("branch"))
        return [turn.branch, turn.result(60).content]
    if op == "fan_out":
        handle = session.fan_out(command["text"], command["variants"])
        handle.result(60)
        return handle.branches
    if op == "replay":
        replay = session.replay(command["branch"], name=command.get("name"))
        replay.result(60)
        return replay.branch
    if op == "counterfactual":
        replay = session.counterfactual(
            command["message"], command["text"], name=command.get("name")
        )
        replay.result(60)
        return replay.branch
    if op == "edit_system":
        return session.edit_system(command["text"], branch=command["branch"]).name
    if op == "remake":
        session.delete_branch(command["branch"])
        made = session.branch(command["branch"], provider=command["provider"], switch=False)
        return made.provider.spec if made.provider is not None else None
    if op == "rename":
        return session.rename(command["title"])
    raise ValueError(f"unknown operation {op!r}")


def main(data_dir: str, context_id: str) -> None:
    # A short delay per chunk: a turn holds its branch long enough to be seen busy.
    provider = ScriptedProvider(delay=0.01)
    session = ContextSession.open(context_id, data_dir=data_dir, provider=provider)
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            answer: dict[str, object] = {"ok": run(session, json.loads(line))}
        except CMError as exc:
            answer = {"err": type(exc).__name__, "msg": str(exc)}
        print(json.dumps(answer), flush=True)
    session.close()


class OpsChild:
    """The parent's handle on one such process (started at once; ``ready`` waited for)."""

    def __init__(self, data_dir: Path, context_id: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(data_dir), context_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.read() == "ready"

    def read(self) -> str:
        """The next line the process printed."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the child process ended (exit code {self.process.poll()})"
        return line.strip()

    def tell(self, **command: Any) -> None:
        """Start ``command`` there; :meth:`answer` waits for what it returns."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        """The outcome of the command told last: ``{"ok": ...}`` or ``{"err": ...}``."""
        outcome: dict[str, Any] = json.loads(self.read())
        return outcome

    def run(self, **command: Any) -> Any:
        """Run ``command`` there and return what it returned (failing on an error)."""
        self.tell(**command)
        outcome = self.answer()
        assert "ok" in outcome, outcome
        return outcome["ok"]

    def close(self) -> None:
        """Close its session (end of stdin) and wait for it to exit."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
