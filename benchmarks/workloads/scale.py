from ..common import Bench
from ..report import Row

NAME = "scale"


def run(bench: Bench) -> list[Row]:
    return []
