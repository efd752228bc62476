"""``python -m cm_notebook.server``: a Jupyter server with only the cm_notebook API.

Launched by ``cm-notebook serve`` (which names itself in ``CM_NOTEBOOK_SERVE_PARENT``),
the server asks Linux for SIGTERM when that process dies, before anything else: a
launcher killed outright (SIGKILL, the OOM killer) can pass nothing on, and a server
left behind would keep the port, its sessions and their locks with nobody to stop it.
SIGTERM makes the server shut down cleanly. A launcher that died before the request
was made is seen from the parent process id having changed: the server then does not
start at all.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from .launch import PARENT_ENV


def _die_with_launcher() -> None:
    launcher = os.environ.pop(PARENT_ENV, None)  # not for the server's own children
    if launcher is None or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1  # from <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        return  # refused (a sandbox): the launcher's own SIGTERM forwarding remains
    if str(os.getppid()) != launcher:
        sys.exit(0)  # the launcher is already gone: the signal will never come


_die_with_launcher()

from .app import main  # noqa: E402 - after the request above: importing Jupyter takes a while

main()
