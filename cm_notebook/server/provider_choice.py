"""What a client of the REST API may choose about a context's provider.

A client names the provider (``openai:gpt-4o-mini``) and its harmless options
(``timeout``, ``n_ctx``). Where the provider connects and which file it reads are the
server's to choose: a client-given ``base_url`` would make the server send its own API
key (``OPENAI_API_KEY``) to any host the client names, and a client-given model file
(``model_path``, or ``local:/some/path``) would let it learn which files the server's
machine has. Both are refused unless the server was started with
``--CMNotebookApp.client_endpoints=True`` (for a server whose every client is trusted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputError
from ..providers import parse_spec
from ..providers._model_file import BUNDLED_MODEL_NAMES

__all__ = ["ENDPOINT_OPTIONS", "check_client_choice"]

#: Provider options that choose where a provider connects or which file it reads.
ENDPOINT_OPTIONS = frozenset({"base_url", "model_path"})

_ALLOW = "start the server with --CMNotebookApp.client_endpoints=True if every client is trusted"


def check_client_choice(
    spec: str | None, options: Mapping[str, Any] | None = None, *, allowed: bool
) -> None:
    """Refuse a provider ``spec`` or ``options`` that choose an endpoint or a file.

    ``allowed``: the server lets its clients choose them. Raises InvalidInputError.
    """
    if allowed:
        return
    for name in options or {}:
        if name in ENDPOINT_OPTIONS:
            raise InvalidInputError(
                f"provider_options.{name} is chosen by the server, not by its clients (it "
                "decides where the server connects or which of its files it reads). Leave "
                f"it out to use the server's own setting, or {_ALLOW}."
            )
    if spec is None:
        return
    name, model = parse_spec(spec)
    if name == "local" and model is not None and model.lower() not in BUNDLED_MODEL_NAMES:
        raise InvalidInputError(
            f"provider {spec!r} names a model file, which is chosen by the server, not by "
            f"its clients. Use 'local' for the server's model, or {_ALLOW}."
        )
