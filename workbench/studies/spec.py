"""Study specs: a TOML file naming head sets, ablation kinds and tasks.

Example (``studies/sinks_vs_induction.toml``)::

    name = "sinks-vs-induction"
    model = "smollm2-135m"
    ablations = ["zero", "mean", "uniform"]

    [head_sets.sinks]          # top-k heads by first-token mass (census heads table)
    source = "sinks"
    k = 5

    [head_sets.induction]      # top-k classic head type (workbench heads)
    source = "classic"
    type = "induction"
    k = 5

    [head_sets.random]         # k random heads per seed, never one of the other sets' heads
    source = "random"
    k = 5
    seeds = [0, 1, 2]
    exclude = ["sinks", "induction"]

    [tasks.ioi]
    kind = "ioi"
    n = 32

    [tasks.text]
    kind = "perplexity"
    n = 8
    seq_len = 256

Head-set sources: ``sinks`` (``first_token_mass`` of ``reports/<model>/heads.parquet``),
``retrieval`` (``score`` of a retrieval-head table, ``path`` or the default locations),
``classic`` (``type`` one of previous_token / duplicate_token / induction; read from
``reports/<model>/head_types.parquet`` or computed), ``explicit`` (``heads = [[layer, head], ...]`` or a
head set in the grammar of :mod:`workbench.core.headsets`, e.g. ``heads = "23.3,29.*"``),
``random`` (``k``, ``seeds``, optional ``exclude``). Optional keys everywhere: ``path`` (a table),
``column``. Task kinds: ``ioi`` (logit difference), ``colored_objects`` (logit difference),
``perplexity`` (held-out real text), ``needle`` (needle-in-a-haystack accuracy; needs the
retrieval module). ``ablations`` name registered interventions
(:func:`workbench.interventions.registry.study_interventions`): the ablation kinds ``zero``, ``mean``,
``uniform`` and any other head intervention by its registered name, e.g. ``"act calibration"``. Top-level options: ``seed``, ``n_bootstrap`` (1000), ``ci`` (0.95), ``phase``
(all / prefill / decode), ``mean_samples`` and ``mean_seq_len`` (text the mean ablation averages over,
train split).
"""
from __future__ import annotations

import hashlib
import json
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import WorkbenchError
from ..interventions.registry import study_interventions

SOURCES = ("sinks", "retrieval", "classic", "explicit", "random")
TASK_KINDS = ("ioi", "colored_objects", "perplexity", "needle")


class StudySpecError(WorkbenchError):
    """A study spec is missing a key, has a bad value, or names an unknown head set or task."""


@dataclass
class HeadSetSpec:
    name: str
    source: str
    options: dict


@dataclass
class TaskSpec:
    name: str
    kind: str
    options: dict


