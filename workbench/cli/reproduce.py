"""``workbench reproduce``: regenerate the reference results in ``reports/`` with one command.

Every analysis runs end to end on the embedded models, through the same CLI commands a user runs, with
``--out ROOT``: the census, sinks, classic head types, circuits (IOI and colored objects), probes, the
retrieval sweep and its masking test, the ACT head search, the three example studies; on
``effnet-smollm2-vqa`` (pretrained EfficientNet tower) the vision analysis, easy-VQA accuracy, POPE and
CHAIR with VHR / VAR / visual-sink removal chosen on calibration scenes and the papers' claims; on the
digits VLM (the small test fixture) its hallucination benchmark (none / VHR / VAR) and report. Nothing reads an earlier
result that this run did not write (each step reads only ``ROOT``), so ``reports/`` is a pure function of
the code and the weights; every file carries its provenance (:mod:`workbench.io.provenance`).

``--quick`` runs every step with small settings (a smoke run for CI: minutes, not hours) and writes to
``runs/reproduce-quick/`` unless ``--out`` says otherwise, so it never overwrites the reference results.
``ROOT/reproduce.json`` lists the steps, their command lines, wall times and exit codes, and the files under
``ROOT`` that carry no provenance (:func:`workbench.io.provenance.missing_provenance`; none is expected).

Each :class:`Step` also names the files it writes (glob patterns under ``ROOT``), so the committed tree can be
checked against the step definitions without running them (``tests/test_reproduce_tree.py``): every committed
file is written by some step (or is one of :data:`NOT_REPRODUCED`, each with its reason).
"""
from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import WorkbenchError

TEXT_MODEL = "smollm2-135m"
VLM_MODEL = "digits-vlm"
EFFNET_MODEL = "effnet-smollm2-vqa"
STUDIES = ("studies/sinks_vs_induction.toml", "studies/ioi_circuit_knockout.toml", "studies/retrieval_heads_needle.toml")
REPO = Path(__file__).resolve().parents[2]


#: committed files under reports/ that no step writes, and why (performance reference runs are timings of one
#: machine, made by benchmarks/ scripts, not results of the code and weights)
NOT_REPRODUCED = {
    "benchmarks.md": "performance reference run: python benchmarks/run_all.py --out reports",
    "benchmarks.json": "performance reference run: python benchmarks/run_all.py --out reports",
    "profile_attention.md": "performance reference run: python benchmarks/profile_attention.py",
    "effnet-smollm2-vqa/README.md": "the reader's account of the effnet VLM's files (written from them by hand)",
    "effnet-smollm2-vqa/training.json": "the record of the training run that made the shipped weights: "
                                        "python scripts/train_effnet_vlm.py",
}
#: files every report tree holds besides the steps' results
SHARED = ("plotly.min.js", "reproduce.json", "reproduce-quick.json")


@dataclass
class Step:
    """One reproduce step: a ``workbench`` command line (``argv``), or a script under ``scripts/`` run with
    ``argv`` (``script``), and the files it writes (``writes``: glob patterns relative to ROOT)."""
    name: str
    argv: list[str]
    writes: tuple[str, ...] = field(default_factory=tuple)
    script: str | None = None


def _csv(*names: str) -> tuple[str, ...]:
    """CSV tables and their provenance sidecars."""
    return tuple(x for n in names for x in (n, n + ".provenance.json"))


