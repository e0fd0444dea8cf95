"""Before / after comparison of an intervention: generated text, next-token distribution, attention.

:func:`compare_intervention` runs the prompt twice (without and with the intervention): one
traced forward pass each (next-token distribution at the last prompt position plus the attention
rows of one chosen head over the last ``window`` prompt queries, from the kernel's log-sum-exp),
and one greedy generation each. Figures come from :mod:`workbench.viz`.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from .interventions.base import HeadIntervention
from .models import LoadedModel
from .tracer import Tracer


@dataclass
class InterventionComparison:
    """Result of :func:`compare_intervention`.

    Attributes:
        text_before, text_after: greedy continuations (decoded, prompt excluded).
        probs_before, probs_after: (vocab,) float32 next-token probabilities after the prompt.
        pattern_before, pattern_after: (window, N) attention rows of head (``layer``, ``head``) for
            queries ``query_start ..`` N-1, or None when no head was chosen.
        tokens: token strings of the prompt.
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

    def figures(self, labels, k: int = 10) -> list[tuple[str, go.Figure]]:
        """(title, figure) pairs: next-token bars and, if a head was traced, the two maps side by side.

        ``labels``: callable token id -> string (e.g. ``tokenizer.convert_ids_to_tokens``) or a list.
        """
        from .viz import intervention_maps, next_token_chart

        figs = [("next token", next_token_chart(self.probs_before, self.probs_after, labels, k))]
        if self.pattern_before is not None:
            figs.append((f"layer {self.layer} head {self.head}",
                         intervention_maps(self.pattern_before, self.pattern_after, self.tokens, self.query_start,
                                           title=f"layer {self.layer} head {self.head}: before / after")))
        return figs


@torch.no_grad()
def _forward(lm: LoadedModel, ids: torch.Tensor, layer: int | None, head: int | None, window: int):
    n = ids.shape[1]
    q0 = max(0, n - window)
    if layer is None:
        logits = lm.model(input_ids=ids, use_cache=False).logits
        return torch.softmax(logits[0, -1].float(), -1), None
    tracer = Tracer(lm, layers=[layer], heads=[head], pattern_window=(q0, n))
    tracer.check_budget(1, n)
    with tracer:
        logits = lm.model(input_ids=ids, use_cache=False).logits
    tr = tracer.trace(ids)
    return torch.softmax(logits[0, -1].float(), -1), tr["pattern"][0, 0, 0]


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
                         window: int = 64) -> InterventionComparison:
    """Run ``ids`` (1, N) without and with ``intervention``; see :class:`InterventionComparison`.

    Args:
        layer, head: the head whose attention rows are compared (None: no maps).
        window: number of last prompt queries whose attention rows are kept.

    Raises:
        HeadIndexError: the head is outside the model.
        ContextTooLongError: the prompt exceeds the context window.
    """
    if ids.dim() == 1:
        ids = ids[None]
    ids = ids[:1]
    lm.spec.check_length(ids.shape[1])
    if (layer is None) != (head is None):
        raise ValueError("give both layer and head, or neither")
    if layer is not None:
        lm.spec.check_head(layer, head)
    intervention.validate(lm.spec)
    p0, a0 = _forward(lm, ids, layer, head, window)
    t0 = _generate(lm, ids, max_new_tokens)
    with intervention.applied():
        p1, a1 = _forward(lm, ids, layer, head, window)
        t1 = _generate(lm, ids, max_new_tokens)
    kl = float((p0 * (p0.clamp_min(1e-30).log() - p1.clamp_min(1e-30).log())).sum())
    convert = getattr(lm.tokenizer, "convert_ids_to_tokens", None)
    tokens = convert(ids[0].tolist()) if convert else [str(i) for i in ids[0].tolist()]
    return InterventionComparison(t0, t1, p0, p1, a0, a1, layer, head, max(0, ids.shape[1] - window), tokens, kl)
