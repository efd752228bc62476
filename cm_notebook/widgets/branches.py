"""``BranchTree``: the branches of a context as a tree, switch by click, fork anywhere.

A branch hangs under the branch it was forked from (the oldest other branch whose
conversation contains its fork point). Each node shows the branch's name, its system
prompt, its length in messages and its last activity; a click on the name switches
to it, fork starts a new branch from its last message (the chat's fork forks from any
message).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets as t

from .. import events as ev
from ..model import Branch
from ._base import FollowingView, fork_under_free_name, static_text
from .chat import DOUBLE_CLICK

if TYPE_CHECKING:
    from ..session import ContextSession
    from ..tree import MessageTree

__all__ = ["BranchTree"]


class BranchTree(FollowingView, anywidget.AnyWidget):
    """The branches as a tree (front end in ``static/branches.js``)."""

    _esm = static_text("cut_short.js") + static_text("branches.js")
    _css = static_text("views.css")

    nodes = t.List(
        t.Dict(), help="branches in tree order: name, depth, active, prompt, length, last, labels"
    ).tag(sync=True)
    notice = t.Unicode("", help="the last action's error, with what to do").tag(sync=True)

    def __init__(self, session: ContextSession) -> None:
        super().__init__()
        self._follow(session, 0.25)
        # The last fork asked for, and when: a repeat within DOUBLE_CLICK seconds is a
        # double click, not a second branch.
        self._last_fork: tuple[str, float] | None = None
        self.on_msg(self._on_front_end)
        self._render()

    def __repr__(self) -> str:
        return "<cm_notebook BranchTree>"

    def _show_error(self, text: str) -> None:
        self.notice = text

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, (ev.BranchSwitched, ev.BranchCreated, ev.BranchDeleted)):
            self._throttle.now()
        elif isinstance(
            event, (ev.MessageAdded, ev.BranchUpdated, ev.ContextUpdated, ev.StateChanged)
        ):
            self._throttle.poke()
        elif isinstance(event, ev.Resync):
            self._throttle.now()

    def _on_front_end(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("branch"), str):
            return
        name = content["branch"]
        if content.get("event") == "switch":
            self._follower.on_loop(lambda: self._act(lambda: self.session.switch(name)))
        elif content.get("event") == "fork" and not self._again(name):
            self._follower.on_loop(lambda: self._act(lambda: self._fork(name)))

    def _again(self, name: str) -> bool:
        # On the comm thread, in the order of the clicks: whether this fork repeats the
        # last one within a double click's time (each would make a branch).
        now = time.monotonic()
        last, self._last_fork = self._last_fork, (name, now)
        return last is not None and last[0] == name and now - last[1] < DOUBLE_CLICK

    def _act(self, action: Any) -> None:
        self.notice = ""
        action()

    def _fork(self, name: str) -> None:
        # Forked at its head, the new branch keeps its prompt, provider and parameters.
        fork_under_free_name(self.session, f"{name}-fork", from_branch=name)

    def _render(self) -> None:
        session = self.session
        # Read, never changed or kept: no copy (a sweep's context has hundreds of branches).
        metadata = session._read_metadata()
        tree = session.tree()  # from the index: no message file is read
        branches = sorted(metadata.branches.values(), key=lambda b: b.created_at)
        paths = {b.name: [node.id for node in tree.path(b.name)] for b in branches}
        holder: dict[str, int] = {}  # message id -> the oldest branch holding it (index)
        for index, branch in enumerate(branches):
            for message_id in paths[branch.name]:
                holder.setdefault(message_id, index)
        parent: dict[str, str | None] = {}
        for index, branch in enumerate(branches):
            found = _parent_of(branch, index, holder, tree)
            parent[branch.name] = None if found is None else branches[found].name
        children: dict[str | None, list[str]] = {}
        for branch in branches:
            children.setdefault(parent[branch.name], []).append(branch.name)
        nodes: list[dict[str, Any]] = []

        def walk(name: str, depth: int) -> None:
            branch = metadata.branches[name]
            head = tree.nodes.get(branch.head) if branch.head else None
            nodes.append(
                {
                    "name": name,
                    "depth": depth,
                    "active": name == metadata.active_branch,
                    "state": session.state_of(name).value,
                    "prompt": session.system_prompt_of(name) or "",
                    "length": len(paths[name]),
                    "last": (head.created_at if head else branch.created_at).isoformat(),
                    "description": branch.description,
                    "labels": dict(branch.labels),
                }
            )
            for child in children.get(name, []):
                walk(child, depth + 1)

        for root in children.get(None, []):
            walk(root, 0)
        self.nodes = nodes


def _parent_of(branch: Branch, index: int, holder: dict[str, int], tree: MessageTree) -> int | None:
    # The oldest earlier branch whose conversation holds the fork point or, when none
    # does (a branch made by picking an earlier alternative reply forks at a message
    # only it holds), the nearest of its ancestors that one does: the branch is drawn
    # under the conversation it continues, not as a separate one.
    point = branch.forked_from or branch.head
    if point is None:
        return 0 if index else None
    while point is not None:
        oldest = holder.get(point)
        if oldest is not None and oldest < index:
            return oldest
        node = tree.nodes.get(point)
        point = node.parent_id if node is not None else None
    return None
