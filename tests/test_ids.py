"""Ids: generation, and refusal of hostile or malformed ids and branch names."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import pytest

from cm_notebook._bidi_order import drawn_order
from cm_notebook.errors import ContextExistsError, InvalidIdError, InvalidInputError
from cm_notebook.export import parse_export
from cm_notebook.ids import (
    MAX_BRANCH_NAME_LENGTH,
    MAX_ID_LENGTH,
    branch_name_key,
    check_branch_name_free,
    free_branch_name,
    id_key,
    new_branch_stem,
    new_id,
    validate_branch_name,
    validate_context_id,
    validate_message_id,
    validate_new_branch_name,
)
from cm_notebook.migrate import ContextStatus, convert, migrate_source, parse_v1
from cm_notebook.model import ContextMetadata
from cm_notebook.store import FileStore

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


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_makes_ids_of_its_own() -> None:
    # Ids come from a generator seeded once per process: a child made by fork() must
    # not repeat the ids its parent makes after the fork.
    new_id("m")  # the generator is in use before the fork
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        os.close(read_end)
        os.write(write_end, " ".join(new_id("m")[11:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write_end)
    ours = {new_id("m")[11:] for _ in range(50)}
    with os.fdopen(read_end, "rb") as pipe:
        theirs = set(pipe.read().decode().split())
    os.waitpid(child, 0)
    assert len(theirs) == 50
    assert not ours & theirs


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
        "main\u0338",  # an overlay on a Latin letter (NFC leaves it: no letter has it)
        "\u0301abc",  # a mark with no letter to carry it
        "a\u0947",  # a Devanagari vowel sign on a Latin letter
        "\u0939\u0338",  # a generic overlay on a Devanagari one
        "\u0e17\u0e35\u0e48\u0e48",  # a Thai tone mark twice: drawn as once
        "main-\u1780\u17b4",  # a Khmer mark that draws nothing
        "\u0915" + "\u0951\u0952" * 2,  # a stack of four marks on one letter
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


# -- portable names -------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["con.txt", "NUL.json", "Com1.tar.gz", "lpt9.", "aux.x", "prn.md", "CON.json"]
)
@pytest.mark.parametrize("validate", [validate_context_id, validate_message_id])
def test_windows_device_names_are_refused_with_any_extension(validate: object, value: str) -> None:
    assert callable(validate)
    with pytest.raises(InvalidIdError, match="Windows reserves"):
        validate(value)


@pytest.mark.parametrize("value", ["abc.", "a.b.", "c1..", "x.json."])
def test_a_trailing_dot_is_refused_because_windows_drops_it(value: str) -> None:
    with pytest.raises(InvalidIdError, match=r"ends with '\.'|'\.\.'"):
        validate_context_id(value)


@pytest.mark.parametrize("value", ["abc", "a.b", "console.txt", "con-1", "nul_x", "auxiliary.json"])
def test_names_that_only_start_like_a_device_pass(value: str) -> None:
    assert validate_context_id(value) == value


def test_ids_that_differ_only_in_case_share_a_key() -> None:
    assert id_key("ABC-1") == id_key("abc-1")
    assert id_key("abc") != id_key("abd")


@pytest.mark.parametrize(
    ("name", "foreign"),
    [
        ("m\u0430in", "\u0430"),  # Cyrillic а in Latin
        ("p\u0430yp\u0430l", "\u0430"),
        ("\u03bfpen", "\u03bf"),  # the Greek omicron is the odd letter out, even first
        ("test\u0410", "\u0410"),
        ("\u0430\u0430\u03b1", "\u03b1"),  # Cyrillic with Greek
        ("\u0585pen", "\u0585"),  # an Armenian oh, which passes for a Latin o
        # Latin beside Hebrew, Arabic, Thai: their letters pass for Latin ones too
        ("fina\u0627", "\u0627"),  # an Arabic alef, an l
        ("ma\u05d5n", "\u05d5"),  # a Hebrew vav, an i
        ("exp-\u0e19", "\u0e19"),  # a Thai no nu, a u
    ],
)
def test_mixed_script_branch_names_are_refused_when_made(name: str, foreign: str) -> None:
    with pytest.raises(InvalidIdError, match="mixes") as info:
        validate_new_branch_name(name)
    assert repr(foreign) in str(info.value)
    assert validate_branch_name(name) == name  # read back: an earlier version made them


@pytest.mark.parametrize(
    "name",
    [
        "日本語のbranch",
        "テスト v2",
        "한국어 branch",
        "中文 notes",
        "Ελληνικά",
        "русский",
        # marks a script writes its letters with, which NFC leaves as they are
        "हिंदी",
        "ที่นี่",
        "שָׁלוֹם",
        "مَرْحَبًا",
    ],
)
def test_scripts_written_together_and_single_scripts_pass(name: str) -> None:
    assert validate_new_branch_name(name) == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [("\uff4d\uff41\uff49\uff4e", "main"), ("\ufb01x", "fix"), ("v\u00b2", "v2")],
)
def test_compatibility_characters_are_refused_with_the_plain_spelling(
    name: str, expected: str
) -> None:
    with pytest.raises(InvalidIdError, match="compatibility characters") as info:
        validate_new_branch_name(name)
    assert repr(expected) in str(info.value)
    assert validate_branch_name(name) == name  # read back: an earlier version made them


@pytest.mark.parametrize(
    ("name", "existing"),
    [
        ("Main", "main"),
        ("MAIN", "main"),
        ("\u0440\u0430\u0440\u0435", "pape"),  # all Cyrillic: passes the script rule
        ("\u0455\u0435\u0441\u0445", "secx"),
        ("\u03bf\u03c1\u03b1", "opa"),  # all Greek
    ],
)
def test_a_look_alike_of_an_existing_branch_is_refused_naming_it(name: str, existing: str) -> None:
    assert validate_branch_name(name) == name
    assert branch_name_key(name) == branch_name_key(existing)
    with pytest.raises(InvalidIdError, match="looks like the existing branch") as info:
        check_branch_name_free(name, ["other", existing])
    assert repr(existing) in str(info.value)


@pytest.mark.parametrize("filler", ["\u115f", "\u1160"])
def test_a_name_with_a_letter_that_shows_nothing_is_refused_when_made(filler: str) -> None:
    # A Hangul filler is a letter (Lo) that shows nothing: "ma<filler>in" reads "main".
    # Refused for a branch the user makes, but still read, exported and imported (data
    # that has one from before still opens and moves).
    name = f"ma{filler}in"
    assert validate_branch_name(name) == name
    with pytest.raises(InvalidIdError, match="a letter that shows nothing") as info:
        validate_new_branch_name(name)
    assert "looks like 'main'" in str(info.value)
    document = export_with("old", ["main", name])
    assert list(parse_export(document).metadata.branches) == ["main", name]


def test_the_fullwidth_filler_is_not_answered_with_another_filler() -> None:
    # U+3164 is a compatibility form of U+1160: the remedy must not suggest that.
    with pytest.raises(InvalidIdError, match="compatibility characters") as info:
        validate_new_branch_name("main\u3164")
    assert "'main'" in str(info.value)


# Hebrew "shalom" and Arabic "marhaba": right-to-left letters, drawn reordered.
SHALOM, MARHABA = "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627"


@pytest.mark.parametrize(
    "name", [f"2-{SHALOM}", f"2 {SHALOM}", f"{SHALOM} 2.", f"{SHALOM}+", f"1-{MARHABA}"]
)
def test_a_right_to_left_name_drawn_two_ways_is_refused_when_made(name: str) -> None:
    # Digits or signs at the edge of right-to-left letters move to the other side in a
    # page that isolates the name: it would pass for another name in one of the two.
    with pytest.raises(InvalidIdError, match="start it with a letter and end it with a"):
        validate_new_branch_name(name)
    assert validate_branch_name(name) == name  # read back: an earlier version made them


@pytest.mark.parametrize(
    "name", [f"{SHALOM}-2", f"{SHALOM} 2", f"{SHALOM}_{SHALOM}", f"{MARHABA}-1", "main-\u0661"]
)
def test_right_to_left_names_drawn_one_way_are_made(name: str) -> None:
    assert validate_new_branch_name(name) == name


def test_names_drawn_alike_are_look_alikes() -> None:
    # "2-shalom" (made by an earlier version) and "shalom-2" are both drawn "2-molahs"
    # left to right: the one made now is refused, naming the other.
    assert branch_name_key(f"2-{SHALOM}") == branch_name_key(f"{SHALOM}-2")
    with pytest.raises(InvalidIdError, match="looks like the existing branch") as info:
        check_branch_name_free(f"{SHALOM}-2", ["main", f"2-{SHALOM}"])
    assert repr(f"2-{SHALOM}") in str(info.value)
    # Reordered as drawn, not reversed: different names stay different.
    assert branch_name_key(f"{SHALOM}-2") != branch_name_key(f"{SHALOM}-3")
    assert branch_name_key("a-1") == "a-1"


def test_the_drawn_order_follows_the_bidirectional_algorithm() -> None:
    # Checked against the Unicode algorithm's results for these classes of character
    # (Hebrew and Arabic letters, European and Arabic digits, separators, Latin).
    cases = {
        (f"{SHALOM}-2", False): "2-\u05dd\u05d5\u05dc\u05e9",
        (f"2-{SHALOM}", True): "\u05dd\u05d5\u05dc\u05e9-2",
        ("ab \u05d0\u05d1 12", False): "ab 12 \u05d1\u05d0",
        ("\u0627\u0628 12", False): "12 \u0628\u0627",  # digits after Arabic: Arabic
        ("ab-\u0661", True): "\u0661-ab",
        ("x1.5", False): "x1.5",
    }
    for (text, right_to_left), drawn in cases.items():
        assert drawn_order(text, right_to_left=right_to_left) == drawn, text


def test_distinct_names_and_the_same_name_are_free() -> None:
    assert check_branch_name_free("main", ["main", "alt"]) == "main"
    assert check_branch_name_free("mainline", ["main"]) == "mainline"
    assert check_branch_name_free("日本語", ["日本"]) == "日本語"


# -- where the rules are applied: the store, imports and migrations -------------------


@pytest.mark.anyio
async def test_the_store_refuses_look_alike_branches_and_case_twin_contexts(
    store: FileStore,
) -> None:
    # ``store`` holds an empty context c1 with its branch "main".
    with pytest.raises(InvalidIdError, match="mixes Latin letters"):
        await store.create_branch("c1", "m\u0430in", head=None)
    with pytest.raises(InvalidIdError, match="looks like the existing branch 'main'"):
        await store.create_branch("c1", "MAIN", head=None)
    with pytest.raises(InvalidIdError, match="a letter that shows nothing"):
        await store.create_branch("c1", "new\u1160", head=None)
    assert list((await store.get_metadata("c1")).branches) == ["main"]
    await store.create_context(ContextMetadata(id="abc"))
    with pytest.raises(ContextExistsError, match=r"differs only in case .* 'abc'") as twin:
        await store.create_context(ContextMetadata(id="ABC"))
    assert twin.value.existing == "abc"  # the one there, for a remedy to name
    with pytest.raises(ContextExistsError) as same:
        await store.create_context(ContextMetadata(id="abc"))
    assert same.value.existing == "abc"
    # Across processes (a pool, say) the error keeps what it names.
    carried = pickle.loads(pickle.dumps(twin.value))
    assert (str(carried), carried.existing) == (str(twin.value), "abc")
    assert sorted(m.id for m in await store.list_contexts()) == ["abc", "c1"]


def export_with(context_id: str, branches: list[str]) -> dict[str, Any]:
    metadata = {
        "id": context_id,
        "branches": {name: {"name": name} for name in branches},
        "active_branch": branches[0],
    }
    return {"format": "cm_notebook.export", "metadata": metadata, "messages": []}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (export_with("con.txt", ["main"]), "Windows reserves 'con'"),
        (export_with("NUL.json", ["main"]), "Windows reserves 'NUL'"),
        (export_with("abc.", ["main"]), "ends with '.'"),
        (export_with("ok", ["main", "m\u0430in"]), "looks like the existing branch 'main'"),
        (export_with("ok", ["main", "Main"]), "looks like the existing branch 'main'"),
    ],
)
def test_imports_refuse_unportable_and_look_alike_names(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        parse_export(document)


@pytest.mark.parametrize("name", ["\u03b2-test", "x\u00b2", "\ufb01nal-run", "m\u0430x"])
def test_imports_take_the_names_an_earlier_version_made(name: str) -> None:
    # Mixed scripts and compatibility characters are refused when a branch is made,
    # not when one is read back: an export of an older context imports (no look-alike
    # of another branch beside it: that is still refused, as above).
    document = export_with("old", ["main", name])
    assert list(parse_export(document).metadata.branches) == ["main", name]


@pytest.mark.parametrize(
    ("stem", "plain"),
    [
        ("main-edit", "main-edit"),  # already fit: unchanged
        ("\u03b2-test-edit", "b-test-edit"),  # a Greek letter that looks Latin
        ("M\u0430in-edit", "Main-edit"),  # a Cyrillic one, in a capitalised name
        ("x\u00b2-edit", "x2-edit"),
        ("\ufb01nal-run-edit", "final-run-edit"),
        ("\u00bd-x", "1-2-x"),  # NFKC's fraction slash is not allowed in a name
        ("\u03bb-test", "test"),  # no Latin look-alike: left out
        ("ma\u1160in", "main"),
    ],
)
def test_a_stem_from_an_older_name_is_made_fit_for_a_new_one(stem: str, plain: str) -> None:
    assert new_branch_stem(stem) == plain
    made = free_branch_name(stem, lambda name: False)
    assert made == f"{plain}-1"
    assert validate_new_branch_name(made) == made


def test_a_long_stem_from_an_older_name_is_made_fit_and_cut() -> None:
    stem = "\u03b2" + "x" * (MAX_BRANCH_NAME_LENGTH - 1) + "-edit"  # a fork's of a long name
    made = free_branch_name(stem, lambda name: False)
    assert made == "b" + "x" * (MAX_BRANCH_NAME_LENGTH - 3) + "-1"
    assert validate_new_branch_name(made) == made


def test_imports_refuse_message_ids_that_differ_only_in_case() -> None:
    document = export_with("ok", ["main"])
    document["messages"] = [
        {"id": "M1", "role": "user", "content": "hi"},
        {"id": "m1", "role": "user", "content": "other"},
    ]
    with pytest.raises(InvalidInputError, match="'M1' and 'm1' differ only in case"):
        parse_export(document)


@pytest.mark.anyio
async def test_migration_renames_look_alikes_instead_of_losing_them(store: FileStore) -> None:
    await store.create_context(ContextMetadata(id="abc"))
    v1 = [
        {
            "id": "ABC",
            "title": "case twin of an existing context",
            "branches": {"main": ["1", "2"], "m\u0430in": ["1", "3"], "Main": ["1"]},
            "messages": [
                {"id": "1", "role": "user", "content": "hi"},
                {"id": "2", "role": "assistant", "content": "hello"},
                {"id": "3", "role": "assistant", "content": "hey"},
            ],
        }
    ]
    report = await migrate_source(parse_v1(v1), store, progress=False, backup=False)
    (result,) = report.contexts
    assert result.status is ContextStatus.MIGRATED, result.problems
    assert result.id not in (None, "ABC", "abc")
    assert "'ABC' differs only in case from the existing context 'abc'" in result.notes[0]
    assert result.id is not None
    meta = await store.get_metadata(result.id)
    # The Cyrillic look-alike became 'main-2'; 'Main' became 'Main-3', as 'Main-2'
    # would look like 'main-2'. The v1 names are kept in the descriptions.
    assert sorted(meta.branches) == ["Main-3", "main", "main-2"]
    assert len({branch_name_key(name) for name in meta.branches}) == 3
    assert meta.branches["main-2"].description == "v1 branch 'm\u0430in'"
    assert await store.path(meta.id, "main-2") == ["1", "3"]


def test_migration_gives_unportable_v1_ids_portable_ones() -> None:
    v1 = [
        {"id": name, "title": name, "messages": [{"role": "user", "content": name}]}
        for name in ("con.txt", "NUL.json", "abc.", "abc")
    ]
    ids = [convert(ctx).metadata.id for ctx in parse_v1(v1).contexts]
    assert ids[3] == "abc"
    assert len({id_key(i) for i in ids}) == 4
    for value, original in zip(ids[:3], ("con.txt", "NUL.json", "abc."), strict=True):
        assert validate_context_id(value) == value
        assert value != original


@pytest.mark.anyio
async def test_migration_drops_letters_that_show_nothing(store: FileStore) -> None:
    # A v1 branch name with a Hangul filler is readable but refused for a new branch:
    # migrated under the name it shows, not refused.
    v1 = [
        {
            "id": "filler",
            "branches": {"ma\u1160in": ["1"], "Feature\u115fLogin": ["1"]},
            "messages": [{"id": "1", "role": "user", "content": "hi"}],
        }
    ]
    report = await migrate_source(parse_v1(v1), store, progress=False, backup=False)
    (result,) = report.contexts
    assert result.status is ContextStatus.MIGRATED, result.problems
    assert result.id is not None
    meta = await store.get_metadata(result.id)
    assert sorted(meta.branches) == ["FeatureLogin", "main"]  # dropped, nothing else
