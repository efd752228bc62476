"""One branch of an export as Markdown, for reading, that no message can take over.

The export is one document, rendered by whatever reads it (a notebook, nbconvert, a
Markdown viewer), often with raw HTML allowed. A message is the model's, a tool's or a
person's text, so each is made safe *in the document*, not only on its own:

* **No live HTML.** ``&`` and ``<`` become entities outside code. A top-level code
  block (fenced or indented) keeps its text as typed, written out again as a fence
  every reader takes alike: at a line's start, between blank lines, of backticks no
  line inside can close, with a language's name or no info. An indented block, a
  lazy line or an odd fence can be read otherwise (nbconvert's reader takes
  ``> -`` then an indented line as one list item, and a ``mermaid`` block's text as
  HTML). Code nested in a list or a quote keeps its ``&`` and ``>`` but not a raw
  ``<``: where such a block ends depends on the container, which renderers do not
  all read alike, and only ``<`` can open markup.
* **No math over code.** nbconvert reads display math (``$$``, ``\\\\[``,
  ``\\begin{x}``) before any other block, from mid-line too and across blank lines and
  fences, and joins it to the paragraph before it: math that took in a code block
  could leave the block's text to be read as Markdown. Math is kept where only math
  can open it and nothing kept as typed is in it: from a line's start after a blank
  line (one is added if missing), closed before any code. Any other opening is
  escaped, but for one inside a paragraph of plain lines (each starting with a
  letter), which nbconvert reads whole first.
* **Inline code as typed.** A code span on one line (`` `a < b` ``) keeps its ``<``
  and ``&``: in a span an entity is shown as typed, so ``&lt;`` would be read. Only
  in a paragraph where every reader pairs the backticks alike: no link destination
  (``](``), no ``|`` (a table cell boundary to some), no ``$`` or backslash (math
  that notebooks take out before Markdown is read), no bare address (``://``,
  ``www.``: nbconvert links it on into a span); each line's backticks pair on that
  line, and no line before it that a reader may join it to leaves a run of the same
  length unpaired (readers end containers at other lines, and nbconvert adds some
  lines to the last paragraph it read, however far back); and no line of the
  message looks like a fence with an info string a reader acts on (such a fence,
  opened where CommonMark sees none, would put a span's text in the page). The
  message is then parsed again with HTML on, to check that no markup came alive
  (else its spans are escaped too).
* **No script links.** A link or reference definition whose destination is a
  ``javascript:``, ``vbscript:`` or ``data:`` URL is shown as text, also when written
  with entities (``jav&#x61;script:``) or escapes (``javascript\\:``), in a quote or
  a list item, or with its label over lines: every ``](`` and ``]:`` before such a
  destination is escaped, so no reader finds a link there.
* **No images loaded on opening.** An image is a link to it (its ``!`` escaped): a
  reply's image address can carry what the model read to whoever serves it.
* **Nothing left open.** A fence a message opens and never closes is closed at its end
  (or at the end of the list or quote it is in, which some readers end elsewhere), so
  it cannot swallow the next message's headings (or leave the next message's "code"
  live, as its closing fence would then open markup).
* **No fake turns.** The role headings, and those of the system prompts (at the top,
  where a reply's differs, the next reply's), are the document's only level-2
  headings: a message's own headings are moved two levels down (``#`` becomes
  ``###``), so a reply cannot forge a "User" or "Assistant" turn or a prompt's change,
  or outrank one.
* Short fields (a tag, a tool's name, a call id, an error, a denial's reason) are
  literal text: every Markdown character escaped, or a code span no backtick closes.
"""

from __future__ import annotations

import bisect
import html
import itertools
import re
from collections.abc import Callable

from markdown_it import MarkdownIt

from ._export_readers import (
    BACKTICKS,
    fence_closing,
    kept_paragraphs,
    needs_blank_before,
    without_math_over_code,
)
from ._reasoning_html import reasoning_summary
from .model import Message
from .prompts import NO_PROMPT, prompt_trail
from .render import (
    call_arguments_text,
    code_fence,
    longest_backtick_run,
    shown_call,
    status_label,
    stop_note,
    tool_results,
)

