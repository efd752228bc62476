"""The views' layout and colours in a real browser (JupyterLab in Debian's Chromium, as
in test_views_browser): wide content stays inside the messages and the approval row,
many branches scroll inside the tree (long names cut, their fork button in view), the
compare view's text has the line height of text, and JupyterLab's dark theme leaves
every text readable (its contrast measured on the page's computed colours).

``CM_TEST_ARTIFACTS=dir`` keeps screenshots along the way in ``dir``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from browser_lab import CHROMIUM, TIMEOUT_MS, artifacts, run_new_cell, wait_js, write_notebook
from test_views_browser import _snap, lab

pytestmark = pytest.mark.slow

__all__ = ["lab"]  # the JupyterLab fixture, used here

SETUP = '''from cm_notebook import ContextSession, tool
from cm_notebook.testing import ScriptedProvider

@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

table = (
    "| " + " | ".join(f"column_{i}_header" for i in range(14)) + " |\\n|" + "---|" * 14 + "\\n"
    + ("| " + " | ".join(f"value{i}xx" for i in range(14)) + " |\\n") * 3
)
wide = (
    "A wide table:\\n\\n" + table + "\\nSee https://example.com/" + "a" * 300
    + " for details.\\n\\n```python\\nimport os  # a comment\\nx = 'text'\\n```\\n"
)
fake = (
    ScriptedProvider()
    .reply(wide)
    .tool_call("add", {"a": 2, "b": 3})
    .reply("Not run, fine.")
    .tool_call("add", {"a": 1, "b": 1})
    .reply("The sum is 2.")
)
s = ContextSession.create("Layout", provider=fake, tools=[add])
s'''

BRANCHES = """LONG = "a-very-long-branch-name-that-goes-on-and-on-" + "x" * 40
names = [f"исследование-ветка-{i}" for i in range(3)] + [LONG] + [f"b{i:02d}" for i in range(32)]
for n in names:
    s.branch(n, switch=False)
len(s.branch_names)"""

LONG_BRANCH = """from cm_notebook.widgets import ChatView
long = ContextSession.create("Long", provider=ScriptedProvider())
for i in range(110):
    await long.send(f"question {i}")
