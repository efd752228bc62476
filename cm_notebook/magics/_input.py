"""Keep IPython's help syntax off ``%cm send ...?``.

IPython rewrites a line that ends in ``?`` into a help request before any magic runs
(its ``HelpEnd`` input transformer): ``%cm send What is the capital of France?`` would
become ``%pinfo France``, print "Object `France` not found." and send nothing. The
magic never sees such a line, so the extension adds :func:`send_keeps_question_marks`
to the shell's cleanup transformers, which run first: it turns such a line into the
call IPython itself would make for ``%cm send ...`` (or ``x = %cm send ...``), with
the ``?`` kept in the text. ``%cm?`` (help on the magic) and every other line are left
alone.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["register", "send_keeps_question_marks"]

#: ``%cm send ...?``, maybe indented, maybe assigned (``r = %cm send ...?``, IPython's
#: assignment form of a line magic, which its help syntax rewrites as well).
_SEND_ENDING_IN_QUESTION = re.compile(
    r"(?P<indent>[ \t]*)"
    r"(?P<assign>[^\W\d][\w.]*(?:[ \t]*,[ \t]*[^\W\d][\w.]*)*[ \t]*=[ \t]*)?"
    r"%cm[ \t]+(?P<line>send[ \t].*\?)[ \t]*"
)


def send_keeps_question_marks(lines: list[str]) -> list[str]:
    """IPython cleanup transformer: each ``%cm send ...?`` line as a direct magic call."""
    if not lines or lines[0].lstrip().startswith("%%"):
        return lines  # a cell magic's body is its own text, never rewritten
    out = []
    for line in lines:
        match = _SEND_ENDING_IN_QUESTION.fullmatch(line.rstrip("\r\n"))
        if match is None:
            out.append(line)
            continue
        call = f"get_ipython().run_line_magic('cm', {match.group('line')!r})"
        out.append(f"{match.group('indent')}{match.group('assign') or ''}{call}\n")
    return out


def register(shell: Any) -> None:
    """Add the transformer to ``shell`` once (loading the extension again adds nothing)."""
    cleanup = getattr(shell, "input_transformers_cleanup", None)
    if cleanup is not None and send_keeps_question_marks not in cleanup:
        cleanup.append(send_keeps_question_marks)
