"""The providers one session uses: its default, and the ones built from specs on demand."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import CMError, InvalidInputError
from ..model import ProviderSettings
from . import available_providers, get_provider, parse_spec
from .base import Provider

__all__ = [
    "ProviderLike",
    "ProviderPool",
    "build_with_options",
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
    """The spec string describing a provider instance (stored in metadata)."""
    check_provider(provider)
    return provider.name if not provider.model else f"{provider.name}:{provider.model}"


def check_spec(spec: str) -> None:
    """Fail early (e.g. at create time) on a malformed or unknown provider spec."""
    name, _model = parse_spec(spec)
    if name not in available_providers():
        get_provider(spec)  # raises UnknownProviderError with the list of known names


def build_with_options(spec: str, options: Mapping[str, Any]) -> Provider | None:
    """``spec`` built with ``options``, to refuse options it does not take (or of the
    wrong type) before they are stored; the caller closes what is returned.

    None when it cannot be built for another reason (say, its extra is not installed):
    the first send says so, as it would without options.

    Raises:
        InvalidInputError: an option the provider does not take, or a bad value.
    """
    try:
        return _built(spec, options)
    except InvalidInputError:
        raise
    except CMError:
        return None


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
    try:
        return get_provider(spec, **options)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"provider {spec!r} cannot be made with the options {sorted(options)}: {exc}"
        ) from None


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
        # model of it gets them, a different provider does not.
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
