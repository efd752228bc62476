"""Why a sweep cell's prompt or reply could not be read: damage, or the operating system.

A cell whose messages cannot be read is not asked again (that would pay twice, and
push a reply that may be whole off its branch), and the cell fails. What the user is
told to do depends on why the read failed:

* the file is damaged (it does not parse, is missing though the index lists it, is a
  stand-in a repair wrote): :func:`unreadable_cell` says to restore it, or to drop the
  cell's messages with ``delete_branch`` when there is no backup;
* the operating system refused the read (:class:`~cm_notebook.errors.StoreIOError`:
  permission denied, too many open files, an I/O error): the files may well be whole,
  so nothing is said to be damaged and nothing about deleting; the error keeps the
  store's own advice about the condition (raise ``ulimit -n``, give read access) and
  says that running the sweep again afterwards picks the cell up.

Other store errors (a lock held too long, a file from a newer version) are passed on
as they are: their own message says what to do.
"""

from __future__ import annotations

from .errors import CMError, CorruptDataError, StoreIOError

__all__ = ["cell_read_error", "os_refused", "unreadable_cell"]


def os_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the operating system refusing a read or write (a
    :class:`~cm_notebook.errors.StoreIOError`, or any ``OSError``), as opposed to a
    damaged file (:class:`~cm_notebook.errors.CorruptDataError`)."""
    return isinstance(exc, OSError)


def cell_read_error(key: str, branch: str, exc: CMError) -> CMError:
    """The failure of cell ``key`` (on ``branch``) whose prompt or reply could not be
    read, raising ``exc``: see the module docstring."""
    if isinstance(exc, StoreIOError):
        return type(exc)(
            f"cell {key}: a message of its branch {branch!r} could not be read just now, "
            "so whether the cell has its answer is unknown and it is not asked again. "
            f"{exc} Nothing was changed on the branch: once that is fixed, run the "
            "sweep again and the cell goes on from what is stored.",
            exc.path,
            exc.errno,
        )
    if isinstance(exc, CorruptDataError):
        return unreadable_cell(key, branch, exc)
    return exc


def unreadable_cell(key: str, branch: str, exc: CMError) -> CorruptDataError:
    """The failure of a cell whose prompt or reply file is damaged (``exc`` names the
    file): whether it has its answer is unknown, so it is not asked again (that would
    pay twice, and take a reply that may be whole off its branch)."""
    return CorruptDataError(
        f"cell {key}: a message of its branch {branch!r} cannot be read, so whether the "
        f"cell has its answer is unknown and it is not asked again. {exc} To run the "
        "cell, restore that file from a backup (then `cm-notebook check` says whether "
        f"the context reads whole again); without one, session.delete_branch({branch!r}) "
        "drops the cell's unreadable messages from it, and the next run of the sweep "
        "asks it afresh",
        getattr(exc, "path", None),
    )
