"""Massive activations in the residual stream (Sun et al. 2024, "Massive activations in large language models").

A *massive activation* is a residual-stream entry ``x[l, i, d]`` (layer l, position i, dimension d)
whose magnitude is above an absolute threshold (100) **and** about ``ratio`` (1000) times the median
magnitude of that hidden state (the median of ``|x[l, :, :]|`` over all positions and dimensions of
one sequence). They sit on a few fixed dimensions, on the start token and on weak tokens such as
the first "." or newline, and appear abruptly in an early-middle layer; attention sinks form on the
tokens that carry them.

We read the residual stream *entering* each decoder layer (TransformerLens ``blocks.{l}.hook_resid_pre``)
with forward pre-hooks on the decoder layers, plus the output of the last layer (reported as
layer ``n_layers``, before the final norm). Nothing but the found entries is kept.

**Massive activations vs outlier features.** The same magnitude criterion also catches *outlier feature
dimensions* (Dettmers et al. 2022, "LLM.int8()": a few residual dimensions that are large on most tokens).
Sun et al.'s massive activations sit on a handful of tokens per sequence; an outlier feature is large
everywhere. Our rule, per (layer, dim): the *token share* is the fraction of all tokens seen (every
sample and position) whose entry on that dim at that layer passes the criterion. If the share is at
least :data:`OUTLIER_SHARE` (6%, Dettmers et al.'s "at least 6% of the sequence positions") every entry of
that (layer, dim) is an ``outlier_feature``; otherwise its entries are ``massive``. The ``kind`` column
says which; :func:`massive_dims`, :func:`onset_layer`, :func:`layer_summary`, :func:`token_summary` and
:func:`massive_means` use the massive entries only, :func:`outlier_features` lists the others. (A start
token of a 512-token window is 0.2% of its tokens: far below the 6% line.)

The intervention test of Sun et al. (their Table 3) sets the massive entries, at the layer where they
first appear, to zero or to their mean over many sequences: :class:`MassiveActivationEdit`.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.hooks import decoder_layers, residual_pre_hooks
from ..core.models import LoadedModel
from .massive_tables import (OUTLIER_SHARE, classify, layer_summary, massive_dims, massive_means, onset_layer,  # noqa: F401
                             outlier_features, token_summary)
from .massive_edit import INTERVENTION, MassiveActivationEdit, intervention_perplexity  # noqa: F401

COLUMNS = ["sample", "layer", "pos", "dim", "token", "value", "ratio_to_median", "kind"]


def find_massive(hidden: torch.Tensor, threshold: float = 100.0, ratio: float = 1000.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Massive entries of a batch of hidden states.

    Args:
        hidden: (B, N, d_model) residual stream of one layer.
        threshold: absolute magnitude bound (Sun et al.: 100).
        ratio: bound on ``|x| / median(|x|)``, the median taken per sequence over all (pos, dim).
    Returns:
        (index (K, 3) int64 rows of (batch, pos, dim), value (K,) float32 signed values,
        ratio_to_median (K,) float32).
    """
    a = hidden.detach().float().abs()
    med = a.flatten(1).median(dim=1).values.clamp_min(1e-12)  # (B,)
    rel = a / med[:, None, None]
    hit = (a > threshold) & (rel > ratio)
    idx = hit.nonzero()
    return idx, hidden.detach().float()[hit], rel[hit]


class _Recorder:
    """Forward (pre-)hooks on every decoder layer that collect massive entries of each call (of its first
    ``keep`` batch rows when set)."""

    def __init__(self, lm: LoadedModel, threshold: float, ratio: float, include_final: bool):
        self.model, self.layers = lm.model, decoder_layers(lm.model)
        self.threshold, self.ratio, self.include_final = threshold, ratio, include_final
        self.found: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.tokens = 0  # tokens (batch x positions) seen by the first layer: the denominator of token shares
        self.keep: int | None = None
        self._handles: list = []

    def _record(self, layer: int, x: torch.Tensor) -> None:
        if self.keep is not None:
            x = x[:self.keep]
        if layer == 0:
            self.tokens += x.shape[0] * x.shape[1]
        idx, val, rel = find_massive(x, self.threshold, self.ratio)
        self.found.append((layer, idx, val, rel))

    def __enter__(self) -> "_Recorder":
        self._handles = residual_pre_hooks(self.model, self._record)
        if self.include_final:
            n = len(self.layers)

            def post(module, args, output):
                self._record(n, output[0] if isinstance(output, tuple) else output)
            self._handles.append(self.layers[-1].register_forward_hook(post))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class MassiveCollector:
    """Massive activations as a window consumer of :func:`workbench.core.passes.run_windows`.

    It reads no tracer statistic (``needs = ()``): its own residual-stream hooks (:class:`_Recorder`) ride
    along in the pass's forward and look at windows ``0 .. rows-1`` only (all windows when ``rows`` is
    None), so another analyzer's pass over more windows feeds it without a second forward.
    :meth:`frame` returns what :func:`massive_activations` returns for those windows.
    """

    needs: tuple[str, ...] = ()

    def __init__(self, lm: LoadedModel, threshold: float = 100.0, ratio: float = 1000.0, include_final: bool = True,
                 outlier_share: float = OUTLIER_SHARE, rows: int | None = None):
        self.lm, self.threshold, self.ratio, self.outlier_share, self.limit = lm, threshold, ratio, outlier_share, rows
        self.rec = _Recorder(lm, threshold, ratio, include_final)
        self.entries: list[dict] = []
        self.n_samples = 0

    def _take(self, rows: range) -> int:
        return len(rows) if self.limit is None else max(0, min(rows.stop, self.limit) - rows.start)

    def hooks(self, ids: torch.Tensor, rows: range):
        self.rec.found, self.rec.keep = [], self._take(rows)
        return self.rec if self.rec.keep else None

    def consume(self, trace, ids: torch.Tensor, rows: range) -> None:
        if self._take(rows):
            self.add(ids[:self._take(rows)], self._take(rows))

    def add(self, ids: torch.Tensor | None, nb: int) -> None:
        """Turn the entries the recorder found in the last forward pass into rows; ``nb`` batch rows were seen."""
        for layer, idx, val, rel in self.rec.found:
            for (b, p, d), v, r in zip(idx.tolist(), val.tolist(), rel.tolist()):
                row_ids = ids[b].tolist() if ids is not None else None
                self.entries.append({"sample": self.n_samples + b, "layer": layer, "pos": p, "dim": d,
                                     "token": _token_text(self.lm.tokenizer, row_ids, p), "value": v,
                                     "ratio_to_median": r, "kind": "massive"})
        self.n_samples += nb

    def frame(self) -> pd.DataFrame:
        """The entries found so far, as :func:`massive_activations` returns them."""
        df = pd.DataFrame(self.entries, columns=COLUMNS)
        df.attrs.update(n_samples=self.n_samples, n_layers=self.lm.spec.n_layers, threshold=self.threshold,
                        ratio=self.ratio, n_tokens=self.rec.tokens)
        return classify(df, self.rec.tokens, self.outlier_share)


