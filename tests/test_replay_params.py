"""The generation parameters replays, counterfactual edits and fan-out arms send: what
they inherit from the branch they come from, and what they give up."""

from __future__ import annotations

from collections.abc import Callable

from test_session_support import DEADLINE

from cm_notebook import tool
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


def test_a_provider_given_to_a_send_or_regenerate_answers_as_its_own_model(
    new_session: NewSession,
) -> None:
    session = new_session(provider=ScriptedProvider(model="alpha"))
    session.branch("exp", model="alpha-large", temperature=0.3)
    beta = ScriptedProvider(model="beta")
    reply = session.send("q1", branch="exp", provider=beta).result(DEADLINE)
    assert beta.last_request.params == {"temperature": 0.3}
    assert reply.metadata.model == "beta"
    gamma = ScriptedProvider(model="gamma")
    session.regenerate(branch="exp", provider=gamma).result(DEADLINE)
    assert "model" not in gamma.last_request.params
    # Named with the provider, or no provider given: the model asked for is sent.
    session.send("q2", branch="exp", provider=beta, model="beta-large").result(DEADLINE)
    assert beta.last_request.params["model"] == "beta-large"
    alpha = session.send("q3", branch="exp").result(DEADLINE)
    assert alpha.metadata.model == "alpha-large"


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


def test_a_counterfactual_sends_each_turn_with_the_parameters_of_its_original_reply(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    session.branch("exp", temperature=0.7)
    session.send("Pick a number.", temperature=0.0, seed=7).result(DEADLINE)
    session.send("Double it.", seed=7, max_tokens=5).result(DEADLINE)
    session.send("Halve it.", temperature=None).result(DEADLINE)  # the branch's dropped
    sent = [dict(request.params) for request in fake.requests]
    assert sent == [
        {"temperature": 0.0, "seed": 7},
        {"temperature": 0.7, "seed": 7, "max_tokens": 5},
        {},
    ]
    first, reply = session.history()[:2]

    # An edited prompt: it and every later turn are sent as the originals were, so
    # what differs from "exp" is the edit.
    edits = [session.counterfactual(first.id, "Pick an even number.")]
    edits[-1].result(DEADLINE)
    assert [dict(request.params) for request in fake.requests[3:]] == sent
    # An edited reply: the later turns alike.
    edits.append(session.counterfactual(reply.id, "4"))
    edits[-1].result(DEADLINE)
    assert [dict(request.params) for request in fake.requests[6:]] == sent[1:]
    # The system prompt: every turn again, alike.
    edits.append(session.counterfactual("system", "Answer in digits."))
    edits[-1].result(DEADLINE)
    assert [dict(request.params) for request in fake.requests[8:]] == sent
    # The branches keep the defaults of "exp": only the turns' sends differ.
    assert [session.branches[edit.branch].params for edit in edits] == [{"temperature": 0.7}] * 3


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_an_edited_tool_result_is_answered_with_the_parameters_of_its_turn(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("It is 3.")
    session = new_session(provider=fake, tools=[add], approval="auto")
    session.send("What is 1 + 2?", temperature=0.1, seed=3).result(DEADLINE)
    result = next(m for m in session.history() if m.role == "tool")
    fake.reply("It is 4.")
    session.counterfactual(result.id, "4").result(DEADLINE)
    assert fake.requests[-1].messages[-1].content == "4"
    assert dict(fake.requests[-1].params) == {"temperature": 0.1, "seed": 3}


def test_a_parameter_the_branch_provider_does_not_take_is_left_out_of_the_turn(
    new_session: NewSession,
) -> None:
    # A turn answered by another provider, with a parameter only that one takes: sent
    # again by the branch's provider, without it (not refused).
    plain = ScriptedProvider(parameters={"temperature"})
    session = new_session(provider=plain)
    session.send("Q1").result(DEADLINE)
    session.send("Q2", provider=ScriptedProvider(), temperature=0.2, top_k=5).result(DEADLINE)
    session.counterfactual(session.history()[0].id, "Q1, again").result(DEADLINE)
    assert [dict(request.params) for request in plain.requests[1:]] == [{}, {"temperature": 0.2}]
