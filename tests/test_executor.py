"""Executors: a local 2-worker Ray cluster gives the local executor's results, and a killed worker loses no cell."""
from __future__ import annotations

import os

import pandas as pd
import pytest
import torch

from tests.conftest import make_tiny_lm
from workbench.core.errors import WorkbenchError
from workbench.core.executor import ExecutorError, LocalExecutor, ModelLoader, make_executor
from workbench.core.ray_executor import RayExecutor

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the whole module (started here, so executors join it): 2 CPUs for the
    2-worker pool, 1 for the VLM test's worker."""
    os.environ.setdefault("RAY_worker_niceness", "0")  # as RayExecutor does for the clusters it starts
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024 ** 2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A random-weight Llama saved with SmolLM2's tokenizer, so workers load it with load_model(path)."""
    from workbench import load_model

    tok = load_model("smollm2-135m").tokenizer
    d = tmp_path_factory.mktemp("tiny")
    lm = make_tiny_lm(n_layers=2, n_heads=4, n_kv_heads=2, vocab=len(tok), max_pos=512, seed=5)
    lm.model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from workbench import load_model

    return load_model(tiny_dir)


@pytest.fixture(scope="module")
def pool(cluster, tiny_dir):
    with RayExecutor(ModelLoader.of(tiny_dir), workers=2, threads=1) as ex:
        yield ex


SWEEP = dict(lengths=[160, 200], depths=[0, 50, 100], progress=False, max_new_tokens=3)


def _sweep(lm, out, **kw):
    from workbench.tasks.needle import NEEDLES
    from workbench.studies.retrieval_sweep import read_results, run_sweep

    res = run_sweep(lm, needles=NEEDLES[:2], out_dir=out, **SWEEP, **kw)
    return res, read_results(out)


def test_ray_sweep_equals_local_sweep(pool, tiny, tmp_path):
    torch.set_num_threads(1)  # the workers' setting, so float reductions run in the same order
    local, lrec = _sweep(tiny, tmp_path / "local", executor=LocalExecutor(threads=1))
    dist, drec = _sweep(tiny, tmp_path / "ray", executor=pool)
    assert len(drec) == len(lrec) == 12
    by_key = {r["key"]: r for r in lrec}
    for r in drec:  # every record identical, whatever order the workers finished in
        assert r == by_key[r["key"]]
    assert dist.summary == local.summary
    assert dist.heads.equals(local.heads)
    # both workers took cells: the worker pids differ
    assert len(set(ray.get([a.pid.remote() for a in pool.actors]))) == 2


def test_killed_worker_has_its_cells_rescheduled(pool, tiny, tmp_path):
    from workbench.studies.retrieval_sweep import read_results

    killed, before = [], pool.replacements

    def kill_a_busy_worker(rec):
        if not killed:
            busy = pool.in_flight()
            assert busy  # the other worker is running a cell right now
            i, actor = next(iter(busy.items()))
            killed.append(i)
            ray.kill(actor)

    res, recs = _sweep(tiny, tmp_path, executor=pool, on_test=kill_a_busy_worker)
    assert pool.replacements == before + 1 and len(pool.actors) == 2
    keys = [r["key"] for r in recs]
    assert len(keys) == 12 and len(set(keys)) == 12  # every cell exactly once
    assert res.summary["n_tests"] == 12
    assert read_results(tmp_path) == recs


def test_resume_with_ray_after_a_local_start(pool, tiny, tmp_path):
    """The driver alone writes results, so a sweep started locally resumes on Ray without redoing a test."""
    class Stop(Exception):
        pass

    first = []

    def stop_after_four(rec):
        first.append(rec["key"])
        if len(first) == 4:
            raise Stop

    with pytest.raises(Stop):
        _sweep(tiny, tmp_path, on_test=stop_after_four)
    rest = []
    res, recs = _sweep(tiny, tmp_path, executor=pool, resume=True, on_test=lambda r: rest.append(r["key"]))
    assert len(rest) == 8 and not set(rest) & set(first)
    assert sorted(r["key"] for r in recs) == sorted(first + rest)


def test_workers_with_another_model_are_refused(pool, tmp_path):
    lm = make_tiny_lm(n_layers=3)
    with pytest.raises(ExecutorError, match="not the driver's"):
        list(pool.map(object(), [1], lm))


