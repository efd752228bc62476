"""The providers one session uses: its default, and the ones built from specs on demand."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import types
import typing
from collections.abc import Mapping
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

from ..errors import CMError, InvalidInputError, ProviderNotInstalledError, ProviderSetupError
from ..model import ProviderSettings
from ..redact import REDACTED, is_secret_name
from . import available_providers, get_provider, parse_spec
from .base import Provider

__all__ = [
    "ProviderLike",
    "ProviderPool",
    "check_buildable",
    "check_provider",
    "check_spec",
    "close_later",
    "spec_of",
]

#: What the public API accepts wherever a provider is chosen.
ProviderLike = str | Provider


def check_provider(provider: object) -> None:
    """Refuse, before anything is sent or stored, what is neither a spec string nor a
    :class:`Provider` (a typo'd variable, a class instead of an instance...)."""
    if provider is None or isinstance(provider, str):
        return
    if not isinstance(provider, Provider) or not (
        isinstance(provider.name, str) and isinstance(provider.model, str)
    ):
        raise InvalidInputError(
            f"provider must be a spec such as 'local' or 'openai:gpt-4o-mini', or a Provider "
            f"(an object with name and model strings, stream() and aclose()), not "
            f"{provider!r:.80}"
        )


def spec_of(provider: Provider) -> str:
    """The spec string describing a provider instance (stored in metadata).

    The provider's own ``spec`` if it has one (a string), else ``name:model``: a
    provider whose ``model`` is a display name that would not build it again (the
    local provider's file stem) says which spec does.
    """
    check_provider(provider)
    own = getattr(provider, "spec", None)
    if isinstance(own, str) and own:
        return own
    return provider.name if not provider.model else f"{provider.name}:{provider.model}"


def check_spec(spec: str) -> str:
    """Fail early (e.g. at create time) on a malformed or unknown provider spec; return
    it as it is stored: the name lower-cased (names are case-insensitive), no white space
    around the name or the model (``" OpenAI:gpt-4o"`` is ``"openai:gpt-4o"``)."""
    name, model = parse_spec(spec)
    if name not in available_providers():
        get_provider(spec)  # raises UnknownProviderError with the list of known names
    return name if model is None else f"{name}:{model}"


def check_buildable(spec: str, options: Mapping[str, Any] | None = None) -> None:
    """Build ``spec`` with ``options`` once and close it, to refuse before it is stored
    what would fail every send: options it does not take (or of the wrong type), a model
    it needs and the spec leaves out, a model file that is not there.

    Passes when it cannot be built for a reason the user may yet put right without
    changing the spec (its extra is not installed): the first send says so. Nothing is
    contacted: providers connect (and read their API key) at the first request.

    Raises:
        InvalidInputError: an unknown provider, an option it does not take, a bad value.
        PermanentProviderError: the provider refuses the spec (e.g. a missing model file).
    """
    try:
        probe = _built(spec, options or {})
    except ProviderNotInstalledError:
        return
    close_later(probe)


def close_later(provider: Provider) -> None:
    """Close ``provider`` (async) without waiting: on the running loop if there is one,
    else on the background loop. For a provider built only to check its options."""
    from .._loop import background_loop, running_loop  # the loop module imports little

    loop = running_loop() or background_loop()

    async def close() -> None:
        with contextlib.suppress(Exception):  # closing never raises
            await provider.aclose()

    if loop is running_loop():
        loop.create_task(close())
    else:
        asyncio.run_coroutine_threadsafe(close(), loop)


def _built(spec: str, options: Mapping[str, Any]) -> Provider:
    # get_provider, with a constructor's TypeError or ValueError (an option it does not
    # take, a string for a number...) as the InvalidInputError of bad input it is.
    # Values not of their annotated type are refused first: a constructor may keep
    # one (organization=5, include_usage="false") that fails, or misleads, every request.
    _refuse_redacted(spec, options)
    wrong = _wrong_type(spec, options)
    if wrong is not None:
        raise InvalidInputError(wrong)
    try:
        return get_provider(spec, **options)
    except CMError as exc:
        if not isinstance(exc, InvalidInputError):
            raise
        # The provider's own check (say, a timeout that is not positive): its words.
        raise InvalidInputError(f"{_cannot(spec, options)}: {exc}") from None
    except (TypeError, ValueError):
        # Python's own text ("'>' not supported between instances of 'str' and 'int'",
        # "__init__() got an unexpected keyword argument") names neither the option nor
        # a remedy: say which option is wrong, from the constructor's signature.
        raise InvalidInputError(_bad_options(spec, options)) from None


def _refuse_redacted(spec: str, options: Mapping[str, Any]) -> None:
    # Settings an earlier version stored with a credential in them are read with it
    # redacted (see cm_notebook.store.codec): built from them, a provider would send
    # REDACTED as the credential and fail as a refused login, or an address that does
    # not parse. Said before anything is sent, with what to do instead.
    where = [name for name, value in options.items() if _holds_redacted(value)]
    if REDACTED in spec:
        where.insert(0, "the spec")
    if where:
        raise ProviderSetupError(
            f"provider {spec!r} cannot be made from these settings: {REDACTED} stands in "
            f"place of a credential in {', '.join(where)} (cm_notebook never stores one; "
            "settings an earlier version stored with one are read so), and would be sent "
            "as the credential. Pass the provider built with its credentials when you open "
            "the context, e.g. ContextSession.open(context_id, provider=OpenAIProvider("
            "model, base_url=...)): a session uses it but never stores its credentials (a "
            "reply records its base_url as metadata.endpoint, with them [REDACTED]). Keys "
            "belong in environment variables (e.g. OPENAI_API_KEY).",
            provider=parse_spec(spec)[0],
        )


def _holds_redacted(value: object) -> bool:
    # Whether REDACTED is in ``value`` or in any text nested in it.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if REDACTED in item:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


#: Options never offered as valid: the spec names the model, keys come from the
#: environment (settings refuse secrets).
_NOT_OFFERED = frozenset({"self", "model"})
_OPTION_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _bad_options(spec: str, options: Mapping[str, Any]) -> str:
    """What is wrong with ``options`` for ``spec``'s provider, and what to do."""
    head = _cannot(spec, options)
    target = _constructor(parse_spec(spec)[0])
    signature = None
    if target is not None:
        with contextlib.suppress(TypeError, ValueError):
            signature = inspect.signature(target)
    if signature is None:
        return (
            f"{head}: one has a value of the wrong type or out of range; check them "
            "against the provider's documentation"
        )
    parameters = signature.parameters
    valid = sorted(
        option
        for option, parameter in parameters.items()
        if parameter.kind in _OPTION_KINDS
        and option not in _NOT_OFFERED
        and not option.startswith("_")
        and not is_secret_name(option)
    )
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = [] if open_ended else [option for option in options if option not in parameters]
    if unknown:
        # Named as Python would too ("unexpected keyword argument"), for whoever searches.
        which = ", ".join(f"{option!r:.80}" for option in unknown)
        plural = "s" if len(unknown) > 1 else ""
        return (
            f"{head}: unknown provider option{plural} {which} (unexpected keyword "
            f"argument{plural} {which}); valid options are {', '.join(valid) or 'none'}: "
            "correct the name or remove it (generation parameters such as temperature go "
            "with each message instead)"
        )
    # (A value not of its annotated type was refused before the constructor ran.)
    return (
        f"{head}: one has a value of the wrong type or out of range; valid options are "
        f"{', '.join(valid) or 'none'}: correct the values"
    )


def _wrong_type(spec: str, options: Mapping[str, Any]) -> str | None:
    """What is wrong with the first option whose value is not of its annotated type
    (and what to do), or None."""
    target = _constructor(parse_spec(spec)[0])
    hints = _hints(target) if target is not None else {}
    for option, value in options.items():
        expected = _expected(hints.get(option))
        if expected is not None and not _fits(value, expected[0]):
            return (
                f"{_cannot(spec, options)}: option {option!r} must be {expected[1]}, not "
                f"{_kind_of(value)}; correct its value"
            )
    return None


def _cannot(spec: str, options: Mapping[str, Any]) -> str:
    if not options:
        return f"provider {spec!r} cannot be made"
    return f"provider {spec!r} cannot be made with the options {sorted(options)}"


def _constructor(name: str) -> Any:
    # What builds the provider: a class's __init__ (from_spec passes options on to it)
    # or a factory callable. None when it cannot be loaded.
    factory: Any = available_providers().get(name)
    if isinstance(factory, EntryPoint):
        try:
            factory = factory.load()
        except Exception:  # a plugin that cannot be imported: nothing to describe
            return None
    return factory


def _hints(target: Any) -> dict[str, Any]:
    # The constructor's resolved annotations; none when they cannot be resolved (names
    # imported only for type checkers).
    function: Any = target
    if isinstance(target, type):
        function = function.__init__
    try:
        return typing.get_type_hints(function)
    except Exception:
        return {}


#: Plain annotations an option's value can be checked against, and how to say them.
_PLAIN: dict[Any, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "a whole number"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
    Path: ((str, Path), "a path"),
    type(None): ((type(None),), "null"),
}


def _expected(hint: Any) -> tuple[tuple[type, ...], str] | None:
    # The types a value of annotation ``hint`` may have and their description; None
    # when the annotation is not a plain one (or a union of plain ones).
    if hint in _PLAIN:
        return _PLAIN[hint]
    if typing.get_origin(hint) in (Mapping, dict):  # its entries are the provider's to check
        return (Mapping,), "an object"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_expected(arg) for arg in typing.get_args(hint)]
        if any(part is None for part in parts):
            return None
        known = [part for part in parts if part is not None]
        kinds = tuple(kind for part in known for kind in part[0])
        return kinds, " or ".join(part[1] for part in known)
    return None


