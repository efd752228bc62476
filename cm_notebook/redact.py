"""Keeping secrets out of settings, errors, stored metadata, exports and logs.

A value counts as a secret in three ways:

* **by name**: it is stored under a credential-like key (``api_key``, ``X-Auth-Token``,
  ``Ocp-Apim-Subscription-Key``, ``Cookie``, ``private_key``, ``credentials``,
  ``auth``...), in a mapping or as a ``(name, value)`` pair in a list. Ordinary
  parameter names (``max_tokens``, ``max_token``, ``top_k``, ``token_limit``,
  ``prompt_cache_key``) are not credentials: see :func:`is_secret_name`. Among headers
  (under a name ending in ``headers``), ``X-Vault-Token`` or ``X-Functions-Key`` is one;
* **by shape**: bearer and basic credentials, well-known key formats (``sk-...``,
  ``sk-ant-...``, ``ghp_...``, ``hf_...``, ``AKIA...``), the ``user:password@`` part of a
  URL, credential query parameters (``?api_key=...``) and ``name: value`` pairs whose
  name is credential-like;
* **by value**: it contains the value of an environment variable whose name says it
  holds a key (a ``_``-separated part ending in KEY, TOKEN, SECRET, PASSWORD...), e.g.
  ``OPENAI_API_KEY``. The environment is read at each call, so a key set in a notebook
  after import is known too.

Settings that are written to disk are *refused* when they hold a secret
(:func:`refuse_secrets`, whose error names where the secret is and never the secret).
Everything else that leaves the process is *redacted*: :func:`redact` for data,
:func:`redact_text` for text, :func:`scrub_exception` for an exception chain, and
:func:`get_logger` for log records.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from ._json import JSONLimitError, check_depth

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "find_secret",
    "get_logger",
    "holds_credential",
    "is_secret_name",
    "redact",
    "redact_text",
    "refuse_secrets",
    "remember_basic_credentials",
    "remember_header_secrets",
    "remember_secret",
    "scrub_exception",
]

#: What a secret is replaced with.
REDACTED = "[REDACTED]"

# -- by name ------------------------------------------------------------------------------

# Words that make any name a credential wherever they appear in it.
_ALWAYS = frozenset(
    {
        "secret",
        "secrets",
        "password",
        "passwords",
        "passwd",
        "passphrase",
        "pwd",
        "authorization",
        "bearer",
        "credential",
        "credentials",
        "cookie",
        "cookies",
        "apikey",
        "apikeys",
        "accesskey",
        "secretkey",
        "privatekey",
        "authtoken",
        "accesstoken",
        "refreshtoken",
    }
)
# "key" and "token" alone are credentials; after one of these words too ("api_key",
# "x-auth-token"). After any other word they are ordinary parameters: "max_token",
# "stop_token", "prompt_cache_key".
_QUALIFIERS = frozenset(
    {
        "access",
        "account",
        "anthropic",
        "api",
        "auth",
        "bearer",
        "client",
        "csrf",
        "encryption",
        "gh",
        "github",
        "hf",
        "id",
        "license",
        "master",
        "oauth",
        "openai",
        "personal",
        "private",
        "refresh",
        "secret",
        "security",
        "service",
        "session",
        "signing",
        "ssh",
        "subscription",
        "xsrf",
    }
)
_CREDENTIAL_NOUNS = frozenset({"key", "keys", "token", "tokens"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def _words(name: str) -> list[str]:
    # "X-Auth-Token", "x_auth_token", "xAuthToken" and "XAuthToken" all give the same words.
    return [word.lower() for word in _WORDS.findall(name)]


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a key, header or parameter named ``name`` holds a credential.

    >>> [is_secret_name(n) for n in ("api_key", "X-Auth-Token", "Cookie", "auth", "key")]
    [True, True, True, True, True]
    >>> [is_secret_name(n) for n in ("max_tokens", "max_token", "top_k", "token_limit")]
    [False, False, False, False]
    """
    words = _words(name)
    if not words:
        return False
    if any(word in _ALWAYS for word in words):
        return True
    last = words[-1]
    if last == "auth":
        return True
    if last in _CREDENTIAL_NOUNS:
        # Alone, "key" and "token" are credentials; "tokens" alone is usually a count.
        return words[-2] in _QUALIFIERS if len(words) > 1 else last in ("key", "token")
    return False


