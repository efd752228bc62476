"""The whole message tree of a context, for a tree view: built from the index alone.

:meth:`ContextSession.tree() <cm_notebook.session.ContextSession.tree>` returns a
:class:`MessageTree` made from the message index and the branch heads, so it costs no
message file read whatever the size of the context: a view draws the tree from it and
pulls the content of the messages it shows with ``session.get(id)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .model import Branch, MessageStatus, Role
from .store import IndexEntry

__all__ = ["MessageTree", "TreeNode"]


class TreeNode(BaseModel):
    """One message as the tree knows it: no content (pull it with ``session.get(id)``).

    ``branch_heads`` names the branches whose head this message is; ``seq`` is its
    order of arrival in the context (siblings are listed oldest first).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    parent_id: str | None
    role: Role
    status: MessageStatus
    created_at: datetime
    seq: int
    branch_heads: list[str] = Field(default_factory=list)


class MessageTree(BaseModel):
    """Every message of a context as a tree, where each branch's head is, and the
    labels of the branches that have some (``labels[name]``)."""

    model_config = ConfigDict(frozen=True)

    nodes: dict[str, TreeNode]
    heads: dict[str, str | None]
    active_branch: str | None = None
    labels: dict[str, dict[str, str]] = Field(default_factory=dict)
    _children: dict[str | None, list[str]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object, /) -> None:
        """Index the children of each node, oldest first."""
        children: dict[str | None, list[str]] = {}
        for node in sorted(self.nodes.values(), key=lambda n: n.seq):
            children.setdefault(node.parent_id, []).append(node.id)
        self._children = children

    @classmethod
    def build(
        cls,
        entries: Mapping[str, IndexEntry],
        branches: Mapping[str, Branch],
        active_branch: str | None = None,
    ) -> MessageTree:
        """The tree of index ``entries`` with the heads of ``branches``."""
        heads_at: dict[str, list[str]] = {}
        for name, branch in branches.items():
            if branch.head is not None:
                heads_at.setdefault(branch.head, []).append(name)
        nodes = {
            mid: TreeNode(
                id=mid,
                parent_id=entry.parent_id,
                role=entry.role,
                status=entry.status,
                created_at=entry.created_at,
                seq=entry.seq,
                branch_heads=sorted(heads_at.get(mid, [])),
            )
            for mid, entry in entries.items()
        }
        heads = {name: branch.head for name, branch in branches.items()}
        labels = {name: dict(branch.labels) for name, branch in branches.items() if branch.labels}
        return cls(nodes=nodes, heads=heads, active_branch=active_branch, labels=labels)

    def children(self, message_id: str | None) -> list[TreeNode]:
        """The replies to (or alternatives after) ``message_id``; None: the roots."""
        return [self.nodes[mid] for mid in self._children.get(message_id, [])]

    def path(self, branch: str) -> list[TreeNode]:
        """The nodes from the root to the head of ``branch`` (KeyError: no such branch)."""
        out: list[TreeNode] = []
        current = self.heads[branch]
        while current is not None and current in self.nodes and len(out) <= len(self.nodes):
            node = self.nodes[current]
            out.append(node)
            current = node.parent_id
        return out[::-1]

    def holds(self, branch: str, message_id: str) -> bool:
        """Whether ``message_id`` is on the path of ``branch`` (False: no such branch)."""
        current = self.heads.get(branch)
        steps = 0
        while current is not None and current in self.nodes and steps <= len(self.nodes):
            if current == message_id:
                return True
            current = self.nodes[current].parent_id
            steps += 1
        return False

    def first_holding(self, message_id: str, branches: Iterable[str]) -> str | None:
        """The first of ``branches`` whose path holds ``message_id`` (None: none does)."""
        return next((name for name in branches if self.holds(name, message_id)), None)

    def __repr__(self) -> str:
        return f"<MessageTree {len(self.nodes)} messages, {len(self.heads)} branches>"