def steps(quick: bool, root: Path, spec_dir: Path | None = None) -> list[Step]:
    """The reproduce steps (CLI argument lists) for the full or the quick run, writing under ``root``."""
    o = ["--out", str(root)]
    m = ["--model", TEXT_MODEL]
    q = quick
    t, v = TEXT_MODEL + "/", VLM_MODEL + "/"
    out = [
        Step("census", ["census", *m, *o, "--json", *(["--samples", "2", "--seq-len", "128"] if q else [])],
             (t + "heads.parquet", t + "heads.json", *_csv(t + "heads.csv"), t + "summary.json", t + "census.html",
              t + "census_retrieval/*")),
        Step("sinks", ["sinks", *m, *o, "--json", *(["--samples", "4", "--long-samples", "2", "--long-len", "128",
                                                      "--ppl-samples", "2", "--ppl-len", "64"] if q else [])],
             (t + "sinks.json", t + "sinks.html", *_csv(t + "sinks_heads.csv"))),
        Step("heads", ["heads", *m, *o, "--json", *(["--samples", "1", "--seq-len", "64", "--random", "1",
                                                      "--half-len", "32"] if q else [])],
             (t + "head_types.parquet", *_csv(t + "head_types.csv"))),
        Step("patch", ["patch", *m, *o, "--task", "both", "--json", *(["--n", "4", "--no-activation"] if q else [])],
             (t + "circuits/*", t + "circuits.html")),
    ]
    probes = [("needle", 3), ("needle", 12), ("sink", 6)] if not q else [("needle", 3)]
    out += [Step(f"probe {task} L{layer}", ["probe", *m, *o, "--task", task, "--layer", str(layer), "--json",
                                            *(["--n", "4", "--seq-len", "64"] if q else [])],
                 (f"{t}probes/{task}_L{layer}_resid_pre.json",)) for task, layer in probes]
    out += [
        Step("retrieval", ["retrieval", *m, *o, "--json", *(["--lengths", "256", "--depths", "50", "--needles", "1"] if q
                                                            else ["--lengths", "256,512,1024,2048", "--depths",
                                                                  "0,25,50,75,100", "--needles", "3"])],
             tuple(t + "retrieval/" + f for f in ("results.jsonl", "retrieval_heads.parquet", "retrieval_heads.json",
                                                  *_csv("retrieval_heads.csv", "tests.csv"), "summary.json",
                                                  "retrieval.html"))),
        Step("masking-test", ["masking-test", *m, *o, "--json", *(["--ks", "2", "--seeds", "1", "--kinds", "uniform",
                                                                  "--lengths", "256", "--depths", "50", "--needles", "1"]
                                                                 if q else ["--lengths", "1024", "--depths", "0,50,100",
                                                                            "--needles", "2"])],
             (t + "retrieval/masking_decode*",)),
        Step("calibrate --search", ["calibrate", *m, *o, "--search", "--json",
                                    *(["--n-cal", "8", "--n-eval", "8", "--max-heads", "2"] if q
                                      else ["--n-cal", "128", "--n-eval", "300", "--max-heads", "36"])],
             (t + "act/*",)),
    ]
    for spec in STUDIES:
        path = str((spec_dir / Path(spec).name) if spec_dir is not None else REPO / spec)
        name = Path(spec).stem.replace("_", "-")
        out.append(Step(f"study {Path(spec).stem}", ["study", "run", path, *o, "--overwrite", "--json"],
                        (f"{t}studies/{name}/*",)))
    if not q:
        out.append(Step("head types vs TransformerLens", [*o], (t + "head_types_vs_transformer_lens.json",),
                        script="scripts/head_types_vs_transformer_lens.py"))
    vm = ["--model", VLM_MODEL]
    e = EFFNET_MODEL + "/"
    out.append(Step("vision", ["vision", "--model", EFFNET_MODEL, *o, "--json", *(["--images", "2"] if q else ["--images", "16"])],
                    (e + "vision.json", e + "vision.html",
                     *_csv(*(e + f for f in ("vhd_heads.csv", "t_vhd.csv", "visual_sinks.csv", "image_centric_heads.csv",
                                             "image_attention_heads.csv"))))))
    images = "4" if q else "40"
    for method in (("none",) if q else ("none", "vhr", "var")):
        out.append(Step(f"hallucination {method}", ["hallucination", *vm, *o, "--method", method, "--json",
                                                    *(["--images", images] if q else ["--images", images, "--chair"])],
                        (f"{v}hallucination_{method}_random_{images}.json", v + "hallucination/answers-*.jsonl")))
    out.append(Step("digits-vlm report", [*o, *(["--images", "2", "--vision-images", "1", "--ablation-images", "2"]
                                                 if q else [])],
                    (v + "report.json", v + "report.md", v + "hallucination/answers-*.jsonl"),
                    script="scripts/digits_vlm_report.py"))
    eq = ["--n-images", "2", "--n-cal", "2", "--n-cal-chair", "1", "--n-eval", "2", "--n-chair", "1"]
    out.append(Step("effnet-smollm2-vqa report", [*o, "--threads", "2", *(eq if q else [])],
                    tuple(e + f for f in ("tower_check.json", "accuracy.json", "accuracy_answers.parquet", "prior.json",
                                          "calibration.json",
                                          "pope.json", "chair.json", "claims.json", "summary.md",
                                          *_csv("accuracy.csv", "pope.csv", "pope_answers.csv", "chair_captions.csv"))),
                    script="scripts/effnet_vlm_report.py"))
    return out


