"""Secrets found by their shape: every shape, wherever it stands, and the fast paths.

redact_text skips work that cannot find anything (a lookahead on the shapes' first
letters, patterns run only where their characters are); these tests hold it to the
same results as the plain patterns.
"""

from __future__ import annotations

import random
import re

import pytest

from cm_notebook.redact import (
    _KEY_SHAPES,
    REDACTED,
    _without_assigned_secrets,
    _without_quoted_secrets,
    _without_userinfo,
    find_secret,
    redact,
    redact_text,
)

SHAPES = [
    "Bearer abcdefgh12345678",
    "BEARER abcdefgh12345678",
    "bearer\tabc.def~ghi/jkl+mno",
    "Basic dXNlcjpwYXNzd29yZA==",
    "sk-ant-api03-abcdefghijklmnop0123456789",
    "sk-proj-ABCDEFGHIJKLMNOPQRST",
    "ghp_" + "a1" * 18,
    "gho_" + "B2" * 18,
    "ghs_" + "c3" * 12,
    "github_pat_" + "A_b1" * 8,
    "xoxb-1234567890-abcdef",
    "hf_" + "Zy9" * 9,
    "AKIA" + "ABCDEFGH23456789",
    "AIza" + "b-c_D" * 7,
]


@pytest.mark.parametrize("secret", SHAPES)
def test_every_key_shape_is_redacted_wherever_it_stands(secret: str) -> None:
    for text in (
        secret,
        f"the key {secret} was sent",
        f"({secret})",
        f'"{secret}"',
        f"line one\n{secret}\nline two",
        f"token: {secret}",
    ):
        redacted = redact_text(text)
        assert secret not in redacted, text
        assert REDACTED in redacted
    assert secret not in str(redact({"note": f"sent {secret}", "list": [secret]}))


def _texts(count: int) -> list[str]:
    # Texts made of the shapes' pieces, near-misses and ordinary words, with every
    # kind of separator: where a lookahead or a skipped pattern could differ.
    pieces = [
        "Bearer ",
        "bEaReR ",
        "basic\t",
        "sk-",
        "sk_",
        "gh",
        "p_",
        "o_",
        "u_",
        "github_pat_",
        "xox",
        "b-",
        "hf_",
        "AKIA",
        "AIza",
        "ask-",
        "subasic ",
        "x=",
        "key: ",
        "secret:\t",
        "a@b",
        "https://",
        "user:pw@",
        "'api_key': 'v'",
        '"token", "v"',
        "ABCDEFGHIJKLMNOP",
        "0123456789abcdefghij",
        "-_~+/.",
        " ",
        "\n",
        "(",
        ")",
        "=",
        "é",
        "日本",
    ]
    chooser = random.Random(20261204)
    return ["".join(chooser.choices(pieces, k=chooser.randint(1, 24))) for _ in range(count)]


def test_the_shapes_lookahead_changes_no_match() -> None:
    plain = re.compile(_KEY_SHAPES.pattern.removeprefix("(?=[BbsgxhA])"))
    assert plain.pattern != _KEY_SHAPES.pattern  # the lookahead is there to be removed
    for text in [*SHAPES, *_texts(3000)]:
        assert [m.span() for m in _KEY_SHAPES.finditer(text)] == [
            m.span() for m in plain.finditer(text)
        ], text


def test_ordinary_text_comes_back_unchanged() -> None:
    text = "The answer to question 12 is 42, isn't it? See https://example.org/a?b=1 too."
    assert redact_text(text) == text
    assert redact_text("") == ""


def test_a_placeholder_for_a_key_is_advice_not_a_secret() -> None:
    advice = "set OPENAI_API_KEY (or pass api_key=...), or give base_url=... instead"
    assert redact_text(advice) == advice
    assert redact_text("or password: \u2026") == "or password: \u2026"
    assert redact_text("api_key=abc123secret") == f"api_key={REDACTED}"
    # Only a placeholder as a whole: a value that merely begins like one is redacted.
    assert redact_text("api_key=...abc123") == f"api_key={REDACTED}"
    assert redact_text("password=<secret>") == f"password={REDACTED}"


@pytest.mark.parametrize(
    "secret",
    [
        "http://bob:hunter22secret@llm.internal:8080/v1",
        "https://h/v1?api_key=abc123secret&deployment=x",
        'headers: {"api_key": "abc123secret"}',
        "token: abc123secret",
    ],
)
def test_a_secret_once_redacted_is_refused_no_more(secret: str) -> None:
    # Settings an earlier version stored with a credential are read redacted, and then
    # pass the refusal of secrets; anything more than REDACTED in its place does not.
    redacted = redact_text(secret)
    assert redacted != secret
    assert find_secret({"value": secret}) is not None
    assert find_secret({"value": redacted}) is None


@pytest.mark.parametrize(
    "text",
    [
        f"http://{REDACTED}:hunter22secret@llm.internal/v1",
        f"https://h/v1?api_key={REDACTED}x9secret",
        f'"password": "{REDACTED} hunter22"',
    ],
)
def test_more_than_redacted_in_a_secrets_place_is_still_refused(text: str) -> None:
    assert find_secret({"value": text}) is not None


def _every_pattern(text: str) -> str:
    # redact_text without its shortcuts: each pattern over the whole text.
    text = _KEY_SHAPES.sub(REDACTED, text)
    return _without_assigned_secrets(_without_quoted_secrets(_without_userinfo(text)))


def test_the_shortcuts_skip_only_patterns_that_find_nothing() -> None:
    for text in [*SHAPES, *_texts(3000)]:
        assert redact_text(text) == _every_pattern(text), text
