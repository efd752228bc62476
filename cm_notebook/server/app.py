"""The Jupyter server extension: :class:`CMNotebookApp`.

Installed with the package and enabled by the shipped
``jupyter_server_config.d/cm_notebook.json``, so any Jupyter server (``jupyter lab``,
``jupyter server``) serves the API at ``<base_url>/cm/api``. ``cm-notebook serve``
(or ``python -m cm_notebook.server``) runs a Jupyter server with only this extension.

Configuration (``--CMNotebookApp.<name>=...`` or ``c.CMNotebookApp.<name>`` in a
Jupyter config file): ``data_dir``, ``default_provider``, ``tools``, ``tool_policy``,
``heartbeat``, ``max_sessions``, ``session_idle_timeout``, ``blocking_threads``,
``blocking_threads_per_context``, ``client_endpoints``. Authentication is the
server's own: token or login, XSRF for cookies.
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
    def _check_policy(self, proposal: Any) -> str:
        # "Deny" as "deny": a setting spelled otherwise would stop the extension from
        # loading at all, leaving a server without the API.
        value = str(proposal["value"]).strip().lower()
        return value if value == "" else check_policy(value, "CMNotebookApp.tool_policy")

    @validate("heartbeat")
    def _check_heartbeat(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value > 0:
            raise InvalidInputError(f"CMNotebookApp.heartbeat must be > 0 seconds, got {value}")
        return value

    @validate("max_sessions")
    def _check_max_sessions(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 1:
            raise InvalidInputError(f"CMNotebookApp.max_sessions must be at least 1, got {value}")
        return value

    @validate("session_idle_timeout")
    def _check_idle_timeout(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value >= 0:
            raise InvalidInputError(
                f"CMNotebookApp.session_idle_timeout must be >= 0 seconds (0: never), got {value}"
            )
        return value

    @validate("blocking_threads")
    def _check_threads(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 1:
            raise InvalidInputError(
                f"CMNotebookApp.blocking_threads must be at least 1, got {value}"
            )
        return value

    @validate("blocking_threads_per_context")
    def _check_per_context(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 1:
            raise InvalidInputError(
                f"CMNotebookApp.blocking_threads_per_context must be at least 1, got {value}"
            )
        return value

    def initialize_settings(self) -> None:
        """Open the session registry and describe the API."""
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
        """Add the API's routes."""
        self.handlers.extend(url_patterns())

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

    An address that does not resolve or a port that cannot be listened on ends it with
    one line saying so (exit code 1), not a traceback.
    """
    try:
        CMNotebookApp.launch_instance(argv)  # type: ignore[no-untyped-call]
    except OSError as exc:  # socket.gaierror included
        sys.exit(f"cm-notebook: error: {_cannot_listen(exc)}")


def _cannot_listen(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if not ServerApp.initialized():
        return reason
    server = ServerApp.instance()
    where = f"[{server.ip}]" if ":" in server.ip else server.ip
    return f"cannot listen on {where}:{server.port} (--ip, --port): {reason}"
