"""``workbench reproduce``: regenerate the reference results in ``reports/`` with one command.

Every analysis runs end to end on the embedded models, through the same CLI commands a user runs, with
``--out ROOT``: the census, sinks, classic head types, circuits (IOI and colored objects), probes, the
retrieval sweep and its masking test, the ACT head search, the three example studies, and on the digits
VLM the vision analysis and the hallucination benchmark (none / VHR / VAR). Nothing reads an earlier
result that this run did not write (each step reads only ``ROOT``), so ``reports/`` is a pure function of
the code and the weights; every file carries its provenance (:mod:`workbench.io.provenance`).

``--quick`` runs every step with small settings (a smoke run for CI: minutes, not hours) and writes to
``runs/reproduce-quick/`` unless ``--out`` says otherwise, so it never overwrites the reference results.
``ROOT/reproduce.json`` lists the steps, their command lines, wall times and exit codes.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import WorkbenchError

TEXT_MODEL = "smollm2-135m"
VLM_MODEL = "digits-vlm"
STUDIES = ("studies/sinks_vs_induction.toml", "studies/ioi_circuit_knockout.toml", "studies/retrieval_heads_needle.toml")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Step:
    name: str
    argv: list[str]


def steps(quick: bool, root: Path, spec_dir: Path | None = None) -> list[Step]:
    """The reproduce steps (CLI argument lists) for the full or the quick run, writing under ``root``."""
    o = ["--out", str(root)]
    m = ["--model", TEXT_MODEL]
    q = quick
    out = [
        Step("census", ["census", *m, *o, "--json", *(["--samples", "2", "--seq-len", "128"] if q else [])]),
        Step("sinks", ["sinks", *m, *o, "--json", *(["--samples", "4", "--long-samples", "2", "--long-len", "128",
                                                      "--ppl-samples", "2", "--ppl-len", "64"] if q else [])]),
        Step("heads", ["heads", *m, *o, "--json", *(["--samples", "1", "--seq-len", "64", "--random", "1",
                                                      "--half-len", "32"] if q else [])]),
        Step("patch", ["patch", *m, *o, "--task", "both", "--json", *(["--n", "4", "--no-activation"] if q else [])]),
    ]
    probes = [("needle", 3), ("needle", 12), ("sink", 6)] if not q else [("needle", 3)]
    out += [Step(f"probe {t} L{layer}", ["probe", *m, *o, "--task", t, "--layer", str(layer), "--json",
                                         *(["--n", "4", "--seq-len", "64"] if q else [])]) for t, layer in probes]
    out += [
        Step("retrieval", ["retrieval", *m, *o, "--json", *(["--lengths", "256", "--depths", "50", "--needles", "1"] if q
                                                            else ["--lengths", "256,512,1024,2048", "--depths",
                                                                  "0,25,50,75,100", "--needles", "3"])]),
        Step("masking-test", ["masking-test", *m, *o, "--json", *(["--ks", "2", "--seeds", "1", "--kinds", "uniform",
                                                                  "--lengths", "256", "--depths", "50", "--needles", "1"]
                                                                 if q else [])]),
        Step("calibrate --search", ["calibrate", *m, *o, "--search", "--json",
                                    *(["--n-cal", "8", "--n-eval", "8", "--max-heads", "2"] if q else [])]),
    ]
    for spec in STUDIES:
        path = str((spec_dir / Path(spec).name) if spec_dir is not None else REPO / spec)
        out.append(Step(f"study {Path(spec).stem}", ["study", "run", path, *o, "--overwrite", "--json"]))
    vm = ["--model", VLM_MODEL]
    out.append(Step("vision", ["vision", *vm, *o, "--json", *(["--images", "2"] if q else [])]))
    for method in (("none",) if q else ("none", "vhr", "var")):
        out.append(Step(f"hallucination {method}", ["hallucination", *vm, *o, "--method", method, "--json",
                                                    *(["--images", "4"] if q else ["--images", "40", "--chair"])]))
    return out


def shrink_spec(raw: dict) -> dict:
    """A study spec cut down for ``--quick``: at most 4 examples of 64 tokens per task, one seed, 100 resamples."""
    r = json.loads(json.dumps(raw))
    r["n_bootstrap"] = min(int(r.get("n_bootstrap", 1000)), 100)
    r["mean_samples"], r["mean_seq_len"] = 1, 64
    for t in r.get("tasks", {}).values():
        t["n"] = min(int(t.get("n", 4)), 4)
        if "seq_len" in t:
            t["seq_len"] = min(int(t["seq_len"]), 64)
        for k in ("lengths", "depths"):
            if k in t:
                t[k] = list(t[k])[:1]
        if "needles" in t:
            t["needles"] = 1
    for hs in r.get("head_sets", {}).values():
        if "seeds" in hs:
            hs["seeds"] = list(hs["seeds"])[:1]
    return r


def _toml(obj: dict) -> str:
    """A minimal TOML writer for study specs (scalars, lists, one level of tables in two sections)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(type(v))

    lines = [f"{k} = {val(v)}" for k, v in obj.items() if not isinstance(v, dict)]
    for sec, tables in obj.items():
        if isinstance(tables, dict):
            for name, t in tables.items():
                lines.append(f"\n[{sec}.{name}]")
                lines += [f"{k} = {val(v)}" for k, v in t.items()]
    return "\n".join(lines) + "\n"


