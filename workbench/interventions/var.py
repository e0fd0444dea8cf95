"""Visual attention redistribution (VAR; Kang et al. 2025, "See what you are told: visual attention
sink in large multimodal models", seilk/VisAttnSink).

For every layer l with 2 <= l < n_layers - 1 and every head h and query i:

* S = the sink tokens at layer l among the keys (phi >= tau on the residual stream entering the
  layer, over the backbone's massive-activation dimensions; visual and text sinks alike), found by
  :class:`~workbench.analyzers.vision.SinkDetector` as the model runs;
* I = the image tokens, I' = I minus S (the non-sink image tokens);
* the head is image-centric for this query if A_I >= ``summ`` (0.2) and A_I' / A_I >= ``rho``
  (0.5 for hallucination tasks);
* then a fraction p (0.6) of the attention on S moves to I' in proportion to the attention there:
  A'[i,k] = (1-p) A[i,k] for k in S, A'[i,j] = A[i,j] + p A_S A[i,j] / A_I' for j in I'.

Closed form on the kernel output (never the N x N map). With out = sum_j A_j v_j and
o_I' = sum_{j in I'} softmax_{I'}(s)_j v_j, the output of a second kernel call restricted to the
keys I' (with its own log-sum-exp lse_I', so A_I' = exp(lse_I' - lse)):

    out' = out - p * sum_{k in S} A_k v_k + p * A_S * o_I'

The sink columns A_k (few) come from q, k and the kernel's lse. ``tests/test_vision.py`` checks
this against an eager reference that edits the materialised attention map.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..core.attention import AttentionCall, attention_hooks
from ..core.errors import WorkbenchError
from ..analyzers.vision import RHO, SUMM, TAU, SinkDetector, image_centric
from .base import LayerIntervention
from .registry import InterventionSpec, Param

P = 0.6


def var_output(call: AttentionCall, sinks: torch.Tensor, image: torch.Tensor, p: float = P, summ: float = SUMM,
               rho: float = RHO, heads: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Redistributed output of one attention call (closed form, see module docstring).

    Args:
        call: the attention call (B, Hq, Nq, D).
        sinks: (Nk,) bool, sink tokens among the keys.
        image: (Nk,) bool, image tokens among the keys.
        heads: query heads allowed to change (default all).
    Returns:
        (output (B, Hq, Nq, D), selected (B, Hq, Nq) bool: the image-centric (head, query) pairs changed).
    """
    out = call.output
    nq = call.query.shape[2]
    sinks, image = sinks.to(call.device), image.to(call.device)
    s_idx = sinks.nonzero().reshape(-1)
    ip_idx = (image & ~sinks).nonzero().reshape(-1)
    none = torch.zeros(out.shape[:3], dtype=torch.bool, device=call.device)
    if s_idx.numel() == 0 or ip_idx.numel() == 0:
        return out, none
    a_s_cols = call.probs(0, nq, keys=s_idx)  # (B, Hq, Nq, |S|)
    a_s = a_s_cols.sum(-1)
    a_img_sink = a_s_cols[..., image[s_idx]].sum(-1)
    vis = call.visible(0, nq, keys=ip_idx)  # (B|1, 1, Nq, |I'|)
    any_vis = vis.any(-1)  # (B|1, 1, Nq)
    o_ip, lse_ip = call.restricted(keys=ip_idx)  # second kernel call over I' (finite biases kept, as in the layer)
    a_ip = torch.where(any_vis, torch.exp(lse_ip - call.lse), 0.0)
    a_img = a_ip + a_img_sink
    selected = any_vis & image_centric(a_img, a_ip, summ, rho)
    if heads is not None:
        allowed = torch.zeros(out.shape[1], dtype=torch.bool, device=call.device)
        allowed[heads] = True
        selected = selected & allowed[None, :, None]
    kv = torch.arange(out.shape[1], device=call.device) // call.n_rep
    v_s = call.value[:, kv][:, :, s_idx].float()  # (B, Hq, |S|, D)
    sink_sum = torch.matmul(a_s_cols, v_s)  # (B, Hq, Nq, D)
    new = out.float() - p * sink_sum + p * a_s[..., None] * o_ip.float()
    return torch.where(selected[..., None], new.to(out.dtype), out), selected


