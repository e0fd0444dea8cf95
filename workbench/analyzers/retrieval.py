"""Retrieval scores of attention heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality", arXiv:2404.15574; code: nightdessert/Retrieval_Head).

Definition (docs/methods.md#retrieval-score-and-retrieval-heads): at every decoding step t emitting token w_t, let j_t be the
argmax of the head's attention row at that step. The step is a *hit* if j_t lies in the needle's
answer span and the context token at j_t equals w_t. A head's retrieval score for one test is
``hits / (answer span length in tokens)``; the model-level score averages over the tests answered
correctly (ROUGE-1 recall of the answer > 0.5); failed tests are skipped, not counted as zero.

How we get j_t without attention maps: :class:`TopKeyRecorder` is an attention hook that, for each
layer call, computes the tracer's ``top_key`` statistic (:func:`workbench.core.stats.head_statistics`) of the
*last query row only* (one row per head, O(N) work, from the call's q and k): the argmax of the scores,
which is the argmax of the attention row since the softmax is monotone. The published code instead runs every decoding step with eager attention and
``output_attentions=True`` (L x H x N floats per step after an eager prefill); a test checks that
both give the same top keys and scores.

Decoding follows the published code: the prompt minus its last token is prefilled, then every
emitted token comes from a decoding step with the KV cache (the first one feeds the last prompt
token), greedy, at most 50 new tokens, stopping after a token containing a newline or an
end-of-sequence token. So "decoding only" interventions also cover the first answer token.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.attention import AttentionCall, attention_hooks
from ..core.errors import WorkbenchError
from ..core.stats import head_statistics
from ..core.tracer import _later_queries

MAX_NEW_TOKENS = 50
ROUGE_THRESHOLD = 0.5
RETRIEVAL_THRESHOLD = 0.1


class TopKeyRecorder:
    """Attention hook recording, per layer call, the top-1 key of each head's last query row.

    After a run, ``top_keys()`` is (steps, layers, heads) int64: for each recorded call (one per
    forward pass) the absolute input position of the key with the largest attention of the last query
    (also on sliding-window caches, whose calls hold only the last W keys). Only calls while
    ``active`` is True are recorded.

    Raises (during the forward pass):
        WorkbenchError: a batch of more than one sequence (retrieval scoring decodes one prompt at a time).
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self.rows: list[dict[int, torch.Tensor]] = []
        self.active = True

    def new_step(self) -> None:
        """Start recording a new forward pass."""
        self.rows.append({})

    def on_attention(self, call: AttentionCall) -> None:
        if not self.active or not self.rows:
            return None
        if call.query.shape[0] != 1:
            raise WorkbenchError(f"retrieval scoring decodes one prompt at a time, got a batch of {call.query.shape[0]}: "
                                 "run the prompts one by one")
        last = _later_queries(call, call.query.shape[2] - 1)  # the last query row only
        top = head_statistics(last, received=False, rows=("top_key",))["top_key"]  # (1, Hq, 1), as the Tracer's
        # absolute input positions: on a sliding-window cache the call's key 0 is not position 0
        self.rows[-1][call.layer] = call.key_positions[top[0, :, 0]]
        return None

    def top_keys(self) -> torch.Tensor:
        """(steps, layers, heads) int64 top-1 key per step."""
        out = []
        for step in self.rows:
            missing = [i for i in range(self.n_layers) if i not in step]
            if missing:
                raise RuntimeError(f"layers {missing} never ran attention through the workbench kernel")
            out.append(torch.stack([step[i] for i in range(self.n_layers)]).cpu())
        return torch.stack(out) if out else torch.empty(0, self.n_layers, 0, dtype=torch.long)


