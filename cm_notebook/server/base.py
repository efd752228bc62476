"""What every REST handler shares: authentication, bodies, errors, and its OpenAPI entry.

A handler method is declared with :func:`operation`, which (1) puts Jupyter's
authentication and authorization in front of it (no token, no access; XSRF rules as
for every Jupyter API), (2) translates the package's errors into HTTP statuses with a
JSON :class:`~cm_notebook.server.bodies.ErrorBody` (never a traceback), and (3) records
what the method takes and returns, from which :mod:`cm_notebook.server.openapi`
writes the OpenAPI document. So the documentation cannot drift from the code.

Errors and their statuses: a malformed body or query, a hostile id or a bad value is
400 (with the field errors); an unknown context, message, branch or tool call is 404;
a conflict with the current state (a reply already streaming, nothing to approve, a
branch that exists) is 409; a context whose stored files are damaged (or written by a
newer version) is 500, with a message naming the file and the remedy; a store lock
held too long, or a data folder the server may not write (read-only, no permission),
is 503. A 503 is a condition of the server, not a fault in it: it is logged as one
warning line, not as an error with the request's headers.
"""

from __future__ import annotations

import errno
import functools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.client import responses
from typing import Any, TypeVar, cast, get_origin
from urllib.parse import quote

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.prometheus.log_functions import prometheus_log_method
from jupyter_server.utils import url_path_join
from pydantic import BaseModel, ValidationError
from tornado import web

from .. import _json
from .._unicode import scrub
from ..errors import (
    BranchExistsError,
    CMError,
    ContextExistsError,
    ContextNotFoundError,
    CorruptDataError,
    InvalidInputError,
    ProviderError,
    SchemaVersionError,
    StateError,
    StorageFullError,
    StoreIOError,
    StoreLockTimeoutError,
    TransientProviderError,
)
from ..session import ContextSession
from .bodies import ErrorBody, FieldError
from .offloop import OffLoop, ServerStoppingError
from .sessions import Lease, SessionRegistry
from .signals import SignalSourceFactory
from .wording import for_http

__all__ = ["API_PREFIX", "ApiError", "CMHandler", "Operation", "operation", "status_of"]

#: Where the API lives, under the server's base URL.
API_PREFIX = "/cm/api"

B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")
Method = Callable[..., Awaitable[None]]

#: Settings keys under which the extension hands its objects to the handlers.
SESSIONS_KEY = "cm_notebook_sessions"
SIGNALS_KEY = "cm_notebook_signal_source"
HEARTBEAT_KEY = "cm_notebook_heartbeat"
OPENAPI_KEY = "cm_notebook_openapi"
OFF_LOOP_KEY = "cm_notebook_off_loop"


@dataclass(frozen=True)
class Operation:
    """What one handler method does, takes and answers (for the OpenAPI document)."""

    summary: str
    status: int = 200
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = (400, 404)
    media_type: str = "application/json"
    description: str = ""


#: A run of text without spaces longer than any id, name or path the API takes: a value
#: a client sent (a megabyte as a tool call id), echoed by an error message.
_ECHO = re.compile(r"\S{200,}")


def clip_echoes(message: str) -> str:
    """``message`` with each very long run of text cut to its start and its length: an
    error quoting a client's value must not send (or log) the whole of it back."""
    return _ECHO.sub(lambda m: f"{m[0][:60]}... ({len(m[0]):,} characters)", message)


