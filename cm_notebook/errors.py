"""The exception tree of cm_notebook.

Every error the package raises on purpose derives from :class:`CMError`, so
``except CMError`` catches exactly what cm_notebook means to tell you about and
nothing else. Errors carry a message that says what was wrong and what to do.

::

    CMError
    ├── InvalidInputError (also ValueError)      bad argument from the caller
    │   └── InvalidIdError                       hostile or malformed id / branch name
    ├── StoreError                               the on-disk store
    │   ├── ContextNotFoundError (also KeyError)
    │   ├── MessageNotFoundError (also KeyError)
    │   ├── BranchNotFoundError (also KeyError)
    │   ├── BranchExistsError
    │   ├── ContextExistsError
    │   ├── CorruptDataError                     a damaged file (unparsable, or a folder or
    │   │                                        link in its place); has .path
    │   ├── SchemaVersionError                   written by a newer cm_notebook; has .path
    │   ├── StoreLockTimeoutError                another process holds the lock too long
    │   └── StoreIOError (also OSError)          the file system refused a read or write;
    │       │                                    has .path and .errno
    │       └── StorageFullError                 no space left (ENOSPC, EDQUOT): nothing
    │                                            half-written is visible; free space, retry
    ├── MigrationError                           a v1 source could not be read at all
    ├── ExtraNotInstalledError (also ImportError) a feature needs an optional extra
    ├── ProviderError                            a model provider failed
    │   ├── TransientProviderError               worth retrying; has .retry_after
    │   └── PermanentProviderError               retrying will not help; needs the user
    │       └── ProviderSetupError               no request can succeed as the provider is
    │           │                                set up: no or a refused key (401, 403), an
    │           │                                unknown model or address (404), no credit
    │           │                                or quota left (402, insufficient_quota)
    │           ├── ProviderNotInstalledError    an optional extra is missing
    │           └── UnknownProviderError         no provider registered under that name
    │                                            (also InvalidInputError)
    ├── StateError                               an operation that the current state forbids
    │   ├── IllegalTransitionError               the FSM got an input it cannot take
    │   ├── BusyError                            a turn is already running on that branch
    │   └── BranchMovedError                     a branch head moved under a compare-and-set
    └── ToolError
        ├── ToolDefinitionError (also TypeError) a function cannot be turned into a tool
        ├── ToolArgumentsError                   arguments failed validation
        │                                        (also InvalidInputError)
        ├── ToolCallNotFoundError (also KeyError)
        └── ToolCallAlreadyResolvedError         approve/deny twice (also StateError)

Provider SDK and HTTP errors are translated into ``TransientProviderError`` or
``PermanentProviderError`` at the provider boundary (``raise ... from exc``), so the
state machine never needs to know which SDK produced them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .redact import redact_text

__all__ = [
    "BranchExistsError",
    "BranchMovedError",
    "BranchNotFoundError",
    "BusyError",
    "CMError",
    "ContextExistsError",
    "ContextNotFoundError",
    "CorruptDataError",
    "ExtraNotInstalledError",
    "IllegalTransitionError",
    "InvalidIdError",
    "InvalidInputError",
    "MessageNotFoundError",
    "MigrationError",
    "PermanentProviderError",
    "ProviderError",
    "ProviderNotInstalledError",
    "ProviderSetupError",
    "SchemaVersionError",
    "StateError",
    "StorageFullError",
    "StoreError",
    "StoreIOError",
    "StoreLockTimeoutError",
    "ToolArgumentsError",
    "ToolCallAlreadyResolvedError",
    "ToolCallNotFoundError",
    "ToolDefinitionError",
    "ToolError",
    "TransientProviderError",
    "UnknownProviderError",
]


class CMError(Exception):
    """Base class of every error cm_notebook raises on purpose.

    Its message is redacted (:func:`cm_notebook.redact.redact_text`): it may quote what
    a server or a caller sent, and an error's text ends up in saved notebook outputs.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_text(a) if isinstance(a, str) else a for a in args))


class InvalidInputError(CMError, ValueError):
    """An argument from the caller is not acceptable; the message says why."""


class InvalidIdError(InvalidInputError):
    """A context id, message id or branch name is malformed or unsafe (e.g. ``../..``)."""


class StoreError(CMError):
    """Something about the on-disk store."""


class _LookupStoreError(StoreError, KeyError):
    # KeyError's str() wraps the message in quotes; keep the plain sentence.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ContextNotFoundError(_LookupStoreError):
    """No context with that id exists in the data directory."""