def reproduce(quick: bool = False, root: str | Path | None = None, only: list[str] | None = None,
              run: Callable[[list[str]], int] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run every step (or those whose name starts with one of ``only``) and write ``ROOT/reproduce.json``.

    Returns: ``{"root", "quick", "steps": [{"name", "argv", "rc", "wall_s"}], "wall_s"}``.
    Raises:
        WorkbenchError: a step failed (after the remaining steps ran), naming it.
    """
    import tempfile

    from . import main
    from ..io.provenance import collect
    from ..studies.spec import load_spec

    root = Path(root) if root is not None else Path("runs/reproduce-quick" if quick else "reports")
    run = run or main
    spec_dir = None
    tmp = None
    if quick:
        tmp = tempfile.TemporaryDirectory(prefix="reproduce-specs-")
        spec_dir = Path(tmp.name)
        for s in STUDIES:
            (spec_dir / Path(s).name).write_text(_toml(shrink_spec(load_spec(REPO / s).raw)))
    all_steps = steps(quick, root, spec_dir)
    unknown = [o for o in (only or []) if not any(s.name.startswith(o) for s in all_steps)]
    if unknown:
        if tmp is not None:
            tmp.cleanup()
        raise WorkbenchError(f"--only {unknown[0]!r} matches no step: choose prefixes of "
                             f"{', '.join(s.name for s in all_steps)}")
    todo = [s for s in all_steps if not only or any(s.name.startswith(o) for o in only)]
    done, t_all = [], time.time()
    try:
        for i, s in enumerate(todo):
            log(f"[{i + 1}/{len(todo)}] workbench {' '.join(s.argv)}")
            t0 = time.time()
            rc = run(s.argv)
            done.append({"name": s.name, "argv": s.argv, "rc": rc, "wall_s": round(time.time() - t0, 1)})
            log(f"    {s.name}: exit {rc} in {done[-1]['wall_s']} s")
    finally:
        if tmp is not None:
            tmp.cleanup()
    res = {"root": str(root), "quick": quick, "steps": done, "wall_s": round(time.time() - t_all, 1),
           "provenance": collect(None, {"command": "reproduce", "quick": quick, "only": only})}
    root.mkdir(parents=True, exist_ok=True)
    (root / ("reproduce-quick.json" if quick else "reproduce.json")).write_text(json.dumps(res, indent=1))
    failed = [d["name"] for d in done if d["rc"] != 0]
    if failed:
        raise WorkbenchError(f"reproduce: steps {', '.join(failed)} failed (see the messages above); the other "
                             f"{len(done) - len(failed)} steps wrote {root}")
    return res
