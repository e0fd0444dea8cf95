"""``workbench reproduce``: the committed reports/ are what its steps write, and every file it writes carries
its provenance."""
from __future__ import annotations

import fnmatch
import json
import subprocess
from pathlib import Path

import pytest

from workbench.io.provenance import missing_provenance, read_provenance
from workbench.cli.reproduce import NOT_REPRODUCED, SHARED, reproduce, steps, unexplained

ROOT = Path(__file__).resolve().parents[1]


def _committed() -> list[str]:
    out = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True).stdout
    return [f[len("reports/"):] for f in out.split()]


def test_committed_reports_are_what_the_reproduce_steps_write():
    """No committed report file is left over from an older run that no step writes; every step recorded as
    finished in reports/reproduce.json left all the files it declares, each with its provenance."""
    files = _committed()
    if not files:
        pytest.skip("not a git checkout")
    plan = {s.name: s for s in steps(False, ROOT / "reports")}
    assert unexplained(files, list(plan.values())) == []
    record = json.loads((ROOT / "reports" / "reproduce.json").read_text())
    finished = [d["name"] for d in record["steps"] if d["rc"] == 0]
    assert finished and set(finished) <= set(plan)
    for name in finished:
        for pat in plan[name].writes:
            mine = [f for f in files if fnmatch.fnmatchcase(f, pat)]
            assert mine, (name, pat)
            for f in mine:
                if f not in SHARED and not any(fnmatch.fnmatchcase(f, p) for p in NOT_REPRODUCED):
                    assert read_provenance(ROOT / "reports" / f) is not None, f


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


def test_a_step_starts_from_nothing(tmp_path):
    """Before a step runs, reproduce deletes the files it declares (so the retrieval sweep does not resume an
    older run's rows, and no stale file survives), but keeps patterns another step also writes (answer caches)."""
    from workbench.cli.reproduce import clear_outputs

    plan = steps(False, tmp_path)
    by = {s.name: s for s in plan}
    ret = tmp_path / "smollm2-135m" / "retrieval"
    ret.mkdir(parents=True)
    for f in ("results.jsonl", "summary.json", "masking_decode.json", "notes.txt"):
        (ret / f).write_text("{}")
    cache = tmp_path / "digits-vlm" / "hallucination"
    cache.mkdir(parents=True)
    (cache / "answers-abc.jsonl").write_text("{}")
    gone = {f.name for f in clear_outputs(tmp_path, by["retrieval"], plan)}
    assert gone == {"results.jsonl", "summary.json"}
    assert sorted(f.name for f in ret.iterdir()) == ["masking_decode.json", "notes.txt"]
    assert [f.name for f in clear_outputs(tmp_path, by["masking-test"], plan)] == ["masking_decode.json"]
    assert clear_outputs(tmp_path, by["hallucination none"], plan) == [] and (cache / "answers-abc.jsonl").exists()
