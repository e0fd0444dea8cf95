"""``workbench hallucination`` as one call: POPE-style (and optionally CHAIR-style) object hallucination of a
preset VLM under an intervention, with 95% bootstrap intervals over images, written as one JSON file."""
from __future__ import annotations

from pathlib import Path

from ..core.models import LoadedModel


def hallucination_report(lm: LoadedModel, method: str = "none", split: str = "random", images: int = 40,
                         chair: bool = False, out: str | Path | None = "runs", progress: bool = True,
                         executor=None) -> dict:
    """POPE metrics of ``method`` on ``images`` held-out composites (and CHAIR metrics with ``chair``).

    Answers come from :func:`workbench.tasks.hallucination.run_pope` / ``run_chair`` and are cached under
    ``out/<model>/hallucination/`` (one ``answers-<config hash>.jsonl`` per configuration, resumable; no cache
    when ``out`` is None); the metrics and their intervals from :func:`workbench.core.intervals.cluster_ci`
    (bootstrap over images, the cluster of each image's questions).

    Args:
        lm: a VLM preset with held-out images (``digits-vlm``).
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
