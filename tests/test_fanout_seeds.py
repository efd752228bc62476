"""Fan-out arms drawn as samples: alike arms get seeds of their own, so a provider whose
default seed is fixed does not answer them all with one text."""

from __future__ import annotations

from collections.abc import Callable

from test_session_support import DEADLINE

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

NewSession = Callable[..., ContextSession]


def sent_seeds(session: ContextSession, branches: list[str]) -> list[object]:
    return [session.to_records(b)[-1]["parameters"].get("seed") for b in branches]


def test_alike_arms_are_sampled_with_seeds_of_their_own(new_session: NewSession) -> None:
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    samples = [{"temperature": 0.9, "branch": f"sample-{n}"} for n in range(3)]
    fan = session.fan_out("Write a sentence.", [*samples, {"temperature": 0.2}])
    fan.result(DEADLINE)
    # Numbered in order, like a sweep's repeats; the arm unlike the others is sent as
    # asked (no seed).
    assert sent_seeds(session, fan.branches) == [0, 1, 2, None]
    assert sorted(request.params.get("seed", -1) for request in fake.requests) == [-1, 0, 1, 2]
    # Stored with the arm, so a follow-up (or the same study run again) samples alike.
    assert session.branches["sample-2"].params == {"temperature": 0.9, "seed": 2}
    session.send("Another.", branch="sample-2").result(DEADLINE)
    assert fake.last_request.params == {"temperature": 0.9, "seed": 2}

    # Arms that differ keep comparing what they were asked to: no seed is added.
    fan = session.fan_out("Q", [{"temperature": 0.1}, {"temperature": 0.5}], branch="main")
    fan.result(DEADLINE)
    assert sent_seeds(session, fan.branches) == [None, None]


def test_a_seed_chosen_by_the_arm_or_its_branch_is_kept(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider())
    fan = session.fan_out("Q", [{"seed": 5}, {"seed": 5}])
    fan.result(DEADLINE)
    assert sent_seeds(session, fan.branches) == [5, 5]
    # An arm's None asks for the provider's default seed.
    fan = session.fan_out("Q", [{"seed": None}, {"seed": None}])
    fan.result(DEADLINE)
    assert sent_seeds(session, fan.branches) == [None, None]
    session.branch("fixed", seed=9)
    fan = session.fan_out("Q", [{}, {}], branch="fixed")
    fan.result(DEADLINE)
    assert sent_seeds(session, fan.branches) == [9, 9]


def test_arms_whose_provider_takes_no_seed_are_sent_without_one(
    new_session: NewSession,
) -> None:
    plain = ScriptedProvider(parameters={"temperature"})
    session = new_session(provider=plain)
    fan = session.fan_out("Q", [{"temperature": 0.9}, {"temperature": 0.9}])
    fan.result(DEADLINE)
    assert [dict(request.params) for request in plain.requests] == [{"temperature": 0.9}] * 2


def test_arms_of_two_provider_instances_are_not_alike(new_session: NewSession) -> None:
    # Two instances of one kind (two scripted models with their own replies, two
    # local models) are compared, not sampled.
    first, second = ScriptedProvider(["one"]), ScriptedProvider(["two"])
    session = new_session(provider=ScriptedProvider())
    fan = session.fan_out("Q", [first, second])
    fan.result(DEADLINE)
    assert sent_seeds(session, fan.branches) == [None, None]
    fan = session.fan_out("Q", [{"provider": first}, {"provider": first}])
    fan.result(DEADLINE)
    assert sent_seeds(session, fan.branches) == [0, 1]
