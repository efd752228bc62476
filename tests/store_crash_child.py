"""A fork server that runs one store operation and SIGKILLs itself at a chosen file event.

    python store_crash_child.py

Reads one JSON request per line on stdin: ``{"op": ..., "data_dir": ..., "kill_at": K,
"args": {...}}``. For each it forks; the forked process runs the operation with a
fresh FileStore and, once the operation proper has started, counts the file-system
events that Python's audit hooks report below ``data_dir`` (opening a file, renaming,
removing, truncating, creating or removing a folder). Just before the K-th event it
kills itself with SIGKILL, so everything before that event happened and nothing after
it did. With ``"after": true`` a K-th event that is a rename is made first (by the
hook, the same ``os.replace`` the store was about to make) and the kill follows it, so
everything up to and including that rename happened and nothing after it: the store's
next step may be a write to a file it holds open, which no audit event reports. If the
operation ends first, it writes the number of events it saw to ``<data_dir>.events``
and their kinds, one a line, to ``<data_dir>.kinds``, and exits 0. The server answers
each request with one line: ``exit <code>`` or ``killed <signal>``.

Forking a single-threaded server that has already imported everything keeps a kill
point down to a few milliseconds. Nothing in the store is patched: the audit hook only
watches, and the kill is a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio

from cm_notebook.model import Branch, ContextMetadata, Message, MessageStatus
from cm_notebook.store import FileStore

_WATCHED = {"open", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.mkdir"}


class Killer:
    def __init__(self, data_dir: str, kill_at: int, after: bool = False) -> None:
        self.root = os.path.realpath(data_dir)
        self.kill_at = kill_at
        self.after = after
        self.armed = False
        self.seen = 0
        self.kinds: list[str] = []

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed or event not in _WATCHED:
            return
        target = args[0] if args else None
        if isinstance(target, (str, bytes, os.PathLike)):
            path = os.path.realpath(os.fsdecode(target))
            if not path.startswith(self.root):
                return
        elif event != "os.truncate":  # ftruncate reports a descriptor
            return
        self.seen += 1
        self.kinds.append(event)
        if self.seen >= self.kill_at:
            if self.after and event == "os.rename":
                self.armed = False  # the hook sees its own rename too
                src, dst, src_dir_fd, dst_dir_fd = args
                os.replace(
                    src,
                    dst,
                    src_dir_fd=None if src_dir_fd == -1 else src_dir_fd,
                    dst_dir_fd=None if dst_dir_fd == -1 else dst_dir_fd,
                )
            os.kill(os.getpid(), signal.SIGKILL)


async def run(request: dict[str, Any], killer: Killer) -> None:
    op, a = request["op"], request["args"]
    cid = a.get("cid", "c1")
    async with FileStore(request["data_dir"]) as store:
        if op == "append":
            message = Message(
                id=a["id"],
                role=a.get("role", "user"),
                parent_id=a["parent"],
                content=a["content"],
                status=MessageStatus(a.get("status", "complete")),
            )
            killer.armed = True
            await store.append_message(cid, message, branch=a.get("branch"))
        elif op in ("checkpoint", "finish"):
            reply = Message(
                id=a["id"], role="assistant", parent_id=a["parent"], status=MessageStatus.STREAMING
            )
            await store.append_message(cid, reply, branch="main")
            if op == "finish":
                reply.content = "part"
                await store.update_message(cid, reply)
                reply = reply.model_copy(
                    update={"content": "full", "status": MessageStatus.COMPLETE}
                )
            else:
                reply.content = "part"
            killer.armed = True
            await store.update_message(cid, reply)
        elif op == "update":
            # An update of a finished message, as every save of a tool call's status is.
            committed = await store.get_message(cid, a["id"])
            killer.armed = True
            await store.update_message(cid, committed.model_copy(update={"content": a["content"]}))
        elif op == "create_branch":
            killer.armed = True
            await store.create_branch(cid, a["name"], head=a["head"])
        elif op == "set_branch_head":
            killer.armed = True
            await store.set_branch_head(cid, a["name"], a["head"])
        elif op == "set_active_branch":
            killer.armed = True
            await store.set_active_branch(cid, a["name"])
        elif op == "delete_branch":
            killer.armed = True
            await store.delete_branch(cid, a["name"])
        elif op == "update_metadata":
            killer.armed = True
            await store.update_metadata(cid, title=a["title"])
        elif op == "create_context":
            killer.armed = True
            await store.create_context(ContextMetadata(id=a["new_cid"]))
        elif op == "delete_context":
            killer.armed = True
            await store.delete_context(cid)
        elif op == "update_score":
            score = {"message_id": a["message"], "score": a["score"]}
            killer.armed = True
            await store.update_score(cid, a["message"], lambda _old: score)
        elif op == "check_repair":
            killer.armed = True
            await store.check(cid, repair=True)
        else:
            raise SystemExit(f"unknown op {op!r}")
        killer.armed = False


def child(request: dict[str, Any]) -> None:
    killer = Killer(request["data_dir"], int(request["kill_at"]), bool(request.get("after")))
    sys.addaudithook(killer.hook)
    anyio.run(run, request, killer)
    Path(request["data_dir"] + ".events").write_text(str(killer.seen))
    Path(request["data_dir"] + ".kinds").write_text("".join(f"{k}\n" for k in killer.kinds))


def main() -> None:
    _ = (Branch,)  # everything the children need is imported before the first fork
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the forked child
            code = 0
            try:
                child(request)
            except BaseException as exc:  # report, then leave without running atexit
                sys.stderr.write(f"child failed: {exc!r}\n")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            answer = f"killed {os.WTERMSIG(status)}"
        else:
            answer = f"exit {os.WEXITSTATUS(status)}"
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
