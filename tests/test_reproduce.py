"""``workbench reproduce``: the committed reports/ are what its steps write, and every file it writes carries
its provenance."""
from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

import pytest

from workbench.provenance import missing_provenance, read_provenance
from workbench.reproduce import NOT_REPRODUCED, SHARED, reproduce, steps, unexplained

ROOT = Path(__file__).resolve().parents[1]


def _committed() -> list[str]:
    out = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f[len("reports/"):] for f in out.split()]


def test_committed_reports_are_what_the_reproduce_steps_write():
    files = _committed()
    if not files:
        pytest.skip("not a git checkout")
    plan = steps(False, ROOT / "reports")
    assert unexplained(files, plan) == []  # no stale file that no step writes
    for s in plan:  # and every step's files are there
        for pat in s.writes:
            assert any(fnmatch.fnmatchcase(f, pat) for f in files), (s.name, pat)
    for f in files:
        exempt = f in SHARED or any(fnmatch.fnmatchcase(f, p) for p in NOT_REPRODUCED)
        if not exempt and not f.endswith(".csv.provenance.json"):
            assert read_provenance(ROOT / "reports" / f) is not None, f


@pytest.mark.slow
def test_provenance_is_present_in_every_output_file_type(tmp_path):
    """Quick reproduce steps that together write every file type (JSON, Parquet, CSV, HTML, JSON lines,
    Markdown; safetensors traces: tests/test_provenance.py): each file carries provenance, and each step wrote
    exactly the files it declares."""
    only = ["probe", "retrieval", "study retrieval", "hallucination"]
    res = reproduce(True, tmp_path, only=only, log=lambda s: None)
    assert [s["rc"] for s in res["steps"]] == [0] * len(res["steps"]) and res["without_provenance"] == []
    files = [f.relative_to(tmp_path).as_posix() for f in tmp_path.rglob("*") if f.is_file()]
    assert missing_provenance(tmp_path) == []
    assert {Path(f).suffix for f in files} >= {".json", ".parquet", ".csv", ".html", ".jsonl", ".md"}
    ran = [s for s in steps(True, tmp_path) if any(s.name.startswith(o) for o in only)]
    assert unexplained(files, ran) == []
    for s in ran:
        for pat in s.writes:
            assert any(fnmatch.fnmatchcase(f, pat) for f in files), (s.name, pat)
    prov = read_provenance(tmp_path / "smollm2-135m" / "retrieval" / "tests.csv")
    for k in ("workbench_version", "git_commit", "git_dirty", "weights_sha256", "config", "seed", "torch",
              "transformers", "date", "device"):
        assert k in prov
    assert prov["model"]["id"] == "smollm2-135m" and prov["config"]["lengths"] == [256]
