"""Trace files: safetensors + JSON round trip, TransformerLens hook names, corrupt files."""
import json

import pytest
import torch

from workbench import Tracer
from workbench.core.errors import TraceFileError
from workbench.core.trace import Trace


def test_round_trip_preserves_arrays_dims_and_meta(tiny_lm, tmp_path):
    ids = torch.randint(3, 97, (1, 20))
    tr = Tracer(tiny_lm, stats=("received", "top_key"), pattern_window=(2, 9), z=True).run(ids)
    tr.save(tmp_path / "t")
    back = Trace.load(tmp_path / "t")
    assert set(back.arrays) == set(tr.arrays)
    for k in tr.arrays:
        assert torch.equal(back[k], tr[k]) and back.dims[k] == tr.dims[k]
    assert back.meta["query_start"] == 2 and back.layers == [0, 1]
    frame = back.to_frame("received")
    assert list(frame.columns) == ["layer", "batch", "head", "key", "value"]
    assert len(frame) == tr["received"].numel()
    pf = back.to_frame("pattern")
    assert pf["query"].min() == 2 and pf["query"].max() == 8


def test_no_pickle_in_files(tiny_lm, tmp_path):
    Tracer(tiny_lm, stats=("received",)).run(torch.randint(3, 97, (1, 8))).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.safetensors", "trace.json"]
    json.loads((tmp_path / "trace.json").read_text())


@pytest.mark.parametrize("damage", ["missing", "json", "format", "tensors", "dims"])
def test_corrupt_trace_files_raise_trace_file_error(tiny_lm, tmp_path, damage):
    d = tmp_path / "t"
    Tracer(tiny_lm, stats=("received",)).run(torch.randint(3, 97, (1, 8))).save(d)
    if damage == "missing":
        (d / "arrays.safetensors").unlink()
    elif damage == "json":
        (d / "trace.json").write_text("{not json")
    elif damage == "format":
        (d / "trace.json").write_text(json.dumps({"format": "something-else"}))
    elif damage == "tensors":
        data = (d / "arrays.safetensors").read_bytes()
        (d / "arrays.safetensors").write_bytes(data[: len(data) // 2])
    else:
        doc = json.loads((d / "trace.json").read_text())
        doc["dims"]["received"] = ["layer"]
        (d / "trace.json").write_text(json.dumps(doc))
    with pytest.raises(TraceFileError) as err:
        Trace.load(d)
    assert "\n" not in str(err.value)


def test_add_checks_axis_names():
    t = Trace()
    with pytest.raises(ValueError, match="axis names"):
        t.add("x", torch.zeros(2, 3), ("layer",))
