"""A second process that asks for a tool call and waits for it to be decided elsewhere.

It opens a context with an ``add`` tool and a scripted model that asks for
``add(a=1, b=2)`` and then answers ``reply``; it prints the final reply's text, or with
``print_tool_result=True`` the tool message the model was sent back.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def start_tool_writer(
    data_dir: Path,
    context_id: str,
    *,
    reply: str = "It is 3.",
    print_tool_result: bool = False,
    branch: str = "main",
    arguments: tuple[int, int] = (1, 2),
) -> subprocess.Popen[bytes]:
    """Start the writer process (its turn on ``branch``, asking for ``add(*arguments)``);
    its stdout is a pipe."""
    shown = (
        f'[m.content for m in session.history({branch!r}) if m.role == "tool"][-1]'
        if print_tool_result
        else "final.content"
    )
    code = textwrap.dedent(
        f"""
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider

        def add(a: int, b: int) -> int:
            \"\"\"Add two numbers.\"\"\"
            return a + b

        provider = ScriptedProvider(strict=True).tool_call(
            "add", {{"a": {arguments[0]}, "b": {arguments[1]}}}
        )
        provider.reply({reply!r})
        session = ContextSession.open({context_id!r}, data_dir={str(data_dir)!r},
                                      provider=provider, tools=[add])
        final = session.send("What is the sum?", branch={branch!r}).result(60)
        print({shown}, flush=True)
        session.close()
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
