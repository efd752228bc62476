"""A sweep starts no more cells of a variant whose provider refuses every request (a
missing or refused key, an unknown model, a provider not installed): they stay pending,
unwritten, the other variants go on, the sweep says why, and a re-run once the provider
is put right resumes them. Failures that a retry or another prompt may get past never
stop a variant."""

from __future__ import annotations

import html
from collections.abc import Callable

import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import (
    PermanentProviderError,
    ProviderError,
    ProviderNotInstalledError,
    ProviderSetupError,
)
from cm_notebook.providers._errors import (
    from_http_status,
    not_an_event_stream_error,
    stream_cut_error,
    timeout_error,
)
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.sweep import Sweep
from cm_notebook.testing import ScriptedProvider

PROMPTS = ["Q1", "Q2", "Q3"]


def statuses(sweep: Sweep, variant: str) -> list[str]:
    return [cell.status for cell in sweep.cells if cell.variant == variant]


def refused_key() -> ProviderError:
    return from_http_status(
        401, "Incorrect API key provided", provider="scripted", api_key_env="SCRIPTED_KEY"
    )


def test_a_variant_whose_key_is_refused_starts_no_more_cells_and_resumes_once_fixed(
    new_session: Callable[..., ContextSession],
) -> None:
    refusing = ScriptedProvider(strict=True, model="bad").error(refused_key())
    session = new_session(provider=ScriptedProvider())  # the other variant's: echoes
    variants = [{"provider": refusing, "label": "bad"}, {"label": "good"}]
    sweep = session.sweep(PROMPTS, variants, concurrency=1, name="keys", progress=False)
    sweep.run(DEADLINE)
    assert statuses(sweep, "bad") == ["failed", "pending", "pending"]
    assert statuses(sweep, "good") == ["done", "done", "done"]
    assert refusing.request_count == 1
    assert sweep.counts() == {"pending": 2, "running": 0, "done": 3, "failed": 1}
    # Nothing is written for the cells not started: their branches stay empty.
    for cell in sweep.cells:
        if cell.status == "pending":
            assert session.branches[cell.branch].head is None
            assert session.history(cell.branch) == []
    # The sweep says which variant stopped, why, and what to do.
    note = sweep.stopped["bad"]
    assert list(sweep.stopped) == ["bad"]
    assert "authentication failed (HTTP 401)" in note
    assert "SCRIPTED_KEY" in note
    assert "run the sweep again to resume its 2 pending cells" in note
    assert note in repr(sweep)
    assert html.escape(note) in sweep._repr_html_()

    fixed = ScriptedProvider(model="bad")  # the same provider and model, answering now
    variants = [{"provider": fixed, "label": "bad"}, {"label": "good"}]
    again = session.sweep(PROMPTS, variants, concurrency=1, name="keys", progress=False)
    again.run(DEADLINE)
    assert [cell.status for cell in again.cells] == ["done"] * 6
    assert [request.messages[-1].content for request in fixed.requests] == PROMPTS
    assert again.stopped == {}
    assert sweep.stopped == {}  # read again, the first run's cells are answered now


@pytest.mark.parametrize(
    "error",
    [
        from_http_status(403, "no access", provider="scripted", model="m"),
        from_http_status(404, "model not found", provider="scripted", model="m"),
        from_http_status(404, "Not Found", provider="scripted"),
        not_an_event_stream_error(provider="scripted", content_type="text/html"),
        ProviderSetupError("scripted: no API key; set SCRIPTED_KEY", provider="scripted"),
        ProviderNotInstalledError("the 'scripted' provider needs an optional dependency"),
        # A provider of its own that says only the status.
        PermanentProviderError("Unauthorized", status_code=401, provider="mine"),
    ],
    ids=["403", "404-model", "404-url", "not-the-api", "no-key", "not-installed", "own-401"],
)
def test_every_refusal_of_the_provider_stops_its_variant(
    new_session: Callable[..., ContextSession], error: ProviderError
) -> None:
    refusing = ScriptedProvider(strict=True, model="bad").error(error)
    session = new_session(provider=ScriptedProvider())
    variants = [{"provider": refusing, "label": "bad"}, {"label": "good"}]
    sweep = session.sweep(PROMPTS, variants, concurrency=1, progress=False).run(DEADLINE)
    assert statuses(sweep, "bad") == ["failed", "pending", "pending"]
    assert statuses(sweep, "good") == ["done", "done", "done"]
    assert refusing.request_count == 1
    assert str(error).rstrip(".") in sweep.stopped["bad"]


def test_a_variant_without_its_api_key_stops_before_any_request(
    new_session: Callable[..., ContextSession],
) -> None:
    # No OPENAI_API_KEY (the tests' environment has none): the first cell finds it out
    # (keys are read at the first request), the others are not started.
    session = new_session(provider=ScriptedProvider())
    sweep = session.sweep(PROMPTS, ["openai:gpt-4o", {}], concurrency=1, progress=False)
    sweep.run(DEADLINE)
    label, other = sweep.variant_labels
    assert statuses(sweep, label) == ["failed", "pending", "pending"]
    assert statuses(sweep, other) == ["done", "done", "done"]
    assert "OPENAI_API_KEY" in sweep.stopped[label]
    assert "resume its 2 pending cells" in repr(sweep)


def test_only_a_refusal_of_every_request_stops_a_variant(
    new_session: Callable[..., ContextSession],
) -> None:
    # Each variant's first cell fails; only the refused key stops its variant. A rate
    # limit, a timeout, a server error or a cut stream may pass (here the retries ran
    # out), and a prompt too long or refused by a filter concerns that prompt only.
    failures = {
        "limited": from_http_status(429, "Rate limit reached", provider="scripted"),
        "timed-out": timeout_error(provider="scripted", timeout=30),
        "server": from_http_status(503, "overloaded", provider="scripted"),
        "cut": stream_cut_error(provider="scripted"),
        "too-long": from_http_status(
            400, "This model's maximum context length is 8192 tokens", provider="scripted"
        ),
        "filtered": from_http_status(
            400, "The prompt was filtered by the content management policy", provider="scripted"
        ),
        "refused": refused_key(),
    }
    providers = {
        label: ScriptedProvider(strict=True, model=label).error(error).reply("a").reply("b")
        for label, error in failures.items()
    }
    session = new_session(provider=ScriptedProvider(), retry=RetryPolicy(max_attempts=1))
    variants = [{"provider": fake, "label": label} for label, fake in providers.items()]
    sweep = session.sweep(PROMPTS, variants, concurrency=1, progress=False).run(DEADLINE)
    for label in failures:
        if label == "refused":
            assert statuses(sweep, label) == ["failed", "pending", "pending"]
            assert providers[label].request_count == 1
        else:
            assert statuses(sweep, label) == ["failed", "done", "done"], label
    assert list(sweep.stopped) == ["refused"]


def test_the_progress_bar_says_which_variant_stopped(
    new_session: Callable[..., ContextSession], capsys: pytest.CaptureFixture[str]
) -> None:
    refusing = ScriptedProvider(strict=True, model="bad").error(refused_key())
    session = new_session(provider=ScriptedProvider())
    variants = [{"provider": refusing, "label": "bad"}, {"label": "good"}]
    session.sweep(PROMPTS, variants, concurrency=1, name="barred").run(DEADLINE)
    err = capsys.readouterr().err
    assert "4/6" in err
    assert "variant 'bad' stopped: scripted: authentication failed (HTTP 401)" in err
