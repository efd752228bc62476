from ..common import Bench
from ..report import Row

NAME = "view_kernel"


def run(bench: Bench) -> list[Row]:
    return []