# -- by value -----------------------------------------------------------------------------

_ENV_NAME = re.compile(r"(?i)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?)S?(_|$)")
# Shorter values ("1", "true", a port) would redact ordinary text everywhere.
_MIN_SECRET_CHARS = 8


_env_cache: tuple[tuple[object, ...], list[str]] = ((), [])
# Keys handed to a provider in code rather than through the environment (a local
# server's --api-key, a proxy's token): redacted by value too, for this process's life.
_given: frozenset[str] = frozenset()
_given_lock = threading.Lock()


def remember_secret(value: object) -> None:
    """Redact ``value`` (a key passed to a provider as ``api_key=``, say) wherever it
    appears from now on, as the values of credential variables of the environment are:
    a server that echoes the key in an error body must not get it stored. Kept in this
    process's memory only; values shorter than 8 characters are not remembered."""
    global _given
    if isinstance(value, str) and len(value.strip()) >= _MIN_SECRET_CHARS:
        with _given_lock:
            _given = _given | {value}


# A header whose name ends in one of these words carries a credential even after a
# word that is no qualifier ("X-Functions-Key", "X-Vault-Token"): headers carry no
# counts or limits, which is what keeps "max_token" ordinary among parameters.
_HEADER_CREDENTIAL_WORDS = frozenset({"key", "keys", "token", "tokens", "secret", "auth"})


def _is_credential_header(name: str) -> bool:
    words = _words(name)
    return is_secret_name(name) or bool(words and words[-1] in _HEADER_CREDENTIAL_WORDS)


@functools.lru_cache(maxsize=4096)
def _holds_headers(name: object) -> bool:
    # Whether the mapping (or list of pairs) under ``name`` holds HTTP headers
    # ("default_headers", "extra_headers", "headers"), whose own names are then read as
    # headers' names: "X-Vault-Token" is a credential there. Cached, and a suffix test
    # rather than words: it runs for every mapping a store write redacts.
    return isinstance(name, str) and name[-7:].lower() == "headers"


def _names_credential(name: object, under: object) -> bool:
    # Whether a key (or a pair's first item) names a credential, ``under`` being the name
    # of what holds it: among headers, as remember_header_secrets reads their names.
    if not isinstance(name, str):
        return False
    return _is_credential_header(name) if _holds_headers(under) else is_secret_name(name)


def remember_basic_credentials(user: str, password: str) -> None:
    """Redact, from now on, HTTP Basic credentials in every form a server may echo
    them: the token ``Authorization: Basic`` carries (the base64 of
    ``user:password``), the password alone, and ``user:password`` whole when the
    password alone is too short to be remembered (see :func:`remember_secret`). A
    longer password is replaced inside it, and the user name, which is no secret, stays
    readable ("denied for alice:[REDACTED]")."""
    pair = f"{user}:{password}"
    remember_secret(password)
    if len(password.strip()) < _MIN_SECRET_CHARS:
        remember_secret(pair)
    remember_secret(base64.b64encode(pair.encode()).decode("ascii"))


