"""Credentials inside a URL: a provider's ``base_url`` remembered as a secret, and shown
without them.

A ``base_url`` may carry credentials: ``https://user:password@proxy/v1``, an Azure SAS
``?sig=...`` or a Functions ``?code=...``. :mod:`cm_notebook.redact` finds the whole URL's
``user:password@`` and ``?api_key=...`` by shape, but a server that echoes the
credential alone ("Access denied for user:password", the path it was asked for with
``?sig=<value>``) would get it stored. So providers hand their ``base_url`` to
:func:`remember_url_secrets`, which remembers those values as :func:`remember_secret`
remembers an ``api_key=``, and show it through :func:`redact_url`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote, unquote_plus

from .redact import (
    REDACTED,
    is_secret_name,
    redact_text,
    remember_basic_credentials,
    remember_secret,
)

__all__ = ["redact_url", "refuse_url_secrets", "remember_url_secrets"]

# Query parameters that carry credentials under names that do not say so elsewhere: an
# Azure SAS signature, an Azure Functions key ("code"), a signed URL's signature. Whole
# names only: "country_code" is no credential.
_CREDENTIAL_QUERY_NAMES = frozenset({"sig", "signature", "code"})


def _url_parts(url: str) -> tuple[str, str, str, str] | None:
    # (up to "://", userinfo, from the host to the query, the query without fragment),
    # split by hand: a URL that urlsplit refuses may still carry credentials.
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    before, _, query = (host + rest[end:]).partition("#")[0].partition("?")
    return scheme + sep, userinfo if at else "", before, query


def _secret_query_value(name: str, value: str) -> bool:
    # Named like a credential ("api_key", "token", "sig", "code"). By name only: a
    # value's shape says nothing here (a model, deployment or tenant name looks like a
    # token), and a value taken for a secret is redacted everywhere from then on,
    # stored settings and the provider spec included.
    name, value = unquote_plus(name), unquote_plus(value)
    return bool(value) and (is_secret_name(name) or name.strip().lower() in _CREDENTIAL_QUERY_NAMES)


def _pair(text: str) -> tuple[str, str, str]:
    # (name, "=", value); a part without "=" ("?<token>") is all value.
    name, eq, value = text.partition("=")
    return (name, eq, value) if eq else ("", "", text)


def _looks_like_token(text: str) -> bool:
    # A user name that is itself a credential ("https://<token>@host", an account id
    # beside its token): long, one word, letters and digits. "me" or "research" is not.
    return (
        len(text) >= 16
        and not any(c.isspace() for c in text)
        and any(c.isdigit() for c in text)
        and any(c.isalpha() for c in text)
    )


def _url_secrets(url: str) -> list[str]:
    # The credentials ``url`` carries (see remember_url_secrets), as written.
    parts = _url_parts(url)
    if parts is None:
        return []
    _, userinfo, _, query = parts
    user, colon, password = userinfo.partition(":")
    found = [password] if colon else []
    if _looks_like_token(unquote(user)):
        found.append(user)
    found += [
        value for name, _, value in map(_pair, query.split("&")) if _secret_query_value(name, value)
    ]
    return [value for value in found if value]


def _basic_credentials(url: str) -> tuple[str, str] | None:
    # The (user, password) an HTTP client sends for ``url`` as "Authorization: Basic":
    # its userinfo percent-decoded, as httpx decodes it; None when that holds no
    # credential (no password, and a user that is a plain name: "https://me@host").
    parts = _url_parts(url)
    user, colon, password = parts[1].partition(":") if parts is not None else ("", "", "")
    user, password = unquote(user), unquote(password)
    return (user, password) if (colon and password) or _looks_like_token(user) else None


def refuse_url_secrets(options: Mapping[str, object], where: str) -> None:
    """Raise ValueError if ``options["base_url"]`` carries credentials (as
    :func:`remember_url_secrets` finds them): settings that are stored must not hold
    one, and one stored redacted would be sent as ``[REDACTED]`` after a reopen."""
    url = options.get("base_url")
    if isinstance(url, str) and _url_secrets(url):
        raise ValueError(
            f"{where}: base_url carries credentials (a user:password@ part, or a query "
            "value such as ?sig= or ?code=); cm_notebook never writes secrets to disk. "
            "Pass a provider object built with it, e.g. provider=OpenAIProvider(model, "
            "base_url=...), which a session uses but never stores with its credentials (a "
            "reply records its base_url as metadata.endpoint, with them [REDACTED])."
        )


def remember_url_secrets(url: str | None) -> None:
    """Redact, from now on, the credentials that ``url`` (a provider's ``base_url``)
    carries, as :func:`~cm_notebook.redact.remember_secret` does for an ``api_key=``.

    They are the password of its ``user:password@`` part (and the user when it is shaped
    like a token, as in ``https://<token>@host``: 16 characters or more, letters and
    digits), and the values of its query parameters named like credentials
    (``?sig=...``, ``?code=...``, ``?api_key=...``); other values (``?deployment=...``,
    ``?api-version=...``) are no credentials. Both the written and the percent-decoded
    forms are remembered: a server sees the decoded one. The HTTP client sends the
    ``user:password@`` part as ``Authorization: Basic <token>``, which a server may
    echo alone: that token is remembered too (see
    :func:`~cm_notebook.redact.remember_basic_credentials`).
    Values shorter than 8 characters are not remembered (see
    :func:`~cm_notebook.redact.remember_secret`)."""
    if not isinstance(url, str):
        return
    for value in _url_secrets(url):
        for form in {value, unquote(value), unquote_plus(value)}:
            remember_secret(form)
    basic = _basic_credentials(url)
    if basic is not None:
        remember_basic_credentials(*basic)


def redact_url(url: str) -> str:
    """``url`` fit to show (in a ``repr``, an error, a reply's ``metadata.endpoint``:
    text that may be written to disk): its ``user:password@`` part and the query values
    that :func:`remember_url_secrets` counts as credentials are replaced whatever their
    length (its fragment is left out), and so is each path segment or query value that
    holds a long opaque token (a run of 16 characters or more with letters and digits:
    a gateway key in the path, ``/gw/<32 hex>/v1``) or follows a segment named like a
    credential (``/key/<value>``); then :func:`~cm_notebook.redact.redact_text` runs on
    the rest. An ordinary path (``/v1``, ``/openai/deployments/gpt-4o``) is kept."""
    parts = _url_parts(url)
    if parts is None:
        return redact_text(url)
    start, userinfo, before, query = parts
    host, slash, path = before.partition("/")
    segments = path.split("/")
    shown_path = "/".join(
        REDACTED
        if segment and (_opaque(segment) or (n > 0 and _names_credential(segments[n - 1])))
        else segment
        for n, segment in enumerate(segments)
    )
    shown = start + (f"{REDACTED}@" if userinfo else "") + host + slash + shown_path
    if query:
        pairs = map(_pair, query.split("&"))
        shown += "?" + "&".join(
            name + eq + (REDACTED if _secret_query_value(name, value) or _opaque(value) else value)
            for name, eq, value in pairs
        )
    return redact_text(shown)


#: A run of letters and digits (and base64's "+"), as a key is written.
_RUN = re.compile(r"[A-Za-z0-9+]+")


def _opaque(part: str) -> bool:
    # A path segment or query value that holds a long opaque token (a gateway key in
    # the path, "/gw/<32 hex>/v1"): a run of 16 characters or more with letters and
    # digits, as _looks_like_token has a user name. Words joined by "-" or "_"
    # ("gpt-4o-2024-08-06", "meta-llama-3-70b-instruct") are runs too short to count.
    return part != REDACTED and any(_looks_like_token(run) for run in _RUN.findall(unquote(part)))


def _names_credential(segment: str) -> bool:
    # "/key/<value>", "/tokens/<value>": the segment after it is the credential.
    name = unquote(segment)
    return is_secret_name(name) or (name.endswith("s") and is_secret_name(name[:-1]))
