"""Tools the test Jupyter servers offer (``--CMNotebookApp.tools=server_tools:get_weather``)."""

from __future__ import annotations

from cm_notebook import tool


@tool
def get_weather(city: str, days: int = 1) -> str:
    """Forecast for a city."""
    return f"{city}: sunny for {days} day(s)"


@tool(policy="auto")
def leave_mark(path: str) -> str:
    """Write a file: a tool its author lets run without asking."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("ran")
    return "marked"
