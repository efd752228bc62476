"""A server whose data folder it may not write: 503, advice for its administrator, a warning.

A read-only data folder (a colleague's, served to read) is how the server was set up,
not a bug in it: every read works, and every request that would write is answered 503
(``StoreIOError``) with a message for whoever runs the server (serve a writable copy
with ``--CMNotebookApp.data_dir``), never a Python keyword, a path of the server's
machine or a command to run there. Its log has one warning line per refusal, not an
error with the request's headers. A real Jupyter server in a child process, over a
folder made read-only for real (see test_store_journal_cut_read_only.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jupyter_server_proc import BASE_URL, JupyterServer
from test_store_journal_cut_read_only import _files, _make_read_only
from test_store_journal_cut_read_only import read_only as read_only

from cm_notebook import ContextSession
from cm_notebook.errors import StorageFullError
from cm_notebook.server.base import status_of
from cm_notebook.server.wording import for_http
from cm_notebook.store.oserrors import translate
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")

API = f"{BASE_URL}cm/api"
#: How the server's administrator chooses its data folder.
SERVE = "`--CMNotebookApp.data_dir`"


def _refusal(code: int, doing: str, data_dir: Path) -> str:
    # The store's error for a refused ``doing`` of a file in ``data_dir``.
    path = data_dir / "contexts" / "c1" / ".lock"
    return str(translate(OSError(code, os.strerror(code), str(path)), path, doing))


def _for_a_client(message: str) -> None:
    # Nothing a client cannot act on, nor any Python or command-line spelling.
    for python_or_shell in ("data_dir=", "CM_NOTEBOOK_DATA_DIR", "cm-notebook", "--data-dir"):
        assert python_or_shell not in message, message


@pytest.mark.parametrize(
    ("code", "doing"),
    [(errno.EROFS, "lock"), (errno.EACCES, "lock"), (errno.EPERM, "write"), (errno.EACCES, "read")],
)
def test_a_data_folder_the_server_may_not_write_is_advised_for_its_administrator(
    tmp_path: Path, code: int, doing: str
) -> None:
    worded = for_http(_refusal(code, doing, tmp_path), data_dir=tmp_path, api=API, context_id="c1")
    _for_a_client(worded)
    assert str(tmp_path) not in worded
    assert "contexts/c1/.lock" in worded
    assert "The server's administrator can " in worded
    assert worded.endswith(f"with {SERVE}."), worded
    if doing != "read":
        assert "serve a writable copy of its data folder (or another folder)" in worded


def test_a_remedy_cut_short_by_what_follows_is_reworded_too(tmp_path: Path) -> None:
    # A sent message that could not be stored quotes the refusal without its period.
    refused = _refusal(errno.EROFS, "lock", tmp_path).rstrip(". ")
    message = f"your message could not be stored: {refused}. Nothing was sent; send it again."
    worded = for_http(message, data_dir=tmp_path, api=API, context_id="c1")
    _for_a_client(worded)
    assert f"with {SERVE}. Nothing was sent" in worded


def test_only_a_refused_write_is_503(tmp_path: Path) -> None:
    def error(code: int) -> OSError:
        return OSError(code, os.strerror(code), str(tmp_path / "f"))

    for code in (errno.EROFS, errno.EACCES, errno.EPERM):
        assert status_of(translate(error(code), tmp_path / "f", "write")) == 503
    full = translate(error(errno.ENOSPC), tmp_path / "f", "write")
    assert isinstance(full, StorageFullError)
    assert status_of(full) == 500  # as before
    assert status_of(translate(error(errno.EIO), tmp_path / "f", "write")) == 500


@pytest.fixture
def served(read_only: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[JupyterServer, str]]:
    """A server over a read-only data folder holding one context, and that context's id."""
    data_dir, view = read_only
    session = ContextSession.create("shared", provider=ScriptedProvider(["hi"]), data_dir=data_dir)
    try:
        session.send("hello").result(30)
    finally:
        session.close()
    _make_read_only(data_dir, view)
    server = JupyterServer(tmp_path / "server")
    server.data_dir = view
    with server:
        yield server, session.id


def test_writes_into_a_read_only_data_folder_are_503_and_logged_as_warnings(
    served: tuple[JupyterServer, str],
) -> None:
    server, context_id = served
    before = _files(server.data_dir)
    with httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=60) as client:
        assert client.get(f"contexts/{context_id}").status_code == 200  # reads work
        assert client.get(f"contexts/{context_id}/messages").status_code == 200
        refused = [
            client.post("contexts", json={"title": "new"}),
            client.patch(f"contexts/{context_id}", json={"title": "renamed"}),
            client.post(f"contexts/{context_id}/messages", json={"text": "more"}),
            client.post(f"contexts/{context_id}/branches", json={"name": "side"}),
        ]
    for response in refused:
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["reason"] == "StoreIOError", body
        message = body["message"]
        _for_a_client(message)
        assert str(server.root) not in message
        assert str(server.data_dir) not in message
        assert "The server's administrator can " in message
        assert SERVE in message
    assert _files(server.data_dir) == before

    log = server.log()
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if " 503 " in line]
    assert len(lines) == len(refused), log  # one line each: the request and the message
    assert all(line.startswith("[W ") for line in lines), lines
    assert all(
        "the file system is read-only" in line or "permission denied" in line for line in lines
    )
    assert '"User-Agent"' not in log  # no request headers, which errors come with
    assert not [line for line in log.splitlines() if line.startswith("[E ")], log
