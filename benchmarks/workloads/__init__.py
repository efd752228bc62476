"""The workloads, one module each; :data:`WORKLOADS` lists them in the order they run.

Each module has ``NAME`` (what ``python -m benchmarks NAME`` selects) and
``run(bench) -> list[Row]``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from ..common import Bench
from ..report import Row
from . import (
    concurrent,
    conversation,
    local_model,
    peer,
    scale,
    server,
    streaming,
    tools,
    view_kernel,
)

#: Every workload module, in running order.
WORKLOADS: tuple[ModuleType, ...] = (
    conversation,
    concurrent,
    tools,
    streaming,
    view_kernel,
    scale,
    peer,
    local_model,
    server,
)

Runner = Callable[[Bench], list[Row]]


def names() -> list[str]:
    """The workloads' names, in running order."""
    return [module.NAME for module in WORKLOADS]
