"""A migration's progress is shown where its user looks: in a notebook (a real kernel,
whose stderr is no terminal) as a widget, on a terminal as a bar, through reading and
converting as well as writing; never into a file that stderr is redirected to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def run_in_kernel(code: str, cwd: Path) -> list[dict[str, Any]]:
    """Run ``code`` in a fresh kernel of this virtualenv; every iopub message it caused."""
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(cwd), env=dict(os.environ))
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        msg_id = client.execute(code)
        seen: list[dict[str, Any]] = []
        while True:
            msg = client.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append(msg)
            content = msg["content"]
            if msg["msg_type"] == "status" and content["execution_state"] == "idle":
                return seen
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
        manager.cleanup_resources()


def test_migrating_in_a_notebook_shows_a_progress_widget_through_every_phase(
    tmp_path: Path,
) -> None:
    source = FIXTURES / "branches.json"
    code = (
        "from cm_notebook.migrate import migrate\n"
        "from cm_notebook.store import FileStore\n"
        f"report = await migrate({str(source)!r}, FileStore({str(tmp_path / 'data')!r}), "
        "backup=False)\n"
        "print(report.ok, len(report.contexts))\n"
    )
    seen = run_in_kernel(code, tmp_path)
    errors = [m["content"] for m in seen if m["msg_type"] == "error"]
    assert not errors, errors
    printed = "".join(m["content"]["text"] for m in seen if m["msg_type"] == "stream")
    assert "True 3" in printed, printed
    # tqdm's notebook bar: a progress widget, displayed in the cell.
    opened = [m["content"]["data"]["state"] for m in seen if m["msg_type"] == "comm_open"]
    assert any(state.get("_model_name") == "FloatProgressModel" for state in opened), opened
    assert any(m["msg_type"] == "display_data" for m in seen)
    # Its label follows the phases: records read, contexts converted, then written.
    labels = [
        m["content"]["data"]["state"].get("value")
        for m in seen
        if m["msg_type"] in ("comm_open", "comm_msg")
        and isinstance(m["content"]["data"].get("state", {}).get("value"), str)
    ]
    told = " ".join(label for label in labels if label)
    for phase in ("reading", "converting", "migrating"):
        assert phase in told, labels


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_terminal_sees_reading_and_converting_before_writing(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    source = FIXTURES / "branches.json"
    command = [sys.executable, "-m", "cm_notebook", "--data-dir", str(tmp_path / "data")]
    command += ["migrate", "--no-backup", str(source)]
    leader, follower = pty.openpty()
    # A terminal of 120 columns (a new pseudo-terminal has none, where tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower) as process:
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
    os.close(leader)
    assert process.returncode == 0
    text = shown.decode("utf-8", "replace")
    # One bar through the phases, in their order.
    reading = text.find("reading")
    converting = text.find("converting")
    migrating = text.find("migrating")
    assert -1 < reading < converting < migrating, text
    assert "3/3 [" in text  # three records read, three contexts converted and written

    # With stderr redirected to a file, no bar goes into it.
    log = tmp_path / "log.txt"
    with log.open("wb") as into:
        done = subprocess.run(
            [*command[:4], str(tmp_path / "other"), *command[5:]],
            stdout=subprocess.DEVNULL,
            stderr=into,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0
    assert log.read_bytes() == b""