def unexplained(files: list[str], plan: list[Step]) -> list[str]:
    """Of ``files`` (paths relative to a report root, ``/``-separated), those that no step of ``plan`` writes
    and that are neither :data:`SHARED` nor :data:`NOT_REPRODUCED`."""
    pats = [p for s in plan for p in s.writes] + list(SHARED) + list(NOT_REPRODUCED)
    return [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in pats)]


def _record(record: Path, quick: bool, only, all_steps: list[Step], done: list[dict], t_all: float,
            final: bool) -> dict:
    """Write ``ROOT/reproduce.json`` (after every step, so a killed run keeps the wall times of the steps it
    finished); a partial run (``only``) keeps the other steps' entries of the record as it is now (so partial
    runs side by side add up)."""
    from ..io.provenance import collect, missing_provenance

    root = record.parent
    root.mkdir(parents=True, exist_ok=True)
    res = {"root": str(root), "quick": quick, "finished": final, "steps": done, "wall_s": round(time.time() - t_all, 1),
           "without_provenance": [f.relative_to(root).as_posix() for f in missing_provenance(root)] if final else None,
           "provenance": collect(None, {"command": "reproduce", "quick": quick, "only": only})}
    if only:
        merged = {d["name"]: d for d in (json.loads(record.read_text()).get("steps", []) if record.exists() else [])}
        merged.update({d["name"]: d for d in done})
        res["steps"] = [merged[s.name] for s in all_steps if s.name in merged]
        res["wall_s_steps"] = round(sum(d["wall_s"] for d in res["steps"]), 1)
    record.write_text(json.dumps(res, indent=1))
    return res


def clear_outputs(root: Path, step: Step, plan: list[Step]) -> list[Path]:
    """Delete the files under ``root`` that ``step`` writes (its ``writes`` patterns), so a regeneration starts
    from nothing: a sweep does not resume an earlier run's rows and no stale file of an older run survives.
    Patterns that another step of ``plan`` also writes (shared answer caches) are kept. Returns the paths
    removed."""
    shared = {p for s in plan if s is not step for p in s.writes}
    pats = [p for p in step.writes if p not in shared]
    gone = []
    if root.is_dir():
        for f in sorted(root.rglob("*")):
            rel = f.relative_to(root).as_posix()
            if f.is_file() and any(fnmatch.fnmatchcase(rel, p) for p in pats):
                f.unlink()
                gone.append(f)
    return gone


def _run_script(step: Step) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, str(REPO / step.script), *step.argv], env=env).returncode


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

    Before a step runs, the files it writes are deleted (:func:`clear_outputs`), so each step regenerates its
    results from nothing.

    Returns: ``{"root", "quick", "finished", "steps": [{"name", "argv", "rc", "wall_s"}], "wall_s",
    "without_provenance", "provenance"}`` (also written after every step); with ``only``, ``steps`` also keeps the
    other steps' entries of an earlier ``ROOT/reproduce.json`` (and ``wall_s_steps`` sums them all).
    Raises:
        WorkbenchError: a step failed (after the remaining steps ran), naming it.
    """
    import tempfile

    from . import main
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
    record = root / ("reproduce-quick.json" if quick else "reproduce.json")
    try:
        for i, s in enumerate(todo):
            log(f"[{i + 1}/{len(todo)}] {'python ' + s.script if s.script else 'workbench'} {' '.join(s.argv)}")
            clear_outputs(root, s, all_steps)
            t0 = time.time()
            rc = _run_script(s) if s.script else run(s.argv)
            done.append({"name": s.name, "argv": s.argv, "rc": rc, "wall_s": round(time.time() - t0, 1)})
            log(f"    {s.name}: exit {rc} in {done[-1]['wall_s']} s")
            _record(record, quick, only, all_steps, done, t_all, final=False)
    finally:
        if tmp is not None:
            tmp.cleanup()
    res = _record(record, quick, only, all_steps, done, t_all, final=True)
    failed = [d["name"] for d in done if d["rc"] != 0]
    if failed:
        raise WorkbenchError(f"reproduce: steps {', '.join(failed)} failed (see the messages above); the other "
                             f"{len(done) - len(failed)} steps wrote {root}")
    return res
