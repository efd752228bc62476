"""Every logger the package logs through redacts secrets (README: logs are redacted).

A filter on a parent logger does not see its children's records, so each module's
own logger needs the redacting filter: this imports every module and checks each
logger it holds, then logs a key through one to see it come out masked.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil

import pytest

import cm_notebook
from cm_notebook.redact import RedactingFilter

_PROGRAMS = {"cm_notebook.providers._local_server"}  # run as programs, not imported


def _module_loggers() -> dict[str, logging.Logger]:
    found: dict[str, logging.Logger] = {}
    for info in pkgutil.walk_packages(cm_notebook.__path__, "cm_notebook."):
        if info.name in _PROGRAMS or info.name.endswith(".__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, logging.Logger):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_module_logger_redacts() -> None:
    loggers = _module_loggers()
    assert len(loggers) > 10  # the walk found the package's modules
    plain = [
        name
        for name, logger in loggers.items()
        if not any(isinstance(f, RedactingFilter) for f in logger.filters)
    ]
    assert plain == [], "loggers without redaction: take them from redact.get_logger"


def test_a_key_logged_by_a_module_comes_out_masked(caplog: pytest.LogCaptureFixture) -> None:
    from cm_notebook import _dead_rounds

    key = "sk-proj-" + "a1B2c3D4" * 6
    with caplog.at_level(logging.WARNING, logger=_dead_rounds.__name__):
        _dead_rounds._log.warning("could not settle: Authorization: Bearer %s", key)
    assert key not in caplog.text
    assert "could not settle" in caplog.text
