"""The suite's one table: rows of figures, each beside its target, baseline and ratio.

A :class:`Row` is one figure of one workload: the value measured, the seed system's
published target for it (if it had one), the baseline measured in the same run (so a
busy machine slows both alike), the ratio of the two, and the goal the figure is held
to. :func:`markdown_table` prints the rows; :func:`to_json` gives the same as JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: What a limit is checked against: the figure itself or its ratio to the baseline.
On = Literal["value", "ratio"]


@dataclass(frozen=True)
class Limit:
    """An upper bound: ``on`` (the value or the ratio) must stay below ``below``."""

    on: On
    below: float
    text: str  # how the table shows it, e.g. "< 5 s" or "<= 1.5x"
    inclusive: bool = False

    def check(self, row: Row) -> bool | None:
        """True if met, False if missed, None if the row has no such figure."""
        figure = row.value if self.on == "value" else row.ratio
        if figure is None or math.isnan(figure):
            return None
        return figure <= self.below if self.inclusive else figure < self.below

    def missed_by(self, row: Row) -> float | None:
        """How many times over the limit the figure is (None when met or unknown)."""
        figure = row.value if self.on == "value" else row.ratio
        if self.check(row) is not False or figure is None or self.below <= 0:
            return None
        return figure / self.below


@dataclass
class Row:
    """One figure of one workload. ``ratio`` defaults to value / baseline."""

    workload: str
    figure: str
    value: float | None
    unit: str = ""
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    seed: Limit | None = None
    goal: Limit | None = None
    note: str = ""
    skipped: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratio is None and self.value is not None and self.baseline:
            self.ratio = self.value / self.baseline

    def verdict(self, limit: Limit | None) -> str:
        """``"met"``, ``"missed (x3.2)"``, or ``""`` when there is nothing to judge."""
        if limit is None or self.skipped:
            return ""
        met = limit.check(self)
        if met is None:
            return ""
        if met:
            return "met"
        by = limit.missed_by(self)
        return f"missed (x{by:.1f})" if by is not None else "missed"


def skipped(workload: str, figure: str, reason: str) -> Row:
    """A row that says why it has no figure."""
    return Row(workload=workload, figure=figure, value=None, skipped=reason)


def number(value: float | None, unit: str = "") -> str:
    """A figure with three significant digits and its unit, e.g. ``"23.4 s"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if unit == "B" and magnitude >= 1024:
        for factor, name in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
            if magnitude >= factor:
                return f"{value / factor:.3g} {name}"
    if unit == "s" and 0 < magnitude < 1:
        return number(value * 1000, "ms")
    if unit == "ms" and 0 < magnitude < 1:
        return number(value * 1000, "us")
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude == int(magnitude) and unit in ("", "B", "msgs", "calls"):
        text = f"{value:.0f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def markdown_table(rows: list[Row]) -> str:
    """The rows as a Markdown table (readable in a terminal, pasteable in a README)."""
    header = [
        "workload",
        "figure",
        "value",
        "seed target",
        "baseline (same run)",
        "ratio",
        "goal",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if row.skipped:
            cells = [row.workload, row.figure, row.skipped, "", "", "", ""]
        else:
            seed = f"{row.seed.text}: {row.verdict(row.seed)}" if row.seed else ""
            goal = f"{row.goal.text}: {row.verdict(row.goal)}" if row.goal else ""
            base = number(row.baseline, row.unit) if row.baseline is not None else ""
            if row.baseline_label and base:
                base = f"{base} ({row.baseline_label})"
            elif row.baseline_label:
                base = row.baseline_label
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
            value = number(row.value, row.unit)
            if row.note:
                value = f"{value} ({row.note})" if row.value is not None else row.note
            cells = [row.workload, row.figure, value, seed, base, ratio, goal]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def row_json(row: Row) -> dict[str, Any]:
    """One row as plain JSON, with the verdicts spelled out."""
    data = asdict(row)
    data["seed_verdict"] = row.verdict(row.seed)
    data["goal_verdict"] = row.verdict(row.goal)
    return data


def missed_goals(rows: list[Row]) -> list[Row]:
    """The rows whose goal (or seed target) was missed."""
    return [
        row
        for row in rows
        if row.verdict(row.goal).startswith("missed") or row.verdict(row.seed).startswith("missed")
    ]
