"""Massive activations (a few tokens) told apart from outlier feature dimensions (most tokens) by the
token-share rule of workbench.analyzers.massive, on a planted residual stream."""
import pandas as pd
import torch

from conftest import make_tiny_lm
from workbench.analyzers.massive import (OUTLIER_SHARE, classify, layer_summary, massive_activations, massive_dims, onset_layer,
                               outlier_features)

MASSIVE_TOKEN, MASSIVE_DIM, OUTLIER_DIM = 7, 3, 11


def _planted_lm():
    """Token 7 carries 5000 on dim 3 (a massive activation); ids 10..59 carry 3000 on dim 11 (an outlier feature)."""
    lm = make_tiny_lm()
    with torch.no_grad():
        w = lm.model.model.embed_tokens.weight
        w[MASSIVE_TOKEN, MASSIVE_DIM] = 5000.0
        w[10:60, OUTLIER_DIM] = 3000.0
    return lm


def test_planted_massive_and_outlier_feature_are_told_apart():
    lm = _planted_lm()
    torch.manual_seed(0)
    ids = torch.randint(10, 97, (4, 40))  # about 58% of the tokens are in 10..59
    ids[:, 0] = MASSIVE_TOKEN
    df = massive_activations(lm, ids, progress=False)
    at0 = df[df.layer == 0]
    n_outlier_tokens = int(((ids >= 10) & (ids < 60)).sum())
    assert df.attrs["n_tokens"] == 160
    massive = at0[at0.kind == "massive"]
    assert sorted(zip(massive["sample"], massive.pos, massive.dim)) == [(s, 0, MASSIVE_DIM) for s in range(4)]
    outl = at0[at0.kind == "outlier_feature"]
    assert set(outl.dim) == {OUTLIER_DIM} and len(outl) == n_outlier_tokens
    # the analyses built on massive activations see only the massive dim
    assert massive_dims(df) == [MASSIVE_DIM] and onset_layer(df) == 0
    assert layer_summary(df).loc[0, "dims"] == [MASSIVE_DIM]
    feats = outlier_features(df)
    row = feats[feats.layer == 0].iloc[0]
    assert row.dim == OUTLIER_DIM and abs(row.token_share - n_outlier_tokens / 160) < 1e-12
    assert row.median_abs_value == 3000.0


def test_classify_boundary_is_the_stated_share():
    n_tokens = 1000
    k = round(OUTLIER_SHARE * n_tokens)  # 60 entries = exactly the share: outlier feature; 59: massive
    rows = [{"sample": 0, "layer": 1, "pos": p, "dim": 5, "token": "a", "value": 500.0, "ratio_to_median": 2000.0,
             "kind": ""} for p in range(k)]
    rows += [{"sample": 0, "layer": 2, "pos": p, "dim": 5, "token": "a", "value": 500.0, "ratio_to_median": 2000.0,
              "kind": ""} for p in range(k - 1)]
    out = classify(pd.DataFrame(rows), n_tokens)
    assert set(out[out.layer == 1].kind) == {"outlier_feature"} and set(out[out.layer == 2].kind) == {"massive"}
