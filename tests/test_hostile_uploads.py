"""Hostile files handed to the dashboard (and Trace.load): each gets a one-line error, at bounded cost.

The table of cases is docs/bad_input.md's hostile-upload table; each row builds a file from a real
tiny trace and changes one thing."""
from __future__ import annotations

import io
import json
import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save as st_save

from dashboards import sources as S
from workbench.core.errors import WorkbenchError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_good(tmp_path_factory.mktemp("good"))


def make_good(tmp) -> tuple[dict, bytes]:
    """trace.json and arrays.safetensors bytes of a real trace of the tiny model (2 layers x 4 heads)."""
    from conftest import make_tiny_lm
    from workbench.core.tracer import Tracer

    lm = make_tiny_lm()
    ids = torch.randint(3, 90, (1, 24), generator=torch.Generator().manual_seed(0))
    tr = Tracer(lm, stats=("received", "entropy", "top_key"), pattern_window=(8, 24)).run(ids)
    d = tr.save(tmp / "trace")
    return json.loads((d / "trace.json").read_text()), (d / "arrays.safetensors").read_bytes()


def _arrays(good):
    from safetensors.torch import load

    return dict(load(good[1]))


def _meta(good, **change):
    doc = json.loads(json.dumps(good[0]))
    doc["meta"].update(change)
    return json.dumps(doc).encode()


def _doc(good, **change):
    doc = json.loads(json.dumps(good[0]))
    doc.update(change)
    return json.dumps(doc).encode()


def _with_array(good, name, value):
    arrays = _arrays(good)
    arrays[name] = value
    return st_save(arrays)


def _csv(df):
    return df.to_csv(index=False).encode()


HUGE = list(range(3000))
CASES = {
    # name: (files(good) -> {filename: bytes}, substring of the error)
    "meta layers longer than the layer axis": (lambda g: {"trace.json": _meta(g, layers=[0, 1, 2], n_layers=3),
                                                          "arrays.safetensors": g[1]}, "along 'layer'"),
    "huge declared axes (3000 x 3000)": (lambda g: {"trace.json": _meta(g, layers=HUGE, heads=HUGE, n_layers=3000, n_heads=3000),
                                                    "arrays.safetensors": g[1]}, "meta lists 3000"),
    "layer index past n_layers": (lambda g: {"trace.json": _meta(g, layers=[0, 7]), "arrays.safetensors": g[1]},
                                  "n_layers"),
    "negative / non-integer heads": (lambda g: {"trace.json": _meta(g, heads=[0, -1, "x", 2]),
                                                "arrays.safetensors": g[1]}, "meta.heads"),
    "duplicate layers": (lambda g: {"trace.json": _meta(g, layers=[1, 1]), "arrays.safetensors": g[1]}, "twice"),
    "meta not an object": (lambda g: {"trace.json": _doc(g, meta=[1, 2]), "arrays.safetensors": g[1]},
                           "not a JSON object"),
    "dims not lists of names": (lambda g: {"trace.json": _doc(g, dims={"received": 5}), "arrays.safetensors": g[1]},
                                "dims"),
    "axis names swapped": (lambda g: {"trace.json": _doc(g, dims={**g[0]["dims"], "received": ["key", "batch", "head", "layer"]}),
                                      "arrays.safetensors": g[1]}, "expected"),
    "token strings of the wrong length": (lambda g: {"trace.json": _meta(g, token_strings=[["a"]]),
                                                     "arrays.safetensors": g[1]}, "token_strings"),
    "truncated safetensors": (lambda g: {"trace.json": json.dumps(g[0]).encode(),
                                         "arrays.safetensors": g[1][: len(g[1]) // 2]}, "corrupt"),
    "safetensors header only": (lambda g: {"trace.json": json.dumps(g[0]).encode(),
                                           "arrays.safetensors": g[1][:16]}, "corrupt"),
    "wrong dtype (received as int32)": (lambda g: {"trace.json": json.dumps(g[0]).encode(),
                                                   "arrays.safetensors": _with_array(g, "received", _arrays(g)["received"].int())},
                                        "must hold floats"),
    "wrong dtype (tokens as float)": (lambda g: {"trace.json": json.dumps(g[0]).encode(),
                                                 "arrays.safetensors": _with_array(g, "tokens", _arrays(g)["tokens"].float())},
                                      "must hold integers"),
    "array with the wrong rank": (lambda g: {"trace.json": json.dumps(g[0]).encode(),
                                             "arrays.safetensors": _with_array(g, "entropy", torch.zeros(2, 1, 4))},
                                  "dimensions"),
    "batch sizes disagree": (lambda g: {"trace.json": json.dumps(g[0]).encode(),
                                        "arrays.safetensors": _with_array(g, "entropy", torch.zeros(2, 3, 4, 24))},
                             "batch"),
    "trace.json not UTF-8": (lambda g: {"trace.json": b"\xff\xfe{", "arrays.safetensors": g[1]}, "not valid JSON"),
    "trace.json of another format": (lambda g: {"trace.json": _doc(g, format="other/9"), "arrays.safetensors": g[1]},
                                     "is not a workbench-trace"),
    "a trace without its arrays": (lambda g: {"trace.json": json.dumps(g[0]).encode()}, "needs trace.json and one"),
    "a pickle": (lambda g: {"trace.pkl": b"\x80\x04\x95."}, "never pickle"),
    "table with huge layer numbers": (lambda g: {"heads.csv": _csv(pd.DataFrame({"layer": [0, 10**9], "head": [0, 1]}))},
                                      "0..65535"),
    "table with text layers": (lambda g: {"heads.csv": _csv(pd.DataFrame({"layer": ["a", "b"], "head": [0, 1]}))},
                               "integers"),
    "table with a head twice": (lambda g: {"heads.csv": _csv(pd.DataFrame({"layer": [0, 0], "head": [1, 1]}))}, "twice"),
    "table without layer/head": (lambda g: {"heads.csv": _csv(pd.DataFrame({"x": [1]}))}, "needs layer and head"),
    "JSON table that is a number": (lambda g: {"heads.json": b"42"}, "cannot read"),
    "JSON table not UTF-8": (lambda g: {"heads.json": b"\xff\xfe["}, "cannot read"),
    "corrupt parquet": (lambda g: {"heads.parquet": b"PAR1 not parquet"}, "cannot read"),
}


def test_the_good_trace_loads(good):
    trace, _, _ = S.parse_uploads({"trace.json": json.dumps(good[0]).encode(), "arrays.safetensors": good[1]})
    assert trace.layers == [0, 1] and len(S.trace_head_table(trace)) == 8


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_upload_gets_a_one_line_error(case, good):
    make, expect = CASES[case]
    files = make(good)
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(WorkbenchError) as e:
        S.parse_uploads(files)
    elapsed, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    msg = str(e.value)
    assert "\n" not in msg and expect.lower() in msg.lower(), msg
    # recorded, not asserted as a timing: the figures go into docs/bad_input.md's hostile-upload table
    print(f"| {case} | {sum(len(v) for v in files.values())} B | {msg[:90]} | {elapsed * 1e3:.0f} ms, {peak / 2**20:.1f} MiB |")


def test_trace_load_checks_the_same_on_disk(good, tmp_path):
    from workbench.core.errors import TraceFileError
    from workbench.core.trace import Trace

    (tmp_path / "trace.json").write_bytes(_meta(good, layers=HUGE, heads=HUGE, n_layers=3000, n_heads=3000))
    (tmp_path / "arrays.safetensors").write_bytes(good[1])
    with pytest.raises(TraceFileError, match="meta lists 3000"):
        Trace.load(tmp_path)
