"""Run the workloads, print one table, write the same rows as JSON.

    python -m benchmarks                   # every workload, the issue's sizes
    python -m benchmarks --smoke           # tiny sizes: checks that the suite runs
    python -m benchmarks conversation peer # only these workloads
    python -m benchmarks --json out.json   # where the JSON goes

A workload that fails prints its traceback and becomes an ``error`` row; the others
still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from .common import Bench, Sizes, machine
from .report import Row, markdown_table, missed_goals, row_json
from .workloads import WORKLOADS, names

RESULTS = Path(__file__).parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=f"any of {names()}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default benchmarks/results/latest.json, "
        "or smoke.json with --smoke)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder for the data (default: a temp dir)"
    )
    return parser


def run(selected: list[str], bench: Bench) -> tuple[list[Row], list[str]]:
    """Run the selected workloads (all if none); the rows and the names that failed."""
    rows: list[Row] = []
    failed: list[str] = []
    for module in WORKLOADS:
        if selected and module.NAME not in selected:
            continue
        print(f"== {module.NAME} ==", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            rows.extend(module.run(bench))
        except Exception as exc:
            # One broken workload must not hide the others' figures.
            traceback.print_exc()
            failed.append(module.NAME)
            rows.append(Row(module.NAME, "error", None, skipped=f"error: {exc!r}"[:200]))
        print(f"   ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
    return rows, failed


def describe(machine: dict[str, object], sizes: Sizes, *, smoke: bool) -> str:
    """One line about the machine and the sizes, printed above the table."""
    return (
        f"{'SMOKE RUN (tiny sizes, figures mean nothing): ' if smoke else ''}"
        f"{machine['nproc']} CPUs ({machine['cpu']}), {machine['ram']} RAM, "
        f"disk {machine['disk']}; Python {machine['python']}, commit {machine['commit']}, "
        f"load average {machine['load_average']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; 0 if every workload ran."""
    args = _parser().parse_args(argv)
    unknown = sorted(set(args.workloads) - set(names()))
    if unknown:
        print(f"unknown workload(s) {unknown}; available: {names()}", file=sys.stderr)
        return 2
    if args.dir is not None and not args.dir.is_dir():
        print(
            f"--dir {args.dir}: no such folder; make it first, or leave --dir out to use "
            "the system's temporary folder",
            file=sys.stderr,
        )
        return 2
    sizes = Sizes.smoke() if args.smoke else Sizes()
    output = args.json or RESULTS / ("smoke.json" if args.smoke else "latest.json")
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="cm-bench-", dir=args.dir) as scratch:
        bench = Bench(sizes=sizes, scratch=Path(scratch), smoke=args.smoke)
        described = machine(bench.scratch)
        rows, failed = run(args.workloads, bench)
    print(describe(described, sizes, smoke=args.smoke) + "\n")
    print(markdown_table(rows))
    missed = missed_goals(rows)
    if missed:
        print(f"\n{len(missed)} goal(s) or seed target(s) missed.")
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
        "smoke": args.smoke,
        "machine": described,
        "sizes": sizes.__dict__,
        "failed": failed,
        "rows": [row_json(row) for row in rows],
    }
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {output}")
    return 1 if failed else 0