def _stop_ids(tokenizer) -> tuple[set[int], set[int]]:
    """(end-of-sequence ids, ids whose text contains a newline) for the tokenizer (empty sets if unknown)."""
    eos: set[int] = set()
    for name in ("eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            eos.add(v)
        elif isinstance(v, (list, tuple)):
            eos.update(int(x) for x in v)
    nl: set[int] = set()
    if hasattr(tokenizer, "get_vocab") and hasattr(tokenizer, "convert_tokens_to_string"):
        cached = getattr(tokenizer, "_workbench_newline_ids", None)
        if cached is None:
            cached = {i for t, i in tokenizer.get_vocab().items()
                      if "\n" in tokenizer.convert_tokens_to_string([t])}
            try:
                tokenizer._workbench_newline_ids = cached
            except AttributeError:
                pass
        nl = cached
    return eos, nl


@dataclass
class Decoded:
    """Greedy decoding result: emitted token ids, and the top keys (steps, layers, heads) of each step."""

    tokens: list[int]
    top_keys: torch.Tensor | None = None
    stop: str = "length"
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def greedy_decode(lm, ids: torch.Tensor, max_new_tokens: int = MAX_NEW_TOKENS, record: bool = True,
                  hooks: tuple = (), prefill_cache=None, stop_at_newline: bool = True) -> Decoded:
    """Greedy decoding with the KV cache, recording each step's top keys.

    Args:
        lm: a LoadedModel with workbench attention.
        ids: (1, N) prompt ids.
        max_new_tokens: at most this many emitted tokens.
        record: record top keys (the retrieval-score statistic).
        hooks: attention hooks active during *decoding steps only* (e.g. a HeadAblation); with
            ``phase="all"`` interventions, run the prefill yourself with the hook active and pass
            ``prefill_cache``.
        prefill_cache: a cache holding ``ids[:, :-1]`` (reused across conditions; cropped back
            to N-1 tokens before returning, so it can be reused again).
        stop_at_newline: stop after a token whose text contains a newline.
    Returns:
        :class:`Decoded` with ``top_keys`` (T, L, Hq) where row t produced ``tokens[t]``.
    Raises:
        WorkbenchError: ``ids`` is not one prompt of shape (1, N).
    """
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise WorkbenchError(f"greedy_decode takes one prompt of shape (1, N), got {tuple(ids.shape)}: decode the "
                             "prompts one by one")
    n = ids.shape[1]
    model = lm.model
    if prefill_cache is None:
        prefill_cache = prefill(lm, ids)
    cache = prefill_cache
    if hasattr(cache, "activate_past_recording"):
        # sliding-window layers then keep the keys they evict while decoding, so the crop below can roll
        # the cache back to the prompt (without it, crop raises once a layer's window is full)
        cache.activate_past_recording()
    eos, nl = _stop_ids(lm.tokenizer)
    rec = TopKeyRecorder(lm.spec.n_layers) if record else None
    active = ([rec] if rec else []) + list(hooks)
    tokens: list[int] = []
    stop = "length"
    inp = ids[:, -1:]
    try:
        with attention_hooks(*active):
            for _ in range(max_new_tokens):
                if rec:
                    rec.new_step()
                out = model(input_ids=inp, past_key_values=cache, use_cache=True)
                w = int(out.logits[0, -1].argmax())
                tokens.append(w)
                if w in eos:
                    stop = "eos"
                    break
                if stop_at_newline and w in nl:
                    stop = "newline"
                    break
                inp = torch.tensor([[w]], dtype=torch.long, device=ids.device)
    finally:
        extra = cache.get_seq_length() - (n - 1)
        if extra > 0:
            cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
    return Decoded(tokens, rec.top_keys() if rec else None, stop)


@torch.no_grad()
def prefill(lm, ids: torch.Tensor, hooks: tuple = ()):
    """Run ``ids[:, :-1]`` through the model and return its KV cache (hooks active during the prefill)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.model.config)
    with attention_hooks(*hooks):
        lm.model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def retrieval_hits(top_keys: torch.Tensor, tokens: list[int], context_ids: torch.Tensor,
                   span: tuple[int, int]) -> torch.Tensor:
    """Retrieval score of every head for one test (Wu et al. 2024).

    Args:
        top_keys: (T, L, H) int64 top-1 key of each head at each decoding step t.
        tokens: the T emitted token ids; step t emitted ``tokens[t]``.
        context_ids: (N,) prompt ids.
        span: (start, stop) answer span in token positions.
    Returns:
        (L, H) float32: hits / (stop - start), where a hit at step t is
        ``start <= top_keys[t] < stop and context_ids[top_keys[t]] == tokens[t]``.
    """
    a, b = span
    if b <= a:
        raise ValueError(f"empty answer span {span}")
    t = top_keys.shape[0]
    w = torch.as_tensor(tokens[:t], dtype=torch.long)[:, None, None]
    in_span = (top_keys >= a) & (top_keys < b)
    ctx = context_ids.reshape(-1)
    tok_at = ctx[top_keys.clamp(0, ctx.numel() - 1)]
    hits = (in_span & (tok_at == w)).sum(0)
    return hits.float() / (b - a)


_SCORER = None


def rouge1_recall(answer: str, prediction: str) -> float:
    """ROUGE-1 recall of the reference ``answer`` in ``prediction`` (rouge-score, Porter stemming)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return float(_SCORER.score(answer, prediction)["rouge1"].recall)