__all__ = ["markdown_of", "message_markdown"]

_ROLE_TITLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}

#: Finds a text's blocks as a CommonMark reader does. HTML off: the blocks are those of
#: the text once its ``<`` are escaped (no HTML block can hide a fence).
_BLOCKS = MarkdownIt("commonmark", {"html": False})

#: How a renderer that lets raw HTML through reads a message: the check that escaping
#: left none alive.
_LIVE = MarkdownIt("commonmark", {"html": True}).enable("table")

#: A link's destination, or a reference definition's, that runs script or holds a
#: document. ``[\s>]*`` spans the line break CommonMark allows before a destination,
#: with the next line's quote marks; ``&lt;`` is a ``<`` already escaped (a
#: destination in pointy brackets). The destination is read whole, to see through
#: entities (``jav&#x61;script:``, ``&colon;``), which some readers decode even once
#: escaped.
_DESTINATION = r"[\s>]*(?:<|&lt;)?\s*([^\s)>]*)"
_SCRIPT_LINK = re.compile(r"\]\((?=" + _DESTINATION + ")")
#: The end of a reference definition's label, whatever is before it (a quote's or a
#: list's marks with or without a space, a label over lines: readers differ on
#: those), with the backslashes before it: an odd number escapes it already.
_SCRIPT_DEFINITION = re.compile(r"(\\*)\](?=:" + _DESTINATION + ")")
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "data:")

#: The language's name a top-level code block's fence keeps from its info string.
#: Anything else is left off: a backtick would make the fence text, and a reader may
#: act on a name (nbconvert puts a ``mermaid`` block's text in the page as HTML,
#: pandoc a ``{=html}`` one's).
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]+")
#: A line some reader may take for a fence's opening (in a container it ends
#: elsewhere, or once it strips a definition's indent), with its info's first word.
_FENCE_LIKE = re.compile(r"^[ \t>*+\-:.)\d]*(?:`{3,}|~{3,})[ \t]*([^\s`]*)", re.MULTILINE)

#: An image (inline or by reference): a reader would load it on opening the
#: document, telling its server so, with whatever a reply put in its address. Its
#: ``!`` is escaped unless an odd number of backslashes escapes it already.
_IMAGE = re.compile(r"(\\*)!\[")

#: A heading in a quote or a list item: the container's marks, then the heading's.
#: An ATX one goes two levels down; a setext one's underline is escaped (its text is a
#: paragraph then), so no message holds a heading of the turns' level anywhere.
_CONTAINER = r"^((?:[ \t]*(?:>|[-+*]|\d{1,9}[.)])(?=[ \t]|$))*[ \t]*)"
_NESTED_ATX = re.compile(_CONTAINER + r"(#{1,6})(?=[ \t]|$)")
_NESTED_UNDERLINE = re.compile(_CONTAINER + r"(?=[-=])")

#: The ASCII punctuation that can mean something in Markdown (backslash-escaped in
#: literal text). CommonMark lets any ASCII punctuation be escaped.
_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!<>&|~=:])")


def _code_span(text: str) -> str:
    """``text`` as one inline code span: literal, on one line, closed by nothing inside."""
    flat = " ".join(text.splitlines()) or " "
    ticks = "`" * (longest_backtick_run(flat) + 1)
    pad = " " if flat[0] in "` " or flat[-1] in "` " else ""
    return f"{ticks}{pad}{flat}{pad}{ticks}"


def _plain(line: str) -> str:
    # One line as plain text: every Markdown character escaped, no indentation.
    return _MARKUP.sub(r"\\\1", line.strip())


def _literal(text: str) -> str:
    """``text`` as plain text on one line: every Markdown character escaped."""
    return " ".join(_plain(part) for part in text.splitlines())


def _quoted(label: str, text: str) -> str:
    """A block quote ``**label:** text``, each line of ``text`` literal."""
    lines = [_plain(line) for line in text.splitlines()] or [""]
    lines[0] = f"**{label}:** {lines[0]}"
    return "\n".join(f"> {line}".rstrip() for line in lines)


