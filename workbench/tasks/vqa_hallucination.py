"""Object hallucination of ``effnet-smollm2-vqa`` on easy-VQA scenes: POPE and CHAIR with none / VHR / VAR.

* **POPE** (Li et al. 2023): "Is there a <object> in the image?" on held-out test scenes
  (:func:`workbench.demo.easyvqa.pope_items`: objects are shape-colour pairs and shapes; one positive and
  one negative per scene and split; random, popular and adversarial negatives, the last two from the
  train scenes' statistics). Prediction: logit(`` yes``) > logit(`` no``) at the first answer token.
* **CHAIR** (Rohrbach et al. 2018): the greedy answer to "Describe the image." (at most
  ``max_new_tokens`` tokens, stopping at the newline), objects = (colour, shape) pairs
  (:func:`workbench.demo.easyvqa.mentioned_objects`); CHAIR_S = share of captions with a hallucinated
  object, CHAIR_I = share of mentioned objects not in the scene, length = objects mentioned per
  caption, recall = share of the scene's objects mentioned. A shape mentioned without a colour
  counts as correct when the scene has that shape.
* methods: ``none``; ``vhr`` (He et al. 2025, :mod:`workbench.interventions.vhr`; parameters
  ``alpha``, ``layers``); ``var`` (Kang et al. 2025, :mod:`workbench.interventions.var`; ``p``,
  ``rho``, ``summ``); ``no-visual-sinks``: attention to the visual sink tokens removed (their
  probability mass renormalised over the other keys; closed form below) to test Kang et al.'s
  claim that visual sinks carry no answer-relevant information.

Removing keys S from attention, closed form on the kernel output: with A_k = exp(s_k - lse) for
k in S and A_S their sum, out' = (out - sum_{k in S} A_k v_k) / (1 - A_S).

Statistics (:mod:`workbench.core.intervals`): 95% percentile bootstrap intervals resampling scenes
(``cluster_ci``, ``paired_cluster_ci``); paired tests between methods on the same questions:
McNemar's exact test (``mcnemar``) for POPE correctness and for CHAIR_S.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..demo import easyvqa as V
from ..core.attention import AttentionCall, attention_hooks
from ..demo.effnet_vlm import make_input
from .hallucination import pope_metrics
from ..core.models import LoadedModel
from ..core.vlm import image_positions

METHODS = ("none", "vhr", "var", "no-visual-sinks")
#: the test scenes of the hallucination benchmarks: ``scenes("test", N_CALIBRATION + n, SCENE_SEED)``, the first
#: N_CALIBRATION for choosing hyper-parameters, the rest held out (``scripts/effnet_vlm_report.py``)
SCENE_SEED = 2000
N_CALIBRATION = 60
POPE_SEED = 2  #: seed of the POPE questions on the held-out scenes: ``pope_items(heldout, seed=POPE_SEED)``


def benchmark_scenes(n_heldout: int, n_calibration: int = N_CALIBRATION) -> tuple[list[V.Scene], list[V.Scene]]:
    """(calibration, held-out) test scenes: the first ``n_calibration`` and the next ``n_heldout`` of
    ``scenes("test", n_calibration + n_heldout, SCENE_SEED)``. The generator is prefix-stable, so a smaller
    ``n_heldout`` gives a prefix of the reference report's 250 held-out scenes."""
    sc = V.scenes("test", n_calibration + n_heldout, SCENE_SEED)
    return sc[:n_calibration], sc[n_calibration:]


def heldout_scenes(n: int) -> list[V.Scene]:
    """The first ``n`` held-out test scenes (:func:`benchmark_scenes`)."""
    return benchmark_scenes(n)[1]


class VisualSinkRemoval:
    """Attention hook removing the visual sink tokens (sink tokens inside the image span, per layer,
    from a :class:`~workbench.analyzers.vision.SinkDetector`) from every query's keys, in ``layers``."""

    def __init__(self, lm: LoadedModel, image_pos: torch.Tensor, dims: Iterable[int], tau: float = 20.0,
                 layers: Iterable[int] | None = None):
        from ..analyzers.vision import SinkDetector

        self.detector = SinkDetector(lm, list(dims), tau)
        self.image = torch.as_tensor(image_pos, dtype=torch.long)
        self.layers = set(range(lm.spec.n_layers)) if layers is None else set(layers)
        self.n_removed: dict[int, int] = {}

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None:
        if call.layer not in self.layers:
            return None
        nk = call.key.shape[2]
        img = torch.zeros(nk, dtype=torch.bool)
        img[self.image[self.image < nk]] = True
        s_idx = (self.detector.sinks[call.layer][0, :nk] & img).nonzero().reshape(-1)
        self.n_removed[call.layer] = int(s_idx.numel())
        if s_idx.numel() == 0:
            return None
        a = call.probs(0, call.query.shape[2], keys=s_idx)  # (B, Hq, Nq, |S|)
        kv = torch.arange(call.query.shape[1]) // call.n_rep
        v = call.value[:, kv][:, :, s_idx].float()
        out = (call.output.float() - torch.matmul(a, v)) / (1 - a.sum(-1, keepdim=True)).clamp_min(1e-6)
        return out.to(call.output.dtype)

    @contextlib.contextmanager
    def applied(self):
        with self.detector, attention_hooks(self):
            yield self


