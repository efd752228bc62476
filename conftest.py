"""Repository-wide pytest set-up, shared by tests/ and the notebooks run by nbval."""

from __future__ import annotations

import os
import tempfile


def pytest_configure() -> None:
    # Never let a test run (or a notebook's kernel, which inherits the environment)
    # write into the user's real data directory.
    os.environ.setdefault("CM_NOTEBOOK_DATA_DIR", tempfile.mkdtemp(prefix="cm-notebook-test-data-"))
