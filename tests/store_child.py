"""Child process for the store's crash and concurrency tests (run as a script).

    python store_child.py append DATA_DIR CONTEXT BRANCH COUNT
        Appends COUNT messages, each the child of the previous one (starting at the
        branch head), and prints ``ack <id>`` after each append has returned.
    python store_child.py stream DATA_DIR CONTEXT BRANCH
        Appends a user message and a streaming assistant reply (``stream <id>``), then
        checkpoints the reply forever, adding ``"tok "`` each time and printing
        ``ckpt <number of tokens>`` after each checkpoint has returned.

Every line is flushed at once, so the parent knows exactly which writes were
acknowledged when it kills this process.
"""

from __future__ import annotations

import sys

import anyio

from cm_notebook.model import Message, MessageStatus
from cm_notebook.store import FileStore


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def append(store: FileStore, context_id: str, branch: str, count: int) -> None:
    head = (await store.get_metadata(context_id)).branches[branch].head
    for i in range(count):
        message = Message(
            role="user" if i % 2 == 0 else "assistant", parent_id=head, content=f"{i}"
        )
        await store.append_message(context_id, message, branch=branch)
        say(f"ack {message.id}")
        head = message.id


async def stream(store: FileStore, context_id: str, branch: str) -> None:
    head = (await store.get_metadata(context_id)).branches[branch].head
    question = Message(role="user", parent_id=head, content="tell me a story")
    await store.append_message(context_id, question, branch=branch)
    reply = Message(role="assistant", parent_id=question.id, status=MessageStatus.STREAMING)
    await store.append_message(context_id, reply, branch=branch)
    say(f"stream {reply.id}")
    tokens = 0
    while True:
        tokens += 1
        reply.content += "tok "
        await store.update_message(context_id, reply)
        say(f"ckpt {tokens}")


async def main(argv: list[str]) -> None:
    mode, data_dir, context_id, branch = argv[:4]
    async with FileStore(data_dir) as store:
        if mode == "append":
            await append(store, context_id, branch, int(argv[4]))
        elif mode == "stream":
            await stream(store, context_id, branch)
        else:
            raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
