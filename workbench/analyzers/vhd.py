"""Vision-aware head divergence (VHD) and token-level VHD (T-VHD) of a vision-language model (He et al. 2025).

Definitions in :mod:`workbench.analyzers.vision` (docs/methods.md#vision-aware-heads-vhd-and-t-vhd); every
name here is also importable from there.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.errors import WorkbenchError
from ..core.models import LoadedModel
from ..core.tracer import Tracer
from ..core.vlm import VLMInput, require_vlm, text_only


def require_single(inp: VLMInput) -> None:
    """The vision analyses read one input at a time (its image span, its text-only pass).

    Raises:
        WorkbenchError: ``inp`` holds a batch of more than one prompt.
    """
    if inp.input_ids.shape[0] != 1:
        raise WorkbenchError(f"vision analyses take one input at a time, got a batch of {inp.input_ids.shape[0]}: "
                             "pass the inputs as a list of single prompts")


@torch.no_grad()
def head_outputs(lm: LoadedModel, inp: VLMInput, positions: torch.Tensor) -> torch.Tensor:
    """Head outputs z at ``positions`` of one input: (n_pos, n_layers, n_heads, head_dim) float32.

    Raises:
        WorkbenchError: ``inp`` is a batch (:func:`require_single`).
    """
    require_single(inp)
    tr = Tracer(lm, z=True).run(inp.input_ids, **inp.kwargs())
    return tr["z"][:, 0, positions].permute(1, 0, 2, 3)  # (layer, pos, head, d) -> (pos, layer, head, d)


@torch.no_grad()
def vhd_steps(lm: LoadedModel, inp: VLMInput, answer: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """VHD of every head at every generation step of one input.

    Args:
        inp: the prompt with its image (ends where generation starts).
        answer: (1, T) answer tokens teacher-forced in both passes (None: only step 0).
    Returns:
        (vhd (T', n_layers, n_heads), text_norm (T', n_layers, n_heads)) with T' = T (or 1): the
        distance ||z_image - z_text||_2 and the text-only output norm ||z_text||_2.
    """
    require_vlm(lm.model, lm.spec.name)
    require_single(inp)
    t = 0 if answer is None else answer.shape[1]
    full = inp if answer is None or t == 0 else inp.with_suffix(answer[:, :-1])
    txt = text_only(lm.model, full)
    n_img, n_txt = inp.input_ids.shape[1], inp.input_ids.shape[1] - (full.input_ids.shape[1] - txt.input_ids.shape[1])
    steps = max(1, t)
    pos_img = torch.arange(n_img - 1, n_img - 1 + steps)
    pos_txt = torch.arange(n_txt - 1, n_txt - 1 + steps)
    z_img = head_outputs(lm, full, pos_img)
    z_txt = head_outputs(lm, txt, pos_txt)
    return (z_img - z_txt).norm(dim=-1), z_txt.norm(dim=-1)


def vhd_table(lm: LoadedModel, inputs: Sequence[VLMInput], answers: Sequence[torch.Tensor | None] | None = None,
              progress: bool = True) -> pd.DataFrame:
    """VHD of every head at every step of every input.

    Returns:
        DataFrame (sample, step, token, layer, head, vhd, text_norm); ``token`` is the answer token
        predicted at that step (empty for step 0 without an answer).
    """
    rows = []
    answers = list(answers) if answers is not None else [None] * len(inputs)
    for s, (inp, ans) in enumerate(tqdm(list(zip(inputs, answers)), desc="VHD", disable=not progress)):
        v, n = vhd_steps(lm, inp, ans)
        T, L, H = v.shape
        toks = [lm.tokenizer.decode(ans[0, i]) for i in range(T)] if ans is not None and ans.shape[1] else [""] * T
        for t in range(T):
            for layer in range(L):
                for h in range(H):
                    rows.append((s, t, toks[t], layer, h, float(v[t, layer, h]), float(n[t, layer, h])))
    return pd.DataFrame(rows, columns=["sample", "step", "token", "layer", "head", "vhd", "text_norm"])


def head_vhd(df: pd.DataFrame, step: int | None = 0) -> pd.DataFrame:
    """Mean VHD per head (at ``step``, or over all steps when None): DataFrame (layer, head, vhd, rank)."""
    sub = df if step is None else df[df.step == step]
    out = sub.groupby(["layer", "head"], as_index=False)["vhd"].mean()
    out["rank"] = out["vhd"].rank(ascending=False, method="first").astype(int)
    return out.sort_values(["layer", "head"]).reset_index(drop=True)


def vision_aware_heads(per_head: pd.DataFrame, top: int | None = None) -> pd.DataFrame:
    """Vision-aware heads: heads whose mean VHD is above the median of their layer (He et al. 2025's
    per-layer median rule), sorted by VHD; ``top`` keeps the strongest ones."""
    med = per_head.groupby("layer")["vhd"].transform("median")
    out = per_head[per_head.vhd > med].sort_values("vhd", ascending=False)
    return out.head(top) if top else out


def t_vhd(df: pd.DataFrame) -> pd.DataFrame:
    """T-VHD per generation step: DataFrame (sample, step, token, t_vhd) with t_vhd = sum over heads of VHD."""
    return df.groupby(["sample", "step", "token"], as_index=False)["vhd"].sum().rename(columns={"vhd": "t_vhd"})
