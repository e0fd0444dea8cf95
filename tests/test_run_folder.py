"""Run folders: every command writes under runs/ by default; README commands on a fresh checkout write
only there; reproduce's plan."""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    import typer

    from workbench.cli import _load_commands, app

    _load_commands()
    group = typer.main.get_command(app)

    def walk(cmd, prefix):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, prefix + [name])
        else:
            yield " ".join(prefix), cmd

    return dict(walk(group, []))


def test_every_command_writes_under_runs_by_default():
    cmds = _commands()
    outs = {}
    for name, cmd in cmds.items():
        for p in cmd.params:
            if p.name == "out":
                outs[name] = p.default
    writers = {"trace", "census", "sinks", "calibrate", "retrieval", "ablate", "masking-test", "heads", "patch",
               "probe", "study run", "vision", "hallucination"}
    assert writers <= set(outs), writers - set(outs)
    for name in writers:
        assert Path(str(outs[name])) == Path("runs"), (name, outs[name])
    # every other option that names an output file or folder is opt-in (no default path)
    for name, cmd in cmds.items():
        for p in cmd.params:
            if p.name in ("html", "checkpoint", "scores", "tables", "retrieval_from"):
                assert p.default is None, (name, p.name, p.default)


def _readme_commands() -> list[str]:
    """The ``workbench`` lines of the README's bash blocks, less those marked ``readme-test: skip`` (blocks
    that cannot run on one machine, read by tests/test_readme.py's block parser)."""
    from test_readme import blocks

    runnable = [b["code"] for b in blocks(ROOT / "README.md")
                if b["lang"] == "bash" and not any(d.startswith("skip") for d in b["directives"])]
    lines = [ln.split("#")[0].strip() for b in runnable for ln in b.splitlines()]
    return [ln for ln in lines if ln.startswith("workbench ")]


@pytest.mark.slow
def test_readme_commands_on_a_fresh_checkout_write_only_under_runs(tmp_path):
    """The README's quick-start commands, as written, in an empty working directory (a fresh clone's cwd).

    ``census`` runs as written but with fewer, shorter windows and only the attention section (the full
    command is what scripts/census.sh and `workbench reproduce` run); the others run unchanged.
    """
    cmds = _readme_commands()
    assert any(c.startswith("workbench trace") for c in cmds) and any(c.startswith("workbench census") for c in cmds)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for c in cmds:
        argv = shlex.split(c)[1:]
        if argv[0] == "census":
            argv = [a for a in argv if a != "--json"] + ["--samples", "1", "--seq-len", "32", "--sections", "attention"]
        r = subprocess.run([sys.executable, "-m", "workbench.cli", *argv], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (c, r.stderr[-1500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert (tmp_path / "runs" / "smollm2-135m" / "trace" / "trace.json").exists()
    assert (tmp_path / "runs" / "smollm2-135m" / "summary.json").exists()
    # a second run of the same commands needs no --overwrite either
    r = subprocess.run([sys.executable, "-m", "workbench.cli", *shlex.split(cmds[1])[1:]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-1500:]


def test_reproduce_plan_writes_only_under_its_root(tmp_path):
    from workbench.cli.reproduce import STUDIES, _toml, reproduce, shrink_spec, steps
    from workbench.studies import load_spec, parse_spec

    for quick in (False, True):
        plan = steps(quick, tmp_path / "R")
        names = [s.name for s in plan]
        for needed in ("census", "sinks", "heads", "patch", "retrieval", "masking-test", "calibrate --search",
                       "vision", "hallucination none"):
            assert needed in names
        assert sum(n.startswith("study ") for n in names) == len(STUDIES)
        for s in plan:
            assert s.argv[s.argv.index("--out") + 1] == str(tmp_path / "R")
        # the retrieval sweep runs before the masking test and the studies that read its table
        assert names.index("retrieval") < names.index("masking-test") < names.index("study retrieval_heads_needle")
    for s in STUDIES:  # the quick specs are valid, smaller studies
        raw = load_spec(ROOT / s).raw
        small = shrink_spec(raw)
        p = tmp_path / Path(s).name
        p.write_text(_toml(small))
        spec = load_spec(p)
        assert [t.name for t in spec.tasks] == [t.name for t in parse_spec(raw).tasks]
        assert all(int(t.options.get("n", 4)) <= 4 for t in spec.tasks) and spec.n_bootstrap <= 100
    calls = []
    res = reproduce(True, tmp_path / "Q", only=["census", "sinks"], run=lambda argv: calls.append(argv) or 0,
                    log=lambda s: None)
    assert [c[0] for c in calls] == ["census", "sinks"] and json.loads((tmp_path / "Q" / "reproduce-quick.json")
                                                                      .read_text())["steps"][0]["rc"] == 0
    assert res["provenance"]["config"]["quick"] is True