class MessageNotFoundError(_LookupStoreError):
    """No message with that id exists in the context."""


class BranchNotFoundError(_LookupStoreError):
    """No branch with that name exists in the context."""


class BranchExistsError(StoreError):
    """A branch with that name already exists."""


class ContextExistsError(StoreError):
    """A context with that id already exists; ``.existing`` is the id of the one there.

    That id can differ from the one asked for (only in case: the store refuses ids that
    would be one folder on Windows and macOS), and a remedy must name it: ``rm`` of the
    id asked for finds nothing. None when the raiser did not say.
    """

    def __init__(self, message: str, *, existing: str | None = None) -> None:
        super().__init__(message)
        self.existing = existing

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled (a process pool, say) with its ``existing``, which ``args`` lacks.
        return (_context_exists, (str(self), self.existing))


class CorruptDataError(StoreError):
    """A file in the store could not be parsed or validated."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class SchemaVersionError(StoreError):
    """The data was written by a newer cm_notebook than this one; ``.path`` names the file."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class StoreLockTimeoutError(StoreError):
    """Another process held the context's write lock for too long."""


class StoreIOError(StoreError, OSError):
    """The file system refused a read or write of the store (permissions, I/O error, ...).

    ``.path`` is the file or folder concerned and ``.errno`` the operating system's error
    number (also an ``OSError``, so code that already catches ``OSError`` keeps working).
    A write that raised this left the previous state in place: the store never shows a
    half-written file.
    """

    def __init__(
        self, message: str, path: Path | str | None = None, errno: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.errno = errno
        self.filename = str(path) if path is not None else None

    def __str__(self) -> str:
        # OSError's str() would prefix "[Errno N]"; the message already says everything.
        return str(self.args[0]) if self.args else ""


class StorageFullError(StoreIOError):
    """The disk (or quota) holding the store is full: ``ENOSPC`` or ``EDQUOT``.

    Raised by any store write, naming the path it could not write. Nothing acknowledged
    is lost and no temporary file is left behind; free some space and retry. A turn
    that hits it ends as a failure rather than losing the reply silently.
    """


class MigrationError(CMError):
    """A v1 source could not be read at all (individual bad records are reported instead)."""


class ExtraNotInstalledError(CMError, ImportError):
    """A feature needs an optional extra that is not installed; the message names it
    (e.g. ``pip install 'cm_notebook[data]'`` for ``to_dataframe()``)."""


class ProviderError(CMError):
    """A model provider failed."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.provider = provider


class TransientProviderError(ProviderError):
    """A failure worth retrying: rate limits, 5xx, timeouts, resets, a cut stream."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        provider: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, provider=provider)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """A failure that retrying will not fix (bad key, bad request, unknown model)."""


class ProviderSetupError(PermanentProviderError):
    """No request can succeed as the provider is set up, whatever it asks: its API key is
    missing or refused (HTTP 401, 403), its model or address is unknown (404, a server
    that does not speak its API; an API's in-stream error saying so), its account is out
    of credit or quota (HTTP 402, a 429 ``insufficient_quota``), it is not installed,
    its local model file is missing or cannot load. A sweep starts no more cells of a
    variant that failed with it (see :mod:`cm_notebook.sweep`)."""


class ProviderNotInstalledError(ProviderSetupError):
    """The provider needs an optional dependency that is not installed."""


class UnknownProviderError(ProviderSetupError, InvalidInputError):
    """No provider is registered under the requested name."""


class StateError(CMError):
    """The operation is not possible in the current state."""


class IllegalTransitionError(StateError):
    """The state machine received an event that its current state cannot take."""


class BusyError(StateError):
    """A turn is already running; wait for it, or cancel it."""


class BranchMovedError(StateError):
    """A write that moves a branch head found the head no longer where the writer read it
    (another writer moved it); nothing was written."""


class ToolError(CMError):
    """Something about tools and tool calls."""


class ToolDefinitionError(ToolError, TypeError):
    """A Python function cannot be turned into a tool (e.g. an untyped parameter)."""


class ToolArgumentsError(ToolError, InvalidInputError):
    """Tool-call arguments failed validation against the tool's schema."""


class ToolCallNotFoundError(ToolError, KeyError):
    """No pending tool call with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ToolCallAlreadyResolvedError(ToolError, StateError):
    """The tool call is settled: already approved or denied, or failed (invalid arguments)."""


def _context_exists(message: str, existing: str | None) -> ContextExistsError:
    # Unpickles a ContextExistsError (see its __reduce__).
    return ContextExistsError(message, existing=existing)
