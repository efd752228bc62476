"""Approval policy: which tool calls run at once, wait for a person, or are refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Literal, Protocol, get_args

from ..errors import InvalidInputError

__all__ = ["POLICIES", "Policy", "ToolPolicy", "check_policy"]

#: What happens to a tool call: ``"ask"`` waits for approval, ``"auto"`` runs at once,
#: ``"deny"`` refuses it (the model is told it was denied).
Policy = Literal["ask", "auto", "deny"]
POLICIES: tuple[Policy, ...] = get_args(Policy)

_GLOB_CHARS = frozenset("*?[")
# Ties between equally long glob rules are broken toward caution.
_CAUTION: dict[Policy, int] = {"deny": 2, "ask": 1, "auto": 0}


def check_policy(value: object, where: str = "policy") -> Policy:
    """Return ``value`` if it is one of ``"ask"``, ``"auto"``, ``"deny"``; else raise.

    >>> check_policy("auto")
    'auto'
    """
    if value == "ask" or value == "auto" or value == "deny":
        return value
    raise InvalidInputError(f"{where} must be one of 'ask', 'auto', 'deny'; got {value!r}")


@dataclass(frozen=True)
class ToolPolicy:
    """Session-level approval rules.

    ``rules`` maps tool names or :mod:`fnmatch` globs (``"search_*"``, case-sensitive) to
    a policy. :meth:`decide` picks, in order of precedence:

    1. a rule whose key is exactly the tool's name;
    2. the matching glob rule with the longest pattern (the most specific); equally long
       patterns resolve to the most cautious policy (deny > ask > auto);
    3. the tool's own ``policy=`` from :func:`~cm_notebook.tools.tool`;
    4. ``default``.

    Session rules beat the tool's own policy on purpose: the person running the session
    has the last word, e.g. ``{"*": "deny"}`` disables every tool, and ``{"rm_rf": "ask"}``
    reins in a tool whose author chose ``"auto"``.

    >>> policy = ToolPolicy(rules={"search_*": "auto", "search_private": "ask"})
    >>> policy.decide("search_web"), policy.decide("search_private"), policy.decide("rm")
    ('auto', 'ask', 'ask')
    """

    default: Policy = "ask"
    rules: Mapping[str, Policy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_policy(self.default, "ToolPolicy default")
        for key, value in self.rules.items():
            if not isinstance(key, str) or not key:
                raise InvalidInputError(
                    f"ToolPolicy rule keys must be tool names or globs; got {key!r}"
                )
            check_policy(value, f"ToolPolicy rule {key!r}")
        # A private read-only copy: later edits to the caller's dict must not change
        # what was approved.
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))

    def decide(self, tool: str | _HasPolicy) -> Policy:
        """The policy for a tool, given its name or the :class:`~cm_notebook.tools.Tool`.

        Pass the ``Tool`` (not just its name) so its own ``policy=`` is considered.

        >>> ToolPolicy(default="auto").decide("anything")
        'auto'
        """
        if isinstance(tool, str):
            name, own = tool, None
        else:
            name, own = tool.name, tool.policy
        if name in self.rules:
            return self.rules[name]
        globs = [
            (len(pattern), _CAUTION[value], value)
            for pattern, value in self.rules.items()
            if _GLOB_CHARS.intersection(pattern) and fnmatchcase(name, pattern)
        ]
        if globs:
            return max(globs)[2]
        if own is not None:
            return own
        return self.default

    @classmethod
    def coerce(cls, value: ToolPolicy | Policy | Mapping[str, Policy] | None) -> ToolPolicy:
        """Accept the shorthands a user is likely to type for a session's ``approval=``.

        ``None`` -> all defaults (a tool's own ``policy=``, else ``"ask"``); a policy such
        as ``"deny"`` -> that policy for every tool, a tool's own ``policy=`` included
        (the rule ``{"*": "deny"}``: the session has the last word); a mapping -> those
        rules over the ``"ask"`` default. For a fallback that leaves each tool's own
        policy standing, give ``ToolPolicy(default=...)``.

        >>> ToolPolicy.coerce({"search_*": "auto"}).decide("search_web")
        'auto'
        >>> ToolPolicy.coerce("deny").rules
        mappingproxy({'*': 'deny'})
        """
        if value is None:
            return cls()
        if isinstance(value, ToolPolicy):
            return value
        if isinstance(value, str):
            return cls(rules={"*": check_policy(value)})
        if isinstance(value, Mapping):
            return cls(rules=value)
        raise InvalidInputError(
            "policy must be a ToolPolicy, one of 'ask'/'auto'/'deny', or a mapping of tool "
            f"names or globs to those; got {type(value).__name__}"
        )


class _HasPolicy(Protocol):
    # What decide() needs from a Tool; structural, so this module need not import it.
    @property
    def name(self) -> str: ...

    @property
    def policy(self) -> Policy | None: ...