ChatView(long)"""

MATH = r"""math = ContextSession.create(
    "Math", provider=ScriptedProvider().reply("The area is $\\pi r^2$, and\n\n$$\\frac{a}{b}$$")
)
await math.send("area?")
ChatView(math)"""

# Where a formula's parts are drawn: a superscript above its base's baseline, a
# fraction's numerator above its denominator.
MATH_JS = """(el) => {
    const box = (e) => e.getBoundingClientRect();
    const sup = el.querySelector("msup");
    const frac = el.querySelector("mfrac");
    return {
        width: box(el.querySelector("math")).width,
        raised: box(sup.children[1]).bottom < box(sup.children[0]).bottom - 1,
        stacked: box(frac.children[0]).bottom <= box(frac.children[1]).top + 1,
    };
}"""

# The first message box drawn in a transcript's scroller, and its top relative to it.
TOP_MESSAGE_JS = """(scroller) => {
    const top = scroller.getBoundingClientRect().top;
    const box = [...scroller.querySelectorAll(".cm-msg")].find(
        (b) => b.getBoundingClientRect().bottom > top);
    return {id: box.dataset.id, offset: box.getBoundingClientRect().top - top};
}"""

# A comparison where one branch's prompt and answer hold wide content: a long URL, a
# long code line (in a code block in the prompt, plain in the answer) and a wide table.
WIDE_COMPARE = """wide_link = "See https://example.com/" + "a" * 200 + " for details."
wide_code = "x = '" + "b" * 300 + "'"
wide_prompt = "Give me a link.\\n\\n```python\\n" + wide_code + "\\n```\\n\\n" + table
wide_ab = ContextSession.create("Wide compare", provider=ScriptedProvider())
wide = await wide_ab.fan_out(wide_prompt, [
    {"branch": "short", "provider": ScriptedProvider().reply("Short answer.")},
    {"branch": "long", "provider": ScriptedProvider().reply(wide_link + "\\n" + wide_code)},
])
wide_ab.compare_view("short", "long")"""

# The same comparison's static HTML (the saved copy's), shown on its own.
WIDE_COPY = "wide"

# Where each of ``selector``'s elements inside ``outer`` (the element evaluated) lies.
ALL_INSIDE_JS = """(outer, selector) => {
    const box = outer.getBoundingClientRect();
    return [...outer.querySelectorAll(selector)].map((el) => {
        const r = el.getBoundingClientRect();
        return {left: r.left, right: r.right, outer: [box.left, box.right],
                inside: r.left >= box.left - 1 && r.right <= box.right + 1,
                scrolls: el.scrollWidth > el.clientWidth + 1};
    });
}"""


REASON = "because " + "x" * 400 + " and also " + "long words " * 60

# The contrast (WCAG) of an element's text against what is drawn behind it: the
# backgrounds of it and its ancestors, composited, over the page's.
CONTRAST_JS = """(el) => {
    const parse = (c) => {
        const m = c.match(/rgba?\\(([^)]+)\\)/);
        if (!m) return [0, 0, 0, 0];
        const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
        return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    };
    const over = (top, bottom) => {
        const a = top[3];
        return [0, 1, 2].map((i) => top[i] * a + bottom[i] * (1 - a)).concat([1]);
    };
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
        const bg = parse(getComputedStyle(e).backgroundColor);
        if (bg[3] > 0) layers.push(bg);
        if (bg[3] >= 1) break;
    }
    let back = [255, 255, 255, 1];
    for (const layer of layers.reverse()) back = over(layer, back);
    const fore = over(parse(getComputedStyle(el).color), back);
    const lum = (c) => {
        const [r, g, b] = c.slice(0, 3).map((v) => {
            v /= 255;
            return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const [hi, lo] = [lum(fore), lum(back)].sort((x, y) => y - x);
    return {contrast: (hi + 0.05) / (lo + 0.05), background: lum(back)};
}"""

# The texts whose colours the views set, by selector: each must be readable.
READABLE = {
    "the active branch in the status chip": ".cm-status .cm-chip.cm-active",
    "a branch's state in the status chip": ".cm-status .cm-chip .cm-state-Idle",
    "the active branch in the tree": ".cm-tree .cm-node.cm-active .cm-node-name",
    "another branch in the tree": ".cm-tree .cm-node:not(.cm-active) .cm-node-name",
    "a branch's facts": ".cm-tree .cm-node-meta",
    "a message's label": ".cm-transcript .cm-head",
    "a tool call's status badge": ".cm-transcript .cm-call-done .cm-badge",
    "a denied tool call's status badge": ".cm-transcript .cm-call-denied .cm-badge",
    "a tool call's result": ".cm-transcript .cm-call-result",
    "a tool call's reason": ".cm-transcript .cm-call-reason",
    "a reply's stats": ".cm-transcript .cm-stats",
    "a comparison's facts": ".cm-compare-column td",
    "highlighted code": ".cm-transcript .cm-body pre code span",
    "math": ".cm-transcript .cm-body math mi",
    "a word marked in a saved comparison": ".cm-comparison span[style*='background:#dfd']",
    "a word marked in a per-turn diff": ".cm-compare span[style*='background:#d1fae5']",
}


def _box(page: Any, selector: str) -> dict[str, float]:
    found = page.locator(selector).first.evaluate(
        """(el) => { const r = el.getBoundingClientRect();
            return {left: r.left, right: r.right, top: r.top, height: r.height,
                    scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
                    scrollHeight: el.scrollHeight, clientHeight: el.clientHeight}; }"""
    )
    return dict(found)


def _inside(page: Any, inner: str, outer: str) -> None:
    a, b = _box(page, inner), _box(page, outer)
    assert a["right"] <= b["right"] + 1, f"{inner} spills out of {outer}: {a} {b}"


def _no_sideways_scroll(page: Any, selector: str) -> None:
    box = _box(page, selector)
    assert box["scrollWidth"] <= box["clientWidth"] + 1, f"{selector} scrolls sideways: {box}"


def _readable(page: Any, theme: str) -> None:
    for what, selector in READABLE.items():
        measured = page.locator(selector).first.evaluate(CONTRAST_JS)
        assert measured["contrast"] >= 4.5, (
            f"{theme}: {what} ({selector}) is hard to read: {measured}"
        )


def test_layout_and_dark_theme(lab: tuple[str, Path], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    url, root = lab
    write_notebook(root / "layout.ipynb", [SETUP, 'turn = s.send("wide please")'])
    url = url.replace("demo.ipynb", "layout.ipynb")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            _drive(page, url)
        except BaseException as exc:
            shot = artifacts(tmp_path) / "layout-failure.png"
            page.screenshot(path=str(shot), full_page=True)
            raise AssertionError(f"{exc}\n(screenshot: {shot})") from exc
        finally:
            browser.close()


def _wide_compare(page: Any, view: str) -> None:
    box = page.locator(view)
    columns = box.evaluate(ALL_INSIDE_JS, ".cm-compare-column")
    assert len(columns) == 2, columns
    assert all(c["inside"] for c in columns), f"the columns spill out: {columns}"
    _no_sideways_scroll(page, view)
    long_column = f"{view} .cm-compare-column >> nth=1"
    answer = f"{long_column} >> .cm-answer"
    _inside(page, answer, view)
    lines = page.locator(answer).evaluate(
        "(el) => el.getBoundingClientRect().height / parseFloat(getComputedStyle(el).lineHeight)"
    )
    assert lines > 5, f"the long URL and code line (2 lines) do not wrap: {lines} lines"
    # The code block stays in view (JupyterLab wraps code in outputs; elsewhere it
    # scrolls); the table scrolls on its own.
    _inside(page, f"{long_column} >> pre", view)
    table = f"{long_column} >> table:has-text('column_0_header')"
    _inside(page, table, long_column)
    assert page.locator(table).evaluate("(el) => el.scrollWidth > el.clientWidth"), (
        "the table does not scroll"
    )
    assert _box(page, f"{table} >> th >> nth=0")["height"] < 30, "the table's headers break"
    turns = box.evaluate(ALL_INSIDE_JS, ".cm-turns td")
    assert turns, "no per-turn diff"
    assert all(t["inside"] for t in turns), f"the per-turn diff spills out: {turns}"


def _drive(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook")
    wait_js(
        page,
        """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session
                && w.sessionContext.session.kernel;
            return k && k.status === "idle"; }""",
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    # 1. Wide content stays inside its message: the table scrolls on its own, the long
    # URL wraps; the transcript does not scroll sideways.
    page.wait_for_selector(".cm-transcript .cm-assistant .cm-body table")
    page.locator(".cm-transcript").first.scroll_into_view_if_needed()
    _snap(page, "layout-wide")
    _inside(page, ".cm-transcript .cm-body table", ".cm-transcript .cm-assistant")
    header = ".cm-transcript .cm-body th:has-text('column_0_header')"
    assert _box(page, header)["height"] < 30, "the table's headers are broken up"
    _inside(
        page, ".cm-transcript .cm-body p:has-text('example.com')", ".cm-transcript .cm-assistant"
    )
    _no_sideways_scroll(page, ".cm-transcript .cm-scroll")

    # ... and so does a long reason for a Deny, in the transcript and the approval row.
    page.locator(".cm-chat .widget-textarea textarea").fill("add 2 and 3")
    page.locator(".cm-chat button:has-text('Send')").click()
    # The approval row fits its box: no sideways scroll, and the arguments (4 lines of
    # JSON) are shown whole, without a scrollbar.
    row = ".cm-approval .cm-call-row"
    page.wait_for_selector(f"{row} textarea")
    page.locator(row).first.scroll_into_view_if_needed()
    _snap(page, "layout-approval")
    _no_sideways_scroll(page, row)
    args = _box(page, f"{row} textarea")
    lines = page.locator(f"{row} textarea").first.evaluate("(el) => el.value.split('\\n').length")
    assert lines == 4, lines
    assert args["scrollHeight"] <= args["clientHeight"], f"the arguments are cut: {args}"
    page.locator(".cm-approval input[placeholder^='reason']").fill(REASON)
    page.locator(".cm-approval button:has-text('Deny')").click()
    page.wait_for_selector(".cm-transcript .cm-body:has-text('Not run, fine.')")
    page.wait_for_selector(".cm-approval .cm-call-row:has-text('and also long words')")
    _inside(page, ".cm-transcript .cm-call-reason", ".cm-transcript .cm-call")
    _no_sideways_scroll(page, ".cm-transcript .cm-scroll")
    status = f"{row} .widget-html:has-text('and also long words')"
    _inside(page, status, row)
    _no_sideways_scroll(page, status)
    page.locator(row).first.scroll_into_view_if_needed()
    _snap(page, "layout-deny-reason")
    # One more call, approved: a result to look at.
    page.locator(".cm-chat .widget-textarea textarea").fill("add 1 and 1")
    page.locator(".cm-chat button:has-text('Send')").click()
    page.locator(".cm-approval button:has-text('Approve once') >> nth=-1").click()
    page.wait_for_selector(".cm-transcript .cm-body:has-text('The sum is 2.')")

    # 2. Many branches scroll inside the tree; a long name is cut (the whole name its
    # tooltip), its fork button in view; a non-ASCII name's facts on one line.
    run_new_cell(page, BRANCHES)
    page.wait_for_selector(".cm-tree .cm-node >> nth=36")
    tree = _box(page, ".cm-tree")
    assert tree["height"] <= 400, f"the tree is {tree['height']} px tall"
    assert tree["scrollHeight"] > tree["clientHeight"], "the tree does not scroll"
    _no_sideways_scroll(page, ".cm-tree")
    long_node = ".cm-tree .cm-node[data-branch^='a-very-long-branch-name']"
    name = page.locator(f"{long_node} .cm-node-name")
    assert "x" * 40 in (name.get_attribute("title") or "")
    assert name.evaluate("(el) => el.scrollWidth > el.clientWidth"), "the long name is not cut"
    assert name.evaluate("(el) => getComputedStyle(el).textOverflow") == "ellipsis"
    _inside(page, f"{long_node} .cm-fork", ".cm-tree")
    for part in (".cm-node-name", ".cm-node-meta"):
        box = _box(page, f".cm-tree .cm-node[data-branch='исследование-ветка-0'] {part}")
        assert box["height"] < 24, f"a non-ASCII branch's {part} wraps: {box}"
    page.locator(".cm-tree").first.scroll_into_view_if_needed()
    _snap(page, "layout-branches")

    # 3. The compare view: its text has the line height of text, not of a widget row.
    run_new_cell(page, 's.compare_view("main", "b00")')
    page.wait_for_selector(".cm-compare .cm-compare-column >> nth=1")
    rows = page.locator(".cm-compare .cm-compare-column tr")
    heights = [rows.nth(i).evaluate("(el) => el.getBoundingClientRect().height") for i in range(2)]
    assert max(heights) < 24, f"the compare view's rows are {heights} px apart"
    page.locator(".cm-compare").first.scroll_into_view_if_needed()
    _snap(page, "layout-compare")

    # ... and its columns share the width when one holds wide content: the long URL
    # wraps, the code block and the table scroll inside their column, the per-turn diff
    # stays inside the view; the view does not scroll sideways. So does the static copy.
    run_new_cell(page, WIDE_COMPARE)
    view = ".cm-compare:has(.cm-compare-column:has-text('example.com'))"
    page.wait_for_selector(f"{view} .cm-compare-column >> nth=1")
    page.locator(view).scroll_into_view_if_needed()
    _snap(page, "layout-compare-wide")
    _wide_compare(page, view)
    run_new_cell(page, WIDE_COPY)
    copy = page.locator(".cm-comparison:has-text('example.com') >> visible=true")
    copy.wait_for()
    copy.scroll_into_view_if_needed()
    _snap(page, "layout-compare-wide-copy")
    # Its cards (the columns) stay inside it, and the long URL inside its card.
    cards = copy.evaluate(ALL_INSIDE_JS, ":scope > div > div")
    assert len(cards) == 2, cards
    assert all(c["inside"] for c in cards), f"the copy's cards spill out: {cards}"
    assert not any(c["scrolls"] for c in cards), f"the long URL spills out of its card: {cards}"

    # 4. A long branch: its last 200 messages, and the earlier ones on request, drawn
    # above the message being read without moving it.
    run_new_cell(page, LONG_BRANCH)
    earlier = page.locator(".cm-transcript .cm-earlier").last
    earlier.wait_for(state="visible")
    assert earlier.inner_text() == "Show earlier messages (20 more)"
    scroller = page.locator(".cm-transcript .cm-scroll").last
    assert scroller.locator(".cm-msg").count() == 200
    scroller.evaluate("(el) => { el.scrollTop = 0; }")
    before = scroller.evaluate(TOP_MESSAGE_JS)
    earlier.scroll_into_view_if_needed()
    _snap(page, "layout-earlier-button")
    earlier.click()
    page.wait_for_function(
        "(el) => el.querySelectorAll('.cm-msg').length === 220", arg=scroller.element_handle()
    )
    assert earlier.is_hidden()
    wait_js(page, "(el) => el.textContent.includes('question 0')", scroller.element_handle())
    box = page.locator(f".cm-transcript .cm-msg[data-id='{before['id']}']")
    offset = box.evaluate(
        "(b) => b.getBoundingClientRect().top - b.closest('.cm-scroll').getBoundingClientRect().top"
    )
    assert abs(offset - before["offset"]) < 5, f"the message read moved: {before} -> {offset}"
    scroller.scroll_into_view_if_needed()
    _snap(page, "layout-earlier")

    # ... TeX math is drawn as math (MathML the browser lays out), not as its source.
    run_new_cell(page, MATH)
    reply = page.locator(".cm-transcript .cm-assistant .cm-body:has(mfrac)").last
    reply.wait_for()
    reply.scroll_into_view_if_needed()
    _snap(page, "layout-math")
    drawn = reply.evaluate(MATH_JS)
    assert drawn == {"width": drawn["width"], "raised": True, "stacked": True}, drawn
    assert drawn["width"] > 20, drawn
    assert "$" not in reply.inner_text(), reply.inner_text()

    # 5. Readable in the light theme, and in the dark one.
    _readable(page, "light")
    page.evaluate(
        "window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_timeout(500)  # the theme's stylesheet applied: no event says so
    _readable(page, "dark")
    code = page.locator(".cm-transcript .cm-body pre").first.evaluate(CONTRAST_JS)
    assert code["background"] < 0.1, f"a code block stays light in the dark theme: {code}"
    page.locator(".cm-transcript").first.scroll_into_view_if_needed()
    _snap(page, "layout-dark-transcript")
    page.locator(".cm-compare").first.scroll_into_view_if_needed()
    _snap(page, "layout-dark-compare")
    page.locator(view).scroll_into_view_if_needed()
    _snap(page, "layout-dark-compare-wide")
    copy.scroll_into_view_if_needed()
    _snap(page, "layout-dark-compare-wide-copy")
    page.locator(".cm-approval").first.scroll_into_view_if_needed()
    _snap(page, "layout-dark-approval")
    if "CM_TEST_ARTIFACTS" in os.environ:
        page.screenshot(path=str(Path(os.environ["CM_TEST_ARTIFACTS"]) / "layout-done.png"))