def _token_text(tokenizer, ids: Sequence[int] | None, pos: int) -> str:
    if ids is None:
        return f"<pos {pos}>"
    if hasattr(tokenizer, "decode"):
        return tokenizer.decode([int(ids[pos])])
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        return tokenizer.convert_ids_to_tokens([int(ids[pos])])[0]
    return str(int(ids[pos]))


@torch.no_grad()
def massive_activations(lm: LoadedModel, samples: torch.Tensor | None = None, threshold: float = 100.0,
                        ratio: float = 1000.0, progress: bool = True, forward_inputs: list[dict] | None = None,
                        include_final: bool = True, batch_size: int = 4, outlier_share: float = OUTLIER_SHARE) -> pd.DataFrame:
    """Find massive activations (Sun et al. 2024) over many sequences.

    Args:
        lm: the model.
        samples: (n, N) int64 token ids, e.g. :func:`workbench.tasks.text.token_windows`.
        threshold: absolute magnitude bound (default 100).
        ratio: bound on magnitude / median magnitude of the hidden state (default 1000).
        progress: show a tqdm bar (stderr).
        forward_inputs: alternative to ``samples`` for models fed other inputs (VLMs: ``inputs_embeds``,
            ``pixel_values`` ...): a list of keyword dicts for ``lm.model(**kw)``, each one batch; batch rows
            count as separate samples. Token text comes from ``kw["input_ids"]`` when present.
        include_final: also report the output of the last decoder layer as layer ``n_layers``.
        batch_size: sequences per forward pass when ``samples`` is given.
        outlier_share: token share from which a (layer, dim) is an outlier feature (:func:`classify`).

    Returns:
        DataFrame with one row per massive entry: ``sample`` (row of samples), ``layer`` (the residual
        stream entering that decoder layer, ``blocks.{layer}.hook_resid_pre``; ``n_layers`` = final
        residual), ``pos`` (token position), ``dim`` (residual dimension), ``token`` (decoded text),
        ``value`` (signed activation), ``ratio_to_median``, ``kind`` (``massive`` or ``outlier_feature``,
        :func:`classify`). ``df.attrs`` holds ``n_samples``, ``n_tokens``, ``n_layers``, ``threshold``,
        ``ratio``, ``outlier_share``.

    Raises:
        ValueError: neither or both of ``samples`` and ``forward_inputs``.
    """
    if (samples is None) == (forward_inputs is None):
        raise ValueError("give exactly one of samples (n, N) token ids or forward_inputs (list of forward kwargs)")
    col = MassiveCollector(lm, threshold, ratio, include_final, outlier_share)
    if samples is not None:
        from ..core.passes import run_windows

        run_windows(lm, samples, [col], batch_size, progress, desc="massive activations")
        return col.frame()
    with col.rec:
        for kw in tqdm(list(forward_inputs), desc="massive activations", disable=not progress):
            col.rec.found = []
            kw = dict(kw)
            kw.setdefault("use_cache", False)
            lm.model(**kw)
            ids = kw.get("input_ids")
            if ids is not None:
                nb = ids.shape[0]
            elif "inputs_embeds" in kw:
                nb = kw["inputs_embeds"].shape[0]
            else:
                nb = max([int(idx[:, 0].max()) + 1 for _, idx, _, _ in col.rec.found if len(idx)] or [1])
            col.add(ids, nb)
    return col.frame()
