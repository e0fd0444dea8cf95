"""The bfloat16 criterion isolated from residual-stream drift: at every attention call of one forward, the
workbench's pattern and transformers' own bfloat16 eager attention, both on the q, k, v the layer received,
against the same eager function in float32 (:func:`same_input_errors`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from .tiny_models import make_inputs, save_tiny


def _eager_function(module: torch.nn.Module) -> Callable:
    """transformers' own ``eager_attention_forward`` of the module's architecture (its modeling file)."""
    import sys

    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise AttributeError(f"{type(module).__module__} has no eager_attention_forward")
    return fn


def _eager_mask(call: Any, dtype: torch.dtype) -> torch.Tensor:
    """The call's additive mask (B or 1, 1, Nq, Nk) as transformers' eager attention takes it: 0 where visible,
    finite biases kept, the dtype's most negative finite value where hidden."""
    m = call.additive_mask()
    return torch.where(torch.isneginf(m), torch.full_like(m, torch.finfo(dtype).min), m).to(dtype)


def same_input_errors(path: str | Path, dtype: torch.dtype, inputs: dict,
                      device: str | torch.device = "cpu") -> list[dict[str, float]]:
    """Per decoder layer, the bfloat16 criterion isolated from residual-stream drift.

    The checkpoint runs once through the workbench in ``dtype``. At every attention call we take the q, k, v
    the layer received and compare, over real query rows (the padding mask's real tokens):

    * ``ours``: the workbench's probabilities :meth:`AttentionCall.probs` (float32 from the kernel's lse);
    * ``eager``: transformers' own ``eager_attention_forward`` of the architecture on the same q, k, v in
      ``dtype`` (its attention weights, as ``output_attentions`` returns them);
    * the reference: the same eager function on q, k, v upcast to float32.

    Both bfloat16 paths therefore see identical inputs in every layer, not only in layer 0, and the
    comparison measures the attention arithmetic alone.

    Returns: one dict per layer: ``ours`` and ``eager`` (max |A - A_ref32|), ``ours_rms`` and ``eager_rms``
    (root mean square over visible entries of real rows), ``row_sum`` (max |sum_j A_ours,ij + p_sink,i - 1|).
    """
    from .attention import attention_hooks
    from .models import load_model

    lm = load_model(str(path), device=str(device), dtype=dtype)
    real = inputs["attention_mask"].to(device).bool()  # (B, N)
    rows: dict[int, dict[str, float]] = {}

    class SameInputs:
        def on_attention(self, call):
            fn = _eager_function(call.module)
            kw = {"scaling": call.scale, "dropout": 0.0}
            if call.softcap is not None:
                kw["softcap"] = call.softcap
            ref = fn(call.module, call.query.float(), call.key.float(), call.value.float(),
                     _eager_mask(call, torch.float32), **kw)[1].float()
            low = fn(call.module, call.query, call.key, call.value, _eager_mask(call, call.query.dtype),
                     **kw)[1].float()
            ours = call.probs()
            vis = call.visible().expand_as(ours) & real[:, None, :, None] & real[:, None, None, :]
            sel = real[:, None, :].expand(ours.shape[:3])
            sink = 0.0 if call.sinks is None else torch.exp(call.sinks.float()[None, :, None] - call.lse)
            rows[call.layer] = {
                "ours": (ours - ref).abs()[vis].max().item(), "eager": (low - ref).abs()[vis].max().item(),
                "ours_rms": (ours - ref)[vis].square().mean().sqrt().item(),
                "eager_rms": (low - ref)[vis].square().mean().sqrt().item(),
                "row_sum": ((ours * vis).sum(-1) + sink - 1).abs()[sel].max().item()}
            return None

    with torch.no_grad(), attention_hooks(SameInputs()):
        lm.model.base_model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False)  # no LM head
    return [rows[layer] for layer in sorted(rows)]


def compare_same_inputs(arch: str, dtype: torch.dtype, workdir: str | Path,
                        device: str | torch.device = "cpu") -> list[dict[str, float]]:
    """:func:`same_input_errors` for the tiny model of ``arch`` (built under ``workdir`` if missing)."""
    from transformers import AutoConfig

    path = Path(workdir) / arch
    if not (path / "config.json").exists():
        save_tiny(arch, path)
    return same_input_errors(path, dtype, make_inputs(AutoConfig.from_pretrained(path), device), device)
