"""The generation parameters replays, counterfactual edits and fan-out arms send: what
they inherit from the branch they come from, and what they give up."""

from __future__ import annotations

from collections.abc import Callable

from test_session_support import DEADLINE

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

NewSession = Callable[..., ContextSession]


def test_a_provider_given_to_a_replay_or_an_arm_answers_as_its_own_model(
    new_session: NewSession,
) -> None:
    # A branch pinned to a model by the "model" parameter: providers let that parameter
    # win over their own model, so inherited, it would have the new provider answer as
    # the old model (and the records say so).
    session = new_session(provider=ScriptedProvider(model="alpha"))
    session.branch("exp", model="alpha-large", temperature=0.3)
    session.send("q1", branch="exp").result(DEADLINE)

    beta = ScriptedProvider(model="beta")
    replay = session.replay("exp", provider=beta)
    replay.result(DEADLINE)
    assert beta.last_request.params == {"temperature": 0.3}
    assert session.branches[replay.branch].params == {"temperature": 0.3}
    assert session.to_records(replay.branch)[0]["model"] == "beta"

    gammas = [ScriptedProvider(model="gamma-1"), ScriptedProvider(model="gamma-2")]
    comparison = session.fan_out("q2", [gammas[0], {"provider": gammas[1]}], branch="exp")
    assert [r.model for r in comparison.result(DEADLINE).results] == ["gamma-1", "gamma-2"]
    assert all("model" not in g.last_request.params for g in gammas)

    # A model named with the provider, and the inherited one where no provider is given,
    # are kept.
    delta = ScriptedProvider(model="delta")
    session.replay("exp", provider=delta, model="delta-large").result(DEADLINE)
    assert delta.last_request.params["model"] == "delta-large"
    arm = session.fan_out("q3", [{"temperature": 0.1}], branch="exp").result(DEADLINE)
    assert arm.results[0].model == "alpha-large"


def test_a_parameter_given_as_none_drops_the_branch_value_in_replays_and_arms(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    session.branch("exp", temperature=0.7, max_tokens=50)
    session.send("q", branch="exp").result(DEADLINE)

    replay = session.replay("exp", temperature=None)
    replay.result(DEADLINE)
    assert fake.last_request.params == {"max_tokens": 50}
    assert session.branches[replay.branch].params == {"max_tokens": 50}

    fan = session.fan_out("q2", [{"temperature": None}, {"temperature": 0.1}], branch="exp")
    fan.result(DEADLINE)
    dropped, lowered = fan.branches
    assert session.to_records(dropped)[-1]["parameters"] == {"max_tokens": 50}
    assert session.to_records(lowered)[-1]["parameters"] == {"max_tokens": 50, "temperature": 0.1}
    assert session.branches[dropped].params == {"max_tokens": 50}
