"""The server extension is enabled on install, and ``cm-notebook serve`` runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_client import create_context, wait_for

ROOT = Path(__file__).parent.parent


def test_the_shipped_jupyter_config_enables_the_extension() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data_files = pyproject["tool"]["setuptools"]["data-files"]
    (shipped,) = data_files["etc/jupyter/jupyter_server_config.d"]
    config = json.loads((ROOT / shipped).read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"cm_notebook.server": True}}}


def test_jupyter_lists_the_extension_as_enabled() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    output = listed.stdout + listed.stderr
    assert "cm_notebook.server" in output
    line = next(line for line in output.splitlines() if line.strip().startswith("cm_notebook"))
    assert "enabled" in line


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals a POSIX process group")
def test_cm_notebook_serve_runs_the_api_until_interrupted(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), JUPYTER_CONFIG_DIR=str(tmp_path))
    command = [sys.executable, "-m", "cm_notebook", "serve", "--port", "0"]
    command += ["--data-dir", str(tmp_path / "data")]
    if os.getuid() == 0:
        command.append("--allow-root")  # Jupyter refuses root without it
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as in a terminal
    )
    try:
        info = _runtime_info(runtime, process)
        url = f"http://127.0.0.1:{info['port']}{info['base_url']}cm/api/contexts"
        headers = {"Authorization": f"token {info['token']}"}
        created = httpx.post(url, json={"provider": "scripted", "title": "t"}, headers=headers)
        assert created.status_code == 201, created.text
        assert (tmp_path / "data" / "contexts" / created.json()["context"]["id"]).is_dir()
        assert httpx.get(url).status_code in (401, 403)
    finally:
        # Ctrl-C in a terminal reaches the whole foreground group: the command and server.
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals a POSIX process group")
def test_serve_passes_jupyter_settings_on_and_a_deny_policy_beats_a_tools_own(
    tmp_path: Path,
) -> None:
    # `cm-notebook serve` takes Jupyter settings as `jupyter server` does; and a server
    # told tool_policy=deny refuses every tool call, also a tool whose author chose "auto".
    runtime = tmp_path / "runtime"
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    command = [sys.executable, "-m", "cm_notebook", "serve", "--port", "0"]
    command += ["--data-dir", str(tmp_path / "data")]
    command += ["--CMNotebookApp.tools=server_tools:leave_mark"]
    command += ["--CMNotebookApp.tool_policy=deny"]
    if os.getuid() == 0:
        command.append("--allow-root")
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    mark = tmp_path / "mark"
    try:
        info = _runtime_info(runtime, process)
        api = f"http://127.0.0.1:{info['port']}{info['base_url']}cm/api"
        headers = {"Authorization": f"token {info['token']}"}
        with httpx.Client(base_url=api, headers=headers, timeout=30) as client:
            script = [
                {"tool_call": "leave_mark", "arguments": {"path": str(mark)}, "id": "m1"},
                {"reply": "Could not."},
            ]
            context_id = create_context(client, script)
            sent = client.post(f"contexts/{context_id}/messages", json={"text": "Mark it."})
            assert sent.status_code == 202, sent.text

            def finished() -> bool:
                messages = client.get(f"contexts/{context_id}/messages").json()["messages"]
                return bool(messages) and messages[-1]["content"] == "Could not."

            wait_for(finished)
            messages = client.get(f"contexts/{context_id}/messages").json()["messages"]
        [call] = [call for message in messages for call in message["tool_calls"]]
        assert call["status"] == "denied"
        assert not mark.exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


def _runtime_info(runtime: Path, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1].decode(errors="replace")
        for path in runtime.glob("jpserver-*.json"):
            try:
                info: dict[str, object] = json.loads(path.read_text())
            except ValueError:
                continue  # being written
            if info.get("port"):
                return info
        time.sleep(0.05)  # polling a condition with a deadline
    raise AssertionError("cm-notebook serve did not start a server")


@pytest.mark.slow
def test_a_plain_jupyter_server_serves_the_api(tmp_path: Path) -> None:
    # `jupyter server` loads every enabled extension, this one through its config file.
    runtime = tmp_path / "runtime"
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        CM_NOTEBOOK_DATA_DIR=str(tmp_path / "data"),
    )
    command = [sys.executable, "-m", "jupyter_server", "--port=0", "--ip=127.0.0.1"]
    command += ["--IdentityProvider.token=plain-token", "--ServerApp.open_browser=False"]
    if os.getuid() == 0:
        command.append("--allow-root")
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        info = _runtime_info(runtime, process)
        url = f"http://127.0.0.1:{info['port']}{info['base_url']}cm/api/contexts"
        answer = httpx.get(url, headers={"Authorization": "token plain-token"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"contexts": [], "skipped": []}
    finally:
        process.terminate()
        process.communicate(timeout=60)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["ls", "--CMNotebookApp.tool_policy=deny"], "unrecognized arguments: --CMNotebook"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["serve", "--CMNotebookApp.tool_policy", "deny"],
            "Jupyter settings take the form --Class.name=value",
        ),
    ],
)
def test_words_serve_cannot_pass_on_are_usage_errors(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cm_notebook.cli import main

    assert main(argv) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    ("port", "says"),
    [
        ("99999", "must be a port from 0 to 65535, got 99999"),
        ("-5", "must be a port from 0 to 65535, got -5"),
        ("65536", "must be a port from 0 to 65535, got 65536"),
        ("eighty", "'eighty' is not a whole number"),
    ],
)
def test_a_port_out_of_range_is_a_usage_error(
    port: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cm_notebook.cli import main

    # Before any server starts: 99999 would be listened on as 34463 (99999 - 65536).
    assert main(["serve", "--port", port]) == 2
    assert f"argument --port: {says}" in capsys.readouterr().err
    # The same check for the port given as a Jupyter setting.
    assert main(["serve", f"--ServerApp.port={port}"]) == 2
    assert f"argument --ServerApp.port: {says}" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="signals a POSIX process group")
def test_serve_listens_on_the_port_given_as_a_jupyter_setting(tmp_path: Path) -> None:
    # --ServerApp.port replaces --port (whose default Jupyter would otherwise refuse
    # as the same setting given twice).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runtime = tmp_path / "runtime"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), JUPYTER_CONFIG_DIR=str(tmp_path))
    command = [sys.executable, "-m", "cm_notebook", "serve", f"--ServerApp.port={port}"]
    command += ["--data-dir", str(tmp_path / "data"), "--ServerApp.port_retries=0"]
    if os.getuid() == 0:
        command.append("--allow-root")
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        info = _runtime_info(runtime, process)
        assert info["port"] == port
        url = f"http://127.0.0.1:{port}{info['base_url']}cm/api/contexts"
        listed = httpx.get(url, headers={"Authorization": f"token {info['token']}"}, timeout=30)
        assert listed.status_code == 200, listed.text
    finally:
        if process.poll() is None:  # (one that exited has said why above)
            os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")


@pytest.mark.slow
def test_an_address_that_cannot_be_listened_on_is_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "config")
    command = [sys.executable, "-m", "cm_notebook", "--data-dir", str(tmp_path / "data")]
    command += ["serve", "--ip", "999.1.1.1", "--port", "0", "--allow-root"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cm-notebook: error: cannot listen on 999.1.1.1:0 (--ip, --port): ")
