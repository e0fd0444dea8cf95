"""Studies: spec validation, head-set resolution, bootstrap intervals, and resume without losing rows."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.io.jsonl import CheckpointMismatchError
from workbench.studies import StudySpecError, StudyStateError, parse_spec, run_study
from workbench.studies.heads import resolve_head_set
from workbench.studies.runner import ROWS, bootstrap_ci, read_rows

SPEC = {
    "name": "tiny-study", "model": "smollm2-135m", "ablations": ["zero", "mean"], "n_bootstrap": 200,
    "mean_samples": 1, "mean_seq_len": 32,
    "head_sets": {"manual": {"source": "explicit", "heads": [[0, 0], [1, 1]]},
                  "random": {"source": "random", "k": 2, "seeds": [0, 1], "exclude": ["manual"]}},
    "tasks": {"ioi": {"kind": "ioi", "n": 4}, "text": {"kind": "perplexity", "n": 3, "seq_len": 32}},
}


def test_spec_errors_name_the_problem():
    bad = json.loads(json.dumps(SPEC))
    bad["head_sets"]["manual"]["source"] = "magic"
    with pytest.raises(StudySpecError, match="head_sets.manual.source"):
        parse_spec(bad)
    bad = json.loads(json.dumps(SPEC))
    bad["ablations"] = ["zero", "scramble"]
    with pytest.raises(StudySpecError, match="scramble"):
        parse_spec(bad)
    bad = json.loads(json.dumps(SPEC))
    bad["head_sets"]["random"]["exclude"] = ["nope"]
    with pytest.raises(StudySpecError, match="nope"):
        parse_spec(bad)
    bad = json.loads(json.dumps(SPEC))
    del bad["head_sets"]["random"]["k"]
    with pytest.raises(StudySpecError, match="needs `k`"):
        parse_spec(bad)


def test_example_specs_parse():
    from pathlib import Path

    from workbench.studies import load_spec

    specs = sorted((Path(__file__).parents[1] / "studies").glob("*.toml"))
    assert len(specs) >= 2
    for p in specs:
        assert load_spec(p).tasks


def test_head_sets_from_tables(tiny_lm, tmp_path):
    from conftest import make_tiny_lm

    from workbench.io.provenance import ProvenanceError, collect, write_parquet

    d = tmp_path / "tiny-llama"
    prov = collect(tiny_lm)
    write_parquet(pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 2, 3], "first_token_mass": [0.1, 0.9, 0.5, 0.2]}),
                  d / "heads.parquet", prov)
    write_parquet(pd.DataFrame({"layer": [1, 0], "head": [0, 3], "score": [0.2, 0.7]}),
                  d / "retrieval" / "retrieval_heads.parquet", prov)
    spec = parse_spec({"name": "t", "head_sets": {"s": {"source": "sinks", "k": 2}, "r": {"source": "retrieval", "k": 1},
                                                  "x": {"source": "random", "k": 4, "exclude": ["s", "r"]}},
                       "tasks": {"ioi": {}}})
    res = {}
    for hs in spec.head_sets[:2]:
        res[hs.name] = resolve_head_set(hs, tiny_lm, res, reports=tmp_path)
    assert res == {"s": [(0, 1), (1, 2)], "r": [(0, 3)]}
    rnd = resolve_head_set(spec.head_sets[2], tiny_lm, res, seed=3, reports=tmp_path)
    assert len(rnd) == 4 and not set(rnd) & {(0, 1), (1, 2), (0, 3)}
    assert rnd == resolve_head_set(spec.head_sets[2], tiny_lm, res, seed=3, reports=tmp_path)  # seeded
    with pytest.raises(StudySpecError, match="no census heads table"):
        resolve_head_set(spec.head_sets[0], tiny_lm, {}, reports=tmp_path / "missing")
    # a table computed on other weights (same architecture, another seed) is refused, naming the file
    other = make_tiny_lm(seed=1)
    with pytest.raises(ProvenanceError, match="other weights"):
        resolve_head_set(spec.head_sets[0], other, {}, reports=tmp_path)
    # and so is one without provenance
    pd.DataFrame({"layer": [0], "head": [0], "first_token_mass": [0.1]}).to_parquet(d / "heads.parquet")
    with pytest.raises(ProvenanceError, match="no provenance"):
        resolve_head_set(spec.head_sets[0], tiny_lm, {}, reports=tmp_path)


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    v = rng.normal(2.0, 1.0, 200)
    lo, hi = bootstrap_ci(v, np.mean, 2000, 0.95, rng)
    assert lo < v.mean() < hi and hi - lo == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.25)
    # paired: a constant shift has a zero-width delta interval
    lo, hi = bootstrap_ci(v + 0.5, np.mean, 200, 0.95, rng, base=v)
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)


def test_needle_task_runs_or_says_it_is_unavailable(smollm2):
    import contextlib

    from workbench.studies import TaskUnavailableError
    from workbench.studies.spec import TaskSpec
    from workbench.studies.study_tasks import build_task

    spec = TaskSpec("needle", "needle", {"lengths": [256], "depths": [50], "n_needles": 1, "max_new_tokens": 16})
    try:
        import workbench.tasks.needle  # noqa: F401
    except ImportError:
        with pytest.raises(TaskUnavailableError, match="needle"):
            build_task(smollm2, spec)
        return
    task = build_task(smollm2, spec)
    values = task.evaluate(contextlib.nullcontext)
    assert task.metric == "accuracy" and len(values) == 1 and values[0] in (0.0, 1.0)


@pytest.mark.slow
def test_interrupted_study_resumes_without_losing_rows(smollm2, tmp_path):
    spec = parse_spec(SPEC)
    full = run_study(spec, smollm2, out_root=tmp_path / "a", progress=False)
    n = len(read_rows(full.out))
    assert n == 2 * (1 + 3 * 2)  # 2 tasks x (baseline + 3 head sets x 2 kinds)
    part = run_study(spec, smollm2, out_root=tmp_path / "b", progress=False, max_conditions=5)
    assert part.n_run == 5
    with open(part.out / ROWS, "a") as fh:
        fh.write('{"key": "ioi|random/s1|zero", "values": [1.0')  # killed while writing a line
    with pytest.raises(StudyStateError, match="--resume"):
        run_study(spec, smollm2, out_root=tmp_path / "b", progress=False)
    rest = run_study(spec, smollm2, out_root=tmp_path / "b", resume=True, progress=False)
    assert rest.n_resumed == 5 and rest.n_run == n - 5
    a = {r["key"]: r["values"] for r in read_rows(full.out)}
    b = {r["key"]: r["values"] for r in read_rows(rest.out)}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-4)
    t = rest.table
    assert {"value", "ci_low", "ci_high", "delta"} <= set(t.columns)
    assert (t.ci_low <= t.value + 1e-9).all() and (t.value <= t.ci_high + 1e-9).all()
    assert (t.seed == "pooled").sum() == 2 * 2  # random set pooled over seeds, per task and kind
    base = t[(t.task == "text") & (t.head_set == "none")].value.item()
    assert 1.0 < base < 1000.0  # a perplexity
    assert (rest.out / "report.md").exists() and "| task |" in (rest.out / "report.md").read_text()
    # a different spec in the same folder is refused, naming the field that differs
    other = parse_spec({**SPEC, "ablations": ["zero"]})
    with pytest.raises(CheckpointMismatchError, match="spec.ablations"):
        run_study(other, smollm2, out_root=tmp_path / "b", resume=True, progress=False)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from workbench.cli import main

    assert main(["study", "run", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[head_sets.a]\nsource = "sinks"\n[tasks.ioi]\n')
    assert main(["study", "run", str(bad), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "needs `k`" in err and len(err.strip().splitlines()) == 1
    assert main(["probe", "--task", "colour"]) == 2
    assert "unknown probe task" in capsys.readouterr().err


def test_studies_build_conditions_from_the_intervention_registry(tmp_path):
    """A study names any registered head intervention; its values equal that intervention applied by hand."""
    import torch

    from tests.conftest import make_tiny_lm
    from tests.test_sinks import CharTok
    from workbench.interventions import HeadAblation
    from workbench.interventions.act import ACTCalibration
    from workbench.interventions.registry import INTERVENTIONS, InterventionSpec, study_interventions
    from workbench.tasks.text import token_windows

    lm = make_tiny_lm()
    lm.tokenizer = CharTok()
    heads = [(0, 1), (1, 2)]
    spec = parse_spec({"name": "registry-study", "model": "tiny", "ablations": ["zero", "act calibration"],
                       "n_bootstrap": 50, "head_sets": {"two": {"source": "explicit", "heads": [list(h) for h in heads]}},
                       "tasks": {"text": {"kind": "perplexity", "n": 2, "seq_len": 24}}})
    res = run_study(spec, lm, out_root=tmp_path, progress=False)
    rows = {r["kind"]: r["values"] for r in read_rows(res.out)}
    ids = token_windows(lm.tokenizer, 24, 2, split="heldout")

    def nll(iv):  # per-window mean next-token NLL, by hand
        with torch.no_grad(), iv.applied():
            logp = torch.log_softmax(lm.model(ids).logits.double(), -1)
        return (-logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]).mean(1).tolist()

    for kind, iv in (("act calibration", ACTCalibration(heads)), ("zero", HeadAblation(heads, "zero"))):
        np.testing.assert_allclose(rows[kind], nll(iv), rtol=1e-5)
        assert max(abs(a - b) for a, b in zip(rows[kind], rows["none"])) > 1e-4  # the intervention changed something
    assert "act calibration: ACT (Yu et al. 2024)" in (res.out / "report.md").read_text()
    # the registry is the source: a newly registered head intervention is a valid study ablation, an unknown one not
    INTERVENTIONS["scale heads"] = InterventionSpec("scale heads", "test entry", lambda lm, heads: HeadAblation(heads))
    try:
        assert study_interventions()["scale heads"] == ("scale heads", {})
        assert parse_spec({**spec.raw, "ablations": ["scale heads"]}).ablations == ["scale heads"]
    finally:
        del INTERVENTIONS["scale heads"]
    with pytest.raises(StudySpecError, match="scale heads"):
        parse_spec({**spec.raw, "ablations": ["scale heads"]})
