"""The performance suite keeps running: ``python -m benchmarks --smoke`` in a child process.

Tiny sizes, so it takes seconds; it checks that every workload produces its rows and
that the table and the JSON agree. Nothing here looks at a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the suite is a folder of the repository, not installed

from benchmarks.report import Limit, Row, markdown_table  # noqa: E402

WORKLOADS = {
    "1 long conversation",
    "2 concurrent contexts",
    "3 tool-intensive",
    "4 streaming",
    "5 scale",
    "6 branching",
    "7 LangGraph peer",
    "8 local model",
    "9 server",
}


def _suite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.slow
def test_the_smoke_run_gives_every_workload_its_rows(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    done = _suite("--smoke", "--json", str(output), "--dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(output.read_text())
    assert document["smoke"] is True
    assert document["failed"] == []
    assert {"nproc", "cpu", "ram", "disk"} <= set(document["machine"])
    rows = document["rows"]
    assert {row["workload"] for row in rows} == WORKLOADS
    for row in rows:
        # A row has a figure, or says why not (an optional part that is not installed).
        assert row["value"] is not None or row["skipped"] or row["note"], row
        assert not row["skipped"].startswith("error"), row
    peer = [row for row in rows if row["workload"] == "7 LangGraph peer"]
    if any(row["skipped"] for row in peer):
        assert peer[0]["skipped"] == "skipped: pip install cm_notebook[bench]"
    else:
        assert any("synchronous=" in row["note"] for row in peer), peer
    # The printed table is the same rows, and says where the JSON went.
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 1  # and the header
    assert str(output) in done.stdout
    # The scratch data was removed.
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_an_unknown_workload_is_refused_with_the_list() -> None:
    done = _suite("nonsense")
    assert done.returncode == 2
    assert "unknown workload" in done.stderr
    assert "conversation" in done.stderr


def test_a_missing_scratch_folder_is_refused_with_what_to_do(tmp_path: Path) -> None:
    done = _suite("--smoke", "--dir", str(tmp_path / "missing"), "tools")
    assert done.returncode == 2
    assert "no such folder; make it first" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missed_goal_says_by_how_much() -> None:
    row = Row(
        "w",
        "f",
        3.0,
        "s",
        baseline=1.0,
        goal=Limit("ratio", 1.5, "<= 1.5x", inclusive=True),
        seed=Limit("value", 5.0, "< 5 s"),
    )
    assert row.ratio == 3.0
    assert row.verdict(row.goal) == "missed (x2.0)"
    assert row.verdict(row.seed) == "met"
    table = markdown_table([row, Row("w", "g", None, skipped="skipped: not here")])
    assert "missed (x2.0)" in table
    assert "skipped: not here" in table
