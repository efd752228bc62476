"""Sample types and tools shared by the tool tests.

Types used in tool signatures live at module level: a tool resolves its (string)
annotations in its function's module globals, which include these imports.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Literal

from pydantic import BaseModel

from cm_notebook.tools import Tool, tool


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    x: int
    y: int = 0


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


@dataclasses.dataclass
class Pair:
    left: int
    right: str


class Opaque:
    """Not a JSON type."""


class Abort(BaseException):
    """Stands in for KeyboardInterrupt / SystemExit without upsetting the test runner."""


@tool
def weather(city: str, days: int = 3, units: Literal["metric", "imperial"] = "metric") -> str:
    """Forecast for a city."""
    return f"{city}: sunny for {days} days ({units})"


def props(t: Tool[..., Any]) -> dict[str, Any]:
    return dict(t.parameters["properties"])
