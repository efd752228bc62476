from ..common import Bench
from ..report import Row

NAME = "server"


def run(bench: Bench) -> list[Row]:
    return []
