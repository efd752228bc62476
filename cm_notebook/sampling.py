"""How :meth:`~cm_notebook.session.ContextSession.regenerate` makes a *different* reply.

Providers decode greedily unless told otherwise (the bundled local model does so on
purpose, so a run repeats exactly), and a greedy model asked again gives the same
reply again: a regenerate would add an identical sibling. So a regenerate samples: it
sends a fresh random ``seed`` (unless the call gives one: a branch's default seed is not
used, as every regenerate would then send the same one and repeat the reply) and,
unless a temperature was chosen (in the call or as the branch's default),
:data:`REGENERATE_TEMPERATURE`. Both are ordinary generation
parameters, stored in the reply's ``metadata.parameters`` like any other, so the
reply says how it was sampled and can be reproduced by passing them again.

Every built-in provider accepts both: ``local`` (llama.cpp's OpenAI-compatible chat
completions) and ``openai`` take ``seed`` and ``temperature``; ``anthropic`` takes
``temperature`` and leaves ``seed`` out, as it has none.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

__all__ = ["REGENERATE_TEMPERATURE", "for_regenerate"]

#: The temperature a regenerate samples at when none was chosen.
REGENERATE_TEMPERATURE = 0.8


def for_regenerate(params: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (the request's, the branch's defaults merged in) with a sampling
    temperature unless one was chosen, and a new random seed unless ``given`` (the
    regenerate call's own parameters) names one: the branch's is replaced."""
    out = dict(params)
    if out.get("temperature") is None:
        out["temperature"] = REGENERATE_TEMPERATURE
    if given.get("seed") is None:
        out["seed"] = secrets.randbelow(2**31)
    return out
