"""Model providers and the registry that finds them by name.

A provider is named by a *spec* string, ``"<name>"`` or ``"<name>:<model>"``::

    local                       the built-in offline model
    openai:gpt-4o-mini          a name and a model
    openai:org/model:tag        everything after the first colon is the model
    anthropic:claude-haiku-4-5
    scripted                    the deterministic fake from cm_notebook.testing

Names resolve through the ``cm_notebook.providers`` entry-point group, so a plugin
package adds a provider by declaring an entry point, no code here changes::

    [project.entry-points."cm_notebook.providers"]
    mine = "my_package.provider:MyProvider"

The entry point names a class (or any object) with a ``from_spec(model, **options)``
classmethod that returns a :class:`Provider`. For notebooks and tests,
:func:`register_provider` adds a name at runtime without packaging anything.

Provider modules are imported only when their name is first requested, so
``import cm_notebook`` never pulls in ``openai``, ``anthropic`` or ``xllamacpp``;
a provider whose optional dependency is missing fails with
:class:`~cm_notebook.errors.ProviderNotInstalledError` naming the pip extra.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

from ..errors import InvalidInputError, ProviderNotInstalledError, UnknownProviderError
from .base import (
    ChatRequest,
    Finish,
    Provider,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    Usage,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ChatRequest",
    "Finish",
    "Provider",
    "ProviderFactory",
    "ReasoningBlock",
    "ReasoningDelta",
    "RefusalDelta",
    "StreamChunk",
    "TextDelta",
    "ToolCallRequest",
    "ToolSpec",
    "Usage",
    "available_providers",
    "get_provider",
    "parse_spec",
    "refresh_providers",
    "register_provider",
    "unregister_provider",
]

#: The entry-point group that provider plugins register in.
ENTRY_POINT_GROUP = "cm_notebook.providers"

# Names are identifiers people type in magics (``%cm --provider openai:gpt-4o``), so
# keep them to a conservative, shell- and URL-safe alphabet.
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}\Z")

_SPEC_EXAMPLES = (
    "'local', 'openai:gpt-4o-mini', 'anthropic:claude-haiku-4-5', 'scripted' "
    "(a provider name, optionally followed by ':' and a model)"
)


# The built-in providers that need a model named (no default model), with an example.
_NO_DEFAULT_MODEL = {"openai": "openai:gpt-4o-mini", "anthropic": "anthropic:claude-haiku-4-5"}
# The built-in providers that have one (``local``: the bundled model).
_DEFAULT_MODEL = frozenset({"local", "scripted"})


def _name_a_model(name: str) -> str:
    # What to do about a spec with nothing after its colon: leaving the colon out helps
    # only a provider with a default model (a bare 'openai' fails with "needs a model").
    if name in _NO_DEFAULT_MODEL:
        return (
            f"the {name} provider has no default model: name one, e.g. {_NO_DEFAULT_MODEL[name]!r}"
        )
    if name in _DEFAULT_MODEL:
        return f"leave out the colon to use its default model ({name!r}), or name one after it"
    return (
        f"name a model after it ({name + ':<model>'!r}), or leave out the colon if the "
        f"provider has a default model; e.g. {_SPEC_EXAMPLES}"
    )


@runtime_checkable
class _FromSpec(Protocol):
    def from_spec(self, model: str | None, /, **options: Any) -> Provider: ...


#: What :func:`register_provider` accepts: a class (or object) with a
#: ``from_spec(model, **options)`` classmethod, or a plain callable with that signature.
ProviderFactory = _FromSpec | Callable[..., Provider]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a provider spec into ``(name, model)``.

    Only the first colon separates: model names may contain colons and slashes.
    The name is case-insensitive and returned lower-cased.

    >>> parse_spec("local")
    ('local', None)
    >>> parse_spec("openai:gpt-4o-mini")
    ('openai', 'gpt-4o-mini')
    >>> parse_spec("openai:org/model:tag")
    ('openai', 'org/model:tag')

    Raises :class:`~cm_notebook.errors.InvalidInputError` for anything else.
    """
    if not isinstance(spec, str):
        raise InvalidInputError(
            f"a provider spec must be a string, not {type(spec).__name__}; e.g. {_SPEC_EXAMPLES}"
        )
    text = spec.strip()
    name, colon, model = text.partition(":")
    name = name.lower()
    if not _NAME.match(name):
        raise InvalidInputError(
            f"invalid provider spec {spec!r}: the name must start with a letter and use only "
            f"a-z, 0-9, '_' and '-'; e.g. {_SPEC_EXAMPLES}"
        )
    if not colon:
        return name, None
    # Model names are opaque to us (paths, tags, org/model), but an empty one is a typo
    # and a control character can only be a mistake (or an injection attempt).
    if not model.strip():
        raise InvalidInputError(
            f"invalid provider spec {spec!r}: nothing after ':'; {_name_a_model(name)}"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in model):
        raise InvalidInputError(f"invalid provider spec {spec!r}: the model contains control chars")
    return name, model.strip()


