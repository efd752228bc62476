"""Replays and counterfactual edits: a branch's user turns run again on a new branch.

``session.replay(branch, provider=..., **params)`` sends the user turns of ``branch``
again, one after the other, on a new branch from the root with another model or other
parameters (its system prompt and defaults are those of ``branch`` unless overridden).
``session.counterfactual(message_id, new_content)`` changes one earlier message (a
user message, a reply, a tool result, or the system prompt with ``"system"``) on a new
branch forked just before it, and runs the downstream user turns again, each with the
generation parameters its original reply recorded (so the edit is what differs). Tools
called on the way go through approval as on any turn. A reply is edited with the
results of its tool calls after it: one whose calls still wait for a decision (or
run) has none yet, and is refused until they are decided.

Both return a :class:`Replay`: ``await replay`` (or ``replay.result()`` in a script)
gives the :class:`~cm_notebook.turn_diff.TurnComparison` of the new branch against the
one it came from. The new branch is labelled ``replay_of`` or ``counterfactual_of``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import events as ev
from . import fsm
from ._auto_names import made_under_free_name
from ._claims import Claim
from ._loop import schedule_on
from ._stand_in_refusals import refuse_stand_in
from .compare import is_answer
from .errors import (
    BranchExistsError,
    BranchNotFoundError,
    BusyError,
    CMError,
    InvalidInputError,
    StateError,
)
from .fanout import Variant, arm_settings
from .ids import new_id, validate_branch_name, validate_new_branch_name
from .model import Branch, ContextMetadata, Message, MessageMetadata, Role, ToolCallStatus
from .params import MAX_MESSAGE_CHARS, accepted_parameters
from .providers.pool import ProviderLike
from .scores import Score
from .turn import Handle, Turn
from .turn_diff import TurnComparison

if TYPE_CHECKING:
    from .session import ContextSession

__all__ = [
    "SYSTEM",
    "Replay",
    "compare_turns",
    "score_value",
    "score_values",
    "start_counterfactual",
    "start_replay",
]

#: The ``message_id`` of :meth:`ContextSession.counterfactual` that edits the system
#: prompt (message ids never take this form).
SYSTEM = "system"

T = TypeVar("T")


class Replay(Handle[TurnComparison]):
    """User turns running again on a new branch; awaiting it gives the per-turn
    comparison against the source branch. A failed turn stops the replay (its error
    is raised); so does a stopped one (its comparison is the result), including one
    stopped in its tool round, whose last reply only asks for tools: no later turn is
    sent without the answer it would build on. What was done stays on the branch.

    ``turns``: each prompt to send, with the generation parameters of its send (on top
    of the branch's defaults; a None drops the branch's value)."""

    def __init__(
        self,
        session: ContextSession,
        source: str,
        branch: str,
        turns: list[tuple[str, dict[str, Any]]],
        first: Turn | None = None,
    ) -> None:
        super().__init__(session._loop)
        self.session = session
        #: The branch replayed or edited, and the new branch.
        self.source, self.branch = source, branch
        self._turns = turns
        self._first = first
        #: The turn running now (None between turns).
        self.turn: Turn | None = first
        self._stopped = False
        self.attach(schedule_on(self._loop, self._drive()), self._stop)

    async def _drive(self) -> TurnComparison:
        finished = self._first is None or _complete(await self._first)
        for text, params in self._turns:
            if self._stopped or not finished:
                break
            self.turn = self.session.send(text, branch=self.branch, **params)
            finished = _complete(await self.turn)
        self.turn = None
        return compare_turns(self.session, self.branch, self.source)

    def _stop(self) -> None:
        # Interrupt the turn running now and send no more.
        self._stopped = True
        if self.turn is not None:
            self.turn.cancel()

    def _goes_on(self) -> str:
        # Through the session: an interrupted `cmp = await session.replay(...)` leaves
        # the cell without this handle. A stopped turn ends the replay (see _drive).
        branch = self.branch
        return (
            f"the replay goes on, on branch {branch!r}: session.stop(branch={branch!r}) "
            "stops its running turn, and with it the replay"
        )

    def __repr__(self) -> str:
        status = "done" if self.done() else "running"
        return f"<Replay {status} {self.source!r} -> {self.branch!r}>"

    def _repr_html_(self) -> str:
        if self.done() and self.exception() is None:
            return self._require_future().result()._repr_html_()
        return f"<code>{html.escape(repr(self))}</code>"


def score_value(score: Score | None) -> float | None:
    """The number a comparison shows for a reply's score: its 1-5 ``score``, else its
    first metric (by name), else None."""
    if score is None:
        return None
    if score.score is not None:
        return float(score.score)
    for _name, value in sorted(score.metrics.items()):
        return float(value)
    return None


def score_values(base: Score | None, other: Score | None) -> tuple[float | None, float | None]:
    """The numbers a comparison shows for two replies' scores, on one scale.

    Their 1-5 ``score`` if both have one, else the first metric (by name) both have. A
    reply with a number where the other has none shows its own :func:`score_value`; two
    scored on nothing in common show nothing, so no delta compares two different metrics.
    """
    alone = score_value(base), score_value(other)
    if base is None or other is None or None in alone:
        return alone
    if base.score is not None and other.score is not None:
        return float(base.score), float(other.score)
    for name in sorted(base.metrics.keys() & other.metrics.keys()):
        return float(base.metrics[name]), float(other.metrics[name])
    return None, None


def compare_turns(session: ContextSession, branch: str, against: str | None) -> TurnComparison:
    """``branch`` turn by turn against ``against`` (default: the baseline, else the branch
    it was replayed or edited from)."""
    name = validate_branch_name(branch)
    branches = session.branches
    for asked in (name, against):
        if asked is not None and asked not in branches:
            raise BranchNotFoundError(
                f"there is no branch {asked!r}; the branches are {sorted(branches)}"
            )
    labels = branches[name].labels
    base = against
    if base is None:
        pinned = session.baseline
        base = pinned if pinned not in (None, name) else None
    source = labels.get("replay_of") or labels.get("counterfactual_of")
    base = base or source
    if base is None:
        raise InvalidInputError(
            f"compare {name!r} against which branch? Give against=..., or pin a baseline "
            "with session.pin_baseline(branch)"
        )
    if base == source and base not in branches:  # the branch it came from, deleted since
        how = "replayed" if "replay_of" in labels else "edited"
        raise BranchNotFoundError(
            f"branch {name!r} was {how} from {base!r}, which has been deleted; compare it "
            f"with another branch: against=... (the branches are {sorted(branches)})"
        )
    base = validate_branch_name(base)
    scores = session.all_scores()
    return TurnComparison.build(
        base,
        session.history(base),
        name,
        session.history(name),
        system_prompts=(session.system_prompt_of(base), session.system_prompt_of(name)),
        scores_of=lambda base_id, other_id: score_values(
            scores.get(base_id) if base_id is not None else None,
            scores.get(other_id) if other_id is not None else None,
        ),
    )


def start_replay(
    session: ContextSession,
    branch: str,
    provider: ProviderLike | None,
    name: str | None,
    params: dict[str, Any],
) -> Replay:
    """Create the replay's branch and start sending ``branch``'s user turns on it."""
    source = validate_branch_name(branch)
    session._head(source)  # BranchNotFoundError for an unknown branch
    users = [m for m in session.history(source) if m.role == "user"]
    for message in users:
        refuse_stand_in(message, f"replay branch {source!r}", "one of its user turns")
    prompts = [m.content for m in users]
    if not prompts:
        raise InvalidInputError(f"branch {source!r} has no user message to replay")
    metadata = session._read_metadata()
    settings = arm_settings(
        session._defaults.inherit(metadata, source),
        Variant(branch=name or source, provider=provider, params=params),
        session._provider,
    )
    labels = {"replay_of": source}

    def make(target: str) -> Branch:
        return session._io.call(
            session._store.create_branch(session.id, target, head=None, labels=labels, **settings)
        )

    created = _new_branch(session, name, f"{source}-replay", "the replay", make)
    if provider is None:
        session._defaults.pass_on(metadata, source, created)
    else:
        # A provider given here must not be shadowed by the source's live instance.
        session._defaults.remember(created, provider)
    session._publish(ev.BranchCreated(branch=created.name, head=None))
    return Replay(session, source, created.name, [(text, {}) for text in prompts])


def start_counterfactual(
    session: ContextSession, message_id: str, new_content: str, name: str | None
) -> Replay:
    """Create the counterfactual branch with the edited message and start the rest."""
    if not isinstance(new_content, str):
        raise InvalidInputError(f"new_content must be a string, got {type(new_content).__name__}")
    if len(new_content) > MAX_MESSAGE_CHARS:  # the limit send() applies to what it stores
        raise InvalidInputError(
            f"new_content is {len(new_content):,} characters; the limit is {MAX_MESSAGE_CHARS:,}"
        )
    if message_id == SYSTEM:
        return _new_system(session, new_content, name)
    original = session.get(message_id)
    refuse_stand_in(original, "edit it in a counterfactual", "the message to edit")
    source = _branch_holding(session, original.id)
    if any(call.status in _UNDECIDED for call in original.tool_calls):
        # Calls a dead process left open are settled first, as the next turn on their
        # branch would settle them (nothing happens while a live turn holds it).
        session._dead_rounds.if_free(source, session._read_metadata().branches[source].head)
        original = session.get(message_id)
    _refuse_undecided_calls(original, source)
    path = session.history(source)
    at = next(i for i, m in enumerate(path) if m.id == original.id)
    if original.role == "user" and not new_content.strip():
        raise InvalidInputError("a user message cannot be empty; type something")
    rest = path[at + 1 :]
    # The rest of the edited message's turn: the tool results of the same round are
    # copied after an edited call or result, then the model answers again.
    turn_end = next((i for i, m in enumerate(rest) if m.role == "user"), len(rest))
    answer_again = original.role in ("user", "tool") or bool(original.tool_calls)
    copied = _same_round(rest[:turn_end]) if original.role != "user" else []
    labels = {"counterfactual_of": source, "edited": original.role}
    metadata = session._read_metadata()
    # Each turn is sent with the parameters its original reply was: what differs from
    # the source branch is then the edit, not parameters left out.
    as_sent = _as_sent(session, metadata, source)
    answered = _reply_in(rest[:turn_end]) or (original if original.role == "assistant" else None)
    for message in rest[turn_end:]:
        if message.role == "user":
            refuse_stand_in(message, "edit this message", "a user turn after it, sent again")
    later = [
        (m.content, as_sent(_reply_in(rest[i + 1 :])))
        for i, m in enumerate(rest)
        if i >= turn_end and m.role == "user"
    ]

    def make(target: str) -> tuple[Claim, Branch]:
        # Under the new branch's claim, which the caller releases or hands to the turn
        # (an error here gives it back).
        with session._claim(target) as claim:
            made = session._io.call(
                session._store.create_branch(
                    session.id,
                    target,
                    head=original.parent_id,
                    forked_from=original.id,
                    labels=labels,
                    **session._defaults.inherit(metadata, source),
                )
            )
        return claim, made

    # BusyError too: another process creating the name holds its claim meanwhile.
    claim, created = _new_branch(
        session, name, f"{source}-cf", "the counterfactual", make, (BranchExistsError, BusyError)
    )
    target = created.name
    try:
        session._defaults.pass_on(metadata, source, created)
        session._publish(ev.BranchCreated(branch=target, head=original.parent_id))
        outcome = _edited_outcome(path[:at], original, new_content)
        head = _append(session, target, _edited(original, new_content, outcome))
        for message in copied:
            head = _append(session, target, _copy(message, head))
        if not answer_again:
            claim.release()
            return Replay(session, source, target, later)
        chosen, generation = session._defaults.for_request(
            session._read_metadata(), target, None, as_sent(answered)
        )
        first = session._start(claim, fsm.Send(), head, chosen, generation)
    except BaseException:
        claim.release()
        raise
    return Replay(session, source, target, later, first)


def _refuse_undecided_calls(original: Message, branch: str) -> None:
    # An edited reply keeps its tool calls, and their results follow it: the results of
    # calls still undecided (or running) do not exist yet. Sent without them, the model
    # would be told each call failed; their decision belongs to the original turn.
    open_calls = [c for c in original.tool_calls if c.status in _UNDECIDED]
    if not open_calls:
        return
    shown = ", ".join(f"{c.id} {c.name!r}: {c.status.value}" for c in open_calls)
    raise StateError(
        f"message {original.id!r} asks for tools whose calls have no result yet ({shown}); "
        "an edit of it keeps their results, so they must be decided first: approve or "
        f"deny them (session.approve(branch={branch!r}) / session.deny(branch={branch!r})), "
        f"or stop the turn (session.stop(branch={branch!r})), and edit the reply once its turn "
        "has ended"
    )


#: A tool call's statuses before it has a result: waiting for a decision, or running.
_UNDECIDED = (ToolCallStatus.PENDING, ToolCallStatus.APPROVED, ToolCallStatus.RUNNING)


def _new_system(session: ContextSession, text: str, name: str | None) -> Replay:
    # The system prompt changed: a new branch from the root under the new prompt
    # (``""``: none), every user turn sent again.
    source = session.active_branch
    path = session.history(source)
    for message in path:
        if message.role == "user":
            refuse_stand_in(message, "edit the system prompt", "a user turn sent again")
    metadata = session._read_metadata()
    as_sent = _as_sent(session, metadata, source)
    turns = [
        (m.content, as_sent(_reply_in(path[i + 1 :])))
        for i, m in enumerate(path)
        if m.role == "user"
    ]
    settings = {**session._defaults.inherit(metadata, source), "system_prompt": text}
    labels = {"counterfactual_of": source, "edited": "system"}

    def make(target: str) -> Branch:
        return session._io.call(
            session._store.create_branch(session.id, target, head=None, labels=labels, **settings)
        )

    created = _new_branch(session, name, f"{source}-cf", "the counterfactual", make)
    session._defaults.pass_on(metadata, source, created)
    session._publish(ev.BranchCreated(branch=created.name, head=None))
    return Replay(session, source, created.name, turns)


def _as_sent(
    session: ContextSession, metadata: ContextMetadata, source: str
) -> Callable[[Message | None], dict[str, Any]]:
    # For a reply of ``source``, the parameters to send its turn again with on a branch
    # made from ``source``: those it recorded (the provider's defaults it was sent
    # with among them), and None for the branch's others, which it was sent without.
    # Names the branch's provider does not take (a turn answered by another provider)
    # are left out. A reply that recorded nothing (none, or one imported) gets {}: the
    # branch's defaults. ``model`` is never recorded, so the branch's stays.
    found = metadata.branches.get(source)
    defaults = found.params if found is not None else {}
    # Built once a turn is sent again, not before: an edited last reply sends nothing.
    accepted: list[frozenset[str] | None] = []

    def params_of(reply: Message | None) -> dict[str, Any]:
        if reply is None or reply.metadata.provider is None:
            return {}
        if not accepted:
            provider = session._defaults.for_request(metadata, source, None, {})[0]
            accepted.append(accepted_parameters(provider))
        recorded = {
            key: value
            for key, value in reply.metadata.parameters.items()
            if accepted[0] is None or key in accepted[0]
        }
        dropped = {key: None for key in defaults if key not in recorded and key != "model"}
        return {**dropped, **recorded}

    return params_of


def _reply_in(messages: list[Message]) -> Message | None:
    # The first reply in ``messages`` (the one a turn's send made) before the next
    # user message.
    for message in messages:
        if message.role == "user":
            return None
        if message.role == "assistant":
            return message
    return None


def _complete(reply: Message) -> bool:
    # A turn stopped or cut off (a Stop button, a closed session) ends the replay: the
    # later turns would build on a partial answer, or on none (a turn stopped in its
    # tool round ends with a reply that only asks for tools).
    return is_answer(reply)


def _new_branch(
    session: ContextSession,
    name: str | None,
    stem: str,
    what: str,
    make: Callable[[str], T],
    refusals: tuple[type[CMError], ...] = (BranchExistsError,),
) -> T:
    # What ``make`` returns, having created the branch: under the name the user gave
    # (refused as they gave it), else under the first free ``<stem>-N``, chosen again
    # if another process (a replay of its own at the same moment) takes it first.
    if name is not None:
        return make(validate_new_branch_name(name))
    return made_under_free_name(
        what, lambda refused: session._free_branch_name(stem, refused), make, refusals
    )


def _branch_holding(session: ContextSession, message_id: str) -> str:
    # The active branch if the message is on it, else the first branch that holds it.
    names = [session.active_branch, *session.branches]
    for branch in dict.fromkeys(names):
        if message_id in session._io.call(session._store.path(session.id, branch)):
            return branch
    raise InvalidInputError(f"message {message_id!r} is on no branch; fork one to it first")


def _same_round(messages: list[Message]) -> list[Message]:
    # The tool results right after an edited one (the rest of its round).
    out = []
    for message in messages:
        if message.role != "tool":
            break
        out.append(message)
    return out


# What describes how the original text came to be (its generation, or the kernel
# variables that filled a prompt): not true of an edited text, so not copied to it.
_NOT_OF_AN_EDIT = frozenset(
    {
        "usage",
        "duration_ms",
        "finish_reason",
        "error",
        "stats",
        "seed",
        "request_id",
        "request_hash",
        "variables",
        "refusal",
    }
)
# The reasoning behind the original text is not behind an edited one: kept only on a
# reply with tool calls, which the model answers again and the API needs it back with.
_REASONING = frozenset({"reasoning", "reasoning_blocks", "reasoning_field"})


def _edited_outcome(
    before: list[Message], original: Message, content: str
) -> ToolCallStatus | None:
    # The outcome an edited tool result records (None for other messages): by the text,
    # as results are written (a failed or denied call's starts "error:",
    # cm_notebook.tools), so a failure edited into an answer is one, and an answer
    # edited into an error is an error. A failure edited into another keeps its kind.
    if original.role != "tool":
        return None
    was = original.metadata.tool_status
    if was is None:  # stored before results recorded it: the call's status tells
        calls = (call for m in reversed(before) for call in m.tool_calls)
        was = next((c.status for c in calls if c.id == original.tool_call_id), None)
    if not content.startswith("error:"):
        return ToolCallStatus.DONE
    return was if was in _FAILURES else ToolCallStatus.FAILED


#: The outcomes whose result tells the model its call did not run as asked.
_FAILURES = (ToolCallStatus.FAILED, ToolCallStatus.DENIED)


def _edited(original: Message, content: str, outcome: ToolCallStatus | None) -> Message:
    # ``outcome``: an edited tool result's (see _edited_outcome).
    dropped = _NOT_OF_AN_EDIT if original.tool_calls else _NOT_OF_AN_EDIT | _REASONING
    metadata = original.metadata.model_dump(exclude=set(dropped))
    metadata["edited_from"] = original.id
    if outcome is not None:
        metadata["tool_status"] = outcome
    return Message(
        id=new_id("m"),
        parent_id=original.parent_id,
        role=original.role,
        content=content,
        tool_calls=[call.model_copy() for call in original.tool_calls],
        tool_call_id=original.tool_call_id,
        metadata=MessageMetadata.model_validate(metadata),
    )


def _copy(message: Message, parent: str) -> Message:
    return message.model_copy(update={"id": new_id("m"), "parent_id": parent})


def _append(session: ContextSession, branch: str, message: Message) -> str:
    session._io.call(
        session._store.append_message(
            session.id, message, branch=branch, expected_head=message.parent_id
        )
    )
    role: Role = message.role
    session._publish(
        ev.MessageAdded(
            branch=branch, message_id=message.id, parent_id=message.parent_id, role=role
        )
    )
    return message.id