def _escaped(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;")


def _demoted(line: str, setext: list[str] | None, level: int) -> str:
    # A heading two levels down (at most six): ATX, or a setext heading's text lines.
    marks = "#" * min(6, level + 2)
    if setext is not None:
        return f"{marks} {' '.join(part.strip() for part in setext)}"
    return re.sub(r"^( {0,3})#{1,6}(?=\s|$)", lambda m: m.group(1) + marks, line, count=1)


def message_markdown(text: str) -> str:
    """``text`` (a message, a system prompt) as a safe block of the document (see the
    module docstring)."""
    # Inline code is escaped too where a fence some reader opens could take it in with
    # an info string it acts on (see _LANGUAGE): the span's "<" would reach the page.
    acted_on = any(_language(match[1]) != match[1] for match in _FENCE_LIKE.finditer(text))
    safe = _message_markdown(text, keep_spans=not acted_on)
    if "`" in text and not acted_on and _has_markup(safe):
        return _message_markdown(text, keep_spans=False)
    return safe


def _language(word: str) -> str:
    # ``word`` (an info string's first word) if a fence may keep it, else "".
    if _LANGUAGE.fullmatch(word) and not word.lower().startswith("mermaid"):
        return word
    return ""


def _message_markdown(text: str, *, keep_spans: bool) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: dict[int, tuple[int, str, str]] = {}  # top-level code: first line -> (end, text, info)
    nested: set[int] = set()  # code in a list or quote: as typed but for "<"
    headings: dict[int, tuple[int, int]] = {}  # first line -> (end, level)
    paragraphs: dict[int, int] = {}  # first line -> end, of those with inline code
    lists: list[bool] = []  # per list open: whether it starts at 1 (or has bullets)
    from_1: set[int] = set()  # first lines of the items of such lists
    apart_lists: set[int] = set()  # first lines of top-level lists nbconvert may not open
    closings: dict[int, str] = {}  # a line -> the fence closing to add after it
    for token in _BLOCKS.parse(text):
        if token.type.endswith("list_open"):
            lists.append(str(token.attrGet("start") or 1) == "1")
        elif token.type.endswith("list_close"):
            lists.pop()
        if token.map is None:
            continue
        start, end = token.map
        opens_list = token.type.endswith("list_open") and token.level == 0
        if opens_list and needs_blank_before(lines[start], from_1=lists[-1]):
            apart_lists.add(start)
        if token.type == "list_item_open" and lists[-1]:
            from_1.add(start)
        if token.type in ("fence", "code_block") and token.level == 0:
            blocks[start] = (min(end, len(lines)), token.content, token.info)
        elif token.type in ("fence", "code_block"):
            nested.update(range(start, end))
            if token.type == "fence":
                closings.update(fence_closing(lines, start, min(end, len(lines)), token.markup))
        elif token.type == "heading_open":
            headings[start] = (end, int(token.tag[1]) if token.level == 0 else 0)
        elif token.type == "paragraph_open" and "`" in "\n".join(lines[start:end]):
            paragraphs[start] = end
    if keep_spans:
        # Set apart by blank lines in the document: no reader joins a line across them.
        apart = {line for start, (end, _, _) in blocks.items() for line in range(start, end)}
        paragraphs = kept_paragraphs(lines, paragraphs, apart, from_1)
    else:
        paragraphs = {}
    out: list[str] = []
    code: set[int] = set()  # lines of ``out`` in a top-level code block's fence
    kept: set[int] = set()  # lines of ``out`` with inline code as typed
    at = 0
    while at < len(lines):
        line = lines[at]
        if at in apart_lists and out and out[-1].strip():
            out.append("")  # see needs_blank_before
        if at in blocks:
            end, body, info = blocks[at]
            if out and out[-1].strip():
                out.append("")
            fence = _fenced(body, info)
            code.update(range(len(out), len(out) + len(fence)))
            out += fence
            if end < len(lines) and lines[end].strip():
                out.append("")
            at = end
            continue
        if at in headings and headings[at][1]:  # a top-level heading
            end, level = headings[at]
            setext = lines[at : end - 1] if end - at > 1 else None
            out.append(_escaped(_demoted(line, setext, level)))
            at = end
            continue
        if at in headings:  # in a quote or a list: its text lines, then its underline
            end, _level = headings[at]
            if end - at > 1:
                out += [_escaped(text_line) for text_line in lines[at : end - 1]]
                out.append(_escaped(_NESTED_UNDERLINE.sub(r"\1\\", lines[end - 1], count=1)))
            else:
                out.append(_escaped(_NESTED_ATX.sub(r"\1##\2", line, count=1)))
            at = end
            continue
        if at in paragraphs:
            end = paragraphs[at]
            kept.update(range(len(out), len(out) + end - at))
            out += _escaped_but_code_spans("\n".join(lines[at:end])).split("\n")
            at = end
            continue
        if at in nested:
            out.append(line.replace("<", "&lt;"))
        else:
            out.append(_escaped(line))
        if at in closings:
            out.append(closings[at])
        at += 1
    out = _without_script_links(out, code)
    return "\n".join(without_math_over_code(out, code, code | kept))


def _fenced(content: str, info: str) -> list[str]:
    # A top-level code block's lines as a fence every reader takes alike: backticks
    # longer than any run inside (so no line closes it), a language's name or nothing.
    # An unclosed fence gets its closing line: left open, it would run on into the
    # next message, whose own fence would close it and leave that message's code live.
    language = _language(info.split()[0]) if info.split() else ""
    if not content:
        return [f"```{language}", "```"]
    return code_fence(content.removesuffix("\n"), language).split("\n")


def _escaped_but_code_spans(text: str) -> str:
    # ``text`` (one paragraph, with no backslash) escaped, but for its code spans on
    # one line, found as CommonMark finds them: a run of backticks up to the next run
    # of the same length; a run with none is literal backticks. A span across lines
    # is escaped: a line start inside it could open an HTML block to some readers.
    out: list[str] = []
    plain_from = at = 0
    while (at := text.find("`", at)) >= 0:
        run_end = at
        while run_end < len(text) and text[run_end] == "`":
            run_end += 1
        close = _closing_run(text, run_end, run_end - at)
        if close is None:
            at = run_end
        elif "\n" in text[at:close]:
            at = close
        else:
            out += [_escaped(text[plain_from:at]), text[at:close]]
            plain_from = at = close
    out.append(_escaped(text[plain_from:]))
    return "".join(out)


def _closing_run(text: str, start: int, length: int) -> int | None:
    # The end of the first run of exactly ``length`` backticks from ``start``, if any.
    for match in BACKTICKS.finditer(text, start):
        if len(match[0]) == length:
            return match.end()
    return None


def _has_markup(markdown: str) -> bool:
    # Whether a renderer with raw HTML on (and tables) finds any HTML in ``markdown``.
    for token in _LIVE.parse(markdown):
        if token.type == "html_block" or any(
            child.type == "html_inline" for child in token.children or ()
        ):
            return True
    return False


def _without_script_links(lines: list[str], code: set[int]) -> list[str]:
    # ``](`` before a script URL becomes ``]\(``, and a reference definition's ``]:``
    # ``\]:``: the text reads the same, and is no link. An image's ``!`` becomes
    # ``\!``: a link to it, loaded only on purpose. Code lines are left as they are.
    lines = _outside_code(
        _SCRIPT_LINK, lambda m: "]\\(" if _runs_script(m[1]) else m[0], lines, code
    )
    lines = _outside_code(_IMAGE, lambda m: m[0] if len(m[1]) % 2 else f"{m[1]}\\![", lines, code)
    return _outside_code(
        _SCRIPT_DEFINITION,
        lambda m: f"{m[1]}\\]" if len(m[1]) % 2 == 0 and _runs_script(m[2]) else m[0],
        lines,
        code,
    )


def _runs_script(destination: str) -> bool:
    # Whether a link to ``destination`` (as written in the document) would run script
    # or hold a document, to a reader that decodes its entities, even twice, and its
    # backslash escapes (``javascript\:``).
    text = destination
    for _ in range(3):
        text = html.unescape(text).replace("\\", "")
    text = re.sub(r"[\x00-\x20]+", "", text).lower()
    return text.startswith(_SCRIPT_SCHEMES)


def _outside_code(
    pattern: re.Pattern[str],
    replace: Callable[[re.Match[str]], str],
    lines: list[str],
    code: set[int],
) -> list[str]:
    # ``pattern`` replaced in ``lines`` joined (a match may look past a line break),
    # where it starts outside code. Never adds or removes a line.
    text = "\n".join(lines)
    starts = list(itertools.accumulate((len(line) + 1 for line in lines[:-1]), initial=0))

    def one(match: re.Match[str]) -> str:
        in_code = bisect.bisect_right(starts, match.start()) - 1 in code
        return match[0] if in_code else replace(match)

    return pattern.sub(one, text).split("\n")


def markdown_of(
    title: str,
    context_id: str,
    branch: str,
    others: list[str],
    created: str,
    tags: list[str],
    system_prompt: str | None,
    messages: list[Message],
) -> str:
    """The Markdown of one branch's conversation (see :func:`~cm_notebook.export.to_markdown`).

    ``system_prompt`` is the branch's current prompt; each reply is shown under the
    prompt it was made under (see :func:`~cm_notebook.prompts.prompt_trail`).
    """
    lines = [f"# {_literal(title)}", ""]
    lines.append(f"- Context: {_code_span(context_id)}")
    also = f" (other branches: {', '.join(_code_span(n) for n in others)})" if others else ""
    lines.append(f"- Branch: {_code_span(branch)}{also}")
    lines.append(f"- Created: {created}")
    lines.append(f"- Messages: {len(messages)}")
    if tags:
        lines.append(f"- Tags: {', '.join(_literal(tag) for tag in tags)}")
    prompts = prompt_trail(messages, system_prompt)
    if prompts.first:
        lines += ["", "## System prompt", "", message_markdown(prompts.first)]
    # A call's result is shown under the call only when no tool message on the branch
    # answers it: that message shows it (the same text) once, in its turn. Its outcome
    # is the branch's (an edited result's own, see shown_call).
    answered = tool_results(messages)
    for index, message in enumerate(messages):
        if index in prompts.changes:
            _prompt_section(lines, "System prompt changed", prompts.changes[index])
        label = status_label(message)
        status = f" ({label})" if label else ""
        heading = f"## {_ROLE_TITLES[message.role]}{status} · {message.created_at:%Y-%m-%d %H:%M}"
        lines += ["", heading, ""]
        if message.tool_call_id:
            lines += [f"*Result of tool call {_code_span(message.tool_call_id)}*", ""]
        summary = reasoning_summary(message)
        if summary is not None:  # quoted, as plain text, before the answer
            lines += [_quoted(summary, message.metadata.reasoning or "(redacted)"), ""]
        if message.content:
            lines.append(message_markdown(message.content))
        for call in message.tool_calls:
            args = call_arguments_text(message, call, indent=2)
            shown = shown_call(call, answered)
            _paragraph(lines, f"**Tool call** {_code_span(call.name)} ({shown.status.value})")
            written = call.id in message.metadata.tool_arguments_text  # not JSON
            _paragraph(lines, code_fence(args, "" if written else "json"))
            if shown.reason:
                _paragraph(lines, _quoted("Reason", shown.reason))
            if call.result is not None and call.id not in answered:
                _paragraph(lines, "Result:")
                _paragraph(lines, code_fence(call.result))
        if message.metadata.error:
            _paragraph(lines, _quoted("Error", message.metadata.error))
        stopped = stop_note(message)
        if stopped:
            _paragraph(lines, f"> *{stopped[0][0].upper()}{stopped[0][1:]}: {stopped[1]}.*")
    if prompts.next_differs:
        _prompt_section(lines, "System prompt for the next reply", prompts.next)
    return "\n".join(lines).rstrip() + "\n"


def _prompt_section(lines: list[str], heading: str, prompt: str | None) -> None:
    # A level-2 heading like a turn's: a message's own headings are moved below it.
    body = message_markdown(prompt) if prompt else f"*{NO_PROMPT}*"
    lines += ["", f"## {heading}", "", body]


def _paragraph(lines: list[str], text: str) -> None:
    # One blank line between blocks, even after a message with no text of its own.
    if lines and lines[-1] != "":
        lines.append("")
    lines.append(text)
