"""Validation of the public arguments of sending: message text and generation parameters.

Generation parameters are checked in two steps. :meth:`GenerationParams.check` checks
the values every provider shares (``temperature`` in [0, 2], ``max_tokens`` > 0...)
and refuses secrets (see :mod:`cm_notebook.redact`). Given the provider that will
answer, it also refuses names that provider does not accept, naming
the close match: ``temprature`` would otherwise be stored with the reply and silently
ignored. A provider declares what it accepts in its ``parameters`` attribute (a set of
names); one that declares nothing gets every name passed through.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._json import JSONLimitError, check_depth, non_finite_at
from ._json_values import refuse_unstorable
from ._unicode import without_surrogates
from .errors import InvalidInputError
from .redact import refuse_secrets

__all__ = [
    "COMMON_PARAMETERS",
    "MAX_MESSAGE_CHARS",
    "MAX_PARAMETERS_CHARS",
    "MAX_PROVIDER_OPTIONS_CHARS",
    "GenerationParams",
    "accepted_parameters",
    "check_new_parameters",
    "check_stored_size",
    "validate_text",
]

#: The longest user message accepted (characters); larger inputs are almost always a
#: mistake (a whole file pasted by accident) and would be refused by providers anyway.
MAX_MESSAGE_CHARS = 2_000_000
#: The most characters of JSON generation parameters may take: they are stored with
#: every reply made with them (and a branch's with the context's metadata, rewritten on
#: every branch change), so a few megabytes there would slow every turn and fill the disk.
MAX_PARAMETERS_CHARS = 100_000
#: The same for the provider options stored with a context (a scripted model's script
#: is the long one).
MAX_PROVIDER_OPTIONS_CHARS = 1_000_000

#: The parameters whose values :class:`GenerationParams` checks; most providers take them.
COMMON_PARAMETERS = frozenset({"temperature", "max_tokens", "top_p", "seed", "stop", "model"})


def validate_text(text: object) -> str:
    """Return ``text`` if it is an acceptable message, else raise InvalidInputError.

    Halves of surrogate pairs (half of an emoji, which no UTF-8 file or request can
    hold) come back joined or replaced by U+FFFD (:mod:`cm_notebook._unicode`).
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"message text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError("message text is empty; type something to send")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidInputError(
            f"message text is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}"
        )
    return without_surrogates(text)


class GenerationParams(BaseModel):
    """Generation parameters passed to providers. The common ones are type-checked here;
    :meth:`check` also refuses names the provider does not accept, and values that
    look like secrets."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    temperature: float | None = Field(None, ge=0, le=2)
    # Providers read both as fixed-size integers: larger values came back wrapped round
    # (a max_tokens of 10**12 as a negative number), and llama.cpp takes a seed of -1
    # (2**32 - 1 as an unsigned 32-bit number, too) as "random" and cuts others to 32
    # bits, so the recorded seed would not be the one that sampled the reply.
    max_tokens: int | None = Field(None, gt=0, le=2**31 - 1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 2)
    stop: str | list[str] | None = None
    model: str | None = Field(None, min_length=1)

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        # An empty stop sequence ends every reply at once: an empty "complete" answer
        # that scores and stability would count as a real one.
        if value == "" or (isinstance(value, list) and "" in value):
            raise ValueError("an empty stop sequence would end every reply at once; leave it out")
        return value

    @classmethod
    def check(cls, params: Mapping[str, Any], provider: object = None) -> dict[str, Any]:
        """Validate ``params``; return them without the ``None`` values.

        With ``provider``, names it does not accept (see :func:`accepted_parameters`) are
        refused too, with the close match: "unknown generation parameter 'temprature'
        for provider 'openai'; did you mean 'temperature'? It accepts: ...".

        Raises:
            InvalidInputError: what was wrong; a secret is named by where it is, never
                quoted.
        """
        try:
            check_depth(dict(params))  # stored with the reply: bounded like all JSON
            refuse_unstorable(dict(params), "parameters")
            where = non_finite_at(dict(params))
            if where is not None:  # stored as null: the reply would not say how it was made
                raise InvalidInputError(
                    f"generation parameter {where} is NaN or an infinity, which cannot be "
                    "recorded with the reply; give a finite number, or leave it out"
                )
            refuse_secrets(dict(params), "generation parameters")
            validated = cls.model_validate(dict(params))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidInputError(f"invalid generation parameters: {problems}") from None
        except JSONLimitError as exc:
            raise InvalidInputError(
                f"generation parameters are {exc}; pass flat values (numbers, strings, lists)"
            ) from None
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        checked = validated.model_dump(exclude_none=True)
        if provider is not None:
            _refuse_unknown(params, provider)
        return checked


def accepted_parameters(provider: object) -> frozenset[str] | None:
    """The generation parameters ``provider`` accepts (its ``parameters`` attribute), or
    ``None`` if it does not say (then every name is passed to it)."""
    declared = getattr(provider, "parameters", None)
    if declared is None:
        return None
    return frozenset(str(name) for name in declared)


def _refuse_unknown(params: Mapping[str, Any], provider: object) -> None:
    accepted = accepted_parameters(provider)
    if accepted is None:
        return
    unknown = [name for name in params if name not in accepted]
    if not unknown:
        return
    name = unknown[0]
    label = getattr(provider, "name", type(provider).__name__)
    close = difflib.get_close_matches(str(name), sorted(accepted), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise InvalidInputError(
        f"unknown generation parameter {name!r} for provider {label!r}{hint} It accepts: "
        f"{', '.join(sorted(accepted))}. The list is the provider's `parameters` attribute "
        f"({type(provider).__name__}.parameters, or "
        "cm_notebook.params.accepted_parameters(provider))."
    )


def check_new_parameters(params: Mapping[str, Any]) -> None:
    """InvalidInputError if generation parameters given now (checked by
    :meth:`GenerationParams.check`) are too long to store. Only new input: a branch
    stored with longer ones by an earlier version still answers."""
    check_stored_size(params, "generation parameters", MAX_PARAMETERS_CHARS)


def check_stored_size(value: Mapping[str, Any], what: str, limit: int) -> None:
    """InvalidInputError if ``value`` (JSON-able, checked by ``refuse_unstorable``) takes
    more than ``limit`` characters of JSON, saying how many it takes and what to do."""
    size = len(json.dumps(value, ensure_ascii=False, default=str))
    if size > limit:
        raise InvalidInputError(
            f"{what} take {size:,} characters of JSON; at most {limit:,} are stored with "
            "the conversation: put long data in the messages, or load it in a tool"
        )