# Runtime registrations win over entry points of the same name, so a notebook can swap
# a built-in for an instrumented variant without reinstalling anything.
_runtime: dict[str, ProviderFactory] = {}
# Loaded entry-point targets, so each plugin module is imported once per process.
_loaded: dict[str, ProviderFactory] = {}
_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _entry_points() -> dict[str, EntryPoint]:
    # Reading installed distributions' metadata costs milliseconds; do it once
    # (refresh_providers() forgets it after a plugin is installed into a running kernel).
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name.lower(), ep)
    return found


def refresh_providers() -> None:
    """Forget the cached entry points, e.g. after ``pip install``-ing a provider plugin
    into a running kernel. Runtime registrations are kept."""
    _entry_points.cache_clear()
    with _lock:
        _loaded.clear()


def available_providers() -> dict[str, EntryPoint | ProviderFactory]:
    """Every known provider name, sorted: entry points (not yet imported) and runtime
    registrations (which replace an entry point of the same name).

    Nothing is imported: a value is an :class:`importlib.metadata.EntryPoint` until its
    provider is first used.
    """
    merged: dict[str, EntryPoint | ProviderFactory] = dict(_entry_points())
    with _lock:
        merged.update(_runtime)
    return dict(sorted(merged.items()))


def register_provider(name: str, factory: ProviderFactory) -> None:
    """Make ``name`` resolve to ``factory`` in this process (notebooks, tests).

    ``factory`` is a class with a ``from_spec(model, **options)`` classmethod, or a
    callable ``factory(model, **options) -> Provider``. Registering a name again replaces
    the earlier registration; it also shadows an installed entry point of that name.

    >>> from cm_notebook.testing import ScriptedProvider
    >>> register_provider("fake", ScriptedProvider)
    >>> get_provider("fake").name
    'scripted'
    """
    key, model = parse_spec(name)
    if model is not None:
        raise InvalidInputError(f"register a provider under a bare name, not {name!r}")
    if not (isinstance(factory, _FromSpec) or callable(factory)):
        raise InvalidInputError(
            f"a provider factory must have a from_spec() classmethod or be callable, "
            f"not {type(factory).__name__}"
        )
    with _lock:
        _runtime[key] = factory


def unregister_provider(name: str) -> None:
    """Undo :func:`register_provider`; an entry point of that name becomes visible again.

    Unknown names are ignored so that test teardown can call this unconditionally.
    """
    key, _ = parse_spec(name)
    with _lock:
        _runtime.pop(key, None)