def test_ray_pope_and_chair_equal_local(cluster):
    from workbench.tasks import hallucination as H
    from workbench import load_model

    torch.set_num_threads(1)
    lm = load_model("digits-vlm")
    imgs = H.heldout_images(2)
    items = H.pope_items(imgs)
    with RayExecutor(ModelLoader.of("digits-vlm"), workers=1, threads=1) as ex:
        local = H.run_pope(lm, imgs, items, "var", ["random"], progress=False)
        dist = H.run_pope(lm, imgs, items, "var", ["random"], progress=False, executor=ex)
        pd.testing.assert_frame_equal(dist, local)
        local = H.run_chair(lm, imgs, "none", max_new_tokens=3, progress=False)
        dist = H.run_chair(lm, imgs, "none", max_new_tokens=3, progress=False, executor=ex)
        pd.testing.assert_frame_equal(dist, local)


def test_a_pool_the_cluster_cannot_place_is_refused(pool, tiny_dir):
    with pytest.raises(ExecutorError, match="cannot place 2 workers"):
        RayExecutor(ModelLoader.of(tiny_dir), workers=2).start()  # the pool holds 2 of the 3 CPUs


def test_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ExecutorError, match="unknown executor"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="need --executor ray"):
        make_executor("local", address="127.0.0.1:6379")
    with pytest.raises(ExecutorError, match="cannot reach a Ray cluster at 127.0.0.1:9"):
        RayExecutor(ModelLoader.of("smollm2-135m"), address="127.0.0.1:9").start()
    with pytest.raises(WorkbenchError, match="at least 1 worker"):
        RayExecutor(ModelLoader.of("smollm2-135m"), workers=0)
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ExecutorError, match=r"needs Ray, which is not installed: pip install"):
        make_executor("ray", "smollm2-135m")


def test_ray_study_equals_local_study(pool, tiny, tmp_path):
    from tests.test_studies import SPEC
    from workbench.studies import parse_spec, run_study
    from workbench.studies.runner import read_rows

    torch.set_num_threads(1)
    spec = parse_spec({**SPEC, "model": tiny.spec.name})
    local = run_study(spec, tiny, out_root=tmp_path / "local", progress=False, executor=LocalExecutor(threads=1))
    dist = run_study(spec, tiny, out_root=tmp_path / "ray", progress=False, executor=pool)
    assert dist.n_run == local.n_run == 2 * (1 + 3 * 2)
    a = {r["key"]: r for r in read_rows(local.out)}
    b = {r["key"]: r for r in read_rows(dist.out)}
    assert a == b  # every condition's per-example values identical
    pd.testing.assert_frame_equal(dist.table, local.table)  # bootstrap over rows in plan order: same intervals


def test_ray_masking_grid_equals_local(pool, tiny):
    from workbench.interventions import HeadAblation
    from workbench.studies.retrieval_masking import Condition, run_niah
    from workbench.tasks.needle import NEEDLES

    torch.set_num_threads(1)
    conds = [Condition("baseline", "none", 0, None, None, None),
             Condition("zero/top-2", "top", 2, None, "zero", HeadAblation([(0, 1), (1, 2)], "zero", "decode")),
             Condition("uniform/all", "top", 2, None, "uniform", HeadAblation([(0, 0), (1, 3)], "uniform", "all"))]
    kw = dict(lengths=[160, 200], depths=[0, 100], needles=NEEDLES[:2], max_new_tokens=3, progress=False)
    local = run_niah(tiny, conds, **kw)
    dist = run_niah(tiny, conds, executor=pool, **kw)
    assert len(local) == 3 * 8
    pd.testing.assert_frame_equal(dist, local)


def test_ray_act_search_equals_local(pool, tiny, tmp_path):
    from workbench.interventions.act_search import search_heads
    from workbench.io.jsonl import read_jsonl
    from workbench.tasks.cloze import build_task

    torch.set_num_threads(1)
    task = build_task("pydoc-cloze", tiny.tokenizer, "train", 8, context_tokens=16)
    cands = [(1, 3), (0, 0), (1, 0), (0, 2)]
    local = search_heads(tiny, task, cands, checkpoint=tmp_path / "local.jsonl", progress=False)
    dist = search_heads(tiny, task, cands, checkpoint=tmp_path / "ray.jsonl", progress=False, executor=pool)
    pd.testing.assert_frame_equal(dist, local)  # in candidate order whichever worker finished first
    assert sorted(map(str, read_jsonl(tmp_path / "ray.jsonl"))) == sorted(map(str, read_jsonl(tmp_path / "local.jsonl")))
