"""Write docs/bad_input.md: run every row of tests/test_bad_input.py's table and the hostile-upload cases of
tests/test_hostile_uploads.py, and record each one-line error (and, for uploads, the cost).

    PYTHONPATH=. python scripts/bad_input_table.py      # about 5 minutes on 2 cores
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import test_bad_input as B
    import test_hostile_uploads as H
    from workbench.cli import main as cli_main

    tmp = Path(tempfile.mkdtemp(prefix="wb-bad-"))

    class Factory:
        def mktemp(self, name):
            d = tmp / name
            d.mkdir()
            return d

    tiny, files = B.make_tiny_dir(Factory().mktemp("tiny")), B.make_files(Factory().mktemp("files"))
    lines = ["# Bad input: one line, exit code 2", "",
             "Every row below is a test (`tests/test_bad_input.py`): the command exits with status 2 and prints",
             "exactly one line on stderr, naming the problem and the fix, never a traceback. `TINY` is a tiny",
             f"random-weight Llama ({B.MAX_POS}-token context) saved with SmolLM2's tokenizer, `TMP` a folder of bad files",
             "(binary, empty, malformed JSON Lines / TOML, unknown keys, wrong types). Regenerate with",
             "`PYTHONPATH=. python scripts/bad_input_table.py`.", "",
             f"{len(B.ROWS)} (command, input) pairs:", "",
             "| command | bad input | command line | stderr (one line) |", "|---|---|---|---|"]
    cwd = os.getcwd()
    os.chdir(files)
    try:
        for command, what, argv, _ in B.ROWS:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = cli_main(B._argv(argv, tiny, files))
            msg = err.getvalue().strip().replace(str(tiny), "TINY").replace(str(files), "TMP").replace("|", "\\|")
            shown = argv.replace("{tiny}", "TINY").replace("{tmp}", "TMP")
            lines.append(f"| {command} | {what} | `workbench {shown}` | exit {rc}: {msg} |")
    finally:
        os.chdir(cwd)
    good = H.make_good(Factory().mktemp("good"))
    from dashboards import sources as S
    from workbench.core.errors import WorkbenchError

    lines += ["", "## Hostile uploads (dashboard)", "",
              "`tests/test_hostile_uploads.py`: each file is handed to `dashboards.sources.parse_uploads` (what the",
              "dashboard calls, inside its error handler) and gets a one-line error; time and peak Python memory",
              "as measured by this script.", "",
              "| upload | bytes | error | cost |", "|---|---|---|---|"]
    for case in sorted(H.CASES):
        fs = H.CASES[case][0](good)
        tracemalloc.start()
        t = time.perf_counter()
        try:
            S.parse_uploads(fs)
            msg = "ACCEPTED"
        except WorkbenchError as e:
            msg = str(e)
        dt, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        msg = msg.replace("|", "\\|")
        import re
        msg = re.sub(r"/tmp/wb-upload-\w+", "UPLOAD", msg)
        lines.append(f"| {case} | {sum(len(v) for v in fs.values())} | {msg} | {dt * 1e3:.0f} ms, {peak / 2**20:.1f} MiB |")
    (ROOT / "docs" / "bad_input.md").write_text("\n".join(lines) + "\n")
    print(f"wrote docs/bad_input.md: {len(B.ROWS)} rows, {len(H.CASES)} uploads")


if __name__ == "__main__":
    main()
