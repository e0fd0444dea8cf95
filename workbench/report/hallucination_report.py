"""``workbench hallucination`` as one call: POPE-style (and optionally CHAIR-style) object hallucination of a
preset VLM under an intervention, with 95% bootstrap intervals over images, written as one JSON file."""
from __future__ import annotations

from pathlib import Path

from ..core.models import LoadedModel


def hallucination_report(lm: LoadedModel, method: str = "none", split: str = "random", images: int = 40,
                         chair: bool = False, out: str | Path | None = "runs", progress: bool = True,
                         executor=None) -> dict:
    """POPE metrics of ``method`` on ``images`` held-out composites (and CHAIR metrics with ``chair``);
    for ``effnet-smollm2-vqa``, on held-out easy-VQA scenes (:func:`scene_hallucination_report`).

    Answers come from :func:`workbench.tasks.hallucination.run_pope` / ``run_chair`` and are cached under
    ``out/<model>/hallucination/`` (one ``answers-<config hash>.jsonl`` per configuration, resumable; no cache
    when ``out`` is None); the metrics and their intervals from :func:`workbench.core.intervals.cluster_ci`
    (bootstrap over images, the cluster of each image's questions).

    Args:
        lm: a VLM preset with held-out images (``digits-vlm`` or ``effnet-smollm2-vqa``).
        method: ``none``, ``vhr`` or ``var`` (:data:`workbench.tasks.hallucination.METHODS`).
        split: POPE negatives, ``random``, ``popular`` or ``adversarial``.
        images: held-out composites (POPE: one positive and one negative question each).
        chair: also run the CHAIR-style listing task.
        out: output root; writes ``out/<model>/hallucination_<method>_<split>_<images>.json`` with provenance.
        executor: a :mod:`workbench.core.executor` executor that answers the questions (default local, serial).
    Returns:
        ``{"model", "method", "params", "split", accuracy, precision, recall, f1, yes_ratio and their intervals,
        "chair" (with ``chair``), "file" (when ``out`` is given)}``.
    Raises:
        UnknownMethodError: unknown method or split.
        NotAVisionModelError / NoImageSourceError: the model cannot take the digit composites.
    """
    from ..core.intervals import cluster_ci
    from ..io.provenance import collect, write_json
    from ..tasks.hallucination import (chair_metrics, check_method, heldout_images, method_params, pope_items,
                                       pope_metrics, run_chair, run_pope)
    from .vision_report import require_digits_model

    check_method(method, split)
    require_digits_model(lm)
    if lm.extras.get("image_kind") == "easy-vqa":
        return scene_hallucination_report(lm, method, split, images, chair, out, progress, executor)
    imgs = heldout_images(images)
    cache = None
    if out is not None:
        from ..io.runs import model_dir

        cache = model_dir(out, lm.spec.name) / "hallucination"
        cache.mkdir(parents=True, exist_ok=True)
    df = run_pope(lm, imgs, pope_items(imgs), method, [split], cache=cache, progress=progress, executor=executor)
    chair_df = run_chair(lm, imgs, method, cache=cache, progress=progress, executor=executor) if chair else None
    result = {"model": lm.spec.name, "method": method, "params": method_params(method), "split": split,
              **cluster_ci(df, pope_metrics)}
    if chair:
        result["chair"] = cluster_ci(chair_df, chair_metrics)
    if cache is not None:
        prov = collect(lm, {"command": "hallucination", "model": lm.spec.name, "method": method,
                            "params": result["params"], "split": split, "images": images, "chair": chair})
        result["file"] = str(write_json(result, cache.parent / f"hallucination_{method}_{split}_{images}.json", prov))
    return result


def scene_hallucination_report(lm: LoadedModel, method: str = "none", split: str = "random", images: int = 40,
                               chair: bool = False, out: str | Path | None = "runs", progress: bool = True,
                               executor=None) -> dict:
    """:func:`hallucination_report` for ``effnet-smollm2-vqa``: POPE (and CHAIR with ``chair``) on the first
    ``images`` held-out easy-VQA test scenes of :func:`workbench.tasks.vqa_hallucination.heldout_scenes` (the
    scenes ``reports/effnet-smollm2-vqa/`` reports on), with :mod:`workbench.tasks.vqa_hallucination`.

    POPE: one positive and one ``split`` negative question per scene (``pope_items(scenes, seed=POPE_SEED)``), the answer
    logit(`` yes``) > logit(`` no``) at the first answer token; CHAIR: the greedy caption of "Describe the image.".
    Parameters are the methods' defaults (:func:`~workbench.tasks.hallucination.method_params`), not the ones the
    reference report chose on its calibration scenes. Runs in this process (a few seconds per question on a CPU).

    Raises:
        WorkbenchError: an executor other than the local one was asked for.
    """
    from ..core.executor import LocalExecutor
    from ..core.intervals import cluster_ci
    from ..core.errors import WorkbenchError
    from ..io.provenance import collect, write_json
    from ..tasks.hallucination import method_params
    from ..tasks import vqa_hallucination as H
    from ..demo import easyvqa as V

    if executor is not None and not isinstance(executor, LocalExecutor):
        raise WorkbenchError(f"hallucination on {lm.spec.name} runs in this process only: drop --executor {executor.name}")
    scenes = H.heldout_scenes(images)
    items = V.pope_items(scenes, seed=H.POPE_SEED)
    items = items[items.split == split].reset_index(drop=True)
    params = method_params(method)
    df = H.run_pope(lm, scenes, items, method, params, progress=progress)
    result = {"model": lm.spec.name, "method": method, "params": params, "split": split,
              "images": f"held-out easy-VQA test scenes {H.N_CALIBRATION}..{H.N_CALIBRATION + images - 1} of "
                        f"scenes('test', n, seed={H.SCENE_SEED})", **cluster_ci(df, H.pope_metrics)}
    if chair:
        result["chair"] = cluster_ci(H.run_chair(lm, scenes, method, params, progress=progress), H.chair_metrics)
    if out is not None:
        from ..io.runs import model_dir

        folder = model_dir(out, lm.spec.name)
        folder.mkdir(parents=True, exist_ok=True)
        prov = collect(lm, {"command": "hallucination", "model": lm.spec.name, "method": method, "params": params,
                            "split": split, "images": images, "chair": chair, "scene_seed": H.SCENE_SEED})
        result["file"] = str(write_json(result, folder / f"hallucination_{method}_{split}_{images}.json", prov))
    return result
