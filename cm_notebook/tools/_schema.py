"""Making pydantic's JSON schema provider-ready: no titles, no references where avoidable.

Providers take JSON schema in ``parameters``, but smaller ones (and local models reading
the schema in a prompt) cope badly with ``$ref``, and ``title`` keys only repeat the
property names. So titles are dropped and ``$defs`` are inlined unless a type refers to
itself (then the references are kept, as inlining would never end).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["describe_schema", "provider_schema"]

# Keys whose values map names to subschemas (not schemas themselves).
_NAME_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
# Keys whose values are data, never schemas: a default may well contain a "title" key.
_DATA_KEYS = frozenset({"default", "enum", "const", "examples", "required"})
_DEFS_PREFIX = "#/$defs/"

Schema = dict[str, Any]


def provider_schema(raw: Mapping[str, Any]) -> Schema:
    """The object schema sent to providers, from a pydantic model's JSON schema.

    Always has ``type``, ``properties``, ``required`` and ``additionalProperties: false``.

    >>> provider_schema({"title": "A", "type": "object",
    ...     "properties": {"title": {"title": "Title", "type": "string"}},
    ...     "required": ["title"]})["properties"]
    {'title': {'type': 'string'}}
    """
    schema = _strip_titles(_inline_refs(dict(raw)))
    result: Schema = {
        "type": "object",
        "properties": schema.get("properties", {}),
        "required": list(schema.get("required", [])),
        "additionalProperties": False,
    }
    if "$defs" in schema:
        result["$defs"] = schema["$defs"]
    return result


def describe_schema(schema: Mapping[str, Any]) -> str:
    """A few words saying what a (title-free) schema accepts, for error messages.

    >>> describe_schema({"type": "array", "items": {"type": "integer"}})
    'expected array of integer'
    """
    return "expected " + _describe(schema)


def _describe(schema: Mapping[str, Any]) -> str:
    if "enum" in schema:
        return " or ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        return f"array of {_describe(schema['items'])}"
    if kind == "object" and isinstance(schema.get("properties"), Mapping):
        return "object with keys " + ", ".join(schema["properties"])
    return str(kind) if isinstance(kind, str) else "a JSON value"


def _map_subschemas(schema: Mapping[str, Any], fn: Callable[[Schema], Schema]) -> Schema:
    """Apply ``fn`` to each direct subschema of ``schema``, leaving data alone."""
    out: Schema = {}
    for key, value in schema.items():
        if key in _DATA_KEYS:
            out[key] = value
        elif key in _NAME_MAPS and isinstance(value, dict):
            out[key] = {k: fn(v) if isinstance(v, dict) else v for k, v in value.items()}
        elif isinstance(value, dict):
            out[key] = fn(value)
        elif isinstance(value, list):
            out[key] = [fn(v) if isinstance(v, dict) else v for v in value]
        else:
            out[key] = value
    return out


def _strip_titles(schema: Schema) -> Schema:
    kept = {k: v for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    return _map_subschemas(kept, _strip_titles)


class _KeepRefs(Exception):
    """A reference that cannot be inlined: recursive, or not into ``$defs``."""


def _inline_refs(schema: Schema) -> Schema:
    defs = schema.get("$defs")
    if not isinstance(defs, dict):
        return schema

    def resolve(node: Schema, seen: frozenset[str]) -> Schema:
        ref = node.get("$ref")
        if ref is None:
            mapped = _map_subschemas(node, lambda sub: resolve(sub, seen))
            discriminator = mapped.get("discriminator")
            if isinstance(discriminator, dict) and "mapping" in discriminator:
                # Its mapping points into $defs, which inlining removes: only the
                # property name stays (each inlined choice names its own value).
                mapped["discriminator"] = {k: v for k, v in discriminator.items() if k != "mapping"}
            return mapped
        key = ref[len(_DEFS_PREFIX) :] if isinstance(ref, str) else ""
        if not (isinstance(ref, str) and ref.startswith(_DEFS_PREFIX)) or key not in defs:
            raise _KeepRefs(ref)  # not ours to resolve
        if key in seen:
            raise _KeepRefs(ref)  # recursive: inlining would never end
        target = resolve(defs[key], seen | {key})
        # Keywords next to the $ref (e.g. a field's description) win over the target's.
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **_map_subschemas(siblings, lambda sub: resolve(sub, seen))}

    try:
        return resolve({k: v for k, v in schema.items() if k != "$defs"}, frozenset())
    except _KeepRefs:
        return schema
