"""Attention sinks over real text: first-token sink rate, per-layer profile, ACT's hidden sinks, sink tokens.

Definitions (docs/methods.md#received-attention-and-sink-rate, #hidden-sinks-acts-sink-set):

* mean received attention of key k in head (l, h) of one sample (Gu et al. 2024, "When attention sink
  emerges in language models"; ACT uses the same statistic): ``s_k = (1/(T-k)) sum_{i>=k} A[i,k]``;
  computed kernel-backed by :class:`~workbench.core.tracer.Tracer` (``stats=("received",)``), no N x N map.
* **sink rate** ``Sink_k^eps``: percentage of (layer, head) pairs with ``s_k > eps`` (Gu et al.: first
  token, eps = 0.3, 64-token samples). We compute it per sample and average over samples.
* **ACT sink set** of a head in one sample (Yu et al. 2024): ``S = {k : s_k > 0.1}`` minus the first
  detected sink; the remaining keys are the *hidden sinks*. Deviation for the statistics of this
  module only: keys seen by fewer than ``min_queries`` queries (the last few tokens, whose mean runs
  over a handful of queries, so a token attending to itself or a local head's recent tokens look like
  sinks) are not counted. By default ``min_queries = max(8, T // 4)``, i.e. only the first three quarters
  of a sample can hold hidden sinks; ``min_queries=1`` gives ACT's rule exactly (ACT's intervention,
  :class:`~workbench.interventions.act.ACTCalibration`, uses it).

All results are pandas DataFrames.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..interventions.act import act_sink_mask
from ..core.models import LoadedModel

SINK_EPS = 0.3
ACT_THRESHOLD = 0.1
MIN_QUERIES = None  # max(8, T // 4)


def _min_queries(min_queries: int | None, n_tokens: int) -> int:
    return max(8, n_tokens // 4) if min_queries is None else int(min_queries)


class ReceivedCollector:
    """Mean received attention s_k of windows ``0 .. rows-1`` (all when ``rows`` is None), as a window consumer
    of :func:`workbench.core.passes.run_windows` (``needs = ("received",)``)."""

    needs = ("received",)

    def __init__(self, rows: int | None = None):
        self.limit = rows
        self.parts: list[torch.Tensor] = []

    def hooks(self, ids: torch.Tensor, rows: range) -> None:
        return None

    def consume(self, trace, ids: torch.Tensor, rows: range) -> None:
        k = len(rows) if self.limit is None else max(0, min(rows.stop, self.limit) - rows.start)
        if k:
            self.parts.append(trace["received"][:, :k].permute(1, 0, 2, 3).contiguous())  # (b, L, H, N)

    def tensor(self) -> torch.Tensor:
        """(n, L, H, N) float32 s_k of the windows seen."""
        return torch.cat(self.parts)


@torch.no_grad()
def received_attention(lm: LoadedModel, samples: torch.Tensor, batch_size: int = 4, progress: bool = True,
                       desc: str = "sinks: received attention", sample_rows: int | None = None,
                       riders: list | None = None) -> torch.Tensor:
    """Mean received attention s_k of every key in every head, per sample.

    Args:
        samples: (n, N) token ids (equal lengths, no padding).
        sample_rows: estimate s_k from this many sampled query rows per sample (``Tracer(received_sample_rows=)``,
            O(m N) instead of O(N^2) per head, each entry within a Hoeffding-Serfling bound with 95%
            probability); None = exact.
        riders: other window consumers (:class:`workbench.core.passes.WindowConsumer`) fed by the same pass,
            e.g. a :class:`~workbench.analyzers.massive.MassiveCollector`.
    Returns:
        (n, L, H, N) float32 s_k.
    """
    from ..core.passes import run_windows

    col = ReceivedCollector()
    run_windows(lm, samples, [col, *(riders or [])], batch_size, progress, desc,
                tracer_options={"received_sample_rows": sample_rows})
    return col.tensor()


def decode_token(tokenizer, token_id: int) -> str:
    """Text of one token (``decode``, else ``convert_ids_to_tokens``)."""
    if hasattr(tokenizer, "decode"):
        return tokenizer.decode([int(token_id)])
    return tokenizer.convert_ids_to_tokens([int(token_id)])[0]


def key_counts(n_tokens: int) -> torch.Tensor:
    """Queries that see key k in an unpadded causal sequence: T - k, shape (T,)."""
    return torch.arange(n_tokens, 0, -1, dtype=torch.float32)


def sink_rate(received: torch.Tensor, k: int = 0, eps: float = SINK_EPS) -> float:
    """Sink_k^eps in percent: share of (layer, head) pairs with s_k > eps, averaged over samples.

    Args:
        received: (n, L, H, N) from :func:`received_attention`.
    """
    return float((received[..., k] > eps).float().mean() * 100.0)


def hidden_sink_masks(received: torch.Tensor, threshold: float = ACT_THRESHOLD,
                      min_queries: int | None = MIN_QUERIES) -> torch.Tensor:
    """ACT sink sets (hidden sinks) of every head in every sample: (n, L, H, N) bool.

    ``min_queries`` None means max(8, N // 4) (see the module docstring); 1 is ACT's rule.
    """
    counts = key_counts(received.shape[-1])
    return act_sink_mask(received, threshold, counts, _min_queries(min_queries, received.shape[-1]))


def layer_profile(received: torch.Tensor, eps: float = SINK_EPS, threshold: float = ACT_THRESHOLD,
                  min_queries: int | None = MIN_QUERIES) -> pd.DataFrame:
    """Per-layer sink profile.

    Columns: ``layer``; ``first_token_sink_rate`` (% of the layer's heads with s_0 > eps, mean over samples);
    ``mean_first_token_mass`` (mean s_0); ``heads_with_hidden_sinks`` (% of heads whose ACT sink set is
    non-empty); ``mean_hidden_sinks`` (mean size of the ACT sink set per head); ``max_hidden_sink_mass``
    (largest s_k of a hidden sink, mean over samples).
    """
    hid = hidden_sink_masks(received, threshold, min_queries)
    hid_mass = torch.where(hid, received, torch.zeros(())).amax(-1)  # (n, L, H)
    return pd.DataFrame({
        "layer": range(received.shape[1]),
        "first_token_sink_rate": ((received[..., 0] > eps).float().mean(dim=(0, 2)) * 100).numpy(),
        "mean_first_token_mass": received[..., 0].mean(dim=(0, 2)).numpy(),
        "heads_with_hidden_sinks": (hid.any(-1).float().mean(dim=(0, 2)) * 100).numpy(),
        "mean_hidden_sinks": hid.float().sum(-1).mean(dim=(0, 2)).numpy(),
        "max_hidden_sink_mass": hid_mass.amax(-1).mean(0).numpy(),
    })


def sink_onset_layer(profile: pd.DataFrame, min_rate: float = 50.0) -> int | None:
    """First layer whose first-token sink rate (% of heads) exceeds ``min_rate``, from :func:`layer_profile`."""
    over = profile[profile.first_token_sink_rate > min_rate]
    return int(over.layer.iloc[0]) if len(over) else None


def head_table(received: torch.Tensor, eps: float = SINK_EPS, threshold: float = ACT_THRESHOLD,
               min_queries: int | None = MIN_QUERIES) -> pd.DataFrame:
    """One row per (layer, head): ``first_token_mass`` (mean s_0), ``first_token_sink_share`` (share of
    samples with s_0 > eps), ``hidden_sink_share`` (share of samples with a non-empty ACT sink set),
    ``mean_hidden_sinks``, ``hidden_sink_mass`` (mean over samples of the largest hidden-sink s_k)."""
    n, L, H, _ = received.shape
    hid = hidden_sink_masks(received, threshold, min_queries)
    hid_mass = torch.where(hid, received, torch.zeros(())).amax(-1)
    return pd.DataFrame({
        "layer": torch.arange(L).repeat_interleave(H).numpy(),
        "head": torch.arange(H).repeat(L).numpy(),
        "first_token_mass": received[..., 0].mean(0).reshape(-1).numpy(),
        "first_token_sink_share": (received[..., 0] > eps).float().mean(0).reshape(-1).numpy(),
        "hidden_sink_share": hid.any(-1).float().mean(0).reshape(-1).numpy(),
        "mean_hidden_sinks": hid.float().sum(-1).mean(0).reshape(-1).numpy(),
        "hidden_sink_mass": hid_mass.mean(0).reshape(-1).numpy(),
    })


def sink_tokens(received: torch.Tensor, samples: torch.Tensor, tokenizer, eps: float = SINK_EPS,
                threshold: float = ACT_THRESHOLD, min_queries: int | None = MIN_QUERIES) -> pd.DataFrame:
    """Which tokens are sinks and how often.

    Every (sample, position) is counted once per head in which it is a sink: the first token when
    s_0 > eps (``kind="first"``) and ACT's hidden sinks (``kind="hidden"``). Grouped by token text.

    Columns: ``token``, ``kind``, ``head_hits`` (sum over (sample, pos) of heads), ``occurrences``
    (distinct (sample, pos)), ``samples`` (distinct samples), ``mean_heads`` (heads per occurrence),
    ``mean_pos``, ``share_of_occurrences`` (occurrences / how often the token appears in the samples,
    for hidden sinks).
    """
    n, L, H, N = received.shape
    hid = hidden_sink_masks(received, threshold, min_queries).sum(dim=(1, 2))  # (n, N) heads
    first = (received[..., 0] > eps).sum(dim=(1, 2))  # (n,)
    rows = []
    texts = [[decode_token(tokenizer, t) for t in row] for row in samples.tolist()]
    for s in range(n):
        if int(first[s]):
            rows.append({"token": texts[s][0], "kind": "first", "sample": s, "pos": 0, "heads": int(first[s])})
        for p in hid[s].nonzero().reshape(-1).tolist():
            rows.append({"token": texts[s][p], "kind": "hidden", "sample": s, "pos": p, "heads": int(hid[s, p])})
    cols = ["token", "kind", "head_hits", "occurrences", "samples", "mean_heads", "mean_pos", "share_of_occurrences"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    freq = pd.Series([t for row in texts for t in row]).value_counts()
    g = df.groupby(["token", "kind"])
    out = g.agg(head_hits=("heads", "sum"), occurrences=("pos", "size"), samples=("sample", "nunique"),
                mean_heads=("heads", "mean"), mean_pos=("pos", "mean")).reset_index()
    out["share_of_occurrences"] = out["occurrences"] / out["token"].map(freq).astype(float)
    return out.sort_values("head_hits", ascending=False).reset_index(drop=True)[cols]


@dataclass
class SinkAnalysis:
    """Result of :func:`analyze_sinks`: sink rates (percent) per length, and DataFrames."""

    sink_rate_first_token: dict[int, float]
    profile: pd.DataFrame
    heads: pd.DataFrame
    tokens: pd.DataFrame
    received: dict[int, torch.Tensor] = field(repr=False, default_factory=dict)


def analyze_sinks(lm: LoadedModel, lengths: dict[int, int] | None = None, split: str = "all", eps: float = SINK_EPS,
                  threshold: float = ACT_THRESHOLD, min_queries: int | None = MIN_QUERIES, progress: bool = True,
                  profile_length: int | None = None, riders: dict[int, list] | None = None) -> SinkAnalysis:
    """Sink analysis over windows of real text (:func:`workbench.tasks.text.token_windows`).

    Args:
        lengths: tokens per window -> number of windows, e.g. ``{64: 64, 512: 16}``; Sink_1^eps is
            reported for each length. The profile, head table and sink tokens use ``profile_length``
            (default the longest).
        riders: length -> window consumers fed by the same pass over that length's windows
            (:func:`received_attention`), so that no window is run twice.
    Raises:
        ContextTooLongError: a length exceeds the context window.
    """
    from ..tasks.text import token_windows

    lengths = lengths or {64: 64, 512: 16}
    rates, rec, samples = {}, {}, {}
    for n_tok, n in sorted(lengths.items()):
        lm.spec.check_length(n_tok)
        samples[n_tok] = token_windows(lm.tokenizer, n_tok, n, split=split)
        rec[n_tok] = received_attention(lm, samples[n_tok], progress=progress, desc=f"sinks: {n} x {n_tok} tokens",
                                        riders=(riders or {}).get(n_tok))
        rates[n_tok] = sink_rate(rec[n_tok], 0, eps)
    pl = profile_length or max(lengths)
    r = rec[pl]
    return SinkAnalysis(rates, layer_profile(r, eps, threshold, min_queries), head_table(r, eps, threshold, min_queries),
                        sink_tokens(r, samples[pl], lm.tokenizer, eps, threshold, min_queries), rec)
