"""The quick-start conversation, headless: ``cm-notebook demo`` (``make demo``), or
``python -m cm_notebook.demo`` with the same options.

Talks to the built-in offline model (SmolLM2-135M-Instruct through xllamacpp), streams
the replies to the terminal, forks a branch with a different question, and prints a
side-by-side comparison. Everything is stored like any other context, so
``cm-notebook ls`` / ``cm-notebook show ID`` show it afterwards.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ._cli_advice import elsewhere, for_data_dir
from .errors import CMError
from .session import ContextSession
from .store import FileStore, Store

__all__ = ["main", "run_demo"]

QUESTIONS = (
    "What is the capital of France? Answer in one sentence.",
    "Name one famous landmark there.",
)
FORK_QUESTION = "What is the capital of Italy? Answer in one sentence."


async def run_demo(
    *,
    provider: str = "local",
    data_dir: Path | None = None,
    store: Store | None = None,
    max_tokens: int = 64,
) -> ContextSession:
    """Run the demo conversation, printing as it streams; returns the session.

    If it fails (a provider that cannot be used: no model named, no key), the context
    it made is removed again, so that trying providers leaves no half demo behind.
    """
    own_store = store is None
    store = store if store is not None else FileStore(data_dir)
    try:
        return await _converse(provider, store, max_tokens)
    finally:
        if own_store:
            await store.close()


async def _converse(provider: str, store: Store, max_tokens: int) -> ContextSession:
    session = ContextSession.create(
        "Quick start demo",
        provider=provider,
        store=store,
        system="You are a concise, helpful assistant.",
    )
    out = sys.stdout
    out.write(f"context {session.id} (provider {provider})\n\n")
    try:
        await _conversation(session, store, max_tokens)
    except CMError:
        await session.aclose()
        with contextlib.suppress(CMError, OSError):
            await store.delete_context(session.id)
        # Said where the demo said it made the context; the error follows on stderr.
        out.write(f"\n\nthe demo failed: its context {session.id} was removed\n")
        out.flush()
        raise
    await session.aclose()
    return session


async def _conversation(session: ContextSession, store: Store, max_tokens: int) -> None:
    out = sys.stdout
    for question in QUESTIONS:
        out.write(f"you> {question}\nmodel> ")
        async for delta in session.stream(question, max_tokens=max_tokens):
            out.write(delta)
            out.flush()
        out.write("\n\n")
    first_user = next(m for m in session.history() if m.role == "user")
    out.write(f"-- editing the first question on a new branch: {FORK_QUESTION}\nmodel> ")
    turn = session.edit(first_user.id, FORK_QUESTION, branch="italy", max_tokens=max_tokens)
    reply = await turn
    out.write(reply.content + "\n\n")
    out.write("-- comparison of the two branches\n")
    out.write(str(session.compare("main", "italy")) + "\n")
    out.write(f"\nbranches: {', '.join(session.branches)}; active: {session.active_branch}\n")
    # Shown with --data-dir when the context is not in the default data directory.
    where = elsewhere(getattr(store, "data_dir", None))
    out.write(for_data_dir(f"stored as {session.id}: see `cm-notebook show {session.id}`\n", where))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``cm-notebook demo`` with ``argv`` (default: this
    process's arguments), so that both ways of running the demo take the same options
    and print a usage line that works as written."""
    from .cli import main as cli_main  # the demo's options are the command line's

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
