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

import contextlib
from typing import Iterable, Iterator, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.hooks import decoder_layers, residual_pre_hooks
from ..core.models import LoadedModel
from ..interventions.registry import InterventionSpec, Param

COLUMNS = ["sample", "layer", "pos", "dim", "token", "value", "ratio_to_median", "kind"]
OUTLIER_SHARE = 0.06  # token share from which a (layer, dim) counts as an outlier feature (module docstring)


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
    """Forward (pre-)hooks on every decoder layer that collect massive entries of each call."""

    def __init__(self, lm: LoadedModel, threshold: float, ratio: float, include_final: bool):
        self.model, self.layers = lm.model, decoder_layers(lm.model)
        self.threshold, self.ratio, self.include_final = threshold, ratio, include_final
        self.found: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.tokens = 0  # tokens (batch x positions) seen by the first layer: the denominator of token shares
        self._handles: list = []

    def _record(self, layer: int, x: torch.Tensor) -> None:
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
    if samples is not None:
        if samples.dim() == 1:
            samples = samples[None]
        batches = [{"input_ids": samples[a: a + batch_size]} for a in range(0, samples.shape[0], batch_size)]
    else:
        batches = list(forward_inputs)
    rows: list[dict] = []
    offset = 0
    rec = _Recorder(lm, threshold, ratio, include_final)
    with rec:
        for kw in tqdm(batches, desc="massive activations", disable=not progress):
            rec.found = []
            kw = dict(kw)
            kw.setdefault("use_cache", False)
            lm.model(**kw)
            ids = kw.get("input_ids")
            nb = 1
            for layer, idx, val, rel in rec.found:
                nb = max(nb, int(idx[:, 0].max()) + 1 if len(idx) else 1)
                for (b, p, d), v, r in zip(idx.tolist(), val.tolist(), rel.tolist()):
                    row_ids = ids[b].tolist() if ids is not None else None
                    rows.append({"sample": offset + b, "layer": layer, "pos": p, "dim": d,
                                 "token": _token_text(lm.tokenizer, row_ids, p), "value": v, "ratio_to_median": r,
                                 "kind": "massive"})
            if ids is not None:
                nb = ids.shape[0]
            elif "inputs_embeds" in kw:
                nb = kw["inputs_embeds"].shape[0]
            offset += nb
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(n_samples=offset, n_layers=lm.spec.n_layers, threshold=threshold, ratio=ratio, n_tokens=rec.tokens)
    return classify(df, rec.tokens, outlier_share)


def classify(df: pd.DataFrame, n_tokens: int | None = None, outlier_share: float = OUTLIER_SHARE) -> pd.DataFrame:
    """Label every entry ``massive`` or ``outlier_feature`` by the token-share rule (module docstring).

    Args:
        df: entries found by :func:`massive_activations` (columns as :data:`COLUMNS`; ``kind`` is overwritten).
        n_tokens: tokens seen (all samples and positions); default ``df.attrs["n_tokens"]``.
        outlier_share: a (layer, dim) passing the criterion on at least this share of the tokens is an outlier
            feature (default :data:`OUTLIER_SHARE`).
    Returns:
        the same DataFrame with ``kind`` set and ``df.attrs["outlier_share"]``.
    Raises:
        ValueError: no token count to compute shares with.
    """
    n_tokens = n_tokens if n_tokens is not None else df.attrs.get("n_tokens")
    if not n_tokens:
        if df.empty:
            n_tokens = 1
        else:
            raise ValueError("classify needs the number of tokens seen (n_tokens, or df.attrs['n_tokens'])")
    df = df.copy()
    share = df.groupby(["layer", "dim"])["pos"].transform("size") / n_tokens
    df["kind"] = ["outlier_feature" if s >= outlier_share else "massive" for s in share]
    df.attrs.update(n_tokens=n_tokens, outlier_share=outlier_share)
    return df


def _massive_only(df: pd.DataFrame) -> pd.DataFrame:
    """The entries labelled ``massive`` (all entries of a DataFrame without a ``kind`` column)."""
    return df[df["kind"] == "massive"] if "kind" in df.columns else df


def outlier_features(df: pd.DataFrame) -> pd.DataFrame:
    """The outlier feature dimensions (entries labelled ``outlier_feature``), one row per (layer, dim).

    Returns:
        DataFrame (layer, dim, token_share, entries, samples, median_abs_value, max_abs_value, top_tokens),
        ``token_share`` the fraction of all tokens on which the entry passes the criterion, ``top_tokens``
        the five most frequent tokens; sorted by dim, then layer.
    """
    cols = ["layer", "dim", "token_share", "entries", "samples", "median_abs_value", "max_abs_value", "top_tokens"]
    sub = df[df["kind"] == "outlier_feature"] if "kind" in df.columns else df.iloc[:0]
    if sub.empty:
        return pd.DataFrame(columns=cols)
    n_tokens = df.attrs.get("n_tokens") or 1
    out = sub.groupby(["layer", "dim"]).agg(
        entries=("pos", "size"), samples=("sample", "nunique"),
        median_abs_value=("value", lambda v: float(v.abs().median())), max_abs_value=("value", lambda v: float(v.abs().max())),
        top_tokens=("token", lambda t: list(t.value_counts().index[:5]))).reset_index()
    out["token_share"] = out["entries"] / n_tokens
    return out[cols].sort_values(["dim", "layer"]).reset_index(drop=True)


