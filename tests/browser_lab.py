"""JupyterLab in real Chromium, for the browser tests of the views.

:func:`start_lab` runs this virtualenv's JupyterLab on 127.0.0.1 (with a token) over a
notebook of the given cells; :func:`chromium_page` opens Debian's Chromium through
Playwright. :func:`need_chromium` skips a test without Chromium, except under CI
(``CI=true``), where it fails: a CI machine cannot pass without running it.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CM_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get update && apt-get install -y chromium"
TIMEOUT_MS = 60_000


def need_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"Chromium is not installed at {CHROMIUM}; install it with: {INSTALL}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_notebook(path: Path, cells: Sequence[str]) -> None:
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": src,
                "outputs": [],
                "execution_count": None,
            }
            for src in cells
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


@contextmanager
def start_lab(tmp_path: Path, cells: Sequence[str]) -> Iterator[tuple[str, Path]]:
    """JupyterLab over ``demo.ipynb`` of ``cells``: (its url with the token, root dir)."""
    need_chromium()
    root = tmp_path / "root"
    root.mkdir()
    write_notebook(root / "demo.ipynb", cells)
    # No "news?" toast: it would sit over the bottom-right corner of the page.
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    token = secrets.token_hex(16)
    port = _free_port()
    env = {
        **os.environ,
        "CM_NOTEBOOK_DATA_DIR": str(tmp_path / "data"),
        # A config and runtime of its own: no user settings or workspaces leak in.
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (tmp_path / "lab.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(0.2)  # polling a server that is starting: no event to wait on
        yield f"{base}/lab/tree/demo.ipynb?token={token}", root
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextmanager
def chromium_page(tmp_path: Path, name: str) -> Iterator[Any]:
    """A Chromium page; on failure a screenshot ``<name>-failure.png`` (its path in the
    error). ``page.errors`` lists the page's uncaught errors."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        try:
            yield page
        except BaseException as exc:
            shot = artifacts(tmp_path) / f"{name}-failure.png"
            page.screenshot(path=str(shot), full_page=True)
            raise AssertionError(f"{exc}\n(screenshot: {shot})") from exc
        finally:
            browser.close()


def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("CM_TEST_ARTIFACTS", tmp_path / "artifacts"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def wait_js(page: Any, script: str, arg: Any = None) -> Any:
    return page.wait_for_function(script, arg=arg).json_value()


def kernel_idle(page: Any) -> None:
    wait_js(
        page,
        """() => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session
                && w.sessionContext.session.kernel;
            return k && k.status === "idle";
        }""",
    )


def open_and_run_all(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook")
    kernel_idle(page)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def run_new_cell(page: Any, source: str) -> None:
    # A new cell at the end of the notebook, with ``source``, run.
    page.evaluate(
        """async (source) => {
            const app = window.jupyterapp;
            const panel = app.shell.currentWidget;
            panel.content.activeCellIndex = panel.content.widgets.length - 1;
            await app.commands.execute("notebook:insert-cell-below");
            panel.content.activeCell.model.sharedModel.setSource(source);
            await app.commands.execute("notebook:run-cell");
        }""",
        source,
    )