def _decoded_basic(token: str) -> tuple[str, str] | None:
    # The (user, password) inside a "Basic <token>" credential, or None if it is not
    # base64 of UTF-8 "user:password" (then only the token itself can be echoed).
    try:
        user, colon, password = base64.b64decode(token, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if colon else None


def remember_header_secrets(headers: Mapping[str, object] | None) -> None:
    """Redact, from now on, the credentials among HTTP ``headers`` a provider sends
    (its ``default_headers=``): the values of headers named like credentials
    (``Authorization``, ``api-key``, ``X-Api-Token``, ``Cookie``...) or shaped like
    one, as :func:`remember_secret` does for an ``api_key=``. The credential inside
    ``Bearer <token>`` and the values of a cookie are remembered on their own too, as
    a server may echo only them; so are the user and password inside ``Basic <token>``
    (see :func:`remember_basic_credentials`), which a server may echo decoded."""
    for name, value in (headers or {}).items():
        if not isinstance(value, str) or not value.strip():
            continue
        if not (isinstance(name, str) and _is_credential_header(name)) and not (
            holds_credential(value)
        ):
            continue
        remember_secret(value.strip())
        scheme, _, credential = value.strip().partition(" ")
        if credential and scheme.isalpha():  # "Bearer <token>", "Token <token>"
            remember_secret(credential.strip())
            basic = _decoded_basic(credential.strip()) if scheme.lower() == "basic" else None
            if basic is not None:
                remember_basic_credentials(*basic)
        for part in value.split(";"):  # "session=<value>; csrftoken=<value>"
            remember_secret(part.partition("=")[2].strip())


def _env_secrets() -> list[str]:
    global _env_cache
    # Matching every variable's name costs ~100 us; redaction runs on every store write.
    # So the result is kept until the environment (or the remembered keys) change, seen
    # through one cheap snapshot (CPython's raw mapping behind os.environ, which putenv
    # keeps in sync).
    raw = getattr(os.environ, "_data", None)
    given = _given
    snapshot = (
        *(raw.items() if isinstance(raw, dict) else os.environ.items()),
        given,
    )
    cached_snapshot, cached = _env_cache
    if snapshot == cached_snapshot:
        return cached
    values = {
        value
        for name, value in os.environ.items()
        if _ENV_NAME.search(name) and len(value.strip()) >= _MIN_SECRET_CHARS
    } | given
    result = sorted(values, key=len, reverse=True)  # longest first: no partial leftovers
    _env_cache = (snapshot, result)
    return result


# -- by shape -----------------------------------------------------------------------------

# The lookahead names every shape's first letter (b/B for bearer and basic in any
# case, s, g, x, h, A): it matches nothing more or less, but lets the regex engine skip
# the other positions at once, where trying eight alternatives at each character of a
# reply took ~100 us per 600 characters (10 us with it). A new shape adds its letter.
_KEY_SHAPES = re.compile(
    r"(?=[BbsgxhA])"
    r"(?:(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9\-._~+/]{8,}=*"
    r"|\bsk-[A-Za-z0-9][A-Za-z0-9_\-]{15,}"
    r"|\bgh[opusr]_[A-Za-z0-9]{20,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,}"
    r"|\bhf_[A-Za-z0-9]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bAIza[0-9A-Za-z_\-]{35})"
)
# scheme://userinfo@ : the userinfo (user:password, or a bare token) goes.
_URL_USERINFO = re.compile(r"(?i)(?<![a-z0-9+.\-])([a-z][a-z0-9+.\-]*://)([^\s/?#@]+)@")
# name=value (query strings, forms), name: value (headers), "name": "value" (JSON,
# Python reprs); replaced only when the name is a credential's.
# Each pattern can match a character in one way only, and starts only where a name
# can start, so a long or hostile text (an echoed body, a reply) is scanned in linear
# time: no backtracking blow-up.
_ASSIGNMENT = re.compile(r"(?<![\w.\-])([A-Za-z][\w.\-]*)(=|:[ \t]+)([^\s&#\"',;}\]]+)")
_QUOTED_PAIR = re.compile(
    r"([\"'])([A-Za-z][\w.\- ]*)\1(\s*:\s*|\s*,\s*)([\"'])((?:\\.|(?!\4)[^\\])*)\4"
)
# REDACTED as a whole value: no secret (old settings with one read redacted: store.codec).
_REDACTED_VALUE = re.compile(re.escape(REDACTED) + r"(?![^\s&#\"',;}\]])")


def _shape_of(text: str) -> str | None:
    # Which kind of secret ``text`` contains (for an error message), or None.
    if _KEY_SHAPES.search(text):
        return "a key or bearer token"
    if any(m.group(2) != REDACTED for m in _URL_USERINFO.finditer(text)):
        return "credentials in a URL (user:password@)"
    for match in _ASSIGNMENT.finditer(text):
        if is_secret_name(match.group(1)) and not _REDACTED_VALUE.match(text, match.start(3)):
            return f"a {match.group(1)!r} value (e.g. a URL query parameter)"
    for match in _QUOTED_PAIR.finditer(text):
        if is_secret_name(match.group(2)) and match.group(5) != REDACTED:
            return f"a {match.group(2)!r} value"
    return None


def holds_credential(text: str) -> bool:
    """Whether ``text`` holds a key by its shape (``sk-...``, ``ghp_...``, a bearer
    token), credentials in a URL (``user:password@``) or the value of a credential
    environment variable. Unlike :func:`redact_text`, a name such as ``key`` or
    ``token`` next to a value does not count: ordinary data (a dict's ``'key'``) has
    them."""
    if _KEY_SHAPES.search(text):
        return True
    if "@" in text and "://" in text and _URL_USERINFO.search(text):
        return True
    return any(value in text for value in _env_secrets())


def redact_text(text: str) -> str:
    """``text`` with every secret it contains (by shape or by value) replaced."""
    if not text:
        return text
    return _redact_text(text, _env_secrets())


def _redact_text(text: str, env_secrets: list[str]) -> str:
    for value in env_secrets:
        text = text.replace(value, REDACTED)
    text = _KEY_SHAPES.sub(REDACTED, text)
    # Each pattern below only where the characters it cannot match without are there
    # (a store write redacts every string of a message's metadata; most have none).
    if "@" in text and "://" in text:
        text = _without_userinfo(text)
    if '"' in text or "'" in text:
        text = _without_quoted_secrets(text)
    if "=" in text or ": " in text or ":\t" in text:
        text = _without_assigned_secrets(text)
    return text


def _without_userinfo(text: str) -> str:
    # scheme://secret@ -> scheme://[REDACTED]@
    return _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)


