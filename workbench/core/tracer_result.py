"""A tracer's result: the one-line errors when it was asked for attention data and recorded none
(:func:`check_recorded`), and what it recorded stacked over layers into a :class:`~workbench.core.trace.Trace`
(:func:`assemble_trace`; :meth:`Tracer.trace <workbench.core.tracer.Tracer.trace>` calls it)."""
from __future__ import annotations

import torch

from .errors import UnsupportedArchitectureError, WorkbenchError
from .trace import Trace


def check_recorded(tracer) -> None:
    """Raise a one-line error when ``tracer`` was asked for attention data and recorded none (or missed
    layers), naming why."""
    wants = bool(tracer.stats or tracer.key_sets or tracer.z or tracer.pattern_window is not None)
    if not wants:
        if not tracer.resid_pre:
            raise WorkbenchError("the tracer was asked to record nothing: pass stats=(...), key_sets, "
                                 "pattern_window, z=True or resid_pre=True")
        return
    if not tracer._seen_layers:
        raise UnsupportedArchitectureError(
            "no attention call reached the tracer: the model does not run its attention through the workbench "
            "kernel (load it with workbench.load_model), or no forward pass ran inside the tracer")
    unseen = [layer for layer in tracer.layers if layer not in tracer._seen_layers]
    if unseen:
        raise WorkbenchError(f"layers {unseen} never ran attention through the workbench kernel (ran: "
                             f"{sorted(tracer._seen_layers)}): trace layers that run, or load the model with "
                             "workbench.load_model")
    if not (tracer._rows or tracer._recv_sum or tracer._pattern):
        if tracer.rows_from > tracer._last_query:
            raise WorkbenchError(f"rows_from={tracer.rows_from} is past the last query position {tracer._last_query}: "
                                 "nothing was recorded; lower rows_from or generate more tokens")
        if tracer.pattern_window is not None and tracer.pattern_window[0] > tracer._last_query:
            raise WorkbenchError(f"pattern window {tracer.pattern_window} starts past the last query position "
                                 f"{tracer._last_query}: nothing was recorded; choose a window inside the sequence")


def assemble_trace(tracer, input_ids: torch.Tensor | None = None) -> Trace:
    """Assemble what ``tracer`` recorded into a :class:`Trace` (axes documented in :mod:`workbench.core.trace`);
    raises as :meth:`Tracer.trace <workbench.core.tracer.Tracer.trace>` says (:func:`check_recorded`)."""
    tracer._check_recorded()
    tr = Trace(meta={"model": tracer.lm.spec.name, "layers": tracer.layers, "heads": tracer.heads,
                     "n_layers": tracer.lm.spec.n_layers, "n_heads": tracer.lm.spec.n_heads})
    for name, per_layer in tracer._rows.items():
        stacked = torch.stack([torch.cat(per_layer[layer], dim=-1 if name != "z" else 1).cpu() for layer in tracer.layers])
        dims = ("layer", "batch", "query", "head", "d_head") if name == "z" else ("layer", "batch", "head", "query")
        tr.add(name, stacked.cpu(), dims)
    if tracer._recv_sum:
        # per layer to the CPU first: with a device_map, layers sit on different devices
        s = torch.stack([tracer._recv_sum[layer].cpu() for layer in tracer.layers])
        c = torch.stack([tracer._recv_count[layer].cpu() for layer in tracer.layers])
        tr.add("received", (s / c.clamp_min(1.0)).cpu(), ("layer", "batch", "head", "key"))
        if tracer.sample_rows is not None:
            bound = torch.stack([tracer._received_bound(layer).cpu() for layer in tracer.layers])[:, :, 0]
            tr.add("received_bound", bound, ("layer", "batch", "key"))
            tr.meta["received_sampling"] = {
                "rows": tracer.sample_rows, "seed": tracer.seed, "delta": tracer.bound_delta,
                "bound": "Hoeffding-Serfling (Bardenet & Maillard 2015, Cor. 2.5), two-sided, per entry; "
                         "calls combined as strata (union bound)"}
    if tracer._pattern:
        tr.add("pattern", torch.stack([torch.cat(tracer._pattern[layer], dim=2).cpu() for layer in tracer.layers]),
               ("layer", "batch", "head", "query", "key"))
        tr.meta["query_start"] = tracer.pattern_window[0]
    if tracer.rows_from:
        tr.meta["rows_from"] = tracer.rows_from
    if tracer._resid:
        tr.add("resid_pre", torch.stack([torch.cat(tracer._resid[layer], dim=1).cpu() for layer in tracer.layers]),
               ("layer", "batch", "pos", "d_model"))
    if input_ids is not None:
        tr.add("tokens", input_ids.detach().long().cpu(), ("batch", "pos"))
        tr.meta["token_strings"] = [tracer.lm.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids]
    return tr