def _fits(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # a bool is an int to Python, not to a client
        return bool in kinds
    return isinstance(value, kinds)


def _kind_of(value: object) -> str:
    # The value's JSON kind, never the value itself (it may be long, or a secret).
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


class ProviderPool:
    """Resolves ``ProviderLike`` values to providers, building each spec only once.

    Providers built here (from specs) are owned by the pool and closed by
    :meth:`aclose`; instances passed in belong to their owner and stay open.
    """

    def __init__(self, settings: ProviderSettings, default: ProviderLike | None) -> None:
        self._settings = settings
        self._default = default if default is not None and not isinstance(default, str) else None
        self._default_spec = default if isinstance(default, str) else None
        self._built: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def resolve(self, provider: ProviderLike | None) -> Provider:
        """The provider to use for ``provider`` (None: the session's default)."""
        if provider is not None and not isinstance(provider, str):
            check_provider(provider)
            return provider
        if provider is None:
            if self._default is not None:
                return self._default
            key = self._default_spec or self._settings.spec
        else:
            key = provider
        # The stored options (e.g. a base_url) belong to the stored provider: another
        # model of it gets them (switching models on one gateway), a different provider
        # does not. Each reply records the server it came from (metadata.endpoint), so
        # an arm named after a hosted model but answered by the session's server says so.
        same = parse_spec(key)[0] == parse_spec(self._settings.spec)[0]
        options: Mapping[str, Any] = self._settings.params if same else {}
        with self._lock:
            built = self._built.get(key)
            if built is None:
                built = _built(key, options)
                self._built[key] = built
            return built

    async def aclose(self) -> None:
        """Close the providers the pool built (best effort: closing never raises)."""
        with self._lock:
            built = list(self._built.values())
            self._built.clear()
        for provider in built:
            with contextlib.suppress(Exception):
                await provider.aclose()
