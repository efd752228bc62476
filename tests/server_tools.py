"""Tools the test Jupyter server offers (``--CMNotebookApp.tools=server_tools:get_weather``)."""

from __future__ import annotations

from cm_notebook import tool


@tool
def get_weather(city: str, days: int = 1) -> str:
    """Forecast for a city."""
    return f"{city}: sunny for {days} day(s)"
