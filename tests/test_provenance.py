"""Provenance on every result file, configuration-checked checkpoints and caches, run-folder names."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import make_tiny_lm
from workbench.io.jsonl import CheckpointMismatchError, append_jsonl, open_checkpoint, read_header, read_jsonl
from workbench.io.provenance import (ProvenanceError, check_same_weights, collect, config_hash, footer_html,
                                  markdown_footer, missing_provenance, read_provenance, weights_sha256, write_csv,
                                  write_json, write_parquet)
from workbench.io.runs import model_slug, run_dir

KEYS = {"workbench_version", "git_commit", "git_dirty", "model", "weights_sha256", "config", "config_hash", "seed",
        "torch", "transformers", "date", "device", "dtype"}


def test_collect_has_every_field_and_hashes_weights(tiny_lm):
    cfg = {"b": [1, 2], "a": {"y": 1.5, "x": None}}
    prov = collect(tiny_lm, cfg, seed=3)
    assert set(prov) == KEYS
    assert isinstance(prov["git_dirty"], bool) and prov["seed"] == 3 and prov["config"] == cfg
    assert prov["config_hash"] == config_hash({"a": {"x": None, "y": 1.5}, "b": [1, 2]})  # key order is irrelevant
    assert prov["config_hash"] != config_hash({**cfg, "b": [2, 1]})
    assert prov["model"]["id"] == "tiny-llama" and prov["device"] == "cpu" and prov["dtype"] == "torch.float32"
    assert prov["date"].endswith("+00:00")
    # the weights hash is of the weights: the same seed gives the same hash, another seed or one edited entry another
    assert weights_sha256(make_tiny_lm(seed=0)) == prov["weights_sha256"]
    other = make_tiny_lm(seed=0)
    with torch.no_grad():
        other.model.model.layers[1].self_attn.o_proj.weight[0, 0] += 1e-3
    assert weights_sha256(other) != prov["weights_sha256"]
    assert weights_sha256(make_tiny_lm(seed=1)) != prov["weights_sha256"]


def test_provenance_in_every_file_type(tiny_lm, tmp_path):
    from workbench.report.viz import layer_head_heatmap, write_html

    prov = collect(tiny_lm, {"what": "test", "n": 2}, seed=0)
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": [0.1, 0.2, 0.3, 0.4]})
    write_parquet(df, tmp_path / "t.parquet", prov)
    assert read_provenance(tmp_path / "t.parquet") == prov
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)  # the table itself is unchanged
    write_json({"x": 1}, tmp_path / "r.json", prov)
    assert json.loads((tmp_path / "r.json").read_text())["provenance"] == prov and read_provenance(tmp_path / "r.json") == prov
    write_html([("score", layer_head_heatmap(df, "score"))], tmp_path / "p.html", "page", provenance=prov)
    page = (tmp_path / "p.html").read_text()
    assert read_provenance(tmp_path / "p.html") == prov
    foot = footer_html(prov)
    for text in (prov["weights_sha256"][:12], "tiny-llama", prov["date"], "seed 0", "<details>", "&quot;what&quot;"):
        assert text in foot
    assert foot in page
    assert read_provenance(tmp_path) == prov  # a folder: through its files
    write_csv(df, tmp_path / "t.csv", prov)  # CSV: a sidecar
    assert read_provenance(tmp_path / "t.csv") == prov
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), df)
    (tmp_path / "r.md").write_text("# report\n\n| a |\n|---|\n| 1 |\n" + markdown_footer({**prov, "note": "a --> b"}))
    assert read_provenance(tmp_path / "r.md") == {**prov, "note": "a --> b"}
    open_checkpoint(tmp_path / "c.jsonl", {"n": 1}, prov)  # JSON lines: the header
    assert read_provenance(tmp_path / "c.jsonl") == prov
    from workbench.core.trace import Trace

    Trace({"x": torch.zeros(2, 3)}, {"x": ("layer", "key")}, {}).save(tmp_path / "tr", provenance=prov)
    assert read_provenance(tmp_path / "tr" / "arrays.safetensors") == prov == read_provenance(tmp_path / "tr" / "trace.json")
    assert missing_provenance(tmp_path) == []
    df.to_parquet(tmp_path / "plain.parquet")
    df.to_csv(tmp_path / "plain.csv")
    (tmp_path / "plain.md").write_text("# no footer\n")
    assert read_provenance(tmp_path / "plain.parquet") is None
    assert [f.name for f in missing_provenance(tmp_path)] == ["plain.csv", "plain.md", "plain.parquet"]


def test_results_of_other_weights_are_not_merged(tiny_lm):
    a = collect(tiny_lm)
    check_same_weights(a, collect(make_tiny_lm(seed=0)))
    with pytest.raises(ProvenanceError, match="other weights") as e:
        check_same_weights(a, collect(make_tiny_lm(seed=1)))
    assert "\n" not in str(e.value)
    with pytest.raises(ProvenanceError, match="no weights hash"):
        check_same_weights(a, None)


def test_checkpoint_refuses_another_configuration_naming_the_field(tmp_path):
    path = tmp_path / "c.jsonl"
    cfg = {"model": "m", "grid": {"lengths": [1, 2]}, "alpha": 2.0}
    assert open_checkpoint(path, cfg) == []
    append_jsonl(path, {"key": "a"})
    assert read_header(path)["config"] == cfg and read_jsonl(path) == [{"key": "a"}]  # the header is no record
    assert open_checkpoint(path, json.loads(json.dumps(cfg))) == [{"key": "a"}]
    with pytest.raises(CheckpointMismatchError) as e:
        open_checkpoint(path, {**cfg, "grid": {"lengths": [1, 3]}})
    msg = str(e.value)
    assert "grid.lengths" in msg and "[1, 2] != [1, 3]" in msg and "\n" not in msg and "alpha" not in msg
    (tmp_path / "old.jsonl").write_text('{"key": "a"}\n')
    with pytest.raises(CheckpointMismatchError, match="no configuration header"):
        open_checkpoint(tmp_path / "old.jsonl", cfg)


def test_code_hash_covers_the_parts_a_module_was_split_into(tmp_path, monkeypatch):
    """A module that re-exports its parts (``from .part import f``) hashes their source too: editing only the part
    changes the hash of the module's name, and naming the part as well changes nothing."""
    import importlib

    from workbench.io.provenance import code_sha256

    pkg = tmp_path / "wb_split_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "face.py").write_text("from .part import f\n")
    (pkg / "part.py").write_text("def f():\n    return 1\n")
    (pkg / "other.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = code_sha256(["wb_split_probe.face"])
    assert before == code_sha256(["wb_split_probe.face", "wb_split_probe.part"])
    (pkg / "other.py").write_text("X = 2\n")  # not imported by face: not part of its hash
    assert code_sha256(["wb_split_probe.face"]) == before
    (pkg / "part.py").write_text("def f():\n    return 2\n")
    assert code_sha256(["wb_split_probe.face"]) != before


def test_run_folder_names_are_readable(tmp_path):
    ckpt = tmp_path / "my-ckpt"
    ckpt.mkdir()
    assert model_slug(str(ckpt)) == "my-ckpt" and model_slug(str(ckpt) + "/") == "my-ckpt"
    assert model_slug("smollm2-135m") == "smollm2-135m"
    assert model_slug("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB--SmolLM2-135M"
    assert run_dir("runs", str(ckpt), "retrieval").as_posix() == "runs/my-ckpt/retrieval"


def test_answer_cache_misses_when_a_parameter_changes(tiny_lm, tmp_path, monkeypatch):
    """A cached hallucination answer is reused only for the same method parameters, model and code."""
    from types import SimpleNamespace

    import numpy as np

    from workbench.demo import digits_vlm
    from workbench.tasks import hallucination as H

    calls = []
    monkeypatch.setattr(digits_vlm, "make_input", lambda lm, q, px: q)
    monkeypatch.setattr(H, "answer", lambda lm, inp, method, max_new_tokens=1, params=None:
                        calls.append((method, H.method_params(method, params))) or "Yes")
    imgs = [SimpleNamespace(pixels=np.full((4, 4), i, np.uint8), digits=[i]) for i in range(2)]
    items = pd.DataFrame({"image": [0, 1], "digit": [0, 1], "split": ["random"] * 2, "label": [True, True]})

    def pope(method, params=None):
        n = len(calls)
        H.run_pope(tiny_lm, imgs, items, method, ["random"], cache=tmp_path, progress=False, params=params)
        return len(calls) - n

    assert pope("vhr") == 2
    assert pope("vhr") == 0  # same configuration: answered from the cache
    assert pope("vhr", {"alpha": 3.0}) == 2  # another alpha: no cache hit
    assert pope("var") == 2 and pope("var") == 0
    assert pope("var", {"p": 0.3}) == 2
    assert pope("var", {"rho": 0.7}) == 2 and pope("var", {"tau": 10.0}) == 2
    assert pope("var", {"p": 0.3}) == 0
    n = len(calls)
    H.run_chair(tiny_lm, imgs, "var", max_new_tokens=4, cache=tmp_path, progress=False)
    H.run_chair(tiny_lm, imgs, "var", max_new_tokens=5, cache=tmp_path, progress=False)  # another length: a miss
    assert len(calls) - n == 4
    with pytest.raises(Exception, match="no parameter 'beta'"):
        H.method_params("var", {"beta": 1})
