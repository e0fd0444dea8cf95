"""``workbench reproduce``: every file it writes carries its provenance."""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from workbench.io.provenance import missing_provenance, read_provenance
from workbench.cli.reproduce import reproduce, steps, unexplained


@pytest.mark.slow
def test_provenance_is_present_in_every_output_file_type(tmp_path):
    """Quick reproduce steps that together write every file type (JSON, Parquet, CSV, HTML, JSON lines,
    Markdown; safetensors traces: tests/test_provenance.py): each file carries provenance, and each step wrote
    exactly the files it declares."""
    only = ["probe", "retrieval", "study retrieval", "hallucination"]
    root = tmp_path / "runs"  # a report tree's root: its pages share root/plotly.min.js
    res = reproduce(True, root, only=only, log=lambda s: None)
    assert [s["rc"] for s in res["steps"]] == [0] * len(res["steps"]) and res["without_provenance"] == []
    files = [f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file()]
    assert missing_provenance(root) == []
    assert {Path(f).suffix for f in files} >= {".json", ".parquet", ".csv", ".html", ".jsonl", ".md"}
    ran = [s for s in steps(True, root) if any(s.name.startswith(o) for o in only)]
    assert unexplained(files, ran) == []
    for s in ran:
        for pat in s.writes:
            assert any(fnmatch.fnmatchcase(f, pat) for f in files), (s.name, pat)
    prov = read_provenance(root / "smollm2-135m" / "retrieval" / "tests.csv")
    for k in ("workbench_version", "git_commit", "git_dirty", "weights_sha256", "config", "seed", "torch",
              "transformers", "date", "device"):
        assert k in prov
    assert prov["model"]["id"] == "smollm2-135m" and prov["config"]["lengths"] == [256]
