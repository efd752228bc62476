"""The extension's settings, checked when the server starts.

A Jupyter server loads each extension inside a ``try``: what an extension raises while
loading is logged, and the server runs on without it, so every ``/cm/api`` request
would get the server's HTML "404: Not Found" page and a client would never learn that
a setting was wrong. So the settings are checked here, all of them at once, and a
wrong one is never raised in the middle of loading. Instead:

* when the server stops on extension failures (``cm-notebook serve`` and
  ``python -m cm_notebook.server`` run it so; ``ServerApp.reraise_server_extension_failures``
  does for any Jupyter server), :class:`SettingsError` is raised and the server does
  not start: one message naming each wrong setting, what was wrong and what to do;
* otherwise (``jupyter lab``, ``jupyter server``) the error is logged and every API
  path answers 503 with that message as JSON (:class:`SettingsRefusedHandler`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tornado import web
from traitlets import TraitError, TraitType
from traitlets.config import Config
from traitlets.config.loader import DeferredConfig

from ..errors import InvalidInputError
from ..providers import available_providers, parse_spec
from .base import API_PREFIX, ApiError, CMHandler
from .bodies import ErrorBody, FieldError

if TYPE_CHECKING:
    from .app import CMNotebookApp

__all__ = [
    "SECTION",
    "SettingProblem",
    "SettingsError",
    "SettingsRefusedHandler",
    "refused_patterns",
    "setting_problems",
    "unreadable_settings",
]

#: The Jupyter config section of the extension's settings.
SECTION = "CMNotebookApp"

#: Settings key under which the extension hands the problems to the 503 handler.
PROBLEMS_KEY = "cm_notebook_setting_problems"

_WHERE = (
    "on the command line (--{name}=...) or in a Jupyter config file "
    "(c.{name} = ... in jupyter_server_config.py)"
)


@dataclass(frozen=True)
class SettingProblem:
    """One wrong setting: its name (``heartbeat``), what was wrong and what to do."""

    name: str
    problem: str
    remedy: str
    #: A server path, shown in the server's output but not sent to API clients.
    path: str = ""

    @property
    def setting(self) -> str:
        """The setting as Jupyter names it, e.g. ``CMNotebookApp.heartbeat``."""
        return f"{SECTION}.{self.name}" if self.name else SECTION

    def text(self, *, with_path: bool = True) -> str:
        """``CMNotebookApp.<name> <problem>[: <path>]; <remedy>``."""
        where = f": {self.path}" if with_path and self.path else ""
        return f"{self.setting} {self.problem}{where}; {self.remedy}"


def describe(problems: Iterable[SettingProblem], *, with_paths: bool = True) -> str:
    """One message for every wrong setting: each named, with what was wrong and what to do."""
    texts = [problem.text(with_path=with_paths) for problem in problems]
    if len(texts) == 1:
        return texts[0]
    return f"{len(texts)} settings are wrong: " + " | ".join(texts)


class SettingsError(InvalidInputError):
    """The extension's settings are wrong; :attr:`problems` names each one."""

    def __init__(self, problems: Iterable[SettingProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(describe(self.problems))


def _must(name: str, problem: str, example: object) -> SettingProblem:
    return SettingProblem(
        name,
        problem,
        f"set it to e.g. {example} {_WHERE.format(name=f'{SECTION}.{name}')}, or leave it "
        "out (its default)",
    )


def setting_problems(app: CMNotebookApp) -> list[SettingProblem]:
    """Every wrong setting of ``app`` (empty when all are right); imports its tools."""
    found: list[SettingProblem] = []

    def must(name: str, problem: str) -> SettingProblem:
        example = app.class_traits()[name].default()
        return _must(name, problem, f"{example!r}" if isinstance(example, str) else example)

    if app.tool_policy not in ("", "ask", "auto", "deny"):
        found.append(
            _must(
                "tool_policy", f"must be 'ask', 'auto' or 'deny', not {app.tool_policy!r}", "'deny'"
            )
        )
    if not (app.heartbeat > 0 and math.isfinite(app.heartbeat)):
        found.append(must("heartbeat", f"must be a number of seconds above 0, not {app.heartbeat}"))
    if app.max_sessions < 1:
        found.append(must("max_sessions", f"must be at least 1, not {app.max_sessions}"))
    if not app.session_idle_timeout >= 0:  # NaN too
        found.append(
            must(
                "session_idle_timeout",
                f"must be a number of seconds, 0 or more (0: never), not "
                f"{app.session_idle_timeout}",
            )
        )
    for name in ("blocking_threads", "blocking_threads_per_context"):
        value = getattr(app, name)
        if value < 1:
            found.append(must(name, f"must be at least 1, not {value}"))
    found.extend(_tool_problems(app.tools))
    found.extend(_provider_problems(app.default_provider))
    if app.data_dir:
        found.extend(_data_dir_problems(Path(app.data_dir).expanduser()))
    return found


def _tool_problems(specs: Iterable[str]) -> list[SettingProblem]:
    from .app import load_tools  # the app imports this module

    found = []
    for spec in specs:
        try:
            load_tools([spec])
        except Exception as exc:  # its module may raise anything while imported
            if not isinstance(exc, InvalidInputError):
                exc = InvalidInputError(f"importing tool {spec!r} failed: {exc!r}")
            found.append(
                SettingProblem(
                    "tools",
                    f"has a tool that cannot be used: {exc}",
                    "install (or fix) the module that defines it, in the server's Python "
                    "environment; correct the name ('package.module:attribute'); or take "
                    "it out of the list",
                )
            )
    return found


def _provider_problems(spec: str) -> list[SettingProblem]:
    try:
        name, _ = parse_spec(spec)
    except InvalidInputError as exc:
        return [_must("default_provider", f"is not a provider spec: {exc}", "'local'")]
    known = available_providers()
    if name in known:
        return []
    return [
        _must(
            "default_provider",
            f"names no known provider ({name!r}; known: {', '.join(known) or 'none'})",
            "'local'",
        )
    ]


def _data_dir_problems(path: Path) -> list[SettingProblem]:
    # Only what can never work: the folder (made on the first write) cannot be made
    # under a file. A folder that cannot be read is reported by each request, which
    # names the file and the remedy.
    for where in (path, *path.parents):
        try:
            if where.is_dir():
                return []
            blocked_by = where.exists() or where.is_symlink()
        except OSError:
            return []  # cannot be looked at (no permission): the requests will say so
        if blocked_by:
            blocked = "is" if where == path else "is under"
            return [
                SettingProblem(
                    "data_dir",
                    f"{blocked} something that is not a folder",
                    "name a folder (it is made if missing) "
                    + _WHERE.format(name=f"{SECTION}.data_dir"),
                    path=str(where),
                )
            ]
    return []


def unreadable_settings(
    app: CMNotebookApp, configs: Iterable[Config], error: Exception
) -> list[SettingProblem]:
    """The settings in ``configs`` that ``app`` cannot take (a word where a number is
    expected), each named; ``error`` (what taking them raised) if none is found."""
    found: list[SettingProblem] = []
    traits: Mapping[str, TraitType[Any, Any]] = app.class_own_traits(config=True)
    for config in configs:
        section = config.get(SECTION, {}) if isinstance(config, Mapping) else {}
        for name, given in section.items():
            trait = traits.get(name)
            if trait is None or any(problem.name == name for problem in found):
                continue
            value = given.get_value(trait) if isinstance(given, DeferredConfig) else given
            check = getattr(trait, "validate", None)  # the type's own check
            try:
                if check is not None:
                    check(app, value)
            except TraitError:
                default = trait.default()
                example = f"{default!r}" if isinstance(default, str) else default
                found.append(_must(name, f"must be {trait.info()}, not {value!r}", example))
    if found:
        return found
    return [
        SettingProblem(
            "",
            f"settings cannot be read: {error}",
            "correct it on the command line or in the Jupyter config files",
        )
    ]


class SettingsRefusedHandler(CMHandler):
    """Every API path while a setting is wrong: a JSON 503 naming each wrong setting."""

    async def prepare(self, *, _redirect_to_login: bool = True) -> None:
        """Authenticate, then answer 503 whatever the method and path."""
        del _redirect_to_login  # API paths never redirect to a login page
        await super().prepare()
        if not self.current_user:
            raise web.HTTPError(403)
        problems: tuple[SettingProblem, ...] = self.settings[PROBLEMS_KEY]
        errors: list[FieldError] = [
            FieldError(
                loc=[SECTION, problem.name], msg=problem.text(with_path=False), type="setting"
            )
            for problem in problems
        ]
        message = (
            f"the cm_notebook API is not served until its settings are corrected and the "
            f"server restarted: {describe(problems, with_paths=False)}"
        )
        raise ApiError(
            503,
            ErrorBody(message=message, reason="SettingsError", errors=errors),
            logged=describe(problems),
        )


def refused_patterns() -> list[tuple[str, type[CMHandler]]]:
    """Tornado URL patterns answering every API path with the 503."""
    return [(f"{API_PREFIX}(?:/.*)?", SettingsRefusedHandler)]