@dataclass
class StudySpec:
    """A parsed study (see module docstring); ``raw`` is the TOML as a dict, ``digest`` its hash."""

    name: str
    model: str
    head_sets: list[HeadSetSpec]
    ablations: list[str]
    tasks: list[TaskSpec]
    seed: int = 0
    n_bootstrap: int = 1000
    ci: float = 0.95
    phase: str = "all"
    mean_samples: int = 4
    mean_seq_len: int = 128
    raw: dict = field(default_factory=dict)
    path: str = ""

    @property
    def digest(self) -> str:
        """Hash of the spec content: a resumed run must use the same spec."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:16]


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise StudySpecError(f"{where} needs a `{key}` key")
    return d[key]


# every key a spec may hold, with its type: an unknown key (a typo) or a wrong type is an error, not ignored
TOP_KEYS = {"name": str, "model": str, "description": str, "head_sets": dict, "ablations": list, "tasks": dict,
            "seed": int, "n_bootstrap": int, "ci": float, "phase": str, "mean_samples": int, "mean_seq_len": int}
HEAD_SET_KEYS = {"source": str, "k": int, "type": str, "heads": (list, str), "exclude": list, "seeds": list,
                 "path": str, "column": str}
TASK_KEYS = {"kind": str, "n": int, "seed": int, "seq_len": int, "split": str, "batch_size": int,
             "lengths": list, "depths": list, "n_needles": int, "max_new_tokens": int}


def _check_keys(d: dict, schema: dict, where: str) -> None:
    """Raise StudySpecError for a key not in ``schema`` or a value of the wrong type."""
    unknown = sorted(set(d) - set(schema))
    if unknown:
        raise StudySpecError(f"{where}: unknown keys {unknown}; allowed: {', '.join(schema)}")
    for key, typ in schema.items():
        if key not in d:
            continue
        v = d[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if typ is float else \
            isinstance(v, typ) and not (typ is int and isinstance(v, bool))
        if not ok:
            names = " or ".join("a table" if t is dict else "a " + t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))
            raise StudySpecError(f"{where}.{key} = {v!r} must be {'a number' if typ is float else 'an integer' if typ is int else names}")


def parse_spec(doc: dict, path: str = "<spec>") -> StudySpec:
    """Validate a spec dict (from TOML) into a :class:`StudySpec`.

    Raises:
        StudySpecError: with the offending key named (also unknown keys and values of the wrong type).
    """
    _check_keys(doc, TOP_KEYS, path)
    for sname, opts in dict(doc.get("head_sets", {})).items():
        if isinstance(opts, dict):
            _check_keys(opts, HEAD_SET_KEYS, f"head_sets.{sname}")
    for tname, opts in dict(doc.get("tasks", {})).items():
        if isinstance(opts, dict):
            _check_keys(opts, TASK_KEYS, f"tasks.{tname}")
    name = str(_need(doc, "name", path))
    if not name.replace("-", "").replace("_", "").isalnum():
        raise StudySpecError(f"study name {name!r} may use letters, digits, '-' and '_' only (it names a folder)")
    sets = []
    for sname, opts in dict(_need(doc, "head_sets", path)).items():
        if not isinstance(opts, dict):
            raise StudySpecError(f"head_sets.{sname} must be a table")
        src = _need(opts, "source", f"head_sets.{sname}")
        if src not in SOURCES:
            raise StudySpecError(f"head_sets.{sname}.source = {src!r}: use one of {SOURCES}")
        if src in ("sinks", "retrieval", "classic", "random") and "k" not in opts:
            raise StudySpecError(f"head_sets.{sname} ({src}) needs `k`, the number of heads")
        if src == "classic" and "type" not in opts:
            raise StudySpecError(f"head_sets.{sname} (classic) needs `type`: previous_token, duplicate_token or induction")
        if src == "explicit" and not opts.get("heads"):
            raise StudySpecError(f"head_sets.{sname} (explicit) needs `heads = [[layer, head], ...]` or `heads = \"L.H,...\"`")
        if src == "random":
            for other in opts.get("exclude", []):
                if other not in doc["head_sets"] or other == sname:
                    raise StudySpecError(f"head_sets.{sname}.exclude names {other!r}, which is not another head set")
        sets.append(HeadSetSpec(sname, src, dict(opts)))
    if not sets:
        raise StudySpecError(f"{path} names no head sets")
    ablations = list(doc.get("ablations", ["zero"]))
    known = study_interventions()  # the intervention registry: ablation kinds and the other head interventions
    bad = [a for a in ablations if a not in known]
    if bad:
        raise StudySpecError(f"unknown ablations {bad}: use registered ones {list(known)}")
    tasks = []
    for tname, opts in dict(_need(doc, "tasks", path)).items():
        if not isinstance(opts, dict):
            raise StudySpecError(f"tasks.{tname} must be a table")
        kind = opts.get("kind", tname)
        if kind not in TASK_KINDS:
            raise StudySpecError(f"tasks.{tname}.kind = {kind!r}: use one of {TASK_KINDS}")
        tasks.append(TaskSpec(tname, kind, dict(opts)))
    if not tasks:
        raise StudySpecError(f"{path} names no tasks")
    phase = doc.get("phase", "all")
    if phase not in ("all", "prefill", "decode"):
        raise StudySpecError(f"phase = {phase!r}: use all, prefill or decode")
    return StudySpec(name=name, model=doc.get("model", "smollm2-135m"), head_sets=sets, ablations=ablations,
                     tasks=tasks, seed=int(doc.get("seed", 0)), n_bootstrap=int(doc.get("n_bootstrap", 1000)),
                     ci=float(doc.get("ci", 0.95)), phase=phase, mean_samples=int(doc.get("mean_samples", 4)),
                     mean_seq_len=int(doc.get("mean_seq_len", 128)), raw=doc, path=path)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a TOML study spec.

    Raises:
        StudySpecError: missing file, invalid TOML, or an invalid spec.
    """
    from ..io.files import read_text_file

    p = Path(path)
    if not p.exists():
        raise StudySpecError(f"study spec {p} does not exist (examples: studies/*.toml)")
    try:
        doc = tomllib.loads(read_text_file(p, "study spec", max_bytes=1 << 20))
    except tomllib.TOMLDecodeError as err:
        raise StudySpecError(f"{p} is not valid TOML: {' '.join(str(err).split())}") from None
    return parse_spec(doc, str(p))
