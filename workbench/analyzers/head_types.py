"""Classic head types: previous-token, duplicate-token and induction heads, kernel-backed.

The scores follow TransformerLens' ``head_detector`` (``transformer_lens/head_detector.py``:
``detect_head`` with the default ``error_measure="mul"``; see Olsson et al. 2022, "In-context
learning and induction heads", for the head types). For one sequence of T tokens t_0..t_{T-1}
a 0/1 *detection pattern* D (T x T, lower triangular) says where the head type should attend:

* previous-token head: ``D[i, i-1] = 1`` for i >= 1;
* duplicate-token head: ``D[i, j] = 1`` for j < i with ``t_j == t_i``;
* induction head: ``D[i, j] = 1`` for 1 <= j <= i with ``t_{j-1} == t_i`` and j-1 < i
  (the token *after* an earlier occurrence of the current token).

The score of a head with attention pattern A is the share of its attention that falls on D::

    score = sum_ij A'[i,j] D[i,j] / sum_ij A'[i,j]

where A' is A with the first column zeroed if ``exclude_bos`` and the diagonal zeroed if
``exclude_current_token`` (TransformerLens' conventions, both off by default). Without
exclusions the denominator is T, because every row of A sums to one. Over several sequences
the score is the mean of the per-sequence scores (as ``detect_head`` does for a list of prompts).

Deviation (implementation only): TransformerLens multiplies full T x T patterns from an eager
forward pass. We never build A: D is kept as a list of (query, key) pairs, and each needed entry is
recovered from the fused kernel's log-sum-exp as ``A[i,j] = exp(scale * q_i . k_j - lse_i)``
(:mod:`workbench.core.attention`), so the cost is O(|D| * d_head) per head. The excluded masses
``sum_i A[i,0]`` and ``sum_i A[i,i]`` are two more pair lists. ``tests/test_head_types.py`` proves
equality with TransformerLens' ``compute_head_attention_similarity_score`` on eager patterns and
with ``detect_head`` on SmolLM2 through ``TransformerBridge``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..core.attention import AttentionCall, attention_hooks
from ..core.models import LoadedModel

HEAD_TYPES = ("previous_token", "duplicate_token", "induction")


def _duplicate_pairs(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with j < i and tokens[i] == tokens[j], grouped by token (no T x T array)."""
    order = np.argsort(tokens, kind="stable")
    sorted_tok = tokens[order]
    starts = np.flatnonzero(np.r_[True, sorted_tok[1:] != sorted_tok[:-1]])
    ends = np.r_[starts[1:], len(tokens)]
    qi, kj = [], []
    for a, b in zip(starts, ends):
        if b - a < 2:
            continue
        pos = order[a:b]  # increasing positions (stable sort)
        ii, jj = np.triu_indices(b - a, k=1)  # jj > ii in group order, so pos[jj] > pos[ii]
        qi.append(pos[jj])
        kj.append(pos[ii])
    if not qi:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(qi).astype(np.int64), np.concatenate(kj).astype(np.int64)


