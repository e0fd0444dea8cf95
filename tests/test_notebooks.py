"""Execute the notebooks end to end (nbclient) so they cannot rot, and check the committed ones
carry their outputs (a code host shows them without running anything).

The kernel is this test's own Python (a kernelspec written to a temporary JUPYTER_PATH), with the
checkout on PYTHONPATH, so the notebooks use the project's venv and code. CI executes them without
static images (no browser is started); ``scripts/run_notebooks.py`` writes the committed outputs with
a PNG beside every plotly figure.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    spec = tmp_path / "kernels" / "workbench-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "workbench test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("WORKBENCH_NOTEBOOK_PNG", raising=False)  # CI: figures as plotly JSON only
    return "workbench-test"


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4, "notebooks/ should hold the four worked examples"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_shows_its_figures(path):
    """Every code cell has run (in order), no error, and every plotly figure carries a static PNG."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), f"{path.name} is committed without outputs"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 2 and all("image/png" in o["data"] for o in figures)
    assert not any("Ġ" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)  # readable tokens


# --- what each notebook computes, read back from its kernel and recomputed here with the Python API ---------------
# A cell appended to the executed notebook prints the notebook's own variables as one JSON line after MARK; the
# check functions below recompute those values in the test process (the real model, the API, own summaries).
MARK = "WB-NOTEBOOK-CHECK "

DUMP = {
    "01": "{'share_first_token': float((heads.first_token_mass > 0.3).mean()), 'best': [L, H, K], "
          "'best_value': float(best.max_received), 'massive_dims': [int(d) for d in massive_dims(mdf)], "
          "'onset': int(onset_layer(mdf)), 'n_tokens': N_TOKENS, 'window': WINDOW}",
    "02": "{'top_heads': top_heads, 'rand_heads': rand_heads, 'k': K, 'rows': rows}",
    "03": "{'heads': HEADS, 'prompt': PROMPT, 'act': [act.text_before, act.text_after], 'uniform': uni.text_after, "
          "'zero': zero.text_after, 'act_pattern_error': float((act.pattern_after.double() - eager).abs().max())}",
    "04": "{'answers': list(res.answers), 'sink_dims': [int(d) for d in res.sink_dims], 'n_images': N_IMAGES, "
          "'preset': PRESET}",
}


def _check_01(v, request):
    """Share of heads with first-token mass > 0.3 and the strongest non-first sink, from the tracer's received
    attention summarised here (keys seen by at least max(8, T/4) queries); the massive dimensions."""
    from workbench.analyzers.massive import massive_activations, massive_dims, onset_layer
    from workbench.core.tracer import Tracer
    from workbench.tasks.text import token_windows

    lm = request.getfixturevalue("smollm2")
    n = v["n_tokens"]
    ids = token_windows(lm.tokenizer, n, 1, split="heldout")
    r = Tracer(lm, stats=("received",)).run(ids)["received"][:, 0]  # (layer, head, key)
    assert v["share_first_token"] == pytest.approx(float((r[..., 0] > 0.3).double().mean()), abs=1e-12)
    last = n - max(8, n // 4)  # key k is seen by n - k queries
    sub = r[..., 1: last + 1]
    flat = int(sub.reshape(-1).argmax())
    layer, head, key = flat // (sub.shape[1] * sub.shape[2]), flat // sub.shape[2] % sub.shape[1], flat % sub.shape[2] + 1
    assert v["best"] == [layer, head, key]
    assert v["best_value"] == pytest.approx(float(sub.max()), abs=1e-5)
    mdf = massive_activations(lm, token_windows(lm.tokenizer, 128, 2, split="heldout"), progress=False)
    assert v["massive_dims"] == [int(d) for d in massive_dims(mdf)] and v["onset"] == int(onset_layer(mdf))


def _check_02(v, request):
    """The top-K heads are the K best of the committed retrieval scores; each condition's answer and ROUGE-1
    recall equal a greedy decode with those heads masked (uniform, decode steps)."""
    import pandas as pd

    from workbench.analyzers.retrieval import greedy_decode, rouge1_recall
    from workbench.interventions import HeadAblation
    from workbench.studies.retrieval_sweep import prompt_ids
    from workbench.tasks.needle import load_needles

    lm = request.getfixturevalue("smollm2")
    scores = pd.read_parquet(ROOT / "reports" / "smollm2-135m" / "retrieval" / "retrieval_heads.parquet")
    best = scores.nlargest(v["k"], "score", keep="all")  # a set: two of SmolLM2's top five tie exactly
    assert len(best) == v["k"]
    assert {tuple(h) for h in v["top_heads"]} == {(int(a), int(b)) for a, b in zip(best["layer"], best["head"])}
    assert not {tuple(h) for h in v["rand_heads"]} & {tuple(h) for h in v["top_heads"]}
    needle = load_needles()[0]
    pids = prompt_ids(lm, needle, 256, 50.0)
    for row, hs in zip(v["rows"], ([], v["top_heads"], v["rand_heads"])):
        hooks = (HeadAblation([tuple(h) for h in hs], "uniform", phase="decode"),) if hs else ()
        text = lm.tokenizer.decode(greedy_decode(lm, pids, 32, record=False, hooks=hooks).tokens,
                                   skip_special_tokens=True).strip()
        assert row["answer"] == text
        assert row["rouge1_recall"] == pytest.approx(rouge1_recall(needle.answer, text), abs=5e-4)


def _check_03(v, request):
    """The before/after continuations equal greedy generate() with the intervention applied by hand."""
    from workbench.interventions import HeadAblation
    from workbench.interventions.act import ACTCalibration

    lm = request.getfixturevalue("smollm2")
    ids = lm.encode(v["prompt"])
    heads = [tuple(h) for h in v["heads"]]

    def continuation(iv=None):
        import contextlib

        with (iv.applied() if iv is not None else contextlib.nullcontext()), torch.no_grad():
            out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                    do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    assert v["act"] == [continuation(), continuation(ACTCalibration(heads, beta=0.4))]
    assert v["uniform"] == continuation(HeadAblation(heads, "uniform"))
    assert v["zero"] == continuation(HeadAblation(heads, "zero"))
    assert v["act_pattern_error"] < 1e-5  # the notebook's own eager check of the calibrated pattern


def _check_04(v, request):
    """The answers and sink dimensions equal vision_analysis run here on the same preset."""
    from workbench import load_model
    from workbench.report.vision_report import vision_analysis

    assert v["preset"] == "effnet-smollm2-vqa"  # the VLM with the pretrained tower, not the digits fixture
    res = vision_analysis(load_model(v["preset"]), n_images=v["n_images"], max_new_tokens=6, progress=False)
    assert v["answers"] == list(res.answers) and v["sink_dims"] == [int(d) for d in res.sink_dims]


CHECKS = {"01": _check_01, "02": _check_02, "03": _check_03, "04": _check_04}


def test_every_notebook_has_its_value_checks():
    assert sorted(CHECKS) == sorted(DUMP) == sorted(p.name[:2] for p in NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, kernel_env, request):
    """The notebook runs without error, shows its figures, and its key values equal the Python API's."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    key = path.name[:2]
    nb.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint({MARK!r} + _json.dumps({DUMP[key]}))"))
    NotebookClient(nb, kernel_name=kernel_env, timeout=600,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) >= 2, f"expected the notebook's figures, got {len(figures)}"
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith(MARK))
    CHECKS[key](json.loads(line[len(MARK):]), request)
