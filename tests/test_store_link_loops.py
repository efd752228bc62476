"""A loop of symbolic links on the way to the data directory or to a store file is
named where it is: the link that goes round the loop, never a path below it that does
not exist (``ELOOP`` is also what an open that does not follow links gives for a link
at the end of the path, which the store refuses as such). Real links, real FileStore.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cm_notebook.errors import CorruptDataError
from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links"),
]


async def test_a_data_directory_that_is_a_link_loop_is_named(tmp_path: Path) -> None:
    os.symlink("loopb", tmp_path / "loopa")
    os.symlink("loopa", tmp_path / "loopb")
    store = FileStore(tmp_path / "loopa")
    for attempt in (store.list_contexts, lambda: store.get_metadata("x")):
        with pytest.raises(CorruptDataError) as caught:
            await attempt()
        text = str(caught.value)
        assert text.startswith(f"{tmp_path / 'loopa'} is a symbolic link that leads round a loop")
        assert "(it points to loopb)" in text
        assert f"{tmp_path / 'loopa'}/contexts is a symbolic link" not in text


async def test_a_store_file_that_is_a_link_loop_is_named(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
    folder = data_dir / "contexts" / "c1"
    (folder / "metadata.json").unlink()
    os.symlink("metadata.json", folder / "metadata.json")  # a link to itself
    async with FileStore(data_dir) as store:
        with pytest.raises(CorruptDataError) as caught:
            await store.get_metadata("c1")
    assert "metadata.json is a symbolic link that leads round a loop" in str(caught.value)


async def test_a_link_that_reaches_a_file_is_still_refused_as_a_link(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
    folder = data_dir / "contexts" / "c1"
    (folder / "metadata.json").rename(folder / "elsewhere.json")
    os.symlink("elsewhere.json", folder / "metadata.json")
    async with FileStore(data_dir) as store:
        with pytest.raises(CorruptDataError) as caught:
            await store.get_metadata("c1")
    assert f"{folder / 'metadata.json'} is a symbolic link; the store does not follow" in str(
        caught.value
    )


async def test_a_messages_folder_that_is_a_link_loop_is_named(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        message = await store.append_message(
            "c1", Message(role="user", content="hi"), branch="main"
        )
        await store.compact("c1")  # no journal copy to read it from
    folder = data_dir / "contexts" / "c1"
    shutil.rmtree(folder / "messages")
    os.symlink("messages", folder / "messages")  # a link to itself
    async with FileStore(data_dir) as store:
        with pytest.raises(CorruptDataError) as caught:
            await store.get_message("c1", message.id)
    assert f"{folder / 'messages'} is a symbolic link that leads round a loop" in str(caught.value)