def var_eager(call: AttentionCall, sinks: torch.Tensor, image: torch.Tensor, p: float = P, summ: float = SUMM,
              rho: float = RHO) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager VAR, the oracle of :func:`var_output`: materialise A = softmax(scores) (B, Hq, Nq, Nk),
    edit the map row by row as Kang et al. do, multiply by V. For tests and checks only (O(N^2) memory).

    Returns (output (B, Hq, Nq, D) float32, selected (B, Hq, Nq) bool).
    """
    a2, sel = redistribute(torch.softmax(call.scores(), dim=-1), sinks, image, p, summ, rho)
    return torch.matmul(a2, call.value.repeat_interleave(call.n_rep, dim=1).float()), sel


def redistribute(rows: torch.Tensor, sinks: torch.Tensor, image: torch.Tensor, p: float = P, summ: float = SUMM,
                 rho: float = RHO) -> tuple[torch.Tensor, torch.Tensor]:
    """VAR on materialised attention rows, as Kang et al. edit the map (the eager form of :func:`var_output`).

    Args:
        rows: (..., Nq, Nk) attention probabilities.
        sinks, image: (Nk,) bool sink and image tokens.
    Returns:
        (rows', selected): (..., Nq, Nk) rows where the image-centric ones (A_I >= summ and A_I' >= rho A_I,
        A_I' > 0) have (1-p) A on the sinks and A + p A_S A / A_I' on the non-sink image keys, the others
        unchanged; (..., Nq) bool, the image-centric rows.
    """
    ip = image & ~sinks
    a_i, a_ip, a_s = rows[..., image].sum(-1), rows[..., ip].sum(-1), rows[..., sinks].sum(-1)
    sel = image_centric(a_i, a_ip, summ, rho) & (a_ip > 0)
    new = rows.clone()
    new[..., sinks] = rows[..., sinks] * (1 - p)
    new[..., ip] = rows[..., ip] + p * a_s[..., None] * rows[..., ip] / a_ip.clamp_min(1e-30)[..., None]
    return torch.where(sel[..., None], new, rows), sel


class VisualAttentionRedistribution(LayerIntervention):
    """VAR as an attention hook for one input (see module docstring).

    Args:
        lm: the loaded VLM.
        image_positions: (K,) positions of the image tokens in the prompt.
        dims: the backbone's sink (massive-activation) dimensions.
        p, summ, rho, tau: VAR's parameters (Kang et al.: p 0.6, summ 0.2, rho 0.5 for hallucination, tau 20).
        layers: layers allowed (default 2 .. n_layers - 2: never the first two, never the last).

    Attributes:
        n_selected: layer -> number of (head, query) pairs changed so far.
    """

    def __init__(self, lm, image_positions: torch.Tensor, dims: Iterable[int], p: float = P, summ: float = SUMM,
                 rho: float = RHO, tau: float = TAU, layers: Iterable[int] | None = None):
        n = lm.spec.n_layers
        self.layers = set(range(2, n - 1)) if layers is None else set(layers) - {n - 1}
        self.image = torch.as_tensor(image_positions, dtype=torch.long)
        self.p, self.summ, self.rho = p, summ, rho
        self.detector = SinkDetector(lm, list(dims), tau)
        self.n_selected: dict[int, int] = {}

    def on_attention(self, call: AttentionCall) -> torch.Tensor | None:
        if call.layer not in self.layers:
            return None
        if call.query.shape[0] != 1:
            raise WorkbenchError(f"VAR redistributes attention for one input at a time (its image positions and sinks), "
                                 f"got a batch of {call.query.shape[0]}: run the inputs one by one")
        nk = call.key.shape[2]
        sinks = self.detector.sinks[call.layer][0, :nk]
        image = torch.zeros(nk, dtype=torch.bool, device=call.device)
        idx = self.image.to(call.device)
        image[idx[idx < nk]] = True
        out, sel = var_output(call, sinks, image, self.p, self.summ, self.rho)
        self.n_selected[call.layer] = self.n_selected.get(call.layer, 0) + int(sel.sum())
        return out

    def _contexts(self) -> list:
        """Sink detection pre-hooks and the attention hook, active inside :meth:`applied`."""
        return [self.detector, attention_hooks(self)]


def _build(lm, heads, inp, p: float = P, summ: float = SUMM, rho: float = RHO, tau: float = TAU):
    from ..tasks.hallucination import _sink_dims
    from ..core.vlm import image_positions

    return VisualAttentionRedistribution(lm, image_positions(lm.model, inp.input_ids), _sink_dims(lm), p=p, summ=summ,
                                         rho=rho, tau=tau)


# VAR in the intervention registry (built per image+text input).
# (listed in workbench.interventions.registry.INTERVENTIONS)
INTERVENTION = InterventionSpec(
    "var", "VAR (Kang et al. 2025): move a share p of the sink attention of image-centric heads to image tokens",
    _build,
    (Param("p", "float", P, low=0.0, high=1.0, help="share of sink attention moved"),
     Param("summ", "float", SUMM, low=0.0, high=1.0, help="image attention a head needs"),
     Param("rho", "float", RHO, low=0.0, high=1.0, help="non-sink share of the image attention"),
     Param("tau", "float", TAU, low=0.0, help="sink threshold on phi")),
    scope="vlm-input")
