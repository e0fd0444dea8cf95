"""Linear probes: control tasks follow token identity; selectivity separates memorisation from information."""
from __future__ import annotations

import numpy as np
import pytest

from probes import ProbeData, ProbeError, control_labels, train_probe


def test_control_labels_are_a_function_of_token_type():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, 4000)
    y = (rng.random(4000) < 0.3).astype(int)
    yc = control_labels(tokens, y, seed=1)
    for t in np.unique(tokens):
        assert len(np.unique(yc[tokens == t])) == 1
    assert abs(yc.mean() - 0.3) < 0.15  # drawn from the label distribution (per type)


def _data(label_from_token: bool, seed=0, n_seq=40, length=50, vocab=30, dim=48):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (n_seq, length))
    emb = rng.normal(size=(vocab, dim))
    if label_from_token:
        y = (tokens % 3 == 0).astype(int)  # a property of the token type
        X = emb[tokens] + 0.1 * rng.normal(size=(n_seq, length, dim))
    else:
        y = (rng.random((n_seq, length)) < 0.3).astype(int)  # a property of the context, not the token
        X = emb[tokens] + 0.1 * rng.normal(size=(n_seq, length, dim))
        X[..., 0] += 6.0 * y  # planted linearly readable information
    return ProbeData(X.reshape(-1, dim), y.reshape(-1), np.repeat(np.arange(n_seq), length), tokens.reshape(-1))


def test_planted_contextual_feature_is_selective():
    res = train_probe(_data(label_from_token=False, vocab=200, dim=16))  # too few dims to memorise 200 types
    assert res.task_accuracy > 0.95
    assert res.control_accuracy < 0.8
    assert res.selectivity > 0.2


def test_token_identity_label_is_not_selective():
    res = train_probe(_data(label_from_token=True), C=10.0)
    assert res.task_accuracy > 0.95
    # dim > vocab: any labelling of token types is linearly separable, so the control task
    # (also a function of token identity) is learnt about as well
    assert res.control_accuracy > 0.9
    assert abs(res.selectivity) < 0.1


def test_split_is_by_sequence_and_errors_are_clear():
    d = _data(False)
    res = train_probe(d, test_size=0.25)
    assert res.n_test == 10 * 50 and res.n_train == 30 * 50
    with pytest.raises(ProbeError):
        train_probe(ProbeData(d.X, np.zeros_like(d.y), d.groups, d.tokens))


@pytest.mark.slow
def test_needle_and_sink_datasets_on_smollm2(smollm2):
    from probes import needle_dataset, sink_dataset

    d = needle_dataset(smollm2, layer=10, n_seqs=8, seq_len=64)
    assert d.X.shape == (8 * 64, 576) and 0 < d.y.mean() < 0.5
    res = train_probe(d)
    assert res.task_balanced_accuracy > 0.6
    s = sink_dataset(smollm2, layer=4, n_seqs=6, seq_len=64, site="z", head=0)
    assert s.X.shape[1] == 64 and s.y.reshape(6, -1)[:, 0].all()  # the first token is a sink in every window
