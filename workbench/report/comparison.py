"""Before / after comparison of an intervention: generated text, next-token distribution, attention.

:func:`compare_intervention` runs the prompt twice (without and with the intervention): one
traced forward pass each (next-token logits at the last prompt position, the attention rows of one
chosen head over the last ``window`` prompt queries from the kernel's log-sum-exp, and that head's
output ``z``), and one greedy generation each. Figures come from :mod:`workbench.report.viz`.

**What "after" means for the compared head.** The tracer's rows are ``exp(scale q.k - lse)``, which
an intervention on the head itself never changes (it edits the head's output, not its q, k or the
kernel's log-sum-exp). So when the compared head is one of the intervened heads, the "after" map is
the attention the head actually used, from the same closed forms as the intervention
(:func:`used_attention`):

* ACT calibration (Yu et al. 2024): the calibrated rows ``beta A`` on the sink set S and
  ``A (1 - beta A_S) / (1 - A_S)`` elsewhere (:func:`workbench.interventions.act.act_reference`
  with the sink set the intervention detected in this pass);
* uniform masking (Wu et al. 2024): ``1 / |V_i|`` on every visible key;
* VAR (Kang et al. 2025): ``(1 - p) A`` on the sinks, ``A + p A_S A / A_I'`` on the non-sink image
  keys of the image-centric rows (:func:`var_rows`);
* zero / mean ablation and output scaling (VHR) replace or scale the output, not the pattern: the
  map is unchanged and :attr:`InterventionComparison.pattern_note` says so; what changed is in
  :meth:`InterventionComparison.changes` (head output norm, logits, next token).

For a head downstream of the intervened ones the traced rows of the intervened run are the truth
(their q and k changed). ``tests/test_dashboard.py`` checks the ACT and uniform maps against
eager attention materialised from the model's own q and k (1e-5), and that the "after" rows times
V reproduce the head's intervened output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go
import torch

from ..interventions.base import HeadIntervention
from ..core.models import LoadedModel
from ..core.tracer import Tracer


@dataclass
class InterventionComparison:
    """Result of :func:`compare_intervention`.

    Attributes:
        text_before, text_after: greedy continuations (decoded, prompt excluded).
        probs_before, probs_after: (vocab,) float32 next-token probabilities after the prompt.
        logits_before, logits_after: (vocab,) float32 next-token logits.
        pattern_before, pattern_after: (window, N) attention rows of head (``layer``, ``head``) for
            queries ``query_start ..`` N-1 (after = the attention the head used, see module docstring),
            or None when no head was chosen.
        z_norm_before, z_norm_after: (window,) L2 norm of that head's output z per query row.
        pattern_note: why the map is or is not expected to change ("" when downstream).
        intervened: whether the compared head is one of the intervened heads.
        tokens: readable token strings of the prompt; ids: its token ids.
        kl: KL(before || after) of the next-token distributions, in nats.
    """

    text_before: str
    text_after: str
    probs_before: torch.Tensor
    probs_after: torch.Tensor
    pattern_before: torch.Tensor | None
    pattern_after: torch.Tensor | None
    layer: int | None
    head: int | None
    query_start: int
    tokens: list[str]
    kl: float
    logits_before: torch.Tensor | None = None
    logits_after: torch.Tensor | None = None
    z_norm_before: torch.Tensor | None = None
    z_norm_after: torch.Tensor | None = None
    pattern_note: str = ""
    intervened: bool = False
    ids: list[int] = field(default_factory=list)

    def max_pattern_change(self) -> float:
        """max |after - before| over the compared head's map (0.0 without a head)."""
        if self.pattern_before is None:
            return 0.0
        return float((self.pattern_after - self.pattern_before).abs().max())

    def changes(self, tokenizer=None) -> pd.DataFrame:
        """What changed, one row per quantity with ``before``, ``after`` and ``unit`` columns:
        the next token (argmax), its probability, KL, max |Δ logit|, the compared head's mean output norm
        and max |Δ attention|. ``tokenizer`` makes the next tokens readable (:func:`viz.display_tokens`)."""
        from .viz import display_tokens, format_head

        t0, t1 = int(self.probs_before.argmax()), int(self.probs_after.argmax())
        names = display_tokens(tokenizer, [t0, t1]) if tokenizer is not None else [str(t0), str(t1)]
        rows = [("next token (argmax)", f"{names[0]} ({t0})", f"{names[1]} ({t1})", "token (id)"),
                (f"p(next = {names[0]})", float(self.probs_before[t0]), float(self.probs_after[t0]), "probability"),
                ("KL(before || after), next token", 0.0, self.kl, "nats")]
        if self.logits_before is not None:
            rows.append(("max |Δ logit|, next token", 0.0,
                         float((self.logits_after - self.logits_before).abs().max()), "logit"))
        if self.z_norm_before is not None:
            h = format_head(self.layer, self.head)
            rows.append((f"head {h} output norm ||z||, mean over the window", float(self.z_norm_before.mean()),
                         float(self.z_norm_after.mean()), "L2 norm"))
            rows.append((f"head {h} max |Δ attention|", 0.0, self.max_pattern_change(), "probability"))
        return pd.DataFrame(rows, columns=["quantity", "before", "after", "unit"])

    def figures(self, labels, k: int = 10) -> list[tuple[str, go.Figure]]:
        """(title, figure) pairs: next-token bars and, if a head was traced, the maps side by side.

        ``labels``: a tokenizer, a callable token id -> string, or a list indexed by id.
        """
        from .viz import format_head, intervention_maps, next_token_chart

        figs = [("next token", next_token_chart(self.probs_before, self.probs_after, labels, k))]
        if self.pattern_before is not None:
            h = format_head(self.layer, self.head)
            figs.append((f"head {h}",
                         intervention_maps(self.pattern_before, self.pattern_after, self.tokens, self.query_start,
                                           title=f"head {h} attention: before / after", ids=self.ids)))
        return figs


