"""Workload 4 (in a real kernel): what a streamed reply costs on the wire to a view.

Starts a kernel of this Python with ``jupyter_client``, makes a ``ChatView`` of a
session there, and streams ``view_replies`` replies of ``chunks_per_reply`` chunks,
paced like a fast model (5 ms a chunk). Reads every iopub message as a browser's widget
manager does and counts the comm messages (opens, updates, custom messages) and their
bytes (header, parent header, metadata and content as JSON) from each send until the
reply shows as complete in the transcript's state. Baselines: the chunks of a reply,
and the bytes of its text.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import textwrap
import time
from collections.abc import Callable
from typing import Any

from ..common import Bench
from ..report import Row, skipped
from .streaming import chunk_pieces

NAME = "view_kernel"
WORKLOAD = "4 streaming"
PACE = 0.005
TIMEOUT = 120.0


class _Wire:
    """The iopub side of a front end: widget states, comm messages and their sizes."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.models: dict[str, dict[str, Any]] = {}
        self.comms = 0
        self.comm_bytes = 0
        self.outputs: dict[str, str] = {}
        self.idle: set[str] = set()

    def _handle(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        parent = msg["parent_header"].get("msg_id", "")
        if kind.startswith("comm_"):
            self.comms += 1
            self.comm_bytes += len(
                json.dumps(
                    [msg["header"], msg["parent_header"], msg["metadata"], content], default=str
                )
            )
            data = content.get("data", {})
            if kind == "comm_open":
                self.models[content["comm_id"]] = dict(data.get("state", {}))
            elif data.get("method") == "update":
                self.models.setdefault(content["comm_id"], {}).update(data.get("state", {}))
        elif kind == "stream":
            self.outputs[parent] = self.outputs.get(parent, "") + content["text"]
        elif kind == "error":
            self.outputs[parent] = self.outputs.get(parent, "") + "\n".join(content["traceback"])
        elif kind == "status" and content["execution_state"] == "idle":
            self.idle.add(parent)

    def wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the kernel did not show {what} within {TIMEOUT:.0f} s")
            try:
                self._handle(self.client.get_iopub_msg(timeout=min(left, 0.5)))
            except queue.Empty:
                continue

    def run(self, code: str) -> str:
        """Execute a cell and wait for the kernel to be idle after it; its output."""
        msg_id = self.client.execute(textwrap.dedent(code))
        self.wait(lambda: msg_id in self.idle, "the end of a cell")
        return self.outputs.get(msg_id, "")

    def has_completed(self, replies: int) -> bool:
        """Whether ``replies`` assistant messages show as complete (FrozenMessage models)."""
        return replies <= sum(
            1
            for model in self.models.values()
            if isinstance(model.get("data"), dict)
            and model["data"].get("role") == "assistant"
            and model["data"].get("status") == "complete"
        )


def run(bench: Bench) -> list[Row]:
    """Stream the replies into a view in a real kernel and count what went over the wire."""
    try:
        from jupyter_client.manager import KernelManager
    except ImportError:
        return [skipped(WORKLOAD, "comm messages per reply", "skipped: jupyter_client absent")]
    sizes = bench.sizes
    replies, chunks = sizes.view_replies, sizes.chunks_per_reply
    texts = ["".join(chunk_pieces(reply, chunks)) for reply in range(replies)]
    env = {**os.environ, "CM_NOTEBOOK_DATA_DIR": str(bench.folder("view-kernel"))}
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env)
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=TIMEOUT)
        wire = _Wire(client)
        out = wire.run(
            f"""
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            from cm_notebook.widgets import ChatView
            fake = ScriptedProvider(strict=True)
            for reply in range({replies}):
                pieces = [f"tok{{reply}}.{{chunk}} " for chunk in range({chunks})]
                fake.reply("".join(pieces), chunks=pieces, delay={PACE})
            session = ContextSession.create("view", provider=fake)
            view = ChatView(session)
            print("ready")
            """
        )
        if "ready" not in out:
            raise RuntimeError(f"the kernel could not make the view:\n{out}")
        comms, sent = wire.comms, wire.comm_bytes
        for reply in range(replies):
            wire.run(f"turn = session.send('reply {reply}, please')")
            wire.wait(functools.partial(wire.has_completed, reply + 1), "the completed reply")
        messages, size = wire.comms - comms, wire.comm_bytes - sent
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        manager.cleanup_resources()
    text_bytes = sum(len(t.encode()) for t in texts) / replies
    return [
        Row(
            WORKLOAD,
            f"view in a real kernel: comm messages per reply ({chunks} chunks, "
            f"{PACE * 1000:.0f} ms apart)",
            messages / replies,
            "",
            baseline=float(chunks),
            baseline_label="chunks per reply",
        ),
        Row(
            WORKLOAD,
            "view in a real kernel: comm bytes per reply",
            size / replies,
            "B",
            baseline=text_bytes,
            baseline_label="the reply's text",
        ),
    ]
