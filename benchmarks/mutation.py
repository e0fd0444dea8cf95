"""Tests that can fail: inject known bugs one at a time and check the fast tests catch each; optionally run
mutmut over the core modules (outside CI: minutes to hours).

    PYTHONPATH=. python benchmarks/mutation.py                 # the injected bugs of issue 16 (a few minutes)
    PYTHONPATH=. python benchmarks/mutation.py --mutmut stats  # also mutmut on one core module (needs mutmut)

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
    ("head-subset statistics use the wrong heads' log-sum-exp", "workbench/core/stats.py",
     "lse = call.lse[:, :, a:z] if all_heads is None else call.lse[:, all_heads, a:z]",
     "lse = call.lse[:, :, a:z] if all_heads is None else call.lse[:, : len(all_heads), a:z]",
     ["tests/test_properties.py", "tests/test_tracer.py"]),
    ("uniform ablation divides by all keys in prefill", "workbench/interventions/ablation.py",
     "count = torch.arange(call.q_offset + 1, call.q_offset + nq + 1, dtype=torch.float32)",
     "count = torch.full((nq,), float(call.key.shape[2]))",
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
    ("sampled bound with Serfling's factor only", "workbench/core/stats.py",
     "rho = torch.where(n <= big_n / 2, 1.0 - (n1 - 1.0) / big_n, serfling)", "rho = serfling",
     ["tests/test_sampled_stats.py"]),
    ("generate(): prefill sample pooled with decode rows", "workbench/core/tracer.py",
     "rsum = rsum * torch.where(rcount > 0, pop / rcount.clamp_min(1.0), torch.zeros(()))", "pass",
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


MUTMUT_TESTS = {"stats": ["tests/test_properties.py", "tests/test_sampled_stats.py", "tests/test_tracer.py"],
                "attention": ["tests/test_attention.py", "tests/test_properties.py"],
                "tracer": ["tests/test_tracer.py", "tests/test_sampled_stats.py", "tests/test_silent_noops.py"],
                "interventions": ["tests/test_act.py", "tests/test_ablation_exact.py", "tests/test_silent_noops.py",
                                  "tests/test_registry.py"]}


def run_mutmut(module: str) -> None:
    """mutmut 3 on one core module with its fast tests, in a copy of the checkout; prints its result counts."""
    repo = _copy()
    paths = {"stats": "workbench/core/stats.py", "attention": "workbench/core/attention.py", "tracer": "workbench/core/tracer.py",
             "interventions": "workbench/interventions/"}[module]
    tests = " ".join(MUTMUT_TESTS[module])
    (repo / "setup.cfg").write_text(
        "[mutmut]\n"
        f"paths_to_mutate = {paths}\n"
        "also_copy = workbench/ dashboards/ circuits/ probes/ tests/conftest.py\n"
        f"pytest_add_cli_args_test_selection = {tests}\n"
        "pytest_add_cli_args = -m 'not slow' -x -q -p no:randomly\n")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1"], cwd=repo, env=env)
    res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=repo, env=env,
                         capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    for line in res.splitlines():
        if ":" in line:
            status = line.rsplit(":", 1)[1].strip()
            counts[status] = counts.get(status, 0) + 1
    total = sum(counts.values())
    print(f"mutmut {module}: {counts} of {total} mutants; killed share "
          f"{counts.get('killed', 0) / max(1, total):.2%}; {time.perf_counter() - t:.0f} s; results in {repo}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutmut", choices=sorted(MUTMUT_TESTS), action="append", default=[])
    a = ap.parse_args()
    survived = injected()
    for m in a.mutmut:
        run_mutmut(m)
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
