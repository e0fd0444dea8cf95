"""benchmarks/mutation.py's injected bugs stay aimed at the code: each quoted original line is in its file
exactly once (else the script skips the bug and the check it stands for silently stops), and its test files
exist. The script itself (minutes) runs outside CI."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_injected_bug_quotes_the_current_code():
    spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "benchmarks" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert len(mod.BUGS) >= 8
    for name, rel, old, new, tests in mod.BUGS:
        assert (ROOT / rel).read_text().count(old) == 1, (name, rel)
        assert old != new, name
        assert all((ROOT / t).is_file() for t in tests), (name, tests)
