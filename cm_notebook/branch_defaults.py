"""A branch's own defaults: system prompt, provider and generation parameters.

``session.branch("terse", system="Answer in five words.", temperature=0.2)`` stores
them on the :class:`~cm_notebook.model.Branch`; every send on that branch then uses
them unless the call names its own. Branches made from a branch (edits, fan-out arms,
``edit_system`` forks) start with its defaults.

Only a provider *spec* can be stored. A :class:`~cm_notebook.providers.Provider`
instance given as a branch's default (e.g. a ScriptedProvider in a test, or a fan-out
arm's provider) is kept by :class:`BranchDefaults` for as long as its session lives;
a reopened session builds the provider from the stored spec.

An instance is kept for the branch it was given to, not for its name: another process
may delete that branch and make a new one of the same name with a provider of its own
(which this process learns of by a signal, or not at all if it was missed). The kept
instance is tied to the branch's ``created_at``, so a branch made again under the name
answers with its stored provider, as it does in every other process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from .errors import InvalidInputError
from .model import Branch, ContextMetadata, ProviderSettings
from .params import GenerationParams, check_new_parameters
from .providers import Provider
from .providers.pool import ProviderLike, check_buildable, check_spec, spec_of

__all__ = ["BranchDefaults", "branch_settings"]


def branch_settings(
    system: object, provider: ProviderLike | None, params: Mapping[str, Any]
) -> dict[str, Any]:
    """A branch's own defaults as ``create_branch`` keywords, validated like ``send()``'s.

    Raises InvalidInputError for a system prompt that is not text, an unknown provider
    spec or bad generation parameters, PermanentProviderError for a spec its provider
    refuses (a model file that is not there).
    """
    if system is not None and not isinstance(system, str):
        raise InvalidInputError(f"system prompt must be a string, got {type(system).__name__}")
    settings = None
    if provider is not None:
        if isinstance(provider, str):
            provider = check_spec(provider)
            check_buildable(provider)  # say, a model file that is not there
        spec = provider if isinstance(provider, str) else spec_of(provider)
        settings = ProviderSettings(spec=spec)
    checked = GenerationParams.check(params)
    check_new_parameters(checked)
    return {"system_prompt": system, "provider": settings, "params": checked}


class BranchDefaults:
    """The branch defaults of one session; thread-safe.

    ``resolve`` turns a provider spec (or None: the session's default) into a provider.
    """

    def __init__(self, resolve: Callable[[ProviderLike | None], Provider]) -> None:
        self._resolve = resolve
        # Branch name -> the instance and the created_at of the branch it was given to.
        self._live: dict[str, tuple[Provider, datetime]] = {}
        self._lock = threading.Lock()

    def remember(self, branch: Branch, provider: ProviderLike | None) -> None:
        """Keep ``provider`` as the default of ``branch`` (as just created or read) if it
        is an instance (specs are stored)."""
        if provider is not None and not isinstance(provider, str):
            with self._lock:
                self._live[branch.name] = (provider, branch.created_at)

    def pass_on(self, metadata: ContextMetadata, source: str, branch: Branch) -> None:
        """Give ``branch``, just made from ``source`` without a provider of its own,
        the instance kept for ``source`` (as ``metadata`` shows it), if there is one."""
        kept = self._kept(metadata, source)
        if kept is not None:
            self.remember(branch, kept)

    def forget(self, branch: str) -> None:
        """Drop what is kept for a deleted branch."""
        with self._lock:
            self._live.pop(branch, None)

    def inherit(self, metadata: ContextMetadata, source: str) -> dict[str, Any]:
        """The defaults of ``source`` as ``create_branch`` keywords for a branch made from
        it (its provider instance, if any, is given by :meth:`pass_on` once made)."""
        found = metadata.branches.get(source)
        if found is None:
            return {"system_prompt": None, "provider": None, "params": {}}
        return {
            "system_prompt": found.system_prompt,
            "provider": found.provider,
            "params": dict(found.params),
        }

    def _kept(self, metadata: ContextMetadata, name: str) -> Provider | None:
        # The instance kept for the branch ``metadata`` calls ``name``: only if it is the
        # very branch it was given to. One made again under the name elsewhere (after a
        # delete) answers with its stored provider; the entry stays, as ``metadata``
        # may be older than the branch it was kept for.
        found = metadata.branches.get(name)
        with self._lock:
            kept = self._live.get(name)
        if found is None or kept is None or kept[1] != found.created_at:
            return None
        return kept[0]

    def for_request(
        self,
        metadata: ContextMetadata,
        branch: str,
        provider: ProviderLike | None,
        params: Mapping[str, Any],
    ) -> tuple[Provider, dict[str, Any]]:
        """The provider and generation parameters of a send on ``branch``.

        The call's own win; then the branch's; then the session's. A parameter given as
        None drops the branch's value (the provider's default applies). A provider given
        to the call answers as its own model: the branch's ``model`` parameter (which
        providers let win over their own) is not sent unless the call names one.
        """
        found = metadata.branches.get(branch)
        inherited = dict(found.params) if found is not None else {}
        if provider is not None and "model" not in params:
            inherited.pop("model", None)
        merged = {**inherited, **params}
        if provider is None:
            provider = self._kept(metadata, branch)
            if provider is None and found is not None and found.provider is not None:
                provider = found.provider.spec
        chosen = self._resolve(provider)
        # Checked against the provider that will answer: it names what it accepts.
        checked = GenerationParams.check(merged, chosen)
        check_new_parameters(params)  # the call's own: the branch's were checked when set
        return chosen, checked
