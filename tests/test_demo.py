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


def test_the_usage_line_of_python_m_cm_notebook_demo_works_as_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # `python -m cm_notebook.demo --help` names a command and its options: typed as the
    # usage line says, with the options it lists, that command runs the demo.
    from cm_notebook.cli import main as cli_main
    from cm_notebook.demo import main as demo_main

    assert demo_main(["--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage.startswith("usage: cm-notebook demo [-h] ")
    assert "[--data-dir DIR]" in usage
    assert "[--provider PROVIDER]" in usage
    data_dir = tmp_path / "demo data"
    assert cli_main(["demo", "--data-dir", str(data_dir), "--provider", "scripted"]) == 0
    assert "branches: main, italy; active: italy" in capsys.readouterr().out
    assert len(list((data_dir / "contexts").iterdir())) == 1
    # And the module takes what the command takes, refusing what it refuses.
    assert demo_main(["--data-dir", str(data_dir), "--provider", "scripted"]) == 0
    assert len(list((data_dir / "contexts").iterdir())) == 2
    assert demo_main(["--provider", "scripted", "--max-tokens", "0"]) == 2
    assert "--max-tokens" in capsys.readouterr().err
