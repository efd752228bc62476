"""Run every ``benchmarks/bench_*.py`` module's ``main()`` (or only the named ones).

python -m benchmarks            # all of them
python -m benchmarks store      # only bench_store.py
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    """Names of the benchmark modules, e.g. ``["events", "store"]``."""
    here = Path(__file__).parent
    return sorted(path.stem[len("bench_") :] for path in here.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in alphabetical order; return an exit status."""
    wanted = sys.argv[1:] if argv is None else argv
    names = discover()
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {names}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        if wanted and name not in wanted:
            continue
        print(f"== bench_{name} ==", flush=True)
        started = time.perf_counter()
        saved = sys.argv
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            # Each benchmark parses its own argv; it must not see the runner's arguments.
            sys.argv = [str(module.__file__)]
            module.main()
        except Exception:
            # One broken benchmark (e.g. a missing optional model) must not hide the rest.
            traceback.print_exc()
            failed.append(name)
        finally:
            sys.argv = saved
        print(f"   ({time.perf_counter() - started:.1f} s)\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
