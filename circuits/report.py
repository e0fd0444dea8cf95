"""The circuits run behind ``workbench patch``, as one Python call: baselines, path patching, circuits, activation
patching and, for two tasks, their overlap; tables, a summary and a page written with provenance."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from workbench.core.errors import WorkbenchError
from workbench.core.models import LoadedModel
from workbench.tasks.ioi import make_task
from .circuit import circuit_overlap, extract_circuit, set_overlap
from .patching import activation_patching, task_baseline

TASK_NAMES = ("ioi", "colored_objects")


def patch_circuits(lm: LoadedModel, tasks: Sequence[str] = ("ioi",), n: int = 32, seed: int = 0, k: int = 5,
                   stages: int = 2, overlap_k: int = 10, activation: bool = True,
                   out: str | Path | None = "runs", config: dict | None = None) -> dict:
    """Patch head outputs z on clean/corrupted prompt pairs of each task and extract its circuit.

    For each task (``"ioi"``, ``"colored_objects"``; :func:`workbench.tasks.ioi.make_task` with ``n`` pairs and
    ``seed``): the clean/corrupted logit differences (:func:`~circuits.patching.task_baseline`), path patching
    and a ``stages``-stage circuit of ``k`` heads per stage (:func:`~circuits.circuit.extract_circuit`, Wang
    et al. 2022), and with ``activation`` activation patching of every head (normalised logit difference). With
    two tasks, ``overlap`` compares their top-``overlap_k`` heads (:func:`~circuits.circuit.circuit_overlap`) and
    their circuits (:func:`~circuits.circuit.set_overlap`).

    Writes, unless ``out`` is None, under ``out/<model>/circuits/`` (:func:`workbench.io.runs.model_dir`):
    ``<task>_circuit.csv``, ``<task>_path_stage<s>.parquet``, ``<task>_activation.parquet``, ``summary.json``,
    and the page ``out/<model>/circuits.html``; each carries the run's provenance (``config`` is recorded in it;
    by default the arguments).

    Returns:
        the summary: ``model``, ``tasks`` (per task: baselines, an example pair, ``circuit`` rows, the top
        activation-patching heads), ``overlap`` (two tasks), ``provenance``, and ``out``/``html`` when written.

    Raises:
        WorkbenchError: an unknown task name.
    """
    from workbench.io.provenance import collect, write_csv, write_json, write_parquet
    from workbench.io.runs import model_dir
    from workbench.report.viz import layer_head_heatmap, write_html

    names = list(tasks)
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown or not names:
        raise WorkbenchError(f"unknown task {(unknown or [''])[0]!r}: use ioi, colored_objects or both")
    cfg = config if config is not None else {"command": "patch", "model": lm.spec.name, "tasks": names, "n": n,
                                             "seed": seed, "k": k, "stages": stages, "overlap_k": overlap_k,
                                             "activation": activation}
    prov = collect(lm, cfg, seed)
    d = None if out is None else model_dir(out, lm.spec.name) / "circuits"
    if d is not None:
        d.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": lm.spec.name, **({} if d is None else {"out": str(d)}), "tasks": {}}
    figs, direct, acts, circuits = [], {}, {}, {}
    for name in names:
        t = make_task(name, lm.tokenizer, n=n, seed=seed)
        base = task_baseline(lm, t)
        info = {k2: v for k2, v in base.items() if not k2.endswith("per_pair")}
        info["example"] = t.prompts[0]
        info["example_corrupted"] = t.corrupted_prompts[0]
        circuit, tables = extract_circuit(lm, t, k=k, stages=stages)
        if d is not None:
            write_csv(circuit, d / f"{name}_circuit.csv", prov)
        for s, tab in tables.items():
            if d is not None:
                write_parquet(tab, d / f"{name}_path_stage{s}.parquet", prov)
            figs.append((f"{name}: path patching effect, stage {s}", layer_head_heatmap(tab, "effect", colorscale="RdBu")))
        direct[name], circuits[name] = tables[1], circuit
        info["circuit"] = json.loads(circuit.to_json(orient="records"))
        if activation:
            act = activation_patching(lm, t)
            if d is not None:
                write_parquet(act, d / f"{name}_activation.parquet", prov)
            acts[name] = act
            info["top_activation_patching"] = json.loads(act.nlargest(k, "normalised")[["layer", "head", "normalised"]]
                                                         .to_json(orient="records"))
            figs.append((f"{name}: activation patching (normalised)", layer_head_heatmap(act, "normalised", colorscale="RdBu")))
        result["tasks"][name] = info
    if len(names) == 2:
        a, b = names
        ov = {"path_patching_to_logits": circuit_overlap(direct[a], direct[b], k=overlap_k),
              "circuits": set_overlap(list(zip(circuits[a].layer, circuits[a]["head"])),
                                      list(zip(circuits[b].layer, circuits[b]["head"])))}
        if activation:
            ov["activation_patching"] = circuit_overlap(acts[a], acts[b], k=overlap_k, column="normalised")
        result["overlap"] = ov
    if d is not None:
        # the page sits beside the folder (reports/<model>/circuits.html), sharing the census page's plotly.min.js
        result["html"] = str(d.parent / f"{d.name}.html")
        write_html(figs, d.parent / f"{d.name}.html", f"Circuits: {lm.spec.name}",
                   "Path patching (Wang et al. 2022) and activation patching of head outputs z; normalised logit "
                   "difference.", provenance=prov)
        write_json(result, d / "summary.json", prov)
    result["provenance"] = prov
    return result
