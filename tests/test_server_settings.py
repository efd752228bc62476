"""A wrong setting of the extension is named at start, never a server without the API.

``cm-notebook serve`` stops with one line naming the setting, what was wrong and what
to do (exit code 1). A plain ``jupyter server`` (the extension enabled through its
config) keeps serving the rest, and every ``/cm/api`` path answers a JSON 503 naming
the setting: API clients see why, not Jupyter's HTML 404 page. Real processes only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parent.parent
TOKEN = "settings-token"


def _serve(tmp_path: Path, *words: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "config")
    command = [sys.executable, "-m", "cm_notebook", "--data-dir", str(tmp_path / "data")]
    command += ["serve", "--port", "0", "--ip", "127.0.0.1", "--allow-root", *words]
    # The timeout only keeps a server that wrongly goes on serving from hanging the run.
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "says"),
    [
        (
            "tools=nosuchmodule:tool",
            "CMNotebookApp.tools has a tool that cannot be used: cannot import tool "
            "'nosuchmodule:tool': No module named 'nosuchmodule'; install (or fix) the module",
        ),
        ("heartbeat=0", "CMNotebookApp.heartbeat must be a number of seconds above 0, not 0.0;"),
        ("heartbeat=soon", "CMNotebookApp.heartbeat must be a float, not 'soon';"),
        ("max_sessions=0", "CMNotebookApp.max_sessions must be at least 1, not 0;"),
        (
            "tool_policy=never",
            "CMNotebookApp.tool_policy must be 'ask', 'auto' or 'deny', not 'never';",
        ),
        (
            "session_idle_timeout=-1",
            "CMNotebookApp.session_idle_timeout must be a number of seconds, 0 or more",
        ),
        ("blocking_threads=0", "CMNotebookApp.blocking_threads must be at least 1, not 0;"),
        (
            "default_provider=nosuch",
            "CMNotebookApp.default_provider names no known provider ('nosuch'; known: ",
        ),
    ],
    ids=[
        "tools",
        "heartbeat",
        "heartbeat-type",
        "max_sessions",
        "tool_policy",
        "session_idle_timeout",
        "blocking_threads",
        "default_provider",
    ],
)
def test_serve_with_a_wrong_setting_stops_with_one_line_naming_it(
    tmp_path: Path, setting: str, says: str
) -> None:
    done = _serve(tmp_path, f"--CMNotebookApp.{setting}")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cm-notebook: error: {says}"), last
    name = setting.partition("=")[0]
    if name != "tools":  # what to do: a value that works, and where to write it
        assert f"(--CMNotebookApp.{name}=...)" in last, last
        assert "or leave it out" in last, last


@pytest.mark.slow
def test_serve_with_a_data_dir_that_is_a_file_stops_naming_it(tmp_path: Path) -> None:
    # As a Jupyter setting (the command checks its own --data-dir before any server).
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    done = _serve(tmp_path, f"--CMNotebookApp.data_dir={a_file / 'contexts'}")
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "cm-notebook: error: CMNotebookApp.data_dir is under something that is not a folder: "
        f"{a_file}; name a folder (it is made if missing)"
    ), last


@pytest.mark.slow
def test_serve_names_every_wrong_setting_at_once(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--CMNotebookApp.heartbeat=-1", "--CMNotebookApp.max_sessions=0")
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("cm-notebook: error: 2 settings are wrong: "), last
    assert "CMNotebookApp.heartbeat must be" in last
    assert "CMNotebookApp.max_sessions must be" in last


def _runtime_info(runtime: Path, process: subprocess.Popen[bytes]) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server ended"
        for path in runtime.glob("jpserver-*.json"):
            try:
                info: dict[str, object] = json.loads(path.read_text())
            except ValueError:
                continue  # being written
            if info.get("port"):
                return info
        time.sleep(0.05)  # polling a condition with a deadline
    raise AssertionError("the server did not start")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "words", "named"),
    [
        # In a config file, as an operator enables the extension for `jupyter lab`.
        (
            {"tools": ["nosuchmodule:tool"], "data_dir": "FILE"},
            ["--CMNotebookApp.heartbeat=0"],
            ["data_dir", "heartbeat", "tools"],
        ),
        # A value of the wrong type: Jupyter stops reading the settings at it.
        ({}, ["--CMNotebookApp.max_sessions=many"], ["max_sessions"]),
    ],
    ids=["values", "type"],
)
def test_a_plain_jupyter_server_answers_503_naming_the_wrong_settings(
    tmp_path: Path, config: dict[str, object], words: list[str], named: list[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    settings = {key: str(a_file) if value == "FILE" else value for key, value in config.items()}
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"CMNotebookApp": settings})
    )
    runtime = tmp_path / "runtime"
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        CM_NOTEBOOK_DATA_DIR=str(tmp_path / "data"),
    )
    command = [sys.executable, "-m", "jupyter_server", "--port=0", "--ip=127.0.0.1"]
    command += [f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False"]
    command += ["--allow-root", *words]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        info = _runtime_info(runtime, process)
        api = f"http://127.0.0.1:{info['port']}{info['base_url']}cm/api"
        headers = {"Authorization": f"token {TOKEN}"}
        for method, path in [("GET", "/contexts"), ("POST", "/contexts"), ("GET", "/openapi.json")]:
            answer = httpx.request(method, api + path, headers=headers, json={}, timeout=30)
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"].startswith("application/json")
            body = answer.json()
            assert body["reason"] == "SettingsError"
            assert body["message"].startswith(
                "the cm_notebook API is not served until its settings are corrected and the "
                "server restarted: "
            )
            assert sorted(error["loc"][1] for error in body["errors"]) == named
            for error in body["errors"]:
                assert error["msg"].startswith(f"CMNotebookApp.{error['loc'][1]} ")
            assert str(a_file) not in answer.text  # no server path for clients
        # Not to anyone: the answer needs the token, as the API does.
        assert httpx.get(api + "/contexts", timeout=30).status_code == 403
    finally:
        process.terminate()
        process.communicate(timeout=60)
    # The server's log says it too, path and all.
    text = log.read_text(errors="replace")
    [line] = [line for line in text.splitlines() if "the API is not served" in line]
    assert "[E " in line, line
    assert all(f"CMNotebookApp.{name} " in line for name in named), line
    if "data_dir" in named:
        assert str(a_file) in line
