"""Child process for the sweep tests of reads the operating system refuses (a script).

    python sweep_os_child.py DATA_DIR CONTEXT emfile|emfile-after|plain

Opens the context, runs the sweep ``cap`` (one prompt, one variant) again, and prints
one JSON line: its cell's status and error, and what ``to_records()`` and
``stability()`` raised (their error type and message), or ``null`` if they did not.
With ``emfile``, the process's limit of open files is first lowered to the
descriptors it already has, so that every file the store opens fails with EMFILE;
with ``emfile-after``, only once the sweep has run (before its records are read).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

import watchfiles._rust_notify  # noqa: F401

# Imported before the limit is lowered: an import opens files too (the watcher of the
# context's files imports watchfiles when it starts).
import cm_notebook.sweep_cells
import cm_notebook.sweep_results  # noqa: F401
from cm_notebook.errors import CMError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def raised(call: Any) -> dict[str, str] | None:
    try:
        call()
    except CMError as exc:
        return {"type": type(exc).__name__, "message": str(exc)}
    return None


def _no_more_files() -> None:
    lowest = os.dup(0)  # the lowest free descriptor: no new one below the limit
    os.close(lowest)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))


def main() -> None:
    data_dir, context_id, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    fake = ScriptedProvider(strict=True).reply("asked again")
    session = ContextSession.open(context_id, provider=fake, data_dir=data_dir)
    assert session.branches  # the metadata and index read while files can be opened
    if mode == "emfile":
        _no_more_files()
    sweep = session.sweep("Capital of France?", [{}], name="cap", progress=False).run(30)
    cell = sweep.cells[0]
    if mode == "emfile-after":
        _no_more_files()
    out = {
        "status": cell.status,
        "error": cell.error,
        "requests": fake.request_count,
        "records": raised(sweep.to_records),
        "stability": raised(sweep.stability),
    }
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # no clean-up that needs files: the limit stays low


if __name__ == "__main__":
    main()