def sink_dims(lm: LoadedModel) -> list[int]:
    """The backbone's sink dimensions (cached in ``lm.extras``)."""
    from .hallucination import _sink_dims

    return _sink_dims(lm)


def method_context(lm: LoadedModel, inp, method: str, params: dict | None = None):
    """Context manager applying ``method`` (with ``params``) to one input."""
    params = dict(params or {})
    if method == "none":
        return contextlib.nullcontext()
    if method == "vhr":
        from ..interventions.vhr import VisionAwareHeadReinforcement

        return VisionAwareHeadReinforcement.prepare(lm, inp, layers=params.get("layers"),
                                                    alpha=params.get("alpha", 2.0)).applied()
    if method == "var":
        from ..interventions.var import VisualAttentionRedistribution

        return VisualAttentionRedistribution(lm, image_positions(lm.model, inp.input_ids), sink_dims(lm),
                                             p=params.get("p", 0.6), summ=params.get("summ", 0.2),
                                             rho=params.get("rho", 0.5), layers=params.get("layers")).applied()
    if method == "no-visual-sinks":
        return VisualSinkRemoval(lm, image_positions(lm.model, inp.input_ids), sink_dims(lm),
                                 layers=params.get("layers")).applied()
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")


@torch.no_grad()
def yes_margin(lm: LoadedModel, inp, method: str = "none", params: dict | None = None) -> float:
    """logit(`` yes``) - logit(`` no``) at the first answer token under ``method``."""
    from .vqa_eval import answer_token_ids

    ids = answer_token_ids(lm.tokenizer)
    with method_context(lm, inp, method, params):
        logits = lm.model(input_ids=inp.input_ids, use_cache=False, logits_to_keep=1, **inp.kwargs()).logits[0, -1].float()
    return float(logits[ids[V.YES]] - logits[ids[V.NO]])


def run_pope(lm: LoadedModel, scenes: Sequence[V.Scene], items: pd.DataFrame, method: str = "none",
             params: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """Answer the POPE ``items`` under ``method`` (each distinct (scene, object) once).
    Returns ``items`` with columns margin, pred, correct, method."""
    px = {}
    margins = {}
    todo = sorted({(int(r.image), r.object) for r in items.itertuples()})
    for img, obj in tqdm(todo, desc=f"POPE {method}", disable=not progress):
        if img not in px:
            px = {img: scenes[img].pixels()}
        inp = make_input(lm, V.POPE_QUESTION.format(obj=obj), px[img])
        margins[(img, obj)] = yes_margin(lm, inp, method, params)
    out = items.copy()
    out["margin"] = [margins[(int(r.image), r.object)] for r in out.itertuples()]
    out["pred"] = out["margin"] > 0
    out["correct"] = out["pred"] == out["label"]
    out["method"] = method
    return out.reset_index(drop=True)


@torch.no_grad()
def caption(lm: LoadedModel, scene: V.Scene, method: str = "none", params: dict | None = None,
            max_new_tokens: int = 24) -> str:
    """Greedy answer to "Describe the image." under ``method`` (up to the first newline)."""
    inp = make_input(lm, V.CAPTION_QUESTION, scene.pixels())
    with method_context(lm, inp, method, params):
        out = lm.model.generate(input_ids=inp.input_ids, attention_mask=torch.ones_like(inp.input_ids),
                                max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id, **inp.kwargs())
    return lm.tokenizer.decode(out[0, inp.input_ids.shape[1]:]).split("\n")[0].strip()


def chair_row(scene: V.Scene, text: str) -> dict:
    """Mentioned, hallucinated and covered objects of one caption (see module docstring)."""
    truth = list(dict.fromkeys(scene.objects))
    shapes = {s for _, s in truth}
    m = V.mentioned_objects(text)
    hall = [o for o in m if (o not in truth if o[0] is not None else o[1] not in shapes)]
    covered = [o for o in truth if o in m]
    return {"truth": truth, "mentioned": m, "hallucinated": hall, "covered": covered}


def run_chair(lm: LoadedModel, scenes: Sequence[V.Scene], method: str = "none", params: dict | None = None,
              max_new_tokens: int = 24, progress: bool = True) -> pd.DataFrame:
    """Captions of every scene under ``method``: DataFrame (image, method, caption, truth, mentioned, hallucinated, covered)."""
    rows = []
    for i, sc in enumerate(tqdm(scenes, desc=f"CHAIR {method}", disable=not progress)):
        text = caption(lm, sc, method, params, max_new_tokens)
        rows.append({"image": i, "method": method, "caption": text, **chair_row(sc, text)})
    return pd.DataFrame(rows)


def chair_metrics(df: pd.DataFrame) -> dict:
    """CHAIR_S, CHAIR_I, length (objects per caption), recall."""
    n_m = int(df["mentioned"].map(len).sum())
    return {"chair_s": float((df["hallucinated"].map(len) > 0).mean()),
            "chair_i": float(df["hallucinated"].map(len).sum() / n_m) if n_m else 0.0,
            "length": float(df["mentioned"].map(len).mean()),
            "recall": float(df["covered"].map(len).sum() / df["truth"].map(len).sum()), "n": int(len(df))}


__all__ = ["METHODS", "N_CALIBRATION", "POPE_SEED", "SCENE_SEED", "VisualSinkRemoval", "heldout_scenes", "benchmark_scenes", "run_pope", "run_chair", "chair_metrics", "pope_metrics",
           "yes_margin", "caption", "method_context"]
