"""Validation of the public arguments of sending: message text and generation parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidInputError
from .model import refuse_secrets

__all__ = ["MAX_MESSAGE_CHARS", "GenerationParams", "validate_text"]

#: The longest user message accepted (characters); larger inputs are almost always a
#: mistake (a whole file pasted by accident) and would be refused by providers anyway.
MAX_MESSAGE_CHARS = 2_000_000


def validate_text(text: object) -> str:
    """Return ``text`` if it is an acceptable message, else raise InvalidInputError."""
    if not isinstance(text, str):
        raise InvalidInputError(f"message text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError("message text is empty; type something to send")
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidInputError(
            f"message text is {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}"
        )
    return text


class GenerationParams(BaseModel):
    """Generation parameters passed to providers. Unknown keys pass through unchanged
    (providers take what they understand), but never keys that look like secrets."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    model: str | None = Field(None, min_length=1)

    @classmethod
    def check(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``params``; return them without the ``None`` values."""
        try:
            refuse_secrets(dict(params), "generation parameters")
            validated = cls.model_validate(dict(params))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidInputError(f"invalid generation parameters: {problems}") from None
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        return validated.model_dump(exclude_none=True)
