"""The provider registry: spec parsing, entry points, runtime registration, errors."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from cm_notebook.errors import (
    InvalidInputError,
    PermanentProviderError,
    ProviderNotInstalledError,
    UnknownProviderError,
)
from cm_notebook.providers import (
    Provider,
    available_providers,
    get_provider,
    parse_spec,
    refresh_providers,
    register_provider,
    unregister_provider,
)
from cm_notebook.testing import ScriptedProvider

BUILT_INS = ("anthropic", "local", "openai", "scripted")


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Names registered by a test; unregistered afterwards so tests stay independent."""
    names: list[str] = []
    yield names
    for name in names:
        unregister_provider(name)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("local", ("local", None)),
        ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
        ("openai:org/model:tag", ("openai", "org/model:tag")),
        ("anthropic:claude-haiku-4-5", ("anthropic", "claude-haiku-4-5")),
        ("  OpenAI:gpt-4o  ", ("openai", "gpt-4o")),
        ("local:/models/My Model.Q4.gguf", ("local", "/models/My Model.Q4.gguf")),
        ("my_plugin-2", ("my_plugin-2", None)),
    ],
)
def test_parse_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    "spec",
    ["", "   ", ":", ":gpt-4o", "openai:", "openai:  ", "open ai", "1openai", "op$n", "a:b\nc"],
)
def test_invalid_specs_explain_with_examples(spec: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_spec(spec)
    assert repr(spec) in str(info.value)


def test_invalid_spec_message_has_examples() -> None:
    with pytest.raises(InvalidInputError, match=r"e\.g\. 'local', 'openai:gpt-4o-mini'"):
        parse_spec("no spaces allowed")


def test_spec_must_be_a_string() -> None:
    with pytest.raises(InvalidInputError, match="must be a string"):
        parse_spec(42)  # type: ignore[arg-type]


def test_unknown_provider_lists_known_names() -> None:
    with pytest.raises(UnknownProviderError) as info:
        get_provider("nonesuch:model")
    message = str(info.value)
    assert "'nonesuch'" in message
    assert "anthropic, local, openai, scripted" in message
    # It is both a provider failure (for the session) and bad input (for the caller).
    assert isinstance(info.value, PermanentProviderError)
    assert isinstance(info.value, InvalidInputError)


def test_entry_points_resolve_all_built_ins() -> None:
    found = available_providers()
    for name in BUILT_INS:
        entry = found[name]
        assert isinstance(entry, EntryPoint)
        # Import the class only: constructing "local" would load a model.
        cls = entry.load()
        assert cls.name == name
        assert callable(cls.from_spec)


def test_importing_cm_notebook_imports_no_sdk() -> None:
    code = (
        "import sys, cm_notebook, cm_notebook.providers, cm_notebook.testing\n"
        "from cm_notebook.providers import get_provider, available_providers\n"
        "available_providers(); get_provider('scripted')\n"
        "print([m for m in ('openai', 'anthropic', 'xllamacpp') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_provider_instances_pass_through() -> None:
    fake = ScriptedProvider()
    assert get_provider(fake) is fake
    with pytest.raises(InvalidInputError, match="options cannot be applied"):
        get_provider(fake, strict=True)
    with pytest.raises(InvalidInputError, match="not int"):
        get_provider(42)  # type: ignore[arg-type]


def test_runtime_registration_of_a_callable(cleanup: list[str]) -> None:
    calls: list[tuple[str | None, dict[str, Any]]] = []

    def factory(model: str | None, **options: Any) -> Provider:
        calls.append((model, options))
        return ScriptedProvider(model=model or "default")

    register_provider("Fake", factory)  # names are case-insensitive
    cleanup.append("fake")
    assert available_providers()["fake"] is factory
    provider = get_provider("fake:m1", strict=True)
    assert provider.model == "m1"
    assert calls == [("m1", {"strict": True})]
    unregister_provider("fake")
    with pytest.raises(UnknownProviderError):
        get_provider("fake")
    unregister_provider("fake")  # unknown names are ignored


def test_runtime_registration_shadows_an_entry_point(cleanup: list[str]) -> None:
    register_provider("openai", ScriptedProvider)
    cleanup.append("openai")
    provider = get_provider("openai:gpt-4o-mini")
    assert isinstance(provider, ScriptedProvider)
    assert provider.model == "gpt-4o-mini"
    unregister_provider("openai")
    assert isinstance(available_providers()["openai"], EntryPoint)


@pytest.mark.parametrize(
    ("name", "factory"),
    [("bad name", ScriptedProvider), ("x:model", ScriptedProvider), ("ok", 42)],
)
def test_bad_registrations_are_refused(name: str, factory: Any) -> None:
    with pytest.raises(InvalidInputError):
        register_provider(name, factory)


def test_factory_returning_a_non_provider_is_a_type_error(cleanup: list[str]) -> None:
    register_provider("broken", lambda model, **options: object())
    cleanup.append("broken")
    with pytest.raises(TypeError, match="does not implement the Provider protocol"):
        get_provider("broken")


def test_missing_extra_at_construction(cleanup: list[str]) -> None:
    missing = ModuleNotFoundError("No module named 'fancy_sdk'", name="fancy_sdk")

    def needs_sdk(model: str | None, **options: Any) -> Provider:
        raise missing

    register_provider("fancy", needs_sdk)
    cleanup.append("fancy")
    with pytest.raises(ProviderNotInstalledError) as info:
        get_provider("fancy:model-1")
    message = str(info.value)
    assert "fancy_sdk" in message
    # Registered at runtime: cm_notebook has no extra of that name (pip would install
    # nothing); the remedy names the module that registered it instead.
    assert "cm_notebook[" not in message
    assert message.endswith(
        "install the package that provides that module (the provider was registered "
        f"with register_provider(), from {__name__})"
    )
    assert info.value.__cause__ is missing


def test_a_runtime_registration_under_a_built_in_name_is_no_built_in(
    cleanup: list[str],
) -> None:
    # "openai" registered by the user: its factory's dependency is theirs, not the extra's.
    def needs_sdk(model: str | None, **options: Any) -> Provider:
        import cm_notebook_test_absent_sdk  # type: ignore[import-not-found]  # noqa: F401

        raise AssertionError("unreachable")

    register_provider("openai", needs_sdk)
    cleanup.append("openai")
    with pytest.raises(ProviderNotInstalledError) as info:
        get_provider("openai:gpt-4o-mini")
    assert "cm_notebook_test_absent_sdk" in str(info.value)
    assert "cm_notebook[openai]" not in str(info.value)


@pytest.fixture
def ghost_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installed distribution whose entry point names a module that is not there,
    as when a plugin's dependency is missing. Found by the real importlib.metadata."""
    dist = tmp_path / "ghost_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ghost-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[cm_notebook.providers]\nghost = ghost_plugin_missing_module:GhostProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    refresh_providers()
    yield
    monkeypatch.undo()
    refresh_providers()


@pytest.mark.usefixtures("ghost_plugin")
def test_entry_point_whose_import_fails() -> None:
    assert isinstance(available_providers()["ghost"], EntryPoint)
    with pytest.raises(ProviderNotInstalledError) as info:
        get_provider("ghost")
    message = str(info.value)
    assert "ghost_plugin_missing_module" in message
    # A third-party plugin: the remedy is that distribution, not a cm_notebook extra.
    assert "ghost-plugin" in message
    assert isinstance(info.value.__cause__, ImportError)


def test_refresh_keeps_runtime_registrations(cleanup: list[str]) -> None:
    register_provider("kept", ScriptedProvider)
    cleanup.append("kept")
    refresh_providers()
    assert "kept" in available_providers()
    assert set(BUILT_INS) <= set(available_providers())


@pytest.fixture
def lazy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An installed plugin that loads, but imports its SDK (not installed) when it
    builds a provider. Found by the real importlib.metadata."""
    dist = tmp_path / "lazy_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lazy-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[cm_notebook.providers]\nlazy = cm_notebook_lazy_plugin:LazyProvider\n"
    )
    (tmp_path / "cm_notebook_lazy_plugin.py").write_text(
        "class LazyProvider:\n"
        "    @classmethod\n"
        "    def from_spec(cls, model, **options):\n"
        "        import lazy_plugin_absent_sdk\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cm_notebook_lazy_plugin", raising=False)
    importlib.invalidate_caches()
    refresh_providers()
    yield
    monkeypatch.undo()
    refresh_providers()


@pytest.mark.usefixtures("lazy_plugin")
def test_a_plugin_whose_sdk_is_missing_at_construction_is_told_to_reinstall_itself() -> None:
    for _attempt in range(2):  # the first loads the plugin, the second finds it loaded
        with pytest.raises(ProviderNotInstalledError) as info:
            get_provider("lazy:big")
        message = str(info.value)
        assert "lazy_plugin_absent_sdk" in message
        assert message.endswith("install it with: pip install --force-reinstall lazy-plugin")
        assert "cm_notebook[" not in message


@pytest.mark.usefixtures("no_provider_env")
def test_a_spec_ending_in_a_colon_gets_advice_that_works() -> None:
    # openai has no default model: leaving the colon out fails too, so it is not advised.
    with pytest.raises(InvalidInputError) as openai_error:
        parse_spec("openai:")
    assert "leave out the colon" not in str(openai_error.value)
    assert "'openai:gpt-4o-mini'" in str(openai_error.value)
    with pytest.raises(InvalidInputError, match="needs a model"):
        get_provider("openai")
    with pytest.raises(InvalidInputError) as anthropic_error:
        parse_spec("anthropic:")
    assert "leave out the colon" not in str(anthropic_error.value)
    assert "'anthropic:claude-haiku-4-5'" in str(anthropic_error.value)
    # local and scripted have a default model: leaving the colon out is the advice, and works.
    with pytest.raises(InvalidInputError, match=r"leave out the colon .*\('scripted'\)"):
        parse_spec("scripted:")
    assert get_provider("scripted").name == "scripted"
    with pytest.raises(InvalidInputError, match=r"leave out the colon .*\('local'\)"):
        parse_spec("local:")
    # A plugin's name: both ways, hedged, with the spec to write.
    with pytest.raises(InvalidInputError, match=r"'myplugin:<model>'.*if the provider has"):
        parse_spec("myplugin:")
