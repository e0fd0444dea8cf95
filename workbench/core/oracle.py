"""The oracle matrix: tiny random-weight models of every supported architecture, workbench vs eager.

For each architecture in :data:`~workbench.core.tiny_models.ARCHITECTURES` we build a two-layer model from a
transformers config (no downloads), save it with a byte-level tokenizer to a directory
(:mod:`workbench.core.tiny_models`), and run a left-padded batch of two
24-token sequences (VLMs: with a small image in each) through

* the workbench: :func:`workbench.load_model` and a :class:`~workbench.core.tracer.Tracer` recording the
  full pattern, received attention, entropy, top key and ``z``, plus the logits of the same forward;
* the oracle: the same checkpoint loaded by transformers with ``attn_implementation="eager"`` and
  ``output_attentions=True``. Its statistics are reduced here from eager's own maps with plain torch
  (:func:`eager_reference`), never with :mod:`workbench.core.stats`; its ``z`` is the input of each layer's
  output projection (a forward pre-hook).

Only real query rows are compared: eager fills fully masked (left-padding) rows with a uniform
distribution, the workbench with zeros. Visibility (padding, causality, each layer's sliding window)
comes from the config and the padding mask and is checked against eager's maps.

:func:`compare` returns the maximum absolute errors of one (architecture, dtype); in bfloat16 it also
measures transformers' own bfloat16 eager against the float32 eager reference, the yardstick of
``tests/test_oracle_matrix.py``. ``benchmarks/oracle_matrix.py`` prints the whole table.

The same-input bfloat16 criterion (:func:`same_input_errors`) lives in :mod:`.oracle_same_inputs`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .oracle_same_inputs import compare_same_inputs, same_input_errors
from .tiny_models import layer_windows, make_inputs, save_tiny, visibility

__all__ = ["compare", "compare_checkpoint", "compare_same_inputs", "eager_attention", "eager_reference", "load_workbench",
           "run_eager", "run_workbench", "same_input_errors"]


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, add: torch.Tensor, scale: float,
                    softcap: float | None = None, sinks: torch.Tensor | None = None):
    """float64 eager attention, the kernels' oracle: scores ``softcap(scale q.k) + add`` over all keys.

    Args:
        q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) (grouped-query heads repeated here); add: additive mask
            broadcastable to (B, Hq, Nq, Nk); sinks: (Hq,) learned sink logits joining each row's softmax.
    Returns:
        (out (B, Hq, Nq, D), lse (B, Hq, Nq), probs (B, Hq, Nq, Nk)) float64; rows that see no key give 0, 0, 0.
    """
    rep = q.shape[1] // k.shape[1]
    kr, vr = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = (q.double() @ kr.transpose(-1, -2)) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    s = s + add
    if sinks is not None:
        col = sinks.double().view(1, -1, 1, 1).expand(s.shape[0], -1, s.shape[2], 1)
        full = torch.cat([s, col], -1)
    else:
        full = s
    lse = torch.logsumexp(full, -1)
    seen = torch.isfinite(s).any(-1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0) * seen[..., None]
    return p @ vr, torch.where(seen, lse, torch.zeros(())), p


def eager_reference(maps: torch.Tensor, vis: torch.Tensor) -> dict[str, torch.Tensor]:
    """Statistics reduced from eager maps (plain torch, independent of :mod:`workbench.core.stats`).

    Args:
        maps: (B, H, N, N) float32 attention probabilities of one layer.
        vis: (B, N, N) bool visibility.
    Returns: ``received`` (B, H, N): mean over the queries that see key k of A[i, k] (0 where none);
        ``entropy`` (B, H, N) nats, -sum_j A_ij log A_ij; ``top_key`` (B, H, N) argmax_j A_ij;
        ``row_sum`` (B, H, N).
    """
    a = maps.float() * vis[:, None]
    count = vis.sum(dim=1).float()[:, None]  # (B, 1, N): queries that see key k
    received = a.sum(dim=2) / count.clamp_min(1.0)
    plogp = torch.where(a > 0, a * torch.log(a.clamp_min(1e-45)), torch.zeros_like(a))
    return {"received": received, "entropy": -plogp.sum(-1), "top_key": a.argmax(-1), "row_sum": a.sum(-1)}


def _out_proj(attn: torch.nn.Module) -> torch.nn.Module:
    for name in ("o_proj", "c_proj", "dense", "out_proj"):
        if hasattr(attn, name):
            return getattr(attn, name)
    raise AttributeError(f"no output projection on {type(attn).__name__}")


def run_eager(path: Path, dtype: torch.dtype, inputs: dict, device: str | torch.device = "cpu") -> dict:
    """The oracle: eager attention with ``output_attentions``. Returns float32 ``maps`` (L, B, H, N, N),
    ``z`` (L, B, N, H, D) from each output projection's input, ``resid_pre`` (L, B, N, d_model) from
    ``output_hidden_states``, ``logits`` (B, N, V) and the config."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from .hooks import attention_module, decoder_layers

    config = AutoConfig.from_pretrained(path)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = auto.from_pretrained(path, dtype=dtype, attn_implementation="eager").to(device).eval()
    text = getattr(model.config, "text_config", None) or model.config
    n_heads = text.num_attention_heads
    zs: list[torch.Tensor] = []
    handles = []
    for layer in decoder_layers(model):
        def pre(module, args, zs=zs):
            x = args[0]
            zs.append(x.detach().float().reshape(*x.shape[:2], n_heads, -1))
        handles.append(_out_proj(attention_module(layer)).register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, output_hidden_states=True, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    hidden = out.hidden_states if out.hidden_states is not None else out.language_model_outputs.hidden_states
    return {"maps": torch.stack([a.float() for a in out.attentions]), "z": torch.stack(zs),
            "resid_pre": torch.stack([h.float() for h in hidden[: len(zs)]]),
            "logits": out.logits.float(), "config": model.config}


def load_workbench(path: Path, dtype: torch.dtype, device: str | torch.device = "cpu"):
    """``load_model(path, device=device, dtype=dtype)``."""
    from .models import load_model

    return load_model(str(path), device=str(device), dtype=dtype)


def run_workbench(path: Path, dtype: torch.dtype, inputs: dict, device: str | torch.device = "cpu") -> dict:
    """The product path: load_model + Tracer (pattern, received, entropy, top_key, z, resid_pre), the logits,
    and ``sink_mass`` (L, B, H, N), each row's learned-sink probability (0 without sinks)."""
    from .attention import attention_hooks
    from .tracer import Tracer

    lm = load_workbench(path, dtype, device)
    n = inputs["input_ids"].shape[1]
    tracer = Tracer(lm, stats=("received", "entropy", "top_key"), pattern_window=(0, n), z=True, resid_pre=True)
    tracer.reset()
    sink_mass: dict[int, torch.Tensor] = {}

    class SinkMass:  # the learned sink's probability exp(sink - lse') per row, from the kernel's lse
        def on_attention(self, call):
            sinks = getattr(call, "sinks", None)
            mass = torch.zeros_like(call.lse) if sinks is None else torch.exp(sinks.float()[None, :, None] - call.lse)
            sink_mass[call.layer] = mass.float()

    with torch.no_grad(), tracer, attention_hooks(SinkMass()):
        out = lm.model(**inputs, use_cache=False)
    tr = tracer.trace(inputs["input_ids"])
    return {"sink_mass": torch.stack([sink_mass[layer] for layer in sorted(sink_mass)]),
            "pattern": tr["pattern"].float(), "received": tr["received"].float(), "entropy": tr["entropy"].float(),
            "top_key": tr["top_key"], "z": tr["z"].float(), "resid_pre": tr["resid_pre"].float(),
            "logits": out.logits.float(), "lm": lm}


def _layer_errors(ours: dict, ref: dict, v: torch.Tensor, real: torch.Tensor, layer: int) -> dict[str, float]:
    """One layer's max |ours - ref| over real query rows (pattern, row sum, received, entropy, z, resid_pre)
    and the largest shortfall of ref's probability at our top key below ref's row maximum."""
    rowmask = real.bool()  # (B, N)
    r = eager_reference(ref["maps"][layer], v)
    a = ref["maps"][layer] * v[:, None]
    p = ours["pattern"][layer]
    sel = rowmask[:, None, :].expand_as(r["entropy"])  # (B, H, N)
    at_ours = a.gather(-1, ours["top_key"][layer].long()[..., None])[..., 0]
    return {"pattern": (p - a).abs()[sel].max().item(),
            "row_sum": (p.sum(-1) - r["row_sum"]).abs()[sel].max().item(),
            "received": (ours["received"][layer] - r["received"]).abs().max().item(),
            "entropy": (ours["entropy"][layer] - r["entropy"]).abs()[sel].max().item(),
            "top_key": (a.max(-1).values - at_ours)[sel].max().item(),
            "z": (ours["z"][layer] - ref["z"][layer]).abs()[rowmask].max().item(),
            "resid_pre": (ours["resid_pre"][layer] - ref["resid_pre"][layer]).abs()[rowmask].max().item()}


def _errors(ours: dict, ref: dict, vis: list[torch.Tensor], real: torch.Tensor) -> tuple[dict, list[dict]]:
    """Errors over the whole model (max over layers, plus ``logits``; ``*_rms``: root mean square over all
    visible pattern entries, real rows of z and logits) and per layer."""
    per_layer = [_layer_errors(ours, ref, v, real, layer) for layer, v in enumerate(vis)]
    e = {k: max(d[k] for d in per_layer) for k in per_layer[0]}
    rows = real.bool()
    e["logits"] = (ours["logits"] - ref["logits"]).abs()[rows].max().item()
    seen = torch.stack(vis)[:, :, None].expand_as(ref["maps"])  # (L, B, H, N, N)
    e["pattern_rms"] = (ours["pattern"] - ref["maps"])[seen].square().mean().sqrt().item()
    e["z_rms"] = (ours["z"] - ref["z"])[:, rows].square().mean().sqrt().item()
    e["logits_rms"] = (ours["logits"] - ref["logits"])[rows].square().mean().sqrt().item()
    return e, per_layer


def _closure(ours: dict, real: torch.Tensor) -> float:
    """Max |sum_j A_ij + p_sink,i - 1| over real rows: the pattern plus the sink's mass is a distribution."""
    total = ours["pattern"].sum(-1) + ours["sink_mass"]  # (L, B, H, N)
    return (total - 1).abs()[:, real.bool()[:, None, :].expand(-1, total.shape[2], -1)].max().item()


_REF32: dict[tuple[str, str], dict] = {}


def compare(arch: str, dtype: torch.dtype, workdir: str | Path, device: str | torch.device = "cpu") -> dict:
    """Run ``arch`` in ``dtype`` through the workbench and eager; return the error table row.

    Returns a dict with ``ours`` (errors of the workbench against eager float32: ``pattern``,
    ``row_sum``, ``received``, ``entropy``, ``top_key`` (probability shortfall at our top key), ``z``,
    ``resid_pre``, ``logits``, and ``pattern_rms``, ``z_rms``, ``logits_rms``), ``eager`` (the same errors of
    eager in ``dtype`` against eager float32; zeros in float32), ``ours_layers`` and ``eager_layers`` (the same
    per decoder layer, without logits and rms), ``eager_leak`` (largest eager probability outside the
    visibility we derive from the config: 0 when that derivation is right), ``closure`` (max over real
    rows of |pattern row sum + the learned sink's probability - 1|), ``window_edge`` (per layer, eager's
    largest probability on the oldest key inside the sliding window; None for full layers), ``windows``
    (per-layer windows from the config), ``spec`` (the loaded model's ModelSpec) and ``observed`` (layers,
    heads, head dim and residual width seen in eager's ``z`` and hidden states).
    """
    path = Path(workdir) / arch
    if not (path / "config.json").exists():
        save_tiny(arch, path)
    from transformers import AutoConfig

    inputs = make_inputs(AutoConfig.from_pretrained(path), device)
    return {"arch": arch, **compare_checkpoint(path, dtype, inputs, device)}


def compare_checkpoint(path: str | Path, dtype: torch.dtype, inputs: dict,
                       device: str | torch.device = "cpu") -> dict:
    """:func:`compare` for any saved checkpoint (e.g. a real model) and inputs (``input_ids``,
    ``attention_mask`` (B, N) and any image inputs); the same row without ``arch``."""
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    real = inputs["attention_mask"].cpu()
    key = (str(path.resolve()), str(device), repr(inputs["input_ids"].tolist()))
    if key not in _REF32:  # the float32 reference serves both dtypes of one architecture
        ref = run_eager(path, torch.float32, inputs, device)
        _REF32[key] = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in ref.items()}
    ref32 = _REF32[key]
    vis = [visibility(real, w) for w in layer_windows(config)]
    leak = max((ref32["maps"][layer] * ~v[:, None])[real.bool()[:, None, :].expand(-1, ref32["maps"].shape[2], -1)]
               .max().item() for layer, v in enumerate(vis))
    windows = layer_windows(config)
    # eager mass on the last key inside each sliding window (> 0: the window is not narrower than we think)
    edge = [float(ref32["maps"][layer].diagonal(offset=-(w - 1), dim1=-2, dim2=-1).max()) if w else None
            for layer, w in enumerate(windows)]
    ours = run_workbench(path, dtype, inputs, device)
    ours = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in ours.items()}
    z = ref32["z"]
    ours_err, ours_layers = _errors(ours, ref32, vis, real)
    row = {"dtype": str(dtype).replace("torch.", ""), "ours": ours_err, "ours_layers": ours_layers,
           "eager_leak": leak, "window_edge": edge, "closure": _closure(ours, real), "windows": windows,
           "spec": ours["lm"].spec,
           "observed": {"n_layers": z.shape[0], "n_heads": z.shape[3], "head_dim": z.shape[4],
                        "d_model": ref32["resid_pre"].shape[-1]}}
    if dtype == torch.float32:
        row["eager"] = {k: 0.0 for k in row["ours"]}
        row["eager_layers"] = [{k: 0.0 for k in d} for d in ours_layers]
    else:
        refd = run_eager(path, dtype, inputs, device)
        refd = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in refd.items()}
        eager_as_ours = {"pattern": refd["maps"] * torch.stack(vis)[:, :, None], "z": refd["z"],
                         "resid_pre": refd["resid_pre"], "logits": refd["logits"]}
        stats = [eager_reference(refd["maps"][layer], v) for layer, v in enumerate(vis)]
        for name in ("received", "entropy", "top_key"):
            eager_as_ours[name] = torch.stack([s[name] for s in stats])
        row["eager"], row["eager_layers"] = _errors(eager_as_ours, ref32, vis, real)
    return row
