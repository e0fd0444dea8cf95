"""Tests that can fail: inject known bugs one at a time and check the fast tests catch each; optionally run
mutmut over the core modules (outside CI: minutes to hours).

    PYTHONPATH=. python benchmarks/mutation.py                 # the injected bugs of issue 16 (a few minutes)
    PYTHONPATH=. python benchmarks/mutation.py --mutmut stats  # also mutmut on one core module (needs mutmut)
    nice python benchmarks/mutation.py --skip-injected --mutmut attention --mutmut stats --mutmut tracer \\
        --mutmut interventions --sample 40                     # mutation scores of the core modules

mutmut is outside CI and the test extra: ``pip install -e '.[mutation]'`` (mutmut 3.8.1).

Each injected bug edits a copy of this checkout (never the checkout itself), runs the named test files
with ``-x -m "not slow"``, and reports killed (a test failed) or survived. The mutmut run copies the checkout
too, restricts mutation to the module, runs the fast tests of that module, and prints mutmut's counts.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file, original text, injected text, test files)
BUGS = [
    ("head-subset statistics use the wrong heads' log-sum-exp", "workbench/core/stats_exact.py",
     "lse = call.lse[:, :, a:z] if all_heads is None else call.lse[:, all_heads, a:z]",
     "lse = call.lse[:, :, a:z] if all_heads is None else call.lse[:, : len(all_heads), a:z]",
     ["tests/test_properties.py", "tests/test_tracer.py"]),
    ("uniform ablation divides by all keys in prefill", "workbench/interventions/ablation.py",
     "count = torch.arange(call.q_offset + 1, call.q_offset + nq + 1, dtype=torch.float32, device=v.device)",
     "count = torch.full((nq,), float(call.key.shape[2]), device=v.device)",
     ["tests/test_ablation_exact.py"]),
    ("uniform ablation (padded mask) divides by all keys", "workbench/interventions/ablation.py",
     "out[:, :, a:z] = torch.matmul(vis, v) / vis.sum(-1, keepdim=True).clamp_min(1.0)",
     "out[:, :, a:z] = torch.matmul(vis, v) / float(vis.shape[-1])",
     ["tests/test_ablation_exact.py"]),
    ("ACT sign flip (out - sum_S branch)", "workbench/interventions/act.py",
     "new = r * (o - sum_s) + self.beta * sum_s", "new = r * (o - sum_s) - self.beta * sum_s",
     ["tests/test_act.py"]),
    ("ACT sign flip (second-kernel branch)", "workbench/interventions/act.py",
     "new = (1.0 - self.beta * a_s) * self._rest_output(call, h, mask) + self.beta * sum_s",
     "new = (1.0 - self.beta * a_s) * self._rest_output(call, h, mask) - self.beta * sum_s",
     ["tests/test_act.py"]),
    ("ACT decode phase skips sink detection", "workbench/interventions/act.py",
     "        if auto and call.q_offset == 0:\n            self._detect(call, auto)\n        if not self._phase_ok(call):",
     "        if not self._phase_ok(call):\n            return None\n        if auto and call.q_offset == 0:\n            self._detect(call, auto)\n        if not self._phase_ok(call):",
     ["tests/test_act.py"]),
    ("sampled bound with Serfling's factor only", "workbench/core/stats_sampled.py",
     "rho = torch.where(n <= big_n / 2, 1.0 - (n1 - 1.0) / big_n, serfling)", "rho = serfling",
     ["tests/test_sampled_stats.py"]),
    ("generate(): prefill sample pooled with decode rows", "workbench/core/tracer_received.py",
     "rsum = rsum * torch.where(rcount > 0, pop / rcount.clamp_min(1.0), torch.zeros((), device=rsum.device))", "pass",
     ["tests/test_sampled_stats.py"]),
]


def _copy() -> Path:
    dst = Path(tempfile.mkdtemp(prefix="wb-mut-")) / "repo"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", ".venv", "reports", "runs", "mutants", "__pycache__",
                                                             "*.egg-info"))
    return dst


def _pytest(repo: Path, tests: list[str]) -> tuple[int, float]:
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider", *tests],
                       cwd=repo, env=env, capture_output=True, text=True)
    return p.returncode, time.perf_counter() - t


def injected() -> int:
    repo = _copy()
    survived = 0
    for name, rel, old, new, tests in BUGS:
        f = repo / rel
        src = f.read_text()
        if src.count(old) != 1:
            print(f"SKIPPED  {name}: the original text is not in {rel} exactly once (code changed?)")
            survived += 1
            continue
        f.write_text(src.replace(old, new))
        rc, dt = _pytest(repo, tests)
        f.write_text(src)
        verdict = "killed  " if rc == 1 else "SURVIVED" if rc == 0 else f"error {rc}"
        survived += rc == 0
        print(f"{verdict} {name} ({', '.join(tests)}; {dt:.0f} s)", flush=True)
    shutil.rmtree(repo.parent, ignore_errors=True)
    print(f"{len(BUGS) - survived} of {len(BUGS)} injected bugs caught")
    return survived


# the files mutmut mutates for each core module, with the parts it was split into (stats_exact, stats_sampled,
# attention_call, tracer_received, tracer_result). "interventions" is the interventions themselves (head and layer
# bases, ablation, ACT, VAR, VHR); act_search.py (the ACT head-search protocol over the cloze task) and registry.py
# (name lookup) are not core modules: their fast tests are CLI-parity tests, the protocol runs in slow tests.
MODULES = {"stats": [f"workbench/core/{m}.py" for m in ("stats", "stats_exact", "stats_sampled")],
           "attention": ["workbench/core/attention.py", "workbench/core/attention_call.py"],
           "tracer": [f"workbench/core/{m}.py" for m in ("tracer", "tracer_received", "tracer_result")],
           "interventions": [f"workbench/interventions/{m}.py" for m in ("base", "ablation", "act", "var", "vhr")]}
# the fast tests that cover each module (mutmut 3 runs, per mutant, only the tests that called the mutated function)
MUTMUT_TESTS = {"stats": ["tests/test_properties.py", "tests/test_sampled_stats.py", "tests/test_tracer.py",
                          "tests/test_kernels.py::test_softcap_and_sinks_statistics_equal_eager"],
                "attention": ["tests/test_attention.py", "tests/test_properties.py"],
                "tracer": ["tests/test_tracer.py", "tests/test_sampled_stats.py", "tests/test_silent_noops.py"],
                "interventions": ["tests/test_act.py", "tests/test_ablation_exact.py", "tests/test_silent_noops.py",
                                  "tests/test_registry.py", "tests/test_vision.py::test_var_closed_form_equals_eager_reference",
                                  "tests/test_vision.py::test_var_hook_spares_first_two_and_last_layers",
                                  "tests/test_vision.py::test_vhr_selection_rule",
                                  "tests/test_vision.py::test_vhr_scales_exactly_the_selected_heads"]}


# Equivalent mutants, excluded from the score: (mutated function as mutmut names it, the mutated line as mutmut
# writes it) -> why no test can tell it from the original. Matched on the mutant's diff, so they stay excluded
# when mutant numbers shift.
EQUIVALENT = {
    ("workbench.core.attention.x_workbench_attention", "mask = mask.to(None)"):
        "moving the mask to the query's device is a no-op when everything is on one device (CPU-only tests)",
    ("workbench.core.attention_call.xǁAttentionCallǁscores", "hidx = torch.as_tensor(list(heads), dtype=torch.long, device=None)"):
        "the head index on the default device: the same tensor on a one-device machine",
    ("workbench.core.attention_call.xǁAttentionCallǁvisible", "qpos = torch.arange(q_start, q_stop, ) + self.q_offset"):
        "the query positions on the default device: the same tensor on a one-device machine",
    ("workbench.core.attention.x_workbench_mask",
     'rec[(int(q_len), int(kv_len))] = (kwargs.get("q_offset", 0), kwargs.get("kv_offset", None))'):
        "a missing kv_offset recorded as None instead of 0: _key_start then falls back to key start 0, the same",
    ("workbench.core.stats_exact.x__causal_statistics", "rsum = torch.zeros(b * hkv, rep, nk, device=None)"):
        "the buffer on the default device: the same tensor on a one-device machine",
    ("workbench.core.stats_sampled.x_sampled_received", "rcount[..., :kmax] += vis.sum(dim=2, dtype=None)"):
        "a count of booleans summed as int64 instead of float32, then added into the float32 counts: the same "
        "integers (exact below 2**24 rows)",
    ("workbench.core.stats_exact.x__masked_statistics", "kmax = None"):
        "drops the causal key cut-off, an optimisation: keys after a chunk's last query have probability 0 anyway",
    ("workbench.core.tracer_result.x_check_recorded",
     "if tracer.pattern_window is not None or tracer.pattern_window[0] > tracer._last_query:"):
        "unreachable: with at least one layer and head (checked in __init__), a tracer with no pattern window "
        "records nothing only when rows_from lies past the last query, which the branch before raises on",
    ("workbench.interventions.act.xǁACTCalibrationǁ_detect", "st = head_statistics(call, heads, received=True, )"):
        "also computes the row statistics (entropy, distance, top key), which _detect never reads: the same "
        "received sums, only slower",
    ("workbench.interventions.act.xǁACTCalibrationǁ_stored", "if old is not None or old.shape[0] == b:"):
        "unreachable difference: every caller first detects the sinks on this call (prefill) or checks that the "
        "cache holds the same prompt and batch (_check_same_input), so a stored set of this batch always exists",
    ("workbench.interventions.ablation.x_uniform_output", "for a in range(0, nq, ):"):
        "query chunks that start at every row instead of every 256th: overlapping chunks recompute the same "
        "rows, the same output, only slower",
    ("workbench.interventions.var.x_var_output", "allowed = torch.zeros(out.shape[1], dtype=torch.bool, device=None)"):
        "the head mask on the default device: the same tensor on a one-device machine",
    ("workbench.interventions.var.x_var_output", "kv = torch.arange(out.shape[1], ) // call.n_rep"):
        "the kv-head index on the default device: the same tensor on a one-device machine",
    ("workbench.interventions.var.xǁVisualAttentionRedistributionǁon_attention", "idx = self.image.to(None)"):
        "the image positions left on their device instead of moved to the call's: one device in the tests",
    ("workbench.interventions.var.xǁVisualAttentionRedistributionǁon_attention",
     "image = torch.zeros(nk, dtype=torch.bool, )"):
        "the image mask on the default device: the same tensor on a one-device machine",
}


def _equivalent(repo: Path, mutmut: list[str], env: dict, name: str) -> str | None:
    """The stated reason if mutant ``name`` is a listed equivalent mutant, else None."""
    diff = subprocess.run(mutmut + ["show", name], cwd=repo, env=env, capture_output=True, text=True).stdout
    added = {ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")}
    for (function, line), why in EQUIVALENT.items():
        if name.rsplit("__mutmut_", 1)[0] == function and line in added:
            return why
    return None


def run_mutmut(module: str, sample: int = 40, seed: int = 0, only: list[str] | None = None) -> dict[str, int]:
    """mutmut 3 on one core module with its fast tests, in a copy of the checkout, on one worker process.

    mutmut makes about a thousand mutants of each module and a surviving one runs every covering test
    (tens of seconds on two cores), so the score is estimated on ``sample`` mutants drawn uniformly with
    ``seed`` (0: all of them); the Wilson 95% interval of the killed share is printed with it. Lines marked
    ``# pragma: no mutate`` are equivalent mutants excluded by hand, each with its reason on the line.
    Returns mutmut's counts over the mutants run (killed, survived, no tests, timeout, ...).
    """
    import json
    import random

    from scipy.stats import binomtest

    repo = _copy()
    (repo / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths = workbench/\n"
        "only_mutate =\n" + "".join(f"    {f}\n" for f in MODULES[module]) +
        "also_copy =\n    dashboards/\n    circuits/\n    probes/\n"
        "pytest_add_cli_args_test_selection =\n" + "".join(f"    {t}\n" for t in MUTMUT_TESTS[module]) +
        "pytest_add_cli_args =\n    -m\n    not slow\n    -p\n    no:cacheprovider\n"
        # torch is not fork-safe once it has run: fork each mutant from a clean server process
        "process_isolation = forkserver\n"
        # a worker starts pytest anew (collection, fixtures): mutmut's 1 s constant times out sub-second tests
        "timeout_constant = 60\n"
        "use_git_change_detection = false\n")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONPATH", None)  # mutmut puts its mutants/ folder first; the checkout must not shadow it
    mutmut = [sys.executable, "-m", "mutmut"]
    t = time.perf_counter()
    # 1: generate the mutants and map tests to functions (a filter matching no mutant stops mutmut there)
    subprocess.run(mutmut + ["run", "--max-children", "1", "none-such-mutant"], cwd=repo, env=env,
                   capture_output=True, text=True)
    names = []
    for meta in sorted((repo / "mutants").rglob("*.py.meta")):
        names += sorted(json.loads(meta.read_text())["exit_code_by_key"])
    if not names:
        raise SystemExit(f"mutmut made no mutants of {', '.join(MODULES[module])} (see {repo})")
    chosen = sorted(random.Random(seed).sample(names, sample)) if 0 < sample < len(names) else names
    if only:  # rerun named mutants (e.g. the survivors of an earlier run, after adding tests)
        chosen = [n for n in only if n in names]
    # 2: run the chosen mutants
    subprocess.run(mutmut + ["run", "--max-children", "1", *chosen], cwd=repo, env=env, capture_output=True, text=True)
    res = subprocess.run(mutmut + ["results", "--all", "true"], cwd=repo, env=env, capture_output=True,
                         text=True).stdout
    status = {}
    for line in res.splitlines():
        if ":" in line:
            name, st = (x.strip() for x in line.rsplit(":", 1))
            status[name] = st
    reasons = {n: _equivalent(repo, mutmut, env, n) for n in chosen if status.get(n) != "killed"}
    for n, why in reasons.items():
        if why:
            status[n] = "equivalent"
    counts: dict[str, int] = {}
    for n in chosen:
        counts[status.get(n, "missing")] = counts.get(status.get(n, "missing"), 0) + 1
    killed, total = counts.get("killed", 0), len(chosen) - counts.get("equivalent", 0)
    lo, hi = binomtest(killed, total).proportion_ci(0.95, method="wilson")
    print(f"mutmut {module}: {killed} of {total} sampled mutants killed ({killed / total:.1%}, 95% CI "
          f"{lo:.1%}-{hi:.1%}; {len(names)} mutants in all, equivalent ones excluded); {counts}; "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    for n in chosen:
        if status.get(n) != "killed":
            why = f" ({reasons[n]})" if reasons.get(n) else ""
            print(f"  {status.get(n, 'missing'):>10}  {n}{why}    (cd {repo} && {' '.join(mutmut)} show {n})", flush=True)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutmut", choices=sorted(MUTMUT_TESTS), action="append", default=[],
                    help="also run mutmut over this core module (repeatable; needs pip install -e '.[mutation]')")
    ap.add_argument("--sample", type=int, default=40, help="mutants drawn per module (0: all; about 1000 each)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mutant sample")
    ap.add_argument("--mutants", default="", help="comma-separated mutant names to run instead of a sample")
    ap.add_argument("--skip-injected", action="store_true", help="run only the mutmut part")
    a = ap.parse_args()
    survived = 0 if a.skip_injected else injected()
    for m in a.mutmut:
        run_mutmut(m, a.sample, a.seed, [x for x in a.mutants.split(",") if x])
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
