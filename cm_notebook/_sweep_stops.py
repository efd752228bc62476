"""A sweep's variants whose provider refuses every request: no more of their cells start.

Some failures of a cell say nothing about its prompt, only about its variant's provider:
the API key is missing or refused (HTTP 401, 403), the model or the address is unknown
(404, a server that does not speak the API), the provider is not installed, the local
model file is missing or cannot load. Every other cell of that variant would fail the
same way, each leaving a failed reply and costing a request, and the user would learn
it only at the end. So once one cell failed so, the
sweep starts no more cells of that variant: they stay ``pending`` (their branches
empty, nothing sent), the other variants go on, and the sweep says which variant
stopped and why (:attr:`~cm_notebook.sweep.Sweep.stopped`, its repr, its progress bar).
Running the same sweep again once the provider is put right resumes those cells.

What stops a variant (:func:`refuses_every_request`) is a
:class:`~cm_notebook.errors.ProviderSetupError`, or a permanent provider error with
status 401, 403 or 404 (a provider that does not use that class). A transient failure
(a rate limit, a timeout, a 5xx, a cut stream, even once its retries ran out) never
does, nor does one that depends on the cell's own request (a prompt longer than the
context window, a request body refused with 400, a content filter).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import PermanentProviderError, ProviderSetupError

if TYPE_CHECKING:
    from .sweep import Sweep, SweepCell

__all__ = ["VariantStops", "nothing_to_start", "progress_bar", "refuses_every_request"]

#: Statuses no request to the same provider, model and key can get past.
_REFUSED_STATUSES = frozenset({401, 403, 404})
#: The longest reason a progress bar shows for a stopped variant.
_POSTFIX_REASON = 80


def refuses_every_request(exc: BaseException) -> bool:
    """Whether ``exc``, a cell's failure, will fail every request to its provider
    alike (whatever the request asks), so that asking again cannot help."""
    if isinstance(exc, ProviderSetupError):
        return True
    return isinstance(exc, PermanentProviderError) and exc.status_code in _REFUSED_STATUSES


class VariantStops:
    """The variants of a sweep that start no more cells, with the failure that stopped
    each (changed on the session's loop only)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self._labels = labels
        self._why: dict[int, str] = {}

    def stopped(self, variant: int) -> bool:
        """Whether the variant at index ``variant`` starts no more cells."""
        return variant in self._why

    def note(self, cell: SweepCell, exc: BaseException) -> bool:
        """Stop ``cell``'s variant if ``exc`` (how the cell failed) will fail all of its
        cells; True if this stopped it (False if it was stopped already)."""
        if cell.variant_index in self._why or not refuses_every_request(exc):
            return False
        self._why[cell.variant_index] = str(exc)
        return True

    def notes(self, cells: Sequence[SweepCell]) -> dict[str, str]:
        """By variant label, what a stopped variant's user is to know and do; only for
        the variants with cells still pending (another run may have answered them)."""
        pending = Counter(cell.variant_index for cell in cells if cell.status == "pending")
        out = {}
        for variant, why in list(self._why.items()):  # may be read from another thread
            left = pending[variant]
            if left:
                label = self._labels[variant]
                out[label] = (
                    f"variant {label!r}: stopped after its first failure, as its provider "
                    f"refuses every request: {why.rstrip('.')}. Once that is fixed, run the "
                    f"sweep again to resume its {left} pending cell{'s' if left != 1 else ''}"
                )
        return out

    def postfix(self) -> str:
        """The stopped variants in a few words, for a progress bar (its full reason is
        in the sweep's ``stopped``)."""
        told = []
        for variant, why in self._why.items():
            short = why if len(why) <= _POSTFIX_REASON else why[: _POSTFIX_REASON - 3] + "..."
            told.append(f"variant {self._labels[variant]!r} stopped: {short}")
        return "; ".join(told)


def nothing_to_start(sweep: Sweep) -> bool:
    """Whether ``sweep`` will start no more cells: it was stopped, or every cell still
    pending belongs to a stopped variant (its running cells may still run)."""
    stops = sweep._stops
    return sweep._stopping or all(
        stops.stopped(cell.variant_index) for cell in sweep._cells if cell.status == "pending"
    )


def progress_bar(sweep: Sweep, enabled: bool) -> Any:
    """The sweep's progress bar (None if not ``enabled``): tqdm.auto's, a widget in a
    notebook (made here, in the caller's cell, so it is shown there), else a text bar on
    stderr. Updated from the session's loop; a stopped variant is told in its postfix."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    cells = sweep._cells
    done = sum(1 for cell in cells if cell.status == "done")
    return tqdm(total=len(cells), initial=done, desc=sweep.name, unit="cell")
