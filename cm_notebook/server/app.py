"""The Jupyter server extension: :class:`CMNotebookApp`.

Installed with the package and enabled by the shipped
``jupyter_server_config.d/cm_notebook.json``, so any Jupyter server (``jupyter lab``,
``jupyter server``) serves the API at ``<base_url>/cm/api``. ``cm-notebook serve``
(or ``python -m cm_notebook.server``) runs a Jupyter server with only this extension.

Configuration (``--CMNotebookApp.<name>=...`` or ``c.CMNotebookApp.<name>`` in a
Jupyter config file): ``data_dir``, ``default_provider``, ``tools``, ``tool_policy``,
``heartbeat``, ``max_sessions``, ``session_idle_timeout``, ``blocking_threads``,
``blocking_threads_per_context``, ``client_endpoints``. They are checked at start: a
wrong one stops ``cm-notebook serve``, and makes any other Jupyter server answer every
API request with a JSON 503 naming it (:mod:`cm_notebook.server.settings_check`).
Authentication is the server's own: token or login, XSRF for cookies.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import url_path_join
from traitlets import Bool, Float, Int, List, Unicode, validate

from ..errors import InvalidInputError
from ..store.paths import default_data_dir
from ..tools import Tool, ToolPolicy
from ..tools._policy import check_policy
from .base import HEARTBEAT_KEY, OFF_LOOP_KEY, OPENAPI_KEY, SESSIONS_KEY, SIGNALS_KEY
from .offloop import DEFAULT_PER_CONTEXT, DEFAULT_THREADS, OffLoop
from .openapi import build_openapi
from .routes import API_PREFIX, ROUTES, url_patterns
from .sessions import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_SESSIONS, SessionRegistry
from .settings_check import (
    PROBLEMS_KEY,
    SettingProblem,
    SettingsError,
    refused_patterns,
    setting_problems,
    unreadable_settings,
)
from .signals import LogSignals

__all__ = ["CMNotebookApp", "load_tools", "main"]


def load_tools(specs: Iterable[str]) -> list[Any]:
    """Import tools named ``"package.module:attribute"``; an attribute may hold a list."""
    found: list[Any] = []
    for spec in specs:
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise InvalidInputError(f"tool {spec!r} must be written 'package.module:attribute'")
        try:
            value = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise InvalidInputError(f"cannot import tool {spec!r}: {exc}") from exc
        found.extend(value if isinstance(value, (list, tuple)) else [value])
    for value in found:
        if not (isinstance(value, Tool) or callable(value)):
            raise InvalidInputError(f"{value!r} is not a tool or a function")
    return found


class CMNotebookApp(ExtensionApp):
    """Serves the cm_notebook REST + SSE API from a Jupyter server."""

    name = "cm_notebook"
    description = "cm_notebook's REST and Server-Sent Events API"
    # `cm-notebook serve` runs this extension alone.
    load_other_extensions = False
    open_browser = False
    # Where the server's root URL leads when it runs this extension alone.
    extension_url = f"{API_PREFIX}/openapi.json"
    # Run alone (`cm-notebook serve`), a server without the API is of no use: a failure
    # to load it (a wrong setting) stops the server instead of being only logged.
    serverapp_config: dict[str, Any] = {"reraise_server_extension_failures": True}  # noqa: RUF012
    # Settings Jupyter could not give the extension (see _link_jupyter_server_extension).
    _unreadable: tuple[SettingProblem, ...] = ()
    # Whether a wrong setting keeps the API from being served (every path answers 503).
    _refused = False

    data_dir = Unicode(
        "", help="Where contexts are stored (default: $CM_NOTEBOOK_DATA_DIR or the platform's)."
    ).tag(config=True)
    default_provider = Unicode(
        "local", help="The provider spec of contexts created without one."
    ).tag(config=True)
    tools = List(
        Unicode(),
        help="Tools offered to the models, as 'package.module:attribute' (a tool, a typed "
        "function or a list of them).",
    ).tag(config=True)
    tool_policy = Unicode(
        "",
        help="What every tool call does, whatever the tool's own policy=: 'ask' waits for "
        "approval, 'auto' runs, 'deny' refuses. Unset (''): each tool's own policy=, "
        "else 'ask'.",
    ).tag(config=True)
    heartbeat = Float(
        15.0, help="Seconds between heartbeat comments on an idle events stream."
    ).tag(config=True)
    max_sessions = Int(
        DEFAULT_MAX_SESSIONS,
        help="How many contexts' sessions stay open at most; beyond, the least recently "
        "used idle one is closed (it reopens on its next request).",
    ).tag(config=True)
    session_idle_timeout = Float(
        DEFAULT_IDLE_TIMEOUT,
        help="Seconds after which an idle context's session is closed (0: never); it "
        "reopens on its next request.",
    ).tag(config=True)
    client_endpoints = Bool(
        False,
        help="Let API clients choose where providers connect and which model files they "
        "read (provider_options base_url and model_path, 'local:<file>'). Off by default: a "
        "client could send the server's API keys to a host of its choosing, or probe the "
        "server's files.",
    ).tag(config=True)

    blocking_threads = Int(
        DEFAULT_THREADS,
        help="Threads for requests' blocking work (writes that may wait for a context's "
        "lock or the disk), kept off the server's event loop.",
    ).tag(config=True)
    blocking_threads_per_context = Int(
        DEFAULT_PER_CONTEXT,
        help="How many of those threads one context's requests may use at once, so a "
        "context whose lock is held by a stuck process cannot hold up the others.",
    ).tag(config=True)

    @classmethod
    def get_extension_package(cls) -> str:
        """The package Jupyter enables: this one, not the top-level ``cm_notebook``."""
        return "cm_notebook.server"

    @validate("tool_policy")
    def _normalise_policy(self, proposal: Any) -> str:
        # "Deny" as "deny". A value still wrong is named by the checks at start; never
        # raised here, where Jupyter would log it and run on with the other settings
        # left unread (see cm_notebook.server.settings_check).
        return str(proposal["value"]).strip().lower()

    def _link_jupyter_server_extension(self, serverapp: ServerApp) -> None:
        # Jupyter reads the settings here; one of the wrong type (a word for a number)
        # raises, which Jupyter would only log. Kept for the checks at start instead.
        try:
            super()._link_jupyter_server_extension(serverapp)
        except Exception as exc:
            self.serverapp = serverapp
            self._unreadable = tuple(
                unreadable_settings(self, (self.config, serverapp.config), exc)
            )

    def initialize_settings(self) -> None:
        """Check the settings, open the session registry and describe the API.

        A wrong setting raises :class:`SettingsError` when the server stops on extension
        failures (``cm-notebook serve``); otherwise it is logged and every API path
        answers 503 naming it (see :mod:`cm_notebook.server.settings_check`).
        """
        problems = [*self._unreadable, *setting_problems(self)]
        if problems:
            error = SettingsError(problems)
            if self.serverapp is not None and self.serverapp.reraise_server_extension_failures:
                raise error
            self.log.error(
                "cm_notebook: the API is not served (every request to %s answers 503) until "
                "this is corrected and the server restarted: %s",
                API_PREFIX,
                error,
            )
            self.settings[PROBLEMS_KEY] = error.problems
            self._refused = True
            return
        data_dir = Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()
        self.sessions = SessionRegistry(
            data_dir.absolute(),
            tools=load_tools(self.tools),
            # As a session's approval="deny": the operator's word beats a tool's own
            # policy= (a tool its author made "auto" must not run on a "deny" server).
            approval=ToolPolicy.coerce(
                check_policy(self.tool_policy) if self.tool_policy else None
            ),
            default_provider=self.default_provider,
            max_sessions=self.max_sessions,
            idle_timeout=self.session_idle_timeout,
            client_endpoints=self.client_endpoints,
        )
        # A share above the pool's size means no limit: one context may use every thread.
        self.off_loop = OffLoop(
            self.blocking_threads, min(self.blocking_threads_per_context, self.blocking_threads)
        )
        base_url = self.serverapp.base_url if self.serverapp is not None else "/"
        api_url = url_path_join(base_url, API_PREFIX)
        document = build_openapi(ROUTES, api_url)
        self.settings.update(
            {
                SESSIONS_KEY: self.sessions,
                SIGNALS_KEY: LogSignals,
                HEARTBEAT_KEY: self.heartbeat,
                OPENAPI_KEY: json.dumps(document),
                OFF_LOOP_KEY: self.off_loop,
            }
        )
        self.log.info("cm_notebook: API at %s, contexts in %s", api_url, data_dir)

    def initialize_handlers(self) -> None:
        """Add the API's routes (or, with a wrong setting, the route answering 503)."""
        self.handlers.extend(refused_patterns() if self._refused else url_patterns())

    async def stop_extension(self) -> None:
        """Close every session (stopping running replies; their text is kept)."""
        sessions: SessionRegistry | None = getattr(self, "sessions", None)
        if sessions is not None:
            await sessions.aclose()
        off_loop: OffLoop | None = getattr(self, "off_loop", None)
        if off_loop is not None:
            off_loop.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Run a Jupyter server with only this extension (``python -m cm_notebook.server``).

    An address that does not resolve, a port that cannot be listened on or a wrong
    setting of the extension ends it with one line saying so (exit code 1), not a
    traceback.
    """
    try:
        CMNotebookApp.launch_instance(argv)  # type: ignore[no-untyped-call]
    except SettingsError as exc:
        sys.exit(f"cm-notebook: error: {exc}")
    except OSError as exc:  # socket.gaierror included
        sys.exit(f"cm-notebook: error: {_cannot_listen(exc)}")


def _cannot_listen(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if not ServerApp.initialized():
        return reason
    server = ServerApp.instance()
    where = f"[{server.ip}]" if ":" in server.ip else server.ip
    return f"cannot listen on {where}:{server.port} (--ip, --port): {reason}"
