"""What the CLI prints for trace and census: short human summaries (JSON with --json), no silent
clipping or ignored flags, and heads written the way the flags take them (``layer.head``)."""
from __future__ import annotations

import json
import re

import pytest


def run_cli(capsys, *args):
    from workbench.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_trace_clips_the_window_with_a_note_and_the_html_shows_the_chosen_heads(capsys, tmp_path, smollm2):
    prompt = "The cat sat on the mat."
    n = smollm2.encode(prompt).shape[1]
    page = tmp_path / "a.html"
    code, out, err = run_cli(capsys, "trace", "--prompt", prompt, "--window", f"0:{n + 1}", "--layers", "3",
                             "--heads", "0,4", "--out", str(tmp_path / "t"), "--html", str(page))
    assert code == 0, err
    assert f"clipped to 0:{n}" in out and f"the prompt has {n} tokens" in out
    assert "heads 3.0, 3.4" in out and not re.search(r"L\d+H\d+", out)
    html = page.read_text()
    assert "heads 3.0, 3.4" in html and html.count("class=\"plotly-graph-div\"") == 2
    # readable tokens (plotly's JSON escapes non-ASCII: · is \u00b7), no BPE markers (Ġ is \u0120)
    assert ("·sat" in html or "\\u00b7sat" in html) and "\\u0120" not in html and "Ġ" not in html
    # --html without --window is not a silent no-op: it maps the last queries and says so
    page2 = tmp_path / "b.html"
    code, out, err = run_cli(capsys, "trace", "--prompt", prompt, "--layers", "0", "--heads", "1",
                             "--out", str(tmp_path / "t2"), "--html", str(page2), "--json")
    doc = json.loads(out)
    assert code == 0 and page2.exists() and "without --window" in doc["notes"][0] and "note:" in err
    assert doc["arrays"]["pattern"] == [1, 1, 1, n, n]


@pytest.mark.slow
def test_census_prints_a_short_summary_by_default(capsys, tmp_path, smollm2):
    code, out, err = run_cli(capsys, "census", "--samples", "1", "--seq-len", "32", "--out", str(tmp_path),
                             "--sections", "attention")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) <= 10 and "{" not in out and lines[-1] == "full result: --json"
    assert re.search(r"first-token mass \(layer\.head s_0\): \d+\.\d+ [01]\.\d{3}", out)
    code, out, _ = run_cli(capsys, "census", "--samples", "1", "--seq-len", "32", "--out", str(tmp_path),
                           "--sections", "attention", "--json")
    assert code == 0 and len(json.loads(out)["heads"]) == 270
