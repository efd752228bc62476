"""Ids: generation, and refusal of hostile or malformed ids and branch names."""

from __future__ import annotations

import pytest

from cm_notebook.errors import InvalidIdError, InvalidInputError
from cm_notebook.ids import (
    MAX_BRANCH_NAME_LENGTH,
    MAX_ID_LENGTH,
    new_id,
    validate_branch_name,
    validate_context_id,
    validate_message_id,
)

HOSTILE_IDS = [
    "",
    ".",
    "..",
    "../..",
    "../etc/passwd",
    "a/b",
    "a\\b",
    "/abs",
    "a\x00b",
    "\x00",
    "a..b",
    ".hidden",
    "-starts-with-dash",
    "_underscore",
    "with space",
    "tab\t",
    "new\nline",
    "con",
    "CON",
    "nul",
    "Com1",
    "lpt9",
    "x" * (MAX_ID_LENGTH + 1),
    "ünicode",
    "emoji😀",
    "c:",
]


@pytest.mark.parametrize("value", HOSTILE_IDS)
@pytest.mark.parametrize("validate", [validate_context_id, validate_message_id])
def test_hostile_ids_are_refused(validate: object, value: str) -> None:
    assert callable(validate)
    with pytest.raises(InvalidIdError) as info:
        validate(value)
    # InvalidIdError is also a ValueError (and an InvalidInputError) for callers.
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, InvalidInputError)
    assert "id" in str(info.value)


@pytest.mark.parametrize("value", [None, 3, b"abc", ["a"]])
def test_non_string_ids_are_refused(value: object) -> None:
    with pytest.raises(InvalidIdError, match="must be a string"):
        validate_context_id(value)


@pytest.mark.parametrize(
    "value", ["a", "c1", "m01HX-abc_def.v2", "A" * MAX_ID_LENGTH, "console", "con1x", "0"]
)
def test_reasonable_ids_pass(value: str) -> None:
    assert validate_context_id(value) == value
    assert validate_message_id(value) == value


def test_long_ids_are_shortened_in_the_message() -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_message_id("y" * 500)
    assert len(str(info.value)) < 400


def test_new_ids_are_valid_unique_and_sort_by_time() -> None:
    ids = [new_id("m") for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert validate_message_id(value) == value
        assert value.startswith("m")
        assert len(value) == 21
    # The time part (10 characters after the prefix) never goes backwards.
    stamps = [value[1:11] for value in ids]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize(
    "name", ["main", "feature x", "ünïcödé", "v1.2", "a+b", "日本語", "x" * MAX_BRANCH_NAME_LENGTH]
)
def test_branch_names_allow_words_spaces_and_letters(name: str) -> None:
    assert validate_branch_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        " main",
        "main ",
        "a/b",
        "a\\b",
        "..",
        "a..b",
        "../x",
        "a\x00",
        "tab\tname",
        "new\nline",
        "semi;colon",
        "quote'",
        "x" * (MAX_BRANCH_NAME_LENGTH + 1),
    ],
)
def test_hostile_branch_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidIdError, match="branch name"):
        validate_branch_name(name)


def test_branch_name_must_be_a_string() -> None:
    with pytest.raises(InvalidIdError, match="must be a string"):
        validate_branch_name(42)


@pytest.mark.parametrize(
    "name",
    ["cafe\u0301", "\u212b-units", "\u1112\u1161\u11ab"],  # decomposed é, Angstrom sign, NFD Hangul
)
def test_branch_names_must_be_nfc_so_lookalikes_cannot_coexist(name: str) -> None:
    import unicodedata

    with pytest.raises(InvalidIdError, match="normal form C") as info:
        validate_branch_name(name)
    assert repr(unicodedata.normalize("NFC", name)) in str(info.value)
    assert validate_branch_name(unicodedata.normalize("NFC", name))
