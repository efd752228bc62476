"""The A/B prompt experiment and regenerate on the real bundled model (llama.cpp)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession

pytestmark = [pytest.mark.local_model, pytest.mark.slow]

pytest.importorskip("xllamacpp")

TIMEOUT = 300  # generous: two replies on a busy two-core machine


@pytest.fixture(autouse=True)
def _bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CM_LOCAL_MODEL", raising=False)


def test_ab_prompts_on_the_local_model(data_dir: Path, closing: list[ContextSession]) -> None:
    s = ContextSession.create("AB", system=None, data_dir=data_dir)
    closing.append(s)
    ab = s.fan_out(
        "Why is the sky blue?",
        [
            {"system": "Answer in five words.", "max_tokens": 40},
            {"system": "Answer like a pirate.", "max_tokens": 40},
        ],
    ).result(TIMEOUT)
    terse, pirate = ab.results
    assert (terse.system_prompt, pirate.system_prompt) == (
        "Answer in five words.",
        "Answer like a pirate.",
    )
    for result in ab.results:
        assert result.status is MessageStatus.COMPLETE
        assert result.text.strip()
        stats = result.stats
        assert stats is not None
        assert stats.ttft_ms is not None
        assert stats.tokens_from_usage  # llama.cpp reports usage
        assert 0 < stats.output_tokens <= 40
        assert stats.chunks > 1
        assert stats.tokens_per_second is not None
        assert stats.attempts == 1
    # Different prompts, different answers: the diff has changes.
    assert any(op != "=" for op, _text in ab.diff())
    html = ab._repr_html_()
    assert "Answer like a pirate." in html
    assert "TTFT" in html
    assert "tok/s" in html


def test_regenerate_on_the_greedy_local_model_gives_a_new_reply(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    s = ContextSession.create(data_dir=data_dir)
    closing.append(s)
    first = s.send("Write one sentence about the sea.", max_tokens=30).result(TIMEOUT)
    # Greedy by default: asking again the same way gives the same reply...
    s.branch("again", from_message=first.parent_id, switch=False)
    same = s.regenerate(branch="again", temperature=0, seed=0, max_tokens=30).result(TIMEOUT)
    assert same.content == first.content
    # ...so a plain regenerate samples (twice, so a chance repeat cannot fail the test).
    texts = {s.regenerate(max_tokens=30).result(TIMEOUT).content for _ in range(2)}
    assert texts - {first.content}
    sampled = s.history()[-1].metadata.parameters
    assert sampled["temperature"] > 0
    assert isinstance(sampled["seed"], int)
