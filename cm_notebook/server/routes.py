"""The URL table of the REST API (paths under ``<base_url>/cm/api``)."""

from __future__ import annotations

import re

from tornado import web

from .base import API_PREFIX, ApiError, CMHandler
from .bodies import ErrorBody
from .branches import BranchesHandler, BranchHandler
from .compare import CompareHandler
from .contexts import ContextHandler, ContextsHandler
from .events import EventsHandler
from .messages import (
    EditHandler,
    MessageHandler,
    MessagesHandler,
    RegenerateHandler,
    RetryHandler,
    StopHandler,
)
from .openapi import OpenAPIHandler, Route
from .tools import (
    ApproveHandler,
    DecisionsHandler,
    DenyHandler,
    ToolCallHandler,
    ToolCallsHandler,
)

__all__ = ["API_PREFIX", "ROUTES", "url_patterns"]

_CONTEXT = "/contexts/{context_id}"

#: Every documented route: an OpenAPI path template and its handler.
ROUTES: list[Route] = [
    ("/contexts", ContextsHandler),
    (_CONTEXT, ContextHandler),
    (f"{_CONTEXT}/messages", MessagesHandler),
    (f"{_CONTEXT}/messages/{{message_id}}", MessageHandler),
    (f"{_CONTEXT}/messages/{{message_id}}/edit", EditHandler),
    (f"{_CONTEXT}/regenerate", RegenerateHandler),
    (f"{_CONTEXT}/retry", RetryHandler),
    (f"{_CONTEXT}/stop", StopHandler),
    (f"{_CONTEXT}/branches", BranchesHandler),
    (f"{_CONTEXT}/branches/{{branch}}", BranchHandler),
    (f"{_CONTEXT}/tools", ToolCallsHandler),
    (f"{_CONTEXT}/tools/approve", ApproveHandler),
    (f"{_CONTEXT}/tools/deny", DenyHandler),
    (f"{_CONTEXT}/tools/decisions", DecisionsHandler),
    (f"{_CONTEXT}/tools/{{tool_call_id}}", ToolCallHandler),
    (f"{_CONTEXT}/compare", CompareHandler),
    (f"{_CONTEXT}/events", EventsHandler),
]


class NotFoundHandler(CMHandler):
    """Any other path under the API: a JSON 404 (after authentication, like the rest)."""

    async def prepare(self, *, _redirect_to_login: bool = True) -> None:
        """Authenticate, then answer 404 whatever the method."""
        del _redirect_to_login  # API paths never redirect to a login page
        await super().prepare()
        if not self.current_user:
            raise web.HTTPError(403)
        raise ApiError(
            404,
            ErrorBody(
                message=f"no such API path {self.request.path!r}; see {self.api_url}/openapi.json",
                reason="NotFound",
            ),
        )


def _regex(template: str) -> str:
    # One path segment per parameter; its percent-escapes are decoded by Tornado, and the
    # handlers validate the decoded value (so '%2F' or '..' never reach the store).
    return re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", template)


def url_patterns() -> list[tuple[str, type[CMHandler]]]:
    """Tornado URL patterns (relative to the server's base URL), most specific first."""
    patterns = [(API_PREFIX + _regex(template), handler) for template, handler in ROUTES]
    patterns.append((f"{API_PREFIX}/openapi.json", OpenAPIHandler))
    patterns.append((f"{API_PREFIX}(?:/.*)?", NotFoundHandler))
    return patterns
