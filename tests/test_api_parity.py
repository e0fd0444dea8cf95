"""Python API parity: each CLI command below is one documented call, and the command prints what the call returns.

``workbench heads`` is :func:`workbench.report.head_types_report.head_types_report`, ``workbench patch`` is
:func:`circuits.report.patch_circuits`, and ``workbench trace --html`` writes its page with
:func:`workbench.report.trace_page.write_trace_html` (the number of maps is a parameter, ``--max-maps``), and
``workbench probe`` is :func:`probes.run.run_probe`, ``workbench calibrate`` is
:func:`workbench.interventions.act_search.calibrate`, ``workbench ablate`` and ``workbench masking-test`` are
:func:`workbench.studies.retrieval_runs.ablate_needles` and :func:`~workbench.studies.retrieval_runs.masking_test`,
``workbench vision`` is :func:`workbench.report.vision_report.vision_report` and ``workbench hallucination`` is
:func:`workbench.report.hallucination_report.hallucination_report`.
Tiny random-weight models with the SmolLM2 tokenizer (the IOI prompts need real names; the VLM is the digits-vlm
assembly around the tiny model).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny_tok_lm():
    sys.path.insert(0, str(ROOT))
    from interrupt_driver import tiny_lm

    threads = torch.get_num_threads()
    lm = tiny_lm()
    torch.set_num_threads(threads)
    return lm


@pytest.fixture
def preset(tiny_tok_lm):
    from workbench.core.presets import PRESETS, Preset, register_preset

    register_preset(Preset("tiny-parity-test", "tiny random llama, SmolLM2 tokenizer", lambda: tiny_tok_lm,
                           lambda: True))
    yield "tiny-parity-test"
    PRESETS.unregister("tiny-parity-test")


def _cli(capsys, *argv) -> dict:
    from workbench.cli import main

    rc = main(list(argv) + ["--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_heads_command_prints_what_head_types_report_returns(preset, tiny_tok_lm, tmp_path, capsys):
    from workbench.report.head_types_report import head_types_report

    kw = dict(samples=2, seq_len=32, n_random=2, half_len=16, seed=3, top=4)
    res = head_types_report(tiny_tok_lm, out=tmp_path / "py", progress=False, **kw)
    cli = _cli(capsys, "heads", "--model", preset, "--samples", "2", "--seq-len", "32", "--random", "2",
               "--half-len", "16", "--seed", "3", "--top", "4", "--out", str(tmp_path / "cli"))
    for k in ("previous_token", "duplicate_token", "induction"):
        assert cli[f"top_{k}"] == res[f"top_{k}"] and len(res[f"top_{k}"]) == 4
    assert cli["settings"] == res["settings"]
    import pandas as pd

    written = pd.read_parquet(cli["table"])
    pd.testing.assert_frame_equal(written, res["scores"].reset_index(drop=True))
    assert head_types_report(tiny_tok_lm, out=None, progress=False, **kw)["table"] is None


def test_patch_command_prints_what_patch_circuits_returns(preset, tiny_tok_lm, tmp_path, capsys):
    from circuits import patch_circuits

    res = patch_circuits(tiny_tok_lm, ["ioi", "colored_objects"], n=3, k=2, stages=1, overlap_k=3,
                         out=tmp_path / "py")
    d = Path(res["out"])
    assert {p.name for p in d.iterdir()} >= {"ioi_circuit.csv", "ioi_path_stage1.parquet", "ioi_activation.parquet",
                                             "colored_objects_circuit.csv", "summary.json"}
    assert Path(res["html"]).exists() and set(res["overlap"]) == {"path_patching_to_logits", "circuits",
                                                                  "activation_patching"}
    summary = json.loads((d / "summary.json").read_text())
    assert summary.pop("provenance") == res["provenance"]
    cli = _cli(capsys, "patch", "--model", preset, "--task", "both", "--n", "3", "--k", "2", "--stages", "1",
               "--overlap-k", "3", "--out", str(tmp_path / "cli"))
    assert cli["tasks"] == res["tasks"] and cli["overlap"] == res["overlap"]
    assert list(cli) == [k for k in summary if k != "provenance"]


def test_patch_refuses_an_unknown_task(tiny_tok_lm):
    from circuits import patch_circuits
    from workbench.core.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="unknown task 'nope': use ioi, colored_objects or both"):
        patch_circuits(tiny_tok_lm, ["nope"], out=None)


def test_trace_page_shows_at_most_max_maps(tiny_tok_lm, tmp_path):
    from workbench.core.tracer import Tracer
    from workbench.report.trace_page import ranges, write_trace_html

    ids = tiny_tok_lm.tokenizer("a b c d e f", return_tensors="pt").input_ids
    t = Tracer(tiny_tok_lm, stats=("received",), pattern_window=(0, ids.shape[1])).run(ids)
    for cap, shown in ((3, 3), (100, 8)):
        page = tmp_path / f"p{cap}.html"
        what = write_trace_html(t, "tiny", page, ["a note"], max_maps=cap)
        html = page.read_text()
        assert html.count('class="plotly-graph-div"') == shown and what.startswith(f"{shown} attention maps")
        assert ("the first 3 of 8" in what) is (cap == 3) and "note: a note" in html
    assert ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_trace_command_takes_max_maps(preset, tmp_path, capsys):
    page = tmp_path / "t.html"
    doc = _cli(capsys, "trace", "--model", preset, "--prompt", "one two three four", "--window", "0:3",
               "--html", str(page), "--max-maps", "2", "--out", str(tmp_path))
    assert page.read_text().count('class="plotly-graph-div"') == 2
    assert re.match(r"2 attention maps \(heads 0\.0, 0\.1;", doc["html_maps"])


def test_probe_command_prints_what_run_probe_returns(preset, tiny_tok_lm, tmp_path, capsys):
    from probes import run_probe

    res = run_probe(tiny_tok_lm, "sink", layer=1, n=6, seq_len=32, seed=2, out=tmp_path / "py")
    cli = _cli(capsys, "probe", "--model", preset, "--task", "sink", "--layer", "1", "--n", "6", "--seq-len", "32",
               "--seed", "2", "--out", str(tmp_path / "cli"))
    keys = ("task_accuracy", "control_accuracy", "selectivity", "majority_accuracy", "description")
    assert {k: cli[k] for k in keys} == {k: res[k] for k in keys}
    assert json.loads(Path(res["file"]).read_text())["selectivity"] == res["selectivity"]
    assert "file" not in run_probe(tiny_tok_lm, "sink", layer=1, n=6, seq_len=32, seed=2, out=None)


def test_calibrate_command_prints_what_calibrate_returns(preset, tiny_tok_lm, tmp_path, capsys):
    from workbench.core.errors import WorkbenchError
    from workbench.interventions.act_search import calibrate

    res = calibrate(tiny_tok_lm, heads=[(0, 1), (1, 3)], n_eval=6, context_tokens=16, out=tmp_path / "py")
    cli = _cli(capsys, "calibrate", "--model", preset, "--heads", "0.1,1.3", "--n-eval", "6", "--context-tokens",
               "16", "--out", str(tmp_path / "cli"))
    evaluation = json.loads(json.dumps(res["evaluation"]))  # as printed: tuples become lists
    assert cli["heads"] == res["heads"] == ["0.1", "1.3"] and cli["evaluation"] == evaluation
    assert json.loads(Path(res["file"]).read_text())["evaluation"] == evaluation
    with pytest.raises(WorkbenchError, match="exactly one of"):
        calibrate(tiny_tok_lm, heads=[(0, 1)], search=True, out=None)


def test_ablate_and_masking_test_commands_print_what_their_calls_return(preset, tiny_tok_lm, tmp_path, capsys):
    import pandas as pd

    from workbench.studies.retrieval_runs import ablate_needles, masking_test
    from workbench.studies.retrieval_sweep import default_out, load_scores, run_sweep, save
    from workbench.tasks.needle import load_needles

    needles = load_needles()[:1]
    sweep = default_out(tiny_tok_lm.spec.name, tmp_path / "cli")
    save(run_sweep(tiny_tok_lm, [160], [50], needles, sweep, progress=False, max_new_tokens=3), sweep,
         tiny_tok_lm.spec.name)
    common = ["--model", preset, "--lengths", "160", "--depths", "50", "--needles", "1", "--out", str(tmp_path / "cli")]
    res = ablate_needles(tiny_tok_lm, "0.1,1.2", needles, [160], [50], kind="zero", out=tmp_path / "py")
    cli = _cli(capsys, "ablate", "--heads", "0.1,1.2", "--kind", "zero", *common)
    assert {k: cli[k] for k in ("heads", "accuracy", "baseline_accuracy", "grid", "n_tests")} == \
        {k: res[k] for k in ("heads", "accuracy", "baseline_accuracy", "grid", "n_tests")}
    assert res["heads"] == [[0, 1], [1, 2]] and Path(res["file"]).exists()
    scores = load_scores(sweep, tiny_tok_lm)
    res = masking_test(tiny_tok_lm, scores, needles, [160], [50], ks=[1], seeds=1, kinds=["zero"], out=tmp_path / "py")
    cli = _cli(capsys, "masking-test", "--ks", "1", "--seeds", "1", "--kinds", "zero", *common)
    assert cli["table"] == json.loads(pd.DataFrame(res["table"]).to_json(orient="records"))
    assert cli["accuracy"] == res["accuracy"] and set(cli["files"]) == {"table", "tests", "html"}
    assert len(res["tests"]) == 3  # baseline, top-1 and one random-1 condition on one needle


@pytest.fixture(scope="module")
def tiny_digits_vlm(tiny_tok_lm):
    """The digits-vlm assembly around the tiny random llama (random CLIP tower: the mechanics, not the results)."""
    from workbench.core.models import LoadedModel, ModelSpec
    from workbench.demo import digits as D
    from workbench.demo.digits_vlm import N_IMAGE_TOKENS, assemble

    model, tok = assemble(tiny_tok_lm)
    return LoadedModel(model=model, tokenizer=tok, spec=ModelSpec.from_config("tiny-digits-vlm", model.config),
                       extras={"image_size": D.CANVAS, "n_image_tokens": N_IMAGE_TOKENS,
                               "sink_dims": [3]})  # random weights carry no massive activations: name a dim


@pytest.fixture
def vlm_preset(tiny_digits_vlm):
    from workbench.core.presets import PRESETS, Preset, register_preset

    register_preset(Preset("tiny-digits-vlm", "tiny random digits VLM", lambda: tiny_digits_vlm, lambda: True))
    yield "tiny-digits-vlm"
    PRESETS.unregister("tiny-digits-vlm")


def test_vision_command_prints_what_vision_report_returns(vlm_preset, tiny_digits_vlm, tmp_path, capsys):
    from workbench.io.provenance import read_provenance
    from workbench.report.vision_report import vision_report

    res = vision_report(tiny_digits_vlm, n_images=2, top=5, out=tmp_path / "py", progress=False)
    d = Path(res["files"]["json"]).parent
    tables = {"vhd_heads.csv", "t_vhd.csv", "visual_sinks.csv", "image_centric_heads.csv", "image_attention_heads.csv"}
    assert {p.name for p in d.iterdir()} == {"vision.json", "vision.html", "plotly.min.js", *tables,
                                             *(f"{t}.provenance.json" for t in tables)}
    assert read_provenance(res["files"]["json"]) == res["provenance"] == read_provenance(res["files"]["html"])
    cli = _cli(capsys, "vision", "--model", vlm_preset, "--images", "2", "--top", "5", "--out", str(tmp_path / "cli"))
    keys = ("sink_dims", "vhd", "vision_aware_heads", "visual_sinks", "image_centric_heads", "answers", "n_images")
    assert {k: cli[k] for k in keys} == json.loads(json.dumps({k: res[k] for k in keys}))
    assert len(res["vhd"]) == 2 * 4 and 0 < len(res["vision_aware_heads"]) <= 5  # every head; the top-5 cap
    assert "files" not in vision_report(tiny_digits_vlm, n_images=1, out=None, progress=False)


def test_hallucination_command_prints_what_hallucination_report_returns(vlm_preset, tiny_digits_vlm, tmp_path, capsys):
    from workbench.core.errors import WorkbenchError
    from workbench.report.hallucination_report import hallucination_report

    res = hallucination_report(tiny_digits_vlm, "none", "random", images=3, chair=True, out=tmp_path / "py",
                               progress=False)
    written = json.loads(Path(res["file"]).read_text())
    assert written.pop("provenance")["config"]["images"] == 3 and written == {k: v for k, v in res.items() if k != "file"}
    assert 0 <= res["accuracy"] <= 1 and "chair" in res
    cli = _cli(capsys, "hallucination", "--model", vlm_preset, "--images", "3", "--chair", "--out", str(tmp_path / "cli"))
    assert {k: v for k, v in cli.items() if k != "file"} == json.loads(json.dumps(written))
    assert "file" not in hallucination_report(tiny_digits_vlm, images=3, out=None, progress=False)
    with pytest.raises(WorkbenchError, match="method"):
        hallucination_report(tiny_digits_vlm, "magic", out=None)
