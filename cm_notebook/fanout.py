"""Fan-out: one message sent on several new branches at once, then compared."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import events as ev
from ._auto_names import NamePicks
from ._claims import running_remedy
from ._json_values import checked_message_metadata
from ._loop import schedule_on
from ._sample_seeds import seed_alike, takes_seed
from ._unicode import grapheme_prefix
from .branch_defaults import branch_settings
from .compare import Comparison
from .errors import BranchExistsError, BusyError, CMError, InvalidIdError, InvalidInputError
from .ids import (
    branch_name_key,
    free_branch_name,
    new_branch_stem,
    validate_new_branch_name,
)
from .model import MAX_LABEL_VALUE, Branch, ProviderSettings
from .params import GenerationParams, validate_text
from .prompts import prompt_label
from .providers import Provider
from .providers.pool import ProviderLike
from .turn import Handle, Turn

if TYPE_CHECKING:
    from .session import ContextSession

__all__ = [
    "FanOut",
    "Variant",
    "arm_settings",
    "plan_variants",
    "start_fan_out",
    "variant_labels",
]


@dataclass(frozen=True)
class Variant:
    """One arm of a fan-out: the branch it writes, its provider, parameters and system
    prompt (None: the context's; ``""``: none). ``stem``: for a branch name chosen
    automatically, what it was numbered from (``<stem>``, ``<stem>-2``...), so it can
    be chosen again if another process takes it first; None for a name the user gave."""

    branch: str
    provider: str | Provider | None = None
    params: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    stem: str | None = None


def _clean(text: str) -> str:
    return text.replace(":", "-").replace("/", "-")


def _label(variant: str | Provider | Mapping[str, Any], differing: set[str]) -> str:
    # A short, readable branch-name stem naming only what differs between variants.
    if isinstance(variant, str):
        return _clean(variant)
    if not isinstance(variant, Mapping):
        return _clean(f"{variant.name}-{variant.model}")
    parts = []
    provider = variant.get("provider")
    if "provider" in differing and provider is not None:
        parts.append(_clean(provider if isinstance(provider, str) else provider.name))
    if "system" in differing:
        system = variant.get("system")
        parts.append(prompt_label(system) if system is not None else "context-system")
    parts += [
        f"{key}-{value}"
        for key, value in variant.items()
        if key in differing and key not in ("provider", "branch", "system")
    ]
    return "-".join(parts) or "variant"


def _name_part(text: str) -> str:
    # ``text`` made fit for a branch name, readably: every run of characters a name
    # may not hold (brackets and quotes of a list, the "/" of "org/model", spaces),
    # with the "-" around it, becomes one "-" (a "-" of the text itself stays: the
    # sign of "temperature--1"); compatibility forms become their plain letters and
    # ".." one ".". Deterministic, so the same variants are named alike in every run.
    text = unicodedata.normalize("NFKC", text)
    marked = "".join(c if c in "_-.+" or unicodedata.category(c)[0] in "LN" else "\0" for c in text)
    return re.sub(r"\.{2,}", ".", re.sub(r"-*\0+-*", "-", marked)).strip(" .-")


def _valid(name: str) -> bool:
    try:
        validate_new_branch_name(name)
    except InvalidIdError:
        return False
    return True


def _auto_stem(base: str, label: str) -> str:
    # ``<base>-<label>``, cut to leave room for a "-N" suffix; if that is still not a
    # valid name (letters of two scripts, say a Cyrillic value after a Latin key),
    # ``<base>-variant``, then ``<base>``. A long base is cut, not the label: the label
    # is what tells the arms apart. A base an earlier version named (``β-test``) is made
    # fit for a new name first (``b-test``).
    base = new_branch_stem(base)
    part = _name_part(label)[:60].strip(" .-")
    head = base[: max(0, 89 - len(part))].rstrip(" .-")
    labelled = f"{head}-{part}" if head and part else (part or head)
    stems = [labelled, f"{base[:90]}-variant", base[:90]]
    return next((s for s in stems if s and _valid(s)), base)


def _auto_name(stem: str, taken: set[str], exists: Callable[[str], bool]) -> str:
    # ``stem``, or "-2", "-3"... after it: distinct from the other variants' names (by
    # look, as branches are compared) and existing branches.
    return free_branch_name(
        stem, lambda name: branch_name_key(name) in taken or exists(name), bare=True
    )


def _differing_keys(variants: Sequence[object]) -> set[str]:
    # A lone mapping variant is named after all its keys; several after what differs.
    mappings = [v for v in variants if isinstance(v, Mapping)]
    keys = {key for m in mappings for key in m}
    if len(mappings) < 2:
        return keys
    return {key for key in keys if len({repr(m.get(key)) for m in mappings}) > 1}


#: The longest label made from a variant's settings (a label given is kept whole).
_MADE_LABEL_CHARS = 80


def variant_labels(variants: Sequence[str | Provider | Mapping[str, Any]]) -> list[str]:
    """A label per variant, no two alike: a mapping's own ``label`` as given, else a
    short readable one naming only what differs between the variants
    (``temperature-0.7``, ``answer-in-five-words``), cut to 80 characters.

    A label that repeats gets "-2", "-3"..., skipping any that is itself a variant's
    label (``["a", "a", "a-2"]`` gives a, a-3, a-2).
    """
    differing = _differing_keys(variants) - {"label"}
    out = []
    for variant in variants:
        own = variant.get("label") if isinstance(variant, Mapping) else None
        if own is not None:
            # Kept whole: the label checks refuse one too long, and a cut could erase
            # what tells two variants apart ("... variant A", "... variant B").
            out.append(str(own) or "variant")
        else:
            made = grapheme_prefix(_label(variant, differing), _MADE_LABEL_CHARS)
            out.append(made or "variant")
    return _distinct(out)


def _distinct(labels: list[str]) -> list[str]:
    # ``labels`` with each repeat numbered (see variant_labels), cut to leave room for
    # its number within the length labels allow.
    given = set(labels)
    taken: set[str] = set()
    out = []
    for label in labels:
        chosen, n = label, 1
        while chosen in taken or (n > 1 and chosen in given):
            n += 1
            chosen = f"{grapheme_prefix(label, MAX_LABEL_VALUE - len(str(n)) - 1)}-{n}"
        taken.add(chosen)
        out.append(chosen)
    return out


def arm_settings(
    inherited: dict[str, Any],
    plan: Variant,
    resolve: Callable[[ProviderLike | None], Provider],
) -> dict[str, Any]:
    """The ``create_branch`` keywords of an arm: the ``inherited`` defaults (of the branch
    it is made from) overridden by the arm's system prompt, provider and parameters.

    A parameter the arm gives as None drops the inherited value (the provider's default
    applies), as in :meth:`BranchDefaults.for_request
    <cm_notebook.branch_defaults.BranchDefaults.for_request>`. An arm given a provider
    drops the inherited ``model`` parameter unless it gives its own: providers let that
    parameter win over the model they were made for, so the provider asked for would
    answer as the source branch's model.

    Checked against the provider that will answer (``resolve`` turns a spec into it),
    so an unknown spec or a parameter it does not take fails before anything is written.
    """
    own = branch_settings(plan.system, plan.provider, plan.params)
    settings = dict(inherited)
    if plan.system is not None:
        settings["system_prompt"] = plan.system
    if own["provider"] is not None:
        settings["provider"] = own["provider"]
    # The arm's names replace the inherited ones, its Nones too: the check above strips
    # them, so they are dropped here rather than merged.
    dropped = set(plan.params) | ({"model"} if plan.provider is not None else set())
    kept = {key: value for key, value in settings["params"].items() if key not in dropped}
    settings["params"] = {**kept, **own["params"]}
    answering = plan.provider if plan.provider is not None else settings["provider"]
    if isinstance(answering, ProviderSettings):
        answering = answering.spec
    GenerationParams.check(settings["params"], resolve(answering))
    return settings


def plan_variants(
    variants: Sequence[str | Provider | Mapping[str, Any]],
    base: str,
    exists: Callable[[str], bool],
) -> list[Variant]:
    """Turn the user's variant list into branches to create, refusing duplicates.

    Unnamed variants get ``<base>-<what differs>`` (e.g. ``main-temperature-0.7``,
    ``main-answer-in-five-words`` for a ``system`` prompt, ``main-stop-END`` for
    ``stop=["END"]``, ``main-model-org-small`` for ``model="org/small"``: what a branch
    name cannot hold becomes ``-``), with ``-2``, ``-3``... appended when that name is
    taken or looks like one taken.
    """
    if isinstance(variants, (str, bytes)) or not isinstance(variants, Sequence):
        raise InvalidInputError("variants must be a list, e.g. [{'temperature': 0}, ...]")
    if not variants:
        raise InvalidInputError("fan_out needs at least one variant")
    for index, variant in enumerate(variants):
        if not isinstance(variant, (str, Mapping, Provider)):
            raise InvalidInputError(
                f"variant {index} must be a mapping of settings (e.g. {{'temperature': 0}}), "
                f"a provider spec such as 'openai:gpt-4o' or a Provider, got "
                f"{type(variant).__name__}"
            )
    differing = _differing_keys(variants)
    plans: list[Variant] = []
    taken: set[str] = set()
    looks: set[str] = set()  # the names taken, as compared (look-alikes are one)
    for variant in variants:
        if isinstance(variant, Mapping):
            options = dict(variant)
            name = options.pop("branch", None)
            provider = options.pop("provider", None)
            system = options.pop("system", None)
            if system is not None and not isinstance(system, str):
                raise InvalidInputError(
                    f"a variant's system prompt must be a string, got {type(system).__name__}"
                )
        else:
            options, name, provider, system = {}, None, variant, None
        stem = None
        if name is None:
            stem = _auto_stem(base, _label(variant, differing))
            name = _auto_name(stem, looks, exists)
        validate_new_branch_name(name)
        if name in taken:
            raise InvalidInputError(f"two variants would write the same branch {name!r}")
        taken.add(name)
        looks.add(branch_name_key(name))
        plans.append(
            Variant(branch=name, provider=provider, params=options, system=system, stem=stem)
        )
    return plans


class FanOut(Handle[Comparison]):
    """The turns of a fan-out; ``await`` it (or ``.result()``) for the comparison."""

    def __init__(
        self,
        compare: Callable[..., Comparison],
        turns: list[Turn],
        loop: asyncio.AbstractEventLoop,
        forked_at: str | None = None,
    ) -> None:
        # ``compare(*branches)``: the session's comparison of those branches' answers.
        super().__init__(loop)
        self._compare = compare
        self.turns = turns
        #: The message the arms were forked after: the head of the branch they forked
        #: from (None: it had no messages). An arm's answer is only one after it.
        self.forked_at = forked_at
        self.attach(schedule_on(loop, self._gather()), self._cancel_all)

    @property
    def branches(self) -> list[str]:
        """The branches written, in variant order."""
        return [turn.branch for turn in self.turns]

    async def _gather(self) -> Comparison:
        for turn in self.turns:
            # A failed arm still appears in the comparison, as an error.
            with contextlib.suppress(CMError):
                await turn
        return self._compare(*self.branches)

    def _cancel_all(self) -> None:
        for turn in self.turns:
            turn.cancel()

    def _goes_on(self) -> str:
        # Through the session, per arm: `comparison = await session.fan_out(...)`
        # interrupted leaves the cell without this handle.
        names = ", ".join(repr(branch) for branch in self.branches)
        return (
            f"the arms go on, on branches {names}: session.turn(branch) is an arm's Turn "
            "while it runs (await it for its reply), session.stop(branch=branch) stops "
            f"one, and session.compare({names}) compares them once they are over"
        )

    def __repr__(self) -> str:
        status = "done" if self.done() else "running"
        return f"<FanOut {status} branches={self.branches}>"

    def _repr_html_(self) -> str:
        # Shown as the comparison once finished (a cell that displays the handle after
        # the replies came), else as a line saying it is still running.
        if self.done() and self.exception() is None:
            # The finished future, not result(): that refuses to run on a kernel's loop.
            return self._require_future().result()._repr_html_()
        return f"<code>{html.escape(repr(self))}</code>"


def start_fan_out(
    session: ContextSession,
    text: str,
    variants: Sequence[str | Provider | Mapping[str, Any]],
    *,
    branch: str | None,
    metadata: Mapping[str, Any] | None,
) -> FanOut:
    """What :meth:`ContextSession.fan_out <cm_notebook.session.ContextSession.fan_out>`
    does: check every variant, make the arms' branches, then send on each."""
    text = validate_text(text)
    # Checked before any arm's branch is made (each send checks it again).
    checked_message_metadata(metadata)
    base = session._branch_name(branch)
    # By look, as creating a branch compares names: an arm named "main-temperature-0.1"
    # beside an existing "MAIN-temperature-0.1" would be refused below. One read for
    # naming and checking: a name chosen here is not refused below because another
    # process made it in between (creating the arms chooses again then).
    existing = session.branch_names
    existing_keys = {branch_name_key(name) for name in existing}
    plans: list[Variant] = plan_variants(
        variants, base, lambda name: branch_name_key(name) in existing_keys
    )
    # Check every variant before writing anything: one bad variant must not leave
    # the branches of the good ones behind.
    looks = {branch_name_key(name): name for name in existing}
    for plan in plans:
        if plan.branch in existing:
            raise BranchExistsError(
                f"branch {plan.branch!r} already exists; fan_out writes new branches"
            )
        # As creating the branch would refuse it: a name that looks like another.
        key = branch_name_key(validate_new_branch_name(plan.branch))
        other = looks.setdefault(key, plan.branch)
        if other != plan.branch:
            raise InvalidIdError(
                f"branch name {plan.branch!r} looks like the branch {other!r} (they differ "
                "only in case or in letters that look alike); name the arm differently"
            )
    if session._mid_turn(base):
        # Its head is then the turn's own message or its unfinished reply: the arms
        # would continue a conversation that has not happened yet.
        with session._lock:
            here = base in session._runners  # else another process's turn: no Turn here
        raise BusyError(
            f"a reply is still being generated on branch {base!r}, and the arms would "
            f"fork before it ends; {running_remedy(base, here=here)}"
        )
    head = session._head(base)
    # An unknown spec or a parameter an arm's provider does not take fails before
    # anything is written.
    read = session._read_metadata()
    inherited = session._defaults.inherit(read, base)
    arms = [arm_settings(inherited, plan, session._provider) for plan in plans]
    # Alike arms are samples of one thing: a seed each (an arm's None asks for none).
    seedable = [
        "seed" not in plan.params and takes_seed(session._provider, plan.provider, settings)
        for plan, settings in zip(plans, arms, strict=True)
    ]
    seeded = seed_alike(arms, [plan.provider for plan in plans], seedable)
    checked = list(zip(plans, seeded, strict=True))
    for index, (plan, settings) in enumerate(checked):
        others = {branch_name_key(p.branch) for p, _ in checked if p is not plan}
        plan, made = _create_arm(session, plan, settings, head, others)
        checked[index] = (plan, settings)
        if plan.provider is not None:
            session._defaults.remember(made, plan.provider)
        else:
            session._defaults.pass_on(read, base, made)
        session._publish(ev.BranchCreated(branch=plan.branch, head=head))
    # Every branch first, then the sends back to back: the arms start together.
    turns = [
        session.send(text, branch=plan.branch, metadata=metadata) for plan, _settings in checked
    ]
    return FanOut(session.compare, turns, session._loop, head)


def _create_arm(
    session: ContextSession,
    plan: Variant,
    settings: dict[str, Any],
    head: str | None,
    others: set[str],
) -> tuple[Variant, Branch]:
    # Make the arm's branch; returns it and its plan, renamed if its name was chosen here and
    # another process created a branch of that name since the branches were read (a
    # fan-out of the same variants at the same moment): the next free name, distinct
    # from ``others`` (the other arms' names, by look) too. A name the user gave still
    # fails as taken.
    picks = NamePicks("the fan-out's arm")
    while True:
        try:
            made = session._io.call(
                session._store.create_branch(session.id, plan.branch, head=head, **settings)
            )
            return plan, made
        except BranchExistsError as exc:
            if plan.stem is None:
                raise
            picks.taken(plan.branch, exc)
            existing = {branch_name_key(name) for name in session.branch_names}
            plan = replace(plan, branch=_auto_name(plan.stem, others | existing, picks.refuses))
