"""A message's metadata without secrets, the model's own words kept as it wrote them.

An error body, parameters or failed attempts' errors may quote a key a server echoed,
and are redacted when stored or exported. What the model wrote is the conversation's
data, like a message's text: its reasoning, the signed thinking blocks an API must get
back unaltered (their signature covers their text), tool-call arguments it wrote as
text that is no JSON object, and a failed attempt's text and reasoning.
"""

from __future__ import annotations

from typing import Any

from .redact import redact

# The metadata fields, and the fields of each failed attempt, that the model wrote.
MODEL_OUTPUT = ("reasoning", "reasoning_blocks", "tool_arguments_text")
ATTEMPT_OUTPUT = ("text", "reasoning")


def redact_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` (a message's, as JSON) with secrets redacted but the model's output."""
    redacted: dict[str, Any] = redact(metadata)
    for name in MODEL_OUTPUT:
        if name in metadata:
            redacted[name] = metadata[name]
    attempts = metadata.get("failed_attempts")
    kept_attempts = redacted.get("failed_attempts")
    if isinstance(attempts, list) and isinstance(kept_attempts, list):
        for attempt, kept in zip(attempts, kept_attempts, strict=False):
            if isinstance(attempt, dict) and isinstance(kept, dict):
                for name in ATTEMPT_OUTPUT:
                    if name in attempt:
                        kept[name] = attempt[name]
    return redacted
