"""What a migration did, context by context, and a summary for people."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .._cli_advice import for_contexts_in
from .._unicode import without_surrogates

__all__ = ["ContextResult", "ContextStatus", "MigrationReport", "said_for"]


class ContextStatus(str, Enum):
    """The outcome for one v1 context."""

    MIGRATED = "migrated"  # written (or, in a dry run, would be) and validated
    PARTIAL = "partial"  # written, but some of it could not be converted: see problems
    SKIPPED = "skipped"  # already migrated earlier (or a duplicate in the source)
    FAILED = "failed"  # nothing written: see problems


@dataclass
class ContextResult:
    """One v1 context's outcome."""

    position: int  # index of the record in the source
    id: str | None  # the cm_notebook context id (None if none could be made)
    v1_id: str | None
    title: str
    status: ContextStatus
    source_messages: int = 0  # message records in v1, readable or not
    messages_migrated: int = 0  # v1 messages written (or that would be)
    messages_copied: int = 0  # extra copies made for branches that contradict the tree
    branches: int = 0
    problems: list[str] = field(default_factory=list)  # losses and guesses
    notes: list[str] = field(default_factory=list)  # harmless changes (new ids, copies)
    source_sha256: str | None = None  # of the v1 record
    content_sha256: str | None = None  # of role+content in v1 order, checked after writing
    source_file: str | None = None  # the file it came from, when the source is a folder

    def label(self) -> str:
        """``'title' (id)`` for messages, with ``from <file>`` for a folder's files."""
        where = f" from {self.source_file}" if self.source_file else ""
        return f"{self.title!r} ({self.id or f'#{self.position}'}){where}"


@dataclass
class MigrationReport:
    """The result of :func:`~cm_notebook.migrate.migrate`; ``str()`` is a summary."""

    source: Path
    source_kind: str
    dry_run: bool = False
    backup: Path | None = None
    contexts: list[ContextResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # about the source as a whole

    def with_status(self, status: ContextStatus) -> list[ContextResult]:
        """The results with that status, in source order."""
        return [c for c in self.contexts if c.status is status]

    @property
    def ok(self) -> bool:
        """True when no context failed (partial contexts count as ok: they were written)."""
        return not self.with_status(ContextStatus.FAILED)

    @property
    def incomplete(self) -> list[ContextResult]:
        """Contexts written (or, in a dry run, that would be) without some of their v1
        message records: the ones their problems name could not be converted. The
        command line exits 1 for these, as for a failure; the v1 source keeps them."""
        done = (ContextStatus.MIGRATED, ContextStatus.PARTIAL)
        return [
            c for c in self.contexts if c.status in done and c.messages_migrated < c.source_messages
        ]

    @property
    def messages_migrated(self) -> int:
        """v1 messages written (or that would be) in this run."""
        done = (ContextStatus.MIGRATED, ContextStatus.PARTIAL)
        return sum(c.messages_migrated for c in self.contexts if c.status in done)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as text, statuses as their values)."""
        data = asdict(self)
        data["source"] = str(self.source)
        data["backup"] = None if self.backup is None else str(self.backup)
        for item in data["contexts"]:
            item["status"] = item["status"].value
        return data

    def __str__(self) -> str:
        written = "would be migrated" if self.dry_run else "migrated"
        counts = {s: len(self.with_status(s)) for s in ContextStatus}
        lines = [
            f"{'Dry run: ' if self.dry_run else ''}{self.source} ({self.source_kind}): "
            f"{len(self.contexts)} context(s); "
            f"{counts[ContextStatus.MIGRATED]} {written}, "
            f"{counts[ContextStatus.PARTIAL]} partial, "
            f"{counts[ContextStatus.SKIPPED]} skipped, "
            f"{counts[ContextStatus.FAILED]} failed; "
            f"{self.messages_migrated} message(s) {written}."
        ]
        if self.backup is not None:
            lines.append(f"Backup of the source: {self.backup}")
        lines.extend(f"note: {n}" for n in self.notes)
        for c in self.contexts:
            copied = f", {c.messages_copied} copied" if c.messages_copied else ""
            if c.status in (ContextStatus.MIGRATED, ContextStatus.PARTIAL):
                what = (
                    f"{c.messages_migrated}/{c.source_messages} message(s){copied}, "
                    f"{c.branches} branch(es)"
                )
            else:
                what = f"{c.source_messages} message(s) in v1"
            lines.append(f"- {c.status.value:8} {c.label()}: {what}")
            lines.extend(f"    problem: {p}" for p in c.problems)
            lines.extend(f"    note: {n}" for n in c.notes)
        incomplete = self.incomplete
        if incomplete:
            left = sum(c.source_messages - c.messages_migrated for c in incomplete)
            lines.append(
                f"warning: {len(incomplete)} context(s) {written} without {left} of their v1 "
                "message(s) (see their problems above); the v1 source still holds them"
            )
        # A path can hold a lone surrogate (a file name that is not UTF-8); printing it
        # must not fail.
        return without_surrogates("\n".join(lines))


def said_for(report: MigrationReport, data_dir: object) -> MigrationReport:
    """``report``, the commands its notes and problems advise given ``--data-dir`` for
    contexts stored in ``data_dir`` (the store's folder) unless that is the default one
    (see :func:`~cm_notebook._cli_advice.for_contexts_in`): a Python caller reads them
    as they are, and pasted they act on the store migrated into."""
    report.notes = [for_contexts_in(note, data_dir) for note in report.notes]
    for result in report.contexts:
        result.problems = [for_contexts_in(problem, data_dir) for problem in result.problems]
        result.notes = [for_contexts_in(note, data_dir) for note in result.notes]
    return report