def _without_quoted_secrets(text: str) -> str:
    # "api_key": "v" (or , "v") -> the value redacted, when the name is a credential's.
    return _QUOTED_PAIR.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{m.group(4)}{REDACTED}{m.group(4)}"
            if is_secret_name(m.group(2))
            else m.group(0)
        ),
        text,
    )


def _without_assigned_secrets(text: str) -> str:
    # name=value / name: value -> the value redacted, when the name is a credential's.
    return _ASSIGNMENT.sub(
        lambda m: (
            f"{m.group(1)}{m.group(2)}{REDACTED}"
            if is_secret_name(m.group(1))
            and not m.group(3).startswith(REDACTED[:-1])
            and not _PLACEHOLDER.fullmatch(m.group(3))
            else m.group(0)
        ),
        text,
    )


# A value that only stands for one ("pass api_key=...)"): an error message's advice
# must reach the reader whole. Only an ellipsis and closing punctuation: nothing a key
# could be.
_PLACEHOLDER = re.compile(r"(?:\.\.\.|\u2026)[).,;:!?\]]*")


# -- finding, refusing and redacting in data ---------------------------------------------


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and not isinstance(value[1], (list, tuple, Mapping))
    )


def _holds_text(value: object) -> bool:
    # Whether a value under a credential's name could be one: a number, a flag or an
    # empty value cannot ({"tokens": 512} is a count, {"api_key": None} is unset), nor
    # REDACTED, which an earlier version may have stored in its place: a context holding
    # one still opens.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item and item != REDACTED:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


# A place in the data: its label and its parent's place, so that the path string is
# only built for a secret found (building it at every level costs O(depth^2)).
_Place = tuple[str, "_Place | None"]


def _path(place: _Place | None) -> str:
    labels: list[str] = []
    while place is not None:
        labels.append(place[0])
        place = place[1]
    return "".join(reversed(labels))


def _walk(value: object, path: str) -> Iterator[tuple[str, str]]:
    # (path, why) for every secret in ``value``. An explicit stack, not recursion: the
    # data may come from anyone and be nested deeper than Python's recursion limit.
    # Each item goes with the name it is stored under (a list's items with the list's).
    env = _env_secrets()
    stack: list[tuple[object, _Place | None, object]] = [
        (value, (path, None) if path else None, path)
    ]
    while stack:
        item, place, under = stack.pop()
        if isinstance(item, str):
            if any(secret in item for secret in env):
                yield (
                    _path(place),
                    "the value of a key in the environment, or of a credential given to a provider",
                )
            else:
                shape = _shape_of(item)
                if shape is not None:
                    yield _path(place), shape
        elif isinstance(item, Mapping):
            for key, child in item.items():
                inner = (f"[{key!r}]" if place is not None else str(key), place)
                if _names_credential(key, under) and _holds_text(child):
                    yield _path(inner), f"{key!r} names a credential"
                else:
                    stack.append((child, inner, key))
        elif isinstance(item, (list, tuple)):
            if _is_pair(item) and _names_credential(item[0], under) and _holds_text(item[1]):
                yield _path((f"[{item[0]!r}]", place)), f"{item[0]!r} names a credential"
                continue
            stack.extend((child, (f"[{i}]", place), under) for i, child in enumerate(item))