def detection_pairs(tokens: torch.Tensor | Sequence[int], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The nonzero entries of a head type's detection pattern as (query, key) index pairs.

    Args:
        tokens: (T,) token ids of one sequence.
        kind: ``previous_token``, ``duplicate_token`` or ``induction`` (module docstring).
    Returns:
        (queries, keys): two int64 tensors of equal length |D|, with keys <= queries.
    Raises:
        ValueError: unknown kind.
    """
    t = np.asarray(torch.as_tensor(tokens).reshape(-1).tolist(), dtype=np.int64)
    n = len(t)
    if kind == "previous_token":
        qi = np.arange(1, n, dtype=np.int64)
        return torch.from_numpy(qi), torch.from_numpy(qi - 1)
    if kind not in HEAD_TYPES:
        raise ValueError(f"unknown head type {kind!r}: use one of {HEAD_TYPES}")
    qi, kj = _duplicate_pairs(t)
    if kind == "induction":
        kj = kj + 1  # the token after the earlier occurrence; kj + 1 <= qi because kj < qi
    return torch.from_numpy(qi), torch.from_numpy(kj)


def pair_probs(call: AttentionCall, b: int, queries: torch.Tensor, keys: torch.Tensor,
               heads: list[int] | None = None, chunk: int = 8192) -> torch.Tensor:
    """Exact attention probabilities ``A[b, h, i, j]`` for a list of (i, j) pairs, from the kernel's LSE.

    Args:
        call: an attention call (prefill or decode; ``queries`` index this call's query rows).
        b: batch row.
        queries, keys: (P,) int64 query rows and key positions.
        heads: query heads (default all).
    Returns:
        (H, P) float32; 0 where the key is hidden from the query.
    """
    hsel = list(range(call.query.shape[1])) if heads is None else list(heads)
    kv = torch.tensor([h // call.n_rep for h in hsel])
    out = torch.zeros(len(hsel), len(queries))
    for a in range(0, len(queries), chunk):
        qi, kj = queries[a:a + chunk], keys[a:a + chunk]
        q = call.query[b, hsel][:, qi].float()  # (H, p, D)
        k = call.key[b, kv][:, kj].float()
        s = (q * k).sum(-1) * call.scale
        p = torch.exp(s - call.lse[b, hsel][:, qi])
        if call.mask is not None:
            vis = torch.isfinite(call.mask[min(b, call.mask.shape[0] - 1), 0, qi, kj])
        else:
            vis = kj <= qi + call.q_offset
        out[:, a:a + chunk] = p * vis
    return out


class HeadTypeScorer:
    """Attention hook that accumulates head-type scores for one forward pass (no KV cache).

    Args:
        tokens: (B, T) token ids of the batch the model will see.
        kinds: head types to score (subset of :data:`HEAD_TYPES`).
        exclude_bos, exclude_current_token: TransformerLens' exclusions (module docstring).
        layers: layers to score (default all that run).
        prefix: the forward pass may run longer sequences and more batch rows, of which ``tokens`` (B, T) are
            the first B rows and first T positions: they are scored as if run alone (causal attention: the
            first T queries attend only to the first T keys, so their probabilities are those of a T-token run).

    After the forward pass, ``scores[kind]`` maps layer -> (B, Hq) float32 score per sequence.
    """

    def __init__(self, tokens: torch.Tensor, kinds: Iterable[str] = HEAD_TYPES, exclude_bos: bool = False,
                 exclude_current_token: bool = False, layers: Iterable[int] | None = None, prefix: bool = False):
        tokens = torch.as_tensor(tokens)
        self.tokens = tokens[None] if tokens.dim() == 1 else tokens
        self.kinds = tuple(kinds)
        for k in self.kinds:
            if k not in HEAD_TYPES:
                raise ValueError(f"unknown head type {k!r}: use one of {HEAD_TYPES}")
        self.exclude_bos = exclude_bos
        self.exclude_current_token = exclude_current_token
        self.layers = None if layers is None else set(layers)
        self.prefix = prefix
        self.pairs = [{k: detection_pairs(row, k) for k in self.kinds} for row in self.tokens]
        self.scores: dict[str, dict[int, torch.Tensor]] = {k: {} for k in self.kinds}

    def on_attention(self, call: AttentionCall) -> None:
        if self.layers is not None and call.layer not in self.layers:
            return None
        if call.q_offset != 0:
            raise ValueError("head-type scores need a full forward pass without a KV cache (got a decoding step)")
        bsz, hq, n, _ = call.query.shape
        bt, t = self.tokens.shape
        if (n, bsz) != (t, bt) and not (self.prefix and n >= t and bsz >= bt):
            raise ValueError(f"the scorer was built for tokens {tuple(self.tokens.shape)} but attention saw "
                             f"batch {bsz} x {n} queries")
        bsz, n = bt, t
        ar = torch.arange(n)
        res = {k: torch.zeros(bsz, hq) for k in self.kinds}
        for b in range(bsz):
            denom = torch.full((hq,), float(n))
            if self.exclude_bos:
                first = pair_probs(call, b, ar, torch.zeros_like(ar))  # (H, T): A[i, 0]
                denom -= first.sum(-1)
            if self.exclude_current_token:
                diag = pair_probs(call, b, ar, ar)
                denom -= (diag[:, 1:] if self.exclude_bos else diag).sum(-1)  # A[0,0] is already out
            for k in self.kinds:
                qi, kj = self.pairs[b][k]
                keep = torch.ones(len(qi), dtype=torch.bool)
                if self.exclude_bos:
                    keep &= kj != 0
                if self.exclude_current_token:
                    keep &= kj != qi
                num = pair_probs(call, b, qi[keep], kj[keep]).sum(-1)
                res[k][b] = num / denom
        for k in self.kinds:
            self.scores[k][call.layer] = res[k]
        return None


@torch.no_grad()
def head_type_scores(lm: LoadedModel, tokens: torch.Tensor, kinds: Iterable[str] = HEAD_TYPES,
                     exclude_bos: bool = False, exclude_current_token: bool = False,
                     batch_size: int = 1, progress: bool = False) -> pd.DataFrame:
    """Head-type scores of every head, averaged over the sequences of ``tokens``.

    Args:
        lm: a model loaded with the workbench attention.
        tokens: (n, T) or (T,) token ids; each row is scored on its own, then scores are averaged.
        kinds: head types (:data:`HEAD_TYPES`).
        exclude_bos, exclude_current_token: TransformerLens' exclusions.
        batch_size: sequences per forward pass.
    Returns:
        DataFrame with columns ``layer``, ``head`` and one score column per kind (named
        ``<kind>_score``), values in [0, 1].
    """
    from tqdm.auto import tqdm

    tokens = torch.as_tensor(tokens)
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    lm.spec.check_length(tokens.shape[1])
    kinds = tuple(kinds)
    total = {k: torch.zeros(lm.spec.n_layers, lm.spec.n_heads) for k in kinds}
    for a in tqdm(range(0, len(tokens), batch_size), desc="head types", disable=not progress):
        batch = tokens[a:a + batch_size]
        scorer = HeadTypeScorer(batch, kinds, exclude_bos, exclude_current_token)
        with attention_hooks(scorer):
            lm.model(input_ids=batch, use_cache=False)
        for k in kinds:
            for layer, s in scorer.scores[k].items():
                total[k][layer] += s.sum(0)
    L, H = lm.spec.n_layers, lm.spec.n_heads
    df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
    for k in kinds:
        df[f"{k}_score"] = (total[k] / len(tokens)).reshape(-1).numpy()
    return df


def repeated_random_tokens(vocab_size: int, half_len: int, n_seqs: int, seed: int = 0, low: int | None = None,
                           prefix: Sequence[int] = ()) -> torch.Tensor:
    """Sequences of ``half_len`` uniformly random tokens repeated twice (the standard induction test).

    Args:
        vocab_size: tokens are drawn from ``[low, vocab_size)``.
        half_len: length of the random block.
        n_seqs: number of sequences.
        seed: random seed (a ``torch.Generator`` is used, so results are reproducible).
        low: smallest token id (default ``min(1000, vocab_size // 4)``, which skips special tokens).
        prefix: ids put in front of every sequence (e.g. a BOS token).
    Returns:
        (n_seqs, len(prefix) + 2 * half_len) int64.
    """
    low = min(1000, vocab_size // 4) if low is None else low
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(low, vocab_size, (n_seqs, half_len), generator=g)
    pre = torch.tensor(list(prefix), dtype=torch.long).expand(n_seqs, len(prefix))
    return torch.cat([pre, block, block], dim=1)


def classic_head_scores(lm: LoadedModel, text_tokens: torch.Tensor, n_random: int = 4, half_len: int = 128,
                        seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """The standard measurement: previous-token score on real text, duplicate-token and induction
    scores on repeated random tokens (where the detection pattern is unambiguous).

    Args:
        text_tokens: (n, T) real-text windows for the previous-token score.
        n_random, half_len, seed: repeated random sequences (:func:`repeated_random_tokens`).
    Returns:
        DataFrame ``layer, head, previous_token_score, duplicate_token_score, induction_score``.
    """
    prev = head_type_scores(lm, text_tokens, ("previous_token",), progress=progress)
    return prev.merge(random_token_scores(lm, n_random, half_len, seed, progress), on=["layer", "head"])


def random_token_scores(lm: LoadedModel, n_random: int = 4, half_len: int = 128, seed: int = 0,
                        progress: bool = False) -> pd.DataFrame:
    """Duplicate-token and induction scores on ``n_random`` repeated random sequences of 2 x ``half_len`` tokens
    (:func:`repeated_random_tokens`, ``seed``): DataFrame ``layer, head, duplicate_token_score, induction_score``."""
    rnd = repeated_random_tokens(lm.spec.vocab_size or lm.model.config.vocab_size, half_len, n_random, seed)
    return head_type_scores(lm, rnd, ("duplicate_token", "induction"), progress=progress)


class PrefixHeadTypes:
    """Head-type scores of the first ``prefix`` tokens of windows ``0 .. rows-1``, as a window consumer of
    :func:`workbench.core.passes.run_windows`: a :class:`HeadTypeScorer` (``prefix=True``) rides along another
    analyzer's pass over the full windows, so the census scores previous-token heads without running those
    windows again. :meth:`frame` equals :func:`head_type_scores` of ``windows[:rows, :prefix]``.
    """

    needs: tuple[str, ...] = ()

    def __init__(self, n_layers: int, n_heads: int, kinds: Iterable[str] = ("previous_token",), rows: int = 4,
                 prefix: int = 256):
        self.kinds, self.limit, self.prefix = tuple(kinds), rows, prefix
        self.total = {k: torch.zeros(n_layers, n_heads) for k in self.kinds}
        self.count = 0
        self._scorer: HeadTypeScorer | None = None

    def hooks(self, ids: torch.Tensor, rows: range):
        k = max(0, min(rows.stop, self.limit) - rows.start)
        self._scorer = HeadTypeScorer(ids[:k, :self.prefix], self.kinds, prefix=True) if k else None
        return attention_hooks(self._scorer) if k else None

    def consume(self, trace, ids: torch.Tensor, rows: range) -> None:
        if self._scorer is None:
            return
        for k in self.kinds:
            for layer, s in self._scorer.scores[k].items():
                self.total[k][layer] += s.sum(0)
        self.count += self._scorer.tokens.shape[0]

    def frame(self) -> pd.DataFrame:
        """DataFrame ``layer, head, <kind>_score`` averaged over the windows scored."""
        L, H = next(iter(self.total.values())).shape
        df = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
        for k in self.kinds:
            df[f"{k}_score"] = (self.total[k] / max(1, self.count)).reshape(-1).numpy()
        return df


def top_heads(df: pd.DataFrame, column: str, k: int = 5) -> list[tuple[int, int]]:
    """The ``k`` (layer, head) pairs with the largest ``column``."""
    top = df.nlargest(k, column)
    return [(int(a), int(b)) for a, b in zip(top.layer, top["head"])]