def uniform_rows(call_rows: torch.Tensor, q_start: int, n_keys: int) -> torch.Tensor:
    """Uniform attention over visible (causal) keys for queries ``q_start ..``: (Nq, n_keys), rows sum to 1."""
    q = torch.arange(q_start, q_start + call_rows.shape[0])[:, None]
    vis = (torch.arange(n_keys)[None, :] <= q).float()
    return vis / vis.sum(-1, keepdim=True)


def var_rows(rows: torch.Tensor, sinks: torch.Tensor, image: torch.Tensor, p: float, summ: float,
             rho: float) -> torch.Tensor:
    """VAR's redistributed attention rows (Kang et al. 2025; :mod:`workbench.interventions.var`).

    Args:
        rows: (..., Nq, Nk) attention probabilities.
        sinks, image: (Nk,) bool sink and image tokens.
    Returns:
        (..., Nq, Nk): image-centric rows (A_I >= summ and A_I' >= rho A_I) with (1-p) A on sinks and
        A + p A_S A / A_I' on the non-sink image keys; other rows unchanged.
    """
    from ..interventions.var import redistribute

    return redistribute(rows, sinks, image, p, summ, rho)[0]


def used_attention(intervention, layer: int, head: int, rows: torch.Tensor, q_start: int) -> tuple[torch.Tensor, str]:
    """The attention rows head (``layer``, ``head``) used under ``intervention``, and a note.

    Args:
        intervention: the intervention, right after the intervened forward pass (ACT's detected sink
            sets are read from it).
        rows: (Nq, Nk) the head's rows ``exp(scale q.k - lse)`` traced in the intervened pass, for
            prompt queries ``q_start ..``.
    Returns:
        ((Nq, Nk) rows, note). The note is "" when the rows changed by construction, else it says why
        the pattern is the traced one (head not intervened, output-only intervention, decode phase).
    """
    from ..interventions.ablation import HeadAblation
    from ..interventions.act import ACTCalibration, act_reference
    from ..interventions.var import VisualAttentionRedistribution
    from .viz import format_head

    h = format_head(layer, head)
    if isinstance(intervention, VisualAttentionRedistribution):
        if layer not in intervention.layers:
            return rows, f"head {h} is outside VAR's layers: its pattern changes only through earlier layers"
        nk = rows.shape[-1]
        sinks = intervention.detector.sinks[layer][0, :nk].cpu()
        image = torch.zeros(nk, dtype=torch.bool)
        image[intervention.image[intervention.image < nk]] = True
        return var_rows(rows, sinks, image, intervention.p, intervention.summ, intervention.rho), ""
    heads = getattr(intervention, "heads", None)
    if heads is None or (layer, head) not in set(heads):
        return rows, ""
    if getattr(intervention, "phase", "all") == "decode":
        return rows, (f"phase 'decode': the intervention acts on generated tokens only, so head {h}'s "
                      "attention over the prompt is unchanged")
    if isinstance(intervention, ACTCalibration):
        mask = intervention.detected.get((layer, head))
        if (layer, head) in intervention.fixed:
            idx = intervention.fixed[(layer, head)]
            mask = torch.zeros(1, rows.shape[-1], dtype=torch.bool)
            mask[:, idx[idx < rows.shape[-1]]] = True
        if mask is None or not bool(mask.any()):
            return rows, f"ACT found no hidden sink for head {h} in this prompt: its attention is unchanged"
        m = mask[:1, : rows.shape[-1]].cpu()
        return act_reference(rows[None, None], m[:, None], intervention.beta)[0, 0], ""
    if isinstance(intervention, HeadAblation):
        if intervention.kind == "uniform":
            return uniform_rows(rows, q_start, rows.shape[-1]), ""
        return rows, (f"{intervention.kind} ablation replaces head {h}'s output z, not its attention: the "
                      "pattern is unchanged; see the output norm, logit and next-token changes")
    return rows, (f"{type(intervention).__name__} edits head {h}'s output, not its attention: the pattern is "
                  "unchanged; see the output norm, logit and next-token changes")