class ApiError(web.HTTPError):
    """An error answer with a JSON body; raised by handlers, written by ``write_error``."""

    def __init__(self, status: int, body: ErrorBody, logged: str | None = None) -> None:
        # Tornado logs ``log_message`` (``logged``, default the body's message) with
        # %-formatting: escape the client's text.
        body = body.model_copy(update={"message": clip_echoes(body.message)})
        text = clip_echoes(body.message if logged is None else logged)
        super().__init__(status, text.replace("%", "%%"), reason=responses.get(status))
        self.body = body

    @classmethod
    def of(cls, exc: CMError, message: str | None = None) -> ApiError:
        """The answer for one of the package's errors; ``message``: its text reworded
        for the client (the server's log keeps the original, paths and all)."""
        text = str(exc) if message is None else message
        return cls(status_of(exc), ErrorBody(message=text, reason=type(exc).__name__), str(exc))

    @classmethod
    def invalid(cls, exc: ValidationError) -> ApiError:
        """400 with the field errors of a body or query that failed validation."""
        errors = [
            FieldError(loc=list(error["loc"]), msg=error["msg"], type=error["type"])
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        where = "; ".join(
            f"{'.'.join(str(part) for part in e.loc) or 'body'}: {e.msg}" for e in errors[:5]
        )
        return cls(
            400,
            ErrorBody(message=f"invalid request: {where}", reason="ValidationError", errors=errors),
        )


#: What a part of a route's path names, for a client told it could not be read.
_PATH_PARTS = {
    "context_id": "context id",
    "message_id": "message id",
    "branch": "branch name",
    "tool_call_id": "tool call id",
}


def not_utf8(value: bytes, name: str | None, *, query: bool = False) -> ApiError:
    """400 for a path part or query value (``name``) whose bytes are not UTF-8 text."""
    if query:
        what = f"query parameter {name!r}"
    else:
        what = f"{_PATH_PARTS.get(name or '', 'part of the path')} in the URL"
    sent = quote(value[:40], safe="")
    message = (
        f"the {what} is not valid UTF-8 text ({sent}); percent-encode the UTF-8 bytes of "
        "the text (as encodeURIComponent does)"
    )
    if not query:
        return ApiError(400, ErrorBody(message=message, reason="InvalidIdError"))
    error = FieldError(loc=[name or "query"], msg=message, type="unicode_error")
    return ApiError(400, ErrorBody(message=message, reason="ValidationError", errors=[error]))


#: A JSON escape of a UTF-16 surrogate (``\\ud83d``), which may stand alone in a string.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_body(model: type[B], raw: bytes) -> B:
    """``raw``, a request's JSON body, validated as ``model``.

    A string holding half of a surrogate pair (``"\\ud83d"``, what JavaScript's
    ``JSON.stringify`` writes for half an emoji) is valid JSON, which pydantic's parser
    refuses whole: it is read here, and the half replaced with U+FFFD, as the Python
    API and the store do (see :mod:`cm_notebook._unicode`). The text is read within the
    package's JSON limits (size, nesting depth, digits of a number); text that is not
    JSON is refused in pydantic's words, which give the line and column of the fault.

    Raises:
        ValidationError: the body is not JSON, is past a limit, or does not fit ``model``.
    """
    try:
        text = raw.decode("utf-8")
        value = _json.loads(text)
    except _json.JSONLimitError as exc:
        raise ValidationError.from_exception_data(
            model.__name__,
            [{"type": "json_invalid", "loc": (), "input": raw, "ctx": {"error": str(exc)}}],
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        # Not UTF-8 JSON: pydantic's parser names the fault, in the words it always had.
        return model.model_validate_json(raw)
    if _SURROGATE_ESCAPE.search(text) is None:
        # Nothing to replace: validate the text as sent.
        return model.model_validate_json(raw)
    # Validated as JSON, not as Python values: a client is told of an "object" and an
    # "array", not of a "dictionary" and a "list".
    return model.model_validate_json(json.dumps(scrub(value), ensure_ascii=False))


#: Query parameters whose values are secrets (matched by part of the name, as Jupyter's
#: own access log does).
_SECRET_PARAMS = ("token", "auth", "key", "code", "state", "xsrf")


def scrub_uri(uri: str) -> str:
    """``uri`` with the value of each secret query parameter replaced by ``[secret]``."""
    path, mark, query = uri.partition("?")
    if not mark:
        return uri
    parts = []
    for part in query.split("&"):
        name, equals, _value = part.partition("=")
        secret = equals and any(word in name.lower() for word in _SECRET_PARAMS)
        parts.append(f"{name}=[secret]" if secret else part)
    return f"{path}?{'&'.join(parts)}"


#: The errors of a data folder the server may not write: a read-only file system, no
#: permission.
_CANNOT_WRITE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def status_of(exc: CMError) -> int:
    """The HTTP status for one of the package's errors."""
    if isinstance(exc, KeyError):  # every "not found" error is also a KeyError
        return 404
    if isinstance(exc, TransientProviderError):
        return 503
    if isinstance(exc, (InvalidInputError, ProviderError)):
        # A bad value, or a provider this server cannot use: the request must change.
        return 400
    if isinstance(exc, (StateError, BranchExistsError, ContextExistsError)):
        return 409
    if isinstance(exc, StoreLockTimeoutError):
        return 503
    if (
        isinstance(exc, StoreIOError)
        and not isinstance(exc, StorageFullError)
        and exc.errno in _CANNOT_WRITE
    ):
        # The data folder is read-only (a colleague's, mounted so) or not the server's
        # to write (or read): how the server was set up, not a bug in it and not the
        # request's fault. Its administrator can serve a writable copy.
        return 503
    if isinstance(exc, (CorruptDataError, SchemaVersionError)):
        # Not the request's fault, and no retry helps: the server cannot read what it
        # keeps. The message names the file and the remedy (a backup, or DELETE).
        return 500
    return 500


def operation(
    summary: str,
    *,
    status: int = 200,
    response: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (400, 404),
    media_type: str = "application/json",
    description: str = "",
) -> Callable[[Method], Method]:
    """Declare a handler method: authenticated, authorized, errors translated, documented."""
    described = Operation(summary, status, response, body, query, errors, media_type, description)

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        async def translated(self: CMHandler, *args: Any, **kwargs: Any) -> None:
            context_id = kwargs.get("context_id")
            missing: str | None = None
            try:
                await method(self, *args, **kwargs)
            except ValidationError as exc:
                raise ApiError.invalid(exc) from exc
            except ServerStoppingError as exc:
                # No session opened or held once the server is stopping (see
                # SessionRegistry.acquire): the client retries on the restarted server.
                raise ApiError(503, ErrorBody(message=str(exc), reason="ServerStopping")) from exc
            except CMError as exc:
                if isinstance(exc, ContextNotFoundError) and isinstance(context_id, str):
                    # Its folder may have been removed on disk: once this request lets
                    # go, the session closes and its streams end.
                    missing = context_id
                raise ApiError.of(exc, self.reword(exc, context_id)) from exc
            finally:
                # Whatever happened, the sessions this request used may be closed again.
                self.release_sessions()
                if missing is not None:
                    self.sessions.vanished(missing)

        guarded = cast(Method, web.authenticated(authorized(translated)))
        guarded.__cm_operation__ = described  # type: ignore[attr-defined]
        return guarded

    return decorate


class CMHandler(APIHandler):
    """Base of the REST handlers: JSON in, JSON out, errors as :class:`ErrorBody`."""

    auth_resource = "cm_notebook"
    _held: list[Lease] | None = None
    #: Whether this request was answered with a condition of the server (a 503 of
    #: ours): the warning that names it is all the log needs.
    _condition = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # HEAD answers as GET does, without the body: the web framework writes the
        # headers (Content-Length included) and drops the body of a HEAD request.
        # Defined where GET is (a handler with its own head(), the events stream's,
        # keeps it), so that a handler without GET still answers HEAD with 405.
        if "get" in cls.__dict__ and "head" not in cls.__dict__:
            setattr(cls, "head", cls.__dict__["get"])  # noqa: B010 - mypy refuses a method assignment

    def _log(self) -> None:
        # Tornado's hook for the access log (kept for handlers that override it). Jupyter
        # logs every answer of 500 and up as an error, with the request's headers: right
        # for a bug, noise for a 503 of ours (a data folder the server may not write,
        # another process's lock, a stopping server), one per request. Its warning
        # (log_exception: the status, the request and the full message) is logged
        # already; the request still counts in the server's metrics, unless they are
        # turned off (ServerApp.record_http_request_metrics, passed to its log function).
        if not self._condition:
            super()._log()
            return
        keywords = getattr(self.settings.get("log_function"), "keywords", None) or {}
        if keywords.get("record_prometheus_metrics", True):
            prometheus_log_method(self)  # type: ignore[no-untyped-call]

    def _request_summary(self) -> str:
        # Tornado logs this with every error answered. An EventSource cannot send
        # headers, so its token comes in the query: no secret reaches the log.
        request = self.request
        return f"{request.method} {scrub_uri(request.uri or '')} ({request.remote_ip})"

    @property
    def api_url(self) -> str:
        """The API's URL path, with the server's base URL (e.g. ``/jp/cm/api``)."""
        return url_path_join(self.base_url, API_PREFIX)

    def reword(self, exc: CMError | str, context_id: object = None) -> str:
        """``exc``'s message (or a message) for a client: HTTP remedies, no server paths."""
        return for_http(
            str(exc),
            data_dir=self.sessions.data_dir,
            api=self.api_url,
            context_id=context_id if isinstance(context_id, str) else None,
        )

    @property
    def sessions(self) -> SessionRegistry:
        """The server's live sessions."""
        registry: SessionRegistry = self.settings[SESSIONS_KEY]
        return registry

    @property
    def signal_source(self) -> SignalSourceFactory:
        """Makes the events stream's source for a session."""
        factory: SignalSourceFactory = self.settings[SIGNALS_KEY]
        return factory

    async def blocking(
        self, session: ContextSession, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> T:
        """``fn(*args, **kwargs)`` on the server's threads, not its event loop (see
        :mod:`cm_notebook.server.offloop`): for work on ``session`` that may wait for
        its context's lock or the disk. 503 once the server is stopping."""
        off_loop: OffLoop = self.settings[OFF_LOOP_KEY]
        try:
            return await off_loop.run(session.id, fn, *args, **kwargs)
        except ServerStoppingError as exc:
            raise ApiError(503, ErrorBody(message=str(exc), reason="ServerStopping")) from exc

    async def session(self, context_id: str, *, stream: bool = False) -> ContextSession:
        """The live session of ``context_id`` (400 for a hostile id, 404 if unknown).

        Held open until the request ends (see :meth:`release_sessions`); ``stream``: for
        an events stream, which a deletion of the context ends rather than waits for.
        """
        lease = await self.sessions.acquire(context_id, stream=stream)
        if self._held is None:
            self._held = []  # per request: Tornado makes a handler object per request
        self._held.append(lease)
        return lease.session

    def release_sessions(self) -> None:
        """Let the sessions this request used be closed (idle, or their context deleted)."""
        held, self._held = self._held or [], None
        for lease in held:
            lease.release()

    def body(self, model: type[B]) -> B:
        """The request body validated as ``model`` (an empty body is ``{}``): see
        :func:`parse_body`."""
        return parse_body(model, self.request.body or b"{}")

    def query(self, model: type[B]) -> B:
        """The query string validated as ``model``: a list field takes every value of its
        name, any other field the last one."""
        # Not get_query_argument(): it turns control characters into spaces, so a NUL
        # would be blamed as white space (or pass as one); the models refuse them.
        fields = model.model_fields
        values: dict[str, str | list[str]] = {}
        for name, given in self.request.query_arguments.items():
            decoded = [_query_value(value, name) for value in given]
            field = fields.get(name)
            many = field is not None and get_origin(field.annotation) is list
            values[name] = decoded if many else decoded[-1]
        return model.model_validate(values)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """A part of the request's path as text: 400 (``InvalidIdError``) in the API's
        error shape, not the web framework's, when it is not UTF-8."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise not_utf8(value, name) from None

    def reply(self, model: BaseModel, status: int = 200) -> None:
        """Answer with ``model`` as JSON."""
        self.set_status(status)
        self.finish(model.model_dump_json())

    def allowed_methods(self) -> list[str]:
        """The HTTP methods this handler answers (those it defines itself)."""
        return [
            method
            for method in self.SUPPORTED_METHODS
            if getattr(type(self), method.lower(), None)
            is not getattr(web.RequestHandler, method.lower(), None)
        ]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error as an :class:`ErrorBody`; unexpected ones without any detail."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            body = exc.body
            self._condition = status_code == 503
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or responses.get(status_code, "error")
            if exc.args and exc.log_message:
                message = exc.log_message % exc.args
            if status_code in (401, 403):
                message += (
                    " (send the server's token: an 'Authorization: token <token>' header, "
                    "or log in)"
                )
            elif status_code == 405:
                allowed = self.allowed_methods()
                self.set_header("Allow", ", ".join(allowed))  # required with a 405
                message = (
                    f"{self.request.method} is not allowed on {self.request.path!r}; it "
                    f"takes {', '.join(allowed)} (see {self.api_url}/openapi.json)"
                )
            body = ErrorBody(message=message, reason=exc.reason or responses.get(status_code, ""))
        else:
            body = ErrorBody(
                message="internal error in the server; its log has the details",
                reason="InternalError",
            )
        self.set_header("Content-Type", "application/json")
        self.finish(body.model_dump_json())


def _query_value(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise not_utf8(value, name, query=True) from None