def _install_hint(name: str, ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    dist_name = getattr(dist, "name", None)
    if dist_name is None or dist_name.replace("-", "_").lower() == "cm_notebook":
        # A built-in: its extra, where cm_notebook has one of that name (for another,
        # pip only warns that the extra does not exist, and installs nothing).
        extras = dist.metadata.get_all("Provides-Extra") if dist is not None else None
        if not extras or name in extras:
            return f"install it with: pip install 'cm_notebook[{name}]'"
        return "reinstall cm_notebook: pip install --force-reinstall cm_notebook"
    # A third-party plugin: its own dependencies are what is missing.
    return f"install it with: pip install --force-reinstall {dist_name}"


def _registered_hint(factory: ProviderFactory) -> str:
    # A factory given to register_provider(): no package declares what it needs, so
    # the remedy names the code that registered it, whose author knows.
    where = getattr(factory, "__module__", None) or type(factory).__module__
    return (
        "install the package that provides that module (the provider was registered "
        f"with register_provider(), from {where})"
    )


def _not_installed(name: str, remedy: str, exc: ImportError) -> ProviderNotInstalledError:
    return ProviderNotInstalledError(
        f"the {name!r} provider needs an optional dependency that is not installed "
        f"({exc}); {remedy}",
        provider=name,
    )


def _resolve(name: str) -> tuple[ProviderFactory, Callable[[], str]]:
    """The factory for ``name``, and the remedy for a dependency it lacks."""
    with _lock:
        runtime = _runtime.get(name)
        loaded = _loaded.get(name)
    if runtime is not None:
        return runtime, functools.partial(_registered_hint, runtime)
    ep = _entry_points().get(name)
    if loaded is not None:
        if ep is None:  # refresh_providers() forgot its entry point meanwhile
            return loaded, functools.partial(_registered_hint, loaded)
        return loaded, functools.partial(_install_hint, name, ep)
    if ep is None:
        known = ", ".join(available_providers()) or "(none)"
        raise UnknownProviderError(
            f"no provider named {name!r}; known providers: {known}. Install a plugin that "
            "declares it, or call cm_notebook.providers.register_provider()",
            provider=name,
        )
    try:
        target: ProviderFactory = ep.load()
    except ImportError as exc:
        raise _not_installed(name, _install_hint(name, ep), exc) from exc
    with _lock:
        _loaded[name] = target
    return target, functools.partial(_install_hint, name, ep)


def get_provider(spec: str | Provider, /, **options: Any) -> Provider:
    """Build the provider a spec names, e.g. ``get_provider("openai:gpt-4o-mini")``.

    ``options`` go to the provider's ``from_spec`` (e.g. ``base_url=``, ``timeout=``).
    A :class:`Provider` instance is returned unchanged, so every API that takes a spec
    also takes a ready-made provider (such as a scripted fake shared with a test).

    Raises :class:`~cm_notebook.errors.InvalidInputError` for a malformed spec,
    :class:`~cm_notebook.errors.UnknownProviderError` for an unknown name and
    :class:`~cm_notebook.errors.ProviderNotInstalledError` when an optional extra is
    missing.
    """
    if not isinstance(spec, str):
        if isinstance(spec, Provider):
            if options:
                raise InvalidInputError(
                    "options cannot be applied to a provider instance; configure it when "
                    f"you create it (got {sorted(options)})"
                )
            return spec
        raise InvalidInputError(
            f"expected a provider spec or a Provider, not {type(spec).__name__}; "
            f"e.g. {_SPEC_EXAMPLES}"
        )
    name, model = parse_spec(spec)
    factory, hint = _resolve(name)
    make = factory.from_spec if isinstance(factory, _FromSpec) else factory
    try:
        provider = make(model, **options)
    except ImportError as exc:
        # Providers may import their SDK lazily, at construction: the remedy for where
        # the provider comes from (a cm_notebook extra is only a built-in's).
        raise _not_installed(name, hint(), exc) from exc
    if not isinstance(provider, Provider):
        raise TypeError(
            f"the factory for provider {name!r} returned {type(provider).__name__}, "
            "which does not implement the Provider protocol (name, model, stream, aclose)"
        )
    return provider