def find_secret(value: object, where: str = "") -> str | None:
    """Where in ``value`` a secret is (a path such as ``default_headers['Cookie']`` and
    why it counts as one), or None. Never returns the secret itself."""
    for path, why in _walk(value, where):
        return f"{path or 'the value'} ({why})"
    return None


def refuse_secrets(params: dict[str, Any], where: str) -> dict[str, Any]:
    """Return ``params`` unchanged, or raise ValueError if they hold a secret.

    The error names where the secret is (e.g. ``default_headers['X-Auth-Token']``),
    never its value, so it is safe to show in a saved notebook.
    """
    try:
        check_depth(params)  # before the walk: refused at the limit, not at the bottom
    except JSONLimitError as exc:
        raise ValueError(f"{where}: the values are {exc}") from None
    found = find_secret(params)
    if found is not None:
        raise ValueError(
            f"{where}: {found} looks like a secret; cm_notebook never writes secrets to "
            "disk. Put keys in environment variables (e.g. OPENAI_API_KEY, "
            "ANTHROPIC_API_KEY), which providers read themselves; for other credentials "
            "(headers, URLs) pass a provider object built with them, e.g. "
            "provider=OpenAIProvider(model, base_url=..., default_headers=...), which a "
            "session uses but never stores with its credentials (a reply records its base_url "
            "as metadata.endpoint, credentials and key-shaped parts [REDACTED])."
        )
    return params


def redact(value: Any) -> Any:
    """A copy of ``value`` (JSON-like data) with every secret replaced by ``[REDACTED]``.

    Values under credential-like names (in mappings, or as ``(name, value)`` pairs) go
    whole; strings keep everything but the secret parts.
    """
    return _redact(value, _env_secrets(), 0, None)


# Values that hold no text: returned as they are, before the type checks below (a
# message's metadata is mostly None and numbers, and an ABC check costs ten times more).
_PLAIN_SCALARS = frozenset({type(None), bool, int, float})


def _redact(value: Any, env_secrets: list[str], depth: int, under: object) -> Any:
    # The environment's secrets are looked up once per call of redact(), not per string.
    # ``under``: the name ``value`` is stored under (a list's items get the list's).
    kind = type(value)
    if kind in _PLAIN_SCALARS:
        return value
    if depth > 200:  # deeper data is refused on reading; never recurse without bound
        return REDACTED
    if kind is str or isinstance(value, str):
        return _redact_text(value, env_secrets) if value else value
    if kind is dict or isinstance(value, Mapping):
        # A scalar child stays as it is, whatever its name (it holds no text).
        names_secret = _is_credential_header if _holds_headers(under) else is_secret_name
        return {
            key: child
            if type(child) in _PLAIN_SCALARS
            else REDACTED
            if isinstance(key, str) and names_secret(key) and _holds_text(child)
            else _redact(child, env_secrets, depth + 1, key)
            for key, child in value.items()
        }
    if isinstance(value, (list, tuple)):
        if _is_pair(value) and _names_credential(value[0], under) and _holds_text(value[1]):
            return type(value)([value[0], REDACTED])
        return type(value)(_redact(child, env_secrets, depth + 1, under) for child in value)
    return value


def scrub_exception(exc: BaseException) -> BaseException:
    """Redact the messages of ``exc`` and of the exceptions chained to it, in place.

    An SDK error kept as ``__cause__`` is printed with the traceback a notebook saves;
    a server that echoes the key in its error body must not put it there.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        args = tuple(redact_text(a) if isinstance(a, str) else a for a in current.args)
        if args != current.args:
            # Some exception types forbid it; their text is left as it is.
            with contextlib.suppress(AttributeError, TypeError):
                current.args = args
        current = current.__cause__ or current.__context__
    return exc


# -- logs ---------------------------------------------------------------------------------


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always keeps it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports that itself
            return True
        record.msg, record.args = redact_text(message), None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`RedactingFilter` attached (once).

    A filter on a parent logger does not see its children's records, so every module
    that logs takes its logger from here.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
