"""A widget front end in a test: a real kernel driven over ZMQ the way a browser drives it.

:class:`FrontEnd` reads every iopub message, keeps each widget model's state from its
``comm_open`` and state updates (as a browser's widget manager does), records custom
messages and the bytes of every comm message, and sends what a browser sends: a click
(``{"method": "custom", "content": {"event": "click"}}``), a text edit (``{"method":
"update", "state": {...}, "buffer_paths": []}``) or any custom message of a view. It
never sleeps: it waits on the kernel's messages with deadlines.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

TIMEOUT = 60.0


@dataclass
class CommRecord:
    """One comm message seen on iopub."""

    comm_id: str
    method: str  # "open", "update", "custom", "close"
    content: Any
    size: int  # bytes of header + parent header + metadata + content, as JSON
    date: datetime


@dataclass
class FrontEnd:
    """See the module docstring."""

    manager: KernelManager
    client: BlockingKernelClient
    data_dir: Path
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    customs: dict[str, list[Any]] = field(default_factory=dict)
    comms: list[CommRecord] = field(default_factory=list)
    displays: dict[str, dict[str, Any]] = field(default_factory=dict)  # display id -> data
    # display id -> the output's metadata, as a front end keeps it with the output
    display_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (the cell it came as, display id, data) of every display and update, in order:
    # a front end such as nbclient takes only those of the cell running
    display_log: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    # (display id, metadata) of every display and update, in order
    metadata_log: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _idle: set[str] = field(default_factory=set)
    _outputs: dict[str, list[str]] = field(default_factory=dict)

    # -- reading ---------------------------------------------------------------------

    def pump(self, timeout: float) -> bool:
        """Handle one iopub message if one comes within ``timeout`` s; False if none."""
        try:
            msg = self.client.get_iopub_msg(timeout=timeout)
        except Exception:  # queue.Empty
            return False
        self._handle(msg)
        return True

    def _handle(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        parent = msg["parent_header"].get("msg_id", "")
        if kind.startswith("comm_"):
            size = len(
                json.dumps(
                    [msg["header"], msg["parent_header"], msg["metadata"], content], default=str
                )
            )
            comm_id = content["comm_id"]
            data = content.get("data", {})
            if kind == "comm_open":
                method = "open"
                self.models[comm_id] = dict(data.get("state", {}))
            elif kind == "comm_close":
                method = "close"
            else:
                method = data.get("method", "?")
                if method == "update":
                    self.models.setdefault(comm_id, {}).update(data.get("state", {}))
                elif method == "custom":
                    self.customs.setdefault(comm_id, []).append(data.get("content"))
            date = msg["header"]["date"]
            if isinstance(date, str):
                date = datetime.fromisoformat(date)
            self.comms.append(CommRecord(comm_id, method, data, size, date))
        elif kind in ("display_data", "update_display_data"):
            display_id = content.get("transient", {}).get("display_id")
            if display_id:
                self.displays[display_id] = content["data"]
                self.display_log.append((parent, display_id, content["data"]))
                self.display_metadata[display_id] = content.get("metadata", {})
                self.metadata_log.append((display_id, content.get("metadata", {})))
        elif kind == "stream":
            self._outputs.setdefault(parent, []).append(content["text"])
        elif kind == "error":
            self._outputs.setdefault(parent, []).append("\n".join(content["traceback"]))
        elif kind == "status" and content["execution_state"] == "idle":
            self._idle.add(parent)

    def wait_for(
        self, condition: Callable[[], Any], timeout: float = TIMEOUT, what: str = ""
    ) -> Any:
        """Handle iopub messages until ``condition()`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what or condition}")
            self.pump(min(left, 0.5))

    def done(self, msg_id: str) -> bool:
        """Whether the kernel has gone idle after the cell ``msg_id`` (from iopub so far)."""
        return msg_id in self._idle

    def output(self, msg_id: str) -> str:
        """What the cell ``msg_id`` printed so far (streams and tracebacks)."""
        return "".join(self._outputs.get(msg_id, []))

    def reply(self, msg_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The execute_reply content of the cell ``msg_id``, once the kernel is idle after it."""
        self.wait_for(lambda: msg_id in self._idle, timeout, f"cell {msg_id}")
        reply = self.client.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.client.get_shell_msg(timeout=timeout)
        content: dict[str, Any] = reply["content"]
        return content

    def execute(self, code: str, timeout: float = TIMEOUT) -> tuple[dict[str, Any], str]:
        """Execute a cell that may fail: its execute_reply content and its output."""
        msg_id = self.client.execute(textwrap.dedent(code))
        return self.reply(msg_id, timeout), self.output(msg_id)

    def run(self, code: str, timeout: float = TIMEOUT) -> str:
        """Execute a cell, handling iopub meanwhile; return its printed output."""
        reply, out = self.execute(code, timeout)
        assert reply["status"] == "ok", out
        return out

    def use_scripted(self, title: str, turns: str) -> None:
        """Make ``slow``, a context whose model plays the scripted ``turns`` (a Python
        list of :meth:`ScriptedProvider.load` turns) and then echoes each question, the
        magics' current context."""
        self.run(
            f"""
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            slow = ContextSession.create({title!r}, provider=ScriptedProvider().load({turns}))
            %cm use slow
            """
        )

    def with_class(self, css_class: str) -> list[dict[str, Any]]:
        """The states of the widget models that carry ``css_class``, oldest first."""
        return [m for m in self.models.values() if css_class in m.get("_dom_classes", [])]

    # -- acting like a browser --------------------------------------------------------

    def _comm_msg(self, comm_id: str, data: dict[str, Any]) -> str:
        msg = self.client.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.client.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def click(self, comm_id: str) -> None:
        """A click on a button."""
        self._comm_msg(comm_id, {"method": "custom", "content": {"event": "click"}})

    def edit(self, comm_id: str, **state: Any) -> None:
        """A text edit (or any state change made in the browser)."""
        self.models.setdefault(comm_id, {}).update(state)
        self._comm_msg(comm_id, {"method": "update", "state": state, "buffer_paths": []})

    def custom(self, comm_id: str, content: dict[str, Any]) -> str:
        """A view's own message to the kernel (what its front-end code sends); returns
        its message id, whose :meth:`output` holds what its handling printed."""
        return self._comm_msg(comm_id, {"method": "custom", "content": content})

    def messages(self, transcript: str) -> list[dict[str, Any]]:
        """A ChatView transcript's finished messages, as its front end resolves them."""
        refs = self.models.get(transcript, {}).get("frozen", [])
        found = [self.models.get(ref.removeprefix("IPY_MODEL_"), {}) for ref in refs]
        return [model["data"] for model in found if "data" in model]

    def mark(self) -> int:
        """The number of comm messages seen so far (to measure what came after)."""
        return len(self.comms)


@contextmanager
def front_end(data_dir: Path) -> Iterator[FrontEnd]:
    """A fresh kernel of this virtualenv with ``CM_NOTEBOOK_DATA_DIR=data_dir``."""
    env = {**os.environ, "CM_NOTEBOOK_DATA_DIR": str(data_dir)}
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env)
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield FrontEnd(manager, client, data_dir)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        manager.cleanup_resources()
