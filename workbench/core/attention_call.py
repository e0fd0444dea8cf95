"""The attention call: one attention layer's inputs (q, k, v, mask, soft-cap, learned sinks, absolute positions)
and its kernel results (output ``z`` and log-sum-exp) as hooks see them (:class:`AttentionCall`), with exact
scores and probabilities recovered from them in float32."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .kernels import attention_with_lse

LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x * LOG2E); exp2 is the faster kernel on CPU


@dataclass
class AttentionCall:
    """One attention layer's inputs and kernel results, as seen by hooks.

    Shapes (B batch, Hq query heads, Hkv key/value heads, Nq queries, Nk keys, D head dim):
        query: (B, Hq, Nq, D) after rotary embedding, in the model dtype.
        key, value: (B, Hkv, Nk, D), including any KV cache; grouped-query heads are *not* repeated
            (query head h uses key/value head ``h // n_rep``).
        mask: additive mask (B or 1, 1, Nq, Nk) as the kernel added it: 0 for visible keys, -inf for hidden
            ones, finite values for biases; or None, meaning causal with the last query aligned to the last key
            (bottom-right).
        output: (B, Hq, Nq, D) attention output, the head output ``z`` before ``o_proj``.
        lse: (B, Hq, Nq) float32 natural-log log-sum-exp of the scores, including the learned sink logit when
            the layer has one (``lse'``); 0 on rows that see no key.
        scale: softmax scale (1/sqrt(D) unless the model says otherwise).
        layer: index of the decoder layer.
        softcap: logit soft-cap c (scores ``c * tanh(scale q.k / c)``, Gemma-2), or None.
        sinks: (Hq,) float32 learned sink logits (gpt-oss), or None. Probabilities over the keys then sum to
            ``1 - exp(sink - lse')`` per row.
        sliding_window: the layer's window W (keys ``q - W < k <= q``), informative: the mask carries it.
        key_start: absolute position in the input sequence of key 0 (nonzero on sliding-window caches, which
            keep only the last W - 1 keys); see :attr:`key_positions`.

    All scores, probabilities and statistics derived from a call are float32 and live on ``query.device``.
    """

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    output: torch.Tensor
    lse: torch.Tensor
    scale: float
    module: torch.nn.Module | None = None
    softcap: float | None = None
    sinks: torch.Tensor | None = None
    sliding_window: int | None = None
    key_start: int | torch.Tensor = 0
    _key_f32: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        """The device of this call's tensors; every buffer derived from the call is created here."""
        return self.query.device

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.query.shape[1] // self.key.shape[1]

    @property
    def q_offset(self) -> int:
        """Index of the first query among this call's keys (Nk - Nq): nonzero while decoding with a cache."""
        return self.key.shape[2] - self.query.shape[2]

    @property
    def key_positions(self) -> torch.Tensor:
        """(Nk,) int64 absolute positions of this call's keys in the input sequence (``arange(Nk)`` without a
        cache; shifted on sliding-window caches). A key index j reported by a statistic is at
        ``key_positions[j]``."""
        return torch.arange(self.key.shape[2], device=self.device) + int(self.key_start)

    @property
    def query_positions(self) -> torch.Tensor:
        """(Nq,) int64 absolute positions of this call's queries in the input sequence."""
        return torch.arange(self.query.shape[2], device=self.device) + (int(self.key_start) + self.q_offset)

    def _keys_float(self) -> torch.Tensor:
        if self._key_f32 is None:
            self._key_f32 = self.key.float()
        return self._key_f32

    def visible(self, q_start: int = 0, q_stop: int | None = None, k_stop: int | None = None,
                keys: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Boolean visibility of keys for queries ``q_start:q_stop``: shape (B or 1, 1, nq, nk').

        The keys are ``0:k_stop``, or ``keys`` (a slice or index tensor) when given; only those columns
        are built, so a few keys cost O(nq) rather than O(nq * Nk)."""
        nq, nk = self.query.shape[2], self.key.shape[2]
        q_stop = nq if q_stop is None else q_stop
        if keys is None:
            keys = slice(0, nk if k_stop is None else k_stop)
        if self.mask is not None:
            return torch.isfinite(self.mask[:, :, q_start:q_stop][..., keys])
        qpos = torch.arange(q_start, q_stop, device=self.device) + self.q_offset
        kpos = torch.arange(nk, device=self.device)[keys]
        return (kpos[None, :] <= qpos[:, None])[None, None]

    def additive_mask(self, q_start: int = 0, q_stop: int | None = None,
                      keys: slice | torch.Tensor | None = None) -> torch.Tensor:
        """float32 additive mask (B or 1, 1, nq, nk') of a block: the call's mask values where it has one
        (finite biases included), else 0 / -inf from causality."""
        q_stop = self.query.shape[2] if q_stop is None else q_stop
        if self.mask is not None:
            k = slice(None) if keys is None else keys
            return self.mask[:, :, q_start:q_stop][..., k].float()
        vis = self.visible(q_start, q_stop, keys=keys)
        return torch.zeros(vis.shape, device=self.device).masked_fill_(~vis, float("-inf"))

    def scores(self, q_start: int = 0, q_stop: int | None = None, keys: slice | torch.Tensor | None = None,
               heads: list[int] | None = None) -> torch.Tensor:
        """Scores ``softcap(scale * q_i . k_j) + mask_ij`` (-inf where hidden) for a block of queries, exactly
        as the kernel forms them, in float32 (the product is taken in float32 whatever the model dtype).

        Args:
            q_start, q_stop: query rows (indices into this call's queries).
            keys: a slice or index tensor of key positions (default: all keys).
            heads: query heads to compute (default all).
        Returns:
            (B, H', nq, nk') float32 scores on the call's device.
        """
        q = self.query[:, :, q_start:q_stop].float()
        kf = self._keys_float()
        k = kf if keys is None else kf[:, :, keys]
        b, hq, nq, d = q.shape
        hkv = k.shape[1]
        rep = hq // hkv
        if heads is not None and len(heads) < hq:
            # only the chosen heads' scores: each query head against its own key/value head
            hidx = torch.as_tensor(list(heads), dtype=torch.long, device=q.device)
            s = torch.matmul(q[:, hidx], k[:, hidx // rep].transpose(-1, -2))
        else:
            # all heads: group queries by key/value head so that GQA keys are never repeated in memory
            s = torch.matmul(q.reshape(b, hkv, rep * nq, d), k.transpose(-1, -2)).view(b, hq, nq, k.shape[2])
            if heads is not None:
                s = s[:, heads]
        s = s.mul_(self.scale)
        if self.softcap is not None:
            s = s.div_(self.softcap).tanh_().mul_(self.softcap)
        q_stop = self.query.shape[2] if q_stop is None else q_stop
        if self.mask is not None:
            return s.add_(self.additive_mask(q_start, q_stop, keys))
        return s.masked_fill_(~self.visible(q_start, q_stop, keys=keys), float("-inf"))

    def probs(self, q_start: int = 0, q_stop: int | None = None, keys: slice | torch.Tensor | None = None,
              heads: list[int] | None = None) -> torch.Tensor:
        """Exact attention probabilities ``A[i,j] = exp(s_ij - lse'_i)`` for a block, (B, H', nq, nk') float32."""
        lse = self.lse[:, :, q_start:q_stop]
        if heads is not None:
            lse = lse[:, heads]
        # exp2 of base-2 units: several times faster than exp, and far faster where exp underflows
        return torch.exp2((self.scores(q_start, q_stop, keys, heads) - lse[..., None]).mul_(LOG2E))


    def restricted(self, q_start: int = 0, q_stop: int | None = None, keys: torch.Tensor | None = None,
                   hide: torch.Tensor | None = None, heads: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of a block of queries over a subset of the keys, renormalised over that subset, from a second
        fused-kernel call with the call's own mask (finite biases kept) and soft-capping.

        Args:
            q_start, q_stop: query rows (indices into this call's queries).
            keys: (K,) int64 indices of the keys kept (default all).
            hide: (B, Nk) bool keys to hide as well (indexed over all Nk keys).
            heads: query heads (default all; grouped-query heads then share their key/value head).
        Returns:
            (output (B, H', nq, D) in the model dtype, lse (B, H', nq) float32), ``lse`` the log-sum-exp over the
            kept keys, so the subset holds ``exp(lse - self.lse)`` of each full row (VAR, ACT).
        """
        q, k, v = self.query[:, :, q_start:q_stop], self.key, self.value
        if heads is not None:
            kv = [h // self.n_rep for h in heads]
            q, k, v = q[:, list(heads)], k[:, kv], v[:, kv]
        mask = self.additive_mask(q_start, q_stop, keys)
        if hide is not None:
            mask = mask.masked_fill((hide if keys is None else hide[:, keys])[:, None, None, :], float("-inf"))
        if keys is not None:
            k, v = k[:, :, keys], v[:, :, keys]
        return attention_with_lse(q, k, v, mask.to(q.dtype), self.scale, softcap=self.softcap)
