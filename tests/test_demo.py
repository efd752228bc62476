"""The headless demo (`make demo` runs `cm-notebook demo`) works end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_with_the_scripted_provider_stores_a_branched_context(data_dir: Path) -> None:
    result = _run("demo", "--provider", "scripted", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "you> What is the capital of France?" in result.stdout
    assert "echo: What is the capital of France?" in result.stdout
    assert "branches: main, italy; active: italy" in result.stdout
    listing = _run("ls", data_dir=data_dir)
    assert "Quick start demo" in listing.stdout


@pytest.mark.local_model
def test_demo_on_the_offline_model(data_dir: Path) -> None:
    result = _run("demo", "--max-tokens", "24", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 3
    assert "== italy (smollm2" in result.stdout


def test_demo_reports_an_unknown_provider_on_one_line(data_dir: Path) -> None:
    result = _run("demo", "--provider", "nope", data_dir=data_dir)
    assert result.returncode != 0
    assert result.stderr.startswith("cm-notebook: error:")
    assert "nope" in result.stderr
    assert "Traceback" not in result.stderr
