"""Activation and path patching on head outputs z: identities that must hold exactly, and the tasks."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from circuits import (PatchingTask, ReplicaZPatch, ZPatch, activation_patching, circuit_overlap,
                                extract_circuit, logit_diff, path_patching, run_with_z, set_overlap)
from circuits.patching import _FreezeOthers


def _random_task(n=6, length=9, vocab=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, vocab, (n, length), generator=g)
    corr = clean.clone()
    corr[:, 2:5] = torch.randint(3, vocab, (n, 3), generator=g)  # corrupt a middle span
    ans = torch.randint(3, vocab, (n,), generator=g)
    wrong = torch.randint(3, vocab, (n,), generator=g)
    return PatchingTask("random", list(clean), list(corr), ans, wrong)


@pytest.fixture
def tiny3():
    from conftest import make_tiny_lm

    return make_tiny_lm(n_layers=3, n_heads=4, n_kv_heads=2, seed=1)


def test_patching_every_head_with_its_own_clean_z_restores_clean_logits(tiny3):
    task = _random_task()
    clean, _, ans, wrong = task.batch(torch.arange(len(task)))
    logits, z = run_with_z(tiny3, clean)
    heads = [(layer, h) for layer in range(3) for h in range(4)]
    with ZPatch(heads, z).applied():
        patched = tiny3.model(input_ids=clean).logits
    torch.testing.assert_close(patched, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logit_diff(patched, ans, wrong), logit_diff(logits, ans, wrong), atol=1e-5, rtol=0)
    # path patching step 2 with the sender's "corrupted" z equal to its clean z is the clean run
    step2 = _FreezeOthers(2, [(0, 1), (2, 3)], z, z, record=[(1, 0)])
    with step2.applied():
        rep = tiny3.model(input_ids=clean.repeat(2, 1)).logits
    torch.testing.assert_close(rep, logits.repeat(2, 1, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step2.recorded[1][(1, 0)], z[1][:, 0], atol=1e-5, rtol=1e-5)


def test_activation_patching_matches_one_head_at_a_time_and_changes_only_that_head(tiny3):
    task = _random_task()
    clean, corr, ans, wrong = task.batch(torch.arange(len(task)))
    df = activation_patching(tiny3, task, heads_per_pass=5, progress=False)
    _, zc = run_with_z(tiny3, clean)
    lx, zx = run_with_z(tiny3, corr)
    ld_clean, ld_corr = df.attrs["ld_clean"], df.attrs["ld_corrupted"]
    for layer, h in [(0, 0), (1, 2), (2, 3)]:
        tracer_z = {}
        with ZPatch([(layer, h)], zc).applied():
            _, tracer_z = run_with_z(tiny3, corr)
        # the patched head carries the clean z, every other head of that layer keeps its corrupted z
        torch.testing.assert_close(tracer_z[layer][:, h], zc[layer][:, h])
        others = [x for x in range(4) if x != h]
        torch.testing.assert_close(tracer_z[layer][:, others], zx[layer][:, others])
        with ZPatch([(layer, h)], zc).applied():
            ld = logit_diff(tiny3.model(input_ids=corr).logits, ans, wrong).mean().item()
        row = df[(df.layer == layer) & (df["head"] == h)].iloc[0]
        assert row.ld_patched == pytest.approx(ld, abs=1e-4)
        assert row.normalised == pytest.approx((ld - ld_corr) / (ld_clean - ld_corr), abs=1e-4)


def test_path_patching_to_logits_from_last_layer_equals_noising_activation_patching(tiny3):
    task = _random_task(seed=2)
    clean, corr, ans, wrong = task.batch(torch.arange(len(task)))
    df = path_patching(tiny3, task, "logits", senders=[(2, 0), (2, 3)], progress=False)
    _, zx = run_with_z(tiny3, corr)
    for h in (0, 3):
        with ZPatch([(2, h)], zx).applied():
            ld = logit_diff(tiny3.model(input_ids=clean).logits, ans, wrong).mean().item()
        assert df[df["head"] == h].ld_patched.item() == pytest.approx(ld, abs=1e-4)


def test_path_patching_changes_only_downstream_receivers(tiny3):
    task = _random_task(seed=3)
    # senders in the receivers' own layer cannot reach the receivers' inputs: no effect at all
    same = path_patching(tiny3, task, [(1, 0), (1, 2)], senders=[(1, 1), (1, 3), (2, 0)], progress=False)
    assert same.normalised.sub(1).abs().max() < 1e-4
    # senders before the receivers do change them
    before = path_patching(tiny3, task, [(1, 0), (1, 2)], senders=[(0, h) for h in range(4)], progress=False)
    assert before.effect.abs().max() > 1e-3
    assert before.attrs["receivers"] == [[1, 0], [1, 2]]


def test_replicas_are_independent(tiny3):
    task = _random_task()
    clean, corr, _, _ = task.batch(torch.arange(len(task)))
    _, zx = run_with_z(tiny3, corr)
    heads = [(0, 1), (1, 3), (2, 2)]
    iv = ReplicaZPatch(3, [{hh: zx[hh[0]][:, hh[1]]} for hh in heads])
    with iv.applied():
        rep = tiny3.model(input_ids=clean.repeat(3, 1)).logits.view(3, len(task), clean.shape[1], -1)
    for r, hh in enumerate(heads):
        with ZPatch([hh], zx).applied():
            one = tiny3.model(input_ids=clean).logits
        torch.testing.assert_close(rep[r], one, atol=1e-5, rtol=1e-5)


def test_extract_circuit_stages_and_overlap(tiny3):
    task = _random_task()
    circuit, tables = extract_circuit(tiny3, task, k=2, stages=2, progress=False)
    assert list(circuit.stage.unique()) == [1, 2]
    stage1 = circuit[circuit.stage == 1]
    assert set(zip(stage1.layer, stage1["head"])).isdisjoint(set(zip(circuit[circuit.stage == 2].layer,
                                                                     circuit[circuit.stage == 2]["head"])))
    assert circuit[circuit.stage == 2].layer.max() < stage1.layer.max()
    a = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "effect": [-0.9, 0.1, -0.5, 0.0]})
    b = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "effect": [-0.8, 0.0, 0.05, -0.6]})
    ov = circuit_overlap(a, b, k=2)
    assert ov["shared"] == [[0, 0]] and ov["jaccard"] == pytest.approx(1 / 3) and ov["overlap"] == 0.5
    assert set_overlap([(0, 0), (1, 1)], [(1, 1)])["overlap"] == 1.0


@pytest.mark.slow
def test_tasks_on_smollm2(smollm2):
    from circuits import colored_objects_task, ioi_task, task_baseline

    for make in (ioi_task, colored_objects_task):
        task = make(smollm2.tokenizer, n=8)
        assert all(len(a) == len(b) for a, b in zip(task.clean, task.corrupted))
        base = task_baseline(smollm2, task)
        assert base["ld_clean"] > base["ld_corrupted"]  # the clean prompt carries the answer
    assert task.prompts[0] != task.corrupted_prompts[0]