@torch.no_grad()
def _forward(lm: LoadedModel, ids: torch.Tensor, layer: int | None, head: int | None, window: int):
    """(logits (vocab,), rows (window, N) or None, z norms (window,) or None) of one forward pass."""
    n = ids.shape[1]
    q0 = max(0, n - window)
    if layer is None:
        logits = lm.model(input_ids=ids, use_cache=False).logits
        return logits[0, -1].float(), None, None
    tracer = Tracer(lm, layers=[layer], heads=[head], pattern_window=(q0, n), z=True)
    tracer.check_budget(1, n)
    with tracer:
        logits = lm.model(input_ids=ids, use_cache=False).logits
    tr = tracer.trace(ids)
    return logits[0, -1].float(), tr["pattern"][0, 0, 0], tr["z"][0, 0, q0:, 0].norm(dim=-1)


@torch.no_grad()
def _generate(lm: LoadedModel, ids: torch.Tensor, max_new_tokens: int) -> str:
    if max_new_tokens <= 0:
        return ""
    tok = lm.tokenizer
    pad = getattr(tok, "pad_token_id", None)
    if pad is None:
        pad = getattr(tok, "eos_token_id", None)
    out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=pad)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def compare_intervention(lm: LoadedModel, intervention: HeadIntervention, ids: torch.Tensor,
                         max_new_tokens: int = 20, layer: int | None = None, head: int | None = None,
                         window: int = 64, progress=None) -> InterventionComparison:
    """Run ``ids`` (1, N) without and with ``intervention``; see :class:`InterventionComparison`.

    Args:
        layer, head: the head whose attention rows are compared (None: no maps).
        window: number of last prompt queries whose attention rows are kept.
        progress: optional callable(fraction in [0, 1], message) called between the four steps.

    Raises:
        HeadIndexError: the head is outside the model.
        ContextTooLongError: the prompt exceeds the context window.
    """
    from .viz import display_tokens

    step = progress or (lambda f, m: None)
    if ids.dim() == 1:
        ids = ids[None]
    ids = ids[:1]
    lm.spec.check_length(ids.shape[1])
    if (layer is None) != (head is None):
        raise ValueError("give both layer and head, or neither")
    if layer is not None:
        lm.spec.check_head(layer, head)
    intervention.validate(lm.spec)
    q0 = max(0, ids.shape[1] - window)
    step(0.0, "forward pass without the intervention")
    l0, a0, z0 = _forward(lm, ids, layer, head, window)
    step(0.25, "generating without the intervention")
    t0 = _generate(lm, ids, max_new_tokens)
    with intervention.applied():
        step(0.5, "forward pass with the intervention")
        l1, a1, z1 = _forward(lm, ids, layer, head, window)
        note, hit = "", False
        if a1 is not None:
            a1, note = used_attention(intervention, layer, head, a1, q0)
            hit = (layer, head) in set(getattr(intervention, "heads", []) or [])
        step(0.75, "generating with the intervention")
        t1 = _generate(lm, ids, max_new_tokens)
    step(1.0, "done")
    p0, p1 = torch.softmax(l0, -1), torch.softmax(l1, -1)
    kl = float((p0 * (p0.clamp_min(1e-30).log() - p1.clamp_min(1e-30).log())).sum())
    id_list = ids[0].tolist()
    tokens = display_tokens(lm.tokenizer, id_list)
    return InterventionComparison(t0, t1, p0, p1, a0, a1, layer, head, q0, tokens, kl, l0, l1, z0, z1, note, hit,
                                  id_list)
