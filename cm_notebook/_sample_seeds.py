"""Seeds that make repeated samples distinct: a sweep's repeats, a fan-out's alike arms.

A provider whose default seed is fixed (the built-in model's is 0) gives the same text
to every request alike, whatever its temperature: three arms of one fan-out, or the
repeats of a sweep's variant, would be one sample counted three times, and a stability
of 100% would say nothing about the model. Each such request is given a seed of its own,
numbered from 0 in order, and stored with the branch's parameters like any other: the
reply records it, and running the same study again reproduces the samples.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .model import ProviderSettings
from .providers import Provider
from .providers.pool import ProviderLike

__all__ = ["seed_alike", "takes_seed"]


def takes_seed(
    resolve: Callable[[ProviderLike | None], Provider],
    provider: ProviderLike | None,
    settings: dict[str, Any],
) -> bool:
    """Whether samples made with ``settings`` (``create_branch`` keywords) may be given a
    seed: they set none, and the provider that answers (``provider``, else the one the
    settings name, else the session's; ``resolve`` builds it) takes one."""
    if "seed" in settings["params"]:
        return False
    answering = provider if provider is not None else settings["provider"]
    if isinstance(answering, ProviderSettings):
        answering = answering.spec
    return "seed" in getattr(resolve(answering), "parameters", ())


def seed_alike(
    settings: Sequence[dict[str, Any]],
    providers: Sequence[ProviderLike | None],
    seedable: Sequence[bool],
) -> list[dict[str, Any]]:
    """``settings`` with ``seed`` 0, 1, 2... in order added to each that is ``seedable``
    and alike another seedable one (same system prompt, provider and parameters); the
    others as they are, so arms that differ are sent as they were asked for.

    ``providers``: the provider each was given (None: the one its settings name). Two
    Provider instances are two providers even where their specs are alike (two scripted
    providers with different scripts, say)."""
    keys = [
        _likeness(each, provider) if ok else None
        for each, provider, ok in zip(settings, providers, seedable, strict=True)
    ]
    alike = Counter(key for key in keys if key is not None)
    taken: Counter[str] = Counter()
    out = []
    for each, key in zip(settings, keys, strict=True):
        if key is not None and alike[key] > 1:
            each = {**each, "params": {**each["params"], "seed": taken[key]}}
            taken[key] += 1
        out.append(each)
    return out


def _likeness(settings: dict[str, Any], given: ProviderLike | None) -> str:
    # What makes two samples alike, as one comparable text.
    provider = settings["provider"]
    return json.dumps(
        [
            settings["system_prompt"],
            provider.model_dump(mode="json") if provider is not None else None,
            # An instance by its identity: the calls compared are made together.
            id(given) if isinstance(given, Provider) else None,
            settings["params"],
        ],
        sort_keys=True,
        default=repr,
    )
