"""Killing a retrieval sweep or a study (SIGINT, then SIGKILL, in separate processes) and resuming gives a
final table identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench.io.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "interrupt_driver.py"


def _start(what: str, out: Path, resume: bool, hold_at: int) -> subprocess.Popen:
    """The driver in its own process; it waits once its records file holds ``hold_at`` records, so the kill
    lands mid-run at a known point however loaded the machine is."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(DRIVER), what, str(out), "--hold-at", str(hold_at)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def _kill_after(proc: subprocess.Popen, rows: Path, n: int, sig: int, timeout: float = 600) -> int:
    """Send ``sig`` once ``rows`` holds at least ``n`` records; returns how many it held at the kill."""
    t0 = time.time()
    while len(read_jsonl(rows)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("the run made no progress")
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0  # it was interrupted, not finished
    return len(read_jsonl(rows))


@pytest.fixture(scope="module")
def tiny():
    sys.path.insert(0, str(DRIVER.parent))
    from interrupt_driver import tiny_lm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the driver's processes, so sums are taken in the same order
    yield tiny_lm()
    torch.set_num_threads(threads)


def test_sweep_killed_twice_then_resumed_equals_an_uninterrupted_sweep(tiny, tmp_path):
    from workbench.tasks.needle import load_needles
    from interrupt_driver import records_file
    from workbench.studies.retrieval_sweep import read_results, run_sweep

    kw = dict(lengths=[160, 200], depths=[0, 50, 100], needles=load_needles()[:2], progress=False, max_new_tokens=3)
    full = run_sweep(tiny, out_dir=tmp_path / "full", **kw)
    out = tmp_path / "killed"
    rows = records_file("sweep", out)
    n1 = _kill_after(_start("sweep", out, False, 3), rows, 3, signal.SIGINT)
    n2 = _kill_after(_start("sweep", out, True, n1 + 3), rows, n1 + 3, signal.SIGKILL)
    assert (n1, n2) == (3, 6)
    res = run_sweep(tiny, out_dir=out, resume=True, **kw)
    assert read_results(out) == read_results(tmp_path / "full")  # every record, in order, none twice
    pd.testing.assert_frame_equal(res.heads, full.heads)
    pd.testing.assert_frame_equal(res.tests, full.tests)


def test_study_killed_twice_then_resumed_equals_an_uninterrupted_study(tiny, tmp_path):
    from interrupt_driver import STUDY, records_file

    from workbench.studies import parse_spec, run_study
    from workbench.studies.runner import ROWS

    spec = parse_spec(STUDY)
    full = run_study(spec, tiny, out_root=tmp_path / "full", progress=False)
    out = tmp_path / "killed"
    rows = records_file("study", out)  # the file the driver holds on
    n1 = _kill_after(_start("study", out, False, 2), rows, 2, signal.SIGINT)
    n2 = _kill_after(_start("study", out, True, n1 + 2), rows, n1 + 2, signal.SIGKILL)
    assert (n1, n2) == (2, 4)
    res = run_study(spec, tiny, out_root=out, resume=True, progress=False)
    assert res.n_resumed == n2 and res.n_run == 7 - n2
    assert sorted(map(str, read_jsonl(rows))) == sorted(map(str, read_jsonl(full.out / ROWS)))
    pd.testing.assert_frame_equal(res.table, full.table)


def test_resume_with_another_setting_is_refused_naming_it(tiny, tmp_path):
    """A sweep checkpoint made with max_new_tokens=3 is not continued with 4: one line naming the field."""
    from workbench.io.jsonl import CheckpointMismatchError
    from workbench.tasks.needle import load_needles
    from workbench.studies.retrieval_sweep import read_results, run_sweep

    kw = dict(lengths=[160], depths=[0], needles=load_needles()[:1], progress=False)
    run_sweep(tiny, out_dir=tmp_path, max_new_tokens=3, **kw)
    before = read_results(tmp_path)
    with pytest.raises(CheckpointMismatchError) as e:
        run_sweep(tiny, out_dir=tmp_path, resume=True, max_new_tokens=4, **kw)
    msg = str(e.value)
    assert "max_new_tokens: 3 != 4" in msg and "\n" not in msg and "lengths" not in msg
    assert read_results(tmp_path) == before  # the refused run appended nothing
