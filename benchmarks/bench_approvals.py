"""What approval choices cost: one audit-log append, reading the log, an allow-list check,
and a whole tool turn asked for and approved against one allowed without asking.

Run: ``.venv/bin/python benchmarks/bench_approvals.py [count]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from cm_notebook import ContextSession, tool
from cm_notebook._approval_log import AllowLists, ApprovalLog
from cm_notebook.approvals import ApprovalRecord
from cm_notebook.testing import ScriptedProvider

COUNT = 200


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _turns(data_dir: Path, count: int, allowed: bool) -> float:
    # Seconds per turn made of one tool call and a reply.
    fake = ScriptedProvider(strict=True)
    for _ in range(count):
        fake.tool_call("add", {"a": 1, "b": 2}).reply("3")
    with ContextSession.create(data_dir=data_dir, provider=fake, tools=[add]) as session:
        if allowed:
            session.allow("add")
        start = time.perf_counter()
        for _ in range(count):
            turn = session.send("1 + 2?")
            if not allowed:
                while not session.pending_tool_calls:
                    time.sleep(0.0005)  # a benchmark may poll; tests may not
                session.approve()
            turn.result(30)
        return (time.perf_counter() - start) / count


def main() -> None:
    """Print the costs."""
    count = int(sys.argv[1]) if len(sys.argv) > 1 else COUNT
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        log = ApprovalLog(root / "log")
        record = ApprovalRecord(
            branch="main", message_id="m1", tool_call_id="c1", tool="add", approved=True
        )
        start = time.perf_counter()
        for _ in range(count):
            log.append(record)
        print(f"audit log append (fsync'd): {(time.perf_counter() - start) / count * 1e3:.2f} ms")
        start = time.perf_counter()
        log.read()
        print(f"reading {count} records: {(time.perf_counter() - start) * 1e3:.2f} ms")
        lists = AllowLists(root / "lists")
        lists.allow("add", "context")
        start = time.perf_counter()
        for _ in range(count * 10):
            lists.scope_of("add")
        per_check = (time.perf_counter() - start) / (count * 10) * 1e6
        print(f"allow-list check (a stat): {per_check:.1f} us")
        turns = max(10, count // 10)
        asked = _turns(root / "asked", turns, allowed=False)
        allowed = _turns(root / "allowed", turns, allowed=True)
        print(f"tool turn, approved by hand: {asked * 1e3:.1f} ms")
        print(f"tool turn, allowed without asking: {allowed * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
