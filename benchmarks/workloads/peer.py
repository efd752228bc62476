from ..common import Bench
from ..report import Row

NAME = "peer"


def run(bench: Bench) -> list[Row]:
    return []
