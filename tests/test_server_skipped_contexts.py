"""``GET /contexts`` names the folders it cannot read as contexts, so that a REST client
learns the id of a damaged context (to restore or DELETE it) without the server's log.

A real Jupyter server in a child process; the damage is done to its files on disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from jupyter_server_proc import BASE_URL, JupyterServer
from server_client import create_context, wait_for

API = f"{BASE_URL}cm/api"
#: A Python call in a message: the remedy of a notebook, not of an HTTP client.
PYTHON_CALL = re.compile(r"\w\((\.\.\.)?\)")


def _damage(folder: Path, how: str) -> None:
    metadata = folder / "metadata.json"
    if how == "cut short":
        metadata.write_bytes(metadata.read_bytes()[:20])
    elif how == "a list":
        metadata.write_text("[]")
    elif how == "not UTF-8":
        metadata.write_bytes(b"\xff\xfe\x00bad")
    elif how == "missing":
        metadata.unlink()  # the rest of the folder (the messages) stays
    elif how == "newer":
        data = json.loads(metadata.read_text())
        data["schema_version"] = 999
        metadata.write_text(json.dumps(data))


def test_the_list_names_the_contexts_it_cannot_read(tmp_path: Path) -> None:
    damages = ["cut short", "a list", "not UTF-8", "missing", "newer"]
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        ids = [create_context(client, [{"reply": "hi"}], title=f"c{n}") for n in range(8)]
        for context_id in ids:
            sent = client.post(f"contexts/{context_id}/messages", json={"text": "hello"})
            assert sent.status_code == 202, sent.text
        for context_id in ids:  # the replies done: none writes its metadata again
            wait_for(lambda c=context_id: not client.get(f"contexts/{c}").json()["running"])
        contexts = server.data_dir / "contexts"
        damaged = dict(zip(ids[: len(damages)], damages, strict=True))
        for context_id, how in damaged.items():
            _damage(contexts / context_id, how)
        (contexts / "stray").write_text("not a context")

        listing = client.get("contexts")
        assert listing.status_code == 200, listing.text
        body = listing.json()
        assert sorted(meta["id"] for meta in body["contexts"]) == sorted(ids[len(damages) :])
        skipped = {entry["id"]: entry for entry in body["skipped"]}
        assert set(skipped) == {*damaged, "stray"}
        for context_id, entry in skipped.items():
            message = entry["message"]
            assert str(server.root) not in message, message  # no path of the server's
            assert not PYTHON_CALL.search(message), message
            expected = "SchemaVersionError" if damaged.get(context_id) == "newer" else None
            assert entry["reason"] == (expected or "CorruptDataError"), entry
        for context_id, how in damaged.items():
            if how in ("cut short", "a list", "not UTF-8"):
                # The remedy is a request the client can make, for this very context.
                assert f"DELETE {API}/contexts/{context_id}" in skipped[context_id]["message"]

        # The ids are ones a client can act on: each DELETE removes its folder.
        for context_id in damaged:
            assert client.delete(f"contexts/{context_id}").status_code == 204
        after = client.get("contexts").json()
        assert [entry["id"] for entry in after["skipped"]] == ["stray"]
        assert len(after["contexts"]) == len(ids) - len(damages)

        document = client.get("openapi.json").json()
        schema = document["components"]["schemas"]["ContextList"]
        assert "skipped" in schema["properties"]
        log = server.log()
    assert "Traceback" not in log, log
    # The server's log still names each skipped folder, by its path.
    for context_id in damaged:
        assert str(contexts / context_id) in log


def test_a_list_with_nothing_skipped_says_so(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [{"reply": "hi"}])
        body = client.get("contexts").json()
    assert [meta["id"] for meta in body["contexts"]] == [context_id]
    assert body["skipped"] == []


def test_a_folder_whose_name_is_no_context_id_is_named_as_json_can_carry_it(
    tmp_path: Path,
) -> None:
    # A folder of another program (its name not even UTF-8, or with a space): listed,
    # never a 500, and the advice is one a client can follow (no request reaches it).
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [{"reply": "hi"}])
        contexts = server.data_dir / "contexts"
        os.mkdir(os.fsencode(contexts) + b"/bad\xff\xfename")
        (contexts / "notes folder").mkdir()
        listing = client.get("contexts")
        log = server.log()
    assert listing.status_code == 200, listing.text
    body = json.loads(listing.content.decode("utf-8"))  # strict: no lone surrogates
    assert [meta["id"] for meta in body["contexts"]] == [context_id]
    skipped = {entry["id"]: entry for entry in body["skipped"]}
    assert set(skipped) == {"bad\\xff\\xfename", "notes folder"}
    for name, entry in skipped.items():
        message = entry["message"]
        assert entry["reason"] == "InvalidIdError", entry
        assert f"'{name}'" in message, message
        assert "not a valid context id" in message, message
        assert "move it out of the server's data folder" in message, message
        assert "DELETE" not in message, message
        assert "GET" not in message, message
        assert str(server.root) not in message, message
        assert not PYTHON_CALL.search(message), message
    assert "Traceback" not in log, log


def test_an_empty_folder_is_skipped_with_the_request_that_removes_it(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        kept = create_context(client, [{"reply": "hi"}])
        folder = server.data_dir / "contexts" / "ok-id"
        folder.mkdir()
        listed = client.get("contexts").json()
        assert [c["id"] for c in listed["contexts"]] == [kept]
        [skipped] = listed["skipped"]
        assert skipped["id"] == "ok-id"
        # The REST way, as a client can take it: no command line, no server path.
        assert skipped["message"] == (
            f"contexts/ok-id is an empty folder; DELETE {API}/contexts/ok-id removes it"
        )
        deleted = client.delete("contexts/ok-id")
        assert deleted.status_code == 204, deleted.text  # it did remove the folder
        assert not folder.exists()
        assert client.get("contexts").json()["skipped"] == []
        # Nothing left to delete now: that one is a 404, as for any unknown id.
        again = client.delete("contexts/ok-id")
        assert again.status_code == 404, again.text
        assert client.get(f"contexts/{kept}").status_code == 200


def _entries(folder: Path) -> dict[str, bytes | None]:
    # Everything in a folder, file contents included: what "left alone" means.
    return {
        str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes()
        for path in folder.rglob("*")
    }


def test_a_get_of_an_empty_folder_says_so_and_changes_nothing(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        folder = server.data_dir / "contexts" / "ok-id"
        folder.mkdir(parents=True)
        for path in ["contexts/ok-id", "contexts/ok-id/messages", "contexts/ok-id/branches"]:
            answer = client.get(path)
            assert answer.status_code == 404, answer.text
            assert answer.json() == {
                "message": "no context 'ok-id': contexts/ok-id is an empty folder; "
                f"DELETE {API}/contexts/ok-id removes it",
                "reason": "ContextNotFoundError",
                "errors": [],
            }
            # A read: the folder is still there, and still empty (no lock file made).
            assert list(folder.iterdir()) == []
        # The listing still advises the DELETE, which still works.
        [skipped] = client.get("contexts").json()["skipped"]
        assert skipped["message"].endswith(f"DELETE {API}/contexts/ok-id removes it")
        assert client.delete("contexts/ok-id").status_code == 204
        assert not folder.exists()
        log = server.log()
    assert "Traceback" not in log, log


def test_a_folder_with_files_but_no_metadata_is_named_and_can_be_deleted(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        kept = create_context(client, [{"reply": "hi"}])
        contexts = server.data_dir / "contexts"
        folder = contexts / "left-over"
        (folder / "messages").mkdir(parents=True)
        (folder / "messages" / "m1.json").write_text("{}")
        (folder / "notes.txt").write_text("mine")
        before = _entries(folder)

        [skipped] = client.get("contexts").json()["skipped"]
        assert skipped == {
            "id": "left-over",
            "message": "no context 'left-over': its folder contexts/left-over has no "
            "metadata.json, message index or journal, only messages/, notes.txt; "
            f"DELETE {API}/contexts/left-over removes the folder and everything in it",
            "reason": "CorruptDataError",
        }
        got = client.get("contexts/left-over")
        assert got.status_code == 404, got.text
        assert got.json()["message"] == skipped["message"]
        assert _entries(folder) == before  # reads leave it as it was

        deleted = client.delete("contexts/left-over")
        assert deleted.status_code == 204, deleted.text
        assert not folder.exists()
        assert client.get("contexts").json()["skipped"] == []
        assert client.delete("contexts/left-over").status_code == 404  # nothing left
        assert client.get(f"contexts/{kept}").status_code == 200
        log = server.log()
    assert "Traceback" not in log, log


def test_a_context_that_lost_its_metadata_is_advised_a_backup_or_a_delete(
    tmp_path: Path,
) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [{"reply": "hi"}])
        sent = client.post(f"contexts/{context_id}/messages", json={"text": "hello"})
        assert sent.status_code == 202, sent.text
        wait_for(lambda: not client.get(f"contexts/{context_id}").json()["running"])
        (server.data_dir / "contexts" / context_id / "metadata.json").unlink()
        [skipped] = client.get("contexts").json()["skipped"]
        message = skipped["message"]
        assert "has lost its metadata.json" in message, message
        assert "Restore metadata.json from a backup" in message, message
        assert f"DELETE {API}/contexts/{context_id} removes it with all it holds" in message
        assert not PYTHON_CALL.search(message), message
        assert client.delete(f"contexts/{context_id}").status_code == 204


def test_a_folder_without_metadata_that_a_live_process_writes_into_is_not_deleted(
    tmp_path: Path,
) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        folder = server.data_dir / "contexts" / "being-written"
        folder.mkdir(parents=True)
        (folder / "notes.txt").write_text("mine")
        # Another process streaming a reply into it holds that reply's lock.
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(folder / ".streaming-m-live.lock")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            refused = client.delete("contexts/being-written")
            assert refused.status_code == 409, refused.text
            assert "reply 'm-live' is being streamed" in refused.json()["message"]
            assert (folder / "notes.txt").read_text() == "mine"
        finally:
            holder.communicate("", timeout=30)  # it lets go once its stdin closes
        # The writer is gone: its lock no longer stands in the way.
        assert client.delete("contexts/being-written").status_code == 204
        assert not folder.exists()


_HOLD_LOCK = """
import sys
from cm_notebook.store.oslock import OSLock
lock = OSLock(sys.argv[1])
lock.acquire(timeout=10)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_delete_never_reaches_outside_the_contexts_folder(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "notes.txt").write_text("mine")
        # A link among the contexts, to a folder outside the data folder or inside it.
        inside = server.data_dir / "kept"
        inside.mkdir()
        (inside / "notes.txt").write_text("mine too")
        links = {"linked": outside, "alias": inside}
        for name, target in links.items():
            link = server.data_dir / "contexts" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target, target_is_directory=True)
        for bad in ["..", "..%2F..", "%2E%2E", *links]:
            answer = client.delete(f"contexts/{bad}")
            assert answer.status_code in (400, 404), (bad, answer.text)
        assert (outside / "notes.txt").read_text() == "mine"
        assert (inside / "notes.txt").read_text() == "mine too"
        assert all((server.data_dir / "contexts" / name).is_symlink() for name in links)
        assert (server.data_dir / "contexts").is_dir()