def massive_dims(df: pd.DataFrame, min_fraction: float = 0.5) -> list[int]:
    """The fixed massive dimensions: dims with a massive entry in at least ``min_fraction`` of the samples.

    Args:
        df: output of :func:`massive_activations` (uses ``df.attrs["n_samples"]`` when present).
        min_fraction: share of samples (0..1) in which the dim must carry a massive entry at some layer.
    Returns:
        dims sorted by how many samples carry them (most first).
    """
    n = df.attrs.get("n_samples") or df["sample"].nunique()
    df = _massive_only(df)
    if df.empty:
        return []
    per_dim = df.groupby("dim")["sample"].nunique().sort_values(ascending=False)
    return [int(d) for d, c in per_dim.items() if c / n >= min_fraction]


def onset_layer(df: pd.DataFrame, dims: Iterable[int] | None = None, min_fraction: float = 0.5) -> int | None:
    """First layer whose residual stream carries massive entries (on ``dims``) in >= ``min_fraction`` of samples."""
    n = df.attrs.get("n_samples") or df["sample"].nunique()
    df = _massive_only(df)
    if df.empty:
        return None
    sub = df if dims is None else df[df["dim"].isin(list(dims))]
    per_layer = sub.groupby("layer")["sample"].nunique()
    ok = [int(layer) for layer, c in per_layer.items() if c / n >= min_fraction]
    return min(ok) if ok else None


def layer_summary(df: pd.DataFrame, n_layers: int | None = None) -> pd.DataFrame:
    """Per layer: samples with massive entries (share), entries, largest |value|, median ratio, dims seen
    (massive entries only; outlier features are in :func:`outlier_features`)."""
    n = df.attrs.get("n_samples") or max(1, df["sample"].nunique())
    L = n_layers if n_layers is not None else df.attrs.get("n_layers", int(df["layer"].max()) if len(df) else 0)
    df = _massive_only(df)
    out = []
    for layer in range(L + 1):
        sub = df[df["layer"] == layer]
        out.append({"layer": layer, "sample_share": sub["sample"].nunique() / n, "entries": len(sub),
                    "max_abs_value": float(sub["value"].abs().max()) if len(sub) else 0.0,
                    "median_ratio": float(sub["ratio_to_median"].median()) if len(sub) else 0.0,
                    "dims": sorted({int(d) for d in sub["dim"]})})
    return pd.DataFrame(out)


def token_summary(df: pd.DataFrame, layer: int | None = None) -> pd.DataFrame:
    """Which tokens carry massive entries: per (token, dim) the count of (sample, pos) hits, mean value, positions.

    Args:
        layer: restrict to one layer (default: the layer with the most entries).
    """
    df = _massive_only(df)
    if df.empty:
        return pd.DataFrame(columns=["token", "dim", "count", "mean_value", "mean_ratio", "positions"])
    if layer is None:
        layer = int(df["layer"].value_counts().idxmax())
    sub = df[df["layer"] == layer]
    g = sub.groupby(["token", "dim"])
    out = g.agg(count=("sample", "size"), mean_value=("value", "mean"), mean_ratio=("ratio_to_median", "mean"),
                positions=("pos", lambda p: sorted(set(int(x) for x in p))[:10])).reset_index()
    return out.sort_values("count", ascending=False).reset_index(drop=True)


def massive_means(df: pd.DataFrame, layer: int) -> dict[int, float]:
    """Mean signed value of the massive entries of each dim at ``layer`` (Sun et al.'s "set to mean").

    A dim found massive only at other layers gets its mean over all layers. Massive entries only.
    """
    df = _massive_only(df)
    means = {int(d): float(v) for d, v in df.groupby("dim")["value"].mean().items()}
    sub = df[df["layer"] == layer]
    means.update({int(d): float(v) for d, v in sub.groupby("dim")["value"].mean().items()})
    return means


