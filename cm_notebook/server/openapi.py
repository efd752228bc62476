"""``/cm/api/openapi.json``: the API described from the handlers' own declarations.

Each handler method declares its body, query, answer and error statuses with
:func:`~cm_notebook.server.base.operation`; this module turns the route table and
those declarations into an OpenAPI 3.1 document whose schemas are the pydantic
models' JSON schemas. What is validated is what is documented.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .. import __version__
from ..events import Event
from .base import OPENAPI_KEY, CMHandler, Operation, operation
from .bodies import ErrorBody

__all__ = ["OpenAPIHandler", "Route", "build_openapi"]

Route = tuple[str, type[CMHandler]]
# (model, mode) -> {'$ref': ...}, as pydantic's models_json_schema returns them.
_Refs = dict[Any, dict[str, Any]]

_METHODS = ("get", "head", "post", "put", "patch", "delete")
_PARAMETER = re.compile(r"{(\w+)}")


class _Signals(BaseModel):
    # Documents the signals' shapes (the 'data:' of the events stream).
    signal: Event


def _operations(handler: type[CMHandler]) -> dict[str, Operation]:
    found = {}
    for method in _METHODS:
        described = getattr(getattr(handler, method, None), "__cm_operation__", None)
        if isinstance(described, Operation):
            found[method] = described
    return found


def build_openapi(routes: Sequence[Route], server_url: str) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (templates like ``/contexts/{context_id}``)."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (ErrorBody, "serialization"),
        (_Signals, "serialization"),
    ]
    for _template, handler in routes:
        for described in _operations(handler).values():
            if described.body is not None:
                wanted.append((described.body, "validation"))
            if described.response is not None:
                wanted.append((described.response, "serialization"))
    refs, definitions = models_json_schema(
        list(dict.fromkeys(wanted)), ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, Any] = {}
    for template, handler in routes:
        item = {
            method: _operation(template, method, described, refs)
            for method, described in _operations(handler).items()
        }
        if item:
            paths[template] = item
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cm_notebook",
            "version": __version__,
            "description": "Contexts, branches, turns, tool approvals and signals of "
            "cm_notebook sessions living in this Jupyter server.",
        },
        "servers": [{"url": server_url}],
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'token <the Jupyter server's token>'",
                }
            },
        },
        "security": [{"token": []}],
        "paths": paths,
    }


def _operation(
    template: str,
    method: str,
    described: Operation,
    refs: _Refs,
) -> dict[str, Any]:
    names = _PARAMETER.findall(template)
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in names
    ]
    if described.query is not None:
        schema = described.query.model_json_schema()
        for name, prop in schema.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": False, "schema": prop})
    if described.media_type == "text/event-stream":
        # What an EventSource sends by itself when it reconnects (see server/events.py).
        parameters.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "description": "The id (sequence number) of the last signal received: the stream "
                "replays the signals after it (as ?since= does; the header wins when "
                "both are given)",
                "schema": {"type": "string"},
            }
        )
    head = method == "head"
    doc: dict[str, Any] = {
        # HEAD: what GET answers, without the body (see CMHandler.__init_subclass__).
        "summary": f"{described.summary} (headers only)" if head else described.summary,
        "operationId": f"{method}_{'_'.join(re.sub(r'[{}]', '', template).strip('/').split('/'))}",
        "parameters": parameters,
        "responses": {
            str(described.status): (
                {"description": "As GET answers, without the body"}
                if head
                else _success(described, refs)
            )
        },
    }
    if described.description:
        doc["description"] = described.description
    if described.body is not None:
        doc["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": refs[(described.body, "validation")]}},
        }
    error: dict[str, Any] = (
        {}  # the error's status and headers, not its JSON body
        if head
        else {"content": {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}}
    )
    statuses = {*described.errors, 403}
    if not template.endswith("openapi.json"):
        # Any route but this document: the server is stopping, or a store lock or the
        # model's server was unavailable for longer than the server waits, or the data
        # folder cannot be written (a POST /contexts as much as a context's route).
        statuses.add(503)
    if "context_id" in names:
        # Every route of a context reads its stored files, which may be damaged (or
        # written by a newer version): 500, whatever the route declares.
        statuses.add(500)
    for status in sorted(statuses):
        doc["responses"][str(status)] = {"description": _ERRORS[status], **error}
    return doc


def _success(
    described: Operation,
    refs: _Refs,
) -> dict[str, Any]:
    if described.media_type == "text/event-stream":
        return {
            "description": "A stream of signals",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    if described.response is None:
        return {"description": "Done"}
    schema = refs[(described.response, "serialization")]
    return {"description": "OK", "content": {described.media_type: {"schema": schema}}}


_ERRORS = {
    400: "Malformed request: bad JSON, wrong fields, hostile ids (field errors listed)",
    403: "No valid token or session: log in or send 'Authorization: token <token>'",
    404: "No such context, message, branch or tool call",
    409: "Conflicts with the current state (a reply is streaming, nothing is pending, ...)",
    500: "The context's stored files are damaged (reason CorruptDataError) or written by a "
    "newer cm_notebook (SchemaVersionError): the message names the file and what to do "
    "(restore it from a backup, or DELETE the context)",
    503: "Unavailable for now: the server is stopping (ServerStopping), another process "
    "held the context's lock too long (StoreLockTimeoutError) or the model's server is "
    "busy or down (TransientProviderError); try again later. Or a change the server may "
    "not write (StoreIOError): its data folder is read-only or not its own to write; "
    "reads work, and its administrator can serve a writable copy",
}


class OpenAPIHandler(CMHandler):
    """The OpenAPI document."""

    @operation("This API's OpenAPI document", errors=())
    async def get(self) -> None:
        self.finish(self.settings[OPENAPI_KEY])
