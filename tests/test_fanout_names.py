"""The branch names fan_out makes for unnamed variants are valid, readable, distinct and
the same in every run, whatever the values that differ (lists, "org/model", spaces)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_session_support import DEADLINE

from cm_notebook.fanout import plan_variants
from cm_notebook.ids import branch_name_key, validate_branch_name
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


@pytest.mark.parametrize(
    ("variants", "names"),
    [
        ([{"stop": ["END"]}, {"stop": ["STOP"]}], ["main-stop-END", "main-stop-STOP"]),
        (
            [{"model": "org/small"}, {"model": "org/large"}],
            ["main-model-org-small", "main-model-org-large"],
        ),
        (
            [{"stop": ["END"], "temperature": 0}, {"stop": ["END", "STOP"], "temperature": 0}],
            ["main-stop-END", "main-stop-END-STOP"],
        ),
        ([{"stop": "the end"}, {"stop": "a..b"}], ["main-stop-the-end", "main-stop-a.b"]),
    ],
)
def test_variants_differing_in_any_value_fan_out_on_readable_branches(
    new_session: Callable[..., ContextSession], variants: list[dict[str, Any]], names: list[str]
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("hi").result(DEADLINE)
    comparison = session.fan_out("Name a colour.", variants).result(DEADLINE)
    assert comparison.branches == names
    assert all(r.text == "echo: Name a colour." for r in comparison.results)
    for name, variant in zip(names, variants, strict=True):
        assert session.branches[name].params == variant


def test_auto_names_are_distinct_by_look_and_the_same_every_time() -> None:
    # Values that only differ in what a name cannot hold, or in case, still get names
    # of their own; the names are valid even for values a name cannot show at all.
    variants: list[dict[str, Any]] = [
        {"stop": ["a/b"]},
        {"stop": "a b"},
        {"stop": "A-B"},
        {"stop": "\x00[]"},
        {"stop": "Привет"},
        {"seed": -1},
    ]
    first = [plan.branch for plan in plan_variants(variants, "main", lambda _name: False)]
    again = [plan.branch for plan in plan_variants(variants, "main", lambda _name: False)]
    assert first == again
    assert first == [
        "main-stop-a-b",
        "main-stop-a-b-2",
        "main-stop-A-B-3",
        "main-stop",
        "main-variant",  # "main-stop-привет" would mix two scripts
        "main-seed--1",  # the sign is kept
    ]
    assert all(validate_branch_name(name) for name in first)
    assert len({branch_name_key(name) for name in first}) == len(first)


def test_auto_names_skip_a_name_that_looks_like_an_existing_branch(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("hi").result(DEADLINE)
    session.branch("MAIN-temperature-0.1", switch=False)  # differs only in case
    comparison = session.fan_out("q", [{"temperature": 0.1}, {"temperature": 0.2}])
    assert comparison.result(DEADLINE).branches == [
        "main-temperature-0.1-2",
        "main-temperature-0.2",
    ]