class MassiveActivationEdit:
    """Set the massive entries entering ``layer`` to zero or to their mean (Sun et al. 2024, Table 3).

    A forward pre-hook on decoder layer ``layer`` finds the entries of ``dims`` that are massive in the
    incoming residual stream (same criterion as :func:`find_massive`) and overwrites them:
    ``mode="zero"`` sets them to 0, ``mode="mean"`` to ``means[dim]`` (their mean over many sequences,
    see :func:`massive_means`). Everything else is left as it is. Use as a context manager::

        with MassiveActivationEdit(lm, layer=12, dims=[507], mode="zero"):
            nll = lm.model(ids, labels=ids).loss

    Args:
        lm: the model.
        layer: decoder layer whose input is edited (the onset layer of the massive activations).
        dims: residual dimensions to edit.
        mode: ``"zero"`` or ``"mean"``.
        means: dim -> value, required for ``"mean"``.
        threshold, ratio: the massive-activation criterion.

    Raises:
        ValueError: unknown mode, or ``mean`` without a mean per dim.
    """

    def __init__(self, lm: LoadedModel, layer: int, dims: Iterable[int], mode: str = "zero",
                 means: dict[int, float] | None = None, threshold: float = 100.0, ratio: float = 1000.0):
        if mode not in ("zero", "mean"):
            raise ValueError(f"unknown mode {mode!r}: use 'zero' or 'mean'")
        lm.spec.check_head(layer)
        self.lm, self.layer, self.dims, self.mode = lm, layer, sorted(set(int(d) for d in dims)), mode
        self.means = means or {}
        if mode == "mean" and any(d not in self.means for d in self.dims):
            raise ValueError(f"mean mode needs a mean for every dim {self.dims}: use massive_means(df, layer)")
        self.threshold, self.ratio = threshold, ratio
        self.edited = 0  # entries overwritten so far
        self._handle = None

    def _edit(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().float().abs()
        med = a.flatten(1).median(dim=1).values.clamp_min(1e-12)
        x = x.clone()
        for d in self.dims:
            hit = (a[..., d] > self.threshold) & (a[..., d] / med[:, None] > self.ratio)
            self.edited += int(hit.sum())
            x[..., d] = torch.where(hit, torch.as_tensor(0.0 if self.mode == "zero" else self.means[d], dtype=x.dtype),
                                    x[..., d])
        return x

    def __enter__(self) -> "MassiveActivationEdit":
        self._handle, = residual_pre_hooks(self.lm.model, self._edit, [self.layer])
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def validate(self, spec) -> "MassiveActivationEdit":
        """Check the layer against the model (HeadIndexError). Returns self."""
        spec.check_head(self.layer)
        return self

    @contextlib.contextmanager
    def applied(self) -> Iterator["MassiveActivationEdit"]:
        with self:
            yield self


def _build_edit(lm: LoadedModel, heads, mode: str = "zero", samples: int = 4) -> MassiveActivationEdit:
    """The edit at the onset layer of the massive dims found on ``samples`` 256-token windows of prose.

    Raises:
        WorkbenchError: the model shows no massive activations on that text.
    """
    from ..core.errors import WorkbenchError
    from ..tasks.text import token_windows

    df = massive_activations(lm, token_windows(lm.tokenizer, min(256, lm.spec.context_window or 256), int(samples)),
                             progress=False)
    dims = massive_dims(df)
    layer = onset_layer(df, dims)
    if not dims or layer is None:
        raise WorkbenchError(f"{lm.spec.name} shows no massive activations on prose, so there is nothing to edit")
    return MassiveActivationEdit(lm, layer, dims, mode, massive_means(df, layer))


# The massive-activation edit in the intervention registry (residual stream, no heads).
# (listed in workbench.interventions.registry.INTERVENTIONS)
INTERVENTION = InterventionSpec(
    "massive activation edit",
    "Sun et al. 2024: set the massive residual entries at their onset layer to zero or their mean (heads unused)",
    _build_edit,
    (Param("mode", "choice", "zero", ("zero", "mean"), help="zero: 0; mean: their mean over prose"),
     Param("samples", "int", 4, low=1, high=32, help="256-token windows of prose used to find them")),
    scope="residual")


def intervention_perplexity(lm: LoadedModel, df: pd.DataFrame, heldout: torch.Tensor, dims: Iterable[int] | None = None,
                            layer: int | None = None, batch_size: int = 4, progress: bool = True) -> pd.DataFrame:
    """Sun et al.'s intervention test: perplexity on held-out text with the massive entries kept, zeroed, or
    set to their mean.

    Args:
        df: massive activations found on *other* text (the means come from it), :func:`massive_activations`.
        heldout: (n, N) token ids of held-out text (e.g. ``token_windows(..., split="heldout")``).
        dims: the massive dims (default :func:`massive_dims`).
        layer: the layer whose input is edited (default the onset layer, :func:`onset_layer`).
    Returns:
        DataFrame with rows ``baseline``, ``zero``, ``mean`` and columns ``intervention``, ``layer``, ``dims``,
        ``perplexity``, ``nll``, ``tokens``, ``entries_edited``.
    Raises:
        ValueError: no massive activations in ``df``.
    """
    from ..tasks.perplexity import perplexity

    dims = list(dims) if dims is not None else massive_dims(df)
    layer = onset_layer(df, dims) if layer is None else layer
    if not dims or layer is None:
        raise ValueError("no massive activations were found, so there is nothing to intervene on")
    rows = []
    for mode in ("baseline", "zero", "mean"):
        edit = None
        if mode == "baseline":
            res = perplexity(lm, heldout, batch_size, progress, desc="perplexity: baseline")
        else:
            edit = MassiveActivationEdit(lm, layer, dims, mode, massive_means(df, layer))
            with edit:
                res = perplexity(lm, heldout, batch_size, progress, desc=f"perplexity: {mode}")
        rows.append({"intervention": mode, "layer": layer, "dims": dims, **res,
                     "entries_edited": edit.edited if edit else 0})
    return pd.DataFrame(rows)
