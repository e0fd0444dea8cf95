"""The README is a contract: every fenced ```bash / ```python block of README.md and docs/*.md runs here.

A block runs as written, in a fresh temporary folder (with ``.venv`` linked to the running interpreter's
environment, so ``. .venv/bin/activate`` works), through the installed ``workbench`` entry point, with
this checkout first on PYTHONPATH. An HTML comment on the line before a block may say, visibly in the
Markdown source:

* ``<!-- readme-test: skip: REASON -->``: not run here (REASON says why, e.g. it *is* the test suite);
* ``<!-- readme-test: substitute "A" -> "B" -->``: run with the text A replaced by B (a smaller size;
  the README states the substitution next to the block);
* ``<!-- readme-test: fast -->``: runs in the fast subset (otherwise blocks are ``slow``: they load SmolLM2).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
_SUBST = re.compile(r'substitute\s+"(.*?)"\s*->\s*"(.*?)"')


def blocks(path: Path) -> list[dict]:
    """Fenced code blocks of ``path``: language, code, first line number and the directives before it."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m and m.group(1):
            lang, start = m.group(1), i + 1
            j = start
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            directives = []
            k = i - 1
            while k >= 0 and _DIRECTIVE.search(lines[k]):
                directives += _DIRECTIVE.findall(lines[k])
                k -= 1
            out.append({"lang": lang, "code": "\n".join(lines[start:j]), "line": start, "directives": directives,
                        "file": path.relative_to(ROOT).as_posix()})
            i = j + 1
        else:
            i += 1
    return out


ALL = [b for p in DOCS for b in blocks(p)]
RUNNABLE = [b for b in ALL if b["lang"] in ("bash", "python")]


def _param(b: dict):
    marks = []
    if any(d.startswith("skip") for d in b["directives"]):
        marks.append(pytest.mark.skip(reason=next(d for d in b["directives"] if d.startswith("skip"))))
    if "fast" not in b["directives"]:
        marks.append(pytest.mark.slow)
    return pytest.param(b, marks=marks, id=f"{b['file']}:{b['line']}")


def test_every_block_is_runnable_or_says_why_not():
    assert RUNNABLE, "the README has no examples?"
    for b in ALL:
        assert b["lang"] in ("bash", "python", "text", "toml", "json"), f"{b['file']}:{b['line']}: ```{b['lang']}"
    for b in RUNNABLE:
        for d in b["directives"]:
            assert d in ("fast", "slow") or d.startswith("skip:") or _SUBST.fullmatch(d), f"unknown directive {d!r}"


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_readme_block_runs(block, tmp_path):
    code = block["code"]
    for d in block["directives"]:
        m = _SUBST.fullmatch(d)
        if m:
            assert m.group(1) in code, f"substitution {d!r} does not apply"
            code = code.replace(m.group(1), m.group(2))
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    cmd = ["bash", "-euo", "pipefail", "-c", code] if block["lang"] == "bash" else [sys.executable, "-c", code]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    print(f"{block['file']}:{block['line']} ({block['lang']}) ran in {time.perf_counter() - t:.1f} s")
    assert p.returncode == 0, f"{block['file']}:{block['line']} failed ({p.returncode}):\n{p.stderr[-3000:]}"
